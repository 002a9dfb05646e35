"""structvpr-edge: StructVPR++-style visual place recognition for vehicles and robots.

    from structvpr_edge import EdgeVPR

The runtime imports without torch; training and export import it when used.
"""
__version__ = "0.1.0"
__all__ = ["EdgeVPR", "Localization", "Place", "PlaceMap", "__version__"]


def __getattr__(name: str):
    """Lazy exports: ``import structvpr_edge`` stays cheap for the command line."""
    if name in ("EdgeVPR", "Localization"):
        from .runtime import edgevpr

        return getattr(edgevpr, name)
    if name in ("Place", "PlaceMap"):
        from .runtime import map as place_map

        return getattr(place_map, name)
    raise AttributeError(f"module 'structvpr_edge' has no attribute {name!r}")
