"""Localizations out of the process, in forms vehicle tools read: ROS 2 messages in an MCAP file
(Foxglove, ``ros2 bag play``) or on a live topic (structvpr_edge/ros2.py), and a CSV table.

Per frame, stamped with the frame's own time:

- ``/structvpr_edge/pose``, ``geometry_msgs/msg/PoseWithCovarianceStamped``: the chosen map
  place's east/north (z = 0) in the map's frame (``utm_32N`` names the UTM zone; ``map`` when the
  map does not know its frame), heading as a yaw about z (ENU: 0 = east, counter-clockwise);
- ``/diagnostics``, ``diagnostic_msgs/msg/DiagnosticArray`` (Foxglove's diagnostics panel): OK
  when confident, WARN otherwise, with the similarity, the margin and the top-k matches.

Covariance from the match spread: the east/north covariance is the mean outer product of the
top-k matches' offsets from the estimate, plus (1 m)^2 (the retrieved places agree, or spread
over the candidates the frame resembles); yaw likewise from their headings plus (5 deg)^2;
unobserved z, roll, pitch (and yaw without a heading) get 1e6, the ROS convention for unknown.

The messages are built once here as rosbags message objects: the MCAP writer serializes them,
the ROS 2 node copies them into rclpy messages, so both publish the same thing. rosbags and mcap
come with ``pip install structvpr-edge[ros]``; nothing here is imported by EdgeVPR.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.drives import DriveFrame, header, require_extra, typestore
from ..files import output_format, replace_whole
from .edgevpr import EdgeVPR, Localization
from .mapping import batched
from .preprocess import bgr_as

POSE_TOPIC, POSE_TYPE = "/structvpr_edge/pose", "geometry_msgs/msg/PoseWithCovarianceStamped"
DIAGNOSTICS_TOPIC, DIAGNOSTICS_TYPE = "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"
TOPICS = {POSE_TOPIC: POSE_TYPE, DIAGNOSTICS_TOPIC: DIAGNOSTICS_TYPE}
DEFAULT_FRAME = "map"
MIN_STD_M, MIN_YAW_STD_DEG, UNKNOWN_VARIANCE = 1.0, 5.0, 1e6
OK, WARN = 0, 1  # diagnostic_msgs/DiagnosticStatus levels
CSV_COLUMNS = ("stamp_ns", "source", "frame_id", "east", "north", "heading", "confident", "similarity", "margin",
               "var_east", "cov_east_north", "var_north", "matches")
SUFFIXES = (".mcap", ".csv")


def covariance(result: Localization) -> np.ndarray:
    """The 6x6 pose covariance (x, y, z, roll, pitch, yaw) from the spread of the top-k matches."""
    cov = np.diag([0.0, 0.0, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE, UNKNOWN_VARIANCE])
    offsets = np.array([[m.east - result.east, m.north - result.north] for m in result.matches]).reshape(-1, 2)
    cov[:2, :2] = offsets.T @ offsets / max(len(offsets), 1) + MIN_STD_M**2 * np.eye(2)
    turns = np.array([(m.heading - result.heading + 180) % 360 - 180 for m in result.matches])
    if math.isfinite(result.heading) and len(turns) and np.isfinite(turns).all():
        cov[5, 5] = float(np.mean(np.radians(turns) ** 2) + math.radians(MIN_YAW_STD_DEG) ** 2)
    return cov


def pose_message(result: Localization, stamp: int, frame_id: str) -> Any:
    """The estimate as a ``geometry_msgs/msg/PoseWithCovarianceStamped``."""
    types = typestore().types
    yaw = math.radians(90 - result.heading) if math.isfinite(result.heading) else 0.0  # compass -> ENU
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=result.east, y=result.north, z=0.0),
        orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    with_covariance = types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=covariance(result).ravel())
    return types[POSE_TYPE](header=header(stamp, frame_id), pose=with_covariance)


def diagnostic_message(result: Localization, stamp: int) -> Any:
    """Confidence and top-k as a ``diagnostic_msgs/msg/DiagnosticArray`` of one status."""
    types = typestore().types
    pair = types["diagnostic_msgs/msg/KeyValue"]
    values = [pair(key="similarity", value=f"{result.matches[0].similarity:.4f}" if result.matches else ""),
              pair(key="margin", value=f"{result.margin:.4f}"), pair(key="confident", value=str(result.confident).lower())]
    values += [pair(key=f"match_{i}", value=f"{m.id} {m.east:.2f} {m.north:.2f} {m.similarity:.4f}") for i, m in enumerate(result.matches, 1)]
    status = types["diagnostic_msgs/msg/DiagnosticStatus"](
        level=OK if result.confident else WARN, name="structvpr_edge: localization",
        message="confident" if result.confident else "not confident", hardware_id="", values=values)
    return types[DIAGNOSTICS_TYPE](header=header(stamp, ""), status=[status])


def messages(result: Localization, stamp: int, frame_id: str) -> list[tuple[str, Any]]:
    """(topic, message) pairs of one localized frame: the pose, then the diagnostics."""
    return [(POSE_TOPIC, pose_message(result, stamp, frame_id)), (DIAGNOSTICS_TOPIC, diagnostic_message(result, stamp))]


def localize_frames(vpr: EdgeVPR, frames: Iterable[DriveFrame], batch_size: int = 16, total: int | None = None,
                    desc: str = "localize") -> Iterator[tuple[DriveFrame, Localization]]:
    """Each frame of a stream with its localization, a batch at a time, in order (the temporal
    filter, when on, sees the frames as driven)."""
    for batch in batched(tqdm(frames, desc=desc, unit="frame", total=total, leave=False), batch_size):
        yield from zip(batch, vpr.localize_batch(bgr_as(vpr.preprocess.colour, [frame.image for frame in batch])))


def check_out(path: str | Path) -> Path:
    """An output path of a kind we write, checked before the work that produces it."""
    if output_format(path, SUFFIXES) == "mcap":
        require_extra("mcap.writer")
    return Path(path)


def write_poses(path: str | Path, results: Iterable[tuple[int, str, Localization]], frame_id: str, metadata: dict[str, str]) -> int:
    """Write ``(stamp, source, result)`` records, drawn one at a time, into ``path`` (``.mcap`` or
    ``.csv``) whole: into a file beside it, moved over ``path`` only when every record is written
    (an error half way leaves no file). Returns the number of frames written."""
    path, frame_id = check_out(path), frame_id or DEFAULT_FRAME
    count = 0

    def counted() -> Iterator[tuple[int, str, Localization]]:
        nonlocal count
        for record in results:
            count += 1
            yield record

    write = _write_mcap if path.suffix.lower() == ".mcap" else _write_csv
    replace_whole(path, lambda tmp: write(tmp, counted(), frame_id, metadata))
    return count


def _write_mcap(tmp: Path, results: Iterable[tuple[int, str, Localization]], frame_id: str, metadata: dict[str, str]) -> None:
    from mcap.well_known import MessageEncoding, Profile, SchemaEncoding  # noqa: PLC0415
    from mcap.writer import Writer  # noqa: PLC0415

    store = typestore()
    with tmp.open("wb") as stream:
        writer = Writer(stream)
        writer.start(profile=Profile.ROS2, library="structvpr-edge")
        channels = {}
        for topic, msgtype in TOPICS.items():
            schema = writer.register_schema(msgtype, SchemaEncoding.ROS2, store.generate_msgdef(msgtype, ros_version=2)[0].encode())
            channels[topic] = writer.register_channel(topic, MessageEncoding.CDR, schema)
        for sequence, (stamp, _, result) in enumerate(results):
            for topic, message in messages(result, stamp, frame_id):
                writer.add_message(channels[topic], stamp, bytes(store.serialize_cdr(message, TOPICS[topic])), stamp, sequence)
        writer.add_metadata("structvpr_edge", {"frame_id": frame_id, **metadata})
        writer.finish()


def _write_csv(tmp: Path, results: Iterable[tuple[int, str, Localization]], frame_id: str, metadata: dict[str, str]) -> None:
    """One row per frame (CSV_COLUMNS); ``matches`` is a JSON list of [id, east, north, similarity]."""
    with tmp.open("w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(CSV_COLUMNS)
        for stamp, source, result in results:
            cov = covariance(result)
            matches = json.dumps([[m.id, round(m.east, 2), round(m.north, 2), round(m.similarity, 4)] for m in result.matches])
            table.writerow([stamp, source, frame_id, f"{result.east:.2f}", f"{result.north:.2f}",
                            "" if math.isnan(result.heading) else f"{result.heading:.2f}", int(result.confident),
                            f"{result.matches[0].similarity:.4f}" if result.matches else "", f"{result.margin:.4f}",
                            f"{cov[0, 0]:.3f}", f"{cov[0, 1]:.3f}", f"{cov[1, 1]:.3f}", matches])
