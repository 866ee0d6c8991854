"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``step_XXXXXXXX/`` holding ``weights.safetensors``
(modules, EMA, optimizer moments) and ``state.json`` (step, data position,
optimizer hyper-parameters, config).  It is written to a temporary directory and
renamed into place, and ``latest`` is then updated atomically, so a run killed at
any instant leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tunesmith.checkpoint import load_tensors, save_tensors
from tunesmith.errors import CheckpointError
from tunesmith.files import atomic_directory, atomic_write_text

LATEST = "latest"


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
    """Atomically write checkpoint ``step`` under ``root`` and prune to the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    with atomic_directory(final) as tmp:
        save_tensors(tensors, tmp / "weights.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    atomic_write_text(root / LATEST, final.name + "\n")
    old = sorted(p for p in root.glob("step_*") if p.is_dir())
    for path in old[: max(len(old) - keep, 0)]:
        if path != final:
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path}: state.json is missing; not a training checkpoint")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{state_file}: not valid JSON: {err}") from None
    return load_tensors(path / "weights.safetensors"), state
