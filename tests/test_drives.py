"""Drive recordings in, poses out: ROS 2 bags and pose CSVs for mapping, localization and
evaluation (data/drives.py, runtime/outputs.py, eval/drive.py, the CLI), on genuine bags that
SynthCity writes and on small hand-made ones for each kind of bad input."""
from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the ros extra: pip install -e '.[ros]'")
pytest.importorskip("pyproj", reason="the ros extra: pip install -e '.[ros]'")

from structvpr_edge import cli
from structvpr_edge.cli import main
from structvpr_edge.data import drives
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.data.drives import Skipped, Track, read_drive, read_frames, read_pose_csv, read_track, typestore, write_bag
from structvpr_edge.data.synthcity.bags import CAMERA_TOPIC, FIX_TOPIC, generate_route_bags
from structvpr_edge.errors import DatasetError, MapError
from structvpr_edge.runtime.edgevpr import EdgeVPR, Localization, Match
from structvpr_edge.runtime.map import PlaceMap
from structvpr_edge.runtime.outputs import DIAGNOSTICS_TOPIC, POSE_TOPIC, TOPICS, covariance, messages

PLACES = 10
T0 = 1_000_000_000_000
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
FIX, ODOMETRY, POSE = "sensor_msgs/msg/NavSatFix", "nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The demo route (queries in hard conditions) in the folder layout and as two MCAP bags."""
    out = tmp_path_factory.mktemp("drives")
    generate_route_bags(out, seed=3, places=PLACES)
    return out


@pytest.fixture(scope="module")
def vpr():
    with EdgeVPR("structvprpp", threads=1, max_batch=16, top_k=10) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def cli_runs(synth: Path, tmp_path_factory) -> dict:
    """build-map from drive1's bag, then localize drive2's bag into an MCAP and a CSV, through the CLI."""
    out = tmp_path_factory.mktemp("cli")
    drive = ["--image-topic", CAMERA_TOPIC]
    common = ["--model", "structvprpp", "--threads", "1"]
    codes = [main(["build-map", *common, "--bag", str(synth / "drive1"), *drive, "--pose-topic", FIX_TOPIC, "--out", str(out / "map")])]
    for suffix in ("mcap", "csv"):
        codes.append(main(["localize", *common, "--map", str(out / "map"), "--bag", str(synth / "drive2"), *drive,
                           "--out", str(out / f"result.{suffix}")]))
    return {"codes": codes, "map": out / "map", "mcap": out / "result.mcap", "csv": out / "result.csv"}


def frame_stamps(bag: Path) -> list[int]:
    return [frame.stamp_ns for frame in read_frames(bag, CAMERA_TOPIC, Skipped())]


# ---- the targets ---------------------------------------------------------------------------


def test_a_drive_from_its_bag_localizes_like_the_same_frames_from_folders(synth: Path, vpr, tmp_path: Path):
    """Map from drive 1 and localize drive 2, once from the bags and once from the folder
    layout of the same frames: the same Recall@1 (and the same pose for every frame)."""
    from structvpr_edge.eval.drive import evaluate_drive
    from structvpr_edge.runtime.mapping import build_map, build_map_from_frames
    from structvpr_edge.runtime.preprocess import read_image

    frames, frame_id, total = read_drive(synth / "drive1", CAMERA_TOPIC, FIX_TOPIC)
    bag_map = build_map_from_frames(vpr, frames, frame_id, tmp_path / "bag-map", total=total)
    folder_map = build_map(vpr, synth / "route", tmp_path / "folder-map")
    assert frame_id == "utm_32N" and PlaceMap.load(tmp_path / "bag-map").manifest.frame_id == "utm_32N"
    assert len(bag_map) == len(folder_map) == PLACES  # 4.5 m apart: none within the 2 m spacing
    by_position = lambda poses: poses[np.lexsort(poses[:, :2].T)][:, :2]  # noqa: E731
    np.testing.assert_allclose(by_position(bag_map.poses), by_position(folder_map.poses), atol=0.01)  # the UTM -> lat/lon -> UTM round trip

    vpr.set_map(bag_map)
    frames, frame_id, total = read_drive(synth / "drive2", CAMERA_TOPIC, FIX_TOPIC)
    from_bag = evaluate_drive(vpr, frames, frame_id=frame_id, total=total)

    queries = load_dataset(synth / "route").queries
    order = np.argsort([int(v) for v in queries.column("place_id")], kind="stable")  # driving order, as in the bag
    vpr.set_map(folder_map)
    found = vpr.localize_batch([read_image(queries.paths[i]) for i in order])
    estimate = np.array([[r.east, r.north] for r in found])
    folder_recall = float(np.mean(np.linalg.norm(estimate - queries.utm[order], axis=1) <= 25))
    assert from_bag.recall["1"] == folder_recall
    np.testing.assert_allclose(from_bag.estimate, estimate, atol=0.01)
    np.testing.assert_allclose(from_bag.truth, queries.utm[order], atol=0.01)


def test_localize_writes_an_mcap_that_rosbags_and_mcap_read_back_message_by_message(synth: Path, cli_runs: dict):
    from mcap.reader import make_reader
    from rosbags.highlevel import AnyReader

    assert cli_runs["codes"] == [0, 0, 0]
    stamps = frame_stamps(synth / "drive2")
    with AnyReader([cli_runs["mcap"]]) as reader:
        assert {name: info.msgtype for name, info in reader.topics.items()} == TOPICS
        read = [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    poses = [(t, m) for topic, t, m in read if topic == POSE_TOPIC]
    diagnostics = [(t, m) for topic, t, m in read if topic == DIAGNOSTICS_TOPIC]
    assert [t for t, _ in poses] == [t for t, _ in diagnostics] == stamps  # one of each per frame, at the frame's own time
    for (t, pose), (_, diagnostic) in zip(poses, diagnostics):
        assert drives.stamp_ns(pose.header) == drives.stamp_ns(diagnostic.header) == t
        assert pose.__msgtype__ == TOPICS[POSE_TOPIC] and pose.header.frame_id == "utm_32N"
        cov = pose.pose.covariance.reshape(6, 6)
        assert np.all(np.linalg.eigvalsh(cov[:2, :2]) >= 1.0 - 1e-9) and cov[2, 2] == 1e6
        assert 519_000 < pose.pose.pose.position.x < 521_000 and 3_999_000 < pose.pose.pose.position.y < 4_001_000
        status = diagnostic.status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.level in (0, 1) and values["confident"] in ("true", "false") and {"similarity", "margin", "match_1"} <= set(values)
    with open(cli_runs["mcap"], "rb") as handle:
        summary = make_reader(handle).get_summary()
        handle.seek(0)
        metadata = {m.name: m.metadata for m in make_reader(handle).iter_metadata()}
    assert {s.name: s.encoding for s in summary.schemas.values()} == {t: "ros2msg" for t in TOPICS.values()}
    assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    assert metadata["structvpr_edge"]["frame_id"] == "utm_32N"

    with open(cli_runs["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["stamp_ns"]) for r in rows] == stamps
    np.testing.assert_allclose([(float(r["east"]), float(r["north"])) for r in rows],
                               [(p.pose.pose.position.x, p.pose.pose.position.y) for _, p in poses], atol=0.01)


def test_eval_of_a_drive_reports_recall_error_and_plots_the_route(synth: Path, cli_runs: dict, tmp_path: Path, capsys):
    args = ["eval", "--model", "structvprpp", "--map", str(cli_runs["map"]), "--bag", str(synth / "drive2"), "--image-topic", CAMERA_TOPIC,
            "--pose-topic", FIX_TOPIC, "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == PLACES and report["frame_id"] == "utm_32N" and set(report["recall"]) == {"1", "5", "10"}
    assert 0 <= report["recall"]["1"] <= report["recall"]["10"] <= 1 and report["error_m"]["median"] >= 0
    assert cv2.imread(str(tmp_path / "r.png")) is not None


def test_eval_of_a_drive_with_temporal_localizes_through_the_filter(synth: Path, cli_runs: dict, tmp_path: Path, monkeypatch):
    from structvpr_edge.eval import drive

    filters = []

    def spy(vpr, *args, **kwargs):
        filters.append(vpr.filter)
        return evaluate_drive(vpr, *args, **kwargs)

    evaluate_drive = drive.evaluate_drive
    monkeypatch.setattr(drive, "evaluate_drive", spy)
    base = ["eval", "--model", "structvprpp", "--map", str(cli_runs["map"]), "--bag", str(synth / "drive2"), "--image-topic", CAMERA_TOPIC,
            "--pose-topic", FIX_TOPIC, "--json", str(tmp_path / "r.json")]
    assert main(base) == 0 and main([*base, "--temporal"]) == 0
    assert filters[0] is None and filters[1] is not None and len(filters[1].rows) > 0  # the filter saw the drive's frames
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == PLACES


# ---- reading drives --------------------------------------------------------------------------


def test_a_window_of_bag_time_reads_only_its_frames_and_a_listing_decodes_none(synth: Path):
    listed = list(read_frames(synth / "drive1", CAMERA_TOPIC, Skipped(), pixels=False))
    assert len(listed) == PLACES and all(f.image.size == 0 and f.bag_ns > 0 for f in listed)
    window = (listed[3].bag_ns, listed[6].bag_ns)  # [start, stop): frames 3, 4, 5
    read = list(read_frames(synth / "drive1", CAMERA_TOPIC, Skipped(), window=window))
    assert [(f.bag_ns, f.stamp_ns) for f in read] == [(f.bag_ns, f.stamp_ns) for f in listed[3:6]]
    assert all(f.image.ndim == 3 and f.image.size > 0 for f in read)


def test_a_ray_worker_refuses_a_batch_whose_frames_are_no_longer_in_the_bag(synth: Path):
    from structvpr_edge.cluster import FrameDescriber

    listed = list(read_frames(synth / "drive1", CAMERA_TOPIC, Skipped(), pixels=False))
    worker = FrameDescriber("structvprpp", "auto", 1, str(synth / "drive1"), CAMERA_TOPIC)
    batch = {"row": np.arange(2), "bag_ns": np.array([f.bag_ns for f in listed[:2]]), "stamp_ns": np.array([f.stamp_ns for f in listed[:2]])}
    assert worker(batch)["descriptor"].shape == (2, worker.vpr.info.layout.dim)
    batch["stamp_ns"][1] += 1  # a frame the bag does not hold (rewritten since it was listed)
    with pytest.raises(DatasetError, match="1 frames of this batch are not in"):
        worker(batch)


@pytest.mark.slow
def test_a_ray_build_of_a_bag_is_the_bag_built_in_one_process(synth: Path, cli_runs: dict, vpr, tmp_path: Path):
    """build-map --bag --ray on a local Ray, and the same with 2 workers and batches of 4 frames
    (each worker reading its own stretches of the bag): same places, same descriptors."""
    ray = pytest.importorskip("ray", reason="the Ray build needs structvpr-edge[cluster]")
    from structvpr_edge.cluster import RayConfig, ray_frame_describer
    from structvpr_edge.runtime.mapping import build_map_from_frames

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["build-map", "--model", "structvprpp", "--threads", "1", "--bag", str(synth / "drive1"), "--image-topic", CAMERA_TOPIC,
                     "--pose-topic", FIX_TOPIC, "--out", str(tmp_path / "ray"), "--ray"])
        frames, frame_id, total = read_drive(synth / "drive1", CAMERA_TOPIC, FIX_TOPIC, pixels=False)
        describe = ray_frame_describer("structvprpp", vpr.info.layout.dim, RayConfig(workers=2, batch_size=4), synth / "drive1", CAMERA_TOPIC)
        batched = build_map_from_frames(vpr, frames, frame_id, tmp_path / "batched", total=total, describe=describe)
    finally:
        ray.shutdown()
    single = PlaceMap.load(cli_runs["map"])
    assert code == 0 and len(single) == PLACES
    for on_ray in (PlaceMap.load(tmp_path / "ray"), batched):
        assert [p.id for p in on_ray.places] == [p.id for p in single.places]
        np.testing.assert_allclose(on_ray.poses, single.poses)
        np.testing.assert_allclose(on_ray.index.reconstruct_n(0, len(on_ray)), single.index.reconstruct_n(0, len(single)), atol=1e-6)


def image_message(pixels: np.ndarray, stamp: int, encoding: str, pad: int = 0):
    """A raw sensor_msgs/msg/Image, rows padded by ``pad`` bytes (step > width * channels)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    data = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], axis=1)
    return typestore().types[IMAGE](header=drives.header(stamp, "camera"), height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                                    is_bigendian=0, step=data.shape[1], data=data.ravel())


def jpeg(seed: int, size: tuple[int, int] = (24, 32)) -> bytes:
    return cv2.imencode(".jpg", np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))[1].tobytes()


def odometry(x: float, y: float, yaw: float, stamp: int, frame_id: str = "odom"):
    types = typestore().types
    pose = types["geometry_msgs/msg/Pose"](position=types["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                                           orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2)))
    twist = types["geometry_msgs/msg/Twist"](linear=types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                             angular=types["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0))
    return types[ODOMETRY](header=drives.header(stamp, frame_id), child_frame_id="base_link",
                           pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                           twist=types["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36)))


def frames_bag(path: Path, stamps: list[int], poses: list[tuple[int, object]], pose_type: str, storage: str = "mcap") -> Path:
    records = [("/cam", t, drives.compressed_image(jpeg(i), t)) for i, t in enumerate(stamps)] + [("/pose", t, m) for t, m in poses]
    return write_bag(path, {"/cam": COMPRESSED, "/pose": pose_type}, sorted(records, key=lambda r: r[1]), storage=storage)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_poses_are_interpolated_at_each_frame_and_frames_without_one_are_counted(tmp_path: Path, storage: str):
    """Odometry at 1 Hz along x; frames every 0.25 s, two of them 3 s past the last pose."""
    poses = [(T0 + i * 10**9, odometry(10.0 * i, 0.0, 0.0, T0 + i * 10**9)) for i in range(5)]
    stamps = [T0 + i * 250_000_000 for i in range(17)] + [T0 + 7 * 10**9, T0 + 8 * 10**9]
    bag = frames_bag(tmp_path / "odom", stamps, poses, ODOMETRY, storage)
    skipped = Skipped()
    frames, frame_id, total = read_drive(bag, "/cam", "/pose", skipped, max_gap_s=0.5)
    posed = list(frames)
    assert (frame_id, total) == ("odom", len(stamps))
    assert [f.east for f in posed] == pytest.approx([2.5 * i for i in range(17)])  # 10 m/s, linear between poses
    assert all(f.heading == pytest.approx(90.0) for f in posed)  # yaw 0 (ENU east) is compass 90
    assert skipped.no_pose == 2 and posed[3].image.shape == (24, 32, 3)


def test_a_minimum_spacing_keeps_a_standing_car_out_of_the_map():
    """1 m/s for 10 s, then 10 s standing at a light, a frame every 0.5 s: a place per 2 m, none while standing."""
    track = Track(np.array([0, 10**10, 2 * 10**10]), np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 0.0]]), np.full(3, np.nan), "odom")
    frames = [drives.DriveFrame(i * 500_000_000, np.zeros((1, 1, 3), np.uint8), str(i)) for i in range(41)]
    skipped = Skipped()
    kept = list(drives.posed(frames, track, skipped, max_gap_s=10.0, min_spacing_m=2.0))
    assert [f.east for f in kept] == pytest.approx([0, 2, 4, 6, 8, 10]) and skipped.too_close == 41 - 6
    assert len(list(drives.posed(frames, track, Skipped(), max_gap_s=10.0))) == 41  # no spacing: every frame


def test_fixes_without_a_fix_and_messages_going_back_in_time_are_counted(tmp_path: Path):
    fixes = [(T0 + i * 10**9, drives.nav_sat_fix(48.0 + 1e-5 * i, 11.0, T0 + i * 10**9)) for i in range(6)]
    fixes[2] = (fixes[2][0], drives.nav_sat_fix(48.0, 11.0, fixes[2][0], status=drives.NO_FIX))
    fixes[3] = (fixes[3][0], drives.nav_sat_fix(float("nan"), 11.0, fixes[3][0]))
    fixes.append((T0 + 6 * 10**9, drives.nav_sat_fix(48.0, 11.0, T0 + 10**9)))  # stamped 5 s before the fix logged before it
    stamps = [T0, T0 + 2 * 10**9, T0 + 1 * 10**9, T0 + 5 * 10**9]  # the third frame's stamp goes back
    records = [("/cam", T0 + i * 10**9, drives.compressed_image(jpeg(i), t)) for i, t in enumerate(stamps)]
    bag = write_bag(tmp_path / "gnss", {"/cam": COMPRESSED, "/pose": FIX}, sorted(records + [("/pose", t, m) for t, m in fixes], key=lambda r: r[1]))
    skipped = Skipped()
    track = read_track(bag, "/pose", skipped)
    assert track.frame_id == "utm_32N" and len(track.stamps_ns) == 4  # 48 N 11 E: Munich, zone 32, northern hemisphere
    assert (skipped.no_fix, skipped.backwards) == (2, 1)
    assert [f.stamp_ns for f in read_frames(bag, "/cam", skipped)] == [stamps[0], stamps[1], stamps[3]] and skipped.backwards == 2
    lat, lon = drives.utm_to_latlon(track.xy[:, 0], track.xy[:, 1], "EPSG:32632")
    np.testing.assert_allclose(lat, [48.0, 48.00001, 48.00004, 48.00005], atol=1e-9)


def test_image_encodings_bgr_rgb_mono_padded_rows_and_an_unsupported_one():
    bgr = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(drives.image_of(image_message(bgr, 0, "bgr8", pad=3), "f"), bgr)
    np.testing.assert_array_equal(drives.image_of(image_message(bgr[..., ::-1].copy(), 0, "rgb8"), "f"), bgr)
    mono = drives.image_of(image_message(bgr[..., 0].copy(), 0, "mono8", pad=1), "f")
    np.testing.assert_array_equal(mono, np.repeat(bgr[..., :1], 3, axis=2))
    with pytest.raises(DatasetError, match="'yuv422'"):
        drives.image_of(image_message(bgr[..., :2].copy(), 0, "yuv422"), "f")
    short = image_message(bgr, 0, "bgr8")
    short.data = short.data[:-5]
    with pytest.raises(DatasetError, match="truncated"):
        drives.image_of(short, "f")
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_array_equal(drives.image_of(drives.compressed_image(png, 0, fmt="png"), "f"), bgr)
    with pytest.raises(DatasetError, match="truncated"):
        drives.image_of(drives.compressed_image(jpeg(0)[:-40], 0), "f")


def test_a_missing_topic_lists_the_topics_there_are_and_a_wrong_type_is_named(synth: Path, capsys):
    with pytest.raises(DatasetError, match=f"no topic '/front'.*{CAMERA_TOPIC} \\(sensor_msgs/msg/CompressedImage\\), {FIX_TOPIC}"):
        drives.check_drive(synth / "drive1", "/front", FIX_TOPIC)
    with pytest.raises(DatasetError, match="carries sensor_msgs/msg/NavSatFix"):
        drives.check_drive(synth / "drive1", FIX_TOPIC)
    assert main(["localize", "--model", "structvprpp", "--map", "m", "--bag", str(synth / "drive1"), "--image-topic", "/front"]) == 2
    assert "its topics" in capsys.readouterr().err


def test_a_truncated_bag_is_refused_and_no_map_or_result_is_written(synth: Path, tmp_path: Path, capsys):
    bag = tmp_path / "cut.mcap"  # a bare MCAP file is a bag too
    source = next((synth / "drive1").glob("*.mcap")).read_bytes()
    bag.write_bytes(source[: len(source) * 2 // 3])
    with pytest.raises(DatasetError, match="damaged or truncated"):
        drives.check_drive(bag, CAMERA_TOPIC)
    out = tmp_path / "map"
    assert main(["build-map", "--model", "structvprpp", "--bag", str(bag), "--image-topic", CAMERA_TOPIC, "--pose-topic", FIX_TOPIC,
                 "--out", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err and not out.exists()


def test_a_frame_damaged_inside_a_whole_bag_stops_the_map_before_it_is_written(vpr, tmp_path: Path):
    from structvpr_edge.runtime.mapping import build_map_from_frames

    stamps = [T0 + i * 10**8 for i in range(20)]
    records = [("/cam", t, drives.compressed_image(jpeg(i, (240, 320))[: -30 if i == 17 else None], t)) for i, t in enumerate(stamps)]
    records += [("/pose", t, odometry(3.0 * i, 0.0, 0.0, t)) for i, t in enumerate(stamps)]
    bag = write_bag(tmp_path / "damaged", {"/cam": COMPRESSED, "/pose": ODOMETRY}, sorted(records, key=lambda r: r[1]))
    frames, frame_id, _ = read_drive(bag, "/cam", "/pose")
    with pytest.raises(DatasetError, match="truncated"):
        build_map_from_frames(vpr, frames, frame_id, tmp_path / "map")
    assert not (tmp_path / "map").exists()  # 16 frames described, nothing written


@pytest.mark.parametrize("suffix", [".mcap", ".csv"])
def test_poses_are_written_whole_or_not_at_all(tmp_path: Path, suffix: str):
    from structvpr_edge.runtime.outputs import write_poses

    def results(fail: bool):
        for i in range(3):
            if fail and i == 2:
                raise DatasetError("the drive ends in a damaged chunk")
            yield T0 + i, f"/cam@{T0 + i}", localization()

    out = tmp_path / f"result{suffix}"
    assert write_poses(out, results(fail=False), "utm_32N", {}) == 3 and out.stat().st_size > 0
    before = out.read_bytes()
    with pytest.raises(DatasetError):
        write_poses(out, results(fail=True), "utm_32N", {})
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [out.name]  # the old file, no leftovers


# ---- images with a pose CSV ------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_pose_csv_in_lat_lon_or_metres_and_its_bad_rows(synth: Path, tmp_path: Path):
    images = sorted((synth / "route" / "images" / "test" / "database").glob("*.jpg"))[:4]
    rows = [{"file": p.name, "lat": 48.0 + 1e-4 * i, "lon": 11.0, "heading": "" if i else 90, "time": 10 - i} for i, p in enumerate(images)]
    skipped = Skipped()
    files, track = read_pose_csv(write_csv(tmp_path / "ll.csv", rows), images[0].parent, min_spacing_m=5.0, skipped=skipped)
    assert track.frame_id == "utm_32N" and files == images[::-1] and skipped.too_close == 0  # sorted by time; 11 m apart
    assert np.isnan(track.heading[:3]).all() and track.heading[3] == 90
    files, track = read_pose_csv(write_csv(tmp_path / "m.csv", [{"file": str(p), "east": 5.0 * (i // 2), "north": 0} for i, p in enumerate(images)]),
                                 tmp_path, min_spacing_m=2.0, skipped=skipped)
    assert track.frame_id == "" and files == images[::2] and skipped.too_close == 2  # absolute paths; pairs at one position
    bad = {"no-position": [{"file": images[0].name, "x": 1, "y": 2}], "no-file": [{"east": 1, "north": 2}],
           "text": [{"file": images[0].name, "east": "12,5", "north": 2}], "nan": [{"file": images[0].name, "east": "nan", "north": 2}],
           "missing-image": [{"file": "nope.jpg", "east": 1, "north": 2}]}
    expected = {"no-position": "needs the columns", "no-file": "needs the columns", "text": "line 2.*'12,5'", "nan": "line 2.*'nan'",
                 "missing-image": "line 2: no image"}
    for name, content in bad.items():
        with pytest.raises(DatasetError, match=expected[name]):
            read_pose_csv(write_csv(tmp_path / f"{name}.csv", content), images[0].parent)


def test_build_map_from_images_and_a_pose_csv_and_appending_another_frame_is_refused(synth: Path, vpr, tmp_path: Path):
    from structvpr_edge.runtime.mapping import build_map

    folder = synth / "route" / "images" / "test" / "database"
    images = sorted(folder.glob("*.jpg"))[:3]
    poses = write_csv(tmp_path / "p.csv", [{"file": p.name, "lat": 48.0 + 1e-4 * i, "lon": 11.0} for i, p in enumerate(images)])
    place_map = build_map(vpr, folder, tmp_path / "map", poses=poses)
    assert len(place_map) == 3 and PlaceMap.load(tmp_path / "map").manifest.frame_id == "utm_32N"
    assert [p.source for p in place_map.places] == [p.name for p in images]
    with pytest.raises(MapError, match="frame"):
        build_map(vpr, synth / "route", tmp_path / "map", append=True)  # @east@north names: frame unknown


# ---- messages out ----------------------------------------------------------------------------


def localization(heading: float = 30.0) -> Localization:
    matches = [Match(0, "a", 100.0, 200.0, heading, 0.9), Match(7, "b", 104.0, 200.0, heading + 10, 0.8)]
    return Localization(matches, 100.0, 200.0, heading, True, 0.2)


def test_pose_messages_carry_the_heading_and_a_covariance_from_the_match_spread():
    result = localization()
    (_, pose), (_, diagnostic) = messages(result, 1_500_000_001, "utm_32N")
    q = pose.pose.pose.orientation
    assert drives.compass_heading(q) == pytest.approx(30.0) and drives.stamp_ns(pose.header) == 1_500_000_001
    cov = covariance(result)
    assert cov[0, 0] == pytest.approx(8.0 + 1.0) and cov[1, 1] == pytest.approx(1.0) and cov[0, 1] == 0  # offsets 0 and 4 m east
    assert cov[5, 5] == pytest.approx(math.radians(10) ** 2 / 2 + math.radians(5) ** 2)
    assert covariance(localization(float("nan")))[5, 5] == 1e6 and diagnostic.status[0].level == 0


def stand_in_ros_messages(monkeypatch) -> None:
    """Stand-in ROS message modules: classes that take fields by setattr and report their types
    as rclpy's generated classes do (``byte`` fields are ``octet``)."""
    def stand_in(msgtype: str) -> type:
        fields_and_types = {"level": "octet"} if msgtype.endswith("DiagnosticStatus") else {}
        return type(msgtype.rsplit("/", 1)[1], (), {"get_fields_and_field_types": lambda self: fields_and_types, "msgtype": msgtype})

    for package in ("std_msgs", "builtin_interfaces", "geometry_msgs", "diagnostic_msgs", "sensor_msgs"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
        module = types.ModuleType(f"{package}.msg")
        module.__getattr__ = lambda name, package=package: stand_in(f"{package}/msg/{name}")
        monkeypatch.setitem(sys.modules, f"{package}.msg", module)


def test_the_ros2_node_copies_the_messages_into_rclpy_types_without_ros(monkeypatch):
    from structvpr_edge.ros2 import to_rclpy

    stand_in_ros_messages(monkeypatch)
    (_, pose), (_, diagnostic) = messages(localization(), 2_000_000_003, "utm_32N")
    copied = to_rclpy(pose)
    assert copied.msgtype == "geometry_msgs/msg/PoseWithCovarianceStamped" and copied.header.stamp.msgtype == "builtin_interfaces/msg/Time"
    assert (copied.header.stamp.sec, copied.header.stamp.nanosec, copied.header.frame_id) == (2, 3, "utm_32N")
    assert copied.pose.covariance == covariance(localization()).ravel().tolist() and copied.pose.pose.position.x == 100.0
    status = to_rclpy(diagnostic).status[0]
    assert status.level == b"\x00" and status.values[0].msgtype == "diagnostic_msgs/msg/KeyValue"


def test_cli_defaults_are_the_drive_readers(capsys):
    assert (cli.MAX_POSE_GAP_S, cli.MAP_SPACING_M) == (drives.DEFAULT_MAX_GAP_S, drives.DEFAULT_MIN_SPACING_M)
    assert main(["build-map", "--model", "m.onnx", "--bag", "b", "--image-topic", "/c", "--out", "o"]) == 2
    assert "--bag needs --pose-topic" in capsys.readouterr().err
    assert main(["localize", "--model", "m.onnx", "--map", "m", "f.jpg", "--out", "r.mcap"]) == 2
    assert "--out goes with --bag" in capsys.readouterr().err
    assert main(["localize", "--model", "m.onnx", "--map", "m", "--bag", "b", "--image-topic", "/c", "--out", "r.txt"]) == 2
    assert ".mcap or .csv" in capsys.readouterr().err
