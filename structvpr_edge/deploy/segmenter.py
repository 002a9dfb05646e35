"""The shipped street segmenter (ESPNet, Cityscapes) as an ONNX graph, and label maps from it.

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
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.segmentation import SegmentSummary, image_files, segment_folder
from ..errors import ConfigError, ModelError
from ..images import normalize
from ..labels import CITYSCAPES_TO_GROUP, IGNORE, NUM_GROUPS
from ..models.espnet import IGNORE_CHANNEL, MEAN_BGR, STD_BGR, STRIDE, WEIGHTS, ESPNet, load_espnet
from .export import simplify

SEGMENTERS = ("espnet-cityscapes",)  # --segmenter names
SIZE = (480, 360)  # network input (W, H), chosen on CamVid val (benchmarks/segmenter_iou.py)
# segment_folder feeds RGB as (x / 255 - mean) / std; the authors' input is (bgr - MEAN_BGR) / STD_BGR / 255
# (their ToTensor divides by 255 after normalising), which is that with these values, channels swapped:
MEAN_RGB = (MEAN_BGR[2] / 255, MEAN_BGR[1] / 255, MEAN_BGR[0] / 255)
STD_RGB = (STD_BGR[2], STD_BGR[1], STD_BGR[0])
PARITY_MAX_ABS_DIFF = 1e-3  # logits, ONNX Runtime against torch


@dataclass(frozen=True)
class Decision:
    """How logits become class ids (the defaults are the shipped choice; the others are its ablations)."""

    mirror: bool = True  # average with the mirrored image's logits (twice the compute)
    void: bool = False  # let the 20th channel win, as IGNORE
    groups: bool = False  # the label group with the highest summed probability, then its best class

    def __post_init__(self) -> None:
        if self.groups and self.void:
            raise ConfigError("the group decision sums the 19 classes' probabilities: it cannot let void win")

    @property
    def tag(self) -> str:
        """Every field and its value, e.g. ``mirror=True void=False groups=False``: names a benchmark row."""
        return " ".join(f"{field.name}={getattr(self, field.name)}" for field in fields(self))


def group_membership() -> torch.Tensor:
    """(groups, 19) 0/1: which Cityscapes classes make up each label group (labels.CLASS_TO_GROUP)."""
    groups = torch.from_numpy(CITYSCAPES_TO_GROUP[:IGNORE_CHANNEL].astype(np.int64))
    return nn.functional.one_hot(groups, NUM_GROUPS).T.float()


class LabelGraph(nn.Module):
    """Normalised RGB (B, 3, H, W) -> (Cityscapes train ids (B, H, W) uint8, logits (B, 20, H, W))."""

    membership: torch.Tensor

    def __init__(self, net: ESPNet, decision: Decision = Decision()) -> None:
        super().__init__()
        self.net, self.decision = net, decision
        self.register_buffer("membership", group_membership(), persistent=False)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bgr = rgb.flip(1)  # the weights take BGR
        logits = self.net(bgr)
        if self.decision.mirror:
            logits = (logits + self.net(bgr.flip(3)).flip(3)) / 2
        if self.decision.groups:
            return self._best_group_class(logits[:, :IGNORE_CHANNEL]), logits
        if not self.decision.void:
            return logits[:, :IGNORE_CHANNEL].argmax(dim=1).to(torch.uint8), logits
        ids = logits.argmax(dim=1)
        return torch.where(ids == IGNORE_CHANNEL, IGNORE, ids).to(torch.uint8), logits

    def _best_group_class(self, logits: torch.Tensor) -> torch.Tensor:
        """The best class of the group whose classes hold the most probability (a 1x1 convolution of
        the softmax sums each group; the classes of the other groups are then pushed out of reach)."""
        group_probability = nn.functional.conv2d(logits.softmax(dim=1), self.membership[:, :, None, None])
        in_group = self.membership[group_probability.argmax(dim=1)].permute(0, 3, 1, 2)  # (B, 19, H, W)
        return (logits - 1e4 * (1 - in_group)).argmax(dim=1).to(torch.uint8)


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


def export_segmenter(out: str | Path, weights: str | Path = WEIGHTS, decision: Decision = Decision(), opset: int = 17,
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
                 overwrite: bool = False, weights: str | Path = WEIGHTS, decision: Decision = Decision()) -> SegmentSummary:
    """Cityscapes-train-id label PNGs for every image under ``images_root`` from the shipped ESPNet
    at input ``size`` (W, H), written under ``out_root`` (kept as a cache, see segment_folder)."""
    check_size(size)
    image_files(Path(images_root), Path(out_root))  # a wrong folder fails before the export
    with tempfile.TemporaryDirectory(prefix="structvpr-edge-espnet-") as tmp:
        onnx_path = Path(export_segmenter(Path(tmp) / "espnet-cityscapes.onnx", weights, decision).path)
        return segment_folder(Path(images_root), onnx_path, Path(out_root), "cityscapes", input_size=size,
                              mean=MEAN_RGB, std=STD_RGB, batch_size=batch_size, overwrite=overwrite)
