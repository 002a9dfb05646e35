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


class ThresholdError(MapError):
    """No confidence threshold can be picked: the queries cannot measure the precision asked for.

    queries: how many queries were searched in the map
    correct: how many of them had a correct top-1 match (within the positive radius)
    supported: the highest precision these queries can measure, 0.0 when none
    """

    def __init__(self, message: str, queries: int, correct: int, supported: float) -> None:
        super().__init__(message)
        self.queries, self.correct, self.supported = queries, correct, supported


class UpscaleWarning(UserWarning):
    """A frame smaller than the model's input is enlarged: no model saw enlarged images in training."""


class UncalibratedWarning(UserWarning):
    """The map has no confidence threshold: every Localization.confident is False until
    structvpr-edge calibrate-threshold has stored one in the map."""
