"""Export a trained student to ONNX, simplify it, stamp its metadata and prove parity.

The graph holds everything between pixels and the L2-normalised descriptor: with
``uint8_input`` also the colour swap, layout change and ``(x/255 - mean)/std``, so the runtime
only resizes a camera frame into a preallocated buffer.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, ModelError
from ..layout import DescriptorLayout
from ..modelinfo import ModelInfo, sha256_file
from ..models.checkpoint import load_checkpoint, resolve_checkpoint
from ..runtime.preprocess import Preprocessor

PARITY_MIN_COSINE = 0.99999


class Uint8Input(nn.Module):
    """(B, H, W, 3) uint8 in BGR -> the model's normalised (B, 3, H, W) RGB input, inside the graph."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        scale = torch.tensor(std, dtype=torch.float32) * 255
        self.register_buffer("offset", (torch.tensor(mean, dtype=torch.float32) * 255 / scale).view(1, 3, 1, 1))
        self.register_buffer("scale", (1 / scale).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = pixels.flip(-1).permute(0, 3, 1, 2).float()
        return self.model(rgb * self.scale - self.offset)


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_parity_images(paths: list[Path], limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` real BGR frames (spread over the list) for the parity check."""
    import cv2  # noqa: PLC0415

    step = max(1, len(paths) // limit)
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths[::step][:limit]]
    return [im for im in images if im is not None]


def model_info(meta: dict, width: int, height: int, uint8_input: bool, checkpoint_sha: str) -> ModelInfo:
    spec = meta["input"]
    if spec["kind"] != "rgb":
        raise ModelError(f"only RGB students are deployed; {meta['path']} is a {meta['model_type']}")
    return ModelInfo(
        width, height, uint8_input, colour="BGR" if uint8_input else "RGB", mean=tuple(spec["mean"]), std=tuple(spec["std"]),
        layout=DescriptorLayout.from_dict(meta["layout"]), label_groups=tuple(meta["label_groups"]), model_type=meta["model_type"],
        model_version=meta.get("version", __version__), checkpoint_sha256=checkpoint_sha,
    )


def example_input(info: ModelInfo, batch: int, rng: np.random.Generator) -> np.ndarray:
    return Preprocessor(info, max_batch=batch)(list(rng.integers(0, 256, (batch, info.height, info.width, 3), dtype=np.uint8)))


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    width: int | None = None,
    height: int | None = None,
    batch: str = "1",
    opset: int = 17,
    uint8_input: bool = False,
    parity_images: list[np.ndarray] | None = None,
) -> ExportReport:
    """Checkpoint -> simplified ONNX with metadata; raises ModelError if parity fails."""
    import onnx  # noqa: PLC0415

    if batch not in ("1", "dynamic"):
        raise ConfigError(f"batch must be 1 or dynamic, got {batch!r}")
    model, meta = load_checkpoint(checkpoint)
    size = meta["input"]["size"] if meta["input"]["kind"] == "rgb" else (0, 0)
    width, height = width or size[0], height or size[1]
    if width <= 0 or height <= 0 or width % 16 or height % 8:
        raise ConfigError(f"input size must be positive, width a multiple of 16 and height of 8; got {width}x{height}")
    info = model_info(meta, width, height, uint8_input, sha256_file(resolve_checkpoint(checkpoint)))
    net = Uint8Input(model, info.mean, info.std).eval() if uint8_input else model
    rng = np.random.default_rng(0)
    dummy = torch.from_numpy(example_input(info, 1, rng))
    dynamic_axes = {info.input_name: {0: "batch"}, info.output_name: {0: "batch"}} if batch == "dynamic" else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net, (dummy,), str(out), input_names=[info.input_name], output_names=[info.output_name],
        opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
    )
    proto, tool = simplify(onnx.load(str(out)))
    for key, value in info.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    cosine, diff, count = check_parity(net, out, info, parity_images or [], batch)
    return ExportReport(str(out), list(dummy.shape), tool, cosine, diff, count)


def check_parity(net: nn.Module, onnx_path: Path, info: ModelInfo, images: list[np.ndarray], batch: str) -> tuple[float, float, int]:
    """Descriptors of torch and ONNX Runtime on random frames plus ``images`` (BGR, any size)."""
    import cv2  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (info.height, info.width, 3), dtype=np.uint8) for _ in range(4)]
    frames += [cv2.resize(im, (info.width, info.height), interpolation=cv2.INTER_AREA) for im in images]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    preprocess = Preprocessor(info)
    cosines, diffs = [], []
    for frame in frames:
        x = preprocess([frame])
        with torch.inference_mode():
            reference = net(torch.from_numpy(x)).numpy()
        result = session.run([info.output_name], {info.input_name: x})[0]
        cosines.append(float((reference * result).sum() / (np.linalg.norm(reference) * np.linalg.norm(result))))
        diffs.append(float(np.abs(reference - result).max()))
    if min(cosines) < PARITY_MIN_COSINE:
        raise ModelError(f"ONNX parity failed: min cosine {min(cosines):.7f} < {PARITY_MIN_COSINE} ({onnx_path})")
    return min(cosines), max(diffs), len(frames)
