"""Continuation without end: stage 1 window by window, stage 2 segment by segment, flat memory.

Three small state machines, each holding only a bounded tail of what it made:

- :class:`TokenPlanner` asks stage 1 for more coarse tokens when stage 2 needs them, prompting
  each new LM window with the last ``keep`` token frames (a sliding window), and forgets the
  frames no later window will read;
- :func:`continue_latents` renders ``chunk`` new latent frames per window with the previous
  window's last ``context`` frames given as known (outpainting, MeLoDy sec. 3.3's continuation),
  so consecutive windows share their boundary and memory does not grow with the length;
- :class:`StreamDecoder` turns latent chunks into audio as they come, re-decoding a few frames of
  context around each boundary and crossfading the overlap (the VAE's decoder is not causal).

Whatever the length, the working set is one LM window, one stage-2 window and one decoder
window; only the output (or nothing, when streaming to a file) grows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# extend(prompt (B, K, P) or None, at_least) -> (B, K, n >= at_least) new token frames after the prompt
Extend = Callable[[torch.Tensor | None, int], torch.Tensor]
# render(tokens (B, K, frames * r), known (B, D, c) or None, frames, window index) -> (B, D, frames)
RenderWindow = Callable[[torch.Tensor, torch.Tensor | None, int, int], torch.Tensor]


class TokenPlanner:
    """Coarse token frames on demand, from stage 1, holding only a tail of them."""

    def __init__(self, extend: Extend, keep: int) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.extend, self.keep = extend, keep
        self.tokens: torch.Tensor | None = None  # frames [start, start + tokens.shape[-1])
        self.start = 0
        self.peak_frames = 0  # the most frames held at once (flat memory: bounded by the windows)

    @property
    def end(self) -> int:
        return self.start + (0 if self.tokens is None else self.tokens.shape[-1])

    def take(self, lo: int, hi: int) -> torch.Tensor:
        """Token frames [lo, hi) (absolute indices), planning more as needed."""
        if lo < self.start:
            raise ValueError(f"token frames before {self.start} were released (asked from {lo})")
        while self.end < hi:
            prompt = None if self.tokens is None else self.tokens[..., max(0, self.tokens.shape[-1] - self.keep):]
            new = self.extend(prompt, hi - self.end)
            if new.shape[-1] < 1:
                raise RuntimeError("stage 1 returned no new token frames")
            self.tokens = new if self.tokens is None else torch.cat([self.tokens, new], dim=-1)
        self.peak_frames = max(self.peak_frames, self.tokens.shape[-1])
        return self.tokens[..., lo - self.start : hi - self.start]

    def release(self, before: int) -> None:
        """Forget frames before ``before``, except the ``keep`` the next LM window is prompted with."""
        if self.tokens is None:
            return
        cut = min(before, self.end - self.keep) - self.start
        if cut > 0:
            self.tokens = self.tokens[..., cut:].clone()
            self.start += cut


def window_sizes(total: int, chunk: int) -> list[int]:
    """New frames per stage-2 window: ``chunk`` each, the rest in the last."""
    if total < 1 or chunk < 1:
        raise ValueError(f"need total >= 1 and chunk >= 1 frames, got {total}, {chunk}")
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def continue_latents(render: RenderWindow, planner: TokenPlanner, total: int, *, chunk: int, context: int,
                     tokens_per_frame: int) -> Iterator[torch.Tensor]:
    """Latents (B, D, n) of consecutive windows, ``total`` frames in all.

    Window w renders its new frames after the last ``context`` frames of window w - 1, which it
    is given as known and returns unchanged, so each seam lies inside a window the model saw
    whole.  Token frames are read at ``tokens_per_frame`` per latent frame."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    r, done, tail = tokens_per_frame, 0, None
    for index, new in enumerate(window_sizes(total, chunk)):
        ctx = 0 if tail is None else tail.shape[-1]
        tokens = planner.take((done - ctx) * r, (done + new) * r)
        window = render(tokens, tail, ctx + new, index)
        yield window[..., ctx:]
        tail = window[..., -context:] if context else None
        done += new
        planner.release((done - (0 if tail is None else tail.shape[-1])) * r)


class StreamDecoder:
    """Latent chunks in, audio chunks out, with bounded memory.

    Each push decodes the held frames (``context`` frames of left context kept from before,
    plus the new ones) and emits the audio up to ``context`` frames before the end (those may
    still change once more frames follow); the last ``fade`` samples of each emission are held
    back and crossfaded with their re-decoded version.  ``finish`` emits the rest.
    """

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], samples_per_frame: int, context: int,
                 fade: int) -> None:
        if samples_per_frame < 1 or context < 0 or fade < 0:
            raise ValueError("need samples_per_frame >= 1, context >= 0 and fade >= 0")
        self.decode, self.spf, self.context, self.fade = decode, samples_per_frame, context, fade
        self.frames: torch.Tensor | None = None  # latent frames [start, start + n)
        self.start = 0
        self.emitted = 0  # samples [0, emitted) are final and out
        self.pending: torch.Tensor | None = None  # samples [emitted, emitted + fade), to crossfade
        self.peak_frames = 0

    def push(self, latents: torch.Tensor) -> torch.Tensor | None:
        """Audio (B, C, n) that is now final, or None."""
        return self._emit(latents, final=False)

    def finish(self) -> torch.Tensor | None:
        """The rest of the audio."""
        return self._emit(None, final=True)

    def _emit(self, latents: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        if latents is not None:
            self.frames = latents if self.frames is None else torch.cat([self.frames, latents], dim=-1)
        if self.frames is None:
            return None
        self.peak_frames = max(self.peak_frames, self.frames.shape[-1])
        total = self.start + self.frames.shape[-1]
        stable = total * self.spf if final else (total - self.context) * self.spf
        hold = 0 if final else self.fade
        if stable - hold <= self.emitted:
            return None
        with torch.inference_mode():
            wav = self.decode(self.frames).float()
        offset = self.start * self.spf
        piece = wav[..., self.emitted - offset : stable - offset]
        if self.pending is not None and self.pending.shape[-1]:
            n = min(self.pending.shape[-1], piece.shape[-1])
            ramp = torch.linspace(0, 1, n + 2, dtype=piece.dtype)[1:-1]
            piece = piece.clone()
            piece[..., :n] = self.pending[..., :n] * (1 - ramp) + piece[..., :n] * ramp
        out, self.pending = (piece, None) if not hold else (piece[..., :-hold], piece[..., -hold:])
        self.emitted += out.shape[-1]
        keep_from = max(self.start, self.emitted // self.spf - self.context)  # left context for the next decode
        self.frames = self.frames[..., keep_from - self.start :].clone()
        self.start = keep_from
        if final:
            self.frames = None
        return out
