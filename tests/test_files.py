"""Atomic writes: whole or absent, and with the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from tunesmith.audio import save_audio
from tunesmith.files import atomic_directory, atomic_path, atomic_write_text, current_umask


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    before = os.umask(0o027)
    yield
    os.umask(before)


def test_new_files_follow_the_umask(tmp_path, umask_027):
    assert current_umask() == 0o027
    atomic_write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o640
    save_audio(tmp_path / "a.wav", torch.zeros(1, 100), 8000)
    assert mode(tmp_path / "a.wav") == 0o640  # not mkstemp's 0600
    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert mode(tmp_path / "d") == 0o750
    from tunesmith.checkpoint import save_tensors

    save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")  # safetensors itself writes 0600
    assert mode(tmp_path / "w.safetensors") == 0o640


def test_an_overwritten_file_keeps_its_mode(tmp_path, umask_027):
    target = tmp_path / "song.wav"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    save_audio(target, torch.zeros(1, 100), 8000)
    assert mode(target) == 0o644 and target.read_bytes() != b"old"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "dir") as d:
            (d / "f").write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
