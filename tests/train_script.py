"""Run the toy task through the engine (as a script, so tests can signal it or torchrun it).

usage: python train_script.py OUT_DIR STEPS BATCH ACCUM [--kill-at N] [--resume] [--gan] [--check-ranks]
Writes OUT_DIR/final.safetensors with the model weights (rank 0).
"""

import argparse
import os
import signal
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from toy_task import ToyGANTask, ToyTask  # noqa: E402

from tunesmith.checkpoint import save_tensors  # noqa: E402
from tunesmith.train import TrainConfig, Trainer, unwrap  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("batch", type=int)
    p.add_argument("accum", type=int)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--gan", action="store_true")
    p.add_argument("--check-ranks", action="store_true")
    p.add_argument("--distributed", default="ddp")
    p.add_argument("--dropout", type=float, default=0.1)
    a = p.parse_args()
    torch.set_num_threads(1)
    task = (ToyGANTask if a.gan else ToyTask)(dropout=a.dropout)
    cfg = TrainConfig(out_dir=a.out, steps=a.steps, batch_size=a.batch, grad_accum=a.accum, lr=1e-2,
                      warmup_steps=3, ema_decay=0.9, checkpoint_every=0, checkpoint_minutes=0,
                      log_every=2, valid_every=4, progress=False, distributed=a.distributed)

    def on_step_end(trainer: Trainer, step: int) -> None:
        if a.kill_at and step == a.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if a.check_ranks:
            for module in trainer.modules.values():
                flat = torch.cat([p.detach().reshape(-1) for p in unwrap(module).parameters()])
                gathered = [torch.zeros_like(flat) for _ in range(trainer.world)]
                dist.all_gather(gathered, flat)
                for other in gathered[1:]:
                    if not torch.equal(gathered[0], other):
                        raise SystemExit(f"ranks differ after step {step}")

    trainer = Trainer(task, cfg, on_step_end=on_step_end)
    result = trainer.fit(resume=a.resume)
    weights = {f"{n}.{k}": v for n in trainer.modules for k, v in trainer._module_state(n).items()}
    weights.update({f"ema.{k}": v for k, v in trainer.ema_state_dict("model").items()})
    if trainer.rank == 0:
        save_tensors(weights, os.path.join(a.out, "final.safetensors"))
        print(f"done step={result.step} interrupted={result.interrupted}")
    trainer.close()


if __name__ == "__main__":
    main()
