"""EMA and learning-rate schedules tracked numerically, and the EMA wired into the engine."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tunesmith.train import TrainConfig, Trainer
from tunesmith.train.ema import EMA
from tunesmith.train.schedule import lr_multiplier

from toy_task import ToyTask

pytestmark = pytest.mark.usefixtures("one_thread")


def effective_decay(decay: float, n: int) -> float:
    """The module's warm-up rule for update n = 1, 2, ...: min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + n) / (10 + n))


def closed_form(initial: torch.Tensor, trajectory: list[torch.Tensor], decay: float) -> torch.Tensor:
    """EMA_k = prod_n d_n * p_0 + sum_n (1 - d_n) prod_{m > n} d_m * p_n  (d_n the effective decays)."""
    k = len(trajectory)
    ds = [effective_decay(decay, n) for n in range(1, k + 1)]
    out = math.prod(ds) * initial.double()
    for n, p in enumerate(trajectory):
        out = out + (1 - ds[n]) * math.prod(ds[n + 1 :]) * p.double()
    return out


def test_effective_decay_hand_values():
    # (1 + n) / (10 + n): 2/11, 3/12, 4/13 ... until the configured decay binds
    assert [effective_decay(0.3, n) for n in (1, 2, 3, 4)] == pytest.approx([2 / 11, 0.25, 0.3, 0.3])


@pytest.mark.parametrize("decay", [0.3, 0.9, 0.999])
def test_ema_equals_the_closed_form_on_a_known_trajectory(decay):
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0), lin.bias.fill_(-2.0)
    ema = EMA(lin, decay)
    weights, biases = [], []
    for k in range(1, 13):
        with torch.no_grad():
            lin.weight.copy_(torch.arange(6, dtype=torch.float32).view(2, 3) * k * 0.1 + (-1) ** k)
            lin.bias.fill_(float(k * k))
        weights.append(lin.weight.detach().clone())
        biases.append(lin.bias.detach().clone())
        ema.update(lin)
        assert ema.updates == k
        assert torch.allclose(ema.shadow["weight"].double(), closed_form(torch.ones(2, 3), weights, decay), rtol=1e-5, atol=1e-6)
        assert torch.allclose(ema.shadow["bias"].double(), closed_form(torch.full((2,), -2.0), biases, decay), rtol=1e-5, atol=1e-6)


def test_ema_first_updates_by_hand():
    p = nn.Parameter(torch.tensor([0.0]))
    m = nn.Module()
    m.p = p
    ema = EMA(m, 0.99)
    with torch.no_grad():
        p.fill_(11.0)
    ema.update(m)  # d = 2/11: 2/11 * 0 + 9/11 * 11 = 9
    assert float(ema.shadow["p"]) == pytest.approx(9.0, rel=1e-6)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update(m)  # d = 3/12: 0.25 * 9 + 0.75 * 1 = 3
    assert float(ema.shadow["p"]) == pytest.approx(3.0, rel=1e-6)
    ema.update(m)  # d = 4/13: 4/13 * 3 + 9/13 * 1 = 21/13
    assert float(ema.shadow["p"]) == pytest.approx(21 / 13, rel=1e-6)


def test_ema_tracks_float_buffers_in_fp32_and_exports_module_dtypes():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to(torch.bfloat16)
    ema = EMA(m, 0.5)
    assert "1.num_batches_tracked" not in ema.shadow
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())
    start = ema.shadow["1.running_mean"].clone()
    with torch.no_grad():
        m[1].running_mean.fill_(4.0)
        m[1].num_batches_tracked.fill_(7)
    ema.update(m)
    d = effective_decay(0.5, 1)
    assert torch.allclose(ema.shadow["1.running_mean"], d * start + (1 - d) * 4.0)
    state = ema.state_dict(m)
    assert state.keys() == m.state_dict().keys()
    assert state["1.running_mean"].dtype == torch.bfloat16 and int(state["1.num_batches_tracked"]) == 7
    assert torch.allclose(state["0.weight"].float(), ema.shadow["0.weight"], atol=1e-2)


def _config(tmp_path, steps, decay, **kw):
    return TrainConfig(out_dir=str(tmp_path), steps=steps, batch_size=4, lr=5e-2, warmup_steps=0, ema_decay=decay,
                       grad_clip=0.0, checkpoint_every=0, checkpoint_minutes=0, progress=False, **kw)


def test_engine_updates_the_ema_once_per_step(tmp_path):
    decay, steps = 0.3, 6
    trajectory: list[dict[str, torch.Tensor]] = []

    def record(trainer, step):
        trajectory.append({k: v.detach().clone() for k, v in trainer.raw["model"].state_dict().items()})

    trainer = Trainer(ToyTask(dropout=0.0), _config(tmp_path, steps, decay), on_step_end=record)
    initial = {k: v.detach().clone() for k, v in trainer.raw["model"].state_dict().items()}
    result = trainer.fit()
    assert len(trajectory) == steps and trainer.emas["model"].updates == steps
    exported = trainer.ema_state_dict("model")
    live = trainer.raw["model"].state_dict()
    saved = load_file(str(result.checkpoint / "weights.safetensors"))
    for key, value in initial.items():
        expected = closed_form(value, [t[key] for t in trajectory], decay)
        assert torch.allclose(exported[key].double(), expected, rtol=1e-5, atol=1e-6), key
        assert not torch.allclose(exported[key], live[key])  # the EMA lags the raw weights
        ema_saved = [v for k, v in saved.items() if k.startswith("ema/") and k.endswith("/" + key)]
        assert len(ema_saved) == 1 and torch.allclose(ema_saved[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_engine_without_ema_exports_live_weights(tmp_path):
    trainer = Trainer(ToyTask(dropout=0.0), _config(tmp_path, 2, 0.0))
    trainer.fit()
    assert trainer.emas == {}
    live = trainer.raw["model"].state_dict()
    assert all(torch.equal(v, live[k]) for k, v in trainer.ema_state_dict("model").items())


def test_engine_ema_resumes_exactly(tmp_path):
    # constant schedule: a 3-step run then follows the same learning rates as the first half of a 6-step one
    full = Trainer(ToyTask(dropout=0.0), _config(tmp_path / "full", 6, 0.5, schedule="constant"))
    full.fit()
    cut = Trainer(ToyTask(dropout=0.0), _config(tmp_path / "cut", 3, 0.5, schedule="constant"))
    cut.fit()
    resumed = Trainer(ToyTask(dropout=0.0), _config(tmp_path / "cut", 6, 0.5, schedule="constant"))
    resumed.fit(resume=True)
    assert resumed.emas["model"].updates == 6
    a, b = full.ema_state_dict("model"), resumed.ema_state_dict("model")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---------------------------------------------------------------------------
# learning-rate schedules


def test_linear_warmup_then_cosine_by_hand():
    kw = dict(total_steps=110, warmup_steps=10, min_ratio=0.2)
    # warm-up: (step + 1) / warmup
    assert [lr_multiplier(s, **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # cosine: min + (1 - min) (1 + cos(pi (step - W) / (total - W))) / 2
    for s in (10, 35, 60, 85, 109, 110, 500):
        progress = min((s - 10) / 100, 1.0)
        assert lr_multiplier(s, **kw) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * progress))), s
    assert lr_multiplier(60, **kw) == pytest.approx(0.6)
    assert lr_multiplier(35, **kw) == pytest.approx(0.2 + 0.4 * (1 + math.cos(math.pi / 4)))


def test_inverse_sqrt_and_constant_by_hand():
    kw = dict(total_steps=1000, warmup_steps=4)
    assert [lr_multiplier(s, **kw, schedule="inverse_sqrt") for s in (0, 1, 3, 15, 99)] == pytest.approx(
        [0.25, 0.5, 1.0, 0.5, 0.2])
    assert [lr_multiplier(s, **kw, schedule="constant") for s in (0, 2, 3, 50)] == pytest.approx([0.25, 0.75, 1.0, 1.0])
    assert lr_multiplier(0, total_steps=10, warmup_steps=0, schedule="constant") == 1.0
    assert lr_multiplier(5, total_steps=10, warmup_steps=0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_exponential_warmup_by_hand():
    kw = dict(total_steps=100, warmup_steps=10, warmup="exponential")
    for s in (0, 4, 9, 30):
        ramp = 1 - math.exp(-(s + 1) / 10)
        assert lr_multiplier(s, **kw, schedule="constant") == pytest.approx(ramp)
        # with cosine, the ramp multiplies the decay, which starts after the warm-up steps
        progress = max(s - 10, 0) / 90
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr_multiplier(s, **kw) == pytest.approx(ramp * decay)
        assert lr_multiplier(s, **kw, schedule="inverse_sqrt") == pytest.approx(ramp * min(1.0, math.sqrt(10 / (s + 1))))
