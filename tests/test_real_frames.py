"""Real labelled video frames as a training signal: places from sequences, views with their labels,
stacked caches and mixed batches, and a training run that uses them."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from structvpr_edge.data.real_frames import FrameViews, real_places
from structvpr_edge.errors import ConfigError, DatasetError
from structvpr_edge.train.config import load_config
from structvpr_edge.train.data import MixedPlaceSampler, PlaceBatchSampler, RowStack, near_places
from structvpr_edge.train.trainer import Stage, setup_context, train

from .test_train import tiny_config

SKY, ROAD = 10, 0


def write_video_set(root: Path, frames: dict[str, int], size: tuple[int, int] = (64, 48)) -> Path:
    """SEQ_FRAME.jpg frames 30 apart with Cityscapes-id labels: bright sky above a horizon row, dark road below."""
    rng = np.random.default_rng(0)
    for sequence, count in frames.items():
        for i in range(count):
            label = np.full(size[::-1], ROAD, np.uint8)
            label[: int(rng.integers(10, 30))] = SKY
            stem = f"{sequence}_{1000 + 30 * i:06d}"
            grey = np.where(label == SKY, 230, 30).astype(np.uint8)
            for kind, pixels, suffix in (("images", cv2.merge([grey] * 3), ".jpg"), ("labels", label, ".png")):
                (root / kind / "train").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / kind / "train" / f"{stem}{suffix}"), pixels)
    return root


@pytest.fixture
def video_set(tmp_path: Path) -> Path:
    return write_video_set(tmp_path / "video", {"SEQA": 5, "SEQB": 4})


def test_places_are_windows_of_one_sequence_with_views_and_their_labels(video_set, tmp_path):
    groups = real_places(video_set, "train", "cityscapes", tmp_path / "cache", FrameViews(window=2, views=3))
    assert [len(p) for p in groups.places] == [3] * 5  # SEQA: 3 windows of 2, 2, 1 frames; SEQB: 2 windows
    assert {p.name.rsplit("_", 2)[0] for p in groups.paths[:3]} == {"SEQA"}
    assert groups.paths[0].name.startswith("SEQA_001000") and groups.paths[1].name.startswith("SEQA_001030")
    for image_path, label_path in zip(groups.paths, groups.label_paths):
        image, label = cv2.imread(str(image_path)), cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == label.shape and set(np.unique(label)) <= {SKY, ROAD}
        # the crop moved image and labels alike (the light changed, the order of brightness did not)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        _, bright = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert (bright.astype(bool) == (label == SKY)).mean() > 0.97


def test_views_are_written_once_and_drawn_the_same_again(video_set, tmp_path):
    conf = FrameViews(window=2, views=3)
    first = real_places(video_set, "train", "cityscapes", tmp_path / "cache", conf)
    stamps = [p.stat().st_mtime_ns for p in first.paths]
    pixels = cv2.imread(str(first.paths[4]))
    first.paths[4].unlink()
    first.label_paths[4].unlink()
    again = real_places(video_set, "train", "cityscapes", tmp_path / "cache", conf)
    assert again.paths == first.paths
    assert [p.stat().st_mtime_ns for i, p in enumerate(again.paths) if i != 4] == stamps[:4] + stamps[5:]
    assert np.array_equal(cv2.imread(str(again.paths[4])), pixels)  # the missing view redrawn identically


def test_relight_off_writes_the_frames_as_filmed(video_set, tmp_path):
    """``relight=False``: a view is a crop of the frame in its own light (here the whole frame, up to JPEG)."""
    frame = cv2.imread(str(video_set / "images" / "train" / "SEQA_001000.jpg")).astype(float)
    error = {}
    for relight in (True, False):
        groups = real_places(video_set, "train", "cityscapes", tmp_path / "cache", FrameViews(window=1, views=3, crop_min=1.0, relight=relight))
        error[relight] = max(np.abs(cv2.imread(str(p)).astype(float) - frame).mean() for p in groups.paths[:3])
    assert error[False] < 2 < error[True], error


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "images" / "train" / "SEQA_001000.jpg").rename(root / "images" / "train" / "nosequence.jpg"), "SEQUENCE_FRAME"),
    (lambda root: cv2.imwrite(str(root / "labels" / "train" / "SEQA_001000.png"), np.zeros((10, 10), np.uint8)), "label map of its size"),
    (lambda root: (root / "labels" / "train" / "SEQB_001000.png").unlink(), "label map"),
])
def test_bad_real_frames_are_dataset_errors_naming_the_file(video_set, tmp_path, damage, message):
    damage(video_set)
    with pytest.raises(DatasetError, match=message):
        real_places(video_set, "train", "cityscapes", tmp_path / "cache", FrameViews())


def test_an_unknown_label_scheme_is_refused(video_set, tmp_path):
    with pytest.raises(ConfigError):
        real_places(video_set, "train", "mapillary", tmp_path / "cache", FrameViews())


def test_row_stack_reads_rows_as_the_concatenation_would():
    a, b = np.arange(12).reshape(6, 2), 100 + np.arange(8).reshape(4, 2)
    indices = np.array([7, 0, 5, 6, 9, 2])
    assert np.array_equal(RowStack(a, b)[indices], np.concatenate([a, b])[indices])
    assert len(RowStack(a, b)) == 10


def test_mixed_batches_hold_main_and_real_places_with_distinct_labels():
    main_places = [np.array([4 * p + i for i in range(4)]) for p in range(10)]
    real = [np.array([40 + 3 * p + i for i in range(3)]) for p in range(5)]
    sampler = MixedPlaceSampler(PlaceBatchSampler(main_places, 4, 2), PlaceBatchSampler(real, 2, 2))
    for _, (_, indices, labels) in zip(range(6), sampler):
        assert len(indices) == 12 and (indices[:8] < 40).all() and (indices[8:] >= 40).all()
        assert set(labels[:8]).isdisjoint(labels[8:]) and (labels[8:] >= 10).all()


def test_real_places_per_batch_must_leave_room_for_the_main_dataset(place_dataset, tmp_path):
    config = tiny_config(place_dataset, tmp_path / "cache", real={"root": "x", "places_per_batch": 6})
    with pytest.raises(ConfigError, match="real.places_per_batch"):
        load_config(None, config)


@pytest.mark.slow
def test_teacher_and_student_train_on_synthetic_and_real_places(place_dataset, video_set, tmp_path):
    torch.set_num_threads(1)
    real = {"root": str(video_set), "scheme": "cityscapes", "places_per_batch": 2, "views": 4}
    teacher = train(load_config(None, tiny_config(place_dataset, tmp_path / "cache", mode="teacher", real=real)), tmp_path / "teacher")
    config = load_config(None, tiny_config(place_dataset, tmp_path / "cache", mode="structvpr++", real=real))
    stage = Stage(config, "student", tmp_path / "run", setup_context("cpu"), teacher)
    main_rows = len(stage.groups.paths)
    assert len(stage.inputs) == main_rows + 5 * 4 and len(stage.fractions) == main_rows + 5 * 4
    epoch, indices, labels = next(iter(stage.sampler()))
    assert (indices >= main_rows).sum() == 2 * config.optim.images_per_place
    terms, groups = stage.losses(stage.parts, indices, torch.from_numpy(labels), step=10)
    assert {"metric", "mask", "distill"} <= set(terms) and all(torch.isfinite(t) for t in terms.values())
    real_anchors = stage.batch(stage.parts, indices, torch.from_numpy(labels)).real  # what distill.real_weight weighs
    assert real_anchors is not None and np.array_equal(real_anchors.numpy(), indices >= main_rows)
    assert stage.run(resume=False).exists()


def test_windows_are_placed_along_their_sequence_by_time(video_set, tmp_path):
    """No GPS: a window sits at its mean frame time times the assumed speed; sequences far apart."""
    groups = real_places(video_set, "train", "cityscapes", tmp_path / "cache", FrameViews(window=2, views=2), speed_mps=8.0)
    seqa, seqb = groups.positions[:3], groups.positions[3:]
    assert np.allclose(np.diff(seqa[:, 1]), [2 * 8.0, 1.5 * 8.0])  # 2 s between windows of two frames; the last holds one
    assert np.allclose(seqa[0], [0, (1000 + 1030) / 2 / 30 * 8.0])
    assert np.linalg.norm(seqb[0] - seqa[0]) > 1e5
    positions, places = torch.from_numpy(groups.positions), torch.arange(len(groups))
    near = near_places(positions, places, places, 25.0)
    assert near[0].tolist() == [False, True, False, False, False] and not near[:3, 3:].any()
