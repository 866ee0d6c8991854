"""`tunesmith <verb>`: the command line.

Each verb lives with the subsystem it drives, in a ``cli.py`` of that package
exposing ``register(subparsers)``; this file only assembles them, importing each
lazily so that ``tunesmith --help`` is instant.  User errors (bad input, missing
files, config mistakes) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from tunesmith import __version__
from tunesmith.errors import UserError

# verb -> (module that implements it, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "generate": ("tunesmith.generate_cli", "text (and melody) in, a .wav out"),
    "train": ("tunesmith.train.cli", "train a model (codec, vae, clap, lm, diffusion) with the shared engine"),
    "eval": ("tunesmith.eval.cli", "evaluate a generator on a prompt set and write a report"),
    "data": ("tunesmith.data.cli", "build the open corpus, index user audio, write shards"),
    "codec": ("tunesmith.codec.cli", "encode/decode audio with the neural codec, train or evaluate it"),
    "serve": ("tunesmith.serve.cli", "HTTP API and web page"),
    "models": ("tunesmith.models_cli", "list the bundled models"),
}


def _user_error_types() -> tuple[type[BaseException], ...]:
    from tunesmith.audio import AudioError
    from tunesmith.checkpoint import CheckpointError
    from tunesmith.config import ConfigError

    return (UserError, ConfigError, CheckpointError, AudioError, FileNotFoundError, PermissionError)


def build_parser(load_verbs: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Open, fast text-to-music: token LMs, state-space models and latent diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        if load_verbs is not None and verb in load_verbs:
            try:
                register: Callable = importlib.import_module(module).register
            except ModuleNotFoundError as err:
                if err.name and err.name.startswith("tunesmith"):
                    p = sub.add_parser(verb, help=help_text)
                    p.set_defaults(func=_not_yet(verb))
                    continue
                raise
            register(sub)
        else:
            sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def _not_yet(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise UserError(f"'tunesmith {verb}' is not available in this version yet")

    return run


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([verb] if verb in VERBS else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as err:
        print(f"tunesmith {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
