"""An adapter directory loaded as a generator: the base generator with the update merged in.

``tunesmith.load("my-style")`` (and ``tunesmith generate --model my-style``, the server, the
evaluator) get the base family's own generator, a ``LatentDiffusionGenerator`` or a
``TokenLMGenerator``, whose network holds ``W + strength * (alpha / r) * B @ A``.  Merging
once at load time makes generation cost exactly what the base costs (no extra matmuls
per step), and the LM's int8 decoding quantises the merged weights.  Strength 0 adds
zeros: the base, exactly.  Loading imports neither peft nor any training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.adapters import lora
from tunesmith.adapters.directory import Adapter, base_directory, read_adapter
from tunesmith.checkpoint import load_model, read_model_config
from tunesmith.errors import CheckpointError
from tunesmith.generator import CODEC_DIR, Generator, generator_class

MAX_SCALE = 10.0  # a strength beyond this is a typo, not a style


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -MAX_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"adapter scale must be a number in [-{MAX_SCALE:g}, {MAX_SCALE:g}], got {scale!r}")
    return float(scale)


def load_adapter_generator(directory: str | Path, device: str = "cpu", adapter_scale: float | None = None) -> Generator:
    """The base generator of the adapter at ``directory`` with its update merged at ``adapter_scale``
    (default: the strength saved with the adapter, 1 unless changed)."""
    adapter = read_adapter(directory)
    scale = check_scale(adapter.meta["scale"] if adapter_scale is None else adapter_scale)
    base_dir = base_directory(adapter)
    meta = read_model_config(base_dir)
    network = load_model(base_dir, map_location=device).float()  # fp16 on disk, fp32 to run and merge into
    lora.merge(network, adapter.pairs, adapter.scaling(scale))
    codec_dir = base_dir / CODEC_DIR
    if not meta.get("codec") and not codec_dir.is_dir():
        raise CheckpointError(f"{base_dir} has no codec under {CODEC_DIR}/ and names no bundled one")
    codec = load_model(meta.get("codec") or codec_dir, map_location=device)
    generator = generator_class(meta["generator_type"]).from_parts(network, codec, meta, device)
    generator.adapter = describe(adapter, base_dir, scale)  # type: ignore[attr-defined]
    return generator


def describe(adapter: Adapter, base_dir: Path, scale: float) -> dict[str, Any]:
    """What a generator made from an adapter records (in sidecars, in a merged model's config)."""
    return {"adapter": str(adapter.directory), "base": adapter.base, "base_dir": str(base_dir), "scale": scale,
            "rank": adapter.meta["rank"], "layers": len(adapter.pairs)}


class AdapterGenerator:
    """The loader behind ``generator_type: "lora-adapter"`` (checkpoint.GENERATOR_TYPE_MODULES):
    it builds the base family's generator, so there is no adapter class at generation time."""

    generator_type = "lora-adapter"

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", adapter_scale: float | None = None) -> Generator:
        return load_adapter_generator(directory, device, adapter_scale)


def merge_adapter(directory: str | Path, out: str | Path, *, adapter_scale: float | None = None,
                  fp16: bool = False) -> Path:
    """Write base + adapter as one full generator directory, loadable without the adapter or its base.

    Stored in fp32 by default, so the merged model generates exactly what the adapter does
    (``fp16`` halves the file at the cost of rounding the merged weights)."""
    generator = load_adapter_generator(directory, "cpu", adapter_scale)
    base_meta = read_model_config(generator.adapter["base_dir"])  # type: ignore[attr-defined]
    history = {"merged_from": generator.adapter, "base_training": base_meta.get("training")}  # type: ignore[attr-defined]
    return generator.save(out, codec_name=base_meta.get("codec"), fp16=fp16, extra=history)
