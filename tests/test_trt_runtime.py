"""TensorRTBackend against the stand-ins (tests/trt_standin.py, tests/cuda_standin.py), no GPU: the
engine's I/O is checked against its metadata at open, each batch against the profile and the
input, every CUDA resource is freed inside the primary context, and a bad engine file or manifest
is a typed error."""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.artifacts import ENGINE_FORMAT, engine_manifest_path
from structvpr_edge.errors import BackendError, ConfigError, ModelError
from structvpr_edge.layout import DescriptorLayout
from structvpr_edge.modelinfo import ModelInfo
from structvpr_edge.runtime.backends import open_backend
from structvpr_edge.runtime.tensorrt_backend import TensorRTBackend
from tests.cuda_standin import install_pycuda
from tests.trt_standin import VERSIONS, make_tensorrt, plan

INFO = ModelInfo(8, 6, True, "BGR", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), DescriptorLayout.single(4))
FRAME = (6, 8, 3)  # uint8 (H, W, 3), as INFO says


@pytest.fixture
def cuda(monkeypatch):
    return install_pycuda(monkeypatch)


@pytest.fixture(autouse=True)
def trt(monkeypatch):
    trt = make_tensorrt("10")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def engine_file(folder: Path, blob: bytes | None = None, batch: tuple[int, int] = (1, 4), **fields) -> Path:
    """A stand-in engine for INFO and the manifest build-engine writes beside it, ``fields`` replaced."""
    blob = blob or plan(FRAME, INFO.layout.dim, batch)
    engine = folder / "model.engine"
    engine.write_bytes(blob)
    profile = {"min": [batch[0], *FRAME], "opt": [batch[0], *FRAME], "max": [batch[1], *FRAME]}
    manifest = {"format": ENGINE_FORMAT, "engine": engine.name, "engine_sha256": hashlib.sha256(blob).hexdigest(),
                "tensorrt_version": VERSIONS["10"], "gpu_name": "Stand-in Orin", "compute_capability": "8.7",
                "command": "structvpr-edge build-engine ...", "precision": "fp16", "profile": profile, "model_info": INFO.to_props(), **fields}
    engine_manifest_path(engine).write_text(json.dumps(manifest))
    return engine


def frames(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, *FRAME), dtype=np.uint8)


def means(batch: np.ndarray) -> np.ndarray:
    """What the stand-in engine answers: each descriptor value is its frame's mean."""
    return np.repeat(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), INFO.layout.dim, axis=1)


def test_a_batch_is_described_by_the_engine(cuda, tmp_path):
    backend = TensorRTBackend(engine_file(tmp_path), max_batch=4)
    batch = frames(3)
    out = backend.infer(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, means(batch), rtol=1e-6)


# I/O: checked at open, an FP16 output read as what it is

def test_an_fp16_output_engine_answers_float32_descriptors(cuda, tmp_path):
    backend = TensorRTBackend(engine_file(tmp_path, plan(FRAME, INFO.layout.dim, out_dtype="HALF")), max_batch=2)
    batch = frames(2)
    out = backend.infer(batch)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, means(batch), rtol=1e-3)  # half precision


@pytest.mark.parametrize(("blob", "what"), [
    (plan(FRAME, 5), r"output \[\('descriptor', \[-1, 5\]\)\]"),
    (plan(FRAME, 4, outputs=("descriptor", "labels")), "output"),
    (plan(FRAME, 4, in_dtype="FLOAT"), r"input \[\('images', 'float32'"),
    (plan((3, 6, 8), 4), r"input \[\('images', 'uint8', \[-1, 3, 6, 8\]\)\]"),
    (plan(FRAME, 4, out_dtype="INT32"), "outputs int32 descriptors, not floating point"),
])
def test_an_engine_whose_io_disagrees_with_its_metadata_is_refused_at_open(blob, what, cuda, tmp_path):
    engine = engine_file(tmp_path, blob)
    with pytest.raises(ModelError, match=f"engine {re.escape(str(engine))}.*{what}"):
        TensorRTBackend(engine)
    assert cuda.calls.count("retain") == cuda.calls.count("detach") == 1 and "alloc" not in cuda.calls


# batches: the profile's range, the input's shape and dtype

def test_a_batch_below_the_profile_min_is_a_backend_error_naming_it(cuda, tmp_path):
    engine = engine_file(tmp_path, batch=(2, 4))  # built with --min-batch 2
    backend = TensorRTBackend(engine, max_batch=4)
    for n in (1, 0):
        with pytest.raises(BackendError, match=f"batch of {n} is below engine .*'s profile of 2..4 frames; rebuild it with --min-batch 1"):
            backend.infer(frames(n))
    np.testing.assert_allclose(backend.infer(frames(2)), means(frames(2)), rtol=1e-6)


def test_an_input_shape_tensorrt_refuses_is_named(cuda, trt, tmp_path):
    engine = engine_file(tmp_path, plan(FRAME, INFO.layout.dim, batch=(2, 4)))  # a manifest that says 1..4 for an engine of 2..4
    backend = TensorRTBackend(engine, max_batch=4)
    with pytest.raises(BackendError, match=re.escape("TensorRT refused input shape (1, 6, 8, 3)")):
        backend.infer(frames(1))
    assert ("set_input_shape", (1, 6, 8, 3), False) in trt.calls


@pytest.mark.parametrize("batch", [np.zeros((1, 3, 6, 8), np.float32), np.full((1, 6, 8, 1), 7, np.uint8), np.full((1, *FRAME), 0.9, np.float32),
                                   np.zeros(FRAME, np.uint8)], ids=["nchw-float", "one-channel", "float-values", "no-batch-axis"])
def test_a_batch_of_another_shape_or_dtype_is_a_config_error(batch, cuda, tmp_path):
    backend = TensorRTBackend(engine_file(tmp_path), max_batch=4)
    with pytest.raises(ConfigError, match=re.escape(f"takes a (N, 6, 8, 3) uint8 batch, got {batch.shape} {batch.dtype}")):
        backend.infer(batch)


# every CUDA resource goes inside the primary context, before it is released

def test_close_frees_host_buffers_and_stream_inside_the_context(cuda, tmp_path):
    backend = TensorRTBackend(engine_file(tmp_path), max_batch=2)
    backend.infer(frames(2))
    backend.close()
    calls = cuda.calls
    last_push, detach = len(calls) - 1 - calls[::-1].index("push"), calls.index("detach")
    inside = calls[last_push:detach]
    assert sorted(c for c in inside if "freed" in c or c == "free") == ["free", "free", "host freed", "host freed", "stream freed"]
    assert inside[-1] == "pop" and calls.count("push") == calls.count("pop")


# a bad engine file or manifest is a typed error naming it

def test_a_missing_engine_or_a_folder_is_a_model_error(cuda, tmp_path):
    engine = engine_file(tmp_path)
    engine.unlink()
    with pytest.raises(ModelError, match=f"cannot read {re.escape(str(engine))}"):
        open_backend(engine, backend="tensorrt")
    engine.mkdir()
    with pytest.raises(ModelError, match=f"{re.escape(str(engine))} is not a regular file"):
        open_backend(engine, backend="tensorrt")
    assert "retain" not in cuda.calls


@pytest.mark.parametrize(("fields", "what"), [
    ({"profile": {"max": "8"}}, "'profile' must hold"),
    ({"profile": {"min": [4, *FRAME], "opt": [1, *FRAME], "max": [2, *FRAME]}}, "'profile' must hold"),
    ({"profile": {"min": [1, *FRAME], "opt": [1, *FRAME], "max": [2.5, *FRAME]}}, "'profile' must hold"),
    ({"model_info": ["x"]}, "'model_info' must be an object"),
])
def test_a_damaged_manifest_is_a_backend_error_before_cuda(fields, what, cuda, tmp_path):
    engine = engine_file(tmp_path, **fields)
    with pytest.raises(BackendError, match=f"engine manifest {re.escape(str(engine_manifest_path(engine)))} is damaged: {what}"):
        TensorRTBackend(engine, max_batch=4)
    assert "retain" not in cuda.calls
