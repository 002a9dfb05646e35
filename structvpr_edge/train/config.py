"""Training configuration: dataclass defaults, merged with a user's YAML (unknown keys are errors)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..models.global_student import GlobalStudentConfig
from ..models.student import StudentConfig
from ..models.teacher import TeacherConfig
from .losses import MultiSimilarityConfig
from .weights import SampleWeightConfig

MODES = ("teacher", "baseline", "structvpr", "structvpr++")


@dataclass(frozen=True)
class Recipe:
    """What one training stage builds and which losses it uses: the one place mode strings are read."""

    model_type: str  # teacher | global | structvpr++
    rgb: bool  # trains on RGB images (from cached frozen-backbone features); else on label maps
    labels: bool  # needs label-group fractions (teacher input, mask loss or the teacher of distillation)
    mask_loss: bool
    distill: bool


def recipe(mode: str, distill_weight: float) -> Recipe:
    """``distill_weight`` 0 switches the teacher off: no teacher is loaded (the ``student-nokd`` row)."""
    distill = mode in ("structvpr", "structvpr++") and distill_weight > 0
    if mode == "teacher":
        return Recipe("teacher", rgb=False, labels=True, mask_loss=False, distill=False)
    if mode == "structvpr++":
        return Recipe("structvpr++", rgb=True, labels=True, mask_loss=True, distill=distill)
    return Recipe("global", rgb=True, labels=distill, mask_loss=False, distill=distill)


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
    log_every: int = 20
    val_every: int = 250
    checkpoint_every: int = 500


@dataclass
class DistillConfig:
    # Chosen on val (docs/RESULTS.md, issue 9): tau^2 scales KD by 0.01, so at 1 its gradient is
    # ~1 % of the metric loss's and the teacher changes nothing. 0: teacher off (student-nokd).
    weight: float = 100.0
    temperature: float = 0.1
    per_group: bool = True  # also match each label group's similarity structure (the "label split")
    group_weight: float = 1.0
    # Tried on val for a stronger signal (issue 9, train/distill.py); 0 = off. Each is added to
    # the per-anchor KD before the sample weights, outside ``weight`` (which undoes tau^2 only).
    feature_weight: float = 0.0  # cosine of projected sub-descriptors to the teacher's
    similarity_weight: float = 0.0  # squared error of the aligned similarities
    negative_weight: float = 0.0  # teacher-ranked hard negatives, teacher's margin
    # The KD schedule, tried on val (issue 9): the whole KD term rises linearly from 0 over these
    # steps, so the student's masks and metric space form before the teacher pulls; 0 = full from step 0.
    warmup_steps: int = 0
    samples: SampleWeightConfig = field(default_factory=SampleWeightConfig)


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


@dataclass
class TrainConfig:
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
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    global_student: GlobalStudentConfig = field(default_factory=GlobalStudentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher_optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    real: RealConfig = field(default_factory=RealConfig)

    def validate(self) -> "TrainConfig":
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.optim.loss not in ("multi_similarity", "triplet"):
            raise ConfigError(f"optim.loss must be multi_similarity or triplet, got {self.optim.loss!r}")
        if self.distill.samples.memory_batches < 0:
            raise ConfigError(f"distill.samples.memory_batches must be >= 0, got {self.distill.samples.memory_batches}")
        if self.distill.warmup_steps < 0:
            raise ConfigError(f"distill.warmup_steps must be >= 0, got {self.distill.warmup_steps}")
        if self.optim.steps < 1 or self.teacher_optim.steps < 1:
            raise ConfigError(f"optim.steps and teacher_optim.steps must be >= 1, got {self.optim.steps}, {self.teacher_optim.steps}")
        extra = (self.distill.feature_weight, self.distill.similarity_weight, self.distill.negative_weight)
        if not all(w >= 0 for w in extra):
            raise ConfigError(f"distill.feature_weight, similarity_weight and negative_weight must be >= 0, got {extra}")
        if not self.distill.weight >= 0 or not self.distill.temperature > 0:
            raise ConfigError(f"distill.weight must be >= 0 and distill.temperature > 0, got {self.distill.weight}, {self.distill.temperature}")
        if self.real.root is not None and not 0 < self.real.places_per_batch < self.optim.places_per_batch:
            raise ConfigError(f"real.places_per_batch must be in 1..optim.places_per_batch - 1, got {self.real.places_per_batch}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        return self


# What a YAML or --set value may be for a default of each scalar type (an int is a valid float).
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


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} not found")
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    if overrides:
        config = merge(config, overrides)
    return config.validate()


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)

