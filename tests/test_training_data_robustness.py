"""What training reads stays sound on awkward input: real-frame windows never span a gap, a small
place still gives a positive pair, copies of an image are never its own match, positives agree with
``metrics.within``, bad metadata and settings are typed errors, caches follow their files, and
the shipped recipe (CamVid windows of 2, places of >= K images) draws the same data as before."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.data.dataset import Subset, VPRDataset, load_dataset
from structvpr_edge.data.places import place_groups
from structvpr_edge.data.real_frames import FrameViews, frame_windows, real_places, sequence_frames
from structvpr_edge.errors import ConfigError, DatasetError
from structvpr_edge.images import read_label
from structvpr_edge.metrics import within
from structvpr_edge.models.teacher import AlignedOutput
from structvpr_edge.train.config import load_config
from structvpr_edge.train.data import PlaceBatchSampler, RowStack, fraction_array
from structvpr_edge.train.distill import teacher_ranked_negatives
from tests.conftest import write_tiny_dataset


def write_frames(root: Path, numbers: list[int], label: int = 2) -> Path:
    """Frames SEQ_<number> of one sequence with one-class label maps (Cityscapes ids)."""
    rng = np.random.default_rng(0)
    for kind in ("images", "labels"):
        (root / kind / "train").mkdir(parents=True, exist_ok=True)
    for number in numbers:
        cv2.imwrite(str(root / "images" / "train" / f"SEQ_{number:06d}.jpg"), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "labels" / "train" / f"SEQ_{number:06d}.png"), np.full((12, 16), label, np.uint8))
    return root


def remake(path: Path, pixels: np.ndarray) -> None:
    """Write ``path`` again, as a later run of a segmenter would (a later modification time)."""
    stat = path.stat()
    cv2.imwrite(str(path), pixels)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def frame_numbers(groups_paths: list[Path], members: np.ndarray) -> list[int]:
    return sorted({int(groups_paths[m].stem.split("_")[1]) for m in members})


# 1: windows of real frames ------------------------------------------------------------------


def test_a_window_never_spans_a_gap_in_the_frame_numbers(tmp_path):
    root = write_frames(tmp_path / "video", [0, 30, 2010, 2040, 2070, 2101, 2130])  # a 65 s gap, then 31-frame jitter
    groups = real_places(root, "train", "cityscapes", tmp_path / "cache", FrameViews(window=3, views=3))
    assert [frame_numbers(groups.paths, m) for m in groups.places] == [[0, 30], [2010, 2040, 2070], [2101, 2130]]


def test_jitter_of_the_frame_step_does_not_cut_a_window():
    frames = [(n, Path(f"S_{n}.jpg")) for n in (0, 30, 61, 90, 119, 150)]
    assert [len(w) for w in frame_windows(frames, 3)] == [3, 3]
    assert [len(w) for w in frame_windows(frames[:1], 2)] == [1]


def test_camvid_windows_of_two_are_the_plain_pairs_and_of_three_stay_within_a_stretch(camvid):
    """The shipped recipe (window 2) gets the pairs it always had; a window of 3 never joins the
    stretches of 0016E5 that the val frames or the 65 s jump separate."""
    for frames in sequence_frames(camvid / "images" / "train").values():
        paths = [path for _, path in frames]
        assert frame_windows(frames, 2) == [paths[i : i + 2] for i in range(0, len(paths), 2)]
        number = dict((path, n) for n, path in frames)
        for window in frame_windows(frames, 3):
            assert number[window[-1]] - number[window[0]] <= 2 * 31


# 5: a place of fewer than K images ----------------------------------------------------------


def test_a_small_place_shows_each_of_its_images_before_any_repeat():
    places = [np.array([2 * i, 2 * i + 1]) for i in range(8)] + [np.array([16, 17, 18])]
    sampler = iter(PlaceBatchSampler(places, places_per_batch=4, images_per_place=4, seed=0))
    for _ in range(50):
        _, indices, labels = next(sampler)
        for place in np.unique(labels):
            assert set(indices[labels == place]) == set(places[place].tolist())


def old_draws(places: list[np.ndarray], p: int, k: int, seed: int, batches: int) -> list[np.ndarray]:
    """The sampler's draws as written before small places were handled (places of >= K images)."""
    out, epoch = [], 0
    while len(out) < batches:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(places))
        for start in range(0, len(places) // p * p, p):
            out.append(np.concatenate([rng.choice(places[q], size=k, replace=False) for q in order[start : start + p]]))
        epoch += 1
    return out[:batches]


def test_places_of_at_least_k_images_are_drawn_exactly_as_before():
    rng = np.random.default_rng(5)
    ends = np.cumsum(rng.integers(4, 8, size=40))
    places = [np.arange(end - size, end) for end, size in zip(ends, np.diff(np.concatenate([[0], ends])))]
    sampler = iter(PlaceBatchSampler(places, places_per_batch=8, images_per_place=4, seed=3))
    for expected in old_draws(places, 8, 4, seed=3, batches=12):
        assert np.array_equal(next(sampler)[1], expected)


# 6: copies of the anchor in the teacher-ranked negatives ------------------------------------


def aligned(rows: list[list[float]]) -> AlignedOutput:
    descriptor = F.normalize(torch.tensor(rows), dim=1)
    return AlignedOutput(descriptor, descriptor, torch.zeros(len(rows), 1, 1), torch.zeros(len(rows), 1))


def rows(parts: AlignedOutput, keep: list[int]) -> AlignedOutput:
    return AlignedOutput(*(x[keep] for x in (parts.descriptor, parts.global_vec, parts.group_vecs, parts.presence)))


def test_a_copy_of_the_anchor_is_not_its_true_match():
    """Rows 0 and 1 are one image drawn twice: the anchor's match is row 2, as without the copy."""
    teacher = aligned([[1, 0], [1, 0], [0.8, 0.6], [0, 1]])
    student = aligned([[1, 0], [1, 0], [0, 1], [0.6, 0.8]])
    places, ids = torch.tensor([0, 0, 0, 1]), torch.tensor([7, 7, 8, 9])
    got = teacher_ranked_negatives(student, teacher, places, ids)
    keep = [0, 2, 3]
    alone = teacher_ranked_negatives(rows(student, keep), rows(teacher, keep), places[keep], ids[keep])
    assert torch.allclose(got[[0, 2, 3]], alone) and torch.allclose(got[1], alone[0])


# 7: positives at the radius -----------------------------------------------------------------


def subset(utm: list[list[float]]) -> Subset:
    return Subset([Path(f"{i}.jpg") for i in range(len(utm))], np.array(utm, np.float64), np.full(len(utm), np.nan), None)


@pytest.mark.parametrize("offset", [25.0, 25.000008, 24.99999])
def test_positives_at_the_radius_agree_with_metrics_within(offset):
    """A database image 4 km from the database's mean, its query about 25 m away (centimetre names)."""
    for east in (504142.03, 504142.73, 504142.94, 504500.0):
        db, query = [[east, 4e6], [496000.0, 4e6]], [[east + offset, 4e6]]
        positives = VPRDataset(Path("."), "test", subset(db), subset(query), 25.0).positives[0]
        assert (0 in positives.tolist()) == bool(within(db[0], query[0], 25.0)[0]), (east, offset)


# 8: bad metadata and listings ---------------------------------------------------------------


def rewrite_metadata(root: Path, edit) -> None:
    text = (root / "metadata.csv").read_text()
    lines = text.splitlines()
    (root / "metadata.csv").write_text("\n".join([lines[0], *(edit(i, line) for i, line in enumerate(lines[1:]))]) + "\n")


@pytest.mark.parametrize("bad", ["p03", ""])
def test_a_place_id_that_is_not_an_integer_names_the_file_and_image(tmp_path, bad):
    root = write_tiny_dataset(tmp_path / "tiny")
    rewrite_metadata(root, lambda i, line: line.replace(",1,", f",{bad},") if i == 1 else line)
    with pytest.raises(DatasetError, match=rf"metadata.csv: place_id of images/test/database/\S+ must be an integer, got '{bad}'"):
        place_groups(load_dataset(root), min_images=1)


def test_a_listing_of_absolute_paths_under_a_relative_root_is_a_dataset_error(tmp_path, monkeypatch):
    root = write_tiny_dataset(tmp_path / "tiny")
    folder = root / "images" / "test" / "database"
    (folder.parent / "database_images_paths.txt").write_text("\n".join(str(p.resolve()) for p in sorted(folder.iterdir())))
    assert len(load_dataset(root).database) == 3  # an absolute root: absolute paths under it are fine
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match="database_images_paths.txt lists .* not under tiny/images"):
        load_dataset("tiny")


def test_metadata_must_be_utf8_and_may_carry_a_bom(tmp_path):
    root = write_tiny_dataset(tmp_path / "tiny")
    text = (root / "metadata.csv").read_text().replace("night", "nuit d'été")
    (root / "metadata.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"metadata.csv is not UTF-8"):
        load_dataset(root)
    (root / "metadata.csv").write_bytes(text.encode("utf-8-sig"))
    assert "nuit d'été" in load_dataset(root).queries.column("condition")
    assert len(place_groups(load_dataset(root), min_images=1)) == 3


# 9: places per batch ------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["optim", "teacher_optim"])
@pytest.mark.parametrize("count", [1, 0, -1])
def test_a_batch_needs_two_places(section, count):
    with pytest.raises(ConfigError, match=rf"{section}.places_per_batch must be >= 2"):
        load_config(None, {section: {"places_per_batch": count}})


@pytest.mark.parametrize("count", [0, -1])
def test_the_sampler_refuses_no_places_per_batch(count):
    with pytest.raises(DatasetError, match="places_per_batch must be >= 1"):
        PlaceBatchSampler([np.arange(4 * i, 4 * i + 4) for i in range(10)], count, 4)


# 10: caches follow their files --------------------------------------------------------------


def test_real_views_follow_label_maps_remade_in_place(tmp_path):
    root = write_frames(tmp_path / "video", [0, 30, 60, 90], label=2)
    conf = FrameViews(window=2, views=2)
    first = real_places(root, "train", "cityscapes", tmp_path / "cache", conf)
    assert np.unique(read_label(first.label_paths[0], None)).tolist() == [2]
    for label in sorted((root / "labels" / "train").iterdir()):
        remake(label, np.full((12, 16), 8, np.uint8))
    again = real_places(root, "train", "cityscapes", tmp_path / "cache", conf)
    assert np.unique(read_label(again.label_paths[0], None)).tolist() == [8]
    assert real_places(root, "train", "cityscapes", tmp_path / "cache", conf).paths == again.paths  # unchanged: reused


def test_label_fractions_follow_label_maps_remade_in_place(tmp_path):
    root = write_frames(tmp_path / "video", [0, 30], label=2)
    labels = sorted((root / "labels" / "train").iterdir())
    first = np.array(fraction_array(labels, (16, 12), tmp_path / "cache"))
    remake(labels[0], np.full((12, 16), 8, np.uint8))
    again = np.array(fraction_array(labels, (16, 12), tmp_path / "cache"))
    assert not np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


# 11: row stacks -----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [5, -1, 99])
def test_a_row_stack_refuses_rows_it_does_not_have(index):
    stack = RowStack(np.zeros((3, 2)), np.ones((2, 2)))
    with pytest.raises(IndexError, match="RowStack of 5 rows"):
        stack[np.array([0, index])]
    assert stack[np.array([], dtype=np.int64)].shape == (0, 2)
