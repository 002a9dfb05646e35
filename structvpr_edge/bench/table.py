"""The method table (benchmarks/method_table.py, gpu_table.py): every row trained with the same budget on several seeds, then read as
mean +- std, val and test apart.

Protocol (docs/RESULTS.md): settings and shipped models are chosen on ``val`` (the R@1 each run
logs at its last step); ``test`` is read once per finished model, for the report. Row ``r`` of
seed ``s`` that distils uses the teacher of seed ``s``. Runs go to ``RUNS/ROW-STEPS/sSEED``; a
finished run (``model.pt`` present) is never trained again, so an interrupted table resumes. The
folder's name holds neither the options nor the dataset, so a finished run whose recorded
``train_config`` differs from what the call would train is refused, never reported as the call's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..models.checkpoint import load_checkpoint
from ..train.config import config_to_dict, differing_keys, dotted_overrides, flat_config, load_config, recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Row:
    name: str
    config: str  # a file in structvpr_edge/configs
    overrides: tuple[str, ...] = ()

    @property
    def distils(self) -> bool:
        """The trainer's own rule, on the row's config with its overrides."""
        config = load_config(CONFIGS / self.config, dotted_overrides(list(self.overrides)))
        return recipe(config.mode, config.distill.enabled).distill


NO_WEIGHTS = "distill.samples.enabled=false"
RELATIONAL_ONLY = "distill.negative_weight=0"
NO_WARMUP = "distill.warmup_steps=0"
# Each distilling row adds one part to the row above it; structvprpp is the full method.
ROWS: dict[str, Row] = {row.name: row for row in (
    Row("teacher", "teacher.yaml"),
    Row("baseline", "baseline.yaml"),
    Row("baseline-head", "baseline-head.yaml"),
    Row("student-nokd", "student-nokd.yaml"),
    Row("global-kd", "structvprpp.yaml", ("distill.per_group=false", NO_WEIGHTS, RELATIONAL_ONLY, NO_WARMUP)),
    Row("group-kd", "structvprpp.yaml", (NO_WEIGHTS, RELATIONAL_ONLY, NO_WARMUP)),
    Row("relational-kd", "structvprpp.yaml", (RELATIONAL_ONLY, NO_WARMUP)),  # + sample weights: StructVPR++ before issue 9's negatives
    Row("negatives-kd", "structvprpp.yaml", (NO_WARMUP,)),  # + teacher-ranked hard negatives: StructVPR++ before the KD warm-up
    Row("structvprpp", "structvprpp.yaml"),  # + the KD warm-up
    Row("structvpr", "structvpr.yaml"),
)}


def parse_row(spec: str) -> Row:
    """``NAME`` (a row of ROWS) or ``NAME=CONFIG.yaml[:KEY=VALUE...]`` (a variant, e.g. a sweep point)."""
    name, sep, rest = spec.partition("=")
    if not sep:
        if name not in ROWS:
            raise ConfigError(f"unknown row {name!r}; known: {sorted(ROWS)}, or NAME=CONFIG.yaml[:KEY=VALUE...]")
        return ROWS[name]
    config, *overrides = rest.split(":")
    if not (CONFIGS / config).is_file():
        raise ConfigError(f"row {name!r}: no config {config} in {CONFIGS}")
    return Row(name, config, tuple(overrides))


def parse_seeds(text: str) -> list[int]:
    """``N``: seeds 0..N-1; else a comma-separated list of seeds ('1,' is seed 1 alone). None at all is refused."""
    try:
        seeds = [int(s) for s in text.split(",") if s] if "," in text else list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds:
        raise ConfigError(f"--seeds is a count (>= 1) or a comma-separated list of seeds, got {text!r}")
    return seeds


def with_overrides(row: Row, overrides: tuple[str, ...]) -> Row:
    return Row(row.name, row.config, row.overrides + overrides) if overrides else row


def run_dir(runs: Path, row: Row, steps: int, seed: int) -> Path:
    return runs / f"{row.name}-{steps}" / f"s{seed}"


def train_command(row: Row, dataset: str, steps: int, seed: int, out: Path, teacher: Path | None) -> list[str]:
    section = "teacher_optim" if row.config == "teacher.yaml" else "optim"
    command = [sys.executable, "-m", "structvpr_edge.cli", "train", "--config", str(CONFIGS / row.config), "--out", str(out),
               "--set", f"dataset={dataset}", "--set", f"seed={seed}", "--set", f"{section}.steps={steps}"]
    if teacher is not None:
        command += ["--set", f"teacher_checkpoint={teacher}"]
    for override in row.overrides:
        command += ["--set", override]
    return command


def planned_runs(rows: list[Row], dataset: str, seeds: list[int], steps: int, runs: Path, teacher_steps: int | None = None,
                 distill_overrides: tuple[str, ...] = (), overrides: tuple[str, ...] = ()) -> dict[tuple[str, int], tuple[list[str], Path]]:
    """(row name, seed) -> (train command, run folder) of every run of the table: each seed's teacher
    first where a row distils (or is the teacher), then each row on each seed. ``distill_overrides``
    apply to the rows that distil, ``overrides`` to every row and the teachers (train_table's)."""
    rows = [with_overrides(r, overrides) for r in rows]
    teacher, teacher_steps = with_overrides(ROWS["teacher"], overrides), teacher_steps or steps
    planned: dict[tuple[str, int], tuple[list[str], Path]] = {}
    if any(r.distils for r in rows) or teacher in rows:
        for seed in seeds:
            out = run_dir(runs, teacher, teacher_steps, seed)
            planned[teacher.name, seed] = (train_command(teacher, dataset, teacher_steps, seed, out, None), out)
    for row in rows:
        if row == teacher:
            continue
        if row.distils:  # the overrides may not switch the teacher off: they apply to distilling rows only
            row = Row(row.name, row.config, row.overrides + distill_overrides)
        for seed in seeds:
            out = run_dir(runs, row, steps, seed)
            teacher_model = planned[teacher.name, seed][1] / "model.pt" if row.distils else None
            planned[row.name, seed] = (train_command(row, dataset, steps, seed, out, teacher_model), out)
    return planned


def command_config(command: list[str]) -> dict:
    """The ``train_config`` a run of train_command's ``command`` records, read as the CLI reads its --config and --set."""
    sets = [value for option, value in zip(command, command[1:]) if option == "--set"]
    return config_to_dict(load_config(command[command.index("--config") + 1], dotted_overrides(sets)))


def finished(out: Path, command: list[str]) -> bool:
    """Whether ``out`` holds a finished run (``model.pt``) of ``command``. A finished run recorded
    with another config is a ConfigError naming the folder and the keys that differ: its folder
    name would have it kept and reported as this call's run."""
    model = out / "model.pt"
    if not model.exists():
        return False
    recorded, wanted = config_to_dict(load_config(model)), command_config(command)
    differing = differing_keys(recorded, wanted)
    if differing:
        there, here = flat_config(recorded), flat_config(wanted)
        changes = "; ".join(f"{key}: {there.get(key)!r} there, {here.get(key)!r} in this call" for key in differing)
        raise ConfigError(f"{out} holds a finished run trained with another config ({changes}): give the options it was trained "
                          "with, or another --runs folder")
    return True


def train_run(command: list[str], out: Path, threads: int, deadline: float | None = None, stop: float | None = None) -> Path:
    """One run in its own process (so runs go in parallel), its console output in ``out/train.log``.
    A run not started by ``deadline`` (a time.time() value) is skipped, and one still going at
    ``stop`` is killed (no model.pt: it counts as unfinished): a table cut short keeps what finished."""
    if not (out / "model.pt").exists() and (deadline is None or time.time() < deadline):
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        with (out / "train.log").open("w") as log:
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                               timeout=None if stop is None else max(0.0, stop - time.time()))
            except subprocess.TimeoutExpired:
                log.write("\nstopped: the table's stop time came\n")
    return out


def train_table(rows: list[Row], dataset: str, seeds: list[int], steps: int, runs: Path, jobs: int = 1,
                teacher_steps: int | None = None, threads: int = 1, distill_overrides: tuple[str, ...] = (),
                deadline: float | None = None, stop: float | None = None, overrides: tuple[str, ...] = ()) -> None:
    """Teachers first (one per seed), then every other row, ``jobs`` runs at a time, seeds interleaved
    so a table cut short still has every row on its first seeds. The first teacher and the first
    student go first, side by side: they build the shared caches (label fractions, frozen-backbone
    features) that the other runs then read; a distilling run waits for its seed's teacher.
    ``distill_overrides`` apply to the rows that distil (e.g. a KD weight chosen on val),
    ``overrides`` to every row and the teachers (e.g. real frames in training);
    ``deadline`` and ``stop`` are train_run's. Every finished run is checked against this call's
    config (``finished``) before anything trains."""
    planned = planned_runs(rows, dataset, seeds, steps, runs, teacher_steps, distill_overrides, overrides)
    for command, out in planned.values():
        finished(out, command)
    rows = [with_overrides(r, overrides) for r in rows]
    teacher = with_overrides(ROWS["teacher"], overrides)

    def job(row: Row, seed: int) -> Path:
        return train_run(*planned[row.name, seed], threads, deadline, stop)

    students = [(r, s) for s in seeds for r in rows if r != teacher]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        uses_teacher = any(r.distils for r in rows) or teacher in rows
        first = [pool.submit(job, teacher, seeds[0])] if uses_teacher else []
        builder = next((rs for rs in students if not rs[0].distils), None)  # needs no teacher
        if builder is not None:
            students.remove(builder)
            first.append(pool.submit(job, *builder))
        for future in first:
            future.result()
        teacher_runs = {seed: pool.submit(job, teacher, seed) for seed in seeds[1:]} if uses_teacher else {}

        def after_teacher(row_seed: tuple[Row, int]) -> Path:
            row, seed = row_seed
            if row.distils and seed in teacher_runs:
                teacher_runs[seed].result()
            return job(row, seed)

        list(pool.map(after_teacher, students))


def real_val(model: Path, corridor: Path, camvid: Path) -> dict[str, float]:
    """The real val columns: R@1 and R@5 on the corridor (real place recognition, never trained
    on), and for a StructVPR++ student the mean IoU of its masks on CamVid val (real street labels).
    A teacher reads label maps, which the corridor has not: it gets no real columns."""
    from ..data.dataset import load_dataset  # noqa: PLC0415 - evaluation only when asked: the table runs without it
    from ..eval.evaluate import evaluate  # noqa: PLC0415
    from ..eval.masks import folder_pairs, mask_scores, summarise  # noqa: PLC0415
    from ..eval.models import load_extractor  # noqa: PLC0415
    from ..models.checkpoint import load_checkpoint  # noqa: PLC0415
    from ..models.student import StructVPRStudent  # noqa: PLC0415

    extractor = load_extractor(str(model))
    if extractor.input_kind != "rgb":
        return {}
    recall = evaluate(extractor, load_dataset(corridor, "test")).recall
    figures = {"corridor R@1": recall["1"], "corridor R@5": recall["5"]}
    student, meta = load_checkpoint(model)
    if isinstance(student, StructVPRStudent):
        images, labels = folder_pairs(camvid / "images" / "val", camvid / "labels" / "val")
        scores = mask_scores(student, tuple(meta["input"]["size"]), images, labels, scheme="camvid")
        figures["camvid mIoU"] = summarise(scores, np.arange(len(images)))["mean_iou"]
    return figures


def logged(out: Path, key: str) -> list:
    """Every value of ``key`` in the run's ``log.jsonl``, in order ([] without a log)."""
    log = out / "log.jsonl"
    return [json.loads(line)[key] for line in log.read_text().splitlines() if key in line] if log.exists() else []


def last_val_recall(out: Path) -> float | None:
    """R@1 on val at the run's last validation (what settings are chosen on)."""
    recalls = logged(out, "val_recall@1")
    return recalls[-1] if recalls else None


def median_kd_grad_ratio(out: Path) -> float | None:
    """Median, not mean: on a step where the metric loss mines no pair its gradient is 0."""
    ratios = logged(out, "kd_grad_ratio")
    return float(np.median(ratios)) if ratios else None


def summarize(results: dict[str, list[dict]], columns: list[str]) -> str:
    """Markdown: one line per row, ``mean ± std`` of each column over the runs that finished. A
    row's entries are the seeds requested (``finished`` False: no model), so a row short of them
    says so: ``K of N`` seeds, and `` (n=K of N requested)`` on a column with fewer values."""
    lines = ["| row | seeds | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for name, runs in results.items():
        cells = []
        for column in columns:
            values = [100 * r[column] for r in runs if r.get(column) is not None]
            count = f" (n={len(values)} of {len(runs)} requested)" if 0 < len(values) < len(runs) else ""
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}{count}" if values else "")
        done = sum(r.get("finished", True) for r in runs)
        seeds = f"{done} of {len(runs)}" if done < len(runs) else str(len(runs))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance_warning(results: dict[str, list[dict]]) -> str | None:
    """A warning where the table's finished runs were trained from different dataset files (their
    recorded digests differ, or some runs, older than the record, have none): their rows do not
    compare like for like."""
    digests: dict[str | None, list[str]] = {}
    for name, runs in results.items():
        for r in runs:
            if r.get("finished", True):
                digests.setdefault((r.get("provenance") or {}).get("train_files"), []).append(f"{name} s{r['seed']}")
    if len(digests) < 2:
        return None
    groups = "; ".join(f"{(digest or 'no record')[:12]}: {', '.join(runs)}" for digest, runs in digests.items())
    return f"warning: these runs were trained from different dataset files, so their rows do not compare like for like ({groups})"


def run_figures(out: Path, seed: int, real: tuple[Path, Path] | None = None, test=None) -> dict:
    """One finished run's figures: last val R@1 and KD gradient share, with ``real`` (corridor,
    CamVid) the real val columns, with ``test`` (a loaded split) R@1 overall and per condition."""
    figures = {"seed": seed, "finished": True, "val": last_val_recall(out), "kd_grad_ratio": median_kd_grad_ratio(out),
               "provenance": load_checkpoint(out / "model.pt")[1].get("provenance")}
    if real is not None:
        figures |= real_val(out / "model.pt", *real)
    if test is not None:
        from ..eval.evaluate import evaluate  # noqa: PLC0415
        from ..eval.models import load_extractor  # noqa: PLC0415

        report = evaluate(load_extractor(str(out / "model.pt")), test).to_json()
        figures["test"] = report["recall"]["1"]
        figures |= {f"test {c}": r["1"] for c, r in report["per_condition"].items()}
    return figures


def table_results(rows: list[Row], dataset: str, seeds: list[int], steps: int, teacher_steps: int, runs: Path,
                  real: tuple[Path, Path] | None = None, test=None, distill_overrides: tuple[str, ...] = (),
                  overrides: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Row name -> one entry per requested seed: its run's figures, or ``finished`` False where it
    has no model (failed, stopped or never started), so a short row is not read as a whole one; the
    teacher first, where a row distils from it. The options are train_table's: a finished run of
    another config is refused (``finished``)."""
    results: dict[str, list[dict]] = {}
    for (name, seed), (command, out) in planned_runs(rows, dataset, seeds, steps, runs, teacher_steps, distill_overrides, overrides).items():
        figures = run_figures(out, seed, real, test) if finished(out, command) else {"seed": seed, "finished": False}
        results.setdefault(name, []).append(figures)
    return results
