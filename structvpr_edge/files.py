"""Files a user hands us and files we write for them, handled so that neither a hang nor a lost
file can happen; torch-free.

Why: a path is the user's. A FIFO or a link to ``/dev/zero`` where a file is expected must be
refused before a byte is read (reading would block or never end); an output path that names one
of the inputs must be refused before the work that would overwrite it; and a file we replace
must be replaced whole (written aside in the same folder, then ``os.replace``), so a kill or a
failed check leaves the previous file as it was.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, StructVPRError


def check_not_an_input(output: str | Path, inputs: Iterable[str | Path | None], error: type[StructVPRError] = ConfigError) -> None:
    """Refuse an output path that is one of the inputs, or lies inside an input folder: writing it
    would destroy that input, or a file of it (a bag folder's storage file, a map's)."""
    for source in inputs:
        if source is None or not str(source):
            continue
        try:  # one path, links and relative spellings included
            same = os.path.samefile(output, source)
        except OSError:  # one of them does not exist yet: compare where they would be
            same = Path(output).resolve() == Path(source).resolve()
        if same:
            raise error(f"the output {output} is the input {source}: writing it would destroy the input; choose another path")
        if Path(source).is_dir() and Path(source).resolve() in Path(output).resolve().parents:
            raise error(f"the output {output} lies inside the input folder {source}: writing it could overwrite a file of that input; "
                        "choose a path outside it")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what OpenCV writes in every build we install


def output_format(path: str | Path, suffixes: tuple[str, ...]) -> str:
    """The format of an output file, from its suffix (one of ``suffixes``, any case), known before
    the work that writes it: a writer guessing from a missing or unknown suffix fails only after
    the work, or writes another path than the one given (matplotlib adds .png)."""
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise ConfigError(f"cannot write {path}: give a path ending in {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    return suffix[1:]


@contextmanager
def open_regular(path: str | Path, max_bytes: int, error: type[StructVPRError], follow: bool = True) -> Iterator[BinaryIO]:
    """``path`` opened for reading once it is known to be a regular file of at most ``max_bytes``
    (checked on the open descriptor: no race with a swap). ``follow=False`` also refuses a link.
    O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow and Path(path).is_symlink():
            raise error(f"{path} is a link, not a regular file") from None
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{path} holds {info.st_size} bytes, more than the {max_bytes} it can hold")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def sha256_of(handle: BinaryIO) -> str:
    """The sha256 of what is left to read in ``handle``, in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def temp_beside(path: Path) -> Path:
    """Where a writer of ``path`` stages it: ``.NAME.tmp-PID-RANDOM`` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: a number no process id can be
        return False
    except PermissionError:  # another user's process: running
        pass
    return True


def remove_stale_temps(path: Path) -> int:
    """Remove what killed writers of ``path`` left beside it: :func:`temp_beside` names whose
    process no longer runs. Only those names, never a running writer's; returns how many."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    removed = 0
    for sibling in path.parent.iterdir() if path.parent.is_dir() else ():
        match = pattern.fullmatch(sibling.name)
        if match is None or _running(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed += 1
    return removed


def replace_whole(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a file beside ``path``, then move it over ``path`` in one step: a kill or an
    error in ``write`` (a failed check included) leaves the previous ``path`` untouched; what an
    earlier killed writer of ``path`` left beside it is removed first. Missing parent folders are
    created, as for every output of the command line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_beside(path)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
