"""Mamba-1 backbone: selective-scan (S6) mixer + MLP blocks, the alternative to Mamba-2.

The mixer follows the Mamba block of Gu & Dao 2023 (arXiv:2312.00752, sec. 3.4,
Fig. 3): the input is projected to a value branch x and a gate z; x goes through
a causal depthwise convolution and SiLU; a projection of x gives the
input-dependent step size dt (through a low-rank bottleneck of size dt_rank), B
and C (sec. 3.2, Algorithm 2); the selective scan
(:mod:`tunesmith.lm.backbones.selective_scan`) mixes over time with a diagonal
decay per (channel, state); a skip D x is added, gated by SiLU(z), and projected back.

Its state is (d_inner, d_state) per block instead of Mamba-2's per-head matrices,
and its scan cannot use matrix multiplications, so on CPU it is slower to train
than Mamba-2; it is here as the option the paper family started from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.lm.backbones.base import register_backbone
from tunesmith.lm.backbones.mamba2 import init_step_bias
from tunesmith.lm.backbones.selective_scan import selective_scan_chunked, selective_scan_step
from tunesmith.lm.backbones.ssm_layers import CausalConv1d, MixerState, SSMBackbone, use_kernel


@dataclass
class Mamba1Options:
    """Options of the ``mamba1`` backbone (the LM chooses the width ``dim``)."""

    n_layers: int = 4
    d_state: int = 16
    expand: int = 2
    dt_rank: int = 0  # 0 = ceil(dim / 16)
    conv_kernel: int = 4
    chunk_size: int = 64
    mlp_hidden: int = -1  # -1 = 4 * dim, 0 = no MLP
    cross_attention_every: int = 4
    cross_heads: int = 0
    dt_min: float = 1e-3
    dt_max: float = 0.1
    kernels: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_state", "expand", "chunk_size", "cross_attention_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_kernel < 2:
            raise ValueError(f"conv_kernel must be >= 2, got {self.conv_kernel}")
        if self.dt_rank < 0 or self.mlp_hidden < -1:
            raise ValueError("dt_rank must be >= 0 and mlp_hidden >= -1")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


class Mamba1Mixer(nn.Module):
    """The Mamba-1 (S6) token mixer: (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, options: Mamba1Options) -> None:
        super().__init__()
        o = options
        self.inner, self.d_state, self.chunk_size, self.kernels = o.expand * dim, o.d_state, o.chunk_size, o.kernels
        self.dt_rank = o.dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * self.inner, bias=False)
        self.conv = CausalConv1d(self.inner, o.conv_kernel)
        self.x_proj = nn.Linear(self.inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.inner, bias=True)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_step_bias(self.inner, o.dt_min, o.dt_max))
        # S4D-real initialisation A[d, n] = -(n + 1) (Mamba-1 sec. 3.6)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.inner, 1))
        self.D = nn.Parameter(torch.ones(self.inner))
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    def _ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From the convolved values: (dt (..., d), B, C (..., N))."""
        dt_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), B, C

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        return self.out_proj((y + x * self.D) * F.silu(z))

    def _scan(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
        A = -self.A_log.exp()
        kernel = use_kernel(self.kernels, x, "selective_scan")
        if kernel is not None and initial_state is None:  # the kernel starts from a zero state
            y, last = kernel(
                x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A,
                B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(), return_last_state=True,
            )
            return y.transpose(1, 2), last
        return selective_scan_chunked(x, dt, A, B, C, self.chunk_size, initial_state)

    def forward(self, u: Tensor) -> Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv(x))
        dt, B, C = self._ssm_inputs(x)
        y, _ = self._scan(x, dt, B, C, None)
        return self._output(y, x, z)

    def allocate_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> MixerState:
        return MixerState(
            conv=torch.zeros(batch_size, self.conv.kernel_size - 1, self.inner, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, u: Tensor, state: MixerState) -> Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = F.silu(self.conv.step(x, state.conv))
        dt, B, C = self._ssm_inputs(x)
        if u.shape[1] == 1:
            y, new_state = selective_scan_step(x[:, 0], dt[:, 0], -self.A_log.exp(), B[:, 0], C[:, 0], state.ssm)
            y = y[:, None]
        else:
            y, new_state = self._scan(x, dt, B, C, state.ssm)
        state.ssm.copy_(new_state)
        return self._output(y, x, z)


@register_backbone("mamba1", Mamba1Options)
class Mamba1Backbone(SSMBackbone):
    """Mamba-1 blocks (selective-scan mixer + MLP), optionally with cross-attention every N blocks."""

    def __init__(self, dim: int, config: Mamba1Options | None = None, cross_attention: bool = False) -> None:
        config = config or Mamba1Options()
        super().__init__(
            dim,
            config.n_layers,
            4 * dim if config.mlp_hidden == -1 else config.mlp_hidden,
            lambda: Mamba1Mixer(dim, config),
            cross_attention=cross_attention,
            cross_attention_every=config.cross_attention_every,
            cross_heads=config.cross_heads,
        )
        self.config = config
