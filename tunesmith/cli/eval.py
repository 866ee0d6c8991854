"""`tunesmith eval`: evaluate a generator on a prompt set, build the benchmark set, self-check.

    tunesmith eval --model NAME_OR_PATH --prompts FILE [--reference DIR] --out DIR
    tunesmith eval --score-references --prompts FILE --reference DIR --out DIR
    tunesmith eval --build-benchmark MANIFEST --out DIR [--count 100] [--duration 10]
    tunesmith eval --self-check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a generator on a prompt set and write a report",
                       description="Generate every prompt of a prompt file with a model, measure the results "
                                   "(tempo, key, instrument family, CLAP score, FAD, KL, memorization, speed) "
                                   "and write metrics.json and an HTML report.")
    p.add_argument("--model", help="generator: bundled name or model directory")
    p.add_argument("--score-references", action="store_true",
                   help="instead of a model, score the reference clips themselves (the ceiling of every metric)")
    p.add_argument("--prompts", help="prompt file: JSONL with 'prompt' (+ targets) or plain text, one per line")
    p.add_argument("--reference", help="folder of real audio: <id>.wav pairs with prompt <id>; all files form the FAD set")
    p.add_argument("--out", help="output folder (report, metrics.json, audio)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip unless the prompt file says (default 10)")
    p.add_argument("--seed", type=int, default=0, help="generation seed unless the prompt file says (default 0)")
    p.add_argument("--draws", type=int, default=1,
                   help="generations per prompt, seeds seed, seed+1, ... (default 1): more draws, narrower intervals")
    p.add_argument("--clap", default=None, help="CLAP model for CLAP score/tags/FAD (default: the bundled clap-24k)")
    p.add_argument("--train-manifest", default=None, help="manifest whose train clips the memorization check compares against")
    p.add_argument("--memorization-clips", type=int, default=400, help="training clips to compare against (default 400)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--build-benchmark", metavar="MANIFEST", help="build the benchmark set from a corpus manifest into --out")
    p.add_argument("--count", type=int, default=100, help="benchmark prompts (default 100)")
    p.add_argument("--split", default="test", help="corpus split for the benchmark (default test)")
    p.add_argument("--self-check", action="store_true", help="measure the signal metrics on probe signals with known answers")
    p.add_argument("--unconditional", action="store_true",
                   help="generate with the prompts dropped (the baseline that shows what conditioning adds)")
    p.add_argument("--through-codec", metavar="CODEC",
                   help="with --score-references: score the references after a round trip through this codec "
                        "(the codec-reconstruction floor)")
    p.add_argument("--codebooks", type=int, default=None, help="with --through-codec: RVQ stages to keep")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tunesmith.errors import UserError

    if args.self_check:
        return _self_check()
    if args.build_benchmark:
        if not args.out:
            raise UserError("--build-benchmark needs --out DIR")
        from tunesmith.data.manifest import ManifestError
        from tunesmith.eval.benchmark import build_benchmark

        try:
            path = build_benchmark(args.build_benchmark, args.out, count=args.count, duration=args.duration,
                                   split=args.split, seed=args.seed, progress=not args.no_progress)
        except (ManifestError, ValueError) as err:
            raise UserError(str(err)) from None
        print(f"benchmark written: {path}")
        return 0
    if args.unconditional and args.score_references:
        raise UserError("--unconditional needs a model; references are not generated")
    if args.through_codec and not args.score_references:
        raise UserError("--through-codec goes with --score-references (it round-trips the references)")
    needed = [("--prompts", args.prompts), ("--out", args.out)]
    needed.append(("--reference", args.reference) if args.score_references else ("--model", args.model))
    missing = [flag for flag, value in needed if not value]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (usage: tunesmith eval --model NAME --prompts FILE --out DIR)")
    if args.duration <= 0:
        raise UserError(f"--duration must be positive, got {args.duration}")
    reference = Path(args.reference) if args.reference else None
    if reference is not None and not reference.is_dir():
        raise UserError(f"reference folder not found: {reference}")
    if args.train_manifest and not Path(args.train_manifest).is_file():
        raise UserError(f"train manifest not found: {args.train_manifest}")

    try:
        import matplotlib  # noqa: F401  (the report's plots)
    except ImportError:
        raise UserError("the evaluation report needs matplotlib: pip install 'tunesmith[eval]'") from None

    from tunesmith.audio import AudioError, load_audio
    from tunesmith.eval.evaluate import EvalOptions, evaluate, with_draws
    from tunesmith.eval.prompts import PromptFileError, read_prompts
    from tunesmith.eval.report import write_report
    from tunesmith.generator import check_request, load_generator

    try:
        specs = with_draws(read_prompts(args.prompts, duration=args.duration, seed=args.seed), args.draws, reference)
    except (PromptFileError, ValueError) as err:
        raise UserError(str(err)) from None
    generator = None if args.score_references else load_generator(args.model, device=args.device)
    for spec in specs:
        try:
            check_request(spec.prompt, spec.duration, generator.max_duration if generator else float("inf"))
        except ValueError as err:
            raise UserError(f"prompt '{spec.id}': {err}") from None
    options = EvalOptions(
        reference_dir=reference, clap=args.clap, train_manifest=Path(args.train_manifest) if args.train_manifest else None,
        memorization_clips=args.memorization_clips, seed=args.seed, progress=not args.no_progress,
        unconditional=args.unconditional, through_codec=args.through_codec, codec_codebooks=args.codebooks,
    )
    out = Path(args.out)
    name = "references" if generator is None else str(args.model)
    if args.through_codec:
        name = f"references through {args.through_codec}"
    try:
        results = evaluate(generator, specs, out, options, model_name=name)
    except AudioError as err:
        raise UserError(str(err)) from None
    audio = [(load_audio(out / row["audio"], allow_silent=True).samples, results["sample_rate"]) for row in results["items"]]
    page = write_report(results, audio, out)
    measured = []
    for name, target in results["summary"]["targets"].items():
        value = target["value"]
        measured.append(f"{name}={'-' if value is None else format(value, '.2f')}")
    print(f"report: {page}  ({', '.join(measured)})")
    return 0


def _self_check() -> int:
    """Print the signal metrics on probes whose answers are known."""
    from tunesmith.eval import metrics as M
    from tunesmith.music import parse_key_name
    from tunesmith.eval import probes as P

    sr = 24000
    report = {"tempo": {}, "key": {}}
    for bpm in (70, 96, 120, 144):
        report["tempo"][f"click {bpm}"] = round(M.estimate_tempo(P.click_track(bpm, sr, 10.0), sr), 2)
    for name in ("C major", "A minor", "B-flat major", "F# minor"):
        key = parse_key_name(name)
        notes = P.cadence_notes(key)
        wav = P.synthesize(notes, sr, max(n[0] + n[1] for n in notes) + 0.2)
        report["key"][f"cadence {name}"] = M.estimate_key(wav, sr).name
    tune = P.synthesize(P.tune_notes(M.Key(0, "major"), 110), sr, 8.0)
    report["chroma_cosine_self"] = round(M.chroma_cosine_similarity(tune, tune, sr), 6)
    print(json.dumps(report, indent=2))
    return 0
