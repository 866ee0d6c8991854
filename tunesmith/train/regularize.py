"""Micro-batch gradient-norm penalty: small-batch generalisation at large batches.

SGD's small steps on small batches act like gradient descent on the loss plus an implicit
penalty on the squared gradient norm of each micro-batch, averaged over the micro-batches
(Smith et al. 2021, "On the origin of implicit regularization in SGD", eq. 2); making it
explicit, L + lambda * mean_m ||grad L_m||^2 over micro-batches m, recovers small-batch
generalisation in large-batch training (Geiping et al. 2022, "Stochastic training is not
necessary for generalization", sec. 3).  ../shared/SYSTEMS.md sec. 7.

In the engine the micro-batches are its gradient-accumulation micro-batches: each adds
(L_m + lambda ||grad L_m||^2) / M to the gradient (double backpropagation), so the step's
gradient is that of the penalised objective over the whole batch of M micro-batches.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Attention by the plain math kernel: the fused CPU and GPU kernels of PyTorch's
    scaled_dot_product_attention have no derivative of their backward, which the penalty needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def gradient_norm_penalty(loss: torch.Tensor, params: Iterable[torch.Tensor]) -> torch.Tensor:
    """||grad_params loss||^2 as a differentiable scalar (its own gradient is a Hessian-vector
    product, computed by backpropagating through the gradient)."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    total = loss.new_zeros(())
    for g in grads:
        if g is not None:
            total = total + g.to(torch.promote_types(g.dtype, torch.float32)).pow(2).sum()
    return total


def penalised_loss(loss: torch.Tensor, params: Iterable[torch.Tensor], weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss + weight * ||grad loss||^2, the penalty ||grad loss||^2) of one micro-batch."""
    penalty = gradient_norm_penalty(loss, params)
    return loss + weight * penalty, penalty


def micro_batch_penalty(losses: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """mean_m ||grad L_m||^2 over micro-batch losses ``losses``: the regulariser itself."""
    if not losses:
        raise ValueError("micro_batch_penalty needs at least one micro-batch loss")
    return torch.stack([gradient_norm_penalty(loss, params) for loss in losses]).mean()
