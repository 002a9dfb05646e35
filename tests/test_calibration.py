"""The calibrate workflow: k-center selection, manifest, both INT8 forms, TensorRT cache, FP16, accuracy gate."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from structvpr_edge.cli import main
from structvpr_edge.deploy import quantize as q
from structvpr_edge.artifacts import CPU_INT8, FP16, FP32, MANIFEST, RANGES, REPORT, TRT_CACHE, TRT_INT8
from structvpr_edge.deploy.calibration import KIT_EXPORT, CalibrationConfig, CalibrationReport, calibrate, k_center, load_manifest, prepare_kit, write_manifest
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.modelinfo import ModelInfo, read_onnx_info, sha256_file
from structvpr_edge.runtime.preprocess import Preprocessor


def _load(path: Path):
    return onnx.load(str(path))


def test_k_center_covers_every_cluster():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3]
    sizes = (200, 10, 3)  # a common condition and two rare ones
    points = np.concatenate([c + 0.01 * rng.normal(size=(n, 8)) for c, n in zip(centres, sizes, strict=True)])
    cluster = np.repeat(np.arange(3), sizes)
    assert sorted(cluster[k_center(points, 3)]) == [0, 1, 2]
    assert sorted(k_center(points, 500)) == list(range(len(points)))  # k beyond N picks everything once
    assert sorted(k_center(np.ones((5, 4)), 3)) == sorted(set(k_center(np.ones((5, 4)), 3)))  # no repeats among duplicates


def test_manifest_detects_a_changed_image(place_dataset, student_onnx, tmp_path):
    root = tmp_path / "frames"
    root.mkdir()
    images = sorted((place_dataset / "images" / "train" / "database").glob("*.jpg"))[:4]
    copies = [Path(shutil.copy(p, root / p.name)) for p in images]
    (tmp_path / "cal").mkdir()
    write_manifest(tmp_path / "cal" / MANIFEST, root, copies, student_onnx[0], 4)
    manifest, paths = load_manifest(tmp_path / "cal")
    assert paths == copies and len(manifest["images"]) == 4
    copies[2].write_bytes(copies[2].read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DatasetError, match=re.escape(copies[2].name) + ".*changed"):
        load_manifest(tmp_path / "cal" / MANIFEST)
    with pytest.raises(DatasetError, match="--reselect"):  # reusing the calibration folder checks the hashes first
        calibrate(CalibrationConfig(model=student_onnx[0], images=root, out=tmp_path / "cal", num=4))


def test_the_report_says_when_its_timings_were_taken_on_a_busy_machine(calibration_dir):
    written = json.loads((calibration_dir / "report.json").read_text())
    assert written["cpu_ms"] and written["cpu_load"] is not None
    report = CalibrationReport("m.onnx", "entropy", 4, 8, "sha", {}, {}, {}, "val", cpu_ms=written["cpu_ms"])
    busy, quiet = replace(report, cpu_load=1.8).markdown(), replace(report, cpu_load=0.1).markdown()
    assert "load of 1.80 per core: a busy machine" in busy and "busy machine" not in quiet


def test_calibration_folder_and_manifest(calibration_dir, place_dataset):
    for name in (MANIFEST, RANGES, TRT_CACHE, CPU_INT8, TRT_INT8, FP16, "report.json", "report.md"):
        assert (calibration_dir / name).is_file(), name
    manifest, paths = load_manifest(calibration_dir)
    assert len(paths) == 12 and manifest["candidates"] == 96  # 24 train places x 4 views; never test images
    assert all("/train/" in p.as_posix() for p in paths)


def test_both_int8_artifacts_have_the_right_quantization(calibration_dir):
    cpu, trt = (q.quantization_types(_load(calibration_dir / name)) for name in (CPU_INT8, TRT_INT8))
    assert cpu["activation_dtypes"] == ["uint8"] and not cpu["zero_points_all_zero"]  # asymmetric u8
    assert trt["activation_dtypes"] == ["int8"] and trt["zero_points_all_zero"]  # symmetric s8, zero points 0
    assert read_onnx_info(calibration_dir / CPU_INT8).extra["precision"] == "int8-cpu"
    assert read_onnx_info(calibration_dir / TRT_INT8).extra["precision"] == "int8-trt"


def test_trt_cache_format_matches_the_ranges(calibration_dir):
    text = (calibration_dir / TRT_CACHE).read_text()
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert all(re.fullmatch(r".+: [0-9a-f]{8}", line) for line in lines[1:])
    version, scales = q.parse_trt_calibration_cache(text)
    ranges = q.load_ranges(calibration_dir / RANGES)
    assert version == 8601 and set(scales) == set(ranges.keys()) and "images" in scales
    low, high = ranges["images"].range_value
    assert scales["images"] == pytest.approx(max(abs(float(low)), abs(float(high))) / 127, rel=1e-6)
    assert q.retarget_cache(text, "10.3.0").splitlines()[0] == "TRT-100300-EntropyCalibration2"


def test_fp16_model_keeps_float32_io_and_close_outputs(calibration_dir, student_onnx):
    import onnxruntime as ort

    proto = _load(calibration_dir / FP16)
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    info = read_onnx_info(student_onnx[0])
    x = Preprocessor(info, max_batch=4)(list(np.random.default_rng(0).integers(0, 256, (4, info.height, info.width, 3), dtype=np.uint8)))
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0] for p in (student_onnx[0], calibration_dir / FP16))
    assert b.dtype == np.float32
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.999


def test_report_has_cosine_and_recall(calibration_dir):
    report = json.loads((calibration_dir / "report.json").read_text())
    assert set(report["cosine"]) == {"INT8 cpu", "INT8 trt", "FP16"}
    assert 0.99 < report["cosine"]["INT8 cpu"]["min"] <= report["cosine"]["INT8 cpu"]["mean"] <= 1 + 1e-6
    assert set(report["recall_fp32"]) == {"1", "5"} and set(report["recall"]["INT8 cpu"]) == {"1", "5"}
    assert report["within_budget"] is True and report["fp32_groups"] == [] and len(report["gate"]) == 1
    assert "Recall@1" in (calibration_dir / "report.md").read_text()


def test_gate_keeps_sensitive_groups_in_fp32(student_onnx, place_dataset, tmp_path):
    out = tmp_path / "strict"
    config = CalibrationConfig(model=student_onnx[0], images=place_dataset, out=out, num=6, method="minmax", val=place_dataset, max_recall_drop=-100.0)
    with pytest.raises(ModelError, match="even with first conv, last projection, normalization, GeM power in FP32"):
        calibrate(config)  # INT8 cannot gain 100 pp over FP32: every group is tried, one at a time
    assert not out.exists()  # gated before the swap: the rejected kit is set aside whole
    out = tmp_path / "strict.rejected"
    report = json.loads((out / "report.json").read_text())
    assert [step["fp32_groups"] for step in report["gate"]] == [
        [], ["first conv"], ["first conv", "last projection"], ["first conv", "last projection", "normalization"],
        ["first conv", "last projection", "normalization", "GeM power"],
    ]
    kept = ModelInfo.from_props({p.key: p.value for p in _load(out / CPU_INT8).metadata_props}).extra["fp32_nodes"]
    assert "/global_proj/Gemm" in kept and "/pool/Pow" in kept and kept == report["fp32_nodes"]
    quantized_inputs = {n.input[0] for n in _load(out / TRT_INT8).graph.node if n.op_type == "QuantizeLinear"}
    assert "/pool/Pow_1_output_0" not in quantized_inputs  # the Gemm's input stays float
    assert "NOT within budget" in (out / "report.md").read_text()
    cache = (out / TRT_CACHE).read_text()
    assert "/global_proj/Gemm_output_0:" not in cache and "images:" in cache


@pytest.mark.parametrize("method", q.METHODS)
def test_every_method_collects_ranges_for_every_float_tensor(method, student_onnx):
    info = read_onnx_info(student_onnx[0])
    frames = np.random.default_rng(1).integers(0, 256, (5, info.height, info.width, 3), dtype=np.uint8)
    ranges = q.collect_ranges(student_onnx[0], (Preprocessor(info)([f]) for f in frames), method, chunk=2)
    low, high = ranges["images"].range_value
    assert np.min(low) < 0 < np.max(high) and "descriptor" in ranges and len(ranges.keys()) > 100


def test_sensitive_groups_of_the_student(student_onnx):
    groups = dict(q.sensitive_groups(_load(student_onnx[0])))
    assert list(groups) == ["first conv", "last projection", "normalization", "GeM power"]
    assert len(groups["first conv"]) == 1 and groups["first conv"][0].endswith("Conv")
    assert {"/global_proj/Gemm", "/group_proj/MatMul"} <= set(groups["last projection"])
    assert groups["normalization"][-1] == "/alignment/Div_2"
    assert {"/pool/Pow", "/pool/Clip"} <= set(groups["GeM power"])


def test_bad_options_are_config_errors(student_onnx, calibration_dir, tmp_path):
    with pytest.raises(ConfigError, match="--val"):
        calibrate(CalibrationConfig(model=student_onnx[0], images=tmp_path, out=tmp_path / "x", max_recall_drop=0.5))
    with pytest.raises(ConfigError, match="holds 12 images but --num is 5; pass --reselect"):
        calibrate(CalibrationConfig(model=student_onnx[0], images=tmp_path, out=calibration_dir, num=5))
    with pytest.raises(ConfigError, match="already int8-cpu"):
        calibrate(CalibrationConfig(model=calibration_dir / CPU_INT8, images=tmp_path, out=tmp_path / "y"))


def test_eval_cli_on_int8_onnx(calibration_dir, place_dataset, tmp_path):
    out = tmp_path / "int8.json"
    assert main(["eval", "--model", str(calibration_dir / CPU_INT8), "--dataset", str(place_dataset), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_queries"] == 18


@pytest.mark.slow
def test_a_calibrated_checkpoint_is_a_kit_that_rebuilds_its_graphs(student_checkpoint, place_dataset, tmp_path):
    out = tmp_path / "kit"
    report = calibrate(CalibrationConfig(model=student_checkpoint, images=place_dataset, out=out, num=8, val=place_dataset, threads=1))
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["weights"], manifest["weights_sha256"]) == (str(student_checkpoint), sha256_file(student_checkpoint))
    assert manifest["export"] == KIT_EXPORT and manifest["method"] == "entropy" and manifest["model_sha256"] == sha256_file(out / FP32)
    # the TensorRT form (s8 symmetric Q/DQ) is run by ONNX Runtime on the CPU: its Recall@1 stands beside FP32's
    assert set(report.recall) == {"INT8 cpu", "INT8 trt", "FP16"} and set(report.recall["INT8 trt"]) == {"1", "5"} and report.recall_fp32
    assert report.quantization["trt"] == {"activation_dtypes": ["int8"], "zero_points_all_zero": True}
    assert "| INT8 trt |" in (out / "report.md").read_text()

    kit = tmp_path / "copied"  # the small files alone, as committed
    kit.mkdir()
    for name in (MANIFEST, RANGES, TRT_CACHE, REPORT):
        shutil.copy(out / name, kit / name)
    assert prepare_kit(kit) == kit
    graphs = (FP32, TRT_INT8, CPU_INT8, FP16)  # every graph rebuilt on the calibrating machine: byte for byte the calibrated one
    assert {n: sha256_file(kit / n) for n in graphs} == {n: report.sha256[n] for n in graphs}
    (kit / MANIFEST).write_text(json.dumps({**manifest, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelError, match="other weights"):
        prepare_kit(kit)


def test_the_tensorrt_form_runs_unfused_on_onnx_runtime_and_the_cpu_form_fused(calibration_dir):
    """ORT's fused int8 kernels saturate on x86 without VNNI; TensorRT's form is checked as written."""
    import onnxruntime as ort

    from structvpr_edge.runtime.ort_session import create_session, made_for_tensorrt

    levels = {name: create_session(calibration_dir / name, 1).get_session_options().graph_optimization_level for name in (TRT_INT8, CPU_INT8, FP16)}
    enable, disable = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert levels == {TRT_INT8: disable, CPU_INT8: enable, FP16: enable}
    assert not made_for_tensorrt({"structvpr.extra": "not json"}) and not made_for_tensorrt({"structvpr.extra": '{"precision": ["int8-trt"]}'})


def test_saved_ranges_do_not_depend_on_the_order_they_were_collected_in(calibration_dir, tmp_path):
    """ORT returns its ranges in a set's order, which changes with the hash seed: one calibration, one file."""
    ranges = q.load_ranges(calibration_dir / RANGES)
    names = list(ranges.keys())
    reordered = type(ranges)(ranges.calibration_method, {name: ranges[name] for name in reversed(names)})
    q.save_ranges(ranges, tmp_path / "a.json")
    q.save_ranges(reordered, tmp_path / "b.json")
    assert len(names) > 2 and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
