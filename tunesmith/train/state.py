"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``step_XXXXXXXX/`` holding ``weights.safetensors``
(modules, EMA, optimizer moments) and ``state.json`` (step, data position,
optimizer hyper-parameters, config).  It is written to a temporary directory and
renamed into place, and ``latest`` is then updated atomically, so a run killed at
any instant leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from tunesmith.checkpoint import load_tensors, save_tensors
from tunesmith.errors import CheckpointError
from tunesmith.files import atomic_directory, atomic_write_text

LATEST = "latest"
STEP_NAME = re.compile(r"step_\d{8,}")
# What a writer killed mid-checkpoint leaves: atomic_directory's ".step_N.tmpXXXX" and
# ".step_N.old", atomic_path's ".latest.XXXX.tmp", and ".tmp_*" from older versions.
STALE_NAME = re.compile(r"\.step_\d{8,}\.(tmp.*|old)|\.latest\..*\.tmp|\.tmp_.*", re.DOTALL)


def flatten_optimizer_state(prefix: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}/{param_id}/{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[Any, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith(prefix + "/"):
            continue
        param_id, key = name[len(prefix) + 1 :].rsplit("/", 1)
        state.setdefault(_param_key(param_id), {})[key] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(_param_key(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _param_key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def write_checkpoint(root: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int) -> Path:
    """Atomically write checkpoint ``step`` under ``root`` and prune to the newest ``keep``.

    A failed write (a full disk) leaves the previous checkpoint and ``latest`` as they were,
    and says so: the run can be resumed from there.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    try:
        with atomic_directory(final) as tmp:
            save_tensors(tensors, tmp / "weights.safetensors")
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
        atomic_write_text(root / LATEST, final.name + "\n")
    except OSError as err:
        kept = read_pointer(root)
        note = f"checkpoint {final.name} not written; {kept or 'no earlier checkpoint'} kept"
        if err.strerror:
            raise OSError(err.errno, f"{err.strerror} ({note})", str(final)) from err
        raise OSError(f"{err} ({note})") from err
    for path in step_directories(root)[keep:]:
        if path != final:
            shutil.rmtree(path, ignore_errors=True)
    return final


def step_directories(root: Path) -> list[Path]:
    """The ``step_*`` directories under ``root``, newest first (complete ones: they appear by rename)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def read_pointer(root: Path) -> str | None:
    """The checkpoint name ``latest`` holds, or None when it is absent or not a checkpoint name."""
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if STEP_NAME.fullmatch(name) else None  # never a path out of the run directory


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, when that directory exists."""
    name = read_pointer(root)
    if name is None or not (root / name).is_dir():
        return None
    return root / name


def resume_candidates(root: Path) -> list[Path]:
    """Where a resumed run may start, in order of preference: what ``latest`` names, then
    every other checkpoint, newest first (``latest`` may name one that is gone or corrupt)."""
    pointed = latest_checkpoint(root)
    others = [p for p in step_directories(root) if p != pointed]
    return ([pointed] if pointed is not None else []) + others


def has_checkpoint(root: Path) -> bool:
    """Whether a resume has anything to start from: a checkpoint, or one caught between the
    renames of its rewrite, which :func:`remove_stale_temporaries` puts back."""
    if step_directories(root):
        return True
    return root.is_dir() and any(re.fullmatch(r"\.step_\d{8,}\.old", p.name) for p in root.iterdir())


def remove_stale_temporaries(root: Path) -> list[str]:
    """Clear what a writer killed mid-checkpoint (SIGKILL, power loss) left in ``root``.

    A ``.step_N.old`` whose ``step_N`` is missing is the complete previous copy, caught
    between its two renames: it is put back, not removed.  Returns the names dealt with.
    Call it only where no other process writes checkpoints into ``root``.
    """
    if not root.is_dir():
        return []
    handled = []
    for path in sorted(root.iterdir()):
        if not STALE_NAME.fullmatch(path.name):
            continue
        original = root / path.name[1 : -len(".old")] if path.name.endswith(".old") else None
        if original is not None and path.is_dir() and not original.exists():
            os.replace(path, original)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        handled.append(path.name)
    return handled


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and state of one checkpoint; a missing or damaged part is a :class:`CheckpointError`."""
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path}: state.json is missing; not a training checkpoint")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file}: not valid JSON: {err}") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and state["step"] >= 0
            and isinstance(state.get("optimizers"), dict)):
        raise CheckpointError(f"{state_file}: not a training checkpoint's state (no step or optimizers)")
    return load_tensors(path / "weights.safetensors"), state
