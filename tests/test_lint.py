"""The committed lint gates: ruff (ruff.toml) on the package, benchmarks and tests, and mypy
(mypy.ini) on the runtime and deploy parts, both at 0 findings."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing_under_the_committed_config():
    result = _run("ruff", "check", "--no-cache", "structvpr_edge", "benchmarks", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_runtime_and_deploy_parts(tmp_path):
    result = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))  # files and options: mypy.ini
    assert result.returncode == 0, result.stdout + result.stderr
