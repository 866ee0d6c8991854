"""The selective scan of Mamba-1 as small pure functions (no weights, no modules).

Reference: A. Gu and T. Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", 2023 (arXiv:2312.00752).  Section numbers refer to that paper.

Mamba-1's SSM (sec. 2 eq. 2, made input-dependent in sec. 3.2, Algorithm 2 "S6")
has a diagonal state matrix per channel: for each of the d channels and each of
the N state entries,

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] u_t[d]
    y_t[d]    = sum_n C_t[n] h_t[d, n]

(zero-order hold for A, eq. 4, and the first-order rule B_bar = dt B for B).
Unlike Mamba-2's scalar decay per head, the decay differs per (d, n), so the SSD
matrix trick does not apply; the parallel form is a scan over time of the affine
maps h -> a h + b, computed here by

- :func:`scan_doubling` — a log-depth (Hillis-Steele) scan inside a chunk;
- :func:`selective_scan_chunked` — chunks scanned in parallel, then their end
  states carried across chunk boundaries sequentially.  Memory O(T d N): linear in T.

:func:`selective_scan_recurrent` is the naive sequential reference and
:func:`selective_scan_step` the O(1) decoding step.

Shapes: u, dt (b, T, d); A (d, N); B, C (b, T, N); state (b, d, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretize(u: Tensor, dt: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """(log decay dt A, input dt B u), both (b, T, d, N) — the per-step affine map of the scan."""
    log_a = dt[..., None] * A
    inputs = (dt * u)[..., None] * B[:, :, None, :]
    return log_a, inputs


def selective_scan_step(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One step: u, dt (b, d); B, C (b, N); state (b, d, N) -> (y (b, d), new state)."""
    new_state = state * (dt[..., None] * A).exp() + (dt * u)[..., None] * B[:, None, :]
    y = torch.einsum("bdn,bn->bd", new_state, C)
    return y, new_state


def selective_scan_recurrent(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The naive sequential reference: :func:`selective_scan_step` at every position -> (y (b,T,d), final state)."""
    b, T, d = u.shape
    state = u.new_zeros(b, d, A.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        y, state = selective_scan_step(u[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def scan_doubling(log_a: Tensor, inputs: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """All prefixes of h_t = a_t h_{t-1} + b_t (h_{-1} = 0) along ``dim``, in log2(T) rounds.

    Round r combines each position with the one 2^r earlier (Hillis & Steele's
    parallel prefix): composing two affine maps (a1, b1) then (a2, b2) gives
    (a1 a2, a2 b1 + b2), with the decays multiplied in log space.  Returns
    (h at every position, cumulative log decay from the start to every position).
    """
    T = log_a.shape[dim]
    offset = 1
    while offset < T:
        earlier_b = _shift(inputs, offset, dim)
        earlier_log_a = _shift(log_a, offset, dim)  # zero-padded: a = 1 before the start
        inputs = inputs + log_a.exp() * earlier_b
        log_a = log_a + earlier_log_a
        offset *= 2
    return inputs, log_a


def _shift(x: Tensor, offset: int, dim: int) -> Tensor:
    """x moved ``offset`` positions later along ``dim``, zeros shifted in."""
    dim = dim % x.dim()
    pad = [0, 0] * (x.dim() - dim - 1) + [offset, 0]
    return F.pad(x, pad).narrow(dim, 0, x.shape[dim])


def selective_scan_chunked(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The parallel selective scan (training, prefill) -> (y (b, T, d), final state (b, d, N)).

    1. every chunk is scanned from a zero state by :func:`scan_doubling`, all chunks at once;
    2. the chunk end states are carried across boundaries (a short sequential loop over T/Q chunks);
    3. the state entering a chunk, decayed to each position, is added; y = h C.
    The padded tail (dt = 0: a = 1, no input) leaves the state unchanged.
    """
    b, T, d = u.shape
    N = A.shape[-1]
    Q = chunk_size
    pad = (-T) % Q
    if pad:
        u, dt = F.pad(u, (0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = (T + pad) // Q
    log_a, inputs = discretize(u, dt, A, B)
    log_a = log_a.reshape(b, c, Q, d, N)
    inputs = inputs.reshape(b, c, Q, d, N)

    h_local, cum_log_a = scan_doubling(log_a, inputs, dim=2)  # 1.

    state = u.new_zeros(b, d, N) if initial_state is None else initial_state
    entering = []
    chunk_decays = cum_log_a[:, :, -1].exp().unbind(dim=1)  # unbound once: a linear-time backward
    for decay, end_state in zip(chunk_decays, h_local[:, :, -1].unbind(dim=1)):  # 2.
        entering.append(state)
        state = state * decay + end_state
    h = h_local + cum_log_a.exp() * torch.stack(entering, dim=1)[:, :, None]  # 3.

    y = torch.einsum("bcqdn,bcqn->bcqd", h, C.reshape(b, c, Q, N))
    return y.reshape(b, c * Q, d)[:, :T], state
