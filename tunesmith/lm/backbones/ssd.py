"""The SSD scan of Mamba-2 as small pure functions (no weights, no modules).

Reference: T. Dao and A. Gu, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality", ICML 2024
(arXiv:2405.21060).  Section numbers below refer to that paper.

The model (sec. 3.1, with the scalar-times-identity state matrix of sec. 5.1):
every head keeps a state matrix h_t of shape (P, N) and, for t = 0, 1, ...

    h_t = a_t * h_{t-1} + x_t B_t^T          (x_t in R^P, B_t in R^N, a_t in (0, 1])
    y_t = h_t C_t                            (C_t in R^N, y_t in R^P)

with a_t = exp(dt_t * A) (A < 0 per head).  The caller folds the discretization
step dt_t into x_t (x_t <- dt_t x_t, the first-order rule B_bar = dt B) and passes
``log_a = dt * A`` so that decays are added in log space and never underflow.

Three ways to compute the same y, all here:

- :func:`ssd_recurrent` — the linear (recurrent) mode of sec. 3.3.1, one step at a
  time; :func:`ssd_step` is its body and is what decoding uses;
- :func:`ssd_quadratic` — the quadratic ("attention-like") mode of sec. 3.3.2 and
  sec. 5: y = (L o C B^T) x with the 1-semiseparable mask L = exp(segsum(log_a));
- :func:`ssd_chunked` — the block decomposition of sec. 6: cut the sequence into
  chunks of length Q, use the quadratic mode inside each chunk (diagonal blocks,
  sec. 6.1) and the recurrence between chunks on the chunk states (the low-rank
  off-diagonal blocks, sec. 6.2).  Work is O(T Q) and memory O(T Q) — linear in T.

Shapes: batch b, time T, heads h, head dim P, state dim N, groups g (h divisible
by g; heads of a group share B and C, the "multi-value" pattern of sec. 7.2).

    x:     (b, T, h, P)      log_a: (b, T, h)      B, C: (b, T, g, N)
    state: (b, h, P, N)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------
# helpers


def segsum(log_a: Tensor) -> Tensor:
    """Segment sums of log decays: (..., T) -> (..., T, T).

    ``out[..., i, j] = log_a[j+1] + ... + log_a[i]`` for i >= j (0 on the
    diagonal) and ``-inf`` above it, so that ``exp(out)`` is the lower-triangular
    decay matrix L of sec. 5.1: L[i, j] = a_{j+1} ... a_i, the factor by which the
    input at time j has decayed when it is read at time i.

    Computed by a masked cumulative sum rather than as a difference of prefix sums
    (cumsum[i] - cumsum[j]), which would lose precision on long segments.
    """
    T = log_a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=log_a.device)
    strictly_lower = torch.tril(ones, diagonal=-1)
    # terms[..., k, j] = log_a[k] if k > j: the decays that lie after j
    terms = log_a.unsqueeze(-1).expand(*log_a.shape, T).masked_fill(~strictly_lower, 0.0)
    sums = terms.cumsum(dim=-2)  # sums[..., i, j] = sum over j < k <= i
    return sums.masked_fill(~torch.tril(ones), float("-inf"))


def _check(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor) -> None:
    b, T, h, _ = x.shape
    if log_a.shape != (b, T, h):
        raise ValueError(f"log_a must be {(b, T, h)}, got {tuple(log_a.shape)}")
    if B.shape != C.shape or B.shape[:2] != (b, T):
        raise ValueError(f"B and C must both be (b={b}, T={T}, g, N), got {tuple(B.shape)} and {tuple(C.shape)}")
    if h % B.shape[2]:
        raise ValueError(f"{h} heads do not split into {B.shape[2]} groups")


# ---------------------------------------------------------------------------
# linear (recurrent) mode, sec. 3.3.1


def ssd_step(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: (x (b,h,P), log_a (b,h), B, C (b,g,N), state (b,h,P,N)) -> (y (b,h,P), new state).

    h_t = a_t h_{t-1} + x_t B_t^T ;  y_t = h_t C_t.  O(1) in the position: this is
    what makes SSM decoding cost the same at step 100 and step 6000.
    """
    b, h, P = x.shape
    g = B.shape[1]
    B_h = B.repeat_interleave(h // g, dim=1)  # (b, h, N)
    C_h = C.repeat_interleave(h // g, dim=1)
    new_state = state * log_a.exp()[..., None, None] + x[..., :, None] * B_h[..., None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, C_h)
    return y, new_state


def ssd_recurrent(
    x: Tensor, log_a: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The naive sequential reference: :func:`ssd_step` over every position.

    Returns (y (b, T, h, P), final state (b, h, P, N)).  O(T) sequential steps;
    used to check the parallel forms and for nothing fast.
    """
    _check(x, log_a, B, C)
    b, T, h, P = x.shape
    state = x.new_zeros(b, h, P, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        y, state = ssd_step(x[:, t], log_a[:, t], B[:, t], C[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


# ---------------------------------------------------------------------------
# quadratic (dual, attention-like) mode, sec. 3.3.2 / sec. 5
#
# The parallel forms below work in a head-major layout so that every contraction
# is a batched matrix product: heads split as (g groups, r = h/g heads per group),
#     x: (b, g, r, ..., T, P)   log_a: (b, g, r, ..., T)   B, C: (b, g, ..., T, N)
# where "..." is the chunk index in the chunked form.


def _quadratic(x: Tensor, decay: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Head-major quadratic form y = (L o C B^T) x over the last time axis, given L = ``decay``."""
    scores = (C @ B.transpose(-1, -2)).unsqueeze(2)  # C_i . B_j, shared by the r heads of a group
    return (decay * scores) @ x


def ssd_quadratic(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """y = (L o C B^T) x with L = exp(segsum(log_a)): the SSM as masked attention.

    "Queries" C, "keys" B, "values" x, and the causal mask replaced by the
    1-semiseparable decay matrix L (sec. 5.2).  O(T^2) work and memory; starts
    from a zero state.  :func:`ssd_chunked` uses this form inside each chunk.
    """
    _check(x, log_a, B, C)
    b, T, h, P = x.shape
    g = B.shape[2]
    y = _quadratic(
        x.reshape(b, T, g, h // g, P).permute(0, 2, 3, 1, 4),
        segsum(log_a.reshape(b, T, g, h // g).permute(0, 2, 3, 1)).exp(),
        B.transpose(1, 2),
        C.transpose(1, 2),
    )
    return y.permute(0, 3, 1, 2, 4).reshape(b, T, h, P)


# ---------------------------------------------------------------------------
# chunked mode (state space duality), sec. 6 — head-major, chunks on axis 3


def chunk_states(x: Tensor, cum_log_a: Tensor, B: Tensor) -> Tensor:
    """The state each chunk would leave behind if it started from zero (sec. 6.2, "right factors").

    x (b, g, r, c, Q, P), cum_log_a (b, g, r, c, Q) — log decays summed from the chunk
    start — and B (b, g, c, Q, N).  Returns (b, g, r, c, P, N):
    S_c = sum_j (a_{j+1} ... a_{Q-1}) x_j B_j^T over the positions j of chunk c.
    """
    decay_to_end = (cum_log_a[..., -1:] - cum_log_a).exp()
    return (x * decay_to_end[..., None]).transpose(-1, -2) @ B.unsqueeze(2)


def pass_states(states: Tensor, chunk_log_decay: Tensor, initial_state: Tensor) -> tuple[Tensor, Tensor]:
    """Carry the state across chunk boundaries (sec. 6.2, "center factors").

    states (b, g, r, c, P, N) from :func:`chunk_states`; chunk_log_decay (b, g, r, c),
    the summed log decay of each chunk; initial_state (b, g, r, P, N).  The
    chunk-level recurrence H_{c+1} = exp(chunk_log_decay_c) H_c + S_c is itself a
    (short) SSM; it runs sequentially over the T/Q chunks, which keeps memory
    linear in T.  Returns (the state entering each chunk (b, g, r, c, P, N), the final state).
    """
    entering = []
    h = initial_state
    # unbind once (not states[:, :, :, c] in the loop: the backward of each indexing
    # would write a full-size zero tensor, making the backward quadratic in T/Q)
    decays = chunk_log_decay.exp()[..., None, None].unbind(dim=3)
    for decay, state in zip(decays, states.unbind(dim=3)):
        entering.append(h)
        h = h * decay + state
    return torch.stack(entering, dim=3), h


def state_outputs(C: Tensor, cum_log_a: Tensor, entering: Tensor) -> Tensor:
    """What the state entering each chunk contributes to its outputs (sec. 6.2, "left factors").

    C (b, g, c, Q, N), cum_log_a (b, g, r, c, Q), entering (b, g, r, c, P, N) ->
    (b, g, r, c, Q, P):  y_i += (a_0 ... a_i) H_c C_i for position i of chunk c.
    """
    return (C.unsqueeze(2) @ entering.transpose(-1, -2)) * cum_log_a.exp()[..., None]


def ssd_chunked(
    x: Tensor,
    log_a: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The SSD algorithm (sec. 6): the parallel form used for training and prefill.

    1. diagonal blocks: the quadratic mode inside each chunk (:func:`ssd_quadratic`);
    2. chunk states (:func:`chunk_states`);
    3. state passing between chunks (:func:`pass_states`);
    4. the entering states' contribution to each chunk's outputs (:func:`state_outputs`).

    Equal to :func:`ssd_recurrent` (the tests check it) for any T: the tail is
    padded with x = 0, B = C = 0 and log_a = 0 (a = 1), which leave the state as it is.
    Returns (y (b, T, h, P), final state (b, h, P, N)).
    """
    _check(x, log_a, B, C)
    b, T, h, P = x.shape
    g, N = B.shape[2:]
    r, Q = h // g, chunk_size
    pad = (-T) % Q
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (T + pad) // Q
    # to the head-major chunked layout
    xc = x.reshape(b, c, Q, g, r, P).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, Q, P)
    ac = log_a.reshape(b, c, Q, g, r).permute(0, 3, 4, 1, 2)  # (b, g, r, c, Q)
    Bc = B.reshape(b, c, Q, g, N).permute(0, 3, 1, 2, 4)  # (b, g, c, Q, N)
    Cc = C.reshape(b, c, Q, g, N).permute(0, 3, 1, 2, 4)
    cum = ac.cumsum(dim=-1)

    y_diag = _quadratic(xc, segsum(ac).exp(), Bc, Cc)  # 1.
    states = chunk_states(xc, cum, Bc)  # 2.
    if initial_state is None:
        initial_state = x.new_zeros(b, h, P, N)
    entering, final_state = pass_states(states, cum[..., -1], initial_state.reshape(b, g, r, P, N))  # 3.
    y = y_diag + state_outputs(Cc, cum, entering)  # 4.

    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, P)
    return y[:, :T], final_state.reshape(b, h, P, N)
