"""Autoregressive decoding of a token LM: cached, guided, seeded, and as long as you like.

One window is decoded step by step over the pattern sequence (``decode_window``):

1. lay out the known tokens (an audio prompt) through the pattern; unknown cells are -1;
2. prefill the backbone state with the prefix, the start token and every step that is
   fully known, in one call;
3. for each remaining step, one ``backbone.step`` on one position gives the logits of
   that step's cells; known cells keep their tokens, the others are sampled.

Classifier-free guidance runs the conditional and the unconditional rows as one
batch of 2B through the same cached steps (MusicGen sec. 2.2), so guidance costs
one forward per step, not two.

Beyond the trained context, ``generate_tokens`` continues window by window: the
last part of what was generated becomes the audio prompt of the next window, as
MusicGen does for long samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from tunesmith.conditioning.conditions import Conditioning
from tunesmith.lm.model import TokenLM
from tunesmith.lm.patterns import from_sequence, layout, num_steps, to_sequence
from tunesmith.lm.sampling import apply_cfg, sample


def _first_unknown_step(seq: torch.Tensor) -> int:
    """Index of the first pattern step with a cell still to sample (-1), or S if none."""
    unknown = (seq < 0).any(0).any(0)
    idx = torch.nonzero(unknown)
    return int(idx[0]) if idx.numel() else seq.shape[2]


@torch.inference_mode()
def decode_window(
    model: TokenLM,
    num_frames: int,
    cond: Conditioning | None,
    *,
    batch_size: int,
    prompt: torch.Tensor | None = None,
    cfg_scale: float | None = 3.0,
    temperature: float = 1.0,
    top_k: int = 250,
    top_p: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_step: Any = None,
    unguided: tuple[str, ...] = (),
) -> torch.Tensor:
    """Tokens (B, K, num_frames) within the model's context, continuing ``prompt`` (B, K, Tp).

    ``cfg_scale`` None decodes the conditional model alone; a number runs the batched
    conditional + unconditional forward and guides with that scale (1 = conditional).
    ``unguided`` names conditions kept in the unconditional rows too, so that guidance
    amplifies only the others (e.g. ``("beat",)``: the clock conditions both, the scale
    applies to the text).
    """
    c = model.config
    K, B = c.num_codebooks, batch_size
    device = next(model.parameters()).device
    table = layout(c.pattern, K, num_frames)
    known = torch.full((B, K, num_frames), -1, dtype=torch.long, device=device)
    if prompt is not None:
        known[:, :, : prompt.shape[-1]] = prompt.to(device)
    seq = to_sequence(known, table, fill=c.special_token)  # -1 = to sample, N = empty cell
    S = seq.shape[2]
    first = _first_unknown_step(seq)
    if first == S:
        return from_sequence(seq, table, num_frames)

    guided = cfg_scale is not None and cond is not None
    rows = 2 * B if guided else B
    full = cond.cat(cond.null(keep=unguided)) if guided else cond
    prefix, cross, cross_mask = model.condition(full, rows)
    added = model.step_inputs(full, num_frames)  # (rows, S or 1, D) or None: beat clock and key
    P = 0 if prefix is None else prefix.shape[1]
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):  # quantized weights keep fp32 activations
        dtype = torch.float32
    state = model.backbone.allocate_state(rows, P + S, device, dtype)

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 0) if guided else x

    # Time-stamped prompts: the cross mask switches with the section of the frame each step
    # generates.  The known prefix is then fed one position at a time, each with its own mask.
    masks = model.step_cross_masks(full, num_frames) if full is not None and full.segments is not None else None

    def mask_of(step: int) -> torch.Tensor | None:
        return cross_mask if masks is None else masks[:, step]

    inputs = model.sequence_input(both(seq[:, :, :first]), prefix, added)
    if masks is None:
        hidden = model.backbone.step(inputs, state, cross, cross_mask)[:, -1:]
    else:
        hidden = model.backbone.step(inputs[:, : P + 1], state, cross, mask_of(0))[:, -1:]  # prefix and start
        for j in range(first):  # the input of step j predicts step j + 1
            hidden = model.backbone.step(inputs[:, P + 1 + j : P + 2 + j], state, cross, mask_of(j + 1))
    for s in range(first, S):
        logits = model.logits(hidden)[:, :, 0]  # (rows, K, N)
        if guided:
            logits = apply_cfg(logits[:B], logits[B:], cfg_scale)
        ids = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        column = seq[:, :, s]
        seq[:, :, s] = torch.where(column >= 0, column, ids)
        if on_step is not None:
            on_step()
        if s + 1 < S:
            x = model.embed_steps(both(seq[:, :, s : s + 1]))
            if added is not None:  # the input that predicts step s + 1 carries that step's clock (and the key)
                x = x + (added if added.shape[1] == 1 else added[:, s + 1 : s + 2])
            hidden = model.backbone.step(x, state, cross, mask_of(s + 1))
    return from_sequence(seq, table, num_frames)


def _window(cond: Conditioning | None, start: int, length: int) -> Conditioning | None:
    return None if cond is None else cond.frames(start, length)


@torch.inference_mode()
def generate_tokens(
    model: TokenLM,
    num_frames: int,
    cond: Conditioning | None = None,
    *,
    batch_size: int | None = None,
    prompt: torch.Tensor | None = None,
    cfg_scale: float = 3.0,
    temperature: float = 1.0,
    top_k: int = 250,
    top_p: float = 0.0,
    seed: int | list[int] = 0,
    window_frames: int | None = None,
    keep_frames: int | None = None,
    progress: bool = False,
    unguided: tuple[str, ...] = (),
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Tokens (B, K, num_frames): any length, continuing an optional ``prompt`` (B, K, Tp).

    Up to ``window_frames`` (default: the trained context) frames are decoded in one
    window; longer outputs continue window by window, each new window prompted with
    the last ``keep_frames`` (default: half a window) frames so far.  ``cond.melody`` and
    ``cond.beat``, if any, span the whole output and are cut to each window.

    ``seed`` as a list gives each row its own random stream, so row i equals a decoding of
    that row alone with seed[i].  ``callback(done, total)`` runs after each pattern step.
    """
    c = model.config
    B = batch_size or (cond.batch_size() if cond is not None else None) or (prompt.shape[0] if prompt is not None else 1)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    window = min(window_frames or c.max_frames, c.max_frames)
    keep = keep_frames if keep_frames is not None else window // 2
    if not 0 < keep < window:
        raise ValueError(f"keep_frames must be in (0, {window}), got {keep}")
    if prompt is not None:
        if prompt.dim() != 3 or prompt.shape[:2] != (B, c.num_codebooks):
            raise ValueError(f"prompt must be (B={B}, K={c.num_codebooks}, T), got {tuple(prompt.shape)}")
        if prompt.shape[-1] >= min(num_frames, window):
            raise ValueError(f"prompt has {prompt.shape[-1]} frames; it must be shorter than the output and the window ({min(num_frames, window)})")
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= c.codebook_size):
            raise ValueError(f"prompt token ids must be in [0, {c.codebook_size})")

    device = next(model.parameters()).device
    if isinstance(seed, list):
        if len(seed) != B:
            raise ValueError(f"{len(seed)} seeds for a batch of {B}")
        generator: torch.Generator | list[torch.Generator] = [torch.Generator(device=device).manual_seed(s) for s in seed]
    else:
        generator = torch.Generator(device=device).manual_seed(seed)
    guidance = None if cfg_scale == 1.0 else cfg_scale  # scale 1 is the conditional model: skip the extra rows
    sampling = dict(cfg_scale=guidance, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                    unguided=unguided)
    windows = [min(window, num_frames)]  # frames per window; each later one re-decodes `keep` frames
    covered = windows[0]
    while covered < num_frames:
        windows.append(min(window, keep + num_frames - covered))
        covered += windows[-1] - keep
    total_steps = sum(num_steps(c.pattern, c.num_codebooks, w) for w in windows)
    bar = tqdm(total=total_steps, desc="decode", disable=not progress, leave=False)

    done = 0

    def step_done() -> None:
        nonlocal done
        done += 1
        bar.update()
        if callback is not None:
            callback(done, total_steps)

    try:
        out = decode_window(model, windows[0], _window(cond, 0, windows[0]), batch_size=B, prompt=prompt,
                            on_step=step_done, **sampling)
        for size in windows[1:]:
            start = out.shape[-1] - keep
            new = decode_window(model, size, _window(cond, start, size), batch_size=B, prompt=out[..., start:],
                                on_step=step_done, **sampling)
            out = torch.cat([out, new[..., keep:]], -1)
    finally:
        bar.close()
    return out
