"""Dataset writer: presets, the place/traversal plan per split, and parallel rendering to disk.

Every image is rendered from an RNG seeded by (seed, split, traversal, place) and the condition of
its traversal by (seed, split, traversal, street), so the output does not depend on worker count.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ...errors import ConfigError, DatasetError
from ...files import replace_whole
from ...images import imwrite
from ..dataset import METADATA
from ..names import ImageName, format_name
from . import conditions as cond
from . import render as rd
from . import world as wd
from .scene import render_view
from .segmenter import segmenter_labels

# 2.0: val has a city of its own, so no val place lies near a train place. 2.1: seeds ending in 001
# or 002 no longer train on another seed's test or val city; benchmark-hard's simulated segmenter
# confuses the share of area its error rate states (it confused a fortieth of it by a clear day, half at night in fog).
VERSION = "2.1"
SPLITS = ("train", "val", "test")
SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
ORIGIN = {"train": (500_000.0, 4_000_000.0), "val": (540_000.0, 4_000_000.0), "test": (520_000.0, 4_000_000.0)}
COLUMNS = ("path", "label_path", "split", "subset", "place_id", "traversal", "condition", "time_of_day",
           "season", "weather", "heading", "east", "north")
MANIFEST = "synthcity.json"  # written last: a folder holding it is complete
UNFINISHED = "synthcity-unfinished.json"  # written first, removed last: a folder holding it was being written


@dataclass(frozen=True)
class Preset:
    """How much to generate, and how hard. Train, val and test each have a city of their own
    (seeds ``seed``, ``seed * 1000 + 2``, ``seed * 1000 + 1``), kilometres apart.

    ``query_shift`` / ``query_turn``: a further lateral offset (metres) and heading change
    (degrees), drawn uniformly up to these bounds, of every query from its place: viewpoint
    change between traversals (0: queries keep the database's viewpoint up to small jitter).
    ``imperfect_labels``: label maps come from a simulated imperfect segmenter (segmenter.py)
    instead of the renderer's exact ones, so teacher and mask loss learn from realistic labels."""

    name: str
    city_blocks: int
    test_blocks: int
    train_places: int
    train_traversals: int
    val_places: int
    val_queries_per_group: int
    test_places: int
    test_queries_per_group: int
    spacing: float = 4.5          # metres between places along a street
    query_offset: float = 2.0     # max along-track offset of a query from its place
    width: int = 320
    height: int = 240
    hfov: float = 80.0
    query_shift: float = 0.0
    query_turn: float = 0.0
    imperfect_labels: bool = False


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", city_blocks=4, test_blocks=4, train_places=40, train_traversals=4, val_places=12,
                    val_queries_per_group=3, test_places=30, test_queries_per_group=6),
    "benchmark": Preset("benchmark", city_blocks=12, test_blocks=9, train_places=4000, train_traversals=5,
                        val_places=500, val_queries_per_group=100, test_places=2000, test_queries_per_group=400),
}
PRESETS["benchmark-hard"] = replace(PRESETS["benchmark"], name="benchmark-hard", query_shift=3.5, query_turn=15.0,
                                    imperfect_labels=True)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown SynthCity preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


MAX_SEED = 2**32 - 1
_MOVED_TRAIN = 1000 * (MAX_SEED + 1)  # above every test and val city of a seed in 0..MAX_SEED


def city_seed(seed: int, split: str) -> int:
    """Each split its own city: train ``seed``, test ``seed * 1000 + 1``, val ``seed * 1000 + 2``.
    A seed ending in 001 or 002 would train on the test or val city of ``seed // 1000``: its train
    city moves above every seed's cities instead, and every other seed keeps its cities."""
    train = _MOVED_TRAIN + seed if seed % 1000 in (1, 2) else seed
    return {"train": train, "test": seed * 1000 + 1, "val": seed * 1000 + 2}[split]


def city_blocks(preset: Preset, split: str) -> int:
    return preset.city_blocks if split == "train" else preset.test_blocks


@lru_cache(maxsize=2)
def city(seed: int, blocks: int) -> wd.World:
    return wd.build_world(seed, wd.CityConfig(blocks=blocks))


@dataclass(frozen=True)
class Shot:
    """One image to render: which place, in which traversal and condition group."""

    split: str
    subset: str       # database | queries
    traversal: int
    group: str
    place_id: int
    place: wd.Place


def split_places(seed: int, preset: Preset, split: str) -> list[wd.Place]:
    """The places of one split: whole streets of its city, in a seeded random order."""
    world = city(city_seed(seed, split), city_blocks(preset, split))
    order = np.random.default_rng([seed, {"train": 11, "test": 12, "val": 13}[split]]).permutation(len(world.streets))
    return [p for sid in order for p in wd.street_places(world.streets[sid], preset.spacing)]


def plan_places(seed: int, preset: Preset) -> dict[str, list[wd.Place]]:
    wanted = {"train": preset.train_places, "val": preset.val_places, "test": preset.test_places}
    plan = {split: split_places(seed, preset, split)[:n] for split, n in wanted.items()}
    for split, places in plan.items():
        if len(places) < wanted[split]:
            raise ConfigError(f"preset {preset.name!r}: the {split} city has only {len(places)} places, "
                              f"{wanted[split]} requested; raise its block count")
    return plan


def plan_shots(seed: int, preset: Preset) -> list[Shot]:
    """Train: every place in every traversal (0 = database). Val/test: one reference database
    traversal, then one query traversal per condition group over a random subset of places."""
    shots: list[Shot] = []
    for split, places in plan_places(seed, preset).items():
        shots += [Shot(split, "database", 0, "reference", i, p) for i, p in enumerate(places)]
        if split == "train":
            shots += [Shot(split, "queries", t, "", i, p)
                      for t in range(1, preset.train_traversals) for i, p in enumerate(places)]
            continue
        per_group = preset.val_queries_per_group if split == "val" else preset.test_queries_per_group
        for g, group in enumerate(cond.QUERY_GROUPS):
            rng = np.random.default_rng([seed, SPLIT_CODE[split], 99, g])
            for i in np.sort(rng.choice(len(places), size=min(per_group, len(places)), replace=False)):
                shots.append(Shot(split, "queries", g + 1, group, int(i), places[i]))
    return shots


def traversal_look(seed: int, split: str, traversal: int, group: str, street: int) -> cond.Look:
    """Condition and look of one traversal of one street (train queries draw their group here)."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], traversal, street, 1])
    if not group:
        group = str(rng.choice(cond.QUERY_GROUPS))
    return cond.make_look(cond.sample_condition(group, rng), rng)


def shot_camera(shot: Shot, look: cond.Look, preset: Preset, rng: np.random.Generator) -> rd.Camera:
    """Camera pose of a shot: the place plus along-track/lateral offsets and heading/pitch/roll jitter."""
    db = shot.subset == "database"
    along = rng.normal(0, 0.3) if db else rng.uniform(-preset.query_offset, preset.query_offset)
    lateral = np.clip(rng.normal(0, 0.15 if db else 0.25), -0.6, 0.6)
    turn = np.clip(rng.normal(0, 0.8 if db else 1.8), -3.5, 3.5)
    if not db and (preset.query_shift or preset.query_turn):  # viewpoint change between traversals
        lateral += rng.uniform(-preset.query_shift, preset.query_shift)
        turn += rng.uniform(-preset.query_turn, preset.query_turn)
    h = np.radians(shot.place.heading)
    x = shot.place.x + along * np.sin(h) + lateral * np.cos(h)
    y = shot.place.y + along * np.cos(h) - lateral * np.sin(h)
    heading = (shot.place.heading + turn) % 360
    return rd.Camera(float(x), float(y), look.camera_height, float(heading),
                     pitch=float(np.clip(rng.normal(0, 0.5), -1.5, 1.5)), roll=float(np.clip(rng.normal(0, 0.5), -1.5, 1.5)),
                     width=preset.width, height=preset.height, hfov=preset.hfov)


def render_shot(seed: int, preset: Preset, shot: Shot) -> tuple[np.ndarray, np.ndarray, rd.Camera, cond.Look]:
    """Render one planned image deterministically; returns (bgr, label, camera, look)."""
    world = city(city_seed(seed, shot.split), city_blocks(preset, shot.split))
    look = traversal_look(seed, shot.split, shot.traversal, shot.group, shot.place.street)
    rng = np.random.default_rng([seed, SPLIT_CODE[shot.split], shot.traversal, shot.place_id])
    cam = shot_camera(shot, look, preset, rng)
    variation = SPLIT_CODE[shot.split] * 1000 + shot.traversal
    bgr, label = render_view(world, cam, world.streets[shot.place.street], look, rng, variation)
    if preset.imperfect_labels:
        label = segmenter_labels(label, look.condition, np.random.default_rng([seed, SPLIT_CODE[shot.split], shot.traversal, shot.place_id, 7]))
    return bgr, label, cam, look


def _write_shot(out: Path, seed: int, preset: Preset, shot: Shot) -> dict:
    bgr, label, cam, look = render_shot(seed, preset, shot)
    east, north = ORIGIN[shot.split][0] + cam.x, ORIGIN[shot.split][1] + cam.y
    c = look.condition
    name = format_name(ImageName(east, north, cam.heading, pano_id=f"{shot.split}_t{shot.traversal}_p{shot.place_id}",
                                 timestamp=f"t{shot.traversal:02d}", note=c.group))
    rel = Path("images", shot.split, shot.subset, name)
    rel_label = Path("labels", shot.split, shot.subset, name).with_suffix(".png")
    imwrite(out / rel, bgr, [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality])
    imwrite(out / rel_label, label, [cv2.IMWRITE_PNG_COMPRESSION, 1], "label map")
    return {"path": rel.as_posix(), "label_path": rel_label.as_posix(), "split": shot.split, "subset": shot.subset,
            "place_id": shot.place_id, "traversal": shot.traversal, "condition": c.group,
            "time_of_day": c.time_of_day, "season": c.season, "weather": c.weather,
            "heading": f"{cam.heading:.2f}", "east": f"{east:.2f}", "north": f"{north:.2f}"}


_JOB: tuple[Path, int, Preset] | None = None


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ctrl-C ignored while worker processes are started: a spawned Python that inherits an ignored
    SIGINT keeps it from its first instruction, so a Ctrl-C during its start-up prints nothing."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _init_worker(out: Path, seed: int, preset: Preset) -> None:
    """Ctrl-C is the parent's to handle (it stops the pool): a worker ignores it, printing nothing
    (a worker the pool starts again later was not started under ``interrupts_ignored``)."""
    global _JOB
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    _JOB = (out, seed, preset)


def _worker(shot: Shot) -> dict:
    assert _JOB is not None
    return _write_shot(*_JOB, shot)


def holds_synthcity(folder: Path) -> bool:
    """Whether ``folder`` holds SynthCity's own writing: a whole dataset or route, or one being
    written or cut short (Ctrl-C, a kill), which the same command run again starts over."""
    return (folder / MANIFEST).is_file() or (folder / UNFINISHED).is_file()


def _prepare(out: Path) -> None:
    """Refuse a non-empty folder unless it holds SynthCity's own writing (which is replaced). The
    UNFINISHED marker goes in before anything is removed or written, so at every moment of the
    run the folder is recognised as SynthCity's."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not holds_synthcity(out):
        raise DatasetError(f"{out} is not empty and holds no {MANIFEST}: refusing to write a SynthCity "
                           "dataset into it; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    replace_whole(out / UNFINISHED, lambda tmp: tmp.write_text('{"generator": "synthcity", "complete": false}\n'))
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in (METADATA, MANIFEST):
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        for subset in ("database", "queries"):
            (out / "images" / split / subset).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split / subset).mkdir(parents=True, exist_ok=True)


def _finish(out: Path, rows: list[dict], manifest: str) -> Path:
    """metadata.csv, then the manifest (whole), then the UNFINISHED marker removed: ``out`` is complete."""
    with open(out / METADATA, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    replace_whole(out / MANIFEST, lambda tmp: tmp.write_text(manifest))
    (out / UNFINISHED).unlink(missing_ok=True)
    return out


def generate_dataset(out: Path, seed: int, preset: str = "benchmark", workers: int | None = None,
                     splits: tuple[str, ...] = SPLITS) -> Path:
    """Write a SynthCity dataset (images, labels, metadata.csv, synthcity.json) to ``out``; returns ``out``.

    ``splits`` limits what is rendered (e.g. only ``test`` to check another city's figures);
    the images of a split do not depend on which other splits are generated."""
    config = get_preset(preset)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    unknown = set(splits) - set(SPLITS)
    if unknown or not splits:
        raise ConfigError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    out = Path(out)
    shots = [shot for shot in plan_shots(seed, config) if shot.split in splits]
    _prepare(out)
    progress = dict(total=len(shots), desc=f"SynthCity {preset}", unit="img", smoothing=0.05)
    if workers == 1:
        rows = [_write_shot(out, seed, config, s) for s in tqdm(shots, **progress)]
    else:
        with interrupts_ignored():
            pool = get_context("spawn").Pool(workers, _init_worker, (out, seed, config))
        with pool:
            rows = list(tqdm(pool.imap(_worker, shots, chunksize=16), **progress))
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["split"], {}).setdefault(r["subset"], 0)
        counts[r["split"]][r["subset"]] += 1
    manifest = {
        "generator": "synthcity", "version": VERSION, "seed": seed, "preset": preset, "config": asdict(config),
        "cities": {s: {"seed": city_seed(seed, s), **asdict(wd.CityConfig(blocks=city_blocks(config, s)))} for s in SPLITS},
        "origin": ORIGIN, "heading": "compass degrees, 0 = north, 90 = east", "counts": counts,
        "columns": list(COLUMNS), "query_groups": list(cond.QUERY_GROUPS),
        "opencv": cv2.__version__,  # the renderer's bytes follow it: 5.0 and 5.1 draw 4 of the smoke preset's 250 views otherwise
    }
    return _finish(out, rows, json.dumps(manifest, indent=2))
