"""Drive recordings as posed camera frames: ROS 2 bags (rosbag2, sqlite3 or MCAP storage, or a
bare ``.mcap`` / ``.db3`` file) and folders of images with a pose CSV.

Why: vehicle teams record drives as bags, not as ``@east@north@`` file names. A bag is read in
two passes: the pose topic first (numbers, small), then the camera topic, streamed one frame at
a time, so a 20,000-frame drive never sits in memory. Each frame gets the pose interpolated at
its own header time; a frame farther than ``max_gap_s`` from every pose is skipped, and so is a
message out of time order on its topic (see ``_in_time_order``: one stamp that jumps ahead is
dropped alone), a fix without a fix (``status = -1``) or with a latitude/longitude that is NaN or
off the globe, and (for a map) a frame closer than ``min_spacing_m`` to the last place kept: a car
standing at a light must not fill the map. Skips are counted (``Skipped``), never silent.

Latitude/longitude become UTM east/north in the zone of the drive's mean position (pyproj;
longitudes averaged round the circle, so a drive across the 180th meridian stays in zone 60 or 1);
the zone travels as the frame id ``utm_32N`` into the map's manifest and every pose written out.
Odometry and pose topics keep their own metres and their header's frame id.

Optional dependencies (``pip install structvpr-edge[ros]``): ``rosbags`` reads and writes bags
without a ROS install, ``pyproj`` converts coordinates; both are imported only when used.

Pose CSV columns (header row, any order, extra columns ignored): ``file`` (relative to the
images folder, or absolute), then ``east`` and ``north`` (metres) or ``lat`` and ``lon``
(degrees, WGS 84); optional ``heading`` (compass degrees, 0 = north, 90 = east; empty = unknown)
and ``time`` (seconds; rows are sorted by it when present).
"""
from __future__ import annotations

import math
import sqlite3
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DatasetError
from .dataset import read_csv
from ..images import decode_image

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
FIX_TYPE = "sensor_msgs/msg/NavSatFix"
POSE_TYPES = (FIX_TYPE, "nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped")
TO_BGR = {"bgr8": None, "rgb8": cv2.COLOR_RGB2BGR, "mono8": cv2.COLOR_GRAY2BGR}  # Image encodings read
CHANNELS = {"bgr8": 3, "rgb8": 3, "mono8": 1}
NO_FIX = -1  # sensor_msgs/NavSatStatus.STATUS_NO_FIX
DEFAULT_MAX_GAP_S = 0.5  # a 1 Hz receiver leaves every frame within 0.5 s of a fix
DEFAULT_MIN_SPACING_M = 2.0
CSV_POSITIONS = (("east", "north"), ("lat", "lon"))
WGS84 = "EPSG:4326"
NO_PIXELS = np.empty((0, 0, 3), np.uint8)  # a frame listed or described, its image not kept
JUMP_WITNESSES = 2  # following messages, all earlier than a message, that show its stamp jumped ahead
Message = tuple[int, int, str, Any]  # header time, bag time, type, message


@dataclass
class Skipped:
    """What a drive left out, and why; printed at the end of every command that reads one."""

    no_fix: int = 0  # NavSatFix with status -1 or a latitude/longitude that is NaN or off the globe
    backwards: int = 0  # a message out of time order on its topic (see _in_time_order)
    no_pose: int = 0  # a frame farther than the gap from every pose
    too_close: int = 0  # a frame within the minimum spacing of the last place kept

    def summary(self) -> str:
        parts = [f"{n} {why}" for n, why in ((self.no_fix, "fixes without a fix or a valid position"), (self.backwards, "messages going back in time"),
                                              (self.no_pose, "frames with no pose within the gap"), (self.too_close, "frames within the spacing"))
                 if n]
        return "skipped " + ", ".join(parts) if parts else "nothing skipped"


@dataclass(frozen=True)
class DriveFrame:
    """One camera frame of a drive: its own time, BGR pixels and (once posed) where it was taken."""

    stamp_ns: int
    image: np.ndarray
    source: str  # "topic@stamp" in a bag, the file in a folder
    east: float = math.nan
    north: float = math.nan
    heading: float = math.nan  # compass degrees, NaN when unknown
    bag_ns: int = 0  # the bag's own time of the message: where a Ray worker finds the frame again


@dataclass(frozen=True)
class Track:
    """The poses of a drive in time order: metres in ``frame_id`` (``utm_32N`` from GNSS)."""

    stamps_ns: np.ndarray  # (N,) int64, non-decreasing
    xy: np.ndarray  # (N, 2) east, north
    heading: np.ndarray  # (N,) compass degrees, NaN when unknown
    frame_id: str

    def at(self, stamp_ns: int, max_gap_ns: int) -> tuple[float, float, float] | None:
        """The pose at ``stamp_ns``, linear between the poses around it; None when the nearest
        pose is farther than ``max_gap_ns`` (no extrapolation beyond the ends)."""
        i = int(np.searchsorted(self.stamps_ns, stamp_ns))
        before, after = max(i - 1, 0), min(i, len(self.stamps_ns) - 1)
        if min(abs(int(self.stamps_ns[j]) - stamp_ns) for j in (before, after)) > max_gap_ns:
            return None
        t0, t1 = int(self.stamps_ns[before]), int(self.stamps_ns[after])
        w = 0.0 if t1 == t0 else min(max((stamp_ns - t0) / (t1 - t0), 0.0), 1.0)
        east, north = (1 - w) * self.xy[before] + w * self.xy[after]
        turn = (self.heading[after] - self.heading[before] + 180) % 360 - 180  # the short way round
        return float(east), float(north), float((self.heading[before] + w * turn) % 360)


class Spacing:
    """Keeps a position only when it lies ``min_m`` metres or more from the last one kept."""

    def __init__(self, min_m: float) -> None:
        if not (math.isfinite(min_m) and min_m >= 0):
            raise DatasetError(f"the minimum spacing must be a finite number of metres >= 0, got {min_m!r}")
        self.min_m = min_m
        self.last: tuple[float, float] | None = None

    def keep(self, east: float, north: float) -> bool:
        if self.last is not None and math.hypot(east - self.last[0], north - self.last[1]) < self.min_m:
            return False
        self.last = (east, north)
        return True


def require_extra(module: str) -> Any:
    """An optional dependency of the ``ros`` extra, or a clear error saying how to install it."""
    import importlib  # noqa: PLC0415

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(f"reading drives needs {module.split('.')[0]}: pip install 'structvpr-edge[ros]'") from None


@lru_cache(maxsize=1)
def typestore() -> Any:
    """ROS 2 message types (Humble's, a superset of what we read and write), for bags that
    carry no definitions and for the messages we write."""
    typesys = require_extra("rosbags.typesys")
    return typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header(stamp: int, frame_id: str) -> Any:
    types = typestore().types
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                                        frame_id=frame_id)


# ---- coordinates -------------------------------------------------------------------------------


def mean_longitude(lon: np.ndarray) -> float:
    """Degrees in [-180, 180]: the mean round the circle, so 179.9 and -179.9 average to 180, not 0."""
    radians = np.radians(np.asarray(lon, float))
    return math.degrees(math.atan2(float(np.mean(np.sin(radians))), float(np.mean(np.cos(radians)))))


def utm_zone(lat: np.ndarray, lon: np.ndarray) -> tuple[str, str]:
    """(EPSG code, frame id such as ``utm_32N``) of the UTM zone holding the median latitude and
    the mean longitude (see mean_longitude)."""
    pyproj = require_extra("pyproj")
    from pyproj.aoi import AreaOfInterest  # noqa: PLC0415
    from pyproj.database import query_utm_crs_info  # noqa: PLC0415

    mid_lat, mid_lon = float(np.median(lat)), mean_longitude(lon)
    if not (-80 <= mid_lat <= 84 and -180 <= mid_lon <= 180):
        raise DatasetError(f"latitude {mid_lat:.4f}, longitude {mid_lon:.4f} lies outside the UTM zones (80 S to 84 N)")
    found = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(mid_lon, mid_lat, mid_lon, mid_lat))
    zone = pyproj.CRS.from_epsg(int(found[0].code)).utm_zone  # e.g. "32N"
    return f"EPSG:{found[0].code}", f"utm_{zone}"


def latlon_to_utm(lat: np.ndarray, lon: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    """(N, 2) east/north in the zone of the data, and that zone's frame id. A position the zone
    cannot hold (off the globe, or a quarter of the globe away) is a DatasetError naming
    ``source``: an infinite position would poison every pose interpolated from it."""
    pyproj = require_extra("pyproj")
    epsg, frame_id = utm_zone(lat, lon)
    east, north = pyproj.Transformer.from_crs(WGS84, epsg, always_xy=True).transform(np.asarray(lon, float), np.asarray(lat, float))
    xy = np.stack([east, north], axis=1)
    finite = np.isfinite(xy).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise DatasetError(f"{source}: latitude {lat[bad]}, longitude {lon[bad]} lies too far from the drive's UTM zone ({frame_id}) "
                           "to convert (a corrupt position?)")
    return xy, frame_id


def utm_to_latlon(east: np.ndarray, north: np.ndarray, epsg: str) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (degrees) of UTM positions in zone ``epsg`` (e.g. ``EPSG:32632``)."""
    lon, lat = require_extra("pyproj").Transformer.from_crs(epsg, WGS84, always_xy=True).transform(np.asarray(east, float), np.asarray(north, float))
    return np.asarray(lat), np.asarray(lon)


def compass_heading(q: Any) -> float:
    """Compass degrees (0 = north, clockwise) of an ENU orientation quaternion; NaN for a zero one."""
    if q.x == q.y == q.z == q.w == 0:
        return math.nan
    yaw = math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))  # from east, counter-clockwise
    return (90 - math.degrees(yaw)) % 360


# ---- bags --------------------------------------------------------------------------------------


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open rosbags reader; a DatasetError for a path that is no bag or a damaged one, also
    when the damage shows while messages are read (a truncated file)."""
    anyreader = require_extra("rosbags.highlevel")
    errors = require_extra("rosbags.rosbag2.errors")
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no drive at {path}")
    if path.is_dir() and not (path / "metadata.yaml").is_file():  # rosbags raises a bare FileNotFoundError
        raise DatasetError(f"{path} has no metadata.yaml, which a rosbag2 folder needs (a recording that did not finish? "
                           f"`ros2 bag reindex {path}` rebuilds it)")
    damaged = (anyreader.AnyReaderError, errors.ReaderError, require_extra("rosbags.serde").SerdeError, sqlite3.Error, struct.error, EOFError,
               UnicodeDecodeError, IndexError)
    try:
        with anyreader.AnyReader([path], default_typestore=typestore()) as reader:
            yield reader
    except DatasetError:
        raise
    except damaged as exc:
        raise DatasetError(f"{path} is not a readable ROS 2 bag (damaged or truncated?): {exc}") from None


def topic_connections(reader: Any, path: Path, topic: str, types: tuple[str, ...], what: str) -> list[Any]:
    """The connections of ``topic``, checked to carry one of ``types``; the error lists the topics there are."""
    topics = reader.topics
    if topic not in topics:
        have = ", ".join(f"{name} ({info.msgtype})" for name, info in sorted(topics.items())) or "none"
        raise DatasetError(f"{path} has no topic {topic!r}; its topics: {have}")
    if topics[topic].msgtype not in types:
        raise DatasetError(f"{topic} in {path} carries {topics[topic].msgtype}; a {what} topic must carry one of {', '.join(types)}")
    return topics[topic].connections


def check_drive(path: str | Path, image_topic: str, pose_topic: str | None = None) -> int:
    """The number of frames on ``image_topic``, after checking both topics exist with usable types
    (before any work)."""
    with open_bag(path) as reader:
        if pose_topic is not None:
            topic_connections(reader, Path(path), pose_topic, POSE_TYPES, "pose")
        topic_connections(reader, Path(path), image_topic, IMAGE_TYPES, "camera")
        return int(reader.topics[image_topic].msgcount)


def _in_time_order(messages: Iterable[Message], skipped: Skipped) -> Iterator[Message]:
    """The messages in non-decreasing header time, the others skipped and counted as backwards.
    Why a lookahead: one stamp that jumps ahead (a clock glitch) must not make every later message
    look old and end the drive. A message waits for the next ``JUMP_WITNESSES`` (fewer at the end of
    the topic); when they are all earlier than it, though not earlier than the last message passed
    on, it is the one out of line and is dropped. A message earlier than the last passed on is
    skipped. At most three messages are held (camera topics carry images)."""
    last = -1
    held: deque[Message] = deque()

    def release(keep: int) -> Iterator[Message]:
        """Pass on or drop the first held messages until ``keep`` are left."""
        nonlocal last
        while len(held) > keep:
            front = held.popleft()
            jumped = bool(held) and all(last <= ahead[0] < front[0] for ahead in held)
            if front[0] < last or jumped:
                skipped.backwards += 1
                continue
            last = front[0]
            yield front

    for message in messages:
        if message[0] < last:
            skipped.backwards += 1
            continue
        held.append(message)
        yield from release(JUMP_WITNESSES)
    yield from release(0)


def _messages(path: Path, topic: str, types: tuple[str, ...], what: str, skipped: Skipped,
              window: tuple[int, int] | None = None) -> Iterator[Message]:
    """(header time, bag time, type, message) of one topic, deserialized one at a time (a zero stamp
    takes the bag's time), in time order (see _in_time_order). Fewer messages than the bag's index
    lists is damage (a reader may pass over a broken chunk). ``window``: only the messages of bag
    times [start, stop), found through the bag's index, and all of them: a stretch cannot tell which
    of its messages are out of order in the whole topic, so its reader (a Ray worker) picks the
    frames a whole pass listed."""
    def read(reader: Any) -> Iterator[Message]:
        count = 0
        for connection, bag_time, raw in reader.messages(topic_connections(reader, path, topic, types, what), *(window or (None, None))):
            message = reader.deserialize(raw, connection.msgtype)
            count += 1
            yield stamp_ns(message.header) or bag_time, bag_time, connection.msgtype, message
        if window is None and count < reader.topics[topic].msgcount:
            raise DatasetError(f"{path} lists {reader.topics[topic].msgcount} messages on {topic} but only {count} could be read: the bag is damaged")

    with open_bag(path) as reader:
        yield from (read(reader) if window is not None else _in_time_order(read(reader), skipped))


def image_of(message: Any, what: str) -> np.ndarray:
    """BGR pixels of a ``sensor_msgs`` Image (bgr8, rgb8, mono8) or CompressedImage (JPEG, PNG);
    works on rosbags and rclpy messages alike (the same field names)."""
    if hasattr(message, "format"):  # CompressedImage
        return decode_image(bytes(message.data), what)
    encoding = message.encoding.lower()
    if encoding not in TO_BGR:
        raise DatasetError(f"{what} has encoding {message.encoding!r}; supported: {', '.join(TO_BGR)} and compressed JPEG/PNG")
    height, width, step, channels = int(message.height), int(message.width), int(message.step), CHANNELS[encoding]
    data = np.frombuffer(message.data, np.uint8)
    if height < 1 or width < 1 or step < width * channels or len(data) < height * step:
        raise DatasetError(f"{what}: {len(data)} bytes cannot hold {width}x{height} {encoding} rows of {step} bytes (truncated?)")
    pixels = data[: height * step].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    code = TO_BGR[encoding]
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(np.ascontiguousarray(pixels), code)


def read_frames(path: str | Path, topic: str, skipped: Skipped, pixels: bool = True,
                window: tuple[int, int] | None = None) -> Iterator[DriveFrame]:
    """The frames of ``topic`` in time order, decoded one at a time (never all in memory).
    ``pixels`` False: times and sources only, no image decoded (a Ray build's listing pass);
    ``window``: see _messages."""
    for stamp, bag_time, _, message in _messages(Path(path), topic, IMAGE_TYPES, "camera", skipped, window):
        source = f"{topic}@{stamp}"
        image = image_of(message, f"frame {source} of {path}") if pixels else NO_PIXELS
        yield DriveFrame(stamp, image, source, bag_ns=bag_time)


def read_track(path: str | Path, topic: str, skipped: Skipped) -> Track:
    """All poses of ``topic``: fixes converted to UTM (zone of the data), Odometry and poses as
    they are, in their header's frame; a DatasetError when none is usable."""
    stamps: list[int] = []
    rows: list[tuple[float, float, float]] = []  # lat, lon, NaN or x, y, heading
    frame_id, kind = "", ""
    for stamp, _, kind, message in _messages(Path(path), topic, POSE_TYPES, "pose", skipped):
        if kind == FIX_TYPE:  # receivers report no fix with status -1, NaN, or a sentinel such as latitude 999 under an OK status
            row = (message.latitude, message.longitude, math.nan)
            usable = message.status.status != NO_FIX and abs(row[0]) <= 90 and abs(row[1]) <= 180
        else:
            pose = message.pose if kind == "geometry_msgs/msg/PoseStamped" else message.pose.pose
            row = (pose.position.x, pose.position.y, compass_heading(pose.orientation))
            usable = math.isfinite(row[0]) and math.isfinite(row[1])
        if not usable:
            skipped.no_fix += 1
            continue
        stamps.append(stamp)
        rows.append(row)
        frame_id = frame_id or message.header.frame_id  # a fix's: replaced by its UTM zone below
    if not stamps:
        raise DatasetError(f"{topic} in {path} has no usable pose ({skipped.summary()})")
    values = np.array(rows, dtype=np.float64)
    xy = values[:, :2]
    if kind == FIX_TYPE:
        xy, frame_id = latlon_to_utm(values[:, 0], values[:, 1], f"{topic} in {path}")
    return Track(np.array(stamps, dtype=np.int64), xy, values[:, 2], frame_id)


def posed(frames: Iterable[DriveFrame], track: Track, skipped: Skipped, max_gap_s: float = DEFAULT_MAX_GAP_S,
          min_spacing_m: float = 0.0) -> Iterator[DriveFrame]:
    """Frames with their interpolated pose; those without a pose within ``max_gap_s``, or within
    ``min_spacing_m`` of the last frame kept, are skipped and counted. Options checked now."""
    if not (math.isfinite(max_gap_s) and max_gap_s >= 0):
        raise DatasetError(f"the pose gap must be a finite number of seconds >= 0, got {max_gap_s!r}")
    spacing, gap_ns = Spacing(min_spacing_m), round(max_gap_s * 1e9)

    def stream() -> Iterator[DriveFrame]:
        for frame in frames:
            pose = track.at(frame.stamp_ns, gap_ns)
            if pose is None:
                skipped.no_pose += 1
            elif not spacing.keep(pose[0], pose[1]):
                skipped.too_close += 1
            else:
                yield replace(frame, east=pose[0], north=pose[1], heading=pose[2])

    return stream()


def read_drive(path: str | Path, image_topic: str, pose_topic: str | None = None, skipped: Skipped | None = None,
               max_gap_s: float = DEFAULT_MAX_GAP_S, min_spacing_m: float = 0.0, pixels: bool = True) -> tuple[Iterator[DriveFrame], str, int]:
    """(frames, their frame id, the camera topic's message count) of a bag: topics checked and
    poses read now, before any work; frames decoded (and posed, when ``pose_topic`` is named) as
    the caller draws them (``pixels`` False: not decoded, see read_frames)."""
    skipped = Skipped() if skipped is None else skipped
    count = check_drive(path, image_topic, pose_topic)
    frames = read_frames(path, image_topic, skipped, pixels)
    if pose_topic is None:
        return frames, "", count
    track = read_track(path, pose_topic, skipped)
    return posed(frames, track, skipped, max_gap_s, min_spacing_m), track.frame_id, count


def write_bag(path: str | Path, topics: dict[str, str], messages: Iterable[tuple[str, int, Any]], storage: str = "mcap") -> Path:
    """A rosbag2 folder at ``path`` (MCAP or sqlite3 storage) holding ``(topic, time, message)``
    records of ``topics`` (name -> type); the message types travel in the bag."""
    rosbag2 = require_extra("rosbags.rosbag2")
    store = typestore()
    plugin = {"mcap": rosbag2.StoragePlugin.MCAP, "sqlite3": rosbag2.StoragePlugin.SQLITE3}[storage]
    with rosbag2.Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=store) for topic, msgtype in topics.items()}
        for topic, stamp, message in messages:
            writer.write(connections[topic], stamp, store.serialize_cdr(message, topics[topic]))
    return Path(path)


def compressed_image(data: bytes, stamp: int, frame_id: str = "camera", fmt: str = "jpeg") -> Any:
    return typestore().types["sensor_msgs/msg/CompressedImage"](header=header(stamp, frame_id), format=fmt, data=np.frombuffer(data, np.uint8))


def nav_sat_fix(lat: float, lon: float, stamp: int, status: int = 0, frame_id: str = "gnss") -> Any:
    types = typestore().types
    fix = types[FIX_TYPE]
    return fix(header=header(stamp, frame_id), status=types["sensor_msgs/msg/NavSatStatus"](status=status, service=1),
               latitude=lat, longitude=lon, altitude=0.0, position_covariance=np.zeros(9), position_covariance_type=fix.COVARIANCE_TYPE_UNKNOWN)


# ---- images and a pose CSV ---------------------------------------------------------------------


def _csv_number(row: dict[str, str], column: str, line: int, path: Path, optional: bool = False) -> float:
    text = (row.get(column) or "").strip()
    if optional and text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {line}: column {column!r} holds {text!r}, not a finite number")
    return value


def read_pose_csv(path: str | Path, images: str | Path, min_spacing_m: float = 0.0, skipped: Skipped | None = None) -> tuple[list[Path], Track]:
    """The image files a pose CSV names (see the module docstring for its columns) and their poses
    (``Track`` stamps: the time column in ns, else the row order); rows within ``min_spacing_m``
    of the last one kept are skipped and counted. Every row is checked before any work."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise DatasetError(f"no pose file at {path}")
    reader = read_csv(path)
    reader.fieldnames = columns = [c.strip() for c in reader.fieldnames or []]
    rows = list(reader)
    positions = next((pair for pair in CSV_POSITIONS if set(pair) <= set(columns)), None)
    if "file" not in columns or positions is None:
        raise DatasetError(f"{path} needs the columns file and east, north (or lat, lon), optional heading and time; it has {columns}")
    if not rows:
        raise DatasetError(f"{path} has no rows")
    found: list[Path] = []
    numbers: list[list[float]] = []  # position pair, heading, time (the line number without a time column)
    for line, row in enumerate(rows, start=2):
        file = images / (row.get("file") or "").strip()  # an absolute path stays as it is
        if not file.is_file():
            raise DatasetError(f"{path}, line {line}: no image at {file}")
        found.append(file)
        numbers.append([_csv_number(row, positions[0], line, path), _csv_number(row, positions[1], line, path),
                        _csv_number(row, "heading", line, path, optional=True),
                        _csv_number(row, "time", line, path) if "time" in columns else line])
    order = np.argsort(np.array(numbers)[:, 3], kind="stable")
    values, files = np.array(numbers, dtype=np.float64)[order], [found[i] for i in order]
    xy, frame_id = (latlon_to_utm(values[:, 0], values[:, 1], str(path)) if positions == ("lat", "lon") else (values[:, :2], ""))
    spacing, skipped = Spacing(min_spacing_m), skipped or Skipped()
    keep = np.array([spacing.keep(east, north) for east, north in xy], dtype=bool)
    skipped.too_close += int((~keep).sum())
    stamps = np.round(values[:, 3] * (1e9 if "time" in columns else 1)).astype(np.int64)
    track = Track(stamps[keep], xy[keep], values[keep, 2] % 360, frame_id)
    return [f for f, k in zip(files, keep) if k], track
