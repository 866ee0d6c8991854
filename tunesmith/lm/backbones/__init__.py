"""Sequence backbones of the token LM (Transformer, Mamba, ...) behind one interface."""

from tunesmith.lm.backbones.base import (
    Backbone,
    backbone_config,
    backbone_names,
    build_backbone,
    default_backbone_options,
    register_backbone,
)

__all__ = [
    "Backbone",
    "backbone_config",
    "backbone_names",
    "build_backbone",
    "default_backbone_options",
    "register_backbone",
]
