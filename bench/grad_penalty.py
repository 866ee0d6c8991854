"""The micro-batch gradient-norm penalty on a DiT at this machine's batch sizes (issue 25, small scale).

    nice -n 15 python bench/grad_penalty.py --out docs/grad_penalty_bench.json

The tiny DiT preset on its synthetic latents (the real corpus's latents would take hours on two
shared cores): micro-batches of 4, accumulated 4 to a batch of 16, trained the same number of
steps with lambda = 0 and with the penalty; scored on held-out items (fresh noise draws of the
same classes) by the denoising loss at fixed noise levels and fixed noise, and by seconds per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tunesmith.config import preset
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.train import collate, make_task
from tunesmith.train import Trainer

SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def held_out_loss(task, model: torch.nn.Module, items: int = 128) -> float:
    data = task.train_dataset
    batch = collate([data.get_item(10_000 + i, np.random.default_rng(10_000 + i)) for i in range(items)])
    cond = task.conditioning(batch, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch["latents"].shape, generator=g)
    denoiser = Denoiser(model.eval(), task.config.model.parameterization, task.config.model.sigma_data)
    extra = {"inpaint_mask": batch["inpaint_mask"], "inpaint_latents": batch["latents"]} if task.config.model.inpainting else {}
    with torch.no_grad():
        losses = [float(denoiser.loss(batch["latents"], torch.full((items,), s), noise, **cond.model_inputs(), **extra))
                  for s in SIGMAS]
    return float(np.mean(losses))


def run(penalty: float, steps: int, seed: int) -> dict[str, float]:
    config = preset("run/diffusion", "tiny")
    with tempfile.TemporaryDirectory() as out:
        train = dataclasses.replace(config.train, out_dir=out, steps=steps, batch_size=4, grad_accum=4, seed=seed,
                                    grad_norm_penalty=penalty, log_every=max(1, steps // 4))
        config = dataclasses.replace(config, train=train)
        task = make_task(config)
        start = time.perf_counter()
        trainer = Trainer(task, train)
        result = trainer.fit()
        seconds = time.perf_counter() - start
        logs = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return {"penalty": penalty, "seed": seed, "steps": steps, "sec_per_step": round(seconds / steps, 4),
            "train_loss_last": round(logs[-1]["loss/dit"], 4),
            "grad_penalty_last": round(logs[-1].get("grad_penalty/dit", 0.0), 4),
            "held_out_loss": round(held_out_loss(task, trainer.modules["dit"]), 4),
            "interrupted": result.interrupted}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.01, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("docs/grad_penalty_bench.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for penalty in args.penalties:
        for seed in args.seeds:
            rows.append(run(penalty, args.steps, seed))
            print(json.dumps(rows[-1]), flush=True)
    summary = {str(p): {"held_out_loss_mean": round(float(np.mean([r["held_out_loss"] for r in rows if r["penalty"] == p])), 4),
                        "sec_per_step_mean": round(float(np.mean([r["sec_per_step"] for r in rows if r["penalty"] == p])), 4)}
               for p in args.penalties}
    args.out.write_text(json.dumps({"setup": "run/diffusion tiny preset, synthetic latents, micro-batch 4 x accum 4",
                                    "summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
