"""`tunesmith generate`: text (and a melody) in, an audio file out.

Everything is checked before any work starts (prompt, duration, model, melody file,
output path), so a bad request costs nothing and leaves no partial file.  Each
output gets a sidecar JSON with the prompt, seed, model and settings, so any
result can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from tunesmith import DEFAULT_GENERATOR
from tunesmith.errors import UserError

FORMATS = ("wav", "flac")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text (and melody) in, a .wav out",
                       description="Generate music from a text prompt with a bundled or local model.")
    p.add_argument("prompt", nargs="?", help="what the music should be, e.g. 'a lively jig for fiddle, 120 BPM'")
    p.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line (batch mode)")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="output file (one prompt) or directory (--prompts); default: output.<format> / outputs/")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same audio")
    p.add_argument("--model", default=DEFAULT_GENERATOR, help=f"bundled name or model directory (default {DEFAULT_GENERATOR})")
    p.add_argument("--melody", metavar="REF", help="audio file whose melody to follow (token-LM models)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (model default if unset)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (diffusion models)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (token-LM models)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (token-LM models)")
    p.add_argument("--format", choices=FORMATS, default=None, help="audio format (default: from the suffix, else wav)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """Non-empty, non-comment lines of a prompt file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompt file not found: {path}")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} has no prompts")
    return prompts


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {path}: directory {parent} is not writable")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")


def plan_outputs(args: argparse.Namespace, prompts: list[str]) -> tuple[list[Path], str]:
    """Output paths (one per prompt) and the audio format."""
    fmt = args.format
    if args.prompts:
        out_dir = Path(args.output or "outputs")
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--output {out_dir} must be a directory with --prompts")
        out_dir.mkdir(parents=True, exist_ok=True)
        fmt = fmt or "wav"
        paths = [out_dir / f"{i:03d}_{_slug(p)}.{fmt}" for i, p in enumerate(prompts)]
    else:
        path = Path(args.output or f"output.{fmt or 'wav'}")
        suffix = path.suffix.lstrip(".").lower()
        if fmt is None:
            fmt = suffix if suffix in FORMATS else "wav"
        if suffix != fmt:
            path = path.with_name(path.name + f".{fmt}") if suffix not in FORMATS else path.with_suffix(f".{fmt}")
        paths = [path]
    for path in paths:
        _check_writable(path)
    return paths, fmt


def _slug(text: str, limit: int = 40) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(filter(None, keep.split("-")))[:limit] or "prompt"


def run(args: argparse.Namespace) -> int:
    from tunesmith.audio import load_audio, save_audio
    from tunesmith.files import atomic_write_text
    from tunesmith.generator import check_request, load_generator

    if args.prompt and args.prompts:
        raise UserError("give a prompt or --prompts FILE, not both")
    if not args.prompt and not args.prompts:
        if args.prompt is not None:
            raise UserError("prompt is empty")
        raise UserError("no prompt given (tunesmith generate \"PROMPT\" or --prompts FILE)")
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
    if not (args.duration > 0):
        raise UserError(f"--duration must be > 0 seconds, got {args.duration:g}")
    paths, fmt = plan_outputs(args, prompts)
    generator = load_generator(args.model)
    try:
        check_request(prompts, args.duration, generator.max_duration)
    except ValueError as err:
        raise UserError(str(err)) from None
    controls: dict[str, Any] = {}
    if args.melody:
        controls["melody"] = load_audio(args.melody, sample_rate=generator.sample_rate, channels=1)
    for name in ("cfg", "steps", "temperature", "top_k"):
        value = getattr(args, name)
        if value is not None:
            controls[name] = value

    for i, (prompt, path) in enumerate(zip(prompts, paths)):
        start = time.perf_counter()
        try:
            audio = generator.generate([prompt], args.duration, seed=args.seed + i,
                                       progress=not args.no_progress, **controls)
        except ValueError as err:  # a control this model does not take (e.g. --melody on a text-only model)
            raise UserError(str(err)) from None
        seconds = time.perf_counter() - start
        sidecar = {
            "prompt": prompt,
            "seed": args.seed + i,
            "model": args.model,
            "duration": args.duration,
            "sample_rate": audio.sample_rate,
            "melody": args.melody,
            "controls": {k: v for k, v in controls.items() if k != "melody"},
            "generation_seconds": round(seconds, 3),
        }
        save_audio(path, audio.samples[0], audio.sample_rate, format=fmt)  # atomic: whole file or none
        try:
            atomic_write_text(path.with_suffix(path.suffix + ".json"), json.dumps(sidecar, indent=2) + "\n")
        except BaseException:
            path.unlink(missing_ok=True)  # never leave audio that cannot be reproduced
            raise
        print(f"{path}  ({args.duration:g} s of audio in {seconds:.1f} s)")
    return 0
