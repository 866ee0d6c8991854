"""Int8 weights for faster CPU decoding.

Decoding one step at a time is bound by memory bandwidth: every step reads every
weight once, so the step time is roughly (weight bytes) / (bandwidth).  Storing the
linear layers' weights as int8 (one scale per output channel) reads 4x fewer bytes
than fp32.  On CPU this uses PyTorch's dynamic int8 linear (fbgemm / oneDNN): int8
weights, activations quantised on the fly per call, int32 accumulation.  Embeddings,
norms and attention stay in fp32.  The quality cost is measured by bench/lm_decode.py
(token agreement with fp32 and the KL divergence of the next-token distributions).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_int8(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (eval mode) whose ``nn.Linear`` layers hold int8 weights.

    For inference only; the result cannot be trained or saved as a model directory
    (quantise after loading instead).
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    with warnings.catch_warnings():  # torch.ao's eager-mode API is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def linear_weight_bytes(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Bytes of linear-layer weights (fp32 or int8), excluding modules whose name ends with ``skip``."""
    total = 0
    for name, module in model.named_modules():
        if name.endswith(skip) and skip:
            continue
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif hasattr(module, "_packed_params") and hasattr(module, "weight"):  # a dynamic int8 linear
            weight = module.weight()
            total += weight.numel() * weight.element_size() + weight.shape[0] * 4  # + per-channel scales
    return total
