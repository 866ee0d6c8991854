"""The backbone interface: the sequence model inside the token LM, swappable by name.

The token LM (tunesmith.lm.model) does the token-specific work — summing the K
codebook embeddings, projecting the conditioning, the K output heads — and hands a
(B, T, D) sequence of step embeddings to a backbone.  A backbone only has to be a
causal sequence-to-sequence map of the same width, which is what a Transformer
decoder (MusicGen, sec. 2.3) and a selective SSM (Mamba) have in common.

Two ways to run a backbone, which must agree (the tests check it):

- ``forward(x)``: the whole sequence at once (training, scoring);
- ``allocate_state(...)`` once, then ``step(x, state)`` on consecutive chunks: first a
  prefix of any length (prefill), then one position per decoding step.  The state is
  preallocated so decoding does no allocation per step: a KV cache for attention, the
  convolution and recurrent state for an SSM.

Backbones register under a name with a typed options dataclass; the LM config
carries ``backbone: str`` and ``backbone_config: dict`` (the options of that backbone,
validated by its dataclass), so a new backbone needs no change to the LM config.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import nn

from tunesmith.config import ConfigError, from_dict, to_dict


class Backbone(nn.Module):
    """A causal map (B, T, D) -> (B, T, D), with an incremental form for decoding.

    Subclasses set ``dim`` and ``supports_cross_attention`` (on the class: whether it
    can be built with cross-attention; an instance built without it may set it
    False) and implement the three methods below.  ``cross`` (B, S, D) is the
    conditioning already projected to the model width, ``cross_mask`` (B, S) bool is
    True where a conditioning position is real (at least one per row).  A backbone without cross-attention raises ``ValueError`` when given
    ``cross``; the LM then conditions it by prefix instead.
    """

    dim: int
    supports_cross_attention: bool = False
    #: set by the training engine (on GPU): recompute activations in backward to save memory
    gradient_checkpointing: bool = False

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, cross: torch.Tensor | None = None, cross_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Process a whole sequence causally: output position t sees inputs 0..t only."""
        raise NotImplementedError

    def allocate_state(self, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype) -> Any:
        """A fresh decoding state for ``batch_size`` sequences of up to ``max_len`` positions.

        The LM never looks inside the state; it only passes it back to :meth:`step`.
        """
        raise NotImplementedError

    def step(
        self,
        x: torch.Tensor,
        state: Any,
        cross: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Consume ``t`` new positions x (B, t, D) after those already in ``state``.

        Returns (B, t, D) equal to the matching rows of ``forward`` over the whole
        sequence so far, and updates ``state`` in place.  ``cross`` must be the same
        tensor on every call for one state (a backbone may cache what it derives
        from it on the first call).
        """
        raise NotImplementedError

    def check_cross(self, cross: torch.Tensor | None, cross_mask: torch.Tensor | None, x: torch.Tensor) -> None:
        """Clear errors for conditioning this backbone cannot use or that does not fit ``x``."""
        if cross is None:
            if cross_mask is not None:
                raise ValueError("cross_mask given without cross")
            return
        if not self.supports_cross_attention:
            raise ValueError(f"{type(self).__name__} has no cross-attention; condition it by prefix")
        if cross.dim() != 3 or cross.shape[0] != x.shape[0] or cross.shape[2] != self.dim:
            raise ValueError(f"cross must be (B={x.shape[0]}, S, D={self.dim}), got {tuple(cross.shape)}")
        if cross_mask is not None and cross_mask.shape != cross.shape[:2]:
            raise ValueError(f"cross_mask must be {tuple(cross.shape[:2])}, got {tuple(cross_mask.shape)}")


# ---------------------------------------------------------------------------
# registry

B = TypeVar("B", bound=type)

_BACKBONES: dict[str, tuple[type[Backbone], type]] = {}


def register_backbone(name: str, config_class: type) -> Callable[[B], B]:
    """Class decorator: make a backbone buildable by ``name``.

    The class is constructed as ``cls(dim, config, cross_attention=bool)`` where
    ``config`` is an instance of ``config_class`` (a dataclass whose defaults give a
    sensible backbone) and ``dim`` is the model width chosen by the LM.
    """

    def wrap(cls: B) -> B:
        _BACKBONES[name] = (cls, config_class)
        cls.backbone_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def _import_builtin_backbones() -> None:
    """Import every module of this package, so each backbone registers itself.

    New backbones (e.g. ``mamba2.py``) only have to live in this package.
    """
    import importlib
    import pkgutil

    import tunesmith.lm.backbones as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"{package.__name__}.{info.name}")


def backbone_names() -> list[str]:
    _import_builtin_backbones()
    return sorted(_BACKBONES)


def backbone_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The typed options of backbone ``name`` from a plain dict (unknown keys are errors)."""
    _import_builtin_backbones()
    if name not in _BACKBONES:
        raise ConfigError(f"unknown backbone '{name}' (known: {', '.join(sorted(_BACKBONES)) or 'none'})")
    return from_dict(_BACKBONES[name][1], dict(options or {}), where="backbone_config")


def default_backbone_options(name: str) -> dict[str, Any]:
    """The default options of backbone ``name`` as a plain dict (for configs and docs)."""
    return to_dict(backbone_config(name))


def build_backbone(name: str, dim: int, options: dict[str, Any] | None = None, *, cross_attention: bool = False) -> Backbone:
    """Construct the backbone registered as ``name`` at width ``dim``."""
    config = backbone_config(name, options)
    cls = _BACKBONES[name][0]
    if cross_attention and not cls.supports_cross_attention:
        raise ConfigError(f"backbone '{name}' has no cross-attention; use conditioning='prefix'")
    return cls(dim, config, cross_attention=cross_attention)
