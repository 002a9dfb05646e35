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
from structvpr_edge.bench import table
from structvpr_edge.bench.table import (CONFIGS, ROWS, Row, last_val_recall, median_kd_grad_ratio, parse_row, parse_seeds, run_dir, summarize,
                                        table_results, train_command, train_run, train_table)


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


@pytest.fixture
def recording_trainer(monkeypatch) -> list[str]:
    """train_run's process replaced by the CLI in this process, whose trainer trains nothing: it
    saves a small checkpoint recording the config the CLI read (as the trainer records it) and a
    val R@1 of 0.5. Returns the run folders trained."""
    from structvpr_edge import cli
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.teacher import SegTeacher
    from structvpr_edge.train import trainer
    from structvpr_edge.train.config import config_to_dict

    trained: list[str] = []

    def record(config, out, stages=None, resume=False) -> Path:
        (Path(out) / "log.jsonl").write_text(json.dumps({"step": 0, "val_recall@1": 0.5}) + "\n")
        return save_checkpoint(Path(out) / "model.pt", SegTeacher(), (64, 48), config_to_dict(config))

    def run(command: list[str], **kwargs) -> None:
        trained.append(command[command.index("--out") + 1])
        assert cli.main(command[3:]) == 0

    monkeypatch.setattr(trainer, "train", record)
    monkeypatch.setattr(table.subprocess, "run", run)
    return trained


ROWS_KD = [ROWS["student-nokd"], ROWS["structvprpp"]]


def test_a_finished_run_of_another_config_is_refused_not_reported(recording_trainer, tmp_path):
    """Run folders are named by row, steps and seed: a call with other --set / --distill-set into the
    same --runs would have trained nothing and reported the first call's runs as its own."""
    runs, kd, small = tmp_path / "runs", ("distill.weight=0.1",), ("image_size=[160,120]",)
    train_table(ROWS_KD, "data/x", [0], 10, runs, distill_overrides=kd, overrides=small)
    assert sorted(recording_trainer) == [str(runs / name / "s0") for name in ("structvprpp-10", "student-nokd-10", "teacher-10")]
    recording_trainer.clear()
    train_table(ROWS_KD, "data/x", [0], 10, runs, distill_overrides=kd, overrides=small)  # the same call resumes: nothing to train
    results = table_results(ROWS_KD, "data/x", [0], 10, 10, runs, distill_overrides=kd, overrides=small)
    assert list(results) == ["teacher", "student-nokd", "structvprpp"] and all(r[0]["val"] == 0.5 for r in results.values())

    with pytest.raises(ConfigError, match=r"teacher-10/s0 holds a finished run .*image_size: \(160, 120\) there, \(320, 240\) in this call"):
        train_table(ROWS_KD, "data/x", [0], 10, runs, distill_overrides=kd, overrides=("image_size=[320,240]",))
    with pytest.raises(ConfigError, match=r"structvprpp-10/s0 holds a finished run .*distill.weight: 0.1 there, 0.3 in this call"):
        train_table(ROWS_KD, "data/x", [0], 10, runs, distill_overrides=("distill.weight=0.3",), overrides=small)
    with pytest.raises(ConfigError, match=r"structvprpp-10/s0 .*distill.weight: 0.1 there, 1.0 in this call"):
        table_results(ROWS_KD, "data/x", [0], 10, 10, runs)
    assert recording_trainer == []


def test_a_row_short_of_its_requested_seeds_says_so(recording_trainer, tmp_path):
    """Seed 1 was stopped (a log, no model): the row reads 1 of 2 seeds, not a whole row of one."""
    runs = tmp_path / "runs"
    train_table([ROWS["student-nokd"]], "data/x", [0], 10, runs)
    stopped = run_dir(runs, ROWS["student-nokd"], 10, 1)
    stopped.mkdir()
    (stopped / "log.jsonl").write_text(json.dumps({"step": 9, "val_recall@1": 0.1}) + "\n")
    results = table_results([ROWS["student-nokd"]], "data/x", [0, 1], 10, 10, runs)
    assert results["student-nokd"][1] == {"seed": 1, "finished": False}
    assert summarize(results, ["val"]).splitlines()[-1] == "| student-nokd | 1 of 2 | 50.0 ± 0.0 (n=1 of 2 requested) |"


def test_parse_seeds():
    assert (parse_seeds("3"), parse_seeds("1,"), parse_seeds("0,2,5")) == ([0, 1, 2], [1], [0, 2, 5])
    for bad in ("a,b", "0", ","):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
