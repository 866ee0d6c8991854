"""Mamba-2 backbone: SSD mixer + MLP blocks (system 2 of SYSTEMS.md).

The mixer follows the Mamba-2 block of Dao & Gu 2024 (arXiv:2405.21060, sec. 7.1,
"parallel projections"): one input projection produces, all from the block input,

    z (gate) | x (values) | B (keys) | C (queries) | dt (step size per head)

x, B and C go through a short causal depthwise convolution and SiLU; the SSD scan
(:mod:`tunesmith.lm.backbones.ssd`) mixes over time with per-head decay
a_t = exp(dt_t A); a skip D x is added; the output is normalized and gated,
RMSNorm(y * SiLU(z)), and projected back.  Like the reference code of the
SSM text-to-music paper, every mixer is followed by an MLP (pre-RMSNorm, residual).

Training runs the chunked SSD scan (memory linear in T); decoding keeps the
convolution's last inputs and the (heads, head_dim, d_state) SSM state per block,
so a step costs the same at any position.  On a GPU with mamba-ssm installed, the
scan runs in its fused Triton kernel instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.lm.backbones.base import register_backbone
from tunesmith.lm.backbones.ssd import ssd_chunked, ssd_step
from tunesmith.lm.backbones.ssm_layers import CausalConv1d, GatedRMSNorm, MixerState, SSMBackbone, use_kernel


@dataclass
class Mamba2Options:
    """Options of the ``mamba2`` backbone (the LM chooses the width ``dim``)."""

    n_layers: int = 4
    d_state: int = 64  # N: state size per head
    head_dim: int = 64  # P: channels per head; heads = expand * dim / head_dim
    expand: int = 2  # inner width = expand * dim
    n_groups: int = 1  # heads per group share B and C
    conv_kernel: int = 4
    chunk_size: int = 64  # Q of the SSD scan
    mlp_hidden: int = -1  # MLP after each mixer: -1 = 4 * dim, 0 = no MLP
    cross_attention_every: int = 4  # hybrid: a cross-attention layer after every N blocks
    cross_heads: int = 0  # 0 = dim // 64
    dt_min: float = 1e-3  # initial step sizes are log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    kernels: Literal["auto", "off"] = "auto"  # auto: mamba-ssm's kernels on CUDA when installed

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_state", "head_dim", "expand", "n_groups", "conv_kernel", "chunk_size", "cross_attention_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.conv_kernel < 2:
            raise ValueError(f"conv_kernel must be >= 2, got {self.conv_kernel}")
        if self.mlp_hidden < -1:
            raise ValueError(f"mlp_hidden must be -1 (4 * dim), 0 (none) or positive, got {self.mlp_hidden}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y (y > 0)."""
    return y + torch.log(-torch.expm1(-y))


def init_step_bias(n: int, dt_min: float, dt_max: float) -> Tensor:
    """Biases whose softplus (the initial step sizes) are log-uniform in [dt_min, dt_max] (Mamba-1 sec. 3.6)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt)


class Mamba2Mixer(nn.Module):
    """The Mamba-2 (SSD) token mixer: (B, T, dim) -> (B, T, dim)."""

    def __init__(self, dim: int, options: Mamba2Options) -> None:
        super().__init__()
        o = options
        self.inner = o.expand * dim
        if self.inner % o.head_dim:
            raise ValueError(f"inner width {self.inner} is not divisible by head_dim {o.head_dim}")
        self.heads, self.head_dim, self.d_state, self.groups = self.inner // o.head_dim, o.head_dim, o.d_state, o.n_groups
        if self.heads % self.groups:
            raise ValueError(f"{self.heads} heads do not split into {self.groups} groups")
        self.chunk_size, self.kernels = o.chunk_size, o.kernels
        self.conv_channels = self.inner + 2 * self.groups * self.d_state  # x, B, C share the convolution

        self.in_proj = nn.Linear(dim, self.inner + self.conv_channels + self.heads, bias=False)
        self.conv = CausalConv1d(self.conv_channels, o.conv_kernel)
        self.dt_bias = nn.Parameter(init_step_bias(self.heads, o.dt_min, o.dt_max))
        # A = -exp(A_log) < 0 per head, initialised in [-16, -1]
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = GatedRMSNorm(self.inner)
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    # -- the pieces, shared by forward and step --------------------------------------

    def _split(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input projection -> (gate z, conv input xBC, raw dt)."""
        return self.in_proj(u).split([self.inner, self.conv_channels, self.heads], dim=-1)

    def _ssm_inputs(self, xBC: Tensor, dt_raw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """After the convolution: (x (..., h, P), dt (..., h), B, C (..., g, N))."""
        x, B, C = F.silu(xBC).split([self.inner, self.groups * self.d_state, self.groups * self.d_state], dim=-1)
        dt = F.softplus(dt_raw + self.dt_bias)
        x = x.unflatten(-1, (self.heads, self.head_dim))
        B = B.unflatten(-1, (self.groups, self.d_state))
        C = C.unflatten(-1, (self.groups, self.d_state))
        return x, dt, B, C

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """Skip connection D x, gated RMSNorm, output projection."""
        y = y + x * self.D[:, None]
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _scan(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
        """The chunked SSD scan (or mamba-ssm's kernel on CUDA) -> (y, final state)."""
        A = -self.A_log.exp()
        kernel = use_kernel(self.kernels, x, "ssd")
        if kernel is not None:
            x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))  # slices of the input projection
            return kernel(x, dt, A, B, C, self.chunk_size, initial_states=initial_state, return_final_states=True)
        # discretization: the input x_t is scaled by dt_t and the decay is a_t = exp(dt_t A)
        return ssd_chunked(x * dt[..., None], dt * A, B, C, self.chunk_size, initial_state)

    # -- the interface -------------------------------------------------------------

    def forward(self, u: Tensor) -> Tensor:
        z, xBC, dt_raw = self._split(u)
        x, dt, B, C = self._ssm_inputs(self.conv(xBC), dt_raw)
        y, _ = self._scan(x, dt, B, C, None)
        return self._output(y, x, z)

    def allocate_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> MixerState:
        return MixerState(
            conv=torch.zeros(batch_size, self.conv.kernel_size - 1, self.conv_channels, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.heads, self.head_dim, self.d_state, device=device, dtype=dtype),
        )

    def step(self, u: Tensor, state: MixerState) -> Tensor:
        """t new positions (B, t, dim) after those in ``state`` (updated in place)."""
        z, xBC, dt_raw = self._split(u)
        x, dt, B, C = self._ssm_inputs(self.conv.step(xBC, state.conv), dt_raw)
        if u.shape[1] == 1:  # decoding: one recurrent step, O(1)
            A = -self.A_log.exp()
            y, new_state = ssd_step(x[:, 0] * dt[:, 0, :, None], dt[:, 0] * A, B[:, 0], C[:, 0], state.ssm)
            y = y[:, None]
        else:  # prefill: the chunked scan, continuing from the state
            y, new_state = self._scan(x, dt, B, C, state.ssm)
        state.ssm.copy_(new_state)
        return self._output(y, x, z)


@register_backbone("mamba2", Mamba2Options)
class Mamba2Backbone(SSMBackbone):
    """Mamba-2 blocks (SSD mixer + MLP), optionally with cross-attention every N blocks."""

    def __init__(self, dim: int, config: Mamba2Options | None = None, cross_attention: bool = False) -> None:
        config = config or Mamba2Options()
        super().__init__(
            dim,
            config.n_layers,
            4 * dim if config.mlp_hidden == -1 else config.mlp_hidden,
            lambda: Mamba2Mixer(dim, config),
            cross_attention=cross_attention,
            cross_attention_every=config.cross_attention_every,
            cross_heads=config.cross_heads,
        )
        self.config = config


# ---------------------------------------------------------------------------
# sizes matched to the Transformer presets


def count_backbone_parameters(name: str, dim: int, options: dict, cross_attention: bool = False) -> int:
    """Parameters of backbone ``name`` at width ``dim``, counted without allocating (meta device)."""
    from tunesmith.lm.backbones.base import build_backbone

    with torch.device("meta"):
        return sum(p.numel() for p in build_backbone(name, dim, options, cross_attention=cross_attention).parameters())


def matched_options(dim: int, target_params: int, mlp_multiple: int = 16, **base: object) -> dict:
    """Mamba-2 options (n_layers, mlp_hidden) whose backbone has about ``target_params`` parameters.

    The count is linear in ``mlp_hidden`` for a fixed depth, so for every depth the
    MLP width that hits the target is solved for directly; of those, the depth whose
    MLP stays closest to the Transformer's 4 x dim is kept.  ``base`` fixes the other
    options (d_state, head_dim, ...).
    """
    best: tuple[float, dict] | None = None
    for layers in range(1, 64):
        opts = {**base, "n_layers": layers}
        n1 = count_backbone_parameters("mamba2", dim, {**opts, "mlp_hidden": mlp_multiple})
        n2 = count_backbone_parameters("mamba2", dim, {**opts, "mlp_hidden": 2 * mlp_multiple})
        per_unit = (n2 - n1) / mlp_multiple
        hidden = round((mlp_multiple + (target_params - n1) / per_unit) / mlp_multiple) * mlp_multiple
        if hidden < mlp_multiple:
            break  # deeper stacks alone already exceed the target
        candidate = {**opts, "mlp_hidden": int(hidden)}
        score = abs(hidden / dim - 4.0)
        if best is None or score < best[0]:
            best = (score, candidate)
    if best is None:
        raise ValueError(f"no Mamba-2 stack of width {dim} has as few as {target_params} parameters")
    return best[1]


#: Mamba-2 options matching the Transformer LM presets of tunesmith.lm.train (run/lm tiny,
#: small, musicgen-small; each with cross-attention in every layer) within 3% in total LM
#: parameters, conditioned by prefix instead (computed with :func:`matched_options`;
#: tests/test_ssm_presets.py checks the match).
PRESETS: dict[str, dict] = {
    "tiny": {"n_layers": 2, "d_state": 16, "head_dim": 32, "mlp_hidden": 304},
    "small": {"n_layers": 7, "d_state": 64, "head_dim": 64, "mlp_hidden": 896},
    "musicgen-small": {"n_layers": 27, "d_state": 64, "head_dim": 64, "mlp_hidden": 4096},
}


def _register_run_presets() -> None:
    """``run/lm`` presets ``<size>-mamba2``: the Transformer run preset with the matched SSM backbone."""
    from tunesmith.config import register_preset

    def make(size: str):
        def run_preset():
            from tunesmith.config import preset

            run = preset("run/lm", size)
            model = dataclasses.replace(run.model, backbone="mamba2", backbone_config=dict(PRESETS[size]), conditioning="prefix")
            train = dataclasses.replace(run.train, out_dir=run.train.out_dir + "-mamba2")
            return dataclasses.replace(run, model=model, train=train)

        return run_preset

    for size in PRESETS:
        register_preset("run/lm", f"{size}-mamba2")(make(size))


_register_run_presets()
