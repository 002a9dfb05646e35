"""A run's provenance (train/provenance.py): digests of what it was trained from, so a figure that
does not reproduce names the input that changed (issue 23's reproduction gap)."""
import os
import subprocess

import pytest

from structvpr_edge import __version__
from structvpr_edge.bench.table import provenance_warning
from structvpr_edge.errors import DatasetError
from structvpr_edge.train import provenance
from structvpr_edge.train.provenance import code_version, content_digest


def write(path, data: bytes, mtime_ns: int):
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_the_digest_is_of_names_and_bytes_and_follows_a_file_remade_in_place(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write(tmp_path / folder / "x.png", b"label", 10**18)
        write(tmp_path / folder / "y.jpg", b"pixels", 10**18)
    files = [tmp_path / "a" / "x.png", tmp_path / "a" / "y.jpg"]
    first = content_digest(files, tmp_path / "cache")
    assert first == content_digest([tmp_path / "b" / "x.png", tmp_path / "b" / "y.jpg"], tmp_path / "cache")  # a copy elsewhere
    assert first != content_digest(files[::-1], tmp_path / "cache")
    write(files[1], b"pixelz", 10**18 + 1)  # same size, re-made in place
    assert content_digest(files, tmp_path / "cache") != first


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(DatasetError, match="gone.png"):
        content_digest([tmp_path / "gone.png"], tmp_path / "cache")


def test_the_digest_of_unchanged_files_is_read_from_the_cache(tmp_path):
    files = [write(tmp_path / "x.png", b"label", 10**18)]
    content_digest(files, tmp_path / "cache")
    (kept,) = (tmp_path / "cache").glob("digest-*.txt")
    kept.write_text("kept\n")  # the files are not read again while their stamps hold
    assert content_digest(files, tmp_path / "cache") == "kept"


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)


def test_code_version_names_the_commit_and_a_dirty_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    assert code_version() == __version__  # not in a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "module.py").write_text("A = 1\n")
    (tmp_path / "__init__.py").write_text("")
    git(tmp_path, "add", "module.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    assert code_version() == __version__  # a repository that does not track the package is not its checkout
    git(tmp_path, "add", "__init__.py")
    git(tmp_path, "commit", "-q", "-m", "two")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_version() == f"{__version__}+git.{commit}"
    (tmp_path / "module.py").write_text("A = 2\n")
    assert code_version() == f"{__version__}+git.{commit}.dirty"


def test_a_table_of_runs_from_different_dataset_files_warns():
    def run(seed, digest):
        return {"seed": seed, "finished": True, "provenance": None if digest is None else {"train_files": digest}}

    same = {"r": [run(0, "aa"), run(1, "aa")], "l": [run(0, "aa"), {"seed": 1, "finished": False}]}
    assert provenance_warning(same) is None
    warning = provenance_warning({"r": [run(0, "aa"), run(1, "bb")], "l": [run(0, None)]})
    assert "different dataset files" in warning and "aa: r s0" in warning and "bb: r s1" in warning and "no record: l s0" in warning
