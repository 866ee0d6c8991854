"""The adapter directory: a few MB that name their base model and hold the low-rank updates.

    my-style/
      config.json                 generator_type "lora-adapter", the base (name or path), its
                                  fingerprint and network config, rank, alpha, layers, default scale,
                                  how it was trained
      adapter_config.json         peft's LoraConfig, as peft writes it
      adapter_model.safetensors   A and B of every adapted layer, under peft's names

``config.json`` is what ``tunesmith.load`` reads; the other two are peft's own format, so
``peft.PeftModel.from_pretrained(base_network, "my-style")`` reads the adapter as well.
The base's fingerprint (a SHA-256 of its weights file) catches an adapter applied to
another base with the same shapes, e.g. a bundled model updated in a later release.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith import __version__
from tunesmith.adapters.lora import lora_pairs
from tunesmith.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, GENERATOR_TYPE_MODULES, load_tensors, read_directory_meta,
                                  resolve, save_tensors)
from tunesmith.errors import CheckpointError
from tunesmith.files import atomic_directory

ADAPTER_TYPE = "lora-adapter"  # the generator_type of an adapter directory
PEFT_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of a model directory's weights file, read in blocks."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_adapter(directory: str | Path, tensors: dict[str, torch.Tensor], *, base: str, base_dir: Path,
                  rank: int, alpha: float, targets: list[str], modules: list[str], peft_config: dict[str, Any],
                  training: dict[str, Any] | None = None, scale: float = 1.0) -> Path:
    """Write an adapter directory atomically (a reader sees the old one or the whole new one)."""
    base_meta = read_directory_meta(base_dir)
    meta = {
        "generator_type": ADAPTER_TYPE,
        "tunesmith_version": __version__,
        "base": base,
        "base_fingerprint": fingerprint(base_dir),
        "base_generator_type": base_meta.get("generator_type"),
        "base_model_type": base_meta.get("model_type"),
        "base_config": base_meta.get("config"),
        "rank": rank,
        "alpha": alpha,
        "targets": list(targets),
        "modules": list(modules),
        "scale": scale,
        "training": training or {},
    }
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True, default=sorted) + "\n")
        save_tensors({k: v.float() for k, v in tensors.items()}, tmp / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
    return Path(directory)


@dataclass
class Adapter:
    """A read adapter directory: its config and its (A, B) pairs."""

    directory: Path
    meta: dict[str, Any]
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def base(self) -> str:
        return str(self.meta["base"])

    def scaling(self, scale: float | None = None) -> float:
        """alpha / rank times the strength (default: the directory's), as peft computes it."""
        strength = float(self.meta.get("scale", 1.0) if scale is None else scale)
        return strength * float(self.meta["alpha"]) / int(self.meta["rank"])


def is_adapter(directory: str | Path) -> bool:
    try:
        return read_directory_meta(directory).get("generator_type") == ADAPTER_TYPE
    except CheckpointError:
        return False


def read_adapter(directory: str | Path) -> Adapter:
    """Read and check an adapter directory (its config's fields, its tensors' shapes)."""
    directory = Path(directory)
    meta = read_directory_meta(directory)
    if meta.get("generator_type") != ADAPTER_TYPE:
        raise CheckpointError(f"{directory} is not a LoRA adapter (generator_type={meta.get('generator_type')!r})")
    for key, kind in (("base", str), ("rank", int), ("alpha", (int, float)), ("scale", (int, float))):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{directory / CONFIG_FILE}: '{key}' is missing or not a {getattr(kind, '__name__', 'number')}")
    if meta["rank"] < 1:
        raise CheckpointError(f"{directory / CONFIG_FILE}: rank must be >= 1, got {meta['rank']}")
    pairs = lora_pairs(load_tensors(directory / ADAPTER_WEIGHTS_FILE), str(directory))
    if not pairs:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS_FILE} holds no LoRA layers")
    rank = next(iter(pairs.values()))[0].shape[0]
    if rank != meta["rank"]:
        raise CheckpointError(f"{directory}: config.json says rank {meta['rank']}, the weights have rank {rank}")
    return Adapter(directory, meta, pairs)


def base_directory(adapter: Adapter) -> Path:
    """The adapter's base generator directory, checked to be the one it was trained on."""
    where = f"adapter {adapter.directory}"
    try:
        base_dir = resolve(adapter.base)
        meta = read_directory_meta(base_dir)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: its base model '{adapter.base}' is missing ({err})") from None
    kind = meta.get("generator_type")
    if kind == ADAPTER_TYPE:
        raise CheckpointError(f"{where}: its base '{adapter.base}' is itself an adapter; merge that one first")
    if kind not in GENERATOR_TYPE_MODULES:
        raise CheckpointError(f"{where}: its base '{adapter.base}' is not a tunesmith generator (generator_type={kind!r})")
    expected = adapter.meta
    for key, field in (("base_model_type", "model_type"), ("base_config", "config")):
        if expected.get(key) is not None and meta.get(field) != expected[key]:
            raise CheckpointError(f"{where} was trained on another base: '{adapter.base}' now has a different "
                                  f"{field.replace('_', ' ')} ({_first_difference(expected[key], meta.get(field))})")
    if expected.get("base_fingerprint") and fingerprint(base_dir) != expected["base_fingerprint"]:
        raise CheckpointError(f"{where} was trained on other weights than '{adapter.base}' now holds "
                              "(its weights file has changed); fine-tune it again on this base")
    return base_dir


def _first_difference(want: Any, have: Any) -> str:
    if isinstance(want, dict) and isinstance(have, dict):
        for key in sorted(set(want) | set(have)):
            if want.get(key) != have.get(key):
                return f"{key}: {have.get(key)!r}, the adapter's base had {want.get(key)!r}"
    return f"{have!r}, the adapter's base had {want!r}"
