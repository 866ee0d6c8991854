"""Imports every module that registers a saveable model type, so any model directory can load."""

import importlib

MODEL_MODULES: list[str] = []

for _name in MODEL_MODULES:
    importlib.import_module(_name)
