"""Training runs a few steps on tiny datasets (tests/conftest.py): ``hard_place_dataset``, which
untrained models do not solve, for training quality; the easy ``place_dataset`` for the mechanics."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from structvpr_edge import __version__
from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.eval.evaluate import evaluate
from structvpr_edge.eval.models import load_extractor
from structvpr_edge.data.places import place_groups
from structvpr_edge.models.checkpoint import (build_model, load_checkpoint, load_resume_state, save_checkpoint, save_resume_state, shipped_path,
                                              weights_fingerprint)
from structvpr_edge.models.efficientnet_lite import EfficientNetLite0
from structvpr_edge.models.student import StructVPRStudent
from structvpr_edge.train.config import OldConfigWarning, Recipe, config_to_dict, load_config, recipe
from structvpr_edge.images import read_rgb
from structvpr_edge.train.data import PlaceBatchSampler, frozen_feature_array, normalize_images, read_many
from structvpr_edge.train.mixstyle import attach_mixstyle, mix_styles
from structvpr_edge.train.provenance import content_digest
from structvpr_edge.train.trainer import RunLog, Stage, gradient_ratio, setup_context, train

FAST = {"steps": 24, "places_per_batch": 6, "val_every": 12, "log_every": 4, "warmup_steps": 4, "checkpoint_every": 12}
# Enough to learn the hard places' invariances: a short run with larger learning rates.
QUALITY = {**FAST, "steps": 60, "val_every": 30, "checkpoint_every": 30, "lr": 1e-2, "backbone_lr": 3e-3}
CONFIGS = Path(__file__).resolve().parents[1] / "structvpr_edge" / "configs"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: on a shared 2-core machine intra-op threads only contend
    (a training step measured 10-20x slower with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(dataset: Path, cache: Path, **overrides) -> dict:
    config = {
        "dataset": str(dataset), "image_size": [64, 48], "cache_dir": str(cache), "teacher": {"input_size": [32, 24]},
        "optim": dict(FAST), "teacher_optim": dict(FAST), "student": {"frozen_blocks": 4},
        "global_student": {"frozen_blocks": 4, "dim": 128},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def trained(hard_place_dataset, tmp_path_factory):
    """StructVPR++ trained through the CLI, teacher stage then student stage, on the hard places."""
    out = tmp_path_factory.mktemp("run")
    config_path = out / "cfg.yaml"
    config = tiny_config(hard_place_dataset, out / "cache", mode="structvpr++", optim=QUALITY, teacher_optim=QUALITY)
    config_path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(config_path), "--out", str(out / "full")]) == 0
    return out


@pytest.fixture(scope="module")
def easy(place_dataset, tmp_path_factory):
    """A folder with a frozen-feature cache and a teacher trained for a few steps on the easy
    places (``teacher/model.pt``): what the tests of the mechanics distil from."""
    out = tmp_path_factory.mktemp("easy")
    train(load_config(None, tiny_config(place_dataset, out / "cache", mode="teacher")), out / "teacher")
    return out


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_stage_training_writes_everything(trained):
    run = trained / "full"
    for name in ("model.pt", "last.pt", "log.jsonl", "curves.png", "teacher/model.pt", "teacher/curves.png"):
        assert (run / name).stat().st_size > 0, name
    rows = log_rows(run)
    assert any("val_recall@1" in r for r in rows)
    shares = [r["group_shares"] for r in rows if "group_shares" in r]
    assert shares and all(abs(sum(s.values()) - 1) < 1e-6 for s in shares)
    steps = [r for r in rows if "loss" in r]
    assert {"metric", "mask", "distill"} <= set(steps[0])
    ratios = [r["kd_grad_ratio"] for r in steps]  # every log step of a distilling run carries it
    assert steps[0]["step"] == 0 and steps[0]["lr"] == pytest.approx(QUALITY["lr"] / QUALITY["warmup_steps"])  # the rate step 0 trained at
    assert steps[1]["lr"] == pytest.approx(QUALITY["lr"])  # step 4: warm-up done, cosine not yet begun
    assert all(math.isfinite(ratio) and ratio > 0 for ratio in ratios), ratios


def test_run_log_writes_the_last_epochs_shares(tmp_path):
    """A run's step budget usually ends inside an epoch: its shares are written at close, not lost."""
    log = RunLog(tmp_path / "log.jsonl")
    log.epoch(0, 0)
    log.shares.update(["both_right", "both_right", "noisy"])
    log.epoch(1, 250)
    log.shares.update(["teacher_moderate"])
    log.close(300)
    shares = [r for r in log_rows(tmp_path) if "group_shares" in r]
    assert [(r["epoch"], r["step"]) for r in shares] == [(0, 250), (1, 300)]
    assert shares[0]["group_shares"]["both_right"] == pytest.approx(2 / 3)
    assert shares[1]["group_shares"]["teacher_moderate"] == 1.0


def untrained_recall(config_path: Path, stage: str, teacher: Path, dataset: Path, out: Path) -> float:
    """R@1 of the model a stage starts from: Stage seeds torch and builds it as the run did."""
    config = load_config(config_path)
    model = Stage(config, stage, out, setup_context("cpu"), teacher).model
    checkpoint = save_checkpoint(out / "untrained.pt", model, config.image_size, config_to_dict(config))
    return evaluate(load_extractor(str(checkpoint)), load_dataset(dataset)).recall["1"]


# Measured on 5 (data, training) seed pairs: student 0.09-0.18 untrained, 0.28-0.46 trained;
# teacher 0.40-0.50 untrained, 0.68-0.80 trained. The smallest gain seen was 0.17.
@pytest.mark.slow
@pytest.mark.parametrize(("stage", "checkpoint", "untrained_below"), [("student", "model.pt", 0.35), ("teacher", "teacher/model.pt", 0.7)])
def test_training_beats_the_untrained_model(trained, hard_place_dataset, stage, checkpoint, untrained_below):
    teacher = trained / "full" / "teacher" / "model.pt"
    before = untrained_recall(trained / "cfg.yaml", stage, teacher, hard_place_dataset, trained / f"untrained-{stage}")
    after = evaluate(load_extractor(str(trained / "full" / checkpoint)), load_dataset(hard_place_dataset)).recall["1"]
    scores = f"{stage} R@1: untrained {before:.3f}, trained {after:.3f}"
    print(scores)
    assert before < untrained_below, f"the test data is too easy: {scores}"
    assert after >= before + 0.1, f"training did not learn: {scores}"


@pytest.mark.parametrize("mode", ["baseline", "structvpr"])
def test_other_modes_reuse_the_teacher(easy, place_dataset, mode):
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode=mode, teacher_checkpoint=str(easy / "teacher" / "model.pt")))
    model = train(config, easy / mode)
    rows = log_rows(easy / mode)
    assert ("distill" in next(r for r in rows if "loss" in r)) == (mode == "structvpr")
    assert model.exists()


def test_a_checkpoint_records_what_it_was_trained_from(easy, place_dataset, tmp_path):
    """The same dataset files for the teacher and its student, the student's teacher by its weights."""
    teacher_path = easy / "teacher" / "model.pt"
    config = tiny_config(place_dataset, easy / "cache", mode="structvpr++", optim={**FAST, "steps": 2}, teacher_checkpoint=str(teacher_path))
    student = load_checkpoint(train(load_config(None, config), easy / "provenance"))[1]["provenance"]
    teacher_model, teacher_meta = load_checkpoint(teacher_path)
    groups = place_groups(load_dataset(place_dataset, "train"), min_images=2)
    train_files = content_digest([*groups.paths, *groups.label_paths], tmp_path)  # computed afresh, not read from the run's cache
    assert student["train_files"] == teacher_meta["provenance"]["train_files"] == train_files
    assert student["teacher_weights"] == weights_fingerprint(teacher_model) and teacher_meta["provenance"]["teacher_weights"] is None
    assert student["real_views"] is None and student["code"].startswith(__version__)
    assert student["libraries"] == f"torch {torch.__version__}, numpy {np.__version__}, opencv {cv2.__version__}"


def test_no_gradient_reaches_the_teacher(easy, place_dataset):
    teacher = easy / "teacher" / "model.pt"
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", optim={**FAST, "steps": 3}))
    stage = Stage(config, "student", easy / "frozen-teacher", setup_context("cpu"), teacher)
    weights = {name: value.clone() for name, value in stage.teacher.state_dict().items()}  # BatchNorm statistics too
    student = [p.detach().clone() for p in stage.model.parameters() if p.requires_grad]
    stage.run(resume=False)
    assert not any(p.requires_grad or p.grad is not None for p in stage.teacher.parameters())
    assert all(torch.equal(weights[name], value) for name, value in stage.teacher.state_dict().items())
    assert not stage.teacher.training
    assert any(not torch.equal(a, b) for a, b in zip(student, (p for p in stage.model.parameters() if p.requires_grad)))  # it did train


def test_student_nokd_trains_without_a_teacher(place_dataset, tmp_path):
    """distill.enabled false (the student-nokd row): no teacher stage, no teacher loaded, no distill term."""
    config = load_config(CONFIGS / "student-nokd.yaml", tiny_config(place_dataset, tmp_path / "cache", optim={**FAST, "steps": 8}))
    model = train(config, tmp_path / "nokd")
    assert not (tmp_path / "nokd" / "teacher").exists()
    rows = log_rows(tmp_path / "nokd")
    steps = [r for r in rows if "loss" in r]
    assert steps and all({"metric", "mask"} <= set(r) and not {"distill", "kd_grad_ratio"} & set(r) for r in steps)
    assert not any("group_shares" in r for r in rows)  # sample groups need the teacher
    assert isinstance(load_checkpoint(model)[0], StructVPRStudent)


def test_a_teacher_of_another_input_size_is_refused(easy, place_dataset):
    """The label fractions are pooled to teacher.input_size: a convolutional teacher trained at another size would run on them silently."""
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", teacher={"input_size": [16, 12]}))
    with pytest.raises(ConfigError, match=r"teacher/model\.pt is a teacher of label fractions \[32, 24\], but teacher\.input_size is \[16, 12\]"):
        Stage(config, "student", easy / "other-size", setup_context("cpu"), easy / "teacher" / "model.pt")


def test_extra_distillation_terms_train_their_projector_and_resume(easy, place_dataset):
    """Feature KD, similarity KD and teacher-ranked negatives on: the projector learns, is kept in
    last.pt for a resume, and never reaches the shipped checkpoint."""
    teacher = str(easy / "teacher" / "model.pt")
    distill = {"feature_weight": 1.0, "similarity_weight": 1.0, "negative_weight": 1.0}
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", teacher_checkpoint=teacher,
                                           distill=distill, optim={**FAST, "steps": 8}))
    stage = Stage(config, "student", easy / "extra", setup_context("cpu"), Path(teacher))
    before = [p.detach().clone() for p in stage.projector.parameters()]
    model = stage.run(resume=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, stage.projector.parameters()))
    steps = [r for r in log_rows(easy / "extra") if "loss" in r]
    assert all(math.isfinite(r["distill"]) and r["distill"] > 0 for r in steps)
    assert "projector" in torch.load(easy / "extra" / "last.pt", weights_only=False)
    assert not any(key.startswith("global_map") for key in torch.load(model, weights_only=False)["state_dict"])
    longer = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", teacher_checkpoint=teacher,
                                           distill=distill, optim={**FAST, "steps": 12}))
    train(longer, easy / "extra", resume=True)
    assert max(r["step"] for r in log_rows(easy / "extra") if "loss" in r) == 11
    with pytest.raises(ConfigError, match="negative_weight"):
        load_config(None, {"distill": {"negative_weight": -1}})


def trunk_drift(model: nn.Module, place_dataset: Path) -> float:
    """1 - cosine between ``model``'s backbone features and the ImageNet backbone's on the dataset's images,
    as the term sees them: the trained blocks with batch statistics, the ImageNet copy with its own."""
    images = sorted((place_dataset / "images").rglob("*.jpg"))[:8]
    x = normalize_images(read_many(read_rgb, images, (64, 48)))
    imagenet = build_model("structvpr++", {"frozen_blocks": 4}, imagenet=True).eval()
    with torch.no_grad():
        return 1 - torch.nn.functional.cosine_similarity(model.train().backbone(x), imagenet.backbone(x), dim=1).mean().item()


def test_feature_preservation_keeps_the_backbone_near_imagenet(place_dataset, tmp_path):
    """preserve_weight > 0: a logged ``preserve`` part, and the trained backbone's features stay
    nearer the ImageNet backbone's than without the term (same seed, same steps, high learning rate)."""
    drift = {}
    for weight in (0.0, 10.0):
        optim = {**FAST, "steps": 16, "lr": 1e-2, "backbone_lr": 1e-2}
        config = load_config(CONFIGS / "student-nokd.yaml", tiny_config(place_dataset, tmp_path / "cache", optim=optim, preserve_weight=weight))
        model, _ = load_checkpoint(train(config, tmp_path / f"w{weight}"))
        drift[weight] = trunk_drift(model, place_dataset)
        steps = [r for r in log_rows(tmp_path / f"w{weight}") if "loss" in r]
        assert all(("preserve" in r) == (weight > 0) for r in steps)
    assert drift[10.0] < 0.5 * drift[0.0], drift
    with pytest.raises(ConfigError, match="preserve_weight"):
        load_config(None, {"preserve_weight": -1})
    with pytest.raises(ConfigError, match="ImageNet"):
        load_config(None, {"preserve_weight": 1, "student": {"imagenet": False}})


def test_imagenet_blend_moves_the_trained_blocks_that_share_back_to_imagenet(place_dataset, tmp_path):
    """imagenet_blend: the saved model's trainable backbone tensors are the blend of the same run's
    trained ones and ImageNet's, the frozen ones untouched, and the blended model validated again."""
    backbones = {}
    for share in (0.0, 0.25):
        optim = {**FAST, "steps": 8, "lr": 1e-2, "backbone_lr": 1e-2}
        config = load_config(CONFIGS / "student-nokd.yaml", tiny_config(place_dataset, tmp_path / "cache", optim=optim, imagenet_blend=share))
        model, _ = load_checkpoint(train(config, tmp_path / f"b{share}"))
        backbones[share] = model.backbone.state_dict()
        blended = [r for r in log_rows(tmp_path / f"b{share}") if "imagenet_blend" in r]
        assert [r["imagenet_blend"] for r in blended] == ([share] if share else [])
        assert all(0 <= r["val_recall@1"] <= 1 for r in blended)
    imagenet = build_model("structvpr++", {"frozen_blocks": 4}, imagenet=True).backbone.state_dict()
    moved = 0
    for key, trained in backbones[0.0].items():
        if trained.is_floating_point():
            torch.testing.assert_close(backbones[0.25][key], trained + 0.25 * (imagenet[key] - trained), rtol=1e-5, atol=1e-6)
            frozen = key.startswith(("_conv_stem", "_bn0")) or int(key.split(".")[1]) < 4
            assert torch.equal(trained, imagenet[key]) == frozen, key
            moved += not frozen
    assert moved > 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="imagenet_blend"):
            load_config(None, {"imagenet_blend": bad})
    with pytest.raises(ConfigError, match="ImageNet"):
        load_config(None, {"imagenet_blend": 0.5, "student": {"imagenet": False}})


def test_average_from_saves_the_mean_of_the_last_steps_weights(easy, place_dataset, monkeypatch):
    """optim.average_from: model.pt holds the mean of the weights after each step from that share of the
    steps on (parameters and BatchNorm statistics), validated again; last.pt keeps the last step's."""
    after_step = []
    take_step = Stage._train_step

    def recording(self, *args):
        record = take_step(self, *args)
        after_step.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return record

    monkeypatch.setattr(Stage, "_train_step", recording)
    optim = {**FAST, "steps": 8, "lr": 1e-2, "backbone_lr": 1e-2, "average_from": 0.5}
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim=optim))
    model, _ = load_checkpoint(train(config, easy / "averaged"))
    assert len(after_step) == 8
    moved = 0
    for key, saved in model.state_dict().items():
        if saved.is_floating_point():
            torch.testing.assert_close(saved, torch.stack([w[key] for w in after_step[4:]]).mean(0), rtol=1e-5, atol=1e-6)
            moved += not torch.allclose(saved, after_step[-1][key])
    assert moved > 0  # the mean is not the last step's weights
    last = load_resume_state(easy / "averaged" / "last.pt")["state_dict"]
    assert all(torch.equal(last[k], v) for k, v in after_step[-1].items())
    plain = load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**optim, "average_from": None}))
    unaveraged, _ = load_checkpoint(train(plain, easy / "plain"))  # averaging only reads the weights: same trajectory
    assert all(torch.equal(v, after_step[-1][k]) for k, v in unaveraged.state_dict().items())
    averaged = [r for r in log_rows(easy / "averaged") if "averaged_steps" in r]
    assert [r["averaged_steps"] for r in averaged] == [4] and 0 <= averaged[0]["val_recall@1"] <= 1
    for bad in (-0.1, 1.0, "half", True):
        with pytest.raises(ConfigError, match="average_from"):
            load_config(None, {"optim": {"average_from": bad}})


def test_heads_first_keeps_the_backbone_still_until_its_share_of_the_steps(easy, place_dataset, monkeypatch):
    """optim.heads_first (LP-FT): the trainable backbone blocks' weights stay as loaded while the heads
    train alone, and move from that share of the steps on; 0 moves them from the first step."""
    def weights_before_and_after_each_step(heads_first: float, out: str) -> list[dict]:
        """[before step 0, after step 0, after step 1, ...]: the trainable weights."""
        seen = []
        take_step = Stage._train_step

        def recording(self, *args):
            if not seen:
                seen.append({k: v.clone() for k, v in self.model.named_parameters() if v.requires_grad})
            record = take_step(self, *args)
            seen.append({k: v.clone() for k, v in self.model.named_parameters() if v.requires_grad})
            return record

        monkeypatch.setattr(Stage, "_train_step", recording)
        optim = {**FAST, "steps": 8, "lr": 1e-2, "backbone_lr": 1e-2, "heads_first": heads_first}
        train(load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim=optim)), easy / out)
        return seen

    def moved(a: dict, b: dict, backbone: bool) -> bool:
        keys = [k for k in a if k.startswith("backbone.") == backbone]
        assert keys
        return not all(torch.equal(a[k], b[k]) for k in keys)

    seen = weights_before_and_after_each_step(0.5, "heads-first")
    assert len(seen) == 9
    assert not any(moved(seen[0], after, backbone=True) for after in seen[1:5])  # steps 0-3: the heads alone
    assert moved(seen[0], seen[5], backbone=True)  # step 4 on: the backbone too
    assert moved(seen[0], seen[1], backbone=False)
    from_start = weights_before_and_after_each_step(0.0, "all-from-start")
    assert moved(from_start[0], from_start[1], backbone=True)
    for bad in (-0.1, 1.0, "half", True):
        with pytest.raises(ConfigError, match="heads_first"):
            load_config(None, {"optim": {"heads_first": bad}})


def test_mix_styles_moves_statistics_between_images_and_keeps_content():
    """MixStyle: each image keeps its normalised content, and its per-channel mean and std become a
    mix of its own and a partner's, between the two; over a few draws some image's really move."""
    torch.manual_seed(0)
    base = torch.randn(2, 5, 4, 6)
    x = torch.stack([base[0], 3 * base[1] + 10])  # image 1 has another "style"
    moved = 0.0
    for _ in range(20):
        y = mix_styles(x)
        assert y.shape == x.shape
        for image in range(2):
            def normalised(t: torch.Tensor) -> torch.Tensor:
                return (t - t.mean(dim=(1, 2), keepdim=True)) / t.std(dim=(1, 2), keepdim=True)
            assert torch.allclose(normalised(y[image]), normalised(x[image]), atol=1e-4)
        means, own = y.mean(dim=(2, 3)), x.mean(dim=(2, 3))
        low, high = own.min(dim=0).values, own.max(dim=0).values
        assert bool(((means >= low - 1e-4) & (means <= high + 1e-4)).all())
        moved = max(moved, float((means - own).abs().max()))
    assert moved > 1.0


def test_mixstyle_hooks_mix_only_in_training_and_training_uses_them(easy, place_dataset):
    """The hooks sit on the trainable blocks but the last and act only in train mode; a run with
    ``mixstyle`` 1 trains other weights than the same run without, and saves no extra tensor."""
    backbone = EfficientNetLite0(16, frozen_blocks=8)
    x = torch.randn(4, 80, 8, 10)  # the frozen part's output
    backbone.eval()
    plain = backbone.forward_trainable(x)
    handles = attach_mixstyle(backbone, 1.0)
    assert len(handles) == 2  # blocks 8 and 9 of 11
    assert torch.equal(backbone.forward_trainable(x), plain)
    backbone.train()
    mixed = backbone.forward_trainable(x)
    for handle in handles:
        handle.remove()
    assert not torch.allclose(mixed, backbone.forward_trainable(x))

    def trained(mixstyle: float, out: str) -> dict:
        config = tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**FAST, "steps": 4}, mixstyle=mixstyle)
        model, _ = load_checkpoint(train(load_config(None, config), easy / out))
        return model.state_dict()

    with_mix, without = trained(1.0, "mixstyle"), trained(0.0, "no-mixstyle")
    assert with_mix.keys() == without.keys()
    assert not all(torch.equal(with_mix[k], without[k]) for k in without if k.startswith("backbone."))
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ConfigError, match="mixstyle"):
            load_config(None, {"mixstyle": bad})


def test_a_resumed_average_is_the_unbroken_runs(easy, place_dataset):
    """The running mean travels in last.pt: a run stopped by its time budget and resumed saves the
    unbroken run's model; resuming with another step count once averaging began is refused."""
    def run(out: Path, **extra) -> dict:
        optim = {**FAST, "steps": 6, "lr": 1e-2, "backbone_lr": 1e-2, "average_from": 0.0, **extra}
        model, _ = load_checkpoint(train(load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim=optim)),
                                         out, resume=(out / "last.pt").exists()))
        return model.state_dict()

    unbroken = run(easy / "avg-unbroken")
    run(easy / "avg-broken", time_budget_min=1e-9)  # stops after its first step
    assert [r["averaged_steps"] for r in log_rows(easy / "avg-broken") if "averaged_steps" in r] == [1]
    resumed = run(easy / "avg-broken")
    assert all(torch.equal(resumed[k], v) for k, v in unbroken.items())
    with pytest.raises(ConfigError, match="averaged the weights"):
        run(easy / "avg-broken", steps=8)
    with pytest.warns(UserWarning, match="before average_from's first step"):
        run(easy / "avg-early", average_from=0.5, time_budget_min=1e-9)
    assert [r["averaged_steps"] for r in log_rows(easy / "avg-early") if "averaged_steps" in r] == [0]


def test_kd_shares_reports_every_distillation_term(easy, place_dataset):
    """benchmarks/kd_shares.py: a positive gradient share for each term and the matching weight."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_shares.py"
    sets = ["image_size=[64,48]", "teacher.input_size=[32,24]", "student.frozen_blocks=4", f"cache_dir={easy / 'cache'}",
            "optim.places_per_batch=6"]
    command = [sys.executable, str(script), "--dataset", str(place_dataset), "--teacher", str(easy / "teacher" / "model.pt"), "--batches", "3"]
    done = subprocess.run(command + [a for s in sets for a in ("--set", s)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    shares = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(shares) == {"relational", "feature", "similarity", "negatives"}
    assert all(float(row[1]) >= 0 for row in shares.values()) and float(shares["relational"][1]) > 0
    assert all("weight for the relational share" in " ".join(row) for name, row in shares.items() if name != "relational" and float(row[1]) > 0)


def test_recipe_of_each_mode():
    assert recipe("structvpr++", True).distill and recipe("structvpr", True).labels
    assert recipe("structvpr++", False) == Recipe("structvpr++", rgb=True, labels=True, mask_loss=True, distill=False)
    assert recipe("structvpr", False) == recipe("baseline", True) == Recipe("global", rgb=True, labels=False, mask_loss=False, distill=False)
    assert recipe("teacher", True) == Recipe("teacher", rgb=False, labels=True, mask_loss=False, distill=False)


def test_baseline_head_has_the_conv_head_of_the_label_aware_student(place_dataset, tmp_path):
    def model_of(name: str) -> nn.Module:
        config = load_config(CONFIGS / name, tiny_config(place_dataset, tmp_path / "cache"))
        return Stage(config, "student", tmp_path, setup_context("cpu"), None).model.eval()

    head, plain = model_of("baseline-head.yaml"), model_of("baseline.yaml")
    conv, norm, act = head.local
    assert (conv.kernel_size, conv.out_channels, type(norm), type(act)) == ((1, 1), 256, nn.BatchNorm2d, nn.ReLU6)
    assert head.aggregator.proj.in_features == 256 and isinstance(plain.local, nn.Identity)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "head.pt", head, (64, 48), {}))
    x = torch.randn(2, 3, 48, 64)
    assert torch.allclose(loaded(x), head(x), atol=1e-5)


def test_gradient_ratio_compares_gradient_norms_of_trainable_weights():
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)  # frozen: its gradient must not count
    term = model.weight @ torch.tensor([3.0, 4.0]) + 100 * model.bias  # d/dw = (3, 4): norm 5
    reference = model.weight @ torch.tensor([0.0, 2.0])  # norm 2
    assert gradient_ratio(term.sum(), reference.sum(), model) == pytest.approx(2.5)


def test_resume_continues_from_last_step(easy, place_dataset):
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**FAST, "steps": 12}))
    out = easy / "resume"
    train(config, out)
    longer = load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**FAST, "steps": 20}))
    train(longer, out, resume=True)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[0] == 0 and max(steps) == 19 and 12 in steps and steps.count(0) == 1


def test_resume_refuses_a_run_configured_otherwise(easy, place_dataset):
    """last.pt keeps its run's config: another model or loss setting is a ConfigError naming them, not a
    RuntimeError from load_state_dict or a silent change. A last.pt of before is resumed with a warning,
    and weights of another model in it are a ModelError."""
    out = easy / "resume-config"
    train(load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**FAST, "steps": 2})), out)
    other = load_config(None, tiny_config(place_dataset, easy / "cache", mode="baseline", optim={**FAST, "steps": 4, "triplet_margin": 0.2},
                                           global_student={"frozen_blocks": 4, "dim": 64}))
    with pytest.raises(ConfigError, match=r"last\.pt was trained with other settings of global_student\.dim, optim\.triplet_margin:"):
        train(other, out, resume=True)
    state = load_resume_state(out / "last.pt")
    del state["config"]
    save_resume_state(out / "last.pt", state)
    with pytest.warns(UserWarning, match="does not record the config"), pytest.raises(ModelError, match=r"last\.pt does not hold a resumable"):
        train(other, out, resume=True)


def test_a_resumed_run_computes_what_an_unbroken_run_does(easy, place_dataset):
    """last.pt keeps the rank memory too: a resumed run ranks its first anchors among the batches before
    them, as the run it continues does, so its sample weights and losses are that run's."""
    teacher = str(easy / "teacher" / "model.pt")

    def run(steps: int, out: Path, resume: bool = False) -> dict:
        optim = {**FAST, "steps": steps, "warmup_steps": 4, "log_every": 1}  # in the warm-up the rate does not depend on steps
        train(load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", teacher_checkpoint=teacher, optim=optim)),
              out, resume=resume)
        return {r["step"]: {k: v for k, v in r.items() if k != "time_s"} for r in log_rows(out) if "loss" in r}

    unbroken = run(4, easy / "unbroken")
    run(2, easy / "broken")
    assert run(4, easy / "broken", resume=True) == unbroken


def test_bad_configs_raise(tmp_path, place_dataset):
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, {"optim": {"stepz": 3}})
    with pytest.raises(ConfigError, match="mode"):
        load_config(None, {"mode": "magic"})
    with pytest.raises(ConfigError, match="memory_batches"):
        load_config(None, {"distill": {"samples": {"memory_batches": -1}}})
    with pytest.raises(ConfigError, match="distill.weight"):
        load_config(None, {"distill": {"weight": -0.5}})
    with pytest.raises(ConfigError, match="teacher"):
        train(load_config(None, tiny_config(place_dataset, tmp_path, mode="structvpr")), tmp_path / "x", stages=["student"])
    with pytest.raises(DatasetError):
        PlaceBatchSampler([np.arange(4)] * 3, places_per_batch=4, images_per_place=2)


def test_sampler_batches_are_place_balanced_and_rank_disjoint():
    places = [np.arange(i * 5, i * 5 + 5) for i in range(8)]
    ranks = [iter(PlaceBatchSampler(places, 2, 3, seed=1, rank=r, world=2)) for r in range(2)]
    (_, idx0, lab0), (_, _, lab1) = next(ranks[0]), next(ranks[1])
    assert len(idx0) == 6 and np.bincount(lab0).max() == 3 and set(lab0).isdisjoint(lab1)
    assert all(i // 5 == label for i, label in zip(idx0, lab0))


@pytest.mark.slow
def test_distributed_two_cpu_processes(easy, place_dataset):
    """torchrun --nproc_per_node=2 with gloo runs a few synchronised steps."""
    config_path = easy / "ddp.yaml"
    config = tiny_config(place_dataset, easy / "cache", mode="baseline", device="cpu", optim={**FAST, "steps": 6, "places_per_batch": 3})
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "structvpr_edge.cli", "train", "--config", str(config_path), "--out", str(easy / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (easy / "ddp" / "model.pt").exists()


def test_dotted_overrides_and_shipped_configs():
    from structvpr_edge.train.config import dotted_overrides

    overrides = dotted_overrides(["distill.samples.enabled=false", "optim.steps=10", "mode=baseline"])
    assert overrides == {"distill": {"samples": {"enabled": False}}, "optim": {"steps": 10}, "mode": "baseline"}
    with pytest.raises(ConfigError):
        dotted_overrides(["steps"])
    for wrong in ("distill.warmup_steps=abc", "distill.samples.enabled=1", "optim.steps=2.5"):  # typed, not a TypeError mid-run
        with pytest.raises(ConfigError, match="must be"):
            load_config(None, dotted_overrides([wrong]))
    # YAML 1.1 (PyYAML) reads 5e-05 as a string; a float option takes it as the number everyone means, nowhere else
    assert load_config(None, dotted_overrides(["optim.backbone_lr=5e-05", "optim.lr=2E3"])).optim.backbone_lr == 5e-05
    for wrong in ("optim.steps=5e2", "optim.lr=5e", "optim.lr=e5"):
        with pytest.raises(ConfigError, match="must be"):
            load_config(None, dotted_overrides([wrong]))
    configs = Path(__file__).resolve().parents[1] / "structvpr_edge" / "configs"
    modes = {path.stem: load_config(path).mode for path in configs.glob("*.yaml")}
    assert modes["structvprpp"] == "structvpr++" and modes["teacher"] == "teacher" and modes["gpu"] == "structvpr++"


def scaled_weights(stage: Stage, steps: tuple[int, ...]) -> dict[str, list[float]]:
    """weight * schedule(step) of each term of the stage's objective."""
    return {term.name: [term.weight * term.schedule(step) for step in steps] for term in stage.terms}


def test_mask_loss_decay_schedule(easy, place_dataset):
    teacher = easy / "teacher" / "model.pt"
    for decay, expected in ((True, [0.5, 0.25, 0.0]), (False, [0.5, 0.5, 0.5])):
        config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", mask_loss_decay=decay, teacher_checkpoint=str(teacher)))
        stage = Stage(config, "student", easy / "decay", setup_context("cpu"), teacher)
        assert scaled_weights(stage, (0, 12, 24))["mask"] == expected


def test_distill_warmup_schedule(easy, place_dataset):
    teacher = easy / "teacher" / "model.pt"
    for warmup, expected in ((10, [0.0, 0.5, 1.0, 1.0]), (0, [1.0, 1.0, 1.0, 1.0])):
        config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", distill={"warmup_steps": warmup, "negative_weight": 5.0},
                                               teacher_checkpoint=str(teacher)))
        stage = Stage(config, "student", easy / "kd-warmup", setup_context("cpu"), teacher)
        weights = scaled_weights(stage, (0, 5, 10, 24))
        assert weights["distill/relational"] == expected and weights["distill/negatives"] == [5 * e for e in expected]
        assert weights["metric"] == [1.0] * 4
    # the scale reaches the loss: same batch, fixed sample weights, so only the step differs
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", distill={"warmup_steps": 10, "samples": {"enabled": False}}, teacher_checkpoint=str(teacher)))
    stage = Stage(config, "student", easy / "kd-warmup", setup_context("cpu"), teacher)
    _, indices, places = next(iter(PlaceBatchSampler(stage.groups.places, 4, 2)))
    labels = torch.from_numpy(places)
    with torch.no_grad():
        distill = [stage.losses(stage.parts, indices, labels, step)[0]["distill"].item() for step in (0, 5, 10)]
    assert distill[0] == 0.0 and distill[2] > 0 and distill[1] == pytest.approx(distill[2] / 2, rel=1e-4)
    with pytest.raises(ConfigError):
        load_config(None, tiny_config(place_dataset, easy / "cache", distill={"warmup_steps": -1}))


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_old_config_is_converted_with_a_warning(tmp_path):
    """Version 1 (no config_version): distill.weight multiplied tau^2 KL and 0 switched the teacher
    off; global_student.feature_hw was set by hand. Version 2 reads as written, silently."""
    cases = [({"weight": 100}, {"enabled": True, "weight": 1.0}), ({"weight": 10, "temperature": 0.2}, {"weight": 0.4, "temperature": 0.2}),
             ({"temperature": 0.05}, {"weight": 0.25}), ({"weight": 0, "negative_weight": 5}, {"enabled": False})]
    for old, new in cases:
        with pytest.warns(OldConfigWarning, match="version 1") as caught:
            config = load_config(write_yaml(tmp_path / "old.yaml", {"distill": old}))
        assert str(tmp_path / "old.yaml") in str(caught[0].message)
        assert all(getattr(config.distill, key) == pytest.approx(value) for key, value in new.items()), (old, config.distill)
    with pytest.warns(OldConfigWarning, match="feature_hw"):
        assert load_config(write_yaml(tmp_path / "hw.yaml", {"global_student": {"feature_hw": [8, 10]}})).global_student.feature_hw == (8, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(write_yaml(tmp_path / "new.yaml", {"config_version": 2, "distill": {"weight": 100}})).distill.weight == 100
        assert load_config(tmp_path / "new.yaml", {"distill": {"weight": 3}}).distill.weight == 3  # overrides are of the current version
        for path in CONFIGS.glob("*.yaml"):
            load_config(path)
    assert not load_config(CONFIGS / "student-nokd.yaml").distill.enabled


def test_config_errors_of_version_2(tmp_path):
    with pytest.raises(ConfigError, match="config_version"):
        load_config(write_yaml(tmp_path / "future.yaml", {"config_version": 3}))
    with pytest.raises(ConfigError, match="feature_hw is derived"):
        load_config(write_yaml(tmp_path / "hw.yaml", {"config_version": 2, "global_student": {"feature_hw": [8, 10]}}))
    with pytest.raises(ConfigError, match="feature_hw is derived"):
        load_config(None, {"global_student": {"feature_hw": [8, 10]}})
    with pytest.raises(ConfigError, match="distill.enabled=false"):
        load_config(None, {"mode": "structvpr", "distill": {"weight": 0}})
    assert load_config(None, {"mode": "baseline", "distill": {"weight": 0}}).distill.weight == 0  # no teacher in that mode
    with pytest.raises(ConfigError, match="image_size"):  # what feature_hw is derived from
        load_config(None, {"image_size": "320x240"})


def test_feature_hw_follows_image_size():
    """MixVPR's token mixing is built for the backbone's features of the configured image size."""
    for size, hw in (([64, 48], (3, 4)), ([160, 120], (8, 10)), ([320, 240], (15, 20))):
        config = load_config(None, {"mode": "baseline", "image_size": size, "global_student": {"aggregator": "mixvpr", "frozen_blocks": 11}})
        assert config.global_student.feature_hw == hw
        model = build_model("global", dataclasses.asdict(config.global_student)).eval()
        assert model(torch.zeros(1, 3, size[1], size[0])).shape == (1, 512)


def without_keys_added_since(config: dict, stored: dict) -> dict:
    """``config`` with only the keys ``stored`` has, at every level."""
    return {k: without_keys_added_since(v, stored[k]) if isinstance(v, dict) else v for k, v in config.items() if k in stored}


@pytest.mark.parametrize("name", ["structvprpp", "student-nokd", "baseline"])
def test_a_shipped_model_reads_as_its_config_and_gives_the_same_descriptors(name):
    """A shipped checkpoint's stored config reads as a config (one of version 1 converted, with a
    warning), and the model it builds, with the shipped weights, gives the shipped model's descriptors."""
    shipped, meta = load_checkpoint(name)
    stored = meta["train_config"]
    if "config_version" in stored:  # written since version 2: read as it is (an option added since takes its default)
        config = load_config(shipped_path(name))
        assert without_keys_added_since(config_to_dict(config), stored) == stored
    else:
        with pytest.warns(OldConfigWarning):
            config = load_config(shipped_path(name))
        assert config.mode == stored["mode"] and config.distill.enabled == (stored["distill"]["weight"] > 0)
        if config.distill.enabled:
            assert config.distill.weight == pytest.approx(stored["distill"]["weight"] * stored["distill"]["temperature"] ** 2)
    section = {"structvpr++": "student", "global": "global_student"}[meta["model_type"]]
    rebuilt = build_model(meta["model_type"], dataclasses.asdict(getattr(config, section)))
    rebuilt.load_state_dict(shipped.state_dict())
    x = torch.randn(2, 3, *reversed(config.image_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), shipped(x))


def test_a_checkpoint_config_reads_back_as_the_same_config(tmp_path):
    config = load_config(None, {"mode": "baseline", "image_size": [64, 48], "distill": {"weight": 0.3}, "global_student": {"dim": 64}})
    model = build_model("global", dataclasses.asdict(config.global_student))
    path = save_checkpoint(tmp_path / "model.pt", model, config.image_size, config_to_dict(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(path) == config


def test_the_frozen_feature_cache_is_keyed_by_the_frozen_weights(place_dataset, tmp_path):
    """Two backbones of other frozen weights (random draws here; ImageNet and random alike) must not share a
    cache: a run would train on one backbone's features and ship another's frozen blocks."""
    paths = load_dataset(place_dataset, "train").database.paths[:4]
    for seed, same_padding in ((0, False), (1, False), (0, False), (0, True)):
        torch.manual_seed(seed)
        backbone = EfficientNetLite0(stride=16, frozen_blocks=2, same_padding=same_padding)
        cached = frozen_feature_array(backbone, paths, (64, 48), tmp_path)
        with torch.inference_mode():
            own = backbone.eval().forward_frozen(normalize_images(read_many(read_rgb, paths, (64, 48)))).numpy()
        np.testing.assert_allclose(cached.astype(np.float32), own, rtol=1e-2, atol=1e-2)
    assert len(list(tmp_path.glob("frozen-*.npy"))) == 3  # the third backbone is the first again (its cache reused); the fourth pads otherwise


def test_photometric_relights_a_share_of_the_training_images_the_same_way_in_every_run(place_dataset, tmp_path):
    """``photometric``: that share of the images is cached under another light, the same images and
    light in every run (a fresh cache rebuilds the same pixels), in a cache of its own."""
    paths = load_dataset(place_dataset, "train").database.paths
    no_frozen_blocks = SimpleNamespace(frozen_blocks=0)  # the cache then holds the images themselves
    plain = frozen_feature_array(no_frozen_blocks, paths, (64, 48), tmp_path / "a")
    half = frozen_feature_array(no_frozen_blocks, paths, (64, 48), tmp_path / "a", relight=0.5)
    every = frozen_feature_array(no_frozen_blocks, paths, (64, 48), tmp_path / "a", relight=1.0)
    relit = [np.array([not np.array_equal(a[i], plain[i]) for i in range(len(paths))]) for a in (half, every)]
    assert 0 < relit[0].sum() < len(paths) and relit[1].all(), [r.sum() for r in relit]
    assert len(list((tmp_path / "a").glob("images-*.npy"))) == 3
    np.testing.assert_array_equal(frozen_feature_array(no_frozen_blocks, paths, (64, 48), tmp_path / "b", relight=0.5), half)
    for share in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="photometric"):
            load_config(None, {"photometric": share})


def test_a_bf16_forward_leaves_ranks_and_losses_in_float32(easy, place_dataset, monkeypatch):
    """On CUDA the forward passes run under bfloat16 autocast; similarities in bf16 step by 0.004 near 1,
    so the ranks behind the sample weights would tie. CPU autocast stands in for CUDA's here: the batch
    the terms read, the sample groups and the losses must be those of float32 descriptors."""
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", distill={"negative_weight": 1.0}))
    stage = Stage(config, "student", easy / "bf16", setup_context("cpu"), easy / "teacher" / "model.pt")
    monkeypatch.setattr(stage, "mixed_precision", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    _, indices, labels = next(iter(stage.sampler()))
    with torch.no_grad():
        terms, groups = stage.losses(stage.parts, indices, torch.from_numpy(labels), step=10)
        batch = stage.batch(stage.parts, indices, torch.from_numpy(labels))
    tensors = [batch.parts.descriptor, batch.parts.presence, batch.parts.mask_logits, batch.teacher.descriptor, *terms.values()]
    assert all(t.dtype == torch.float32 for t in tensors), [t.dtype for t in tensors]


def test_neighbouring_places_are_marked_in_every_batch(easy, place_dataset):
    """neighbour_m 150 on places 100 m apart: a place's neighbours are the places beside it, in the
    batch (metric loss, teacher-ranked negatives) and among the rank memory's keys (sample weights)."""
    config = load_config(None, tiny_config(place_dataset, easy / "cache", mode="structvpr++", neighbour_m=150, optim={**FAST, "steps": 3},
                                           distill={"negative_weight": 1.0}))
    stage = Stage(config, "student", easy / "neighbours", setup_context("cpu"), easy / "teacher" / "model.pt")
    train_split = load_dataset(place_dataset, "train")
    east = np.concatenate([train_split.database.utm, train_split.queries.utm])[:, 0]  # the rows the sampler indexes
    _, indices, labels = next(iter(stage.sampler()))
    batch = stage.batch(stage.parts, indices, torch.from_numpy(labels))
    street = torch.from_numpy(east[indices] // 100)
    assert torch.equal(batch.near, (street[:, None] - street[None, :]).abs() == 1)
    assert batch.near.any()
    assert stage.run(resume=False).exists()
    assert load_config(None, tiny_config(place_dataset, easy / "cache")).neighbour_m == 0  # off unless asked
    with pytest.raises(ConfigError, match="neighbour_m"):
        load_config(None, {"neighbour_m": -1})
    with pytest.raises(ConfigError, match="speed_mps"):
        load_config(None, {"real": {"speed_mps": 0}})
