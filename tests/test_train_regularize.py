"""The micro-batch gradient-norm penalty (tunesmith.train.regularize) against a two-layer network
worked by hand, and as the engine's ``grad_norm_penalty`` option."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tunesmith.errors import ConfigError
from tunesmith.train import Trainer, TrainConfig
from tunesmith.train.regularize import gradient_norm_penalty, micro_batch_penalty, penalised_loss

W1, W2 = 0.7, -1.3
SAMPLES = ((1.0, 0.5), (-2.0, 0.3))  # (x, y): one micro-batch each


def by_hand(w1: float, w2: float) -> float:
    """mean over micro-batches of ||grad L_m||^2 for f(x) = w2 tanh(w1 x), L = (f - y)^2 / 2:
    dL/dw2 = r tanh(w1 x), dL/dw1 = r w2 (1 - tanh^2(w1 x)) x, with r = f - y."""
    total = 0.0
    for x, y in SAMPLES:
        h = math.tanh(w1 * x)
        r = w2 * h - y
        total += (r * w2 * (1 - h * h) * x) ** 2 + (r * h) ** 2
    return total / len(SAMPLES)


class TwoLayer(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.first = nn.Linear(1, 1, bias=False, dtype=dtype)
        self.second = nn.Linear(1, 1, bias=False, dtype=dtype)
        with torch.no_grad():
            self.first.weight.fill_(W1)
            self.second.weight.fill_(W2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def losses(net: nn.Module) -> list[torch.Tensor]:
    return [0.5 * (net(torch.tensor([[x]], dtype=torch.float64)) - y).pow(2).sum() for x, y in SAMPLES]


def test_the_penalty_equals_the_hand_computed_value():
    net = TwoLayer(torch.float64)
    value = micro_batch_penalty(losses(net), list(net.parameters()))
    assert value.item() == pytest.approx(by_hand(W1, W2), rel=1e-12)
    # the penalty of one micro-batch is not that of the whole batch: swapping in the mean loss changes it
    whole = gradient_norm_penalty(torch.stack(losses(net)).mean(), net.parameters())
    assert abs(whole.item() - value.item()) > 1e-3


def test_its_gradient_is_the_derivative_of_the_hand_computed_value():
    net = TwoLayer(torch.float64)
    micro_batch_penalty(losses(net), list(net.parameters())).backward()
    eps = 1e-6
    d_w1 = (by_hand(W1 + eps, W2) - by_hand(W1 - eps, W2)) / (2 * eps)
    d_w2 = (by_hand(W1, W2 + eps) - by_hand(W1, W2 - eps)) / (2 * eps)
    assert net.first.weight.grad.item() == pytest.approx(d_w1, rel=1e-6)
    assert net.second.weight.grad.item() == pytest.approx(d_w2, rel=1e-6)


def test_penalised_loss_adds_lambda_times_the_penalty():
    net = TwoLayer(torch.float64)
    loss = losses(net)[0]
    total, penalty = penalised_loss(loss, net.parameters(), 0.25)
    assert total.item() == pytest.approx(loss.item() + 0.25 * penalty.item())


class _Pairs(Dataset):
    def __len__(self) -> int:
        return len(SAMPLES)

    def __getitem__(self, index: int):
        x, y = SAMPLES[index]
        return torch.tensor([x]), torch.tensor([y])


class _Task:
    train_dataset = _Pairs()

    def modules(self):
        return {"model": TwoLayer()}

    def training_step(self, modules, batch, step):
        x, y = batch
        return 0.5 * (modules["model"](x) - y).pow(2).sum(), {}


def test_the_engine_option_penalises_the_accumulation_micro_batches(tmp_path):
    """Two micro-batches of one sample: the logged penalty of step 1 is the hand-computed mean."""
    cfg = TrainConfig(out_dir=str(tmp_path), steps=3, batch_size=1, grad_accum=2, lr=1e-2, warmup_steps=0,
                      grad_norm_penalty=0.1, log_every=1, checkpoint_every=0, checkpoint_minutes=0, progress=False)
    Trainer(_Task(), cfg).fit()
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first["grad_penalty/model"] == pytest.approx(by_hand(W1, W2), rel=1e-5)
    with pytest.raises(ConfigError, match="grad_norm_penalty"):
        TrainConfig(grad_norm_penalty=-1.0)
