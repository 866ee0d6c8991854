"""`tunesmith train KIND`: one command trains every model family through the same engine.

A family plugs in by a module (see ``KINDS``) that exposes:

- ``RunConfig``: a dataclass with at least a ``train: TrainConfig`` field;
- presets registered under the kind ``run/<KIND>`` (``tiny`` at least);
- ``make_task(config) -> Task`` and ``export(trainer, config, out_dir) -> Path``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from tunesmith.config import apply_overrides, load_config, preset, preset_names, save_config

KINDS: dict[str, str] = {
    "codec": "tunesmith.codec.train",
    "vae": "tunesmith.codec.train_vae",
    "clap": "tunesmith.clap.train",
    "lm": "tunesmith.lm.train",
    "diffusion": "tunesmith.diffusion.train",
    "distill": "tunesmith.distill.train",
    "hybrid": "tunesmith.hybrid.train",  # stage 2 of the two-stage generator (the DPD)
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with the shared engine (also under torchrun)")
    p.add_argument("kind", choices=sorted(KINDS), help="what to train")
    p.add_argument("--preset", default=None, help="named preset (e.g. tiny, small)")
    p.add_argument("--config", default=None, help="JSON/YAML run config (overrides the preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=1000 (repeatable)")
    p.add_argument("--out", default=None, help="run directory (sets train.out_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run directory (with the run's saved config "
                        "unless --preset/--config is given)")
    p.add_argument("--export", default=None, help="write the trained model directory here when done")
    p.add_argument("--teacher", default=None, metavar="NAME_OR_PATH",
                   help="distill: the latent-diffusion model to distil (sets teacher=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def resolve_config(kind: str, preset_name: str | None, config_path: str | None, overrides: list[str],
                   out: str | None):
    module = importlib.import_module(KINDS[kind])
    if config_path:
        config = load_config(module.RunConfig, config_path)
    else:
        names = preset_names(f"run/{kind}")
        config = preset(f"run/{kind}", preset_name or ("small" if "small" in names else names[0]))
    if out:
        overrides = [*overrides, f"train.out_dir={out}"]
    return module, apply_overrides(config, overrides)


def run(args: argparse.Namespace) -> int:
    from tunesmith.errors import CheckpointError, ConfigError
    from tunesmith.train import state
    from tunesmith.train.engine import Trainer, seed_everything

    config_path = args.config
    saved = Path(args.out) / "run_config.json" if args.out else None
    if args.resume and config_path is None and args.preset is None and saved is not None and saved.is_file():
        config_path = str(saved)  # resume with the run's own config, not today's preset defaults
    overrides = list(args.overrides)
    if args.teacher is not None:
        if args.kind != "distill":
            raise ConfigError("--teacher is for `tunesmith train distill`")
        overrides.append(f"teacher={args.teacher}")
    module, config = resolve_config(args.kind, args.preset, config_path, overrides, args.out)
    if args.print_config:
        import json

        from tunesmith.config import to_dict

        print(json.dumps(to_dict(config), indent=2))
        return 0
    out_dir = Path(config.train.out_dir)
    if args.resume and not state.has_checkpoint(out_dir / "checkpoints"):
        raise CheckpointError(f"nothing to resume in {out_dir}: no checkpoint")  # before building anything
    seed_everything(config.train.seed)  # the task builds its modules now: their initialisation follows the seed
    task = module.make_task(config)
    trainer = Trainer(task, config.train)

    def record_config(trainer: Trainer) -> None:
        """Save the run's config once the run has really started (a resume that fails must not change it)."""
        if trainer.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, out_dir / "run_config.json")

    try:
        result = trainer.fit(resume=args.resume, on_start=record_config)
        if result.interrupted:
            if trainer.rank == 0:
                print(f"interrupted at step {result.step}; checkpoint saved. Resume with --resume --out {out_dir}")
            return 0
        if args.export and trainer.rank == 0:
            path = module.export(trainer, config, Path(args.export))
            print(f"model written to {path}")
        return 0
    finally:
        trainer.close()
