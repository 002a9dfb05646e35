"""Install as README writes it: a wheel from the clone carries the shipped kit and finds it from
site-packages; the edge install (`pip install ".[onnx]"`) resolves without torch; README's edge
snippet localizes in a venv where torch cannot be imported."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from structvpr_edge import EdgeVPR
from structvpr_edge.artifacts import KIT_ROOTS, MANIFEST, RANGES, REPORT, TRT_CACHE
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.runtime.mapping import build_map

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = "import sys; sys.modules['torch'] = None; "  # `import torch` raises ImportError, as on an edge device
pytestmark = pytest.mark.slow  # pip builds, installs and asks the index


def pip(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", "--python", python, *args], cwd=ROOT.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[str, Path]:
    """(python of a fresh venv with the package installed from a wheel of the clone, the wheel)."""
    root = tmp_path_factory.mktemp("install")
    pip("wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "wheel"))
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder in the clone
    (wheel,) = (root / "wheel").glob("*.whl")
    venv.create(root / "venv", system_site_packages=True, with_pip=False)  # the dependencies: the system's (no download)
    python = str(root / "venv" / "bin" / "python")
    pip("install", "--no-deps", "-q", str(wheel), python=python)
    return python, wheel


def run(python: str, code: str, cwd: Path) -> str:
    done = subprocess.run([python, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_wheel_carries_the_kit_and_finds_it_installed(installed, tmp_path):
    python, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"structvpr_edge/kits/structvprpp/{n}" for n in (MANIFEST, RANGES, TRT_CACHE, REPORT)} <= set(names)
    assert not any(n.endswith(".onnx") for n in names)  # graphs are rebuilt, never packed
    kit, packaged = run(python, "import structvpr_edge.artifacts as a; print(a.shipped_kit('structvprpp')); print(a.KIT_ROOTS[0])", tmp_path).split()
    assert kit == str(Path(packaged) / "structvprpp") and kit.startswith(str(Path(python).parents[1])) and kit != str(KIT_ROOTS[1] / "structvprpp")


def test_the_edge_install_resolves_without_torch(tmp_path):
    pip("install", "--dry-run", "--ignore-installed", "--no-build-isolation", "-q", "--report", str(tmp_path / "r.json"), f"{ROOT}[onnx]")
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    names = {i["metadata"]["name"].lower() for i in json.loads((tmp_path / "r.json").read_text())["install"]}
    assert {"onnxruntime", "faiss-cpu", "structvpr-edge"} <= names and not any(n.startswith(("torch", "nvidia")) for n in names), names


def readme_block(after: str, language: str) -> str:
    """The first ``language`` code block of README.md after the line ``after``."""
    text = (ROOT / "README.md").read_text()
    return re.search(rf"```{language}\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_the_readme_edge_snippet_localizes_without_torch(installed, student_onnx, place_dataset, tmp_path):
    """README's vehicle snippet, as written, in the venv with torch blocked: its paths laid out with
    the tiny student, a map of the test places and one query frame."""
    snippet = readme_block("On the vehicle", "python")
    model = tmp_path / "models" / "structvprpp.int8.onnx"
    model.parent.mkdir()
    shutil.copy(student_onnx[0], model)
    with EdgeVPR(model, max_batch=8) as vpr:
        build_map(vpr, place_dataset, tmp_path / "maps" / "route", split="test")
    shutil.copy(load_dataset(place_dataset, "test").queries.paths[0], tmp_path / "frame.jpg")
    out = run(installed[0], NO_TORCH + "import structvpr_edge; print(structvpr_edge.__file__)\n" + snippet, tmp_path).split()
    assert out[0].startswith(str(Path(installed[0]).parents[1]))  # the installed copy ran, not the clone
    east, north, heading, confident = out[1:5]
    assert float(east) == float(east) and float(north) == float(north) and confident == "False"


# README's pipeline at test size: each command as written, with these options appended (last wins).
TEST_SIZE = {
    "synth": ["--preset", "smoke", "--workers", "2"],
    "train": ["--set", "image_size=[64,48]", "--set", "teacher.input_size=[32,24]", "--set", "distill.warmup_steps=2",
              "--set", "real.root=null",  # CamVid's real frames: tests/test_real_frames.py trains with them
              *[f"--set={stage}.{k}={v}" for stage in ("optim", "teacher_optim")
                for k, v in {"steps": 4, "places_per_batch": 4, "val_every": 4, "log_every": 2, "warmup_steps": 2, "checkpoint_every": 4}.items()]],
    "calibrate": ["--num", "8", "--max-recall-drop", "100", "--threads", "1"],  # 4 training steps: any drop passes
    "calibrate-threshold": ["--precision", "0.5", "--threads", "1"],  # a handful of smoke queries measure 0.5, not 0.99
    "build-map": ["--threads", "1"], "localize": ["--threads", "1"],
}


def readme_pipeline() -> list[list[str]]:
    """The commands of README's "From training to the edge" block, in order."""
    import shlex

    lines = readme_block("## From training to the edge", "bash").replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("#")[0])[1:] for line in lines if line.strip()]


def test_the_readme_pipeline_runs_in_order_on_a_tiny_synthcity(tmp_path, monkeypatch):
    from structvpr_edge.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "structvpr_edge").symlink_to(ROOT / "structvpr_edge")  # the configs, where a clone has them
    commands = readme_pipeline()
    assert [c[0] for c in commands] == ["synth", "train", "train", "eval", "calibrate", "build-map", "calibrate-threshold", "localize"]
    for args in commands:
        if args[0] == "localize":  # frame1.jpg frame2.jpg: two query frames of the map's area
            queries = load_dataset(tmp_path / "data" / "synthcity-bench", "val").queries.paths[:2]
            args = [a for a in args if not a.endswith(".jpg")] + [str(q) for q in queries]
        assert main(args + TEST_SIZE.get(args[0], [])) == 0, args
    assert (tmp_path / "kits" / "mine" / "model.int8.cpu.onnx").is_file() and (tmp_path / "maps" / "val").is_dir()
