"""SynthCity: determinism, the smoke dataset's layout and metadata, and renderer geometry."""
from __future__ import annotations

import csv
import json
import signal
from collections import defaultdict
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pytest

from structvpr_edge.data.names import parse_name
from structvpr_edge.data.synthcity import (Camera, build_world, fixed_condition, generate_dataset, make_look,
                                           render_view, street_places, write_preview)
from structvpr_edge.data.synthcity import generate as gen
from structvpr_edge.data.synthcity.generate import interrupts_ignored
from structvpr_edge.data.synthcity.render import Canvas
from structvpr_edge.errors import ConfigError, DatasetError
from structvpr_edge.labels import CITYSCAPES_CLASSES, CLASS_ID

COLUMNS = ["path", "label_path", "split", "subset", "place_id", "traversal", "condition", "time_of_day", "season",
           "weather", "heading", "east", "north"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "smoke", seed=3, preset="smoke", workers=2)


@pytest.fixture(scope="module")
def rows(smoke: Path) -> list[dict]:
    with open(smoke / "metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_layout_and_label_files(smoke: Path, rows: list[dict]):
    for split in ("train", "val", "test"):
        for subset in ("database", "queries"):
            assert any((smoke / "images" / split / subset).iterdir()), (split, subset)
    assert len({r["path"] for r in rows}) == len(rows)
    for r in rows:
        image = cv2.imread(str(smoke / r["path"]))
        label = cv2.imread(str(smoke / r["label_path"]), cv2.IMREAD_UNCHANGED)
        assert r["label_path"] == "labels" + r["path"][len("images"):-len(".jpg")] + ".png"
        assert image.shape == (240, 320, 3) and label.shape == (240, 320) and label.dtype == np.uint8
        assert label.max() < len(CITYSCAPES_CLASSES)
        name = parse_name(r["path"])
        assert (name.east, name.north, name.heading) == (float(r["east"]), float(r["north"]), float(r["heading"]))
    manifest = json.loads((smoke / "synthcity.json").read_text())
    assert (manifest["seed"], manifest["preset"], manifest["version"]) == (3, "smoke", gen.VERSION)
    assert manifest["config"]["train_places"] == 40
    assert manifest["opencv"] == cv2.__version__  # the renderer's bytes follow the OpenCV version


def test_traversals_conditions_and_headings(rows: list[dict]):
    by_place: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        by_place[r["split"], int(r["place_id"])].append(r)
    train = [v for (split, _), v in by_place.items() if split == "train"]
    assert len(train) == 40
    assert all(len({int(r["traversal"]) for r in views}) >= 4 for views in train)
    for views in by_place.values():
        db = [r for r in views if r["subset"] == "database"]
        assert len(db) == 1 and db[0]["traversal"] == "0"
        for q in views:
            dh = (float(q["heading"]) - float(db[0]["heading"]) + 180) % 360 - 180
            dist = np.hypot(float(q["east"]) - float(db[0]["east"]), float(q["north"]) - float(db[0]["north"]))
            assert abs(dh) < 10 and dist < 5, q["path"]
    for split in ("val", "test"):
        split_rows = [r for r in rows if r["split"] == split]
        assert {r["condition"] for r in split_rows if r["subset"] == "database"} == {"reference"}
        assert {r["condition"] for r in split_rows if r["subset"] == "queries"} == {
            "dynamic", "night", "season", "weather", "hard"}
    test_db = [r for r in rows if r["split"] == "test" and r["subset"] == "database"]
    assert {(r["time_of_day"], r["season"], r["weather"]) for r in test_db} == {("day", "summer", "clear")}
    assert len(test_db) == 30
    # Train and test are different cities: far apart in the metric frame.
    train_east = np.array([float(r["east"]) for r in rows if r["split"] == "train"])
    assert np.abs(train_east.mean() - np.array([float(r["east"]) for r in test_db]).mean()) > 5000


def test_same_seed_same_images_regardless_of_workers(smoke: Path, rows: list[dict]):
    preset = gen.get_preset("smoke")
    shots = gen.plan_shots(3, preset)
    assert [(s.split, s.subset, s.place_id, s.traversal) for s in shots] == [
        (r["split"], r["subset"], int(r["place_id"]), int(r["traversal"])) for r in rows]
    for k in (0, 45, len(shots) // 2, len(shots) - 1):  # rendered here, single process
        bgr, label, cam, look = gen.render_shot(3, preset, shots[k])
        written = cv2.imread(str(smoke / rows[k]["label_path"]), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(label, written)
        assert f"{cam.heading:.2f}" == rows[k]["heading"]
        jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality])[1].tobytes()
        assert jpeg == (smoke / rows[k]["path"]).read_bytes()


def test_different_seed_gives_a_different_city():
    a, b, a2 = build_world(0), build_world(1), build_world(0)
    assert [x.template for x in a.buildings] == [x.template for x in a2.buildings]
    assert [(x.x0, x.y0) for x in a.buildings] != [(x.x0, x.y0) for x in b.buildings]
    assert not np.array_equal(a.xs, b.xs)


def test_bad_preset_and_foreign_folder_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "x", seed=0, preset="huge")
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "x", seed=0, preset="smoke", workers=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        generate_dataset(foreign, seed=0, preset="smoke")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_previous_dataset_is_replaced(tmp_path: Path):
    old = tmp_path / "old"
    (old / "images" / "train" / "database").mkdir(parents=True)
    (old / "images" / "train" / "database" / "stale.jpg").write_bytes(b"x")
    (old / gen.MANIFEST).write_text("{}")
    gen._prepare(old)
    assert not (old / "images" / "train" / "database" / "stale.jpg").exists()
    assert not (old / gen.MANIFEST).exists() and (old / "labels" / "test" / "queries").is_dir()


def _quad(x0: float, x1: float, y: float, z0: float, z1: float) -> np.ndarray:
    """A wall facing south (towards a camera at the origin looking north)."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]])


def test_zbuffer_near_covers_far_in_any_draw_order():
    cam = Camera(0.0, 0.0, 1.5, heading=0.0)
    for near_first in (True, False):
        canvas = Canvas(cam)
        near = (_quad(-1, 1, 10, 0.5, 2.5), CLASS_ID["car"], (0, 0, 255))
        far = (_quad(-5, 5, 20, 0, 6), CLASS_ID["building"], (255, 0, 0))
        for pts, cls, colour in (near, far) if near_first else (far, near):
            canvas.polygon(pts, cls, colour=np.array(colour, float))
        row = canvas.label[120]
        assert canvas.label[120, 160] == CLASS_ID["car"] and canvas.img[120, 160, 2] == 255
        # Perspective: a 2 m wide quad at 10 m spans focal * 2 / 10 pixels; the far 10 m one at 20 m, 5x wider / 2.
        assert abs((row == CLASS_ID["car"]).sum() - cam.focal * 0.2) <= 2
        assert abs((row != 10).sum() - cam.focal * 0.5) <= 2
        assert np.isclose(canvas.inv[120, 160], 0.1, rtol=1e-3)


def test_near_plane_clipping_of_a_polygon_through_the_camera():
    cam = Camera(0.0, 0.0, 1.5, heading=0.0)
    canvas = Canvas(cam)
    wall = np.array([[2.0, -5, 0], [2.0, 30, 0], [2.0, 30, 8], [2.0, -5, 8]])  # passes beside and behind us
    canvas.polygon(wall, CLASS_ID["building"], colour=np.array([90.0, 90, 90]))
    right = canvas.label[:, 200:] == CLASS_ID["building"]
    assert right[:, -1].all() and not (canvas.label[:, :150] == CLASS_ID["building"]).any()


def test_render_view_sky_on_top_ground_below_and_labels_follow_geometry():
    world = build_world(5)
    place = street_places(world.streets[0], 4.5)[10]
    street = world.streets[place.street]
    cam = Camera(place.x, place.y, 1.7, place.heading)
    labels = {}
    for name, cond in (("day", ("reference", "day", "summer", "clear")), ("night", ("night", "night", "summer", "clear")),
                       ("winter", ("season", "day", "winter", "clear"))):
        look = make_look(fixed_condition(*cond), np.random.default_rng(0))
        bgr, labels[name] = render_view(world, cam, street, look, np.random.default_rng(1), dynamic=False)
        assert bgr.shape == (240, 320, 3) and bgr.dtype == np.uint8
    day = labels["day"]
    assert (day[0] == CLASS_ID["sky"]).mean() > 0.2 or (day[0] == CLASS_ID["building"]).mean() > 0.2
    bottom = day[-5:, 100:220]
    assert (bottom == CLASS_ID["road"]).mean() > 0.9
    assert np.array_equal(day, labels["night"])  # lighting never changes labels
    veg = CLASS_ID["vegetation"]
    assert (labels["winter"] == veg).sum() <= (day == veg).sum()


def test_preview_contact_sheet(tmp_path: Path):
    out = write_preview(tmp_path / "sheet.png", seed=1, size=(160, 120))
    sheet = cv2.imread(str(out))
    assert sheet.shape[0] >= 8 * 120 and sheet.shape[1] >= 6 * 160
    assert sheet.std() > 20


def test_route_is_a_drive_over_the_same_places(tmp_path):
    from structvpr_edge.data.dataset import load_dataset
    from structvpr_edge.data.synthcity.route import generate_route, route_places

    places = route_places(seed=3, places=6)
    steps = [np.hypot(b.x - a.x, b.y - a.y) for a, b in zip(places, places[1:]) if a.street == b.street]
    assert steps and all(3 < s < 6 for s in steps)  # consecutive places, a few metres apart
    dataset = load_dataset(generate_route(tmp_path / "route", seed=3, places=6, group="night"))
    assert len(dataset.database) == len(dataset.queries) == 6
    assert sorted(dataset.queries.column("place_id")) == sorted(dataset.database.column("place_id"))
    assert set(dataset.queries.column("condition")) == {"night"} and dataset.has_labels
    assert all(len(p) for p in dataset.positives)
    with pytest.raises(ConfigError):
        route_places(seed=3, places=10**6)


def test_one_split_alone_matches_the_full_generation(smoke: Path, rows: list[dict], tmp_path: Path):
    only = generate_dataset(tmp_path / "test-only", seed=3, preset="smoke", workers=1, splits=("test",))
    with open(only / "metadata.csv", newline="") as handle:
        alone = list(csv.DictReader(handle))
    assert alone == [r for r in rows if r["split"] == "test"]
    assert not any((only / "images" / "train" / "database").iterdir())
    first = alone[0]["label_path"]
    assert (cv2.imread(str(only / first), cv2.IMREAD_UNCHANGED) == cv2.imread(str(smoke / first), cv2.IMREAD_UNCHANGED)).all()
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path / "bad", seed=0, preset="smoke", splits=("holdout",))


def test_val_places_are_far_from_every_train_place(rows: list[dict]):
    """SynthCity 2.0: val has a city of its own, so choosing settings on val never sees train places."""
    def positions(split: str) -> np.ndarray:
        return np.array([(float(r["east"]), float(r["north"])) for r in rows if r["split"] == split])

    train, val = positions("train"), positions("val")
    nearest = np.sqrt(((val[:, None, :] - train[None, :, :]) ** 2).sum(-1)).min()
    assert nearest >= 50.0, nearest
    assert gen.city_seed(3, "val") not in (gen.city_seed(3, "train"), gen.city_seed(3, "test"))



def test_no_seed_trains_on_another_seeds_test_or_val_city():
    """Seed 1's train city was seed 0's test city, seed 2's its val city; published seeds keep theirs."""
    owners: dict[int, tuple[int, str]] = {}
    for seed in [*range(3003), 2**32 - 1]:
        for split in ("train", "val", "test"):
            city = gen.city_seed(seed, split)
            assert owners.setdefault(city, (seed, split)) == (seed, split), (city, owners[city], (seed, split))
    assert [gen.city_seed(0, s) for s in ("train", "test", "val")] == [0, 1, 2]
    assert [gen.city_seed(7, s) for s in ("train", "test", "val")] == [7, 7001, 7002]
    with pytest.raises(ConfigError, match="seed"):
        generate_dataset(Path("unused"), seed=2**32, preset="smoke")


def test_an_image_that_cannot_be_written_stops_the_dataset(tmp_path, monkeypatch):
    """OpenCV returns False on a full disk instead of raising: the dataset used to be marked complete without it."""
    real_imwrite = cv2.imwrite
    monkeypatch.setattr(cv2, "imwrite", lambda path, *a: False if "_p2@" in path else real_imwrite(path, *a))
    with pytest.raises(DatasetError, match="cannot write image .*_p2"):
        generate_dataset(tmp_path / "out", seed=3, preset="smoke", workers=1, splits=("val",))
    assert not (tmp_path / "out" / "synthcity.json").exists() and gen.holds_synthcity(tmp_path / "out")

def _query_offsets(preset: str) -> tuple[np.ndarray, np.ndarray]:
    """Lateral offset (m) and heading change (deg) of the first test queries from their places."""
    config = gen.get_preset(preset)
    shots = [s for s in gen.plan_shots(0, config) if s.split == "test" and s.subset == "queries"][:300]
    lateral, turn = [], []
    for shot in shots:
        look = gen.traversal_look(0, shot.split, shot.traversal, shot.group, shot.place.street)
        cam = gen.shot_camera(shot, look, config, np.random.default_rng([0, 3, shot.traversal, shot.place_id]))
        h = np.radians(shot.place.heading)
        lateral.append((cam.x - shot.place.x) * np.cos(h) - (cam.y - shot.place.y) * np.sin(h))
        turn.append((cam.heading - shot.place.heading + 180) % 360 - 180)
    return np.abs(lateral), np.abs(turn)


def test_benchmark_hard_changes_the_viewpoint_and_benchmark_does_not():
    lateral, turn = _query_offsets("benchmark")
    assert lateral.max() <= 0.6 + 1e-9 and turn.max() <= 3.5 + 1e-9
    lateral, turn = _query_offsets("benchmark-hard")
    assert 2.5 < lateral.max() <= 3.5 + 0.6 and 10 < turn.max() <= 15 + 3.5
    assert np.median(lateral) > 1.0  # most queries, not a few, see the street from elsewhere


def test_imperfect_segmenter_errs_more_at_night_in_fog():
    from structvpr_edge.data.synthcity.segmenter import error_rate, segmenter_labels
    from structvpr_edge.labels import IGNORE

    world = build_world(0)
    place = street_places(world.streets[0], 4.5)[3]
    cam = Camera(place.x, place.y, 1.6, place.heading, width=160, height=120)
    day, night = fixed_condition("reference", "day", "summer", "clear"), fixed_condition("hard", "night", "winter", "fog")
    _, label = render_view(world, cam, world.streets[0], make_look(day, np.random.default_rng(0)), np.random.default_rng(0))
    changed = {}
    for name, condition in (("day", day), ("night", night)):
        noisy = segmenter_labels(label, condition, np.random.default_rng(1))
        assert noisy.shape == label.shape and noisy.dtype == np.uint8
        kept = noisy != IGNORE
        assert 0.5 < kept.mean() < 1.0  # boundaries are eroded, most pixels keep a label
        changed[name] = float((noisy[kept] != label[kept]).mean())
    assert error_rate(night) > 3 * error_rate(day)
    assert changed["night"] > changed["day"], changed
    thin = np.isin(label, [CLASS_ID["pole"], CLASS_ID["traffic sign"], CLASS_ID["traffic light"]])
    assert segmenter_labels(label, night, np.random.default_rng(2))[thin].tolist() != label[thin].tolist() or not thin.any()



@pytest.mark.parametrize("rate", [0.03, 0.07, 0.25])
def test_confusion_blobs_cover_the_share_the_error_rate_states(rate):
    """Cut at ``rate`` itself, the upsampled field covered 0.0008 of the image at 0.03 and 0.11 at 0.25."""
    from structvpr_edge.data.synthcity.segmenter import confusion_blobs

    shares = [confusion_blobs((120, 160), rate, np.random.default_rng(seed)).mean() for seed in range(5)]
    assert np.allclose(shares, rate, atol=0.01), shares

def report_interrupt_handling(queue) -> None:
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_worker_processes_start_with_ctrl_c_ignored():
    """A Ctrl-C while a worker is still importing must not print its traceback: the worker is started
    with SIGINT ignored, and the parent's own handler is back afterwards."""
    # Python's own handler, as in a terminal: pytest run as a background shell job inherits SIGINT
    # ignored, and every worker would then see it ignored whatever the code does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        context = get_context("spawn")
        queue = context.Queue()
        with interrupts_ignored():
            worker = context.Process(target=report_interrupt_handling, args=(queue,))
            worker.start()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert queue.get(timeout=120) is True
        worker.join()
        started_plainly = context.Process(target=report_interrupt_handling, args=(queue,))
        started_plainly.start()
        assert queue.get(timeout=120) is False  # what a worker started outside it sees: the check can fail
        started_plainly.join()
    finally:
        signal.signal(signal.SIGINT, previous)
