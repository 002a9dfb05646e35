"""ONNX export: parity figures, metadata round trip, uint8 folding, the CLI, and `eval` on an ONNX file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from structvpr_edge.cli import main
from structvpr_edge.errors import ModelError
from structvpr_edge.deploy.export import PARITY_MIN_COSINE, export_onnx
from structvpr_edge.modelinfo import read_onnx_info, sha256_file
from structvpr_edge.runtime.preprocess import Preprocessor
from structvpr_edge.models.checkpoint import load_checkpoint
from structvpr_edge.models.student import StudentConfig
from tests.conftest import STUDENT_SIZE as SIZE


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def test_parity_report_values(student_onnx):
    path, report = student_onnx
    assert report.path == str(path) and report.input_shape == [1, 3, SIZE[1], SIZE[0]]
    assert PARITY_MIN_COSINE <= report.parity_min_cosine <= 1 + 1e-6
    assert 0 <= report.parity_max_abs_diff < 1e-4
    assert report.parity_images == 4  # random frames only
    assert report.simplifier in ("onnxsim", "onnxslim")


def test_metadata_round_trip(student_onnx, student_checkpoint):
    path, _ = student_onnx
    info = read_onnx_info(path)
    _, meta = load_checkpoint(student_checkpoint)
    assert (info.width, info.height, info.uint8_input, info.colour) == (*SIZE, False, "RGB")
    assert info.mean == tuple(meta["input"]["mean"]) and info.std == tuple(meta["input"]["std"])
    assert info.layout.to_dict() == meta["layout"] and info.label_groups == tuple(meta["label_groups"])
    assert info.checkpoint_sha256 == sha256_file(student_checkpoint)
    assert _run(path, Preprocessor(info, max_batch=3)([np.zeros((*SIZE[::-1], 3), np.uint8)] * 3)).shape == (3, info.layout.dim)


def test_uint8_input_equals_float_input(student_onnx, student_checkpoint, tmp_path):
    float_path, _ = student_onnx
    u8_path = tmp_path / "u8.onnx"
    report = export_onnx(student_checkpoint, u8_path, uint8_input=True)
    assert report.input_shape == [1, SIZE[1], SIZE[0], 3]
    float_info, u8_info = read_onnx_info(float_path), read_onnx_info(u8_path)
    assert u8_info.uint8_input and u8_info.colour == "BGR"
    frames = np.random.default_rng(3).integers(0, 256, (2, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    for frame in frames:
        a = _run(float_path, Preprocessor(float_info)([frame]))
        b = _run(u8_path, Preprocessor(u8_info)([frame]))
        assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("same_padding", [False, True])
def test_folded_stem_equals_normalise_then_conv_bn_on_every_pixel(same_padding):
    """Any mean/std (ImageNet's, per channel), trained BN statistics, borders included, under either padding."""
    from structvpr_edge.deploy.export import CENTRE, FoldedStem
    from structvpr_edge.models.efficientnet_lite import StridedConv

    torch.manual_seed(1)
    conv, bn = StridedConv(3, 8, 3, same_padding), torch.nn.BatchNorm2d(8, eps=1e-3)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    bn.eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for height, width in ((12, 10), (11, 9)):  # odd sizes read the bottom and right padding too
        bgr = torch.randint(0, 256, (2, 3, height, width)).float()
        normalised = (bgr.flip(1) / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            expected, got = bn(conv(normalised)), FoldedStem(conv, bn, mean, std)(bgr - CENTRE)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
    with pytest.raises(ModelError, match="padded 1 or as TensorFlow does"):
        FoldedStem(torch.nn.Conv2d(3, 8, 3, 2, padding=0), bn, mean, std)



def test_a_student_padded_as_tensorflow_exports_with_parity(tmp_path):
    """The uint8 graph frames the pixels as the stem pads them (0 before, 1 after on an even side)."""
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "same.pt", StructVPRStudent(StudentConfig(imagenet=False, same_padding=True)).eval(), SIZE, {})
    model, _ = load_checkpoint(checkpoint)
    assert model.backbone.same_padding  # the checkpoint records it
    float_report = export_onnx(checkpoint, tmp_path / "f.onnx")
    u8_report = export_onnx(checkpoint, tmp_path / "u8.onnx", uint8_input=True)
    assert min(float_report.parity_min_cosine, u8_report.parity_min_cosine) >= PARITY_MIN_COSINE
    assert u8_report.parity_max_abs_diff < 1e-4

def test_uint8_graph_has_no_pixel_arithmetic_before_the_first_conv(student_checkpoint, tmp_path):
    import onnx

    path = tmp_path / "u8.onnx"
    export_onnx(student_checkpoint, path, uint8_input=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Constant"]
    assert set(ops[: ops.index("Conv")]) <= {"Transpose", "Cast", "Sub", "Concat", "Expand"}, ops[:6]


@pytest.mark.slow
def test_export_cli_prints_parity_and_trt_check(student_checkpoint, place_dataset, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(student_checkpoint), "--out", str(out), "--parity-images", str(place_dataset / "images" / "test")]) == 0
    printed = capsys.readouterr().out
    assert "min cosine" in printed and "max abs diff" in printed and "TensorRT check passed" in printed
    assert "parity over 20 frames" in printed  # 4 random + 16 real images


def test_export_cli_rejects_bad_size(student_checkpoint, tmp_path, capsys):
    assert main(["export", "--model", str(student_checkpoint), "--out", str(tmp_path / "x.onnx"), "--width", "50"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


def test_eval_cli_on_onnx_matches_checkpoint(student_onnx, student_checkpoint, place_dataset, tmp_path):
    path, _ = student_onnx
    reports = {}
    for name, model in (("onnx", path), ("pt", student_checkpoint)):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--model", str(model), "--dataset", str(place_dataset), "--split", "test", "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["onnx"]["num_queries"] == 18 and set(reports["onnx"]["recall"]) == {"1", "5", "10", "20"}
    assert reports["onnx"]["recall"] == reports["pt"]["recall"]


def test_onnx_runtime_path_imports_without_torch(student_onnx):
    """The deployed-model code must run on a device without torch."""
    path, _ = student_onnx
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
import structvpr_edge.trt_compat, structvpr_edge.runtime.ort_session, structvpr_edge.deploy.engine
import structvpr_edge.deploy.trt_check, structvpr_edge.deploy.calibration, structvpr_edge.deploy.quantize, structvpr_edge.deploy.trt_calibrator
from structvpr_edge.eval.models import load_extractor
extractor = load_extractor({str(path)!r})
print(extractor(np.zeros((3, {SIZE[1]}, {SIZE[0]}, 3), np.uint8)).shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"(3, {StudentConfig().global_dim + 6 * StudentConfig().group_dim})"
