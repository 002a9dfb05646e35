"""The two-stage trainer: the ``teacher`` stage learns place recognition from label maps alone,
the ``student`` stage an RGB student, distilled from the frozen teacher in the distilling modes.
What each mode uses is read from one :class:`~.config.Recipe`, the loss terms from ``objective.py``.
Runs on CPU, or CUDA with bfloat16 autocast on the forward passes (ranks and losses in float32);
``torchrun`` gives distributed data parallel.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..data.dataset import load_dataset
from ..data.places import PlaceGroups, place_groups
from ..data.real_frames import FrameViews, real_places
from ..errors import ConfigError, DatasetError, ModelError
from ..metrics import recall_at_n, retrieve
from ..models.checkpoint import build_model, load_checkpoint, load_resume_state, save_checkpoint, save_resume_state
from ..models.efficientnet_lite import blend_toward_imagenet
from .config import OptimConfig, TrainConfig, config_to_dict, differing_keys, merge, recipe
from .curves import plot_training_curves
from .data import MixedPlaceSampler, PlaceBatchSampler, RowStack, fraction_array, frozen_feature_array, near_places, to_model_input
from .distill import FeatureProjector
from .mixstyle import attach_mixstyle
from .objective import Batch, objective, part_values
from .provenance import run_provenance
from .weights import GROUPS, Keys, RankMemory, sample_groups


# What a resumed run may set otherwise than the run it continues: how long it trains, how often it
# logs, validates and saves, where its cache is, on which device. Any other setting changes what a
# step computes (or the model's shape), so ``last.pt`` refuses a run configured otherwise.
RESUMABLE = {"device", "cache_dir"} | {f"{section}.{key}" for section in ("optim", "teacher_optim")
                                       for key in ("steps", "time_budget_min", "log_every", "val_every", "checkpoint_every")}


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_context(device: str) -> Context:
    """Single process, or one rank of a ``torchrun`` job (gloo on CPU, nccl on CUDA)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Context(rank, world, torch.device("cuda", local))
    return Context(rank, world, torch.device("cpu"))


class PartsModule(nn.Module):
    """Routes ``forward`` to ``forward_parts`` so DistributedDataParallel syncs its gradients."""

    def __init__(self, model: nn.Module, from_frozen: bool) -> None:
        super().__init__()
        self.model, self.from_frozen = model, from_frozen

    def forward(self, x: torch.Tensor):
        return self.model.forward_parts(x, from_frozen=True) if self.from_frozen else self.model.forward_parts(x)  # the teacher has no from_frozen


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no gradients: a fixed reference (the teacher, the ImageNet backbone)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def gradient_ratio(term: torch.Tensor, reference: torch.Tensor, model: nn.Module) -> float | None:
    """||d term / d theta|| / ||d reference / d theta|| over the trainable weights: the share of
    the gradient a loss term really carries (logged, since a loss value alone does not tell).
    None on a step where the reference has no gradient (the metric loss mined no pair)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))

    reference_norm = norm(reference)
    return norm(term) / reference_norm if reference_norm > 0 else None


def make_optimizer(model: nn.Module, optim: OptimConfig, extra: nn.Module | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """``extra``: training-only weights (the feature-KD projector), at the heads' learning rate."""
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    heads += list(extra.parameters()) if extra is not None else []
    groups = [{"params": heads, "lr": optim.lr}] + ([{"params": backbone, "lr": optim.backbone_lr}] if backbone else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=optim.weight_decay)

    def schedule(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def backbone_schedule(step: int) -> float:  # still until the heads have trained alone for heads_first of the steps
        return 0.0 if step < optim.heads_first * optim.steps else schedule(step)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule, backbone_schedule][: len(groups)])


class RunLog:
    """``log.jsonl`` (main rank only; ``path`` None elsewhere): step records, validations, and the
    share of each sample group over every epoch, written when the next epoch begins or the run ends
    (the last epoch is often cut short by the step budget; its record's ``step`` says where)."""

    def __init__(self, path: Path | None) -> None:
        self.file = path.open("a") if path is not None else None
        self.shares: Counter = Counter()
        self.current_epoch: int | None = None

    def write(self, row: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def epoch(self, epoch: int, step: int) -> None:
        if epoch != self.current_epoch:
            self._write_shares(step)
        self.current_epoch = epoch

    def close(self, step: int) -> None:
        self._write_shares(step)
        if self.file is not None:
            self.file.close()

    def _write_shares(self, step: int) -> None:
        if self.current_epoch is not None and self.shares:
            total = sum(self.shares.values())
            self.write({"epoch": self.current_epoch, "step": step, "group_shares": {g: self.shares[g] / total for g in GROUPS}})
        self.shares.clear()


class Stage:
    """One training stage: its data, model, losses, validation, logs and checkpoints."""

    def __init__(self, config: TrainConfig, stage: str, out: Path, ctx: Context, teacher_path: Path | None) -> None:
        self.config, self.stage, self.out, self.ctx = config, stage, out, ctx
        self.mode = "teacher" if stage == "teacher" else config.mode
        self.recipe = recipe(self.mode, config.distill.enabled)
        self.optim_section = "teacher_optim" if stage == "teacher" else "optim"  # the config section self.optim is read from
        self.optim = getattr(config, self.optim_section)
        torch.manual_seed(config.seed)
        self.model = self._build_model()
        self.teacher = self._load_teacher(teacher_path) if self.recipe.distill else None
        self.projector = FeatureProjector(self.model, self.teacher).to(self.ctx.device) if self.teacher is not None and config.distill.feature_weight > 0 else None
        if self.projector is not None and ctx.world > 1:
            raise ConfigError("distill.feature_weight trains a projector outside the DDP model: run it in one process")
        train = load_dataset(config.dataset, "train")
        self.groups = place_groups(train, min_images=2)
        if self.recipe.labels and self.groups.label_paths is None:
            raise DatasetError(f"mode {self.mode!r} needs label maps, and {train!r} has none; train mode 'baseline' instead")
        self.inputs, self.fractions = self._arrays(self.groups.paths, self.groups.label_paths, config.photometric)
        real = self._add_real_frames() if config.real.root is not None else None
        train_files = [*self.groups.paths, *(self.groups.label_paths or [])]
        self.provenance = run_provenance(Path(config.cache_dir), train_files, real.paths + (real.label_paths or []) if real else [], self.teacher)
        self.real_places = real.places if real is not None else None
        self.place_positions = self._place_positions(real)
        self.val = self._load_val()
        from_frozen = self.recipe.rgb and self.model.backbone.frozen_blocks > 0
        self.parts = PartsModule(self.model, from_frozen)
        # the backbone as built, before any step: the ImageNet weights feature preservation keeps near
        self.imagenet = frozen(copy.deepcopy(self.model.backbone)) if self.recipe.rgb and config.preserve_weight > 0 else None
        self.memory = RankMemory(config.distill.samples.memory_batches)
        # the running mean of the weights (parameters and BatchNorm statistics) over the last steps: optim.average_from
        self.average = AveragedModel(self.model, use_buffers=True) if self.optim.average_from is not None else None
        self.terms = objective(config, self.recipe, self.optim, self.model, self.teacher, self.projector)
        if self.recipe.rgb and config.mixstyle > 0:  # after the copies above: they must not mix
            attach_mixstyle(self.model.backbone, config.mixstyle)

    def _build_model(self) -> nn.Module:
        section = {"teacher": "teacher", "structvpr++": "student", "global": "global_student"}[self.recipe.model_type]
        conf = dataclasses.asdict(getattr(self.config, section))
        return build_model(self.recipe.model_type, conf, imagenet=conf.get("imagenet", False)).to(self.ctx.device)

    def _load_teacher(self, path: Path | None) -> nn.Module:
        if path is None:
            raise ConfigError(f"mode {self.mode!r} distils from a teacher: run the teacher stage or set teacher_checkpoint")
        teacher, meta = load_checkpoint(path)
        if meta["model_type"] != "teacher":
            raise ConfigError(f"{path} is a {meta['model_type']} checkpoint, not a teacher")
        size, ours = tuple(teacher.conf.input_size), tuple(self.config.teacher.input_size)
        if size != ours:  # the fractions are pooled to teacher.input_size; a convolutional teacher would run on another silently
            raise ConfigError(f"{path} is a teacher of label fractions {list(size)}, but teacher.input_size is {list(ours)}: "
                              f"set teacher.input_size to {list(size)} or train a teacher at {list(ours)}")
        return frozen(teacher.to(self.ctx.device))

    def _arrays(self, paths: list[Path], label_paths: list[Path] | None, relight: float = 0.0) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Model inputs (``relight``: the share under random light) and label fractions, built by rank 0
        and memory-mapped by every rank."""
        cache = Path(self.config.cache_dir)
        arrays: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        for turn in ("build", "load"):
            if (turn == "build") == self.ctx.is_main:
                needs_fractions = self.recipe.labels and label_paths is not None
                fractions = fraction_array(label_paths, self.config.teacher.input_size, cache) if needs_fractions else None
                inputs = frozen_feature_array(self.model.backbone, paths, self.config.image_size, cache, relight) if self.recipe.rgb else None
                arrays = (inputs, fractions)
            self.ctx.barrier()
        return arrays

    def _add_real_frames(self) -> PlaceGroups:
        """Real frames' places, their inputs and fractions stacked after the main dataset's rows."""
        real = self.config.real
        views = FrameViews(real.window, real.views, seed=self.config.seed, relight=real.relight)
        groups = real_places(real.root, real.split, real.scheme, Path(self.config.cache_dir), views, real.labels_root, real.speed_mps)
        inputs, fractions = self._arrays(groups.paths, groups.label_paths)
        offset = len(self.groups.paths)
        self.inputs = RowStack(self.inputs, inputs) if inputs is not None else None
        self.fractions = RowStack(self.fractions, fractions) if fractions is not None else None
        return dataclasses.replace(groups, places=[members + offset for members in groups.places])

    def _place_positions(self, real: PlaceGroups | None) -> torch.Tensor | None:
        """Every place's position in the samplers' label order (real places after the main ones), to
        tell neighbours apart; None with ``neighbour_m`` 0 (every other place a negative)."""
        if self.config.neighbour_m == 0:
            return None
        groups = [self.groups] if real is None else [self.groups, real]
        return torch.from_numpy(np.concatenate([g.positions for g in groups])).to(self.ctx.device)

    def near(self, places: torch.Tensor, key_places: torch.Tensor) -> torch.Tensor | None:
        """(anchors, keys) pairs of neighbouring places (``near_places``); None with ``neighbour_m`` 0."""
        if self.place_positions is None:
            return None
        return near_places(self.place_positions, places, key_places, self.config.neighbour_m)

    def sampler(self) -> PlaceBatchSampler | MixedPlaceSampler:
        optim, seed, ctx = self.optim, self.config.seed, self.ctx
        if self.real_places is None:
            return PlaceBatchSampler(self.groups.places, optim.places_per_batch, optim.images_per_place, seed, ctx.rank, ctx.world)
        real_count = self.config.real.places_per_batch
        main = PlaceBatchSampler(self.groups.places, optim.places_per_batch - real_count, optim.images_per_place, seed, ctx.rank, ctx.world)
        return MixedPlaceSampler(main, PlaceBatchSampler(self.real_places, real_count, optim.images_per_place, seed, ctx.rank, ctx.world))

    def _load_val(self):
        root = Path(self.config.dataset)
        if not (root / "images" / self.config.val_split).is_dir():
            return None
        val = load_dataset(root, self.config.val_split)
        paths = val.database.paths + val.queries.paths
        labels = (val.database.label_paths + val.queries.label_paths) if val.has_labels and not self.recipe.rgb else None
        if not self.recipe.rgb and labels is None:
            return None
        inputs, fractions = self._arrays(paths, labels)
        return val, inputs, fractions

    def model_input(self, inputs: np.ndarray | None, fractions: np.ndarray | None, indices: np.ndarray) -> torch.Tensor:
        if self.recipe.rgb:
            return to_model_input(inputs, indices).to(self.ctx.device)
        return self.fraction_tensor(fractions, indices)

    def fraction_tensor(self, fractions: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(fractions[indices]).astype(np.float32) / 255).to(self.ctx.device)

    def mixed_precision(self) -> AbstractContextManager:
        """bfloat16 autocast on CUDA (nothing on CPU)."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.ctx.device.type == "cuda" else nullcontext()

    def batch(self, net: nn.Module, indices: np.ndarray, labels: torch.Tensor) -> Batch:
        """The model's outputs on the batch, and with a teacher its outputs and the anchors' sample
        groups, ranked against the rank memory (which then remembers this batch)."""
        fractions = self.fraction_tensor(self.fractions, indices) if self.recipe.mask_loss or self.teacher is not None else None
        x = self.model_input(self.inputs, self.fractions, indices)
        ids = torch.from_numpy(indices).to(labels.device)
        with self.mixed_precision():  # the forward passes only: ranks and losses below are float32
            parts = net(x)
            with torch.no_grad():
                trunk = None if self.imagenet is None else self.imagenet.forward_trainable(x)  # x: the cached frozen part's output, or the image
                teacher = None if self.teacher is None else self.teacher.forward_parts(fractions)
        batch = Batch(parts.float(), labels, ids, fractions, near=self.near(labels, labels),
                      teacher=None if teacher is None else teacher.float(), imagenet_trunk=None if trunk is None else trunk.float())
        if batch.teacher is not None:
            keys = Keys(batch.teacher.descriptor, batch.parts.descriptor, labels, ids)
            ranked_among = self.memory.keys(keys)
            batch.sample_groups = sample_groups(keys, ranked_among, self.config.distill.samples, self.near(labels, ranked_among.places))
            self.memory.push(keys)
            if self.real_places is not None:  # MixedPlaceSampler labels real places after the synthetic ones
                batch.real = labels >= len(self.groups.places)
        return batch

    def losses(self, net: nn.Module, indices: np.ndarray, labels: torch.Tensor, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Each part of the objective on this batch (their sum is minimised) and the batch's sample
        groups (None without a teacher)."""
        batch = self.batch(net, indices, labels)
        return part_values(self.terms, batch, step), batch.sample_groups

    @torch.no_grad()
    def validate(self) -> float | None:
        """Recall@1 on the validation split (main rank only)."""
        if self.val is None:
            return None
        val, inputs, fractions = self.val
        rows = np.arange(len(val.database) + len(val.queries))
        self.model.eval()
        descs = np.concatenate([self.parts(self.model_input(inputs, fractions, rows[start : start + 128])).descriptor.float().cpu().numpy()
                                for start in range(0, len(rows), 128)])
        self.model.train()
        _, predictions = retrieve(descs[: len(val.database)], descs[len(val.database) :], 1)
        return recall_at_n(predictions, val.positives, (1,))["1"]

    def run(self, resume: bool) -> Path:
        """Train from step 0, or from ``last.pt`` with ``resume``; returns the final ``model.pt``."""
        self.out.mkdir(parents=True, exist_ok=True)
        optimizer, scheduler = make_optimizer(self.model, self.optim, self.projector)
        start = self._resume(optimizer, scheduler) if resume and (self.out / "last.pt").exists() else 0
        net = self._distributed()
        log = RunLog(self.out / "log.jsonl" if self.ctx.is_main else None)
        batches = iter(self.sampler())
        for _ in range(start):  # a resumed run continues the same batch sequence
            next(batches)
        self.model.train()
        began, step = time.time(), start - 1  # a finished run resumed trains no step
        progress = tqdm(range(start, self.optim.steps), desc=f"{self.stage} ({self.mode})", disable=not self.ctx.is_main,
                        initial=start, total=self.optim.steps)
        for step in progress:
            epoch, indices, place_labels = next(batches)
            log.epoch(epoch, step)
            record = self._train_step(net, optimizer, scheduler, indices, torch.from_numpy(place_labels).to(self.ctx.device), step, log)
            elapsed = time.time() - began
            if self.average is not None and step >= self.optim.average_from * self.optim.steps:
                self.average.update_parameters(self.model)
            if record is not None:
                log.write({"step": step, "epoch": epoch, "time_s": round(elapsed, 1), **record})
                progress.set_postfix(loss=f"{record['loss']:.3f}")
            out_of_time = self.optim.time_budget_min is not None and elapsed > self.optim.time_budget_min * 60
            self._validate_and_save(step, step == self.optim.steps - 1 or out_of_time, optimizer, scheduler, log)
            if out_of_time:
                log.write({"step": step, "stopped": "time budget", "time_s": round(elapsed, 1)})
                break
        return self._finish(step, log)

    def _resume(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> int:
        """Weights, projector, optimizer, scheduler and the main rank's rank memory from ``last.pt``;
        the step to go on from. Refused if ``last.pt`` was trained with other settings (beyond RESUMABLE)."""
        path = self.out / "last.pt"
        state = load_resume_state(path)
        self._check_resumed_config(path, state.get("config"))
        try:
            self.model.load_state_dict(state["state_dict"])
            if self.projector is not None:
                self.projector.load_state_dict(state["projector"])
            if self.average is not None:
                self.average.load_state_dict(state["average"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as exc:  # what load_state_dict raises for another model
            raise ModelError(f"{path} does not hold a resumable state of this run's model ({type(exc).__name__}: {exc})") from exc
        section = self.optim_section
        saved_steps = (state.get("config") or {}).get(section, {}).get("steps", self.optim.steps)
        if self.average is not None and self.average.n_averaged > 0 and saved_steps != self.optim.steps:
            raise ConfigError(f"{path} has averaged the weights from {section}.average_from of {saved_steps} steps: "
                              f"resume it with {section}.steps={saved_steps}, or train into another folder")
        if self.ctx.is_main:  # only the main rank's memory is saved; other ranks start with an empty one
            self.memory.restore(state.get("memory", []), self.ctx.device)
        return step

    def _check_resumed_config(self, path: Path, saved: dict | None) -> None:
        """A ConfigError naming each setting beyond RESUMABLE that ``saved`` sets otherwise. A ``last.pt``
        of before the config was kept in it is resumed with a warning: refusing it would strand its run."""
        if saved is None:
            warnings.warn(f"{path} does not record the config it was trained with (written by an older structvpr-edge): "
                          "resumed without checking that this run's config is the same", stacklevel=3)
            return
        saved_config = config_to_dict(merge(TrainConfig(), saved, str(path)))  # a setting added since takes its default
        changed = [key for key in differing_keys(saved_config, config_to_dict(self.config)) if key not in RESUMABLE]
        if changed:
            raise ConfigError(f"{path} was trained with other settings of {', '.join(changed)}: resume it with the config it was "
                              f"trained with (only {', '.join(sorted(RESUMABLE))} may change), or train into another folder")

    def _distributed(self) -> nn.Module:
        if self.ctx.world == 1:
            return self.parts
        return nn.parallel.DistributedDataParallel(self.parts, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None)

    def _train_step(self, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    indices: np.ndarray, labels: torch.Tensor, step: int, log: RunLog) -> dict | None:
        """One optimiser step; the step's record for the log on a logged step, else None."""
        parts, sample_group = self.losses(net, indices, labels, step)
        loss = sum(parts.values())
        record = None
        if self.ctx.is_main and (step % self.optim.log_every == 0 or step == self.optim.steps - 1):
            record = {name: value.item() for name, value in parts.items()} | {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}  # the heads' rate this step
            ratio = gradient_ratio(parts["distill"], parts["metric"], self.model) if "distill" in parts else None
            if ratio is not None:
                record["kd_grad_ratio"] = ratio
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if sample_group is not None:
            log.shares.update(GROUPS[g] for g in sample_group.tolist())
        return record

    def _validate_and_save(self, step: int, done: bool, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                           log: RunLog) -> None:
        """Main rank: validation every ``val_every`` steps and at the end, ``last.pt`` every ``checkpoint_every``."""
        if not self.ctx.is_main:
            return
        if (step + 1) % self.optim.val_every == 0 or done:
            recall = self.validate()
            if recall is not None:
                log.write({"step": step, "val_recall@1": recall})
        if (step + 1) % self.optim.checkpoint_every == 0 or done:
            extras = {"projector": self.projector} if self.projector is not None else {}
            extras |= {"average": self.average} if self.average is not None else {}
            save_resume_state(self.out / "last.pt", {"state_dict": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                                                     "scheduler": scheduler.state_dict(), "step": step + 1,
                                                     **{name: module.state_dict() for name, module in extras.items()},
                                                     "config": config_to_dict(self.config), "memory": self.memory.state()})

    def _finish(self, step: int, log: RunLog) -> Path:
        """The model, its config and the curves (main rank); every rank waits for them."""
        final = self.out / "model.pt"
        if self.ctx.is_main:
            if self.average is not None:
                self._load_average(step, log)
            if self.recipe.rgb and self.config.imagenet_blend > 0:
                blend_toward_imagenet(self.model.backbone, self.config.imagenet_blend)
                recall = self.validate()
                log.write({"step": step, "imagenet_blend": self.config.imagenet_blend} | ({} if recall is None else {"val_recall@1": recall}))
            log.close(step + 1)
            save_checkpoint(final, self.model.cpu(), self.config.image_size, config_to_dict(self.config),
                            {"stage": self.stage, "steps_done": step + 1, "provenance": self.provenance})
            plot_training_curves(self.out / "log.jsonl", self.out / "curves.png")
        self.ctx.barrier()
        return final

    def _load_average(self, step: int, log: RunLog) -> None:
        """The mean weights into the model, validated; a run stopped before its averaging began keeps its last step's, with a warning."""
        count = int(self.average.n_averaged)
        recall = None
        if count:
            self.model.load_state_dict(self.average.module.state_dict())
            recall = self.validate()
        else:
            warnings.warn(f"{self.out}: the run stopped at step {step + 1}, before average_from's first step: model.pt holds the last step's weights",
                          stacklevel=2)
        log.write({"step": step, "averaged_steps": count} | ({} if recall is None else {"val_recall@1": recall}))


def default_stages(config: TrainConfig) -> list[str]:
    if config.mode == "teacher":
        return ["teacher"]
    if recipe(config.mode, config.distill.enabled).distill and config.teacher_checkpoint is None:
        return ["teacher", "student"]
    return ["student"]


def train(config: TrainConfig, out: str | Path, stages: list[str] | None = None, resume: bool = False) -> Path:
    """Run the selected stages into ``out`` (the teacher goes to ``out/teacher``); returns the last model."""
    out = Path(out)
    stages = stages or default_stages(config)
    unknown = set(stages) - {"teacher", "student"}
    if unknown:
        raise ConfigError(f"unknown stages {sorted(unknown)}; use teacher and/or student")
    ctx = setup_context(config.device)
    teacher_path = Path(config.teacher_checkpoint) if config.teacher_checkpoint else None
    result = None
    if "teacher" in stages:
        teacher_path = result = Stage(config, "teacher", out / "teacher" if config.mode != "teacher" else out, ctx, None).run(resume)
    if "student" in stages and config.mode != "teacher":
        result = Stage(config, "student", out, ctx, teacher_path).run(resume)
    if ctx.world > 1:
        dist.destroy_process_group()
    return result
