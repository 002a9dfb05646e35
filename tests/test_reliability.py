"""Reliability: a corpus of bad inputs through the API and the CLI, property tests over frames,
crash-safe and concurrent-safe map writes, and the honest-answer fixes of issue 10.

Every corpus case must end in a typed StructVPRError (API) or exit code 2 with a one-line
message and no traceback (CLI), within seconds: a hang is cut by an alarm and fails the case.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structvpr_edge import EdgeVPR, PlaceMap
from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ConfigError, DatasetError, MapError, ModelError, StructVPRError
from structvpr_edge.runtime.edgevpr import Localization
from structvpr_edge.runtime.map import MapLock, Place, Threshold
from structvpr_edge.runtime.mapping import build_map, calibrate_threshold, describe_paths, threshold_for_precision
from structvpr_edge.runtime.preprocess import MAX_SIDE, read_image
from structvpr_edge.runtime.temporal import TemporalConfig

from structvpr_edge.bench import killtest

CASE_SECONDS = 20  # a case still running after this is a hang


@contextmanager
def deadline(seconds: float = CASE_SECONDS):
    def hang(*_):
        raise TimeoutError(f"hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def png_with_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bmp_with_size(width: int, height: int, pixels: bool = False) -> bytes:
    """A BMP (a format whose header we do not read) claiming width x height; with ``pixels`` its zero rows follow."""
    data = b"\0" * (((width * 3 + 3) & ~3) * height) if pixels else b""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(data), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + len(data), 0, 0, 54) + info + data


def jpeg_with_size(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 header is rewritten to claim another size."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write_bad_images(root: Path, good: Path) -> dict[str, Path]:
    """Image files a camera pipeline or an operator can produce, none of which may be localized."""
    root.mkdir(parents=True, exist_ok=True)
    jpeg, png = good.read_bytes(), cv2.imencode(".png", cv2.imread(str(good)))[1].tobytes()
    files = {
        "truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
        "truncated-half.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "huge-header.png": png_with_size(60000, 60000),
        "huge-side.png": png_with_size(MAX_SIDE + 1, 10),
        "huge-header.jpg": jpeg_with_size(65000, 65000),
        "huge-header.bmp": bmp_with_size(70000, 70000),
        "huge-side.bmp": bmp_with_size(MAX_SIDE + 1, 1, pixels=True),
        "zero-size.png": png_with_size(0, 10),
        "garbage.jpg": os.urandom(4096),
        "text.jpg": b"this is not an image\n" * 20,
        "empty.jpg": b"",
        "jpeg-header-only.jpg": jpeg[:20],
    }
    paths = {}
    for name, data in files.items():
        (root / name).write_bytes(data)
        paths[name] = root / name
    paths["missing.jpg"] = root / "missing.jpg"
    paths["folder.jpg"] = root / "folder.jpg"
    paths["folder.jpg"].mkdir(exist_ok=True)
    paths["fifo.jpg"] = root / "fifo.jpg"
    if not paths["fifo.jpg"].exists():
        os.mkfifo(paths["fifo.jpg"])
    paths["dev-zero"] = Path("/dev/zero")
    return paths


def nan_model(source: Path, out: Path) -> Path:
    """The same graph and metadata, with every descriptor multiplied by NaN (a broken model)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    name = graph.output[0].name
    for node in graph.node:
        node.output[:] = [o + "_pre" if o == name else o for o in node.output]
    graph.initializer.append(helper.make_tensor("nan_scale", TensorProto.FLOAT, [], [float("nan")]))
    graph.node.append(helper.make_node("Mul", [name + "_pre", "nan_scale"], [name]))
    onnx.save(model, str(out))
    return out


def flipped_model(source: Path, out: Path) -> Path:
    """The same file with bytes of its largest weight tensor flipped: metadata intact, weights not."""
    import onnx

    model = onnx.load(str(source))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(tensor.raw_data)
    for i in range(0, len(raw), 97):
        raw[i] ^= 0xFF
    tensor.raw_data = bytes(raw)
    onnx.save(model, str(out))
    return out


def other_weights_model(source: Path, out: Path) -> Path:
    """The same graph, its metadata naming other weights (as a retrained model's would)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "structvpr.weights_sha256":
            prop.value = json.dumps("0" * 64)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, place_dataset):
    """Models (good, NaN, flipped), a map, bad image files and a small folder of good images."""
    import torch

    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("reliability")
    checkpoint = save_checkpoint(root / "student.pt", StructVPRStudent(StudentConfig()).eval(), (64, 48), {})
    onnx_path = Path(export_onnx(checkpoint, root / "uint8.onnx", uint8_input=True, batch="dynamic").path)
    float_path = Path(export_onnx(checkpoint, root / "float.onnx", batch="dynamic").path)
    with EdgeVPR(onnx_path, max_batch=8) as vpr:
        build_map(vpr, place_dataset, root / "map", split="val")
    queries = load_dataset(place_dataset).queries.paths
    folder = root / "few"  # a folder of @east@north images, smaller than an ivf index needs
    folder.mkdir()
    for path in queries[:4]:
        shutil.copy(path, folder / path.name)
    legacy = root / "legacy"  # the files of a map saved before generations existed
    shutil.copytree(live(root / "map"), legacy)
    (root / "garbage.onnx").write_bytes(os.urandom(2048))
    (root / "empty").mkdir()
    kit = root / "kit"  # a folder of the user's that is no map: a calibration kit's manifest and a note
    kit.mkdir()
    (kit / "manifest.json").write_text('{"format": "structvpr-edge/calibration/1"}\n')
    (kit / "notes.txt").write_text("mine\n")
    return SimpleNamespace(
        legacy=legacy, garbage_onnx=root / "garbage.onnx", empty=root / "empty", checkpoint=Path(checkpoint), kit=kit,
        root=root, onnx=onnx_path, float_onnx=float_path, nan_onnx=nan_model(float_path, root / "nan.onnx"),
        flipped=flipped_model(onnx_path, root / "flipped.onnx"), other=other_weights_model(onnx_path, root / "other.onnx"),
        map=root / "map", dataset=place_dataset,
        bad=write_bad_images(root / "bad", queries[0]), frame=cv2.imread(str(queries[0])), few=folder,
    )


@pytest.fixture(scope="module")
def vpr(ctx):
    with EdgeVPR(ctx.onnx, map=ctx.map, max_batch=4) as instance:
        yield instance


def scratch_map(ctx, name: str) -> Path:
    """A private copy of the map for cases that damage it."""
    target = ctx.root / "scratch" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ctx.map, target)
    return target


def live(directory: Path) -> Path:
    return directory / (directory / "CURRENT").read_text().strip()


def edit_manifest(ctx, name: str, change) -> Path:
    directory = scratch_map(ctx, name)
    path = live(directory) / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return directory


def damage(ctx, name: str, file: str, how) -> Path:
    directory = scratch_map(ctx, name)
    how(live(directory) / file)
    return directory


def flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def unit(n: int, d: int) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


SHA = "5" * 64
BAD_SHAPES = [(0, 0, 3), (0, 64, 3), (48, 0, 3), (0, 0, 0), (48, 64), (48, 64, 1), (48, 64, 4), (48, 64, 2), (48, 64, 3, 1),
              (3,), (), (1, MAX_SIDE + 1, 3), (MAX_SIDE + 1, 1, 3)]
BAD_DTYPES = [np.float32, np.float64, np.uint16, np.int8, np.int32, np.bool_, np.float16, np.complex64, object]
NOT_ARRAYS = [None, [[1, 2, 3]], "frame.jpg", b"\xff\xd8", 3, np.uint8(3)]
BAD_FRAMES = (
    [(f"shape{s}", lambda s=s: np.zeros(s, np.uint8)) for s in BAD_SHAPES]
    + [(f"dtype-{np.dtype(d).name}", lambda d=d: np.zeros((48, 64, 3), d)) for d in BAD_DTYPES]
    + [(f"value-{type(v).__name__}-{i}", lambda v=v: v) for i, v in enumerate(NOT_ARRAYS)]
)
FRAME_CALLS = {
    "describe": lambda v, f: v.describe(f),
    "localize": lambda v, f: v.localize(f),
    "batch-with-a-good-frame": lambda v, f: v.localize_batch([np.zeros((48, 64, 3), np.uint8), f]),
}

API_CASES = {f"frame-{call}-{name}": (lambda c, v, fn=fn, make=make: fn(v, make())) for call, fn in FRAME_CALLS.items() for name, make in BAD_FRAMES}


def closed(c):
    instance = EdgeVPR(c.onnx, map=c.map)
    instance.close()
    return instance


API_CASES.update({
    # constructor options
    "model-None": lambda c, v: EdgeVPR(None),
    "model-int": lambda c, v: EdgeVPR(123),
    "model-empty": lambda c, v: EdgeVPR(""),
    "model-missing": lambda c, v: EdgeVPR(c.root / "missing.onnx"),
    "model-folder": lambda c, v: EdgeVPR(c.root / "bad" / "folder.jpg", backend="onnxruntime"),
    "model-garbage-onnx": lambda c, v: EdgeVPR(c.garbage_onnx),
    "model-wrong-suffix-for-backend": lambda c, v: EdgeVPR(c.bad["text.jpg"], backend="onnxruntime"),
    "backend-cuda": lambda c, v: EdgeVPR(c.onnx, backend="cuda"),
    "colour-YUV": lambda c, v: EdgeVPR(c.onnx, colour="YUV"),
    "colour-None": lambda c, v: EdgeVPR(c.onnx, colour=None),
    **{f"top_k-{k!r}": (lambda c, v, k=k: EdgeVPR(c.onnx, top_k=k)) for k in ("5", 0, -1, 2.5, True, None, float("nan"))},
    **{f"max_batch-{k!r}": (lambda c, v, k=k: EdgeVPR(c.onnx, max_batch=k)) for k in (0, "4", -3)},
    **{f"threads-{k!r}": (lambda c, v, k=k: EdgeVPR(c.onnx, threads=k)) for k in (0, -2, "2", 1.5)},
    "temporal-yes": lambda c, v: EdgeVPR(c.onnx, map=c.map, temporal="yes"),
    "map-missing": lambda c, v: EdgeVPR(c.onnx, map=c.root / "nope"),
    "map-is-a-file": lambda c, v: EdgeVPR(c.onnx, map=c.onnx),
    "map-int": lambda c, v: EdgeVPR(c.onnx, map=123),
    # lifecycle and batches
    "closed-describe": lambda c, v: closed(c).describe(c.frame),
    "closed-localize": lambda c, v: closed(c).localize(c.frame),
    "closed-describe_batch": lambda c, v: closed(c).describe_batch([c.frame]),
    "describe_batch-empty": lambda c, v: v.describe_batch([]),
    "localize_batch-empty": lambda c, v: v.localize_batch([]),
    "describe_batch-None": lambda c, v: v.describe_batch(None),
    "describe_batch-str": lambda c, v: v.describe_batch("abc"),
    "localize-without-map": lambda c, v: EdgeVPR(c.onnx).localize(c.frame),
    # integrity
    "flipped-weights-vs-map": lambda c, v: EdgeVPR(c.flipped, map=c.map),
    "other-weights-vs-map": lambda c, v: EdgeVPR(c.other, map=c.map),
    "nan-model-describe": lambda c, v: EdgeVPR(c.nan_onnx).describe(c.frame),
    "nan-model-describe_batch": lambda c, v: EdgeVPR(c.nan_onnx, max_batch=2).describe_batch([c.frame, c.frame]),
    "other-layout-map": lambda c, v: v.set_map(PlaceMap(4, "other", SHA)),
    "set_map-None": lambda c, v: v.set_map(None),
    "set_map-int": lambda c, v: v.set_map(5),
    # map folders
    "load-missing": lambda c, v: PlaceMap.load(c.root / "nope"),
    "load-file": lambda c, v: PlaceMap.load(c.onnx),
    "load-empty-folder": lambda c, v: PlaceMap.load(c.root / "bad"),
    "load-legacy-format": lambda c, v: PlaceMap.load(c.legacy),
    "load-CURRENT-garbage": lambda c, v: PlaceMap.load(damage(c, "cur", "../CURRENT", lambda p: p.write_text("../../etc"))),
    "load-CURRENT-binary": lambda c, v: PlaceMap.load(damage(c, "curbin", "../CURRENT", lambda p: p.write_bytes(b"\xff\xfe\x00"))),
    "load-CURRENT-to-missing-generation": lambda c, v: PlaceMap.load(damage(c, "curmiss", "../CURRENT", lambda p: p.write_text("gen-99999999\n"))),
    "load-no-checksums": lambda c, v: PlaceMap.load(edit_manifest(c, "nosum", lambda d: d.pop("checksums"))),
    "load-empty-checksums": lambda c, v: PlaceMap.load(edit_manifest(c, "emptysum", lambda d: d.update(checksums={}))),
    "load-one-checksum": lambda c, v: PlaceMap.load(edit_manifest(c, "onesum", lambda d: d["checksums"].pop("index.faiss"))),
    "load-no-model-sha": lambda c, v: PlaceMap.load(edit_manifest(c, "nosha", lambda d: d.update(model_sha256=""))),
    "load-wrong-format": lambda c, v: PlaceMap.load(edit_manifest(c, "fmt", lambda d: d.update(format="structvpr-edge/map/1"))),
    "load-count-edited": lambda c, v: PlaceMap.load(edit_manifest(c, "count", lambda d: d.update(count=d["count"] + 1))),
    "load-threshold-malformed": lambda c, v: PlaceMap.load(edit_manifest(c, "thr", lambda d: d.update(threshold={"score": 1}))),
    "load-manifest-not-json": lambda c, v: PlaceMap.load(damage(c, "json", "manifest.json", lambda p: p.write_text("{"))),
    "load-index-flipped": lambda c, v: PlaceMap.load(damage(c, "idx", "index.faiss", flip_middle)),
    "load-index-flipped-unverified": lambda c, v: PlaceMap.load(damage(c, "idx2", "index.faiss", lambda p: p.write_bytes(b"junk")), verify=False),
    "load-sqlite-flipped": lambda c, v: PlaceMap.load(damage(c, "db", "places.sqlite", flip_middle)),
    "load-index-deleted": lambda c, v: PlaceMap.load(damage(c, "del", "index.faiss", Path.unlink)),
    # PlaceMap API
    "map-dim-0": lambda c, v: PlaceMap(0, "h", SHA),
    "map-dim-str": lambda c, v: PlaceMap("5", "h", SHA),
    "map-index-kdtree": lambda c, v: PlaceMap(8, "h", SHA, "kdtree"),
    "map-ivf-too-small": lambda c, v: PlaceMap(8, "h", SHA, "ivf", expected_size=100),
    "add-wrong-dim": lambda c, v: PlaceMap(8, "h", SHA).add(unit(2, 7), [Place("a", 0, 0)] * 2),
    "add-nan": lambda c, v: PlaceMap(8, "h", SHA).add(np.full((1, 8), np.nan), [Place("a", 0, 0)]),
    "add-inf": lambda c, v: PlaceMap(8, "h", SHA).add(np.full((1, 8), np.inf), [Place("a", 0, 0)]),
    "add-unnormalised": lambda c, v: PlaceMap(8, "h", SHA).add(np.ones((1, 8)), [Place("a", 0, 0)]),
    "add-empty": lambda c, v: PlaceMap(8, "h", SHA).add(np.zeros((0, 8)), []),
    "add-places-mismatch": lambda c, v: PlaceMap(8, "h", SHA).add(unit(2, 8), [Place("a", 0, 0)]),
    "add-places-not-Place": lambda c, v: PlaceMap(8, "h", SHA).add(unit(1, 8), [("a", 0, 0)]),
    "add-place-nan-east": lambda c, v: PlaceMap(8, "h", SHA).add(unit(1, 8), [Place("a", float("nan"), 0)]),
    "add-strings": lambda c, v: PlaceMap(8, "h", SHA).add([["x"] * 8], [Place("a", 0, 0)]),
    "add-ivf-untrainable": lambda c, v: PlaceMap(8, "h", SHA, "ivf").add(unit(10, 8), [Place("a", 0, 0)] * 10),
    "search-k-0": lambda c, v: v.map.search(unit(1, v.map.dim), 0),
    "search-k-str": lambda c, v: v.map.search(unit(1, v.map.dim), "5"),
    "search-nan-query": lambda c, v: v.map.search(np.full((1, v.map.dim), np.nan, np.float32), 3),
    "search-wrong-dim": lambda c, v: v.map.search(unit(1, 3), 3),
    "search-empty-map": lambda c, v: PlaceMap(8, "h", SHA).search(unit(1, 8), 1),
    "save-without-model-sha": lambda c, v: PlaceMap(8, "h", "s").save(c.root / "scratch" / "nosha-save"),
    "save-to-a-file": lambda c, v: PlaceMap.load(c.map).save(c.onnx),
    "save-under-a-file": lambda c, v: PlaceMap.load(c.map).save(c.onnx / "map"),
    # temporal filter
    **{f"temporal-{k}-{x!r}": (lambda c, v, k=k, x=x: TemporalConfig(**{k: x}))
       for k, x in (("max_move_m", float("nan")), ("max_move_m", -1.0), ("max_move_m", float("inf")), ("temperature", 0.0),
                    ("teleport", 0.0), ("teleport", 1.0), ("temperature", "5"))},
    # thresholds
    **{f"calibrate-precision-{p!r}": (lambda c, v, p=p: calibrate_threshold(v, c.map, c.dataset, precision=p))
       for p in (0, 1, 1.5, float("nan"), "0.9", -0.5)},
    **{f"calibrate-radius-{r!r}": (lambda c, v, r=r: calibrate_threshold(v, c.map, c.dataset, precision=0.5, radius=r))
       for r in (float("nan"), float("inf"), 0.0, -1.0)},
    "calibrate-too-few-positives": lambda c, v: calibrate_threshold(v, scratch_map(c, "cal"), c.dataset, precision=0.999),
    "threshold-one-query": lambda c, v: threshold_for_precision(np.array([0.9]), np.array([0.1]), np.array([True]), 0.9),
    "threshold-no-positive": lambda c, v: threshold_for_precision(np.ones(500), np.ones(500), np.zeros(500, bool), 0.9),
    "threshold-unreachable": lambda c, v: threshold_for_precision(np.linspace(0, 1, 500), np.ones(500), np.arange(500) % 2 == 0, 0.9),
    # image files
    **{f"read_image-{name}": (lambda c, v, name=name: read_image(c.bad[name]))
       for name in ("truncated.jpg", "truncated-half.jpg", "truncated.png", "huge-header.png", "huge-side.png", "huge-header.jpg",
                    "huge-header.bmp", "huge-side.bmp",
                    "zero-size.png", "garbage.jpg", "text.jpg", "empty.jpg", "jpeg-header-only.jpg", "missing.jpg", "folder.jpg",
                    "fifo.jpg", "dev-zero")},
    # map building
    "build-out-is-a-file": lambda c, v: build_map(v, c.dataset, c.onnx),
    "build-out-under-a-file": lambda c, v: build_map(v, c.dataset, c.onnx / "m"),
    "build-ivf-small": lambda c, v: build_map(v, c.few, c.root / "scratch" / "ivf", index_type="ivf"),
    "build-index-kdtree": lambda c, v: build_map(v, c.few, c.root / "scratch" / "kd", index_type="kdtree"),
    "build-batch-size-0": lambda c, v: describe_paths(v, [c.bad["truncated.jpg"]], batch_size=0),
    "build-append-without-out": lambda c, v: build_map(v, c.few, None, append=True),
    "build-images-missing": lambda c, v: build_map(v, c.root / "nope", None),
    "build-images-empty": lambda c, v: build_map(v, c.empty, None),
    "build-append-to-non-map": lambda c, v: build_map(v, c.few, c.root / "bad", append=True),
    "build-with-a-truncated-image": lambda c, v: describe_paths(v, [c.bad["truncated.jpg"]]),
})


# --- issue 29: user files, map files that hang, metadata against the graph, wrong types, bounds -------


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def with_metadata(c, name: str, **changes) -> Path:
    """The uint8 model's graph with some structvpr metadata values replaced (JSON)."""
    import onnx

    model = onnx.load(str(c.onnx))
    for entry in model.metadata_props:
        key = entry.key.removeprefix("structvpr.")
        if key in changes:
            entry.value = json.dumps(changes[key])
    out = c.root / "scratch" / f"meta-{name}.onnx"
    out.parent.mkdir(exist_ok=True)
    onnx.save(model, str(out))
    return out


def renamed_output(c) -> Path:
    """The uint8 model with its output tensor renamed (the metadata still says "descriptor")."""
    import onnx

    model = onnx.load(str(c.onnx))
    name = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["renamed" if o == name else o for o in node.output]
    model.graph.output[0].name = "renamed"
    out = c.root / "scratch" / "renamed-output.onnx"
    onnx.save(model, str(out))
    return out


def rewrite_entries(c, name: str, change) -> Path:
    """A map copy whose index holds ``change``d vectors, its checksum updated to match: only a
    check of the contents at load can catch it."""
    import faiss

    from structvpr_edge.modelinfo import sha256_file

    directory = scratch_map(c, name)
    generation = live(directory)
    index = faiss.read_index(str(generation / "index.faiss"))
    fresh = faiss.IndexFlatIP(index.d)
    fresh.add(change(index.reconstruct_n(0, index.ntotal)))
    faiss.write_index(fresh, str(generation / "index.faiss"))
    manifest = json.loads((generation / "manifest.json").read_text())
    manifest["checksums"]["index.faiss"] = sha256_file(generation / "index.faiss")
    (generation / "manifest.json").write_text(json.dumps(manifest))
    return directory


def nan_row(vectors: np.ndarray) -> np.ndarray:
    vectors[1, 3] = np.nan
    return vectors


def threshold(**score) -> dict:
    return {"threshold": {"score": 0.5, "margin": 0.0, "precision": 0.9, "recall": 0.5, **score}}


LAYOUT_100 = {"kind": "global", "segments": [{"name": "global", "start": 0, "size": 100}]}
API_CASES.update({
    # outputs: the user's folders and the inputs are never written
    "build-into-a-user-folder": lambda c, v: build_map(v, c.few, c.kit),
    "build-into-its-own-images": lambda c, v: build_map(v, c.few, c.few),
    "save-into-a-user-folder": lambda c, v: PlaceMap.load(c.map).save(c.kit),
    "calibrate-into-a-user-folder": lambda c, v: calibrate_into(c, c.few),
    "calibrate-into-a-map": lambda c, v: calibrate_into(c, c.map),
    "export-over-its-checkpoint": lambda c, v: export_over_its_checkpoint(c),
    # map files that would hang or are not what they say
    **{f"load-{file}-{how.__name__}": (lambda c, v, file=file, how=how: PlaceMap.load(damage(c, f"{file}-{how.__name__}", file, how)))
       for file in ("index.faiss", "places.sqlite", "manifest.json", "../CURRENT") for how in (fifo, dev_zero_link)},
    "load-nan-entries": lambda c, v: PlaceMap.load(rewrite_entries(c, "nan-entries", nan_row)),
    "load-non-unit-entries": lambda c, v: PlaceMap.load(rewrite_entries(c, "x2-entries", lambda x: 2 * x)),
    # manifests of the wrong type
    "load-manifest-top-level-int": lambda c, v: PlaceMap.load(damage(c, "top-int", "manifest.json", lambda p: p.write_text("5"))),
    "load-manifest-top-level-list": lambda c, v: PlaceMap.load(damage(c, "top-list", "manifest.json", lambda p: p.write_text("[1, 2]"))),
    "load-manifest-dim-10**12": lambda c, v: PlaceMap.load(edit_manifest(c, "dim-huge", lambda d: d.update(dim=10**12))),
    "load-manifest-dim-str": lambda c, v: PlaceMap.load(edit_manifest(c, "dim-str", lambda d: d.update(dim=str(d["dim"])))),
    "load-manifest-count-float": lambda c, v: PlaceMap.load(edit_manifest(c, "count-float", lambda d: d.update(count=float(d["count"])))),
    "load-manifest-index-type-int": lambda c, v: PlaceMap.load(edit_manifest(c, "itype", lambda d: d.update(index_type=3))),
    **{f"load-threshold-score-{k}": (lambda c, v, k=k, x=x: PlaceMap.load(edit_manifest(c, f"thr-{k}", lambda d: d.update(threshold(score=x)))))
       for k, x in (("str", "0.5"), ("null", None), ("list", [0.5]), ("nan", float("nan")), ("bool", True))},
    **{f"load-threshold-{k}": (lambda c, v, k=k, x=x: PlaceMap.load(edit_manifest(c, f"thr-whole-{k}", lambda d: d.update(threshold=x))))
       for k, x in (("str", "0.5"), ("list", [0.5, 0.0, 0.9, 0.5]), ("int", 1))},
    # model metadata against the graph, checked when the model is opened
    "model-output-size-100-vs-512": lambda c, v: EdgeVPR(with_metadata(c, "dim100", layout=LAYOUT_100), threads=1),
    "model-output-renamed": lambda c, v: EdgeVPR(renamed_output(c), threads=1),
    "model-colour-XYZ": lambda c, v: EdgeVPR(with_metadata(c, "xyz", colour="XYZ"), threads=1),
    "model-uint8-flag-off-on-a-uint8-graph": lambda c, v: EdgeVPR(with_metadata(c, "flag", uint8_input=False), threads=1),
    "model-uint8-flag-a-string": lambda c, v: EdgeVPR(with_metadata(c, "flagstr", uint8_input="yes"), threads=1),
    **{f"model-width-{w!r}": (lambda c, v, w=w: EdgeVPR(with_metadata(c, f"w{w}", width=w), threads=1)) for w in (0, -64, "64", 10**6, 32)},
    "model-mean-2-values": lambda c, v: EdgeVPR(with_metadata(c, "mean2", mean=[0.5, 0.5]), threads=1),
    "model-std-zero": lambda c, v: EdgeVPR(with_metadata(c, "std0", std=[0.5, 0.0, 0.5]), threads=1),
    # numbers bounded before any work
    "threads-2**40": lambda c, v: EdgeVPR(c.onnx, threads=2**40),
    "max_batch-10**7": lambda c, v: EdgeVPR(c.onnx, max_batch=10**7),
    "top_k-10**6": lambda c, v: EdgeVPR(c.onnx, top_k=10**6),
    "map-dim-10**12": lambda c, v: PlaceMap(10**12, "h", SHA),
    "build-batch-size-10**7": lambda c, v: describe_paths(v, sorted(c.few.iterdir()), batch_size=10**7),
    **{f"calibration-max-recall-drop-{x!r}": (lambda c, v, x=x: calibration_config(c, x)) for x in (float("nan"), float("inf"), -101.0, "1")},
})


def export_over_its_checkpoint(c):
    from structvpr_edge.deploy.export import export_onnx

    return export_onnx(c.checkpoint, c.checkpoint)


def calibrate_into(c, out: Path):
    from structvpr_edge.deploy.calibration import CalibrationConfig, calibrate

    return calibrate(CalibrationConfig(model=c.float_onnx, images=c.few, out=out, num=2))


def calibration_config(c, drop):
    from structvpr_edge.deploy.calibration import CalibrationConfig

    return CalibrationConfig(model=c.float_onnx, images=c.few, out=c.root / "scratch" / "cal", max_recall_drop=drop, val=c.dataset)


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_bad_input_gives_a_typed_error(ctx, vpr, case):
    started = time.monotonic()
    with deadline(), pytest.raises(StructVPRError):
        API_CASES[case](ctx, vpr)
    assert time.monotonic() - started < 10


def cli_cases(c) -> dict[str, list[str]]:
    model, m = ["--model", str(c.onnx)], str(c.map)
    localize = ["localize", *model, "--map", m]
    return {
        **{f"localize-{name}": [*localize, str(c.bad[name])] for name in
           ("truncated.jpg", "truncated.png", "huge-header.png", "huge-header.jpg", "garbage.jpg", "missing.jpg", "folder.jpg", "fifo.jpg", "empty.jpg")},
        **{f"localize-top-k-{k}": [*localize, "--top-k", k, str(c.bad["garbage.jpg"])] for k in ("0", "-1", "abc", "5.5")},
        **{f"localize-threads-{k}": [*localize, "--threads", k, str(c.bad["garbage.jpg"])] for k in ("0", "-1", "x")},
        "localize-map-missing": ["localize", *model, "--map", str(c.root / "nope"), str(c.bad["garbage.jpg"])],
        "localize-map-is-a-file": ["localize", *model, "--map", str(c.onnx), str(c.bad["garbage.jpg"])],
        "localize-model-missing": ["localize", "--model", str(c.root / "nope.onnx"), "--map", m, str(c.bad["garbage.jpg"])],
        "localize-backend-bad": [*localize[:1], *model, "--backend", "cuda", "--map", m, "x.jpg"],
        "localize-flipped-model": ["localize", "--model", str(c.flipped), "--map", m, str(c.bad["garbage.jpg"])],
        "localize-no-frames": localize,
        "build-map-out-is-a-file": ["build-map", *model, "--images", str(c.few), "--out", str(c.onnx)],
        "build-map-out-under-a-file": ["build-map", *model, "--images", str(c.few), "--out", str(c.onnx / "m")],
        "build-map-ivf-small": ["build-map", *model, "--images", str(c.few), "--out", str(c.root / "scratch" / "cli-ivf"), "--index", "ivf"],
        "build-map-index-bad": ["build-map", *model, "--images", str(c.few), "--out", str(c.root / "scratch" / "x"), "--index", "kd"],
        "build-map-images-missing": ["build-map", *model, "--images", str(c.root / "nope"), "--out", str(c.root / "scratch" / "x")],
        "build-map-append-to-nothing": ["build-map", *model, "--images", str(c.few), "--out", str(c.root / "scratch" / "none"), "--append"],
        "build-map-threads-0": ["build-map", *model, "--threads", "0", "--images", str(c.few), "--out", str(c.root / "scratch" / "x")],
        "build-map-split-missing": ["build-map", *model, "--images", str(c.dataset), "--split", "nope", "--out", str(c.root / "scratch" / "x")],
        **{f"calibrate-threshold-precision-{p}": ["calibrate-threshold", *model, "--map", m, "--val", str(c.dataset), "--precision", p]
           for p in ("0", "1", "1.5", "nan", "inf", "abc", "-0.1")},
        "calibrate-threshold-too-few-positives": ["calibrate-threshold", *model, "--map", m, "--val", str(c.dataset), "--precision", "0.999"],
        "calibrate-threshold-map-missing": ["calibrate-threshold", *model, "--map", str(c.root / "nope"), "--val", str(c.dataset)],
        "calibrate-threshold-val-missing": ["calibrate-threshold", *model, "--map", m, "--val", str(c.root / "nope")],
        **{f"eval-radius-{r}": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--radius", r] for r in ("nan", "inf", "0", "-5", "abc")},
        **{f"eval-batch-size-{b}": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--batch-size", b] for b in ("0", "-1")},
        "eval-json-is-a-folder": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--json", str(c.root)],
        "eval-json-under-a-file": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--json", str(c.onnx / "r.json")],
        "eval-image-size-0x0": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--image-size", "0x0"],
        **{f"export-opset-{o}": ["export", "--model", "structvprpp", "--out", str(c.root / "scratch" / "e.onnx"), "--opset", o] for o in ("0", "5", "99", "abc")},
        "calibrate-model-missing": ["calibrate", "--model", str(c.root / "nope.onnx"), "--images", str(c.few), "--out", str(c.root / "scratch" / "cal")],
        "calibrate-num-0": ["calibrate", "--model", str(c.float_onnx), "--images", str(c.few), "--out", str(c.root / "scratch" / "cal"), "--num", "0"],
        "demo-places-0": ["demo", "--places", "0"],
        "synth-workers-0": ["synth", "--out", str(c.root / "scratch" / "s"), "--workers", "0"],
        "labels-batch-size-0": ["labels", "--images", str(c.few), "--out", str(c.root / "scratch" / "l"), "--pngs", str(c.few), "--batch-size", "0"],
        "no-command": [],
        "unknown-command": ["fly"],
        "localize-without-model": ["localize", "--map", m, "x.jpg"],
        # issue 29: an output that is an input, a folder of the user's, unbounded numbers
        "export-out-is-the-checkpoint": ["export", "--model", str(c.checkpoint), "--out", str(c.checkpoint)],
        "eval-json-is-the-model": ["eval", *model, "--dataset", str(c.dataset), "--json", str(c.onnx)],
        "eval-plot-is-the-model": ["eval", *model, "--dataset", str(c.dataset), "--plot", str(c.onnx)],
        "eval-retrievals-is-the-dataset": ["eval", *model, "--dataset", str(c.dataset), "--retrievals", str(c.dataset)],
        "calibrate-out-is-the-model": ["calibrate", "--model", str(c.float_onnx), "--dataset", str(c.few), "--out", str(c.float_onnx)],
        "build-map-out-is-the-images": ["build-map", *model, "--images", str(c.few), "--out", str(c.few)],
        "build-map-into-a-kit": ["build-map", *model, "--images", str(c.few), "--out", str(c.kit)],
        "labels-out-is-the-images": ["labels", "--images", str(c.few), "--out", str(c.few), "--pngs", str(c.few)],
        **{f"synth-seed-{x}": ["synth", "--out", str(c.root / "scratch" / "s"), "--seed", x] for x in ("-1", str(2**32))},
        "synth-preview-seed--1": ["synth-preview", "--out", str(c.root / "scratch" / "p.png"), "--seed", "-1"],
        "synth-workers-10**6": ["synth", "--out", str(c.root / "scratch" / "s"), "--workers", str(10**6)],
        "train-seed--1": ["train", "--config", "c.yaml", "--out", str(c.root / "scratch" / "t"), "--seed", "-1"],
        "demo-places-10**9": ["demo", "--places", str(10**9)],
        **{f"eval-size-{x}": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--size", x] for x in ("100000x100000", "64x0")},
        "eval-batch-size-10**7": ["eval", "--model", "pixels", "--dataset", str(c.dataset), "--batch-size", str(10**7)],
        "export-width-10**6": ["export", "--model", "structvprpp", "--out", str(c.root / "scratch" / "e.onnx"), "--width", str(10**6)],
        **{f"calibrate-max-recall-drop-{x}": ["calibrate", "--model", str(c.float_onnx), "--dataset", str(c.few), "--out",
                                             str(c.root / "scratch" / "cal"), "--val-dataset", str(c.dataset), "--max-recall-drop", x]
           for x in ("nan", "inf", "-101", "101")},
        "localize-threads-2**40": [*localize, "--threads", str(2**40), str(c.bad["garbage.jpg"])],
        "localize-top-k-10**6": [*localize, "--top-k", str(10**6), str(c.bad["garbage.jpg"])],
        "build-engine-workspace-0": ["build-engine", "--model", str(c.float_onnx), "--precision", "fp16", "--out", "e.engine", "--workspace", "0"],
        "build-engine-max-batch-10**7": ["build-engine", "--model", str(c.float_onnx), "--precision", "fp16", "--out", "e.engine", "--max-batch",
                                         str(10**7)],
        "build-engine-dla-core--1": ["build-engine", "--model", str(c.float_onnx), "--precision", "fp16", "--out", "e.engine", "--dla-core", "-1"],
    }


CLI_NAMES = sorted(cli_cases(SimpleNamespace(onnx=Path("m"), map=Path("m"), root=Path("r"), bad={k: Path(k) for k in (
    "truncated.jpg", "truncated.png", "huge-header.png", "huge-header.jpg", "garbage.jpg", "missing.jpg", "folder.jpg", "fifo.jpg",
    "empty.jpg")}, few=Path("f"), dataset=Path("d"), flipped=Path("f"), float_onnx=Path("f"), checkpoint=Path("c"), kit=Path("k"))))


def assert_one_line_error(err: str) -> None:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("structvpr-edge"), err
    assert err.rstrip().splitlines()[-1] == errors[0], err  # nothing after the message


@pytest.mark.parametrize("case", CLI_NAMES)
def test_cli_bad_input_exits_2_with_one_line(ctx, case, capsys):
    started = time.monotonic()
    with deadline():
        code = main(cli_cases(ctx)[case])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert_one_line_error(err)
    assert '"east"' not in out  # nothing was localized
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("case", ["localize-truncated.jpg", "build-map-ivf-small", "eval-radius-nan", "calibrate-threshold-precision-1.5"])
def test_cli_bad_input_in_a_real_process(ctx, case):
    done = subprocess.run([sys.executable, "-m", "structvpr_edge.cli", *cli_cases(ctx)[case]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr)


def test_corpus_is_large_and_left_the_map_whole(ctx):
    assert len(API_CASES) + len(CLI_NAMES) >= 150
    reloaded = PlaceMap.load(ctx.map)
    assert len(reloaded) == 6 and reloaded.manifest.threshold is None  # no failed case changed it


def test_good_inputs_still_work(ctx, vpr):
    """The checks refuse the bad cases only: the good model, map and images pass."""
    result = vpr.localize(read_image(load_dataset(ctx.dataset, "val").queries.paths[0]))
    assert np.isfinite(result.east) and len(result.matches) == 5 and result.margin == result.margin
    assert vpr.describe(np.zeros((1, 1, 3), np.uint8)).shape == (vpr.info.layout.dim,)
    assert vpr.describe(np.zeros((48, 64, 3), np.uint8)[:, ::-1]).shape == (vpr.info.layout.dim,)  # negative strides


def test_the_same_weights_in_another_form_match_the_map(ctx):
    """A map answers to the weights: their float-input export and the checkpoint itself match a map
    built with the uint8 export; a map from before fingerprints still takes its own model file and
    refuses another, saying why."""
    frame = read_image(load_dataset(ctx.dataset, "val").queries.paths[0])
    for model in (ctx.float_onnx, ctx.checkpoint):
        with EdgeVPR(model, map=ctx.map) as other_form:
            assert np.isfinite(other_form.localize(frame).east)
    old = edit_manifest(ctx, "nofingerprint", lambda d: d.pop("weights_sha256"))
    EdgeVPR(ctx.onnx, map=old).close()
    with pytest.raises(MapError, match="records no weights fingerprint"):
        EdgeVPR(ctx.float_onnx, map=old)


VALID_DTYPES = [np.uint8, np.float32, np.int16, np.bool_, np.float64]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=4), dtype=st.sampled_from(VALID_DTYPES))
def test_any_frame_is_described_or_refused(vpr, shape, dtype):
    frame = np.zeros(shape, dtype)
    valid = dtype is np.uint8 and len(shape) == 3 and shape[2] == 3 and shape[0] >= 1 and shape[1] >= 1
    with deadline(10):
        if valid:
            descriptor = vpr.describe(frame)
            assert np.isfinite(descriptor).all() and abs(np.linalg.norm(descriptor) - 1) < 1e-3
        else:
            with pytest.raises(ConfigError):
                vpr.describe(frame)


# --- maps: crash safety, concurrency, no side effects ----------------------------------------------


def test_killed_writers_never_leave_a_partial_or_unopenable_map(tmp_path):
    killtest.make_map(tmp_path / "map", 3000, 64)
    counts = killtest.kill_trials(tmp_path / "map", trials=12, append=8, progress=False)
    assert counts["unopenable"] == 0 and counts["partial"] == 0
    assert counts["old-whole"] + counts["new-whole"] == 12 and counts["kills before the write finished"] > 0
    assert counts["leftover entries after the next write"] == 0


def test_concurrent_appends_keep_every_entry(tmp_path):
    killtest.make_map(tmp_path / "map", 500, 32)
    counts = killtest.race_trials(tmp_path / "map", trials=2, append=10)
    assert counts["every entry present"] == 2, counts
    assert len(PlaceMap.load(tmp_path / "map")) == 500 + 2 * 2 * 10


def test_stale_writer_merges_instead_of_overwriting(tmp_path):
    base = killtest.make_map(tmp_path / "map", 50, 16)
    first, second = PlaceMap.load(tmp_path / "map"), PlaceMap.load(tmp_path / "map")
    first.add(*killtest.random_entries(np.random.default_rng(1), 3, 16, "first"))
    second.add(*killtest.random_entries(np.random.default_rng(2), 4, 16, "second"))
    second.set_threshold(Threshold(0.5, 0.01, 0.99, 0.5))
    first.save(tmp_path / "map")
    second.save(tmp_path / "map")
    final = PlaceMap.load(tmp_path / "map")
    ids = [p.id for p in final.places]
    assert ids[: len(base)] == [p.id for p in base.places] and len(final) == 57
    assert {"first-2", "second-3"} <= set(ids) and final.manifest.threshold.score == 0.5 and len(second) == 57


def test_loading_never_touches_the_folder_and_writers_clean_up(tmp_path):
    directory = tmp_path / "map"
    place_map = killtest.make_map(directory, 20, 8)
    (directory / ".gen-tmp-123-dead").mkdir()  # what a killed writer leaves
    (directory / "CURRENT.tmp-123").write_text("gen-00000009")
    (directory / "gen-00000009").mkdir()
    before = sorted(p.name for p in directory.rglob("*"))
    for _ in range(3):
        PlaceMap.load(directory)
    assert sorted(p.name for p in directory.rglob("*")) == before
    place_map.add(*killtest.random_entries(np.random.default_rng(3), 2, 8, "x"))
    place_map.save(directory)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "CURRENT", "gen-00000002"]


def test_a_damaged_pointer_refuses_appends_but_a_rebuild_replaces_it(tmp_path):
    place_map = killtest.make_map(tmp_path / "map", 20, 8)
    (tmp_path / "map" / "CURRENT").write_text("garbage")
    place_map.add(*killtest.random_entries(np.random.default_rng(4), 2, 8, "x"))
    with pytest.raises(MapError, match="corrupt"):
        place_map.save(tmp_path / "map")
    killtest.make_map(tmp_path / "map", 30, 8)
    assert len(PlaceMap.load(tmp_path / "map")) == 30


def test_second_writer_times_out_with_a_clear_error(tmp_path):
    place_map = killtest.make_map(tmp_path / "map", 20, 8)
    with MapLock(tmp_path / "map"):
        with pytest.raises(MapError, match="another process"):
            place_map.save(tmp_path / "map", lock_timeout_s=0.2)
    place_map.save(tmp_path / "map", lock_timeout_s=0.2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders; run as a normal user")
def test_read_only_map_folder_is_refused_before_work(ctx, tmp_path):
    directory = shutil.copytree(ctx.map, tmp_path / "ro")
    directory.chmod(0o555)
    try:
        assert main(["build-map", "--model", str(ctx.onnx), "--images", str(ctx.few), "--out", str(directory), "--append"]) == 2
    finally:
        directory.chmod(0o755)


# --- honest answers -----------------------------------------------------------------------------------


def test_confident_describes_the_filtered_pose(ctx):
    """With the filter on, the flag and the margin belong to the pose returned, not to the raw top-1."""
    with EdgeVPR(ctx.onnx, map=ctx.map, temporal=True) as vpr:
        vpr.map.manifest.threshold = Threshold(score=-1.0, margin=0.0, precision=0.99, recall=1.0)
        frames = [read_image(p) for p in load_dataset(ctx.dataset, "val").queries.paths]
        for frame in frames:
            result = vpr.localize(frame)
            chosen = next(m for m in result.matches if (m.east, m.north) == (result.east, result.north))
            others = [m.similarity for m in result.matches if np.hypot(m.east - chosen.east, m.north - chosen.north) > 25]
            expected = chosen.similarity - (others[0] if others else result.matches[-1].similarity)
            assert result.margin == pytest.approx(expected, abs=1e-6)


def test_set_map_keeps_the_temporal_filter(ctx):
    config = TemporalConfig(max_move_m=40.0)
    with EdgeVPR(ctx.onnx, map=ctx.map, temporal=config) as vpr:
        vpr.set_map(ctx.map)
        assert vpr.filter is not None and vpr.filter.config is config
        vpr.set_map(ctx.map, temporal=False)
        assert vpr.filter is None


def test_calibrate_threshold_defaults_to_val_and_records_what_it_measured(ctx, capsys):
    directory = scratch_map(ctx, "calibrated")
    assert main(["calibrate-threshold", "--model", str(ctx.onnx), "--map", str(directory), "--val", str(ctx.dataset), "--precision", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and "NaN" not in text
    rule = json.loads(text)
    assert 0.5 <= rule["precision"] <= 1 and PlaceMap.load(directory).manifest.threshold.score == pytest.approx(rule["score"])


def test_a_png_with_bytes_after_its_end_is_read_and_one_cut_short_is_not(ctx, tmp_path):
    png = cv2.imencode(".png", ctx.frame)[1].tobytes()
    (tmp_path / "padded.png").write_bytes(png + b"\0" * 64)  # some cameras pad files to a block size
    np.testing.assert_array_equal(read_image(tmp_path / "padded.png"), ctx.frame)
    (tmp_path / "short.png").write_bytes(png[:-12])  # the IEND chunk gone
    with pytest.raises(DatasetError, match="truncated"):
        read_image(tmp_path / "short.png")


def test_a_refused_map_leaves_the_loaded_one_in_use(ctx, tmp_path):
    from structvpr_edge.runtime.tiles import cut_tiles

    other = PlaceMap(8, "other-layout", SHA)
    other.add(unit(4, 8), [Place(f"elsewhere{i}", 100.0 * i, 0.0) for i in range(4)])
    other.save(tmp_path / "other-map")
    cut_tiles(other, tmp_path / "other-tiles", size_m=500.0, overlap_m=50.0)
    with EdgeVPR(ctx.onnx, map=ctx.map) as vpr:
        loaded, answer = vpr.map, vpr.localize(ctx.frame).matches[0].id
        for refused in ("other-map", "other-tiles"):
            with pytest.raises(MapError, match="layout"):
                vpr.set_map(tmp_path / refused)
            assert vpr.map is loaded and vpr.tiles is None and vpr.localize(ctx.frame).matches[0].id == answer, refused


def test_an_rgb_instance_describes_image_files_as_a_bgr_one(ctx):
    """Files and drives are decoded to BGR: the map tools hand them over in the instance's own order."""
    paths = load_dataset(ctx.dataset, "val").queries.paths[:3]
    with EdgeVPR(ctx.onnx) as bgr, EdgeVPR(ctx.onnx, colour="RGB") as rgb:
        np.testing.assert_allclose(describe_paths(rgb, paths), describe_paths(bgr, paths), atol=1e-5)


def test_localization_json_has_no_infinity(ctx):
    one = PlaceMap.load(ctx.map)
    single = PlaceMap(one.dim, one.manifest.layout_hash, one.manifest.model_sha256)
    single.add(unit(1, one.dim), [Place("only", 0.0, 0.0)])
    with EdgeVPR(ctx.onnx, map=single) as vpr:
        text = json.dumps(vpr.localize(ctx.frame).to_json())
    assert "Infinity" not in text and json.loads(text)["margin"] is None
    assert Localization([], 0.0, 0.0, float("inf"), False, 0.5).to_json()["heading"] is None


# --- issue 29: nothing of the user's deleted or overwritten, map files by name, state kept on refusal ----


def test_refused_outputs_leave_the_users_files_as_they_were(ctx):
    before = {p: p.read_bytes() for p in (ctx.checkpoint, ctx.onnx, *ctx.kit.iterdir(), *ctx.few.iterdir())}
    for argv in (["build-map", "--model", str(ctx.onnx), "--images", str(ctx.few), "--out", str(ctx.kit)],
                 ["build-map", "--model", str(ctx.onnx), "--images", str(ctx.few), "--out", str(ctx.few)],
                 ["export", "--model", str(ctx.checkpoint), "--out", str(ctx.checkpoint)],
                 ["eval", "--model", str(ctx.onnx), "--dataset", str(ctx.dataset), "--json", str(ctx.onnx)]):
        assert main(argv) == 2, argv
    assert {p: p.read_bytes() for p in before} == before and sorted(p.name for p in ctx.kit.iterdir()) == ["manifest.json", "notes.txt"]


def test_a_writer_removes_only_the_names_it_wrote(tmp_path):
    directory = tmp_path / "map"
    place_map = killtest.make_map(directory, 20, 8)
    (directory / "manifest.json").write_text("the user's")  # names of the old format, beside CURRENT
    (directory / "index.faiss").write_text("the user's")
    (live(directory) / "notes.txt").write_text("the user's, inside a generation")
    place_map.add(*killtest.random_entries(np.random.default_rng(5), 2, 8, "x"))
    place_map.save(directory)
    assert (directory / "manifest.json").read_text() == "the user's" and (directory / "index.faiss").read_text() == "the user's"
    assert sorted(p.name for p in (directory / "gen-00000001").iterdir()) == ["notes.txt"]  # our files gone, the user's kept
    assert len(PlaceMap.load(directory)) == 22


@pytest.mark.parametrize("name", ["route%31", "route#2", "what?"])
def test_a_map_folder_of_any_name_loads_its_own_places(tmp_path, name):
    killtest.make_map(tmp_path / "route1", 12, 8, seed=1)  # where an unquoted %31 would lead
    place_map = PlaceMap(8, "layout", killtest.MODEL_SHA, "flat")
    place_map.add(unit(12, 8), [Place(f"{name}-{i}", i, 0) for i in range(12)])
    place_map.save(tmp_path / name)
    before = sorted(p.name for p in tmp_path.iterdir())
    with deadline():
        assert [p.id for p in PlaceMap.load(tmp_path / name).places] == [f"{name}-{i}" for i in range(12)]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray database created beside it


def test_a_generation_number_past_eight_digits_keeps_the_map(tmp_path):
    directory = tmp_path / "map"
    killtest.make_map(directory, 10, 8)
    (directory / "gen-00000001").rename(directory / "gen-99999999")
    (directory / "CURRENT").write_text("gen-99999999\n")
    place_map = PlaceMap.load(directory)
    place_map.add(*killtest.random_entries(np.random.default_rng(6), 3, 8, "x"))
    place_map.save(directory)
    assert (directory / "CURRENT").read_text().strip() == "gen-100000000" and len(PlaceMap.load(directory)) == 13


def test_a_planted_lock_link_is_not_followed(tmp_path):
    directory = tmp_path / "map"
    place_map = killtest.make_map(directory, 10, 8)
    (directory / ".lock").unlink()
    (directory / ".lock").symlink_to(tmp_path / "outside")
    with deadline(), pytest.raises(MapError, match="link"):
        place_map.save(directory)
    assert not (tmp_path / "outside").exists() and len(PlaceMap.load(directory)) == 10


def test_a_fifo_as_the_threads_cache_is_ignored_not_waited_on(ctx, tmp_path):
    from structvpr_edge.runtime.ort_session import ThreadCache, choose_threading

    os.mkfifo(tmp_path / "threads.json")
    with deadline(10):
        chosen = choose_threading(ctx.onnx, "auto", cache=ThreadCache(tmp_path / "threads.json"), measure=lambda n, spin: 1.0, options=[(1, False)])
    assert chosen.source == "measured" and (tmp_path / "threads.json").is_file()  # replaced by a regular file


def test_a_refused_batch_leaves_the_temporal_filter_as_it_was(ctx):
    with EdgeVPR(ctx.onnx, map=ctx.map, temporal=True, max_batch=1) as vpr:
        vpr.localize(ctx.frame)
        rows, belief = vpr.filter.rows.copy(), vpr.filter.belief.copy()
        with pytest.raises(ConfigError):
            vpr.localize_batch([np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64), np.uint8)])
        assert np.array_equal(vpr.filter.rows, rows) and np.array_equal(vpr.filter.belief, belief)


def test_the_temporal_filter_follows_a_map_that_grows(ctx):
    with EdgeVPR(ctx.onnx, map=PlaceMap.load(ctx.map), temporal=True) as vpr:
        first = vpr.localize(ctx.frame)
        size = len(vpr.map)
        vpr.map.add(np.repeat(vpr.describe(ctx.frame)[None], 3, axis=0), [Place(f"new-{i}", first.east, first.north) for i in range(3)])
        result = vpr.localize(ctx.frame)  # the new entries are the best candidates: rows the map did not have before
    assert result.matches[0].row >= size and (result.east, result.north) == (first.east, first.north)


def test_a_full_disk_during_a_save_is_a_map_error_and_the_old_map_stays(ctx, monkeypatch, capsys):
    import sqlite3

    directory = scratch_map(ctx, "full-disk")
    connect = sqlite3.connect

    def full(target, *args, uri=False, **kwargs):
        if not uri:  # the writer's database; loading (a read-only URI) still works
            raise sqlite3.OperationalError("database or disk is full")
        return connect(target, *args, uri=uri, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", full)
    argv = ["build-map", "--model", str(ctx.onnx), "--images", str(ctx.few), "--out", str(directory), "--append"]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err)
    monkeypatch.undo()
    assert len(PlaceMap.load(directory)) == 6 and not list(directory.glob(".gen-tmp-*"))


def test_a_retried_append_adds_nothing_twice(ctx):
    directory = scratch_map(ctx, "append-twice")
    argv = ["build-map", "--model", str(ctx.onnx), "--images", str(ctx.few), "--out", str(directory), "--append"]
    assert main(argv) == 0 and main(argv) == 0
    place_map = PlaceMap.load(directory)
    assert len(place_map) == 6 + 4 and len({(p.id, p.source) for p in place_map.places}) == 10
    assert (directory / "CURRENT").read_text().strip() == "gen-00000002"  # the retry wrote no generation


def test_a_failed_export_keeps_the_previous_onnx(ctx, monkeypatch):
    from structvpr_edge.deploy import export

    out = ctx.root / "scratch" / "previous.onnx"
    shutil.copy(ctx.onnx, out)
    before = out.read_bytes()

    def broken(*args):
        raise ModelError("parity failed")

    monkeypatch.setattr(export, "check_parity", broken)
    with pytest.raises(ModelError):
        export.export_onnx(ctx.checkpoint, out, uint8_input=True)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.glob(".previous.onnx*")) == []


def test_the_demo_exports_again_over_a_truncated_cached_file(ctx):
    from structvpr_edge.demo import export_shipped
    from structvpr_edge.modelinfo import read_onnx_info

    out = ctx.root / "scratch" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "student.onnx").write_bytes(ctx.onnx.read_bytes()[:1000])
    path = export_shipped(out, str(ctx.checkpoint))
    assert read_onnx_info(path).layout.dim == 512


def old_kit(root: Path, model: Path) -> Path:
    """A kit's files (compared byte for byte afterwards): its report records ``model`` as its CPU INT8 graph."""
    from structvpr_edge.modelinfo import sha256_file

    kit = root / "old-kit"
    kit.mkdir()
    shutil.copy(model, kit / "model.int8.cpu.onnx")
    (kit / "manifest.json").write_text('{"format": "structvpr-edge/calibration/1"}\n')
    (kit / "report.json").write_text(json.dumps({"sha256": {"model.int8.cpu.onnx": sha256_file(kit / "model.int8.cpu.onnx")}}))
    return kit


def test_a_failed_recalibration_leaves_the_old_kit_whole(ctx, tmp_path, monkeypatch):
    from structvpr_edge.deploy import calibration

    kit = old_kit(tmp_path, ctx.float_onnx)
    before = {p.name: p.read_bytes() for p in kit.iterdir()}
    options = {"model": ctx.float_onnx, "images": ctx.few, "out": kit, "num": 2, "reselect": True}
    with pytest.raises(DatasetError):  # a typo in the validation set, found before any work
        calibration.calibrate(calibration.CalibrationConfig(**options, val=tmp_path / "nope"))

    def broken(*args):
        raise ModelError("killed half way")

    monkeypatch.setattr(calibration, "_quantize", broken)  # a failure after the images were chosen and hashed
    with pytest.raises(ModelError):
        calibration.calibrate(calibration.CalibrationConfig(**options))
    assert {p.name: p.read_bytes() for p in kit.iterdir()} == before and sorted(p.name for p in tmp_path.iterdir()) == ["old-kit"]


def test_a_mixed_kit_is_refused_by_name(ctx, tmp_path):
    from structvpr_edge.deploy.calibration import prepare_kit

    kit = old_kit(tmp_path, ctx.float_onnx)
    shutil.copy(ctx.onnx, kit / "model.int8.cpu.onnx")  # another calibration's graph beside this report
    with pytest.raises(ModelError, match="model.int8.cpu.onnx"):
        EdgeVPR(kit / "model.int8.cpu.onnx", threads=1)
    with pytest.raises(ModelError, match="model.int8.cpu.onnx"):
        prepare_kit(kit)
