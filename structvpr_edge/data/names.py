"""The 16-field ``@``-separated image name used by most VPR codebases.

``@utm_east@utm_north@zone_num@zone_letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg``
Splitting on ``@`` gives 16 parts: an empty prefix, 14 fields, and the extension.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError

FIELDS: tuple[str, ...] = (
    "utm_east", "utm_north", "utm_zone_number", "utm_zone_letter", "latitude", "longitude",
    "pano_id", "tile_num", "heading", "pitch", "roll", "height", "timestamp", "note",
)


@dataclass(frozen=True)
class ImageName:
    """The fields of one image name; only east/north are required by the format."""

    east: float
    north: float
    heading: float | None = None
    pano_id: str = ""
    timestamp: str = ""
    note: str = ""


def _optional_float(text: str, field: str, path: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{path}: field {field}={text!r} is not a number") from None


def parse_name(path: str | Path) -> ImageName:
    """Parse east/north (and heading etc. when present) from a VPR image file name."""
    name = Path(path).name
    parts = name.split("@")
    if len(parts) != 16 or parts[0] != "":
        raise DatasetError(
            f"{path}: expected a 16-field '@'-separated VPR image name "
            f"('@east@north@...@.jpg'), found {len(parts)} fields"
        )
    values = dict(zip(FIELDS, parts[1:15]))
    east = _optional_float(values["utm_east"], "utm_east", str(path))
    north = _optional_float(values["utm_north"], "utm_north", str(path))
    if east is None or north is None or not (math.isfinite(east) and math.isfinite(north)):
        raise DatasetError(f"{path}: utm_east and utm_north must be finite numbers")
    return ImageName(
        east=east,
        north=north,
        heading=_optional_float(values["heading"], "heading", str(path)),
        pano_id=values["pano_id"],
        timestamp=values["timestamp"],
        note=values["note"],
    )


def format_name(name: ImageName, extension: str = ".jpg") -> str:
    """Build the 16-field file name; the inverse of :func:`parse_name`."""
    for text in (name.pano_id, name.timestamp, name.note):
        if "@" in text or "/" in text:
            raise DatasetError(f"name field {text!r} must not contain '@' or '/'")
    heading = "" if name.heading is None else f"{name.heading:.2f}"
    values = {
        "utm_east": f"{name.east:.2f}", "utm_north": f"{name.north:.2f}",
        "pano_id": name.pano_id, "heading": heading, "timestamp": name.timestamp,
        "note": name.note,
    }
    return "@" + "@".join(values.get(field, "") for field in FIELDS) + "@" + extension
