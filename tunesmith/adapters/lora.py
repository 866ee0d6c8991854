"""LoRA (Hu et al., 2021): a frozen linear layer plus a trainable low-rank update.

A linear layer ``y = W x`` (W: out x in) becomes ``y = W x + s * B (A x)`` with A (r x in),
B (out x r) and the scaling ``s = alpha / r``.  A starts random and B at zero, so before
the first update the adapted network computes exactly what the base computes (B A x is a
sum of products with zeros: +0.0 exactly).  Merging folds the update into the weight,
``W' = W + s * (B @ A)``; unmerging subtracts the same matrix.

Training wraps the layers with peft, the ecosystem's adapter library: its LoRA layer wraps
our ``nn.Linear`` projections unchanged (measured on the bundled DiT and LM: outputs
bit-identical before training, and only A and B require gradients), and the adapter is
written in its file format (``adapter_config.json`` + ``adapter_model.safetensors``), so
``peft.PeftModel.from_pretrained(base_network, adapter_dir)`` reads it.  Generation does
not import peft: importing it costs about 5 s here (it loads accelerate and transformers'
model registry), while merging is one matmul per layer, written out below with the
order of operations peft uses, so both merges give the same bits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.config import require
from tunesmith.errors import CheckpointError, UserError

# The attention and feed-forward projections of each network type (module-name suffixes).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "dit": ("qkv", "out1", "q2", "kv2", "out2", "ff_in", "ff_out"),
    # the Transformer backbone's, then the state-space backbones' mixer and MLP projections
    "lm": ("attn.qkv", "attn.out", "cross.q", "cross.kv", "cross.out", "ffn.0", "ffn.2",
           "mixer.in_proj", "mixer.out_proj", "mlp.fc1", "mlp.fc2"),
}
PEFT_PREFIX = "base_model.model."  # how peft names a wrapped model's modules in its files
ADAPTER_NAME = "default"  # peft's name for the one adapter
_KEY = re.compile(rf"^{re.escape(PEFT_PREFIX)}(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass
class LoraSettings:
    """Which layers get an update, and its size."""

    rank: int = 16
    alpha: float = 0.0  # 0: the rank, so the scaling alpha / rank is 1
    targets: tuple[str, ...] = ()  # module-name suffixes; (): the network's attention and feed-forward projections
    dropout: float = 0.0  # on the update's input, in training

    def __post_init__(self) -> None:
        require(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an integer >= 1")
        require(math.isfinite(self.alpha) and self.alpha >= 0, "alpha", self.alpha, "a finite number >= 0 (0: the rank)")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")

    @property
    def lora_alpha(self) -> float:
        return self.alpha or float(self.rank)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank


def target_modules(network: nn.Module, model_type: str, targets: tuple[str, ...] = ()) -> list[str]:
    """Full names of the linear layers the targets name, in the network's order.

    ``targets`` are suffixes of module names (``"qkv"`` matches ``blocks.3.qkv``); each one a
    user names must match a linear layer.  Without targets, the defaults of ``model_type``
    (several of which may be absent from a given backbone) must match at least one."""
    explicit = bool(targets)
    wanted = tuple(targets) or DEFAULT_TARGETS.get(model_type, ())
    if not wanted:
        raise UserError(f"no default LoRA targets for a '{model_type}' network: name its layers (--targets)")
    linear = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)]
    found: set[str] = set()
    for target in wanted:
        hits = {n for n in linear if n == target or n.endswith("." + target)}
        if explicit and not hits:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise UserError(f"LoRA target '{target}' names no linear layer of this {model_type} network "
                            f"(its linear layers end in: {', '.join(suffixes)})")
        found |= hits
    if not found:
        raise UserError(f"none of the LoRA targets ({', '.join(wanted)}) is a linear layer of this {model_type} network")
    return [n for n in linear if n in found]


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError("fine-tuning needs peft, the adapter library: pip install peft") from None
    return peft


def peft_config(settings: LoraSettings, modules: list[str], base: str | None = None) -> Any:
    """peft's ``LoraConfig`` for these layers (imports peft: training and saving only)."""
    return _peft().LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout,
                      target_modules=list(modules), bias="none", base_model_name_or_path=base)


def inject(network: nn.Module, settings: LoraSettings, model_type: str) -> list[str]:
    """Freeze ``network`` and wrap its target layers with peft's LoRA layers, in place;
    returns the wrapped layers' names.  Only A and B require gradients afterwards."""
    inject_adapter_in_model = _peft().inject_adapter_in_model
    modules = target_modules(network, model_type, settings.targets)
    for p in network.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(peft_config(settings, modules), network, adapter_name=ADAPTER_NAME)
    for name, p in network.named_parameters():  # peft marks its own as trainable; check that held
        if p.requires_grad != (".lora_A." in name or ".lora_B." in name):
            raise RuntimeError(f"peft left '{name}' with requires_grad={p.requires_grad}")
    return modules


def adapter_tensors(network: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """A and B of every wrapped layer, under the names peft's files use."""
    out = {}
    for name in modules:
        layer = network.get_submodule(name)
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A[ADAPTER_NAME].weight.detach().clone()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B[ADAPTER_NAME].weight.detach().clone()
    return out


def lora_pairs(tensors: dict[str, torch.Tensor], where: str = "adapter") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (A, B)} from peft-named tensors, checked: every A has its B, one rank."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise CheckpointError(f"{where}: '{key}' is not a LoRA weight (expected {PEFT_PREFIX}<layer>.lora_A/B.weight)")
        parts.setdefault(match["module"], {})[match["part"]] = value
    pairs = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{where}: layer '{name}' has lora_{next(iter(ab))} without its partner")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise CheckpointError(f"{where}: layer '{name}': A {tuple(a.shape)} and B {tuple(b.shape)} do not multiply")
        if not (a.is_floating_point() and torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise CheckpointError(f"{where}: layer '{name}' holds NaN, infinite or non-float values")
        pairs[name] = (a, b)
    if len({a.shape[0] for a, _ in pairs.values()}) > 1:
        raise CheckpointError(f"{where}: the layers have different ranks")
    return pairs


def delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``(B @ A) * scaling``: the update as a weight matrix (peft's order of operations)."""
    return (b.float() @ a.float()) * scaling


def _layer(network: nn.Module, name: str, a: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    try:
        layer = network.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"the adapter updates layer '{name}', which the base network does not have") from None
    if not isinstance(layer, nn.Linear):
        raise CheckpointError(f"the adapter updates '{name}', which is a {type(layer).__name__} in the base, not a linear layer")
    if tuple(layer.weight.shape) != (b.shape[0], a.shape[1]):
        raise CheckpointError(f"the adapter's update of '{name}' is {b.shape[0]} x {a.shape[1]}, the base layer is "
                              f"{layer.weight.shape[0]} x {layer.weight.shape[1]}: it was trained on another base")
    return layer


@torch.no_grad()
def merge(network: nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> None:
    """Fold the updates into the base weights in place: ``W += (B @ A) * scaling``.

    Every layer is checked before any is changed, so a mismatched adapter leaves the
    network as it was."""
    layers = {name: _layer(network, name, a, b) for name, (a, b) in pairs.items()}
    for name, (a, b) in pairs.items():
        weight = layers[name].weight
        weight.add_(delta_weight(a, b, scaling).to(weight.device, weight.dtype))


@torch.no_grad()
def unmerge(network: nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> None:
    """Take merged updates out again: ``W -= (B @ A) * scaling`` (equal to the base up to rounding)."""
    layers = {name: _layer(network, name, a, b) for name, (a, b) in pairs.items()}
    for name, (a, b) in pairs.items():
        weight = layers[name].weight
        weight.sub_(delta_weight(a, b, scaling).to(weight.device, weight.dtype))
