"""TensorRT engine building: version gating against the recording stand-in, manifests, real-TensorRT checks (skipped here)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.cli import main
from structvpr_edge.artifacts import CPU_INT8, FP16, FP32, MANIFEST, RANGES, REPORT, TRT_CACHE, TRT_INT8, engine_manifest_path
from structvpr_edge.deploy.calibration import graph_identity, load_manifest
from structvpr_edge.deploy.engine import EngineBuildConfig, build_engine
from structvpr_edge.runtime.tensorrt_backend import GpuInfo, check_engine_compatible, load_engine_manifest
from structvpr_edge.errors import BackendError, ConfigError, DatasetError, ModelError
from structvpr_edge.modelinfo import sha256_file
from structvpr_edge.trt_compat import detect
from tests.cuda_standin import install_pycuda
from tests.trt_standin import make_tensorrt

GPU = GpuInfo("Stand-in Orin", "8.7", "12.6", 12060)
# tensorrt-stubs alone installs a namespace package named tensorrt: no origin, no API
_SPEC = importlib.util.find_spec("tensorrt")
TENSORRT = _SPEC is not None and _SPEC.origin is not None
KIT = Path(__file__).resolve().parents[1] / "calibration" / "structvprpp"
KIT_FILES = (MANIFEST, RANGES, TRT_CACHE, REPORT)


def _build(variant, precision, onnx, out_dir, calibration=None, **options):
    trt = make_tensorrt(variant)
    config = EngineBuildConfig(onnx=onnx, precision=precision, out=out_dir / f"{variant}-{precision}.engine", calibration=calibration, **options)
    return trt, build_engine(config, trt=trt, gpu=GPU)


def _calls(trt, name):
    return [c[1:] for c in trt.calls if c[0] == name]


def _parsed_precision(trt):
    (extra,) = _calls(trt, "parse")
    return json.loads(extra[0]).get("precision", "fp32")


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("8.6", dict(precision_flags=True, calibrators=True, explicit_batch_flag=True, strongly_typed_flag=False)),
        ("10", dict(precision_flags=True, calibrators=True, explicit_batch_flag=False, strongly_typed_flag=True)),
        ("11", dict(precision_flags=False, calibrators=False, explicit_batch_flag=False, strongly_typed_flag=True)),
    ],
)
def test_feature_detection(variant, expected):
    api = detect(make_tensorrt(variant))
    assert {k: getattr(api, k) for k in expected} == expected
    assert api.serialized_build and api.named_tensors and api.memory_pool_limit and api.timing_cache
    assert api.strongly_typed_only == (variant == "11") and api.opt_in_strong_typing == (variant == "10")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt11_takes_precision_from_the_graph_only(precision, student_onnx, calibration_dir, tmp_path):
    trt, manifest = _build("11", precision, student_onnx[0], tmp_path, calibration_dir)
    assert _parsed_precision(trt) == {"fp16": "fp16", "int8": "int8-trt"}[precision]
    assert _calls(trt, "set_flag") == [] and _calls(trt, "config.int8_calibrator") == []
    assert _calls(trt, "create_network") == [((),)]  # always strongly typed; the deprecated flag is not passed
    assert manifest["plan"]["flags"] == [] and not manifest["plan"]["entropy_calibrator"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt11_without_calibration_says_what_to_run(precision, student_onnx, tmp_path):
    with pytest.raises(BackendError, match="structvpr-edge calibrate"):
        _build("11", precision, student_onnx[0], tmp_path)


def test_trt10_prefers_the_qdq_graph_strongly_typed(student_onnx, calibration_dir, tmp_path):
    trt, manifest = _build("10", "int8", student_onnx[0], tmp_path, calibration_dir)
    assert _parsed_precision(trt) == "int8-trt"
    assert _calls(trt, "create_network") == [(("STRONGLY_TYPED",),)]
    assert _calls(trt, "set_flag") == [] and _calls(trt, "config.int8_calibrator") == []
    assert manifest["onnx_sha256"] == sha256_file(calibration_dir / TRT_INT8)


def test_trt10_falls_back_to_the_fp16_flag_without_an_fp16_graph(student_onnx, tmp_path):
    trt, _ = _build("10", "fp16", student_onnx[0], tmp_path)
    assert _parsed_precision(trt) == "fp32" and _calls(trt, "set_flag") == [("FP16",)]
    assert _calls(trt, "create_network") == [((),)]  # weakly typed, as the flag requires


def test_trt86_uses_int8_flag_and_entropy_calibrator_with_the_cache(student_onnx, calibration_dir, tmp_path):
    trt, manifest = _build("8.6", "int8", student_onnx[0], tmp_path, calibration_dir, min_batch=1, opt_batch=2, max_batch=4)
    assert _parsed_precision(trt) == "fp32"
    assert _calls(trt, "create_network") == [(("EXPLICIT_BATCH",),)]
    assert _calls(trt, "set_flag") == [("INT8",)]
    (calibrator,) = [c[0] for c in _calls(trt, "config.int8_calibrator")]
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2) and calibrator.get_batch_size() == 1
    cache = calibrator.read_calibration_cache()
    assert cache.startswith(b"TRT-8601-EntropyCalibration2\n") and b"images: " in cache
    assert _calls(trt, "set_calibration_profile") == [()]
    assert _calls(trt, "set_shape")[0] == ("images", (1, 3, 48, 64), (2, 3, 48, 64), (4, 3, 48, 64))
    assert manifest["profile"] == {"min": [1, 3, 48, 64], "opt": [2, 3, 48, 64], "max": [4, 3, 48, 64]}
    assert manifest["plan"]["entropy_calibrator"] and manifest["onnx_sha256"] == sha256_file(student_onnx[0])


def test_trt86_calibrator_checks_images_only_when_asked_for_batches(student_onnx, calibration_dir, tmp_path):
    copy = tmp_path / "copied_calibration"
    shutil.copytree(calibration_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["root"] = str(tmp_path / "images_not_copied")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    trt, _ = _build("8.6", "int8", student_onnx[0], tmp_path, copy)  # a folder copied without its images still builds
    (calibrator,) = [c[0] for c in _calls(trt, "config.int8_calibrator")]
    with pytest.raises(DatasetError, match="is missing"):  # only when TensorRT rejects the cache and asks for batches
        calibrator.get_batch(["images"])


def test_trt86_calibrator_releases_its_context_when_calibration_ends(student_onnx, calibration_dir, tmp_path, monkeypatch):
    """TensorRT rejected the cache and calibrates: the buffer is freed and the primary context released after the last image."""
    cuda = install_pycuda(monkeypatch)
    trt, _ = _build("8.6", "int8", student_onnx[0], tmp_path, calibration_dir)
    (calibrator,) = [c[0] for c in _calls(trt, "config.int8_calibrator")]
    fed = list(iter(lambda: calibrator.get_batch(["images"]), None))
    assert len(fed) == len(load_manifest(calibration_dir)[1]) and calibrator.get_batch(["images"]) is None  # asked again: still done
    assert cuda.calls.count("retain") == cuda.calls.count("detach") == 1 and cuda.calls[-1] == "detach"
    assert cuda.calls.count("alloc") == cuda.calls.count("free") == 1 and cuda.calls.count("push") == cuda.calls.count("pop")


def test_the_trtexec_line_reads_the_cache_retargeted_beside_the_engine(student_onnx, calibration_dir, tmp_path):
    """The kit's cache says TRT-8601; trtexec on TensorRT 10 given that one would recalibrate."""
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    (kit / TRT_INT8).unlink()  # TensorRT 10 without the Q/DQ graph: INT8 flag and the entropy calibrator
    kit_cache = (kit / TRT_CACHE).read_bytes()
    _, manifest = _build("10", "int8", student_onnx[0], tmp_path, kit)
    cache = tmp_path / f"10-int8.engine.{TRT_CACHE}"
    assert manifest["plan"]["entropy_calibrator"] and f"--int8 --calib={cache} " in manifest["trtexec"]
    assert kit_cache.startswith(b"TRT-8601-") and cache.read_bytes() == kit_cache.replace(b"TRT-8601-", b"TRT-101300-", 1)
    assert (kit / TRT_CACHE).read_bytes() == kit_cache



def test_a_cache_tensorrt_makes_itself_goes_beside_the_engine_not_into_the_kit(student_onnx, calibration_dir, tmp_path, monkeypatch):
    """Had TensorRT rejected the kit's cache and calibrated again, its new cache overwrote the kit's
    cache.trt, which report.json records: the kit became a mix of two calibrations."""
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    (kit / TRT_INT8).unlink()
    kit_cache = (kit / TRT_CACHE).read_bytes()
    trt = make_tensorrt("10")
    build = trt.Builder.build_serialized_network

    def recalibrating(self, network, config):
        config.int8_calibrator.write_calibration_cache(b"TRT-101300-recalibrated\n")
        return build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", recalibrating)
    build_engine(EngineBuildConfig(onnx=student_onnx[0], precision="int8", out=tmp_path / "e.engine", calibration=kit), trt=trt, gpu=GPU)
    assert (kit / TRT_CACHE).read_bytes() == kit_cache
    assert (tmp_path / f"e.engine.{TRT_CACHE}").read_bytes() == b"TRT-101300-recalibrated\n"

def test_manifest_records_the_build(student_onnx, calibration_dir, tmp_path):
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"earlier timings")
    trt, manifest = _build("10", "fp16", student_onnx[0], tmp_path, calibration_dir, timing_cache=cache_file)
    engine = tmp_path / "10-fp16.engine"
    assert engine.read_bytes() == b"stand-in serialized plan" and engine_manifest_path(engine).is_file()
    assert _calls(trt, "create_timing_cache") == [(b"earlier timings",)] and cache_file.read_bytes() == b"stand-in timing cache"
    loaded = load_engine_manifest(engine)
    assert loaded == manifest
    assert (loaded["tensorrt_version"], loaded["gpu_name"], loaded["compute_capability"], loaded["cuda_version"]) == ("10.13.0.35", GPU.name, "8.7", "12.6")
    assert loaded["precision"] == "fp16" and loaded["onnx_sha256"] == sha256_file(calibration_dir / FP16)
    assert loaded["calibration_manifest_sha256"] == sha256_file(calibration_dir / MANIFEST)
    assert loaded["model_info"]["structvpr.width"] == "64" and loaded["build_seconds"] >= 0
    assert "--timing-cache" in loaded["command"] and loaded["command"].startswith("structvpr-edge build-engine --model ")
    assert loaded["trtexec"] == (f"trtexec --onnx={calibration_dir / FP16} --saveEngine={engine} --memPoolSize=workspace:1024 "
                                 "--stronglyTyped --minShapes=images:1x3x48x64 --optShapes=images:1x3x48x64 --maxShapes=images:8x3x48x64 "
                                 f"--timingCacheFile={cache_file}")


def test_engine_compatibility_check_says_how_to_rebuild(student_onnx, tmp_path):
    _, manifest = _build("10", "fp32", student_onnx[0], tmp_path)
    check_engine_compatible(manifest, "10.13.0.35", GPU.name, "8.7")
    with pytest.raises(BackendError, match=r"TensorRT: built with 10.13.0.35, running 10.13.1(.|\n)*structvpr-edge build-engine --model"):
        check_engine_compatible(manifest, "10.13.1", GPU.name, "8.7")
    with pytest.raises(BackendError, match=r"GPU: built with Stand-in Orin, running NVIDIA H100.*compute capability: built with 8\.7, running 9\.0"):
        check_engine_compatible(manifest, "10.13.0.35", "NVIDIA H100", "9.0")
    with pytest.raises(BackendError, match="cannot read engine manifest"):
        load_engine_manifest(tmp_path / "missing.engine")


def test_options_are_checked(student_onnx, calibration_dir, tmp_path):
    with pytest.raises(ModelError, match="CPU form"):
        _build("10", "int8", calibration_dir / CPU_INT8, tmp_path)
    with pytest.raises(ConfigError, match="min-batch <= opt-batch"):
        _build("10", "fp32", student_onnx[0], tmp_path, min_batch=4, opt_batch=2)
    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8"):
        _build("10", "fp32", student_onnx[0], tmp_path, dla_core=0)
    with pytest.raises(ConfigError, match="--precision"):
        EngineBuildConfig(onnx=student_onnx[0], precision="int4", out=tmp_path / "x.engine")


def test_dla_core_and_gpu_fallback(student_onnx, calibration_dir, tmp_path):
    trt, _ = _build("8.6", "fp16", student_onnx[0], tmp_path, calibration_dir, dla_core=1)
    assert [c[0].name for c in _calls(trt, "config.default_device_type")] == ["DLA"]
    assert _calls(trt, "config.DLA_core") == [(1,)] and ("GPU_FALLBACK",) in _calls(trt, "set_flag")


def test_eval_of_an_engine_without_tensorrt_is_a_clear_error(tmp_path, place_dataset, capsys):
    if TENSORRT:
        pytest.skip("TensorRT is installed here")
    assert main(["eval", "--model", str(tmp_path / "student.engine"), "--dataset", str(place_dataset)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.tensorrt
def test_real_tensorrt_engine_matches_onnx_runtime(student_onnx, tmp_path):
    """On a machine with TensorRT, pycuda and a GPU: build FP32 and compare with ONNX Runtime."""
    if not TENSORRT:
        pytest.skip("TensorRT is not installed here (JetPack or NVIDIA's index provide it)")
    pytest.importorskip("pycuda", reason="pycuda is not installed (pip install 'structvpr-edge[gpu]')")
    from structvpr_edge.eval.models import deployed_extractor

    engine = tmp_path / "student.engine"
    build_engine(EngineBuildConfig(onnx=student_onnx[0], precision="fp32", out=engine, max_batch=4))
    batch = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(deployed_extractor(engine)(batch), deployed_extractor(student_onnx[0])(batch), atol=1e-3)


def test_shipped_kit_belongs_to_the_shipped_weights():
    """calibration/structvprpp must be regenerated whenever structvprpp.pt changes (see its README)."""
    from structvpr_edge.models.checkpoint import resolve_checkpoint

    assert all((KIT / name).is_file() for name in KIT_FILES), f"{KIT} lacks one of {KIT_FILES}"
    manifest, report = json.loads((KIT / MANIFEST).read_text()), json.loads((KIT / REPORT).read_text())
    assert manifest["weights"] == "structvprpp" and manifest["weights_sha256"] == sha256_file(resolve_checkpoint("structvprpp")), (
        f"{KIT} was calibrated for other weights; regenerate it with the command in {KIT / 'README.md'}")
    assert "/test/" not in manifest["root"] + "".join(i["path"] for i in manifest["images"])  # never calibrated on test
    assert report["sha256"][FP32] == manifest["model_sha256"] and "INT8 trt" in report["recall"]
    assert report["quantization"]["trt"] == {"activation_dtypes": ["int8"], "zero_points_all_zero": True}


@pytest.fixture(scope="module")
def copied_kit(tmp_path_factory) -> Path:
    """The committed kit files alone, as on a Jetson: no ONNX, and the images' root does not exist."""
    kit = tmp_path_factory.mktemp("jetson") / "structvprpp"
    kit.mkdir()
    for name in KIT_FILES:
        shutil.copy(KIT / name, kit / name)
    manifest = json.loads((kit / MANIFEST).read_text())
    (kit / MANIFEST).write_text(json.dumps({**manifest, "root": str(kit / "no-images-here")}))
    return kit


@pytest.mark.parametrize(("variant", "graph", "why"), [
    ("8.6", FP32, "entropy calibrator reading the calibration cache"), ("10", TRT_INT8, "strongly typed"), ("11", TRT_INT8, "strongly typed"),
])
def test_build_engine_from_the_shipped_kit_needs_no_images(variant, graph, why, copied_kit, tmp_path, monkeypatch, capsys):
    trt = make_tensorrt(variant)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("structvpr_edge.deploy.engine.gpu_info", lambda: GPU)
    out = tmp_path / "structvprpp.int8.engine"
    args = ["build-engine", "--model", "structvprpp", "--calibration", str(copied_kit), "--precision", "int8", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    manifest = load_engine_manifest(out)
    assert manifest["plan"]["onnx"] == str(copied_kit / graph) and why in manifest["plan"]["why"]
    assert manifest["trtexec"] in capsys.readouterr().out
    report = json.loads((copied_kit / REPORT).read_text())
    for name in (FP32, TRT_INT8):  # rebuilt from the weights and ranges: the calibrated graphs, on any CPU
        assert graph_identity(copied_kit / name) == report["graphs"][name]
    if variant == "8.6":
        (calibrator,) = [c[0] for c in _calls(trt, "config.int8_calibrator")]
        assert calibrator.read_calibration_cache().startswith(b"TRT-8601-EntropyCalibration2\n")
        assert "--int8 --calib=" in manifest["trtexec"]
