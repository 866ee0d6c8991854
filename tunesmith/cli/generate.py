"""`tunesmith generate`: text (and a melody) in, an audio file out.

Everything is checked before any work starts (prompt, duration, model, controls,
output path; the melody file only once the model is known to take one), so a bad
request costs nothing and leaves no partial file.  Each output gets a sidecar JSON
with the prompt, seed, model and settings, so any result can be reproduced.

An output and its sidecar are written as a pair: both to temp files beside the
targets, then renamed together under a lock on the folder, so a reader never finds
one run's audio beside another's sidecar, and the previous files survive any failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tunesmith import DEFAULT_GENERATOR
from tunesmith.errors import UserError

FORMATS = ("wav", "flac", "ogg", "mp3")
STDOUT = "-"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="text (and melody) in, a .wav out",
                       description="Generate music from a text prompt with a bundled or local model.")
    p.add_argument("prompt", nargs="?", help="what the music should be, e.g. 'a lively jig for fiddle, 120 BPM'")
    p.add_argument("--prompts", metavar="FILE", help="a text file with one prompt per line (batch mode)")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="output file (one prompt; '-' for stdout) or directory (--prompts); default: output.<format> / outputs/")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of audio (default 10; for a time-stamped prompt, the end of its last section)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same audio")
    p.add_argument("--model", default=DEFAULT_GENERATOR, help=f"bundled name or model directory (default {DEFAULT_GENERATOR})")
    p.add_argument("--adapter-scale", type=float, default=None, metavar="S",
                   help="with a LoRA adapter as --model: the strength of its update (0: the base; default 1)")
    p.add_argument("--melody", metavar="REF",
                   help="audio or MIDI file whose melody to follow (melody token LMs; diffusion models by noise optimisation)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (model default if unset)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (diffusion models)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (token-LM models)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (token-LM models)")
    p.add_argument("--int8", action="store_true", help="int8 weights for decoding (token LMs on CPU: about 4x faster "
                                                     "for MusicGen, logits within about 1%%)")
    p.add_argument("--intensity", metavar="CURVE",
                   help="loudness over time, e.g. '0:soft,5:loud,10:-30' (seconds:dBFS or word), or an audio file "
                        "whose loudness to follow (diffusion models, by noise optimisation)")
    p.add_argument("--structure", metavar="PATTERN", help="sections that repeat, e.g. AABA or 'A:4,B:8,A:4' (diffusion)")
    p.add_argument("--loop", type=float, metavar="S", help="a seamless loop: S more seconds are rendered, made to repeat the head and "
                   "crossfaded into it; the file is --duration long (diffusion)")
    p.add_argument("--clap", metavar="TEXT", help="make it sound like TEXT by tunesmith's CLAP (diffusion models, "
                                                   "by noise optimisation; with --unconditional, text control of the "
                                                   "unconditional model)")
    p.add_argument("--unconditional", action="store_true", default=None,
                   help="ignore the prompt's text (diffusion models): a baseline, or for --clap")
    p.add_argument("--control-iterations", type=int, metavar="N", default=None,
                   help="noise-optimisation steps for --intensity/--structure/--loop/--melody/--clap (default 20)")
    p.add_argument("--control-lr", type=float, metavar="LR", default=None,
                   help="noise-optimisation learning rate (default 0.05; loops converge faster at 0.15)")
    p.add_argument("--control-surrogate", metavar="STUDENT", default=None,
                   help="DITTO-2: optimise the noise through one step of this distilled student of --model "
                        "(faster), then sample with --model")
    p.add_argument("--init-audio", metavar="FILE",
                   help="start from this audio: audio-to-audio at --strength; with --inpaint, regenerate only those "
                        "regions; shorter than --duration, continue it (outpainting) (diffusion models)")
    p.add_argument("--strength", type=float, default=None, help="how much of --init-audio to change, 0-1 (default 0.7)")
    p.add_argument("--inpaint", metavar="START:END", action="append",
                   help="seconds of --init-audio to regenerate, e.g. 4:6 (repeatable); the rest is kept as it is")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--loudness", type=float, default=None, metavar="LUFS",
                      help="normalise the output to this integrated loudness, true peak <= -1 dBTP (default -16)")
    loud.add_argument("--no-loudness", action="store_true", help="the raw model output, not loudness-normalised")
    p.add_argument("--format", choices=FORMATS, default=None, help="audio format (default: from the file name's suffix, else wav)")
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
    for target in (path, sidecar_path(path)):
        if target.is_dir():
            raise UserError(f"cannot write {target}: it is a directory")
        if target.exists() and not target.is_file():
            raise UserError(f"cannot write {target}: it exists and is not a regular file")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    if len(os.fsencode(sidecar_path(path).name)) > name_max:
        raise UserError(f"cannot write {path}: the file name is too long (with '.json' for the sidecar, "
                        f"over {name_max} bytes)")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def output_format(path: Path, requested: str | None) -> tuple[Path, str]:
    """The file and format for ``-o PATH [--format F]``: the suffix names the format; a name
    with no suffix gets one; a suffix that is not an audio format, or that contradicts
    ``--format``, is refused rather than silently changed."""
    suffix = path.suffix.lstrip(".").lower()
    if suffix in FORMATS:
        if requested and requested != suffix:
            raise UserError(f"--format {requested} contradicts the output name {path} (a .{suffix} file)")
        return path, suffix
    if suffix:
        raise UserError(f"cannot tell the audio format of '{path.name}': name it .wav, .flac, .ogg or .mp3, "
                        "or drop the suffix and give --format")
    fmt = requested or "wav"
    return path.with_name(f"{path.name}.{fmt}"), fmt


def plan_outputs(args: argparse.Namespace, prompts: list[str]) -> tuple[list[Path | None], str]:
    """Output paths (one per prompt; None = stdout) and the audio format."""
    if args.prompts:
        if args.output == STDOUT:
            raise UserError("-o - (stdout) takes one prompt, not --prompts")
        out_dir = Path(args.output or "outputs")
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--output {out_dir} must be a directory with --prompts")
        out_dir.mkdir(parents=True, exist_ok=True)
        fmt = args.format or "wav"
        paths: list[Path | None] = [out_dir / f"{i:03d}_{_slug(p)}.{fmt}" for i, p in enumerate(prompts)]
    elif args.output == STDOUT:
        return [None], args.format or "wav"
    else:
        given = Path(args.output or f"output.{args.format or 'wav'}")
        if given.exists() and not given.is_file() and not given.is_dir():
            raise UserError(f"cannot write {given}: it exists and is not a regular file")
        path, fmt = output_format(given, args.format)
        paths = [path]
    for path in paths:
        assert path is not None
        _check_writable(path)
    return paths, fmt


def parse_region(text: str) -> tuple[float, float]:
    """'4:6' -> (4.0, 6.0): seconds to regenerate."""
    start, sep, end = text.partition(":")
    try:
        region = (float(start), float(end))
    except ValueError:
        region = None
    if not sep or region is None or not (0 <= region[0] < region[1] < float("inf")):
        raise UserError(f"--inpaint {text!r}: expected START:END in seconds with 0 <= START < END, e.g. 4:6")
    return region


def _slug(text: str, limit: int = 40) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(filter(None, keep.split("-")))[:limit] or "prompt"


def run(args: argparse.Namespace) -> int:
    from tunesmith.conditioning.melody import MIDI_SUFFIXES
    from tunesmith.generator import check_request, check_seed, load_generator

    if args.prompt and args.prompts:
        raise UserError("give a prompt or --prompts FILE, not both")
    if not args.prompt and not args.prompts:
        if args.prompt is not None:
            raise UserError("prompt is empty")
        raise UserError("no prompt given (tunesmith generate \"PROMPT\" or --prompts FILE)")
    prompts = read_prompts(args.prompts) if args.prompts else [args.prompt]
    if args.duration is None:  # a time-stamped prompt says how long it is
        from tunesmith.conditioning.prompt import parse_timed_prompt

        try:
            ends = [sections[-1].end for sections in map(parse_timed_prompt, prompts) if sections]
        except ValueError as err:
            raise UserError(str(err)) from None
        args.duration = max(ends) if ends else 10.0
    if not (args.duration > 0) or args.duration == float("inf"):
        raise UserError(f"--duration must be > 0 seconds, got {args.duration:g}")
    paths, fmt = plan_outputs(args, prompts)
    if args.adapter_scale is not None:
        from tunesmith.adapters.generator import check_scale

        try:
            check_scale(args.adapter_scale)
        except ValueError as err:
            raise UserError(f"--adapter-scale: {err}") from None
    generator = load_generator(args.model, adapter_scale=args.adapter_scale)
    if args.int8:
        if not hasattr(generator, "use_int8"):
            raise UserError(f"--int8 is for token-LM models; '{args.model}' is a {generator.generator_type} model")
        generator.use_int8()
    controls: dict[str, Any] = {name: getattr(args, name) for name in ("cfg", "steps", "temperature", "top_k",
                                                                       "intensity", "structure", "loop",
                                                                       "control_iterations", "control_lr", "control_surrogate",
                                                                       "strength", "init_audio",
                                                                       "clap", "unconditional")
                                if getattr(args, name) is not None}
    if args.inpaint:
        if args.init_audio is None:
            raise UserError("--inpaint needs the audio it applies to (--init-audio FILE)")
        controls["mask"] = [parse_region(text) for text in args.inpaint]
    try:
        check_request(prompts, args.duration, generator.max_duration)
        check_seed(args.seed)
        if args.loudness is not None:
            from tunesmith.loudness import check_target

            check_target(args.loudness, "--loudness")
        if args.melody and not generator.accepts("melody"):
            raise UserError(f"the model '{args.model}' takes no melody (--melody needs a melody-conditioned "
                            "token LM or a diffusion model); nothing was read or written")
        generator.check_controls({**controls, **({"melody": args.melody} if args.melody else {})})
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.melody and Path(args.melody).suffix.lower() in MIDI_SUFFIXES:
        controls["melody"] = args.melody  # read by the model, at its own frame rate
    elif args.melody:  # only what the output needs of it: a 2-hour file costs seconds, not gigabytes
        from tunesmith.audio import load_audio

        controls["melody"] = load_audio(args.melody, sample_rate=generator.sample_rate, channels=1,
                                        max_seconds=args.duration)

    # the sidecar records the loudness setting and what it did (audio.info["loudness"])
    loudness: dict[str, Any] = {"loudness": None} if args.no_loudness else \
        {} if args.loudness is None else {"loudness": args.loudness}
    for i, (prompt, path) in enumerate(zip(prompts, paths)):
        start = time.perf_counter()
        try:
            audio = generator.generate([prompt], args.duration, seed=args.seed + i,
                                       progress=not args.no_progress, **loudness, **controls)
        except ValueError as err:
            raise UserError(str(err)) from None
        seconds = time.perf_counter() - start
        sidecar = {
            "prompt": prompt,
            "seed": args.seed + i,
            "model": args.model,
            "duration": args.duration,
            "sample_rate": audio.sample_rate,
            "format": fmt,
            "melody": args.melody,
            "controls": {k: v for k, v in controls.items() if k != "melody"},
            "generation_seconds": round(seconds, 3),
            **({"int8": True} if args.int8 else {}),  # int8 decoding gives other audio than fp32
            **({"adapter": generator.adapter} if hasattr(generator, "adapter") else {}),  # a LoRA adapter: its base, strength
            **audio.info,  # e.g. each control's achieved loss and adherence
        }
        write_output(path, audio.samples[0], audio.sample_rate, fmt, sidecar)
        where = "stdout" if path is None else str(path)
        print(f"{where}  ({args.duration:g} s of audio in {seconds:.1f} s)", file=sys.stderr if path is None else sys.stdout)
    return 0


def write_output(path: Path | None, samples: Any, sample_rate: int, fmt: str, sidecar: dict[str, Any]) -> None:
    """The audio and its sidecar as a pair (see the module docstring); to stdout for ``-o -``
    (the sidecar then goes to stderr as one JSON line)."""
    from tunesmith.audio import write_audio
    from tunesmith.files import atomic_group, remove_stale_temps

    if path is None:
        buffer = io.BytesIO()  # whole, so that a failure writes nothing to the pipe
        write_audio(buffer, samples, sample_rate, fmt)
        sys.stdout.buffer.write(buffer.getvalue())
        sys.stdout.buffer.flush()
        print(json.dumps(sidecar, ensure_ascii=True), file=sys.stderr)
        return
    remove_stale_temps(path)
    remove_stale_temps(sidecar_path(path))
    with atomic_group(sidecar_path(path), path) as (sidecar_tmp, audio_tmp):
        write_audio(audio_tmp, samples, sample_rate, fmt)
        sidecar_tmp.write_text(json.dumps(sidecar, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
