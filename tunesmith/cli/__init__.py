"""`tunesmith <verb>`: the command line, one module per verb in this package.

Each verb module exposes ``register(subparsers)``; this file only assembles them,
importing each lazily so that ``tunesmith --help`` is instant.  It is also the CLI's one
error boundary: what a user can fix (bad input, missing files, config mistakes, a full
disk, undecodable text) prints one line on stderr and exits with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

from tunesmith import __version__
from tunesmith.errors import UserError

# verb -> (module that implements it, one-line help); nothing is listed that does not run
VERBS: dict[str, tuple[str, str]] = {
    "generate": ("tunesmith.cli.generate", "text (and melody) in, a .wav out"),
    "models": ("tunesmith.cli.models", "list the bundled models"),
    "train": ("tunesmith.cli.train", "train a model (codec, vae, clap, lm, diffusion) with the shared engine"),
    "finetune": ("tunesmith.cli.finetune", "fine-tune a model on a folder of your audio (LoRA); merge an adapter"),
    "eval": ("tunesmith.cli.eval", "evaluate a generator on a prompt set and write a report"),
    "data": ("tunesmith.cli.data", "build the open corpus, index user audio, write shards"),
    "codec": ("tunesmith.cli.codec", "encode/decode audio with the neural codec, evaluate, cache or export it"),
    "serve": ("tunesmith.cli.serve", "HTTP API and web page"),
}

# Errors that are the user's to fix, shown as one line.  OSError covers missing and
# unreadable files, permissions and a full disk; UnicodeError undecodable input.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, UnicodeError)


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every ``finally`` runs (temp files go)."""


@contextlib.contextmanager
def _exit_cleanly_on_sigterm() -> Iterator[None]:
    """A plain SIGTERM kills Python without unwinding; inside this block it unwinds instead
    (main thread only; the training engine installs its own handler, which saves a checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build_parser(load_verbs: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Open, fast text-to-music: token LMs, state-space models and latent diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        if load_verbs is not None and verb in load_verbs:
            register: Callable = importlib.import_module(module).register
            register(sub)
        else:
            sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def error_line(verb: str | None, err: BaseException) -> str:
    """The one line a user sees for ``err``."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        message = f"{where}{err.strerror}"
    else:
        message = str(err) or type(err).__name__
    message = " ".join(message.split())  # one line, whatever the message held
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # printable, whatever the input held
    if len(message) > 500:
        message = message[:497] + "..."
    return f"tunesmith{' ' + verb if verb else ''}: error: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([verb] if verb in VERBS else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        with _exit_cleanly_on_sigterm():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("tunesmith: terminated", file=sys.stderr)
        return 143
    except USER_ERRORS as err:
        print(error_line(args.verb, err), file=sys.stderr)
        return 2
