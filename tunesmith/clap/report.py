"""Export a CLAP from a (possibly unfinished) training run and measure it on a held-out split.

    python -m tunesmith.clap.report --run runs/clap-v1 --export runs/clap-v1/model --json runs/clap-v1/test.json
    python -m tunesmith.clap.report --model tunesmith/models/clap-24k --manifest data/corpus-v1/manifest.jsonl

With ``--run`` the latest checkpoint of the run directory is loaded (EMA weights when the
run keeps an EMA) and written as a model directory; the split's retrieval R@k, the
own-vs-other-family caption rate and CHiLS family accuracy are then printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def export_latest(run_dir: str | Path, out_dir: str | Path) -> tuple[Path, int]:
    """Write the model of the latest checkpoint in ``run_dir``; returns (directory, step)."""
    from tunesmith.clap.train import RunConfig, export, make_task
    from tunesmith.config import load_config
    from tunesmith.train import state as ckpt
    from tunesmith.train.engine import Trainer

    run_dir = Path(run_dir)
    config = load_config(RunConfig, run_dir / "run_config.json")
    latest = ckpt.latest_checkpoint(Path(config.train.out_dir) / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    trainer = Trainer(make_task(config), config.train)
    trainer.load_checkpoint(latest)
    return export(trainer, config, Path(out_dir)), trainer.step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunesmith.clap.report", description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="training run directory (its latest checkpoint is exported)")
    parser.add_argument("--export", help="where to write the exported model (with --run)")
    parser.add_argument("--model", help="an exported CLAP model directory or bundled name")
    parser.add_argument("--manifest", help="manifest to evaluate on (default: the run's)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-items", type=int, default=1000)
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)

    from tunesmith.clap import load_clap
    from tunesmith.clap.train import evaluate_clap

    extra = {}
    manifest = args.manifest
    windows = 2
    if args.run:
        if not args.export:
            parser.error("--run needs --export DIR")
        directory, step = export_latest(args.run, args.export)
        extra["step"] = step
        model_path = directory
        meta = json.loads((Path(directory) / "config.json").read_text())
        manifest = manifest or meta.get("manifest")
        windows = int(meta.get("train_windows", windows))
    elif args.model:
        model_path = args.model
    else:
        parser.error("give --run or --model")
    if not manifest:
        parser.error("--manifest is required with --model")
    scores = evaluate_clap(load_clap(model_path), manifest, args.split, max_items=args.max_items, windows=windows)
    result = {"model": str(model_path), "split": args.split, **extra, **scores}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
