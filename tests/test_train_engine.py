"""The training engine: exact resume after SIGTERM, GAN-style updates, schedules, atomic checkpoints."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.train import TrainConfig, Trainer
from tunesmith.train.schedule import lr_multiplier
from tunesmith.train.state import latest_checkpoint

from toy_task import ToyTask

SCRIPT = Path(__file__).parent / "train_script.py"


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "final.safetensors")), load_file(str(b / "final.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.parametrize("gan", [False, True])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, gan):
    extra = ["--gan"] if gan else []
    _run(str(tmp_path / "full"), "12", "4", "2", *extra)
    out = _run(str(tmp_path / "cut"), "12", "4", "2", "--kill-at", "6", *extra)
    assert "step=6 interrupted=True" in out
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step_00000006"
    out = _run(str(tmp_path / "cut"), "12", "4", "2", "--resume", *extra)
    assert "step=12 interrupted=False" in out
    assert _max_diff(tmp_path / "full", tmp_path / "cut") <= 1e-6


def test_loss_drops_and_logs(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), steps=100, batch_size=16, lr=2e-2, warmup_steps=5, ema_decay=0.9,
                      log_every=10, valid_every=50, checkpoint_every=0, checkpoint_minutes=0, progress=False)
    result = Trainer(ToyTask(dropout=0.0), cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss/model"] for r in records if "loss/model" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert any("valid/mse" in r for r in records)
    assert result.checkpoint is not None and (result.checkpoint / "weights.safetensors").is_file()
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 100 and "optimizers" in state and state["data_position"]["optimizer_steps"] == 100


def test_keeps_only_newest_checkpoints(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), steps=12, batch_size=4, checkpoint_every=3, keep_checkpoints=2,
                      checkpoint_minutes=0, progress=False)
    Trainer(ToyTask(), cfg).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_00000009", "step_00000012"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    class Broken(ToyTask):
        def training_step(self, modules, batch, step):
            loss, m = super().training_step(modules, batch, step)
            return loss * float("nan"), m

    cfg = TrainConfig(out_dir=str(tmp_path), steps=3, batch_size=4, progress=False)
    with pytest.raises(FloatingPointError, match="loss of 'model' is nan at step 0"):
        Trainer(Broken(), cfg).fit()


def test_data_order_covers_each_item_once_per_epoch(tmp_path):
    from tunesmith.train.engine import _BatchOrder

    whole = _BatchOrder(24, batch=3, accum=2, world=1, rank=0, seed=5, start_step=0)
    it = iter(whole)
    batches = [next(it) for _ in range(8)]  # 4 steps x 2 micro-batches = one epoch
    keys = [k for b in batches for k in b]
    assert sorted(k % 24 for k in keys) == list(range(24))
    # two ranks with half the batch see exactly the single process's items, split between them
    r0, r1 = iter(_BatchOrder(24, 3, 2, 2, 0, 5, 0)), iter(_BatchOrder(24, 3, 2, 2, 1, 5, 0))
    single = iter(_BatchOrder(24, 6, 2, 1, 0, 5, 0))
    for _ in range(4):
        assert sorted(next(r0) + next(r1)) == sorted(next(single))
    # resuming at step 3 continues the same order
    resumed = iter(_BatchOrder(24, 3, 2, 1, 0, 5, start_step=3))
    assert next(resumed) == batches[6]


def test_lr_schedules():
    kw = dict(total_steps=100, warmup_steps=10)
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, **kw) == pytest.approx(1.0)
    assert lr_multiplier(99, **kw, min_ratio=0.1) == pytest.approx(0.1, abs=1e-3)
    assert lr_multiplier(55, **kw, min_ratio=0.0) == pytest.approx(0.5, abs=1e-6)
    assert lr_multiplier(39, **kw, schedule="inverse_sqrt") == pytest.approx(math.sqrt(10 / 40))
    assert lr_multiplier(50, **kw, schedule="constant") == 1.0
    exp = [lr_multiplier(s, **kw, warmup="exponential", schedule="constant") for s in (0, 10, 50)]
    assert exp[0] < exp[1] < exp[2] < 1.0
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_multiplier(0, **kw, schedule="linear-ish")


def test_config_validation():
    from tunesmith.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="'steps' must be >= 1"):
        from_dict(TrainConfig, {"steps": 0})


def test_iterable_dataset_streams_and_resumes_exactly(tmp_path):
    """Streaming datasets (e.g. WebDataset shards): the engine skips what was consumed on resume."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(3)
            w = torch.randn(8, generator=g)
            for _ in range(40):
                x = torch.randn(8, generator=g)
                yield x, torch.sin(x @ w)[None]

    class StreamTask(ToyTask):
        def __init__(self):
            super().__init__(dropout=0.0)
            self.train_dataset = Stream()

    def config(out):
        return TrainConfig(out_dir=str(out), steps=8, batch_size=4, lr=1e-2, checkpoint_every=0,
                           checkpoint_minutes=0, progress=False)

    full = Trainer(StreamTask(), config(tmp_path / "full"))
    full.fit()

    def stop_at_3(trainer, step):
        if step == 3:
            trainer._stop_requested = True  # what SIGTERM sets

    cut = Trainer(StreamTask(), config(tmp_path / "cut"), on_step_end=stop_at_3)
    assert cut.fit().interrupted
    resumed = Trainer(StreamTask(), config(tmp_path / "cut"))
    assert resumed.fit(resume=True).step == 8
    a, b = full.ema_state_dict("model"), resumed.ema_state_dict("model")
    assert all(torch.equal(a[k], b[k]) for k in a)
