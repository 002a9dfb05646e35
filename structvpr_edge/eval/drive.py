"""How well a map localizes a recorded drive, against the drive's own GNSS or odometry.

A frame is correct at N when one of its first N map matches lies within the positive radius of
the frame's own (interpolated) pose, the Recall@N of metrics.py with the drive as the queries; its
localization error is the distance from the returned pose to that pose. Along the route the
error is summed up per segment of driven distance, so a stretch the map does not cover shows.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import DEFAULT_POSITIVE_RADIUS_M
from ..data.drives import DriveFrame
from ..errors import ConfigError, DatasetError, MapError
from ..metrics import recall_of_hits, within
from ..runtime.edgevpr import EdgeVPR
from ..runtime.outputs import localize_frames
from .plots import pyplot, save_figure

DRIVE_NS = (1, 5, 10)
SEGMENT_M = 100.0


@dataclass
class DriveReport:
    """Per frame: its time, true and estimated position; Recall@N over all frames."""

    stamps_ns: np.ndarray  # (N,)
    truth: np.ndarray  # (N, 2) east, north from the drive's poses
    estimate: np.ndarray  # (N, 2) the localization
    recall: dict[str, float]
    radius: float

    @property
    def error(self) -> np.ndarray:
        return np.linalg.norm(self.estimate - self.truth, axis=1)

    @property
    def travelled(self) -> np.ndarray:
        """Metres driven from the first frame, along the true positions."""
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.truth, axis=0), axis=1))])

    def to_json(self) -> dict:
        error = self.error
        return {"frames": len(error), "recall": self.recall, "radius_m": self.radius,
                "error_m": {"median": float(np.median(error)), "p90": float(np.percentile(error, 90)), "mean": float(error.mean())},
                "within_radius": float(np.mean(within(self.estimate, self.truth, self.radius)))}


def evaluate_drive(vpr: EdgeVPR, frames: Iterable[DriveFrame], frame_id: str = "", ns: tuple[int, ...] = DRIVE_NS,
                   radius: float = DEFAULT_POSITIVE_RADIUS_M, total: int | None = None) -> DriveReport:
    """Localize every posed frame against ``vpr``'s map (its top-k must reach max(ns)); the
    drive's poses (in ``frame_id``) and the map's places must be in one frame where both know theirs."""
    if vpr.map is None or vpr.top_k < max(ns):
        raise ConfigError(f"Recall@{max(ns)} needs a map and top_k >= {max(ns)}")
    if frame_id and vpr.map.manifest.frame_id and frame_id != vpr.map.manifest.frame_id:
        raise MapError(f"the map's places are in {vpr.map.manifest.frame_id}, the drive's poses in {frame_id}: "
                       "their positions cannot be compared")
    stamps, truth, estimate, hits = [], [], [], []
    for frame, result in localize_frames(vpr, frames, total=total, desc="eval"):
        stamps.append(frame.stamp_ns)
        truth.append((frame.east, frame.north))
        estimate.append((result.east, result.north))
        hits.append(within([(m.east, m.north) for m in result.matches], truth[-1], radius))
    if not stamps:
        raise DatasetError("no frame of the drive has a pose within the gap: nothing to evaluate")
    return DriveReport(np.array(stamps), np.array(truth), np.array(estimate), recall_of_hits(hits, ns), radius)


def plot_drive_errors(report: DriveReport, out_png: str | Path, segment_m: float = SEGMENT_M, title: str = "") -> Path:
    """Localization error along the route: every frame, and the median per ``segment_m`` of driving."""
    travelled, error = report.travelled, report.error
    segment = (travelled // segment_m).astype(int)
    starts = np.unique(segment)
    medians = [np.median(error[segment == s]) for s in starts]
    fig, ax = pyplot().subplots(figsize=(8, 3.5), dpi=120)
    ax.scatter(travelled, np.maximum(error, 0.1), s=6, alpha=0.5, label="frame")
    edges = np.append(starts * segment_m, max(travelled[-1], starts[-1] * segment_m))  # the last segment ends where the drive does
    ax.step(edges, np.maximum(np.append(medians, medians[-1]), 0.1), where="post", color="black", label=f"median per {segment_m:g} m")
    ax.axhline(report.radius, color="red", linestyle="--", linewidth=1, label=f"{report.radius:g} m")
    n = min(report.recall, key=int)
    ax.set(xlabel="distance driven (m)", ylabel="localization error (m)", yscale="log",
           title=title or f"Recall@{n} {100 * report.recall[n]:.1f}% over {len(error)} frames")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return save_figure(fig, out_png)
