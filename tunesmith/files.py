"""Files that are either whole or absent: write to a temp name beside the target, then rename.

A reader (or a crash) never sees half a file: ``os.replace`` within one directory is
atomic on POSIX.  The temp file is created private (``mkstemp`` makes it 0600), so before
the rename it gets the mode a plain ``open()`` would have given it: the user's umask, or
the mode of the file it replaces.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: there, writers of one output are not serialised
    fcntl = None  # type: ignore[assignment]

STALE_SECONDS = 600.0  # a temp file this old belongs to a writer that was killed


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux's /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name[:64]}."  # short, so a long target name never makes a too-long temp name


def _target_mode(target: Path, directory: bool) -> int:
    if target.exists():
        return stat.S_IMODE(target.stat().st_mode)
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds it replaces ``path``.

    On any failure (an exception, Ctrl-C) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(dir=parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _target_mode(path, directory=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on a directory (flock on its descriptor: no lock file left behind)."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def atomic_group(*paths: str | Path) -> Iterator[list[Path]]:
    """Temp paths for files that belong together (audio and its sidecar), all in one directory.

    After the block they replace their targets in the order given, under a lock on the
    directory, so two writers of the same names never leave one's audio beside the
    other's sidecar.  If any step fails, the targets that were already replaced get their
    previous content back, and no temp file remains.
    """
    targets = [Path(p) for p in paths]
    parent = targets[0].parent if str(targets[0].parent) else Path(".")
    if any((t.parent if str(t.parent) else Path(".")).resolve() != parent.resolve() for t in targets):
        raise ValueError("atomic_group: all files must be in one directory")
    temps: list[Path] = []
    try:
        for target in targets:
            fd, name = tempfile.mkstemp(dir=parent, prefix=_temp_prefix(target), suffix=".tmp")
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for tmp, target in zip(temps, targets):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _target_mode(target, directory=False))
        with _directory_lock(parent):
            _replace_all(temps, targets)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _replace_all(temps: list[Path], targets: list[Path]) -> None:
    """Rename each temp over its target; on a failure put back what was there before."""
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for target in targets:
            if target.is_file():
                backup = target.with_name(f"{_temp_prefix(target)}{os.getpid()}-{time.monotonic_ns()}.bak.tmp")
                os.link(target, backup)  # a second name for the old content: nothing copied
                backups[target] = backup
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            done.append(target)
    except BaseException:
        for target in done:
            if target in backups:
                os.replace(backups.pop(target), target)
            else:
                target.unlink(missing_ok=True)
        raise
    finally:
        for backup in backups.values():
            backup.unlink(missing_ok=True)


def remove_stale_temps(path: str | Path, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the temp files a killed writer of ``path`` left beside it (only old ones: a
    writer that is still running keeps its own)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    now = time.time()
    try:
        candidates = list(parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"))
    except OSError:
        return []
    for candidate in candidates:
        try:
            if candidate.is_file() and now - candidate.stat().st_mtime > older_than:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass
    return removed


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a text file so that readers see either the old or the new content."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``directory``; when the block succeeds it replaces it.

    An existing directory is moved aside first and removed after the swap, so at every
    moment either the old or the new directory is complete under its name.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{_temp_prefix(directory)}tmp"))
    try:
        yield tmp
        os.chmod(tmp, _target_mode(directory, directory=True))
        if directory.exists():
            old = directory.with_name(f".{directory.name[:64]}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
