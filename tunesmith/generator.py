"""The one interface every generator sits behind (token LM, latent diffusion, hybrid, student).

The CLI, the Python API, the server and the evaluator talk only to this:

    gen = load_generator("NAME_OR_PATH")
    audio = gen.generate(["a waltz for strings"], duration=10.0, seed=0)   # Audio (B, C, T)

A generator directory is a model directory whose ``config.json`` names a
``generator_type``; each family registers a loader for its type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from tunesmith.audio import Audio
from tunesmith.checkpoint import CONFIG_FILE, CheckpointError, resolve


@runtime_checkable
class Generator(Protocol):
    sample_rate: int
    max_duration: float  # longest duration generate() accepts, in seconds

    def generate(
        self,
        prompts: str | list[str],
        duration: float,
        seed: int = 0,
        *,
        progress: bool = False,
        **controls: Any,
    ) -> Audio:
        """Audio (B, C, T) for a batch of prompts; ``controls`` are family-specific
        (``melody``, ``cfg``, ``steps``, ``temperature``, ``init_audio``, ``mask``, ...)."""
        ...


_LOADERS: dict[str, Callable[[Path, str], Generator]] = {}


def register_generator(generator_type: str) -> Callable[[Callable[[Path, str], Generator]], Callable[[Path, str], Generator]]:
    """Register ``loader(directory, device) -> Generator`` for a ``generator_type``."""

    def wrap(fn: Callable[[Path, str], Generator]) -> Callable[[Path, str], Generator]:
        _LOADERS[generator_type] = fn
        return fn

    return wrap


def check_request(prompts: str | list[str], duration: float, max_duration: float) -> list[str]:
    """Validate a generation request; returns the prompts as a list."""
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items:
        raise ValueError("no prompt given")
    for p in items:
        if not isinstance(p, str) or not p.strip():
            raise ValueError("prompt is empty")
        if len(p) > 2000:
            raise ValueError(f"prompt is too long ({len(p)} characters; the limit is 2000)")
    if not (duration > 0):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if duration > max_duration:
        raise ValueError(f"duration {duration:g} s is beyond this model's limit of {max_duration:g} s")
    return items


def load_generator(name_or_path: str | Path, device: str = "cpu") -> Generator:
    """Load any registered generator family from a bundled name or a directory."""
    directory = resolve(name_or_path)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: cannot read {CONFIG_FILE}: {err}") from None
    kind = meta.get("generator_type")
    import tunesmith.models_registry  # noqa: F401  (registers the families)

    if kind not in _LOADERS:
        known = ", ".join(sorted(_LOADERS)) or "none"
        raise CheckpointError(f"{directory} is not a generator (generator_type={kind!r}; known: {known})")
    return _LOADERS[kind](directory, device)
