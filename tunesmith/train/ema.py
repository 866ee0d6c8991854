"""Exponential moving average of a module's weights (kept in fp32, off the autograd graph)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """EMA of every floating-point parameter and buffer of a module.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so that early
    averages are not dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in module.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1.0 - decay)

    def state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict of ``module`` with the averaged weights in place."""
        state = module.state_dict()
        return {k: (self.shadow[k].to(v.dtype) if k in self.shadow else v) for k, v in state.items()}
