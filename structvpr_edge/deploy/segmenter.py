"""The shipped street segmenter (ESPNet) as an ONNX graph, and label maps from it.

``structvpr-edge labels`` runs it by default: the graph is exported from the shipped weights
into a temporary folder for each run (a few seconds; always the weights and code installed, no
cache to go stale) and run by ONNX Runtime through ``data.segmentation.segment_folder``, the
path a user's own ONNX segmenter takes. The graph holds the colour swap and the class decision,
so what comes out is the label PNG's content: Cityscapes train ids.

The decision, chosen on CamVid val (benchmarks/segmenter_iou.py): the logits are averaged with
those of the mirrored image, and the class is the best of the 19 Cityscapes classes, never the
20th "void" channel (Cityscapes' unlabelled pixels: ego vehicle, borders, unlisted stuff), which
on real street frames mostly wins where one of the 19 is right.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.segmentation import SegmentSummary, image_files, segment_folder
from ..errors import ConfigError, ModelError
from ..images import normalize
from ..modelinfo import sha256_file
from ..models.espnet import MEAN_RGB, STD_RGB, STRIDE, WEIGHTS, Decision, LabelGraph, load_espnet
from .export import simplify

# --segmenter name -> shipped weights, the default first: the Cityscapes weights tuned on CamVid train
# (`tune-segmenter`, chosen by issue 23's rules; research use only, as CamVid), and the authors' (MIT)
SEGMENTER_WEIGHTS = {"espnet-camvid": WEIGHTS.with_name("espnet-camvid.pth"), "espnet-cityscapes": WEIGHTS}
SEGMENTERS = tuple(SEGMENTER_WEIGHTS)
DEFAULT_WEIGHTS = SEGMENTER_WEIGHTS[SEGMENTERS[0]]
SIZE = (480, 360)  # network input (W, H), chosen on CamVid val (benchmarks/segmenter_iou.py)
PARITY_MAX_ABS_DIFF = 1e-3  # logits, ONNX Runtime against torch


@dataclass
class SegmenterExport:
    path: str
    opset: int
    simplifier: str
    parity_size: tuple[int, int]
    parity_max_abs_diff: float  # logits
    parity_ids_equal: float  # share of pixels with the same class id


def check_size(size: tuple[int, int]) -> None:
    if size[0] <= 0 or size[1] <= 0 or size[0] % STRIDE or size[1] % STRIDE:
        raise ConfigError(f"ESPNet needs an input size with both sides positive multiples of {STRIDE}, got {size[0]}x{size[1]}")


def export_segmenter(out: str | Path, weights: str | Path = DEFAULT_WEIGHTS, decision: Decision = Decision(), opset: int = 17,
                     parity_size: tuple[int, int] = (64, 48)) -> SegmenterExport:
    """ESPNet -> ONNX with dynamic batch and size (sides multiples of 8), simplified; input
    ``image``, outputs ``ids`` then ``logits``. Raises ModelError if ONNX Runtime's logits on
    random pixels of ``parity_size`` differ from torch's by more than PARITY_MAX_ABS_DIFF."""
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    check_size(parity_size)
    graph = LabelGraph(load_espnet(weights), decision).eval()
    width, height = parity_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    x = torch.from_numpy(normalize(pixels, MEAN_RGB, STD_RGB))  # what segment_folder feeds
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "ids": {0: "batch", 1: "height", 2: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"}}
    torch.onnx.export(graph, (x,), str(out), input_names=["image"], output_names=["ids", "logits"],
                      opset_version=opset, dynamic_axes=axes, dynamo=False)
    proto, tool = simplify(onnx.load(str(out)))
    onnx.save(proto, str(out))
    with torch.inference_mode():
        ids, logits = (t.numpy() for t in graph(x))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_ids, onnx_logits = session.run(["ids", "logits"], {"image": x.numpy()})
    diff = float(np.abs(onnx_logits - logits).max())
    if not diff <= PARITY_MAX_ABS_DIFF:
        raise ModelError(f"ESPNet ONNX parity failed: logits differ by {diff:.2e} > {PARITY_MAX_ABS_DIFF} ({out})")
    return SegmenterExport(str(out), opset, tool, parity_size, diff, float((onnx_ids == ids).mean()))


def label_folder(images_root: str | Path, out_root: str | Path, size: tuple[int, int] = SIZE, batch_size: int = 4,
                 overwrite: bool = False, weights: str | Path = DEFAULT_WEIGHTS, decision: Decision = Decision()) -> SegmentSummary:
    """Cityscapes-train-id label PNGs for every image under ``images_root`` from the shipped ESPNet
    at input ``size`` (W, H), written under ``out_root`` (kept as a cache, see segment_folder)."""
    check_size(size)
    image_files(Path(images_root), Path(out_root))  # a wrong folder fails before the export
    with tempfile.TemporaryDirectory(prefix="structvpr-edge-espnet-") as tmp:
        onnx_path = Path(export_segmenter(Path(tmp) / "espnet.onnx", weights, decision).path)
        labeller = {"espnet_weights_sha256": sha256_file(weights), "decision": decision.tag, "input_size": size}
        return segment_folder(Path(images_root), onnx_path, Path(out_root), "cityscapes", input_size=size, mean=MEAN_RGB,
                              std=STD_RGB, batch_size=batch_size, overwrite=overwrite, labeller=labeller)
