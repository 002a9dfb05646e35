"""benchmarks/latency.py and what it stands on (bench/latency.py, bench/rig.py, timing.py, the
TensorRT backend), fed wrong options, odd artifacts and machines without a GPU. Nothing here is
timed: the harness is replaced by a stand-in that returns fixed samples."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.artifacts import ENGINE_FORMAT, engine_manifest_path
from structvpr_edge.bench import latency
from structvpr_edge.bench.latency import (SOURCE_RECORD, LatencyConfig, camera_artifact, choose_artifacts, latency_report, prepare_artifacts,
                                          run_figures, system_info, time_artifacts)
from structvpr_edge.bench.rig import RunSpec, exact_agreement
from structvpr_edge.errors import BackendError, ConfigError
from structvpr_edge.layout import DescriptorLayout
from structvpr_edge.modelinfo import ModelInfo
from structvpr_edge.runtime import tensorrt_backend
from structvpr_edge.timing import measure_isolated
from tests.cuda_standin import install_pycuda
from tests.trt_standin import VERSIONS, make_tensorrt

ROOT = Path(__file__).resolve().parents[1]
INFO = ModelInfo(8, 8, True, "BGR", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), DescriptorLayout.single(4))
GPU_NAME = "Stand-in Orin"
BASE = RunSpec("", "", threads=1, map_size=10)


def onnx_model(path: Path, tag: str | None) -> str:
    """An Identity graph carrying structvpr metadata, stamped with calibrate's precision ``tag`` (None: the FP32 export)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["descriptor"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, replace(INFO, extra={"precision": tag} if tag else {}).to_props())
    onnx.save(model, str(path))
    return str(path)


def engine_file(folder: Path, drop: str | None = None, precision: str = "fp16") -> str:
    """An engine blob and the manifest build-engine writes beside it (less key ``drop``)."""
    blob = b"stand-in plan"
    engine = folder / f"model.{precision}.engine"
    engine.write_bytes(blob)
    manifest = {"format": ENGINE_FORMAT, "engine": engine.name, "engine_sha256": hashlib.sha256(blob).hexdigest(), "tensorrt_version": VERSIONS["10"],
                "gpu_name": GPU_NAME, "compute_capability": "8.7", "command": "structvpr-edge build-engine ...", "precision": precision,
                "profile": {"min": [1, 8, 8, 3], "opt": [1, 8, 8, 3], "max": [2, 8, 8, 3]}, "model_info": INFO.to_props()}
    manifest.pop(drop or "", None)
    engine_manifest_path(engine).write_text(json.dumps(manifest))
    return str(engine)


@pytest.fixture
def harness(monkeypatch) -> list:
    """measure_isolated replaced: every spec's stages 'take' 2 and 6 ms (mean 4), nothing is run; returns the specs it got."""
    got: list = []

    def fake(specs, frames, warmup):
        got.extend(specs)
        samples = {stage: [2.0, 6.0] for stage in latency.STAGES}
        return {s.name: {"setup": {**asdict(s), "threading": [None] * s.cameras, "index_factory": "Flat", "map_build_s": 0.0},
                         "samples": samples, "sustained": samples} for s in specs}

    monkeypatch.setattr(latency, "measure_isolated", fake)
    return got


@pytest.fixture
def script():
    """benchmarks/latency.py as a module (its main() is not run)."""
    spec = importlib.util.spec_from_file_location("latency_script", ROOT / "benchmarks" / "latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(script, monkeypatch, *argv: str) -> LatencyConfig:
    monkeypatch.setattr(sys, "argv", ["latency.py", *argv])
    return script.parse_config()[0]


# 1. precision


def test_each_model_records_its_own_precision_not_the_precision_option(tmp_path):
    models = (onnx_model(tmp_path / "a.onnx", None), onnx_model(tmp_path / "b.onnx", "fp16"), onnx_model(tmp_path / "c.onnx", "int8-cpu"),
              engine_file(tmp_path), "runs/x/model.pt")
    artifacts, _ = choose_artifacts(LatencyConfig(BASE, models, precision="int8"))
    assert [artifacts[m][2] for m in models] == ["fp32", "fp16", "int8", "fp16", "fp32"]


# 2. capacity


def test_capacity_is_named_apart_from_the_camera_pace(harness):
    spec = RunSpec("two", "m.onnx", cameras=2, fps=30.0)
    run = run_figures(spec, latency.measure_isolated([spec], 1, 0)["two"], "int8")
    assert run["capacity_fps"] == 2 * 1000 / 4.0 and run["fps"] == 30.0  # the pace survives beside the capacity


def test_the_table_says_capacity_and_the_pace(script, harness, capsys):
    config = LatencyConfig(RunSpec("", "", fps=30.0, cameras=2), ("m.int8.onnx",))
    runs = time_artifacts(config, {"m.int8.onnx": ("m.int8.onnx", "auto", "int8")})
    system = {"cpu": "cpu", "cpu_features": [], "cores": 2, "load_average": (0.0, 0.0, 0.0)}
    script.print_runs(config, {"system": system, "load_average_after": (0.0, 0.0, 0.0), "runs": runs})
    out = capsys.readouterr().out
    assert "frames paced at 30 fps" in out and "capacity: frames/s the stages could sustain back to back" in out
    assert "| capacity fps |" in out and out.rstrip().endswith("| 500 |")


def test_the_jitter_ratio_follows_from_the_alone_columns_beside_it(script, monkeypatch, capsys):
    """Rotated frames take 4 ms, the uninterrupted run 1, 3 or 9: its p99/p50 (~2.9) is read against
    its own p50 (3), printed beside it and labelled, never against the rotated p50 (4)."""
    def fake(specs, frames, warmup):
        return {s.name: {"setup": {**asdict(s), "threading": [None], "index_factory": "Flat"},
                         "samples": {stage: [4.0] for stage in latency.STAGES}, "sustained": {stage: [1.0, 3.0, 9.0] for stage in latency.STAGES}}
                for s in specs}

    monkeypatch.setattr(latency, "measure_isolated", fake)
    config = LatencyConfig(BASE, ("m.onnx",))
    runs = time_artifacts(config, {"m.onnx": ("m.onnx", "auto", "fp32")})
    system = {"cpu": "cpu", "cpu_features": [], "cores": 2, "load_average": (0.5, 0.0, 0.0)}
    script.print_runs(config, {"system": system, "load_average_after": (2.0, 0.0, 0.0), "runs": runs})
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    cells = dict(zip(header.strip("| ").split(" | "), lines[lines.index(header) + 2].strip("| ").split(" | ")))
    assert cells["frame p50"] == "4.00" and cells["alone frame p50"] == "3.00"
    assert float(cells["alone p99/p50"]) == pytest.approx(float(cells["alone frame p99"]) / float(cells["alone frame p50"]), abs=0.01)
    assert "load 0.5 before the run, 2.0 after it" in lines[1]


def test_the_load_is_read_before_the_harness_works(harness, monkeypatch, tmp_path):
    """The load printed is the background the runs met: read before the timing, which here raises it to 2."""
    monkeypatch.setattr(latency.os, "getloadavg", lambda: (2.0, 2.0, 2.0) if harness else (0.5, 0.5, 0.5))
    report = latency_report(LatencyConfig(BASE, (onnx_model(tmp_path / "a.onnx", None),)))
    assert report["system"]["load_average"][0] == 0.5 and report["load_average_after"][0] == 2.0


def test_reuse_refuses_the_artifacts_of_another_checkpoint(monkeypatch, tmp_path):
    """--reuse times what is in --work only when it was made from this checkpoint's very file."""
    exported: list[str] = []

    def export(checkpoint, out, uint8_input):
        exported.append(str(checkpoint))
        Path(out).write_bytes(b"graph")
        return types.SimpleNamespace(parity_min_cosine=1.0, parity_max_abs_diff=0.0, parity_images=1)

    def calibrate(config):
        config.out.mkdir(exist_ok=True)
        (config.out / "model.int8.cpu.onnx").write_bytes(b"int8 graph")

    monkeypatch.setattr("structvpr_edge.deploy.export.export_onnx", export)
    monkeypatch.setattr("structvpr_edge.deploy.calibration.calibrate", calibrate)
    first, second, work = tmp_path / "first.pt", tmp_path / "second.pt", tmp_path / "work"
    first.write_bytes(b"weights of one run")
    second.write_bytes(b"weights of another")
    work.mkdir()
    prepare_artifacts(str(first), work, "images", 8, 1, reuse=False)
    artifacts, export_report = prepare_artifacts(str(first), work, "images", 8, 1, reuse=True)
    assert exported == [str(first)] and export_report == {} and artifacts["ort-fp32"][0] == str(work / "model.onnx")
    with pytest.raises(ConfigError, match=f"--reuse: the artifacts in {work} \\(made from {first}\\) are not {second}'s"):
        prepare_artifacts(str(second), work, "images", 8, 1, reuse=True)
    (work / SOURCE_RECORD).write_text('{"checkpoint": "x", "sha')  # a record cut short by a kill
    with pytest.raises(ConfigError, match="no record of the checkpoint"):
        prepare_artifacts(str(first), work, "images", 8, 1, reuse=True)
    (work / SOURCE_RECORD).unlink()  # a work folder of before the record
    with pytest.raises(ConfigError, match="no record of the checkpoint"):
        prepare_artifacts(str(first), work, "images", 8, 1, reuse=True)
    assert exported == [str(first)]



def test_an_engine_in_the_work_folder_is_timed_only_when_built_from_this_checkpoint(monkeypatch, tmp_path):
    """An engine left in --work by another model's run was timed and reported as this checkpoint's."""
    monkeypatch.setattr("structvpr_edge.deploy.export.export_onnx", lambda checkpoint, out, uint8_input: (
        Path(out).write_bytes(b"graph"), types.SimpleNamespace(parity_min_cosine=1.0, parity_max_abs_diff=0.0, parity_images=1))[1])
    monkeypatch.setattr("structvpr_edge.deploy.calibration.calibrate", lambda config: (
        config.out.mkdir(exist_ok=True), (config.out / "model.int8.cpu.onnx").write_bytes(b"int8 graph")))
    ours, work = tmp_path / "ours.pt", tmp_path / "work"
    ours.write_bytes(b"weights of this run")
    work.mkdir()
    engine = Path(engine_file(work))  # INFO's checkpoint: not ours
    with pytest.raises(ConfigError, match=f"{engine} was built from checkpoint sha256 .* not {ours}"):
        prepare_artifacts(str(ours), work, "images", 8, 1, reuse=False)
    manifest = json.loads(engine_manifest_path(engine).read_text())
    manifest["model_info"] = replace(INFO, checkpoint_sha256=hashlib.sha256(ours.read_bytes()).hexdigest()).to_props()
    engine_manifest_path(engine).write_text(json.dumps(manifest))
    artifacts, _ = prepare_artifacts(str(ours), work, "images", 8, 1, reuse=True)
    assert artifacts["tensorrt-fp16"] == (str(engine), "tensorrt", "fp16")

# 3. TensorRT in the system report


def test_tensorrt_stubs_alone_are_no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # tensorrt-stubs' empty namespace package
    assert system_info()["tensorrt"] is None
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10"))
    assert system_info()["tensorrt"] == VERSIONS["10"]


# 4. the multi-camera row


COMPARED = {"torch-fp32": ("structvprpp", "torch", "fp32"), "ort-fp32": ("w/model.onnx", "onnxruntime", "fp32"),
            "ort-fp16": ("w/model.fp16.onnx", "onnxruntime", "fp16"), "ort-int8": ("w/model.int8.cpu.onnx", "onnxruntime", "int8"),
            "tensorrt-fp16": ("w/model.fp16.engine", "tensorrt", "fp16")}


def test_cameras_time_the_int8_artifact_of_the_fastest_backend(harness):
    assert camera_artifact(COMPARED) == "ort-int8"  # not the FP16 engine appended last
    assert camera_artifact({**COMPARED, "tensorrt-int8": ("w/model.int8.engine", "tensorrt", "int8")}) == "tensorrt-int8"
    assert camera_artifact({"a": ("a.onnx", "auto", "fp32"), "b": ("b.onnx", "auto", "fp32")}) == "a"
    runs = time_artifacts(LatencyConfig(replace(BASE, cameras=2), ("x",)), COMPARED)
    row = runs[-1]
    assert (row["name"], row["model"], row["precision"], row["cameras"]) == ("ort-int8 x2 cameras", "w/model.int8.cpu.onnx", "int8", 2)
    assert [s.cameras for s in harness] == [1] * len(COMPARED) + [2]


# 5. --profile


def test_profile_covers_the_onnx_models_given(tmp_path, harness, monkeypatch):
    models = (onnx_model(tmp_path / "a.onnx", None), onnx_model(tmp_path / "b.onnx", "int8-cpu"))
    monkeypatch.setattr(latency, "node_profile", lambda path: {"path": path})
    report = latency_report(LatencyConfig(BASE, models, profile=True))
    assert report["profile"] == {m: {"path": m} for m in models}


def test_profile_without_an_onnx_model_is_refused(tmp_path):
    for models in (("runs/x/model.pt",), (engine_file(tmp_path),)):
        with pytest.raises(ConfigError, match="--profile profiles ONNX Runtime graphs"):
            LatencyConfig(BASE, models, profile=True)


# 6. --frames / --warmup


@pytest.mark.parametrize("frames, warmup, option", [(0, 30, "--frames"), (-5, 30, "--frames"), (300, -1, "--warmup")])
def test_frames_and_warmup_are_checked_up_front(frames, warmup, option):
    with pytest.raises(ConfigError, match=option):
        LatencyConfig(BASE, frames=frames, warmup=warmup)
    with pytest.raises(ConfigError, match=option):
        measure_isolated([], frames, warmup)  # the harness itself, before any process


# 7. --check-exact on a small map


class ExactMap:
    """A map answering by exact inner product (what the index is compared with)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, query: np.ndarray, k: int):
        scores = query @ self.vectors.T
        return scores, np.argsort(-scores, axis=1)[:, :k]


def test_exact_agreement_on_a_map_smaller_than_its_queries(script, capsys):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    agreement, queries, search_ms = exact_agreement(ExactMap(vectors), vectors)
    assert (agreement, queries) == (1.0, 50) and "p50" in search_ms
    script.print_extras(LatencyConfig(BASE), {"top1_agreement_with_exact": agreement, "exact_queries": queries,
                                              "search_ms_on_revisits": search_ms, "export_parity": {}})
    assert "100.0% over 50 revisit queries" in capsys.readouterr().out


# 8. --frame-size, 9. --cameras (and the other RunSpec options)


def test_frame_size_goes_through_the_cli_parser(script, monkeypatch, capsys):
    assert parse(script, monkeypatch, "--frame-size", "640X480").run.frame_size == (640, 480)
    for bad in ("640", "640x", "0x480"):
        with pytest.raises(SystemExit) as stop:
            parse(script, monkeypatch, "--frame-size", bad)
        assert stop.value.code == 2 and "--frame-size" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(("--cameras", "0"), "--cameras must be >= 1"), (("--cameras", "-2"), "--cameras must be >= 1"),
                                           (("--frames", "0"), "--frames must be >= 1"), (("--warmup", "-1"), "--warmup must be >= 0"),
                                           (("--map-size", "0"), "--map-size must be >= 1"), (("--fps", "nan"), "--fps must be"),
                                           (("--model", "m.pt", "--profile"), "--profile")])
def test_the_script_refuses_bad_options_before_any_work(script, monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        parse(script, monkeypatch, *argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_run_spec_checks_its_options():
    for bad in ({"cameras": 0}, {"map_size": -1}, {"fps": 0.0}, {"fps": float("inf")}):
        with pytest.raises(ConfigError):
            RunSpec("x", "m.onnx", **bad)


# 10. pycuda missing, libcuda missing, no GPU


def test_no_cuda_device_is_a_backend_error(monkeypatch):
    install_pycuda(monkeypatch, init_error="cuInit failed: no CUDA-capable device is detected")
    with pytest.raises(BackendError, match="no CUDA device: cuInit failed: no CUDA-capable device is detected"):
        tensorrt_backend.import_pycuda()


def test_pycuda_not_installed_says_pip_install(monkeypatch, tmp_path):
    for name in ("pycuda", "pycuda.driver"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # nowhere to find pycuda, installed here or not
    with pytest.raises(BackendError, match=r"pip install 'structvpr-edge\[gpu\]'"):
        tensorrt_backend.import_pycuda()


def test_missing_libcuda_is_told_apart_from_a_missing_pycuda(monkeypatch, tmp_path):
    (tmp_path / "driver.py").write_text('raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")\n')
    package = types.ModuleType("pycuda")
    package.__path__ = [str(tmp_path)]  # pycuda is there; its driver extension cannot load libcuda
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.delitem(sys.modules, "pycuda.driver", raising=False)
    with pytest.raises(BackendError, match="the CUDA driver library is missing .*libcuda.so.1") as error:
        tensorrt_backend.import_pycuda()
    assert "pip install 'structvpr-edge" not in str(error.value)


# 11. a failed TensorRT open releases the primary context


def fake_tensorrt(monkeypatch, deserializes: bool) -> types.ModuleType:
    """tests/trt_standin.py's 10.x module plus a runtime whose engine has one uint8 input and one float output."""
    trt = make_tensorrt("10")

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, index: int) -> str:
            return ["images", "descriptor"][index]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "uint8" if name == "images" else "float32"

        def get_tensor_shape(self, name: str) -> tuple:
            return (-1, 8, 8, 3) if name == "images" else (-1, INFO.layout.dim)

        def create_execution_context(self):
            return types.SimpleNamespace(set_tensor_address=lambda name, address: True)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes):
            return Engine() if deserializes else None

    trt.Runtime, trt.nptype = Runtime, np.dtype
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.mark.parametrize("deserializes, fail_alloc, message", [(False, None, "could not deserialize"), (True, 2, "out of memory")])
def test_a_failed_open_releases_the_primary_context_and_its_buffers(monkeypatch, tmp_path, deserializes, fail_alloc, message):
    cuda = install_pycuda(monkeypatch, fail_alloc=fail_alloc)
    fake_tensorrt(monkeypatch, deserializes)
    with pytest.raises((BackendError, cuda.Error), match=message):
        tensorrt_backend.TensorRTBackend(engine_file(tmp_path))
    assert cuda.calls.count("retain") == cuda.calls.count("detach") == 1
    assert cuda.calls.count("push") == cuda.calls.count("pop")
    assert cuda.calls.count("alloc") == cuda.calls.count("free")  # every buffer made is freed


def test_an_open_engine_closes_once(monkeypatch, tmp_path):
    cuda = install_pycuda(monkeypatch)
    fake_tensorrt(monkeypatch, deserializes=True)
    backend = tensorrt_backend.TensorRTBackend(engine_file(tmp_path), max_batch=4)
    assert backend.max_batch == 2 and cuda.calls.count("retain") == 1
    backend.close()
    backend.close()
    assert cuda.calls.count("detach") == 1 and cuda.calls.count("free") == 2
    with pytest.raises(BackendError, match="closed"):
        backend.infer(np.zeros((1, 8, 8, 3), np.uint8))


def test_a_manifest_without_its_profile_is_refused_before_cuda(monkeypatch, tmp_path):
    cuda = install_pycuda(monkeypatch)
    fake_tensorrt(monkeypatch, deserializes=True)
    with pytest.raises(BackendError, match=r"missing \['profile'\]"):
        tensorrt_backend.TensorRTBackend(engine_file(tmp_path, drop="profile"))
    assert "retain" not in cuda.calls
