"""Imports every module that registers a saveable model type or a generator family, so that
any model directory can be loaded by ``tunesmith.load`` without the caller importing it first."""

import importlib

MODEL_MODULES: list[str] = [
    "tunesmith.codec.model",
    "tunesmith.clap.model",
    "tunesmith.lm.model",
    "tunesmith.lm.generator",
    "tunesmith.diffusion.dit",
    "tunesmith.diffusion.pipeline",
]

for _name in MODEL_MODULES:
    importlib.import_module(_name)
