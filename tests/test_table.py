"""The method table's bookkeeping (structvpr_edge.bench.table), without training anything."""
import json
import sys
import tarfile
import time
from pathlib import Path

from dataclasses import replace

import pytest

from structvpr_edge.errors import ConfigError
from structvpr_edge.train.config import DistillConfig, dotted_overrides, load_config
from structvpr_edge.bench.table import (CONFIGS, ROWS, Row, last_val_recall, median_kd_grad_ratio, parse_row, run_dir, summarize,
                                        train_command, train_run)


def test_parse_row_names_and_variants():
    assert parse_row("structvprpp") == ROWS["structvprpp"] and parse_row("structvprpp").distils
    assert not parse_row("student-nokd").distils and not parse_row("baseline-head").distils
    assert parse_row("global-kd").overrides == ("distill.per_group=false", "distill.samples.enabled=false", "distill.negative_weight=0", "distill.warmup_steps=0")
    variant = parse_row("kd-w10=structvprpp.yaml:distill.weight=10:distill.temperature=0.2")
    assert variant == Row("kd-w10", "structvprpp.yaml", ("distill.weight=10", "distill.temperature=0.2")) and variant.distils
    assert not parse_row("off=structvprpp.yaml:distill.enabled=false").distils and parse_row("neg=structvprpp.yaml:distill.weight=0").distils
    assert all((CONFIGS / row.config).is_file() for row in ROWS.values())
    with pytest.raises(ConfigError, match="unknown row"):
        parse_row("magic")
    with pytest.raises(ConfigError, match="no config"):
        parse_row("x=missing.yaml")


def test_distilling_rows_add_one_part_each():
    """global-kd -> + label split -> + sample weights (relational-kd) -> + teacher-ranked negatives
    (negatives-kd) -> + KD warm-up (structvprpp)."""
    def distill(name: str) -> DistillConfig:
        row = ROWS[name]
        return load_config(CONFIGS / row.config, dotted_overrides(list(row.overrides))).distill

    full = distill("structvprpp")
    assert full.negative_weight > 0 and full.per_group and full.samples.enabled and full.warmup_steps > 0
    assert distill("negatives-kd") == replace(full, warmup_steps=0)
    assert distill("relational-kd") == replace(distill("negatives-kd"), negative_weight=0.0)
    assert distill("group-kd") == replace(distill("relational-kd"), samples=replace(full.samples, enabled=False))
    assert distill("global-kd") == replace(distill("group-kd"), per_group=False)
    assert load_config(CONFIGS / "gpu.yaml").distill == full  # the GPU recipe trains the same method


def test_run_dir_and_train_command():
    assert run_dir(Path("runs"), ROWS["baseline-head"], 1000, 2) == Path("runs/baseline-head-1000/s2")
    command = train_command(ROWS["global-kd"], "data/x", 300, 1, Path("out"), Path("t/model.pt"))
    assert command[:4] == [sys.executable, "-m", "structvpr_edge.cli", "train"]
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets == ["dataset=data/x", "seed=1", "optim.steps=300", "teacher_checkpoint=t/model.pt",
                    "distill.per_group=false", "distill.samples.enabled=false", "distill.negative_weight=0", "distill.warmup_steps=0"]
    assert "teacher_optim.steps=300" in train_command(ROWS["teacher"], "data/x", 300, 0, Path("out"), None)


def test_finished_or_late_runs_are_not_started(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.pt").write_bytes(b"")
    failing = [sys.executable, "-c", "raise SystemExit(1)"]
    train_run(failing, tmp_path / "done", threads=1)
    train_run(failing, tmp_path / "late", threads=1, deadline=0.0)
    assert not (tmp_path / "done" / "train.log").exists() and not (tmp_path / "late").exists()



def test_a_run_still_going_at_the_stop_time_is_killed(tmp_path):
    began = time.time()
    train_run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow", threads=1, stop=began + 1)
    assert time.time() - began < 30 and not (tmp_path / "slow" / "model.pt").exists()
    assert "stopped" in (tmp_path / "slow" / "train.log").read_text()

def test_log_readers(tmp_path):
    rows = [{"step": 0, "loss": 1.0, "kd_grad_ratio": 0.2}, {"step": 9, "val_recall@1": 0.4}, {"step": 10, "loss": 0.7, "kd_grad_ratio": 5e9},
            {"step": 19, "loss": 0.5, "kd_grad_ratio": 0.4}, {"step": 19, "val_recall@1": 0.55}]  # 5e9: a step that mined no pair
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert last_val_recall(tmp_path) == 0.55 and median_kd_grad_ratio(tmp_path) == pytest.approx(0.4)
    assert last_val_recall(tmp_path / "missing") is None and median_kd_grad_ratio(tmp_path / "missing") is None


def test_summarize_prints_mean_and_std_over_seeds():
    results = {"student-nokd": [{"seed": 0, "val": 0.5, "test": 0.6}, {"seed": 1, "val": 0.7, "test": 0.64}],
               "structvprpp": [{"seed": 0, "val": 0.9, "test": None}]}
    assert summarize(results, ["val", "test"]).splitlines() == [
        "| row | seeds | val | test |",
        "| --- | --- | --- | --- |",
        "| student-nokd | 2 | 60.0 ± 10.0 | 62.0 ± 2.0 |",
        "| structvprpp | 1 | 90.0 ± 0.0 |  |",
    ]


def test_gpu_table_packs_what_a_reader_needs_and_reads_val(tmp_path):
    """bench/gpu_table.py: one tar per row with model, log and console output (no resume
    state, no caches, since only 64 MiB come back), and each run's last val R@1."""
    from structvpr_edge.bench import gpu_table

    assert gpu_table.image_size(parse_row("x=structvprpp.yaml:image_size=[320,240]")) == (320, 240)
    assert gpu_table.image_size(ROWS["structvprpp"]) == (160, 120)
    finished, stopped = tmp_path / "runs" / "row-10" / "s0", tmp_path / "runs" / "row-10" / "s1"
    for run in (finished, stopped):
        run.mkdir(parents=True)
        (run / "log.jsonl").write_text(json.dumps({"step": 9, "val_recall@1": 0.5}) + "\n")
        (run / "last.pt").write_bytes(b"resume state")
    (finished / "model.pt").write_bytes(b"weights")
    out = tmp_path / "out"
    out.mkdir()
    gpu_table.pack(tmp_path / "runs", "row-10", [0, 1], out)
    with tarfile.open(out / "row-10.tgz") as tar:
        assert sorted(tar.getnames()) == ["row-10/s0/log.jsonl", "row-10/s0/model.pt", "row-10/s1/log.jsonl"]
    table = gpu_table.val_table(tmp_path / "runs", ["row-10"], [0, 1])
    assert [(r["finished"], r["val"]) for r in table["row-10"]] == [(True, 0.5), (False, 0.5)]
