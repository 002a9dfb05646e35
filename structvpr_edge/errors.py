"""One small exception hierarchy: every error the SDK raises on bad input is a StructVPRError.

Callers embedding the SDK in vehicle software catch ``StructVPRError`` (or one subclass)
and never have to parse messages.
"""


class StructVPRError(Exception):
    """Base of every error raised deliberately by structvpr-edge."""


class ConfigError(StructVPRError, ValueError):
    """An option, preset or configuration value is invalid."""


class DatasetError(StructVPRError, ValueError):
    """A dataset folder, image name or metadata file is missing or malformed."""


class ModelError(StructVPRError, ValueError):
    """A model, checkpoint or weight file is missing, incompatible or corrupt."""


class MapError(StructVPRError, ValueError):
    """A place-recognition map is missing, corrupt or built with another model."""


class BackendError(StructVPRError, RuntimeError):
    """An inference backend (TensorRT, ONNX Runtime, torch) is unavailable or failed."""


class UpscaleWarning(UserWarning):
    """A frame smaller than the model's input is enlarged: no model saw enlarged images in training."""
