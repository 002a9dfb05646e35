"""Tune the street segmenter (ESPNet, from its Cityscapes weights) on real labelled street frames.

Why: what the SDK reads of a label map is its six label groups, and where a labelled street set
draws a group's border elsewhere than Cityscapes (CamVid's sign/symbol holds shop signs, which
Cityscapes calls building), only its labels can teach it. So the loss is on groups: softmax over
the 19 Cityscapes classes (the void channel left out, as the shipped decision leaves it out), a
group's probability the sum of its classes', the negative log of the labelled group's; void
pixels skipped. The classes inside a group keep Cityscapes' split, so the weights stay a
Cityscapes state dict: the exported graph, the label PNGs and every reader are unchanged.
BatchNorm keeps Cityscapes' statistics (a few hundred frames in batches of 8 would move them
by noise). The learning rate is constant, so the weights at step k are those of a k-step run.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.dataset import IMAGE_EXTENSIONS
from ..data.segmentation import label_path
from ..errors import ConfigError, DatasetError
from ..files import replace_whole
from ..eval.label_iou import counts_iou, group_counts
from ..images import normalize, read_label, read_rgb
from ..labels import IGNORE, NUM_GROUPS, check_class_ids, check_scheme, to_groups
from ..models.espnet import IGNORE_CHANNEL, MEAN_RGB, STD_RGB, STRIDE, WEIGHTS, Decision, LabelGraph, group_membership, load_espnet


@dataclass
class TuneConfig:
    steps: int = 800  # with lr 1e-4: the choice on CamVid (docs/history/2026-12-07-espnet-camvid-tuning.md)
    lr: float = 1e-4
    batch_size: int = 8
    crop: tuple[int, int] = (320, 240)  # (W, H) of the random crops
    scale: tuple[float, float] = (0.75, 1.5)  # frames are resized by a factor drawn from this range before cropping
    seed: int = 0
    grade_every: int = 200  # steps between gradings of the held-out frames

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grade_every < 1 or not self.lr > 0:
            raise ConfigError(f"steps, batch_size, grade_every and lr must be positive: {self}")
        if self.crop[0] % STRIDE or self.crop[1] % STRIDE or min(self.crop) <= 0:
            raise ConfigError(f"crop sides must be positive multiples of {STRIDE}, got {self.crop}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scale must be a range 0 < low <= high, got {self.scale}")


@dataclass
class Frames:
    """Real frames (N, H, W, 3) RGB uint8 and their group maps (N, H, W) uint8, one size."""

    rgb: np.ndarray
    groups: np.ndarray
    names: list[str]


def labelled_pairs(root: str | Path, split: str, sequences: tuple[str, ...] | None = None) -> list[tuple[Path, Path]]:
    """(image, label PNG) of ``ROOT/images/SPLIT/NAME.jpg`` (or .png) and ``ROOT/labels/SPLIT/NAME.png``, name
    order; with ``sequences``, only frames whose name starts with one of them (CamVid: ``SEQ_FRAME.jpg``)."""
    images_root, labels_root = Path(root) / "images" / split, Path(root) / "labels" / split
    images = sorted(p for p in images_root.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    images = [p for p in images if sequences is None or p.name.startswith(sequences)]
    if not images:
        raise DatasetError(f"no frames under {images_root}" + (f" of {sequences}" if sequences else ""))
    pairs = [(p, label_path(p, images_root, labels_root)) for p in images]
    missing = [str(label) for _, label in pairs if not label.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} frames have no label PNG, e.g. {missing[0]}")
    return pairs


def load_frames(pairs: list[tuple[Path, Path]], scheme: str) -> Frames:
    """Every frame and its label groups in memory; frames of another size than the first, or a label
    map of another size or with ids outside ``scheme``, are a DatasetError naming the file."""
    check_scheme(scheme)
    rgb, groups = [], []
    for image, label in tqdm(pairs, desc="frames", unit="frame", leave=False):
        pixels, classes = read_rgb(image, None), read_label(label, None)
        if rgb and pixels.shape != rgb[0].shape:
            raise DatasetError(f"{image} is {pixels.shape[1]}x{pixels.shape[0]}, {pairs[0][0]} {rgb[0].shape[1]}x{rgb[0].shape[0]}: frames of one size only")
        if classes.shape != pixels.shape[:2]:
            raise DatasetError(f"{label} is {classes.shape[1]}x{classes.shape[0]}, its frame {image} {pixels.shape[1]}x{pixels.shape[0]}")
        check_class_ids(classes, scheme, str(label))
        rgb.append(pixels)
        groups.append(to_groups(classes, scheme))
    return Frames(np.stack(rgb), np.stack(groups), [image.name for image, _ in pairs])


def group_nll(logits: torch.Tensor, groups: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Mean negative log probability of each pixel's labelled group (IGNORE skipped); ``logits`` (B, 20+, H, W),
    ``membership`` (groups, 19) 0/1 as ``models.espnet.group_membership``."""
    log_classes = logits[:, :IGNORE_CHANNEL].log_softmax(dim=1)
    log_groups = torch.stack([log_classes[:, row.bool()].logsumexp(dim=1) for row in membership], dim=1)
    return nn.functional.nll_loss(log_groups, groups.long(), ignore_index=IGNORE)


def random_batch(frames: Frames, config: TuneConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised RGB (B, 3, h, w) and groups (B, h, w): frames scaled, cropped and mirrored at random."""
    width, height = config.crop
    rgb, groups = [], []
    for index in rng.integers(0, len(frames.rgb), config.batch_size):
        factor = max(rng.uniform(*config.scale), width / frames.rgb.shape[2], height / frames.rgb.shape[1])
        size = (round(frames.rgb.shape[2] * factor), round(frames.rgb.shape[1] * factor))
        image = cv2.resize(frames.rgb[index], size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(frames.groups[index], size, interpolation=cv2.INTER_NEAREST)
        x, y = rng.integers(0, size[0] - width + 1), rng.integers(0, size[1] - height + 1)
        image, label = image[y:y + height, x:x + width], label[y:y + height, x:x + width]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        rgb.append(image)
        groups.append(label)
    return torch.from_numpy(normalize(np.stack(rgb), MEAN_RGB, STD_RGB)).flip(1), torch.from_numpy(np.stack(groups))


@torch.inference_mode()
def grade(net: nn.Module, frames: Frames) -> dict[str, float]:
    """Per-group IoU and their mean (``mean``) of the shipped decision on ``frames`` at their own size,
    intersections and unions summed over frames, as ``eval.label_iou.folder_iou`` grades a folder."""
    height, width = frames.rgb.shape[1:3]
    if width % STRIDE or height % STRIDE:
        raise ConfigError(f"held-out frames must have sides that are multiples of {STRIDE}, got {width}x{height}")
    graph = LabelGraph(net, Decision()).eval()
    inter, union = np.zeros(NUM_GROUPS, np.int64), np.zeros(NUM_GROUPS, np.int64)
    for rgb, truth in zip(frames.rgb, frames.groups):
        ids = graph(torch.from_numpy(normalize(rgb[None], MEAN_RGB, STD_RGB)))[0][0].numpy()
        i, u = group_counts(to_groups(ids, "cityscapes"), truth)
        inter, union = inter + i, union + u
    result = counts_iou(inter, union, len(frames.rgb))
    return {**{group: iou for group, iou in result.iou.items() if not np.isnan(iou)}, "mean": result.mean}


def tune_segmenter(train: Frames, out: str | Path, config: TuneConfig = TuneConfig(), held_out: Frames | None = None,
                   weights: str | Path = WEIGHTS) -> list[dict]:
    """Tune ``weights`` on ``train`` and save the state dict to ``out`` (written whole at the end); with
    ``held_out``, grade it before training and every ``grade_every`` steps. Returns the log (also
    ``out`` + ``.log.jsonl``): step, loss and, where graded, the held-out IoU."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = load_espnet(weights)
    membership = group_membership()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    log = [{"step": 0, "held_out": grade(net, held_out)}] if held_out else []
    for step in tqdm(range(1, config.steps + 1), desc="tune segmenter", unit="step"):
        net.train()
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        rgb, groups = random_batch(train, config, rng)
        loss = group_nll(net(rgb), groups, membership)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        entry: dict = {"step": step, "loss": loss.item()}
        if held_out and (step % config.grade_every == 0 or step == config.steps):
            entry["held_out"] = grade(net, held_out)
        log.append(entry)
    out = Path(out)
    replace_whole(out, lambda tmp: torch.save(net.state_dict(), tmp))
    text = "".join(json.dumps(entry) + "\n" for entry in [{"config": asdict(config)}] + log)
    replace_whole(out.with_name(out.name + ".log.jsonl"), lambda tmp: tmp.write_text(text))
    return log
