"""A tiny regression task for engine tests: small enough to train in seconds, with
dropout and per-item randomness so that determinism is actually exercised."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tunesmith.checkpoint import register_model
from dataclasses import dataclass


@dataclass
class ToyConfig:
    dim: int = 8
    hidden: int = 32
    dropout: float = 0.1


@register_model("toy-mlp", ToyConfig)
class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(config.dim, config.hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyData(Dataset):
    """y = sin(x . w) with input noise drawn from the per-item generator."""

    def __init__(self, n: int = 64, dim: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.w = torch.randn(dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def get_item(self, index: int, rng: np.random.Generator):
        x = self.x[index] + 0.01 * torch.from_numpy(rng.standard_normal(self.x.shape[1]).astype(np.float32))
        return x, torch.sin(x @ self.w)[None]


class ToyTask:
    def __init__(self, n: int = 64, dropout: float = 0.1) -> None:
        self.train_dataset = ToyData(n)
        self.dropout = dropout

    def modules(self):
        return {"model": ToyModel(ToyConfig(dropout=self.dropout))}

    def training_step(self, modules, batch, step):
        x, y = batch
        loss = ((modules["model"](x) - y) ** 2).mean()
        return loss, {}

    def validate(self, modules, step):
        x = self.train_dataset.x
        y = torch.sin(x @ self.train_dataset.w)[:, None]
        return {"mse": float(((modules["model"](x) - y) ** 2).mean())}


class ToyGANTask(ToyTask):
    """Two modules, two optimizers, sequential updates: exercises the multi-optimizer path."""

    def modules(self):
        return {"critic": nn.Linear(1, 1), "model": ToyModel(ToyConfig(dropout=self.dropout))}

    def training_step(self, modules, batch, step):
        from tunesmith.train import unwrap

        x, y = batch
        pred = modules["model"](x)
        critic_loss = (modules["critic"](pred.detach()) - y).pow(2).mean()
        yield "critic", critic_loss, {}
        model_loss = (pred - y).pow(2).mean() + 0.01 * unwrap(modules["critic"])(pred).pow(2).mean()
        yield "model", model_loss, {}
