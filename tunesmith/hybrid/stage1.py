"""Stage 1: the token LM over stacked coarse tokens, and how it starts from a trained LM.

The coarse LM is an ordinary :class:`tunesmith.lm.model.TokenLM` (either backbone) whose K * s
streams are the first K codebooks of s consecutive codec frames (tunesmith.hybrid.tokens),
decoded with the ``parallel`` pattern at 1/s of the codec's frame rate.  Every stream is a
token of one of the first K codebooks, so a trained LM's embedding table and output head of
codebook k initialise every stream that carries codebook k; the backbone and the text
conditioning transfer as they are (:func:`coarse_lm_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from tunesmith.checkpoint import load_model
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.lm.model import LMConfig, TokenLM
from tunesmith.lm.sampling import apply_cfg, sample


def coarse_config(base: LMConfig, codebooks: int, stack: int) -> LMConfig:
    """The coarse LM's config: ``base`` with K * s parallel streams at 1/s of its frame rate."""
    if codebooks < 1 or codebooks > base.num_codebooks or stack < 1:
        raise ValueError(f"need 1 <= codebooks <= {base.num_codebooks} and stack >= 1, got {codebooks}, {stack}")
    return replace(base, num_codebooks=codebooks * stack, pattern="parallel", frame_rate=base.frame_rate / stack,
                   max_frames=max(1, base.max_frames // stack))


def coarse_lm_from(source: str | Path | TokenLM, codebooks: int, stack: int) -> tuple[TokenLM, list[str]]:
    """A coarse LM initialised from the trained LM ``source`` (a directory, a bundled name, or a
    model): stream i takes codebook (i % K)'s embedding block and head rows.  Returns the model
    and the names of the parameters it could not take (none for a same-backbone source)."""
    trained = source if isinstance(source, TokenLM) else load_model(source)
    if not isinstance(trained, TokenLM):
        raise TypeError(f"{source} holds a {type(trained).__name__}, not a token LM")
    c = trained.config
    model = TokenLM(coarse_config(c, codebooks, stack))
    own, theirs = model.state_dict(), {k: v.float() for k, v in trained.state_dict().items()}
    n, d = c.codebook_size, c.dim
    streams = codebooks * stack
    embed = theirs["embed.weight"].view(c.num_codebooks, n + 1, d)
    head = theirs["head.weight"].view(c.num_codebooks, n, d)
    theirs["embed.weight"] = torch.cat([embed[i % codebooks] for i in range(streams)])
    theirs["head.weight"] = torch.cat([head[i % codebooks] for i in range(streams)])
    fitting = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return model, sorted(set(own) - set(fitting))


def carries_state(lm: TokenLM) -> bool:
    """Whether the LM's backbone decodes with a state of constant size (the SSMs): then stage 1 can
    run on without windows, its state carrying everything before (tunesmith.lm.backbones.ssm_layers)."""
    return lm.config.backbone.startswith("mamba")


class CarriedDecoder:
    """Stage 1 for a constant-state backbone: one decoding run for the whole piece, advanced on
    demand, so no window is ever re-prefilled (the state carries the past).

    For the ``parallel`` pattern only (the coarse LM's: every step samples its K * s cells at once),
    with classifier-free guidance as one batch of conditional and unconditional rows, the same
    sampling as :func:`tunesmith.lm.decode.decode_window` (which this equals over one window).
    ``cond`` must cover every step that will be asked for (its beat clock, if the model has one).
    """

    def __init__(self, lm: TokenLM, cond: Conditioning, batch: int, steps: int, *, cfg: float, temperature: float,
                 top_k: int, top_p: float, generator: torch.Generator | list[torch.Generator],
                 on_step: Callable[[], None] | None = None) -> None:
        if lm.config.pattern != "parallel":
            raise ValueError(f"carried decoding takes the 'parallel' pattern, not {lm.config.pattern!r}")
        self.lm, self.batch, self.steps = lm, batch, steps
        self.cfg, self.temperature, self.top_k, self.top_p = cfg, temperature, top_k, top_p
        self.generator, self.on_step = generator, on_step
        self.guided = cfg != 1.0
        rows = 2 * batch if self.guided else batch
        full = cond.cat(cond.null()) if self.guided else cond
        with torch.inference_mode():
            prefix, self.cross, self.cross_mask = lm.condition(full, rows)
            self.added = lm.step_inputs(full, steps)  # (rows, steps or 1, D) or None
            device = lm.start.device
            self.state = lm.backbone.allocate_state(rows, (0 if prefix is None else prefix.shape[1]) + steps + 1,
                                                    device, lm.start.dtype)
            empty = torch.zeros(rows, lm.config.num_codebooks, 0, dtype=torch.long, device=device)
            x = lm.sequence_input(empty, prefix, self.added)
            self.hidden = lm.backbone.step(x, self.state, self.cross, self.cross_mask)[:, -1:]
        self.done = 0
        self.passes = 1  # the prefill of the conditioning and the start token

    @torch.inference_mode()
    def next_steps(self, count: int) -> torch.Tensor:
        """The next ``count`` stacked steps (B, K * s, count)."""
        lm, out = self.lm, []
        for _ in range(count):
            if self.done >= self.steps:
                raise ValueError(f"carried decoding was set up for {self.steps} steps")
            logits = lm.logits(self.hidden)[:, :, 0]  # (rows, K, N)
            if self.guided:
                logits = apply_cfg(logits[: self.batch], logits[self.batch :], self.cfg)
            ids = sample(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                         generator=self.generator)
            out.append(ids)
            self.done += 1
            if self.on_step is not None:
                self.on_step()
            if self.done < self.steps:
                step = ids[..., None]
                x = lm.embed_steps(torch.cat([step, step]) if self.guided else step)
                if self.added is not None:
                    x = x + (self.added if self.added.shape[1] == 1 else self.added[:, self.done : self.done + 1])
                self.hidden = lm.backbone.step(x, self.state, self.cross, self.cross_mask)
                self.passes += 1
        return torch.stack(out, dim=-1)
