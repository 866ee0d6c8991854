"""`tunesmith finetune`: LoRA adapters on a folder of your audio, and merging them into a full model.

    tunesmith finetune DIR --model tunesmith-small-dit --out my-style [--rank 16] [--steps N] [--captions auto|FILE]
    tunesmith generate "..." --model my-style [--adapter-scale 0.7]
    tunesmith finetune merge my-style --out my-model [--adapter-scale S] [--fp16]

(A folder that is literally named ``merge`` is given as ``./merge``.)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from tunesmith import DEFAULT_GENERATOR
from tunesmith.errors import UserError

MERGE = "merge"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on a folder of your audio (LoRA), or merge an adapter",
                       description="Train LoRA adapters for a generator on a folder of audio; "
                                   "`tunesmith finetune merge ADAPTER --out DIR` folds one into a full model.")
    p.add_argument("folder", metavar="DIR", help="folder of audio (wav, flac, ogg, mp3, ...), or 'merge'")
    p.add_argument("adapter", nargs="?", metavar="ADAPTER", help="with 'merge': the adapter directory")
    p.add_argument("--model", default=DEFAULT_GENERATOR, help=f"the base generator (default {DEFAULT_GENERATOR})")
    p.add_argument("--out", required=True, help="the adapter directory to write (with merge: the merged model's)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, default=0.0, help="LoRA alpha (default: the rank, a scaling of 1)")
    p.add_argument("--targets", default="", metavar="NAMES",
                   help="comma-separated layer-name suffixes to adapt (default: attention and feed-forward projections)")
    p.add_argument("--steps", type=int, default=200, help="training steps at most (default 200; early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=4, help="10 s windows per step (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--captions", default="auto", metavar="auto|FILE",
                   help="'auto' (default): sidecar captions where present, else the time-aware captioner's "
                        "(tempo, key, instruments, sections); or a CSV/JSONL table with file and caption columns")
    p.add_argument("--segment", type=float, default=30.0, metavar="S", help="cut files into clips of S seconds (default 30)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of the audio, in whole files, held out for validation (default 0.1)")
    p.add_argument("--prior-share", type=float, default=0.0, metavar="F",
                   help="share of the training clips the base generates from its own prompts (prior preservation: "
                        "keeps prompt adherence, costs style; measured in docs/finetune.md; default 0: off)")
    p.add_argument("--valid-every", type=int, default=40, help="validate every N steps (default 40; 0: never)")
    p.add_argument("--patience", type=int, default=3, help="stop after N validations without a new best (default 3; 0: never)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and split")
    p.add_argument("--run-dir", default="", help="index, cache, checkpoints and logs (default: OUT.run)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last checkpoint")
    p.add_argument("--adapter-scale", type=float, default=None, help="with merge: the strength to merge at (default 1)")
    p.add_argument("--fp16", action="store_true", help="with merge: store the merged weights in fp16 (half the size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.folder == MERGE and args.adapter is not None:
        return _merge(args)
    if args.folder == MERGE:
        raise UserError("tunesmith finetune merge ADAPTER --out DIR: name the adapter directory to merge")
    if args.adapter is not None:
        raise UserError(f"unexpected argument '{args.adapter}' (one folder to fine-tune on; 'merge ADAPTER' to merge)")
    if args.adapter_scale is not None or args.fp16:
        raise UserError("--adapter-scale and --fp16 go with 'finetune merge' (or --adapter-scale with 'generate')")
    if args.rank < 1:
        raise UserError(f"--rank must be at least 1, got {args.rank}")
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if not (0 <= args.valid_fraction < 1):
        raise UserError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if not (0 <= args.prior_share < 1):
        raise UserError(f"--prior-share must be in [0, 1), got {args.prior_share}")
    if not Path(args.folder).is_dir():
        raise UserError(f"no such folder: {args.folder}")

    from tunesmith.adapters.data import DataOptions
    from tunesmith.adapters.finetune import FinetuneConfig, run_finetune
    from tunesmith.adapters.lora import LoraSettings

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    config = FinetuneConfig(
        folder=args.folder, model=args.model, out=args.out, run_dir=args.run_dir,
        lora=LoraSettings(rank=args.rank, alpha=args.alpha, targets=targets),
        data=DataOptions(captions=args.captions, segment_seconds=args.segment, valid_fraction=args.valid_fraction,
                         seed=args.seed),
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, valid_every=args.valid_every,
        patience=args.patience, prior_share=args.prior_share, seed=args.seed, progress=not args.no_progress)
    result = run_finetune(config, resume=args.resume)
    if result.adapter is None:
        return 0
    best = "" if result.valid_loss_best is None else (
        f"; held-out loss {result.valid_loss_base:.4f} -> {result.valid_loss_best:.4f} (step {result.best_step})")
    print(f"{result.adapter}: {result.steps} steps in {result.minutes['total']:.1f} min{best}. "
          f"Generate with: tunesmith generate \"...\" --model {result.adapter}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from tunesmith.adapters.generator import check_scale, merge_adapter

    scale = None
    if args.adapter_scale is not None:
        try:
            scale = check_scale(args.adapter_scale)
        except ValueError as err:
            raise UserError(str(err)) from None
    if Path(args.out).resolve() == Path(args.adapter).resolve():
        raise UserError("--out must differ from the adapter directory (the merged model is a new directory)")
    path = merge_adapter(args.adapter, args.out, adapter_scale=scale, fp16=args.fp16)
    print(f"merged model written to {path}")
    return 0
