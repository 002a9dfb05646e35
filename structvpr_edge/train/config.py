"""Training configuration: dataclass defaults, merged with a user's YAML or a checkpoint's stored
config (unknown keys are errors; an older form is converted, with an :class:`OldConfigWarning`)."""
from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..artifacts import CHECKPOINT_SUFFIX
from ..errors import ConfigError
from ..models.checkpoint import load_checkpoint
from ..models.efficientnet_lite import check_blend_share, trunk_hw
from ..models.global_student import GlobalStudentConfig
from ..models.student import StudentConfig
from ..models.teacher import TeacherConfig
from .losses import MultiSimilarityConfig
from .weights import SampleWeightConfig

MODES = ("teacher", "baseline", "structvpr", "structvpr++")
# 2: distill.weight multiplies the plain KL (version 1 multiplied tau^2 KL), the teacher has its
# own switch (distill.enabled; version 1 used weight 0), global_student.feature_hw is derived.
CONFIG_VERSION = 2


class OldConfigWarning(FutureWarning):
    """A config of an older version was converted on reading (a FutureWarning: shown by default)."""


@dataclass(frozen=True)
class Recipe:
    """What one training stage builds and which losses it uses: the one place mode strings are read."""

    model_type: str  # teacher | global | structvpr++
    rgb: bool  # trains on RGB images (from cached frozen-backbone features); else on label maps
    labels: bool  # needs label-group fractions (teacher input, mask loss or the teacher of distillation)
    mask_loss: bool
    distill: bool


def recipe(mode: str, teacher: bool) -> Recipe:
    """``teacher`` (``distill.enabled``) False: a distilling mode loads no teacher (the ``student-nokd`` row)."""
    distill = mode in ("structvpr", "structvpr++") and teacher
    if mode == "teacher":
        return Recipe("teacher", rgb=False, labels=True, mask_loss=False, distill=False)
    if mode == "structvpr++":
        return Recipe("structvpr++", rgb=True, labels=True, mask_loss=True, distill=distill)
    return Recipe("global", rgb=True, labels=distill, mask_loss=False, distill=distill)


def _is_share(value: object, one_included: bool = False) -> bool:
    """A share of the steps, a number in [0, 1), or with ``one_included`` a probability in [0, 1]
    (a bool is neither)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (0 <= value < 1 or (one_included and value == 1))


@dataclass
class OptimConfig:
    steps: int = 3000
    places_per_batch: int = 16
    images_per_place: int = 4
    lr: float = 1e-3  # heads
    backbone_lr: float = 2e-4  # trainable backbone blocks
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    loss: str = "multi_similarity"  # multi_similarity | triplet
    multi_similarity: MultiSimilarityConfig = field(default_factory=MultiSimilarityConfig)
    triplet_margin: float = 0.1
    time_budget_min: float | None = None  # stop early once training has run this long
    average_from: float | None = None  # the model saved is the mean of the weights after every step from this share of steps on (SWA)
    heads_first: float = 0.0  # share of the steps the heads train alone, the backbone's rate 0 (LP-FT); 0: all from the start
    log_every: int = 20
    val_every: int = 250
    checkpoint_every: int = 500

    def validate(self, where: str) -> None:
        """``where``: the section's name (optim or teacher_optim). A batch of one place has no
        negatives: both metric losses are 0, so nothing is learnt."""
        if self.places_per_batch < 2:
            raise ConfigError(f"{where}.places_per_batch must be >= 2: a batch needs other places as negatives, got {self.places_per_batch}")
        if self.images_per_place < 2:
            raise ConfigError(f"{where}.images_per_place must be >= 2: a place needs a positive pair, got {self.images_per_place}")
        if self.average_from is not None and not _is_share(self.average_from):
            raise ConfigError(f"{where}.average_from is a share of the steps, in [0, 1), or null for the last step's weights; got {self.average_from}")
        if not _is_share(self.heads_first):
            raise ConfigError(f"{where}.heads_first is a share of the steps, in [0, 1); got {self.heads_first}")


@dataclass
class DistillConfig:
    """Every option and what it did on val: docs/method.md, Training (0 = off for each extra weight)."""

    enabled: bool = True  # False: no teacher in the distilling modes (the student-nokd row)
    weight: float = 1.0  # the relational KD, a plain KL (100 tau^2 in config version 1)
    temperature: float = 0.1
    per_group: bool = True  # also match each label group's similarity structure (the "label split")
    group_weight: float = 1.0
    feature_weight: float = 0.0  # cosine of projected sub-descriptors to the teacher's
    similarity_weight: float = 0.0  # squared error of the aligned similarities
    negative_weight: float = 0.0  # teacher-ranked hard negatives, teacher's margin
    warmup_steps: int = 0  # the whole KD term rises linearly from 0 over these steps
    real_weight: float = 1.0  # every distillation term's weight on the anchors that are real frames
    samples: SampleWeightConfig = field(default_factory=SampleWeightConfig)

    def validate(self, distils: bool) -> None:
        """``distils``: the mode loads the teacher, so some term must use it."""
        if self.samples.memory_batches < 0:
            raise ConfigError(f"distill.samples.memory_batches must be >= 0, got {self.samples.memory_batches}")
        if self.warmup_steps < 0:
            raise ConfigError(f"distill.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.real_weight >= 0:
            raise ConfigError(f"distill.real_weight must be >= 0, got {self.real_weight}")
        extra = (self.feature_weight, self.similarity_weight, self.negative_weight)
        if not all(w >= 0 for w in extra):
            raise ConfigError(f"distill.feature_weight, similarity_weight and negative_weight must be >= 0, got {extra}")
        if not self.weight >= 0 or not self.temperature > 0:
            raise ConfigError(f"distill.weight must be >= 0 and distill.temperature > 0, got {self.weight}, {self.temperature}")
        if distils and not any(w > 0 for w in (self.weight, *extra)):
            raise ConfigError("the teacher is on but every distillation weight is 0: set distill.enabled=false to train without it")


@dataclass
class RealConfig:
    """Real labelled street frames beside the place dataset (``data/real_frames.py``): real pixels
    for every loss, real label maps for the mask head and the teacher. ``root`` None: off."""

    root: str | None = None  # e.g. ../shared/data/camvid
    split: str = "train"
    scheme: str = "camvid"  # class ids of the label maps: camvid | cityscapes | ade20k
    labels_root: str | None = None  # label maps of another origin (a segmenter's) instead of ROOT/labels
    places_per_batch: int = 4  # of optim.places_per_batch: the weight of the real frames in every batch
    window: int = 2  # consecutive labelled frames of a sequence that count as one place
    views: int = 4  # photometric + crop views written per place
    relight: bool = True  # the views' random light; false: crops of the frames as filmed
    speed_mps: float = 8.0  # no GPS: windows are placed along their sequence at this assumed speed (neighbour_m)


@dataclass
class TrainConfig:
    config_version: int = CONFIG_VERSION
    mode: str = "structvpr++"
    dataset: str = "data/synthcity-bench"
    val_split: str = "val"
    image_size: tuple[int, int] = (160, 120)  # (W, H) of the RGB student input
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cache_dir: str = "runs/cache"
    teacher_checkpoint: str | None = None  # for structvpr / structvpr++ when the teacher stage is skipped
    mask_loss_weight: float = 0.5
    mask_loss_decay: bool = False  # fall linearly to 0 by the last step: masks start semantic, end free
    # Issue 23's options, each 0 = off (docs/method.md, Training).
    preserve_weight: float = 0.0  # feature preservation: the trained backbone's output kept near ImageNet's
    photometric: float = 0.0  # the share of training images cached under a random light
    imagenet_blend: float = 0.0  # the share of the way back to ImageNet the backbone moves after the last step
    neighbour_m: float = 0.0  # places closer than this are neither positives nor negatives of each other
    mixstyle: float = 0.0  # the chance, per batch and trainable backbone block, that images swap feature statistics (MixStyle)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    global_student: GlobalStudentConfig = field(default_factory=GlobalStudentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher_optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    real: RealConfig = field(default_factory=RealConfig)

    def __post_init__(self) -> None:
        """MixVPR's token mixing is sized for the backbone's features: derived, never set by hand."""
        size = self.image_size
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ConfigError(f"image_size must be [width, height] in pixels, got {size!r}")
        hw = trunk_hw(tuple(size), self.global_student.backbone_stride)
        self.global_student = dataclasses.replace(self.global_student, feature_hw=hw)

    def validate(self) -> "TrainConfig":
        if self.config_version != CONFIG_VERSION:
            raise ConfigError(f"config_version must be {CONFIG_VERSION} here (older files are converted on reading), got {self.config_version!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.optim.loss not in ("multi_similarity", "triplet"):
            raise ConfigError(f"optim.loss must be multi_similarity or triplet, got {self.optim.loss!r}")
        if self.optim.steps < 1 or self.teacher_optim.steps < 1:
            raise ConfigError(f"optim.steps and teacher_optim.steps must be >= 1, got {self.optim.steps}, {self.teacher_optim.steps}")
        self.optim.validate("optim")
        self.teacher_optim.validate("teacher_optim")
        self.distill.validate(recipe(self.mode, self.distill.enabled).distill)
        if not 0 <= self.photometric <= 1:
            raise ConfigError(f"photometric is a share of the training images, in [0, 1], got {self.photometric}")
        if not _is_share(self.mixstyle, one_included=True):
            raise ConfigError(f"mixstyle is a probability, in [0, 1], got {self.mixstyle}")
        check_blend_share(self.imagenet_blend)
        if not self.preserve_weight >= 0:
            raise ConfigError(f"preserve_weight must be >= 0, got {self.preserve_weight}")
        if not self.neighbour_m >= 0 or not self.real.speed_mps > 0:
            raise ConfigError(f"neighbour_m must be >= 0 and real.speed_mps > 0, got {self.neighbour_m}, {self.real.speed_mps}")
        section = self.student if self.mode == "structvpr++" else self.global_student
        for name in ("preserve_weight", "imagenet_blend"):
            if getattr(self, name) > 0 and self.mode != "teacher" and not section.imagenet:
                raise ConfigError(f"{name} keeps the ImageNet backbone's features: it needs the backbone to start from ImageNet (imagenet: true)")
        if self.real.root is not None and not 0 < self.real.places_per_batch < self.optim.places_per_batch:
            raise ConfigError(f"real.places_per_batch must be in 1..optim.places_per_batch - 1, got {self.real.places_per_batch}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        return self


# What a YAML or --set value may be for a default of each scalar type (an int is a valid float).
# PyYAML reads YAML 1.1, where a float needs a dot: `lr: 5e-5` loads as the string "5e-5". YAML 1.2 and every
# user read it as a number, so a float option takes it as one.
YAML11_EXPONENT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")
SCALAR_TYPES: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def merge(instance: Any, updates: dict, where: str = "config") -> Any:
    """A copy of dataclass ``instance`` with ``updates`` applied recursively; unknown keys raise."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{where} must be a mapping, got {updates!r}")
    fields = {f.name: f for f in dataclasses.fields(instance)}
    changes = {}
    for key, value in updates.items():
        if key not in fields:
            raise ConfigError(f"unknown option {where}.{key}; known: {sorted(fields)}")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            changes[key] = merge(current, value, f"{where}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            changes[key] = tuple(value)
        elif isinstance(current, float) and isinstance(value, str) and YAML11_EXPONENT.fullmatch(value):
            changes[key] = float(value)
        elif current is not None and not isinstance(value, SCALAR_TYPES.get(type(current), object)):
            raise ConfigError(f"{where}.{key} must be {type(current).__name__}, got {value!r}")
        else:
            changes[key] = value
    return dataclasses.replace(instance, **changes)


def dotted_overrides(assignments: list[str]) -> dict:
    """['optim.steps=10', 'mode=baseline'] -> nested dict; values parsed as YAML scalars."""
    result: dict = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
        *parents, leaf = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


def upgrade(raw: dict, where: str) -> dict:
    """``raw`` in the current form. A file without ``config_version`` is of version 1 (every YAML
    and checkpoint written before it existed): its relational KD weight multiplied tau^2 KL (the
    default 100 stood for 1), a weight of 0 switched the teacher off, and ``feature_hw`` was set
    by hand. Each converted value is named in one :class:`OldConfigWarning`."""
    version = raw.get("config_version", 1) if isinstance(raw, dict) else CONFIG_VERSION  # not a mapping: merge says so
    if version == CONFIG_VERSION:
        return raw
    if version != 1:
        raise ConfigError(f"{where}: unknown config_version {version!r}; this structvpr-edge reads 1 and {CONFIG_VERSION}")
    raw = copy.deepcopy(raw) | {"config_version": CONFIG_VERSION}
    notes = []
    distill = raw.get("distill")
    if isinstance(distill, dict) and ("weight" in distill or "temperature" in distill):
        weight, temperature = distill.get("weight", 100.0), distill.get("temperature", DistillConfig.temperature)
        if weight == 0:
            del distill["weight"]
            distill["enabled"] = False
            notes.append("distill.weight 0 -> distill.enabled false")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (weight, temperature)):  # else merge names the bad type
            distill["weight"] = float(f"{weight * temperature * temperature:.12g}")
            notes.append(f"distill.weight {weight} -> {distill['weight']} (tau^2 = {temperature}^2 folded in)")
    global_student = raw.get("global_student")
    if isinstance(global_student, dict) and global_student.pop("feature_hw", None) is not None:
        notes.append("global_student.feature_hw dropped (derived from image_size)")
    if notes:
        warnings.warn(f"{where} is a config of version 1, read as version {CONFIG_VERSION}: {'; '.join(notes)}. "
                      f"Write config_version: {CONFIG_VERSION} in a file of the new form (docs/method.md, Training)", OldConfigWarning, stacklevel=3)
    return raw


def _apply(config: TrainConfig, raw: dict, where: str) -> TrainConfig:
    if isinstance(raw, dict) and "feature_hw" in (raw.get("global_student") or {}):
        raise ConfigError(f"{where}: global_student.feature_hw is derived from image_size and global_student.backbone_stride; remove it")
    return merge(config, raw)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults <- YAML file or the config a checkpoint (``.pt``) was trained with (older versions
    converted) <- overrides (current version)."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} not found")
        raw = load_checkpoint(path)[1]["train_config"] if path.suffix == CHECKPOINT_SUFFIX else yaml.safe_load(path.read_text()) or {}
        config = _apply(config, upgrade(raw, str(path)), str(path))
    if overrides:
        config = _apply(config, overrides, "overrides")
    return config.validate()


def config_to_dict(config: TrainConfig) -> dict:
    """What a checkpoint stores: what a user may set, so it reads back as the same config."""
    raw = dataclasses.asdict(config)
    del raw["global_student"]["feature_hw"]
    return raw


def flat_config(config: dict, prefix: str = "") -> dict[str, object]:
    """A config of config_to_dict's form as dotted keys (``optim.lr``), so a difference can be named."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        flat |= flat_config(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def differing_keys(old: dict, new: dict) -> list[str]:
    """The dotted keys whose values differ between two configs of config_to_dict's form."""
    a, b = flat_config(old), flat_config(new)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
