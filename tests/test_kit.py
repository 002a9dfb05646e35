"""Issue 26's INT8 kit: found from the package wherever it is installed, rebuilt on demand into
the graphs calibrated (into the user cache when the kit is read-only), TensorRT looked for before any work, both
INT8 forms gated by default. A wheel that carries it: tests/test_install.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnx
import onnx.numpy_helper

from structvpr_edge import EdgeVPR, cli
from structvpr_edge.artifacts import CPU_INT8, FP16, FP32, MANIFEST, RANGES, REPORT, TRT_CACHE, TRT_INT8, is_shipped_kit, shipped_kit
from structvpr_edge.cli import main
from structvpr_edge.deploy import calibration
from structvpr_edge.deploy import quantize as q
from structvpr_edge.deploy.calibration import CalibrationConfig, calibrate, prepare_kit
from structvpr_edge.errors import ConfigError, ModelError
from structvpr_edge.modelinfo import sha256_file
from tests.trt_standin import make_tensorrt

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = (FP32, TRT_INT8, CPU_INT8, FP16)


def run(args: list[str], cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_shipped_kit_is_found_from_the_package_not_the_working_directory(tmp_path):
    code = "from structvpr_edge.artifacts import shipped_kit; print(shipped_kit('structvprpp'))"
    done = run(["-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "calibration" / "structvprpp" == shipped_kit("structvprpp")
    assert is_shipped_kit(ROOT / "calibration" / "new") and not is_shipped_kit(tmp_path / "calibration" / "structvprpp")
    with pytest.raises(ConfigError, match="no calibration kit ships for 'baseline'"):
        shipped_kit("baseline")


@pytest.fixture(scope="module")
def checkpoint_kit(student_checkpoint, place_dataset, tmp_path_factory) -> tuple[Path, dict]:
    """A kit of the tiny student's checkpoint, and the sha256 its report records per graph."""
    out = tmp_path_factory.mktemp("kit") / "tiny"
    report = calibrate(CalibrationConfig(model=student_checkpoint, images=place_dataset, out=out, num=6, threads=1))
    return out, report.sha256


def small_files(kit: Path, into: Path) -> Path:
    """The kit's committed files alone, as a clone or a wheel has them."""
    into.mkdir()
    for name in (MANIFEST, RANGES, TRT_CACHE, REPORT):
        shutil.copy(kit / name, into / name)
    return into


def test_a_read_only_kit_is_rebuilt_in_the_user_cache(checkpoint_kit, tmp_path, monkeypatch):
    kit, recorded = checkpoint_kit
    installed = small_files(kit, tmp_path / "site-packages-kit")
    monkeypatch.setenv("STRUCTVPR_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration.os, "access", lambda path, mode: Path(path) != installed)  # root writes anywhere: say it cannot
    work = prepare_kit(installed)
    assert work.parent == tmp_path / "cache" / "kits" and sorted(p.name for p in installed.iterdir()) == sorted([MANIFEST, RANGES, TRT_CACHE, REPORT])
    assert {n: sha256_file(work / n) for n in GRAPHS} == {n: recorded[n] for n in GRAPHS}
    assert prepare_kit(installed) == work  # a second call finds them


def test_a_graph_that_rebuilds_to_another_structure_is_refused_naming_the_tools(checkpoint_kit, tmp_path):
    kit = small_files(checkpoint_kit[0], tmp_path / "kit")
    report = json.loads((kit / REPORT).read_text())
    report["graphs"][CPU_INT8]["structure"] = "0" * 64
    report["tools"]["onnxsim"] = "0.7.3"
    (kit / REPORT).write_text(json.dumps(report))
    here = calibration.tool_versions()["onnxsim"]
    with pytest.raises(ModelError, match=f"{CPU_INT8} rebuilt in .* is not the calibrated graph .*onnxsim 0.7.3 there, {here} here"):
        prepare_kit(kit)
    assert not (kit / CPU_INT8).exists() and not any(p.name.startswith(".") for p in kit.iterdir())


def test_a_graph_with_other_last_bits_is_the_calibrated_one_and_another_layout_is_not(checkpoint_kit, tmp_path):
    """Another CPU folds the same weights to other last bits: the shipped kit's model.onnx rebuilt on
    an AMD machine differed in its bytes from the Intel machine's that calibrated it, with the same
    packages. A kit knows its graphs by graph_identity; a graph laid out otherwise is refused."""
    kit = tmp_path / "kit"
    shutil.copytree(checkpoint_kit[0], kit)
    path = kit / CPU_INT8
    proto = onnx.load(str(path))
    weight = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.raw_data)
    weight.raw_data = bytes([weight.raw_data[0] ^ 1]) + weight.raw_data[1:]  # one bit, as a rebuild elsewhere
    q.stamp_precision(proto)  # the rebuild stamps the digest of its own weights
    onnx.save(proto, str(path))
    assert sha256_file(path) != checkpoint_kit[1][CPU_INT8]
    assert calibration.check_kit(kit) and EdgeVPR(path, threads=1).info.extra["precision"] == "int8-cpu"
    assert _int8_weights_follow_float_last_bits(kit) and calibration.check_kit(kit)  # CI's Xeon against the EPYC's kit
    proto.graph.node[0].name += "_renamed"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match=f"{CPU_INT8} is not the file"):
        calibration.check_kit(kit)


def _int8_weights_follow_float_last_bits(kit: Path) -> bool:
    """Requantizes the TensorRT form of ``kit`` from its FP32 graph with every float weight one step
    up; whether some INT8 weight came out other than the calibrated one (it does, as on another CPU)."""
    fp32 = onnx.load(str(kit / FP32))
    for tensor in fp32.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            values = onnx.numpy_helper.to_array(tensor)
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.nextafter(values, np.float32(np.inf)), tensor.name))
    onnx.save(fp32, str(kit / "nudged.onnx"))
    before = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(kit / TRT_INT8)).graph.initializer}
    report = json.loads((kit / REPORT).read_text())
    method = json.loads((kit / MANIFEST).read_text())["method"]
    q.quantize(kit / "nudged.onnx", kit / RANGES, kit / TRT_INT8, q.TRT_FORM, method, report["fp32_nodes"])
    (kit / "nudged.onnx").unlink()
    after = onnx.load(str(kit / TRT_INT8)).graph.initializer
    return any(t.data_type == onnx.TensorProto.INT8 and not np.array_equal(onnx.numpy_helper.to_array(t), before[t.name]) for t in after)


def test_export_writes_a_shipped_models_int8_graph_and_refuses_reshaping(checkpoint_kit, tmp_path, monkeypatch, capsys):
    kit, recorded = checkpoint_kit
    monkeypatch.setattr("structvpr_edge.artifacts.shipped_kit", lambda name: kit if name == "tiny" else shipped_kit(name))
    out = tmp_path / "models" / "tiny.int8.onnx"
    assert main(["export", "--model", "tiny", "--precision", "int8", "--out", str(out)]) == 0, capsys.readouterr().err
    assert sha256_file(out) == recorded[CPU_INT8]
    assert main(["export", "--model", "tiny", "--precision", "int8", "--out", str(out), "--size", "640x480"]) == 2
    assert "--size cannot change it" in capsys.readouterr().err


def test_build_engine_looks_for_tensorrt_before_writing_anything(checkpoint_kit, tmp_path, monkeypatch, capsys):
    kit = small_files(checkpoint_kit[0], tmp_path / "kit")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    args = ["build-engine", "--model", "structvprpp", "--calibration", str(kit), "--precision", "int8", "--out", str(tmp_path / "e.engine")]
    assert main(args) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert sorted(p.name for p in kit.iterdir()) == sorted([MANIFEST, RANGES, TRT_CACHE, REPORT])  # no graph written


def test_build_engine_model_is_a_model_not_a_kit_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10"))
    missing = tmp_path / "engines" / "x.onnx"
    assert main(["build-engine", "--model", str(missing), "--precision", "fp16", "--out", str(tmp_path / "e.engine")]) == 2
    err = capsys.readouterr().err
    assert f"ONNX model {missing} not found" in err and "calibration folder" not in err
    assert main(["build-engine", "--model", "runs/x/model.pt", "--precision", "fp16", "--out", str(tmp_path / "e.engine")]) == 2
    assert "export a checkpoint first" in capsys.readouterr().err


def test_the_gate_is_on_by_default_for_both_int8_forms(calibration_dir, student_onnx, place_dataset, tmp_path):
    """With a validation set the budget defaults and both forms' Recall@1 count; without one the
    mean cosine of both forms to FP32 must hold, else the kit is rejected with a clear error."""
    assert CalibrationConfig(model=Path("m.onnx"), images=tmp_path, out=tmp_path, val=tmp_path).max_recall_drop == calibration.DEFAULT_MAX_RECALL_DROP
    assert (cli.DEFAULT_MAX_RECALL_DROP, cli.DEFAULT_MIN_COSINE) == (calibration.DEFAULT_MAX_RECALL_DROP, calibration.DEFAULT_MIN_COSINE)
    report = json.loads((calibration_dir / REPORT).read_text())
    (step,) = report["gate"]
    assert set(step["recall_int8"]) == {"INT8 cpu", "INT8 trt"}
    assert step["drop_pp"]["1"] == pytest.approx(max(100 * (report["recall_fp32"]["1"] - r["1"]) for r in step["recall_int8"].values()))
    out = tmp_path / "strict"
    with pytest.raises(ModelError, match=r"mean cosine of 0\.\d+ to FP32 on the calibration images, below --min-cosine 1\.0"):
        calibrate(CalibrationConfig(model=student_onnx[0], images=place_dataset, out=out, num=4, min_cosine=1.0, threads=1))
    rejected = json.loads((tmp_path / "strict.rejected" / REPORT).read_text())
    assert not out.exists() and rejected["within_budget"] is False and rejected["min_cosine"] == 1.0
    assert rejected["gate"][0]["cosine_mean"] == pytest.approx(min(rejected["cosine"][f]["mean"] for f in ("INT8 cpu", "INT8 trt")), abs=0.05)


def test_calibrate_writes_into_a_shipped_kit_only_when_asked(student_onnx, tmp_path, capsys):
    before = {p.name: sha256_file(p) for p in shipped_kit("structvprpp").iterdir() if p.is_file()}
    args = ["calibrate", "--model", str(student_onnx[0]), "--dataset", str(tmp_path), "--out", str(shipped_kit("structvprpp"))]
    assert main(args) == 2
    assert "--overwrite-shipped" in capsys.readouterr().err
    assert {p.name: sha256_file(p) for p in shipped_kit("structvprpp").iterdir() if p.is_file()} == before


def test_engines_readme_gives_trtexec_the_shipped_models_input_shape():
    import re

    from structvpr_edge.models.checkpoint import load_checkpoint

    width, height = load_checkpoint("structvprpp")[1]["input"]["size"]
    shapes = re.findall(r"--(min|opt|max)Shapes=images:(\d+)x(\d+)x(\d+)x3", (ROOT / "engines" / "README.md").read_text())
    assert [s[0] for s in shapes] == ["min", "opt", "max"]
    assert all((int(h), int(w)) == (height, width) for _, _, h, w in shapes), (shapes, width, height)
