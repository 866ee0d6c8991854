"""The models a server runs: loaded once per process, shared by the worker threads.

A generator is not safe to run from two threads at once (its modules keep no per-call
state, but one batch at a time is also what the cores can do), so each model has a lock
that a worker holds while it generates; different models run side by side.

Models are served under an id: the bundled name as given, or the directory's name for a
model directory (a request never sees or sends a path).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.audio import Audio
from tunesmith.generator import Generator, load_generator


@dataclass
class ServedModel:
    id: str
    source: str  # what it was loaded from: a bundled name or a directory
    generator: Generator
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def audio_inputs(self) -> list[str]:
        """The controls that take reference audio (uploaded as files)."""
        return sorted(name for name, control in self.generator.CONTROLS.items()
                      if Audio in (control.types if isinstance(control.types, tuple) else (control.types,)))

    def describe(self, max_duration: float) -> dict[str, Any]:
        gen = self.generator
        controls = {}
        for name, control in gen.CONTROLS.items():
            kinds = control.types if isinstance(control.types, tuple) else (control.types,)
            controls[name] = {"types": [k.__name__ for k in kinds], "low": control.low, "high": control.high}
        return {"id": self.id, "type": gen.generator_type, "sample_rate": gen.sample_rate,
                "channels": gen.channels, "max_duration": min(gen.max_duration, max_duration),
                "default_cfg": gen.cfg, "controls": controls, "audio_inputs": self.audio_inputs}


def model_id(name: str) -> str:
    """The id a model is served under: a directory by its name, a bundled model by its own."""
    path = Path(name)
    return path.name if (path.is_dir() or len(path.parts) > 1) else name


class ModelRegistry:
    """Model id -> loaded generator; the first model is the default."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.models = models
        self.default = next(iter(models))

    @classmethod
    def load(cls, names: tuple[str, ...] | list[str], device: str = "cpu") -> "ModelRegistry":
        models: dict[str, ServedModel] = {}
        for name in names:
            ident = model_id(str(name))
            if ident in models:
                raise ValueError(f"two models would be served as '{ident}': {models[ident].source} and {name}")
            models[ident] = ServedModel(ident, str(name), load_generator(name, device=device))
        return cls(models)

    @classmethod
    def of(cls, generators: dict[str, Generator]) -> "ModelRegistry":
        """Serve generators already in memory (tests, notebooks) under the given ids."""
        return cls({ident: ServedModel(ident, ident, gen) for ident, gen in generators.items()})

    def get(self, ident: str | None) -> ServedModel:
        """The model for a request's ``model`` (None: the default); KeyError names the known ones."""
        ident = self.default if ident in (None, "", "default") else ident
        if ident not in self.models:
            raise KeyError(f"unknown model '{ident}' (this server has: {', '.join(self.models)})")
        return self.models[ident]

    def __iter__(self):
        return iter(self.models.values())
