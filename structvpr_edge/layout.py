"""The descriptor layout: which slice of the descriptor belongs to which part.

A StructVPR++ descriptor is ``[global | group_1 | ... | group_K]``. Every checkpoint, ONNX
file, engine manifest and map stores the layout, and a map refuses queries from a model whose
layout hash differs. Torch-free: the runtime reads it too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from .errors import ModelError


@dataclass(frozen=True)
class Segment:
    name: str  # "global" or a label-group name
    start: int
    size: int


@dataclass(frozen=True)
class DescriptorLayout:
    """Ordered segments covering the descriptor without gaps; ``kind`` names the model family."""

    kind: str  # "structvpr++" (global + per-group segments) or "global" (one segment)
    segments: tuple[Segment, ...]

    @property
    def dim(self) -> int:
        return sum(s.size for s in self.segments)

    @classmethod
    def aligned(cls, global_dim: int, group_dim: int, groups: tuple[str, ...]) -> "DescriptorLayout":
        sizes = [("global", global_dim)] + [(g, group_dim) for g in groups]
        return cls.from_sizes("structvpr++", sizes)

    @classmethod
    def single(cls, dim: int) -> "DescriptorLayout":
        return cls.from_sizes("global", [("global", dim)])

    @classmethod
    def from_sizes(cls, kind: str, sizes: list[tuple[str, int]]) -> "DescriptorLayout":
        segments, start = [], 0
        for name, size in sizes:
            if size <= 0:
                raise ModelError(f"segment {name!r} must have a positive size, got {size}")
            segments.append(Segment(name, start, size))
            start += size
        return cls(kind, tuple(segments))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_dict(cls, data: dict) -> "DescriptorLayout":
        try:
            layout = cls(data["kind"], tuple(Segment(**s) for s in data["segments"]))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"malformed descriptor layout {data!r}") from exc
        expected = 0
        for segment in layout.segments:
            if segment.start != expected or segment.size <= 0:
                raise ModelError(f"descriptor layout has a gap or overlap at {segment}")
            expected += segment.size
        return layout

    def hash(self) -> str:
        """Short stable hash; maps compare it with the model's."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
