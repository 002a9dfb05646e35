"""Kills of the CLI writers (issue 29): what a kill can leave at export's and calibrate's output
must be the whole artifact or one that opening refuses with our typed error; never one that
loads while truncated or mixed. benchmarks/killtest.py --export/--calibrate runs the hundreds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from structvpr_edge.bench.killtest import cli_kill_trials, file_sha, inspect_export, inspect_kit, run_seconds


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_export_is_refused_when_opened(student_onnx, tmp_path, keep):
    whole = student_onnx[0].read_bytes()
    out = tmp_path / "model.onnx"
    out.write_bytes(whole)
    assert inspect_export(out, file_sha(out)) == "whole"
    out.write_bytes(whole[: int(keep * len(whole))])
    assert inspect_export(out, file_sha(student_onnx[0])) == "refused"


def test_a_kit_with_a_truncated_or_missing_member_is_refused(calibration_dir, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    assert inspect_kit(kit) == "whole"
    member = kit / "model.int8.cpu.onnx"
    member.write_bytes(member.read_bytes()[: member.stat().st_size // 2])
    assert inspect_kit(kit) == "refused"
    (kit / "report.json").unlink()  # a kill between the members' swap and the report's
    assert inspect_kit(kit) == "refused"


def test_kills_of_calibrate_leave_a_whole_or_refused_kit(student_onnx, place_dataset, tmp_path):
    kit = tmp_path / "kit"
    argv = [sys.executable, "-m", "structvpr_edge.cli", "calibrate", "--model", str(student_onnx[0]), "--dataset",
            str(place_dataset), "--num", "4", "--threads", "1", "--out", str(kit)]
    window = run_seconds(argv)
    counts = cli_kill_trials("calibrate", argv, lambda: inspect_kit(kit), trials=2, window=window, progress=False)
    assert counts["whole"] + counts["refused"] == 2, counts
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # the next whole run removes what the kills left
    assert done.returncode == 0, done.stderr[-1000:]
    assert inspect_kit(kit) == "whole" and not list(tmp_path.glob(".kit.tmp-*"))


def test_a_write_removes_what_killed_writers_left_and_nothing_else(tmp_path):
    """Temp files and folders of a dead writer of the same path go; a running writer's, another
    path's and the user's own look-alikes stay."""
    from structvpr_edge.files import replace_whole

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    target = tmp_path / "model.onnx"
    left = [tmp_path / f".model.onnx.tmp-{dead}-0badc0de", tmp_path / f".model.onnx.tmp-{dead}-00c0ffee"]
    left[0].write_bytes(b"half")
    left[1].mkdir()
    (left[1] / "member").write_bytes(b"half")
    kept = [tmp_path / f".model.onnx.tmp-{os.getpid()}-feedbeef", tmp_path / f".other.onnx.tmp-{dead}-0badc0de",
            tmp_path / ".model.onnx.tmp-notes", tmp_path / f".model.onnx.tmp-{dead}-0badc0de.bak"]
    for path in kept:
        path.write_bytes(b"mine")
    replace_whole(target, lambda tmp: tmp.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole"
    assert not any(path.exists() for path in left) and all(path.read_bytes() == b"mine" for path in kept)
