"""Drives as vehicles record them, faults included (data/drives.py): a clock glitch on one
message, a GNSS sentinel position, a drive across the 180th meridian, a pose CSV saved by a
spreadsheet, a recording that did not finish. Each is a skip that is counted or a DatasetError
that names the file, never a dropped drive, an infinite pose or a bare traceback."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.data import drives
from structvpr_edge.data.drives import Skipped, read_drive, read_frames, read_pose_csv, read_track, write_bag
from structvpr_edge.errors import DatasetError
from tests.test_drives import COMPRESSED, FIX, ODOMETRY, T0, frames_bag, jpeg, odometry, write_csv

TICK = 10**8  # 0.1 s: a 10 Hz camera
JUMP = 36_000  # ticks: a header stamp one hour ahead


def camera_bag(path: Path, ticks: list[int]) -> Path:
    """A camera topic logged every tick (bag time) whose header stamps are ``ticks``."""
    records = [("/cam", T0 + i * TICK, drives.compressed_image(jpeg(i), T0 + t * TICK)) for i, t in enumerate(ticks)]
    return write_bag(path, {"/cam": COMPRESSED}, records)


def read_ticks(bag: Path, skipped: Skipped, window: tuple[int, int] | None = None) -> list[int]:
    return [(f.stamp_ns - T0) // TICK for f in read_frames(bag, "/cam", skipped, pixels=False, window=window)]


# ---- time order ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ticks", "kept"), [
    ([0, 1, JUMP, 3, 4, 5], [0, 1, 3, 4, 5]),  # one stamp an hour ahead: dropped alone
    ([JUMP, 1, 2, 3], [1, 2, 3]),  # the first message
    ([0, 1, 2, JUMP, 4], [0, 1, 2, 4]),  # the last but one: the last message alone shows it
    ([5, 6, JUMP, 7, 0, 8], [5, 6, 7, 8]),  # a jump ahead, then a stamp far back
    ([0, 1, 2, 1, 3], [0, 1, 2, 3]),  # a stamp a little late: it goes, not the good one before it
    ([10, 11, 12, 0, 13], [10, 11, 12, 13]),  # a stamp far back
], ids=["jump", "jump-first", "jump-last-but-one", "jump-then-back", "late", "far-back"])
def test_a_message_out_of_time_order_is_dropped_alone_and_the_drive_goes_on(tmp_path: Path, ticks: list[int], kept: list[int]):
    skipped = Skipped()
    assert read_ticks(camera_bag(tmp_path / "cam", ticks), skipped) == kept
    assert skipped.backwards == len(ticks) - len(kept)


def test_a_pose_stamped_an_hour_ahead_leaves_every_later_frame_posed(tmp_path: Path):
    """Odometry at 1 Hz, 10 m/s along x, one pose stamped an hour ahead; a frame every 0.5 s."""
    poses = [(T0 + i * 10**9, odometry(10.0 * i, 0.0, 0.0, T0 + (3600 if i == 2 else i) * 10**9)) for i in range(10)]
    bag = frames_bag(tmp_path / "odom", [T0 + i * 500_000_000 for i in range(19)], poses, ODOMETRY)
    skipped = Skipped()
    frames, _, _ = read_drive(bag, "/cam", "/pose", skipped, max_gap_s=0.5)
    east = [f.east for f in frames]
    assert (skipped.backwards, skipped.no_pose) == (1, 1)  # the frame at 2 s lies 1 s from the poses left
    assert east == pytest.approx([5.0 * i for i in range(19) if i != 4])


def test_a_window_holds_every_frame_the_whole_topic_kept(tmp_path: Path):
    """A Ray worker reads a stretch of the topic: whatever came before it, the frames a whole
    pass listed there are all in it (here two stamps far back just after the stretch begins)."""
    bag = camera_bag(tmp_path / "cam", [0, 1, 2, JUMP, 4, 5, 0, 0, 6, 7])
    listed = {(f.bag_ns, f.stamp_ns) for f in read_frames(bag, "/cam", Skipped(), pixels=False)}
    end = max(bag_ns for bag_ns, _ in listed) + 1
    for start in sorted(bag_ns for bag_ns, _ in listed):
        found = {(f.bag_ns, f.stamp_ns) for f in read_frames(bag, "/cam", Skipped(), pixels=False, window=(start, end))}
        assert {key for key in listed if key[0] >= start} <= found


# ---- positions -------------------------------------------------------------------------------


def test_a_fix_off_the_globe_is_skipped_like_one_without_a_fix(tmp_path: Path):
    """Status OK, latitude 999 (a receiver's sentinel), or latitude/longitude past 90/180."""
    fixes = [(T0 + i * 10**9, drives.nav_sat_fix(48.0 + 1e-4 * i, 11.0, T0 + i * 10**9)) for i in range(6)]
    for i, (lat, lon) in zip((1, 3, 4), ((999.0, 11.0), (-90.5, 11.0), (48.0, 180.5))):
        fixes[i] = (fixes[i][0], drives.nav_sat_fix(lat, lon, fixes[i][0]))
    bag = frames_bag(tmp_path / "gnss", [T0 + i * 250_000_000 for i in range(21)], fixes, FIX)
    skipped = Skipped()
    track = read_track(bag, "/pose", skipped)
    assert skipped.no_fix == 3 and len(track.stamps_ns) == 3 and np.isfinite(track.xy).all()
    assert "3 fixes without a fix or a valid position" in skipped.summary()
    frames, _, _ = read_drive(bag, "/cam", "/pose")
    assert all(math.isfinite(f.east) and math.isfinite(f.north) for f in frames)


def test_a_position_its_utm_zone_cannot_hold_is_refused_naming_the_file(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"/pose in drive: latitude 999.0, longitude 11.0 lies too far from the drive's UTM zone \(utm_32N\)"):
        drives.latlon_to_utm(np.array([48.0, 48.0, 999.0]), np.array([11.0, 11.0, 11.0]), "/pose in drive")
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    poses = write_csv(tmp_path / "poses.csv", [{"file": f"{i}.jpg", "lat": (48.0, 999.0, 48.0)[i], "lon": 11.0} for i in range(3)])
    with pytest.raises(DatasetError, match="poses.csv: latitude 999.0"):
        read_pose_csv(poses, tmp_path)


def test_a_drive_across_the_180th_meridian_is_in_a_zone_beside_it(tmp_path: Path):
    """Taveuni, Fiji: fixes 1 s and about 10.7 m apart, longitude 179.9997 to -179.9997."""
    lon = [179.9997, 179.9998, 179.9999, -179.9999, -179.9998, -179.9997]
    fixes = [(T0 + i * 10**9, drives.nav_sat_fix(-16.8, x, T0 + i * 10**9)) for i, x in enumerate(lon)]
    track = read_track(frames_bag(tmp_path / "fiji", [T0], fixes, FIX), "/pose", Skipped())
    assert track.frame_id in ("utm_60S", "utm_1S")  # not zone 30 (the median longitude, 0)
    assert (0 < track.xy[:, 1]).all() and (track.xy[:, 1] < 10_000_000).all()  # southern northings
    steps = np.linalg.norm(np.diff(track.xy, axis=0), axis=1)
    np.testing.assert_allclose(steps, [10.66, 10.66, 21.32, 10.66, 10.66], rtol=2e-3)


# ---- files -----------------------------------------------------------------------------------


def test_a_pose_csv_with_a_byte_order_mark_is_read_and_one_not_in_utf8_is_refused(tmp_path: Path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; a Windows-1252 file is not UTF-8."""
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    body = "file,east,north,note\n" + "".join(f"{i}.jpg,{10 * i},0,Straße {i}\n" for i in range(3))
    (tmp_path / "bom.csv").write_bytes(body.encode("utf-8-sig"))
    files, track = read_pose_csv(tmp_path / "bom.csv", tmp_path)
    assert files == [tmp_path / f"{i}.jpg" for i in range(3)] and track.xy[:, 0].tolist() == [0, 10, 20]
    (tmp_path / "cp1252.csv").write_bytes(body.encode("cp1252"))
    with pytest.raises(DatasetError, match="cp1252.csv is not UTF-8 text.*save it as UTF-8"):
        read_pose_csv(tmp_path / "cp1252.csv", tmp_path)


def test_a_folder_without_metadata_yaml_is_named_as_a_recording_that_did_not_finish(tmp_path: Path):
    bag = frames_bag(tmp_path / "killed", [T0, T0 + TICK], [(T0, odometry(0.0, 0.0, 0.0, T0))], ODOMETRY)
    (bag / "metadata.yaml").unlink()  # written when the recorder stops
    (tmp_path / "empty").mkdir()
    for folder in (bag, tmp_path / "empty"):
        with pytest.raises(DatasetError, match=f"{folder} has no metadata.yaml.*ros2 bag reindex"):
            read_drive(folder, "/cam")
