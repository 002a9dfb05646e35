"""Training runs a few steps on a tiny learnable dataset (tests/conftest.py: place_dataset)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ConfigError, DatasetError
from structvpr_edge.eval.evaluate import evaluate
from structvpr_edge.eval.models import load_extractor
from structvpr_edge.train.config import load_config
from structvpr_edge.train.data import PlaceBatchSampler
from structvpr_edge.train.trainer import Stage, setup_context, train

FAST = {"steps": 24, "places_per_batch": 6, "val_every": 12, "log_every": 4, "warmup_steps": 4, "checkpoint_every": 12}


def tiny_config(dataset: Path, cache: Path, **overrides) -> dict:
    config = {
        "dataset": str(dataset), "image_size": [64, 48], "cache_dir": str(cache), "teacher": {"input_size": [32, 24]},
        "optim": dict(FAST), "teacher_optim": dict(FAST), "student": {"frozen_blocks": 4},
        "global_student": {"frozen_blocks": 4, "dim": 128},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def trained(place_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config_path = out / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(place_dataset, out / "cache", mode="structvpr++")))
    assert main(["train", "--config", str(config_path), "--out", str(out / "full")]) == 0
    return out


def test_two_stage_training_writes_everything(trained, place_dataset):
    run = trained / "full"
    for name in ("model.pt", "last.pt", "log.jsonl", "curves.png", "teacher/model.pt", "teacher/curves.png"):
        assert (run / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("val_recall@1" in r for r in rows)
    shares = [r["group_shares"] for r in rows if "group_shares" in r]
    assert shares and all(abs(sum(s.values()) - 1) < 1e-6 for s in shares)
    assert {"metric", "mask", "distill"} <= set(next(r for r in rows if "loss" in r))
    result = evaluate(load_extractor(str(run / "model.pt")), load_dataset(place_dataset))
    assert result.recall["1"] >= 0.8  # the tiny places are easy; an untrained student is not this good


def test_teacher_checkpoint_evaluates_on_labels(trained, place_dataset):
    result = evaluate(load_extractor(str(trained / "full" / "teacher" / "model.pt")), load_dataset(place_dataset))
    assert result.recall["1"] >= 0.8


@pytest.mark.parametrize("mode", ["baseline", "structvpr"])
def test_other_modes_reuse_the_teacher(trained, place_dataset, mode):
    config = load_config(None, tiny_config(place_dataset, trained / "cache", mode=mode, teacher_checkpoint=str(trained / "full" / "teacher" / "model.pt")))
    model = train(config, trained / mode)
    rows = [json.loads(line) for line in (trained / mode / "log.jsonl").read_text().splitlines()]
    assert ("distill" in next(r for r in rows if "loss" in r)) == (mode == "structvpr")
    assert model.exists()


def test_resume_continues_from_last_step(trained, place_dataset):
    config = load_config(None, tiny_config(place_dataset, trained / "cache", mode="baseline", optim={**FAST, "steps": 12}))
    out = trained / "resume"
    train(config, out)
    longer = load_config(None, tiny_config(place_dataset, trained / "cache", mode="baseline", optim={**FAST, "steps": 20}))
    train(longer, out, resume=True)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps[0] == 0 and max(steps) == 19 and 12 in steps and steps.count(0) == 1


def test_bad_configs_raise(tmp_path, place_dataset):
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, {"optim": {"stepz": 3}})
    with pytest.raises(ConfigError, match="mode"):
        load_config(None, {"mode": "magic"})
    with pytest.raises(ConfigError, match="memory_batches"):
        load_config(None, {"distill": {"samples": {"memory_batches": -1}}})
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


def test_distributed_two_cpu_processes(trained, place_dataset):
    """torchrun --nproc_per_node=2 with gloo runs a few synchronised steps."""
    config_path = trained / "ddp.yaml"
    config = tiny_config(place_dataset, trained / "cache", mode="baseline", device="cpu", optim={**FAST, "steps": 6, "places_per_batch": 3})
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "structvpr_edge.cli", "train", "--config", str(config_path), "--out", str(trained / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (trained / "ddp" / "model.pt").exists()


def test_dotted_overrides_and_shipped_configs():
    from structvpr_edge.train.config import dotted_overrides

    overrides = dotted_overrides(["distill.samples.enabled=false", "optim.steps=10", "mode=baseline"])
    assert overrides == {"distill": {"samples": {"enabled": False}}, "optim": {"steps": 10}, "mode": "baseline"}
    with pytest.raises(ConfigError):
        dotted_overrides(["steps"])
    configs = Path(__file__).resolve().parents[1] / "structvpr_edge" / "configs"
    modes = {path.stem: load_config(path).mode for path in configs.glob("*.yaml")}
    assert modes["structvprpp"] == "structvpr++" and modes["teacher"] == "teacher" and modes["gpu"] == "structvpr++"


def test_mask_loss_decay_schedule(trained, place_dataset):
    teacher = trained / "full" / "teacher" / "model.pt"
    for decay, expected in ((True, [0.5, 0.25, 0.0]), (False, [0.5, 0.5, 0.5])):
        config = load_config(None, tiny_config(place_dataset, trained / "cache", mode="structvpr++", mask_loss_decay=decay, teacher_checkpoint=str(teacher)))
        stage = Stage(config, "student", trained / "decay", setup_context("cpu"), teacher)
        assert [stage.mask_weight(step) for step in (0, 12, 24)] == expected
