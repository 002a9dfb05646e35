"""Label quality in the lab: a student's group masks against the label maps per query condition
(benchmarks/mask_quality.py), and the shipped street segmenter on CamVid, graded and timed
(benchmarks/segmenter_iou.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data.dataset import load_dataset
from ..deploy.segmenter import DEFAULT_WEIGHTS, SIZE, label_folder
from ..models.espnet import Decision
from ..errors import DatasetError, ModelError
from ..eval.label_iou import folder_iou
from ..eval.masks import mask_scores, summarise


def mask_report(dataset: str, split: str, models: list[str]) -> dict[str, dict[str, dict]]:
    """Model -> condition ("all" first) -> overlap and per-group IoU of its masks on the split's queries."""
    from ..models.checkpoint import load_checkpoint  # noqa: PLC0415
    from ..models.student import StructVPRStudent  # noqa: PLC0415

    queries = load_dataset(dataset, split).queries
    if queries.label_paths is None:
        raise DatasetError(f"{dataset}/{split} has no label maps to compare the masks with")
    conditions = np.array(queries.column("condition") or ["all"] * len(queries))
    report = {}
    for name in models:
        model, meta = load_checkpoint(name)
        if not isinstance(model, StructVPRStudent):
            raise ModelError(f"{name} is a {meta['model_type']} model: only StructVPR++ students predict masks")
        scores = mask_scores(model, tuple(meta["input"]["size"]), queries.paths, queries.label_paths)
        report[name] = {"all": summarise(scores, np.arange(len(conditions)))}
        report[name].update({c: summarise(scores, np.flatnonzero(conditions == c)) for c in sorted(set(conditions))})
    return report


OTHER_DECISIONS = (Decision(mirror=False), Decision(void=True), Decision(groups=True))  # the shipped decision's ablations


def segmenter_rows(camvid: Path, sizes: list[tuple[int, int]], work: Path, split: str = "val",
                   every: int = 1, weights: Path = DEFAULT_WEIGHTS) -> Iterator[tuple[tuple[int, int], Decision, object, float]]:
    """(input size, decision, IoU result, s/frame) per size, then the other decisions (no mirror, void
    allowed, the best group) at the default size; CamVid's ``split`` (every ``every``-th frame) labelled
    with ``weights`` through ``label_folder``, graded by ``folder_iou``."""
    images, labels = camvid_subset(camvid, split, every, work)
    for (width, height), decision in [(size, Decision()) for size in sizes] + [(SIZE, decision) for decision in OTHER_DECISIONS]:
        out = work / f"{split}-every{every}-{width}x{height}-{decision.tag.replace(' ', '-')}"
        start = time.perf_counter()
        summary = label_folder(images, out, size=(width, height), overwrite=True, decision=decision, weights=weights)
        seconds = (time.perf_counter() - start) / summary.written  # the ONNX export (a few s) included
        yield (width, height), decision, folder_iou(out, labels, label_scheme="camvid"), seconds


def camvid_subset(camvid: Path, split: str, every: int, work: Path) -> tuple[Path, Path]:
    """The image and label folders of CamVid's ``split``, or of every ``every``-th frame of it in name
    order (links under ``work``): the Cityscapes weights never saw CamVid, so for them a train subset is a fair place to choose."""
    images, labels = camvid / "images" / split, camvid / "labels" / split
    if every == 1:
        return images, labels
    subset = work / f"{split}-every{every}"
    for source in sorted(images.glob("*.jpg"))[::every]:
        for folder, name in (("images", source.name), ("labels", f"{source.stem}.png")):
            link = subset / folder / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((camvid / folder / split / name).resolve())
    return subset / "images", subset / "labels"


def time_labels_command(camvid: Path, frames: int, work: Path) -> tuple[float, float]:
    """Seconds of ``structvpr-edge labels`` (default segmenter and size) on ``frames`` frames made by
    cycling CamVid train + val (links under ``work``), and the load average at the end."""
    sources = sorted((camvid / "images" / "train").glob("*.jpg")) + sorted((camvid / "images" / "val").glob("*.jpg"))
    folder = work / f"frames-{frames}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        link = folder / "images" / f"{i:05d}_{sources[i % len(sources)].name}"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)].resolve())
    command = [sys.executable, "-m", "structvpr_edge.cli", "labels", "--images", str(folder / "images"), "--out", str(folder / "labels"), "--overwrite"]
    start = time.perf_counter()
    subprocess.run(command, check=True)  # its progress bar shows on this terminal
    return time.perf_counter() - start, os.getloadavg()[0]
