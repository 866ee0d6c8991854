"""`tunesmith models`: what is bundled."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tunesmith.checkpoint import BUNDLED_DIR, bundled_models, read_model_config

    names = bundled_models()
    if not names:
        print("no bundled models in this build")
    for name in names:
        meta = read_model_config(BUNDLED_DIR / name)
        print(f"{name}\t{meta['model_type']}")
    return 0
