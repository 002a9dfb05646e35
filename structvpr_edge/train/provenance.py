"""What a run was trained from, by content: the code, the dataset files it read, the real frames'
views and the teacher's weights. Training is deterministic on one machine, so two runs of one
config that differ must differ in one of these; a figure that does not reproduce in another
checkout names its cause by comparing them (issue 23: a row trained again read 56.8 where its
first training read 65.8, and nothing recorded which input had changed)."""
from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import DatasetError
from ..files import replace_whole
from ..models.checkpoint import weights_fingerprint
from .data import cache_path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHUNK = 1 << 20


def content_digest(paths: Iterable[Path], cache_dir: Path) -> str:
    """sha256 over every file's name and bytes, in the order given. Kept in ``cache_dir`` under the
    files' stamps (size and time), so a dataset is read once per generation, not once per run."""
    paths = [Path(p) for p in paths]
    kept = cache_path(Path(cache_dir), "digest", paths, "sha256").with_suffix(".txt")  # keyed as the training caches are
    if kept.is_file():
        return kept.read_text().strip()
    digest = hashlib.sha256()
    for path in paths:
        try:
            with path.open("rb") as handle:
                digest.update(f"{path.name}|{path.stat().st_size}|".encode())  # the size: no two lists of files hash alike
                while block := handle.read(CHUNK):
                    digest.update(block)
        except OSError as exc:
            raise DatasetError(f"cannot read {path} for the run's provenance record: {exc}") from exc
    replace_whole(kept, lambda tmp: tmp.write_text(digest.hexdigest() + "\n"))
    return digest.hexdigest()


def code_version() -> str:
    """The package version, with the git commit of its checkout (and ``.dirty`` when tracked
    files differ from it) where the package runs from one: a repository that does not track the
    package (an environment installed inside another project) is not its checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None or not git("ls-files", "--", "__init__.py"):
        return __version__
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return f"{__version__}+git.{commit}" + (".dirty" if dirty else "")


def libraries() -> str:
    """The versions of the libraries every pixel and step passes through: OpenCV decodes and resizes
    (and draws SynthCity: 5.0 and 5.1 render some views otherwise), numpy and torch compute."""
    return f"torch {torch.__version__}, numpy {np.__version__}, opencv {cv2.__version__}"


def run_provenance(cache_dir: Path, train_files: list[Path], real_views: list[Path], teacher: nn.Module | None) -> dict[str, str | None]:
    """The record a checkpoint keeps: what the weights were trained from (the val split, which only
    reports, is left out). ``real_views``: the real frames' views as read (their crops follow the seed)."""
    return {"code": code_version(), "libraries": libraries(), "train_files": content_digest(train_files, cache_dir),
            "real_views": content_digest(real_views, cache_dir) if real_views else None,
            "teacher_weights": weights_fingerprint(teacher) if teacher is not None else None}
