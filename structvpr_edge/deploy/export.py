"""Export a trained student to ONNX, simplify it, stamp its metadata and prove parity.

The graph holds everything between pixels and the L2-normalised descriptor: with
``uint8_input`` also the layout change, the colour swap and the normalisation (both folded into
the first conv's weights), so the runtime only resizes a camera frame into a preallocated buffer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..files import check_not_an_input, replace_whole
from ..images import normalize, resize_area
from ..modelinfo import ModelInfo, graph_digest, model_info, stamp_info
from ..models.checkpoint import load_checkpoint, resolve_checkpoint, weights_fingerprint
from ..models.efficientnet_lite import same_pads
from ..runtime.preprocess import Preprocessor, read_image

PARITY_MIN_COSINE = 0.99999
CENTRE = 128.0  # subtracted from uint8 pixels before the folded first conv


class FoldedStem(nn.Module):
    """The backbone's first conv and its frozen BatchNorm with the pixel normalisation and the
    BGR-to-RGB swap folded in: raw 0..255 BGR pixels in, the same activations out.

    It takes the pixels minus ``CENTRE`` (a scalar: the symmetric int8 of the TensorRT form then
    spends all its codes on the pixels, not half of them on negatives that never occur).
    conv(W, pad0(x s - o)) is conv(W s, x') + b with x' the centred pixels framed by one row and
    column of the neutral value 255 mean - CENTRE (whose normalised value is the zero of the
    padding) and b a per-channel bias: exact for any mean and std, and the graph has no Slice or
    per-channel Sub/Mul on the image, which ORT's INT8 layout pass otherwise broadcasts over a
    3-wide axis (docs/RESULTS.md, issue 13). The first conv then quantizes into one QLinearConv.
    """

    neutral: torch.Tensor  # a buffer: the padding value, the normalised zero

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.same_padding = getattr(conv, "same_padding", False)
        if conv.kernel_size != (3, 3) or conv.padding != ((0, 0) if self.same_padding else (1, 1)):
            raise ModelError(f"the input folding expects the 3x3 stem padded 1 or as TensorFlow does, got {conv.kernel_size} padding {conv.padding}")
        running_mean, running_var = bn.running_mean, bn.running_var
        if running_mean is None or running_var is None:
            raise ModelError("the input folding needs the stem BatchNorm's running statistics")
        bn_scale = bn.weight / torch.sqrt(running_var + bn.eps)
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        weight = conv.weight * bn_scale[:, None, None, None] / (255 * std_t)[None, :, None, None]
        neutral = 255 * mean_t - CENTRE
        bias = bn.bias - running_mean * bn_scale - (weight * neutral[None, :, None, None]).sum(dim=(1, 2, 3))
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 0, bias=True)  # type: ignore[arg-type]  # the stem's own 2-d stride
        self.conv.weight.data, self.conv.bias.data = weight.flip(1), bias  # type: ignore[union-attr]  # BGR pixels in; bias=True
        self.register_buffer("neutral", neutral.flip(0).view(1, 3, 1, 1))

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        """``bgr``: (B, 3, H, W) pixels minus CENTRE."""
        batch, _, height, width = bgr.shape
        # Pads as Python ints (a static frame size): constants in the graph, not shape arithmetic.
        (top, bottom), (left, right) = (same_pads(int(height), 3, 2), same_pads(int(width), 3, 2)) if self.same_padding else ((1, 1), (1, 1))
        # One band per width, reused on both sides: the symmetric case stays the graph the shipped kit was calibrated on.
        rows = {n: self.neutral.expand(batch, 3, n, width) for n in (top, bottom) if n}
        framed = torch.cat(([rows[top]] if top else []) + [bgr] + ([rows[bottom]] if bottom else []), dim=2)
        columns = {n: self.neutral.expand(batch, 3, height + (top + bottom), n) for n in (left, right) if n}
        return self.conv(torch.cat(([columns[left]] if left else []) + [framed] + ([columns[right]] if right else []), dim=3))


class Uint8Input(nn.Module):
    """(B, H, W, 3) uint8 BGR in, the model's descriptor out: only a Transpose, a Cast and one
    scalar Sub stand before the first conv, which does the normalisation (:class:`FoldedStem`)."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        backbone: Any = self.model.backbone  # EfficientNet-Lite0's, with _conv_stem and _bn0
        backbone._conv_stem = FoldedStem(backbone._conv_stem, backbone._bn0, mean, std)
        backbone._bn0 = nn.Identity()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2).float() - CENTRE)


def reference_descriptor(model: nn.Module, info: ModelInfo, x: np.ndarray) -> np.ndarray:
    """What the trained model computes for one model-ready input: the unfolded path, normalised
    as in training (a uint8 input is BGR)."""
    if info.uint8_input:
        x = normalize(x, info.mean, info.std, channels=(2, 1, 0))
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def simplify(model_proto):
    """onnxsim where installed, else onnxslim (no onnxsim wheel on some Jetson setups)."""
    try:
        import onnxsim  # noqa: PLC0415

        simplified, ok = onnxsim.simplify(model_proto)
        if ok:
            return simplified, "onnxsim"
    except ImportError:
        pass
    try:
        import onnxslim  # noqa: PLC0415

        return onnxslim.slim(model_proto), "onnxslim"
    except ImportError:
        return model_proto, "none"


@dataclass
class ExportReport:
    path: str
    input_shape: list
    simplifier: str
    parity_min_cosine: float
    parity_max_abs_diff: float
    parity_images: int


def read_parity_images(paths: list[Path], limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` real BGR frames (spread over the list) for the parity check."""
    step = max(1, len(paths) // limit)
    return [read_image(p) for p in paths[::step][:limit]]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    width: int | None = None,
    height: int | None = None,
    batch: str = "1",
    opset: int = 17,
    uint8_input: bool = False,
    parity_images: list[np.ndarray] | None = None,
    trust_checkpoint: bool = False,
) -> ExportReport:
    """Checkpoint -> simplified ONNX with metadata; raises ModelError if parity fails.
    ``trust_checkpoint``: also open a checkpoint that needs code to load (models/checkpoint.py).
    The file is written aside and moved over ``out`` only once parity holds: a kill or a failed
    check leaves the previous ``out`` as it was."""
    if batch not in ("1", "dynamic"):
        raise ConfigError(f"batch must be 1 or dynamic, got {batch!r}")
    check_not_an_input(out, [resolve_checkpoint(checkpoint)])
    model, meta = load_checkpoint(checkpoint, trust_checkpoint)
    size = meta["input"]["size"] if meta["input"]["kind"] == "rgb" else (0, 0)
    width, height = width or size[0], height or size[1]
    if width <= 0 or height <= 0 or width % 16 or height % 8:
        raise ConfigError(f"input size must be positive, width a multiple of 16 and height of 8; got {width}x{height}")
    info = model_info(meta, width, height, uint8_input, weights_fingerprint(model))
    net = Uint8Input(model.eval(), info.mean, info.std).eval() if uint8_input else model.eval()
    pixels = np.random.default_rng(0).integers(0, 256, (1, info.height, info.width, 3), dtype=np.uint8)
    dummy = torch.from_numpy(Preprocessor(info, max_batch=1)(list(pixels)))
    dynamic_axes = {info.input_name: {0: "batch"}, info.output_name: {0: "batch"}} if batch == "dynamic" else None
    out = Path(out)
    done: dict = {}

    def write(tmp: Path) -> None:
        import onnx  # noqa: PLC0415

        torch.onnx.export(
            net, (dummy,), str(tmp), input_names=[info.input_name], output_names=[info.output_name],
            opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
        )
        proto, done["tool"] = simplify(onnx.load(str(tmp)))
        stamp_info(proto, replace(info, graph_sha256=graph_digest(proto.SerializeToString())))
        onnx.save(proto, str(tmp))
        done["parity"] = check_parity(model, tmp, info, parity_images or [])

    replace_whole(out, write)
    return ExportReport(str(out), list(dummy.shape), done["tool"], *done["parity"])


def check_parity(model: nn.Module, onnx_path: Path, info: ModelInfo, images: list[np.ndarray]) -> tuple[float, float, int]:
    """Descriptors of the trained torch model (unfolded) and of ONNX Runtime on random frames
    plus ``images`` (BGR, any size): proves the export and the input folding exact."""
    import onnxruntime as ort  # noqa: PLC0415

    rng = np.random.default_rng(1)
    frames: list[np.ndarray] = [rng.integers(0, 256, (info.height, info.width, 3), dtype=np.uint8) for _ in range(4)]
    frames += [resize_area(im, (info.width, info.height)) for im in images]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    preprocess = Preprocessor(info)
    cosines, diffs = [], []
    for frame in frames:
        x = preprocess([frame])
        reference = reference_descriptor(model, info, x)
        result = session.run([info.output_name], {info.input_name: x})[0]
        cosines.append(float((reference * result).sum() / (np.linalg.norm(reference) * np.linalg.norm(result))))
        diffs.append(float(np.abs(reference - result).max()))
    if min(cosines) < PARITY_MIN_COSINE:
        raise ModelError(f"ONNX parity failed: min cosine {min(cosines):.7f} < {PARITY_MIN_COSINE} ({onnx_path})")
    return min(cosines), max(diffs), len(frames)
