"""structvpr-edge: StructVPR++-style visual place recognition for vehicles and robots.

    from structvpr_edge import EdgeVPR

The runtime imports without torch; training and export import it when used.
"""
from importlib import import_module

from .errors import (BackendError, ConfigError, DatasetError, MapError, ModelError, StructVPRError, ThresholdError,
                     UncalibratedWarning, UpscaleWarning)

__version__ = "0.1.0"  # the one place the version is written: setup.py reads it
__all__ = ["EdgeVPR", "Localization", "Match", "TemporalConfig", "PlaceMap", "Place", "Threshold",
           "StructVPRError", "ConfigError", "DatasetError", "ModelError", "MapError", "ThresholdError", "BackendError",
           "UpscaleWarning", "UncalibratedWarning", "__version__"]
LAZY = {"EdgeVPR": "edgevpr", "Localization": "edgevpr", "Match": "edgevpr", "TemporalConfig": "temporal",
        "PlaceMap": "map", "Place": "map", "Threshold": "map"}  # name -> its module in runtime/


def __getattr__(name: str):
    """Lazy exports: ``import structvpr_edge`` stays cheap for the command line (no numpy, no faiss)."""
    if name in LAZY:
        return getattr(import_module(f".runtime.{LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'structvpr_edge' has no attribute {name!r}")
