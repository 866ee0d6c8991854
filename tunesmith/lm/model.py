"""The token language model: K codebook streams in, K distributions over the next cells out.

MusicGen sec. 2 in one module:

- the input at each pattern step is the *sum* of the K codebook embeddings of the
  previous step (one table per codebook, plus a special id for "no token here");
- a swappable causal backbone (``tunesmith.lm.backbones``) maps the steps to hidden
  states;
- K linear heads give logits over each codebook's entries.

Conditioning comes two ways, both supported (MusicGen sec. 2.2):

- ``cross``: text token states, projected to the model width, are attended to by
  every block; a learned always-visible first entry keeps the attention well defined
  when the text is dropped for classifier-free guidance (``text_null="learned"``), or,
  as MusicGen's public checkpoints have it (``text_null="zeros"``), padding and dropped
  text are zero states, so a row without text gets nothing from cross-attention;
- ``prefix``: the projected text is prepended to the sequence instead (what a
  backbone without cross-attention needs).

Melody (MusicGen sec. 2.2, "melody conditioning") is always a prefix: the
dominant chroma bin of each frame as a one-hot, projected to the model width.

A beat clock (``tunesmith.conditioning.beat``), when the model has one, is added to
the input of every step: the clock of the frame a step generates, projected to the
model width, so the model always knows where in the beat the next frame falls.  The
prompted key (``tunesmith.conditioning.key``), when the model takes one, is added to
every step's input the same way.

The sequence the backbone sees is ``[prefix | start | step 0 | ... | step S-2]`` and
its output at ``start + s`` gives the logits of pattern step s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.checkpoint import register_model
from tunesmith.lm.backbones import Backbone, backbone_config, build_backbone
from tunesmith.conditioning.beat import CLOCK_DIM
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.conditioning.key import KEY_DIM
from tunesmith.lm.patterns import PATTERNS, layout, num_steps, step_frames


@dataclass
class LMConfig:
    # the conditions' dropout probabilities moved to the training run (RunConfig.dropout)
    RETIRED_KEYS: ClassVar[tuple[str, ...]] = ("text_dropout", "melody_dropout", "beat_dropout", "key_dropout")

    num_codebooks: int = 4
    codebook_size: int = 2048
    dim: int = 512
    backbone: str = "transformer"
    backbone_config: dict[str, Any] = field(default_factory=dict)  # options of that backbone
    pattern: Literal["parallel", "delay", "flattening", "coarse_first", "stereo_delay"] = "delay"
    conditioning: Literal["cross", "prefix"] = "cross"
    # what cross-attention sees where there is no text: a learned always-visible entry (ours),
    # or zero states (MusicGen: attention without bias then adds exactly nothing)
    text_null: Literal["learned", "zeros"] = "learned"
    text_encoder: str = "minilm"  # name for tunesmith.conditioning.encoders.get_text_encoder
    text_dim: int = 384
    max_text_tokens: int = 64  # text is truncated to this; the prefix form pads to it
    melody: bool = False  # prepend a chroma one-hot prefix
    chroma_bins: int = 12
    frame_rate: float = 50.0  # codec frames per second
    max_frames: int = 1500  # the trained context, in frames
    beat_clock: bool = False  # add the prompted tempo's beat clock to every step's input
    key_input: bool = False  # add the prompted key's vector to every step's input

    def __post_init__(self) -> None:
        if self.num_codebooks < 1 or self.codebook_size < 2 or self.dim < 8:
            raise ValueError("need num_codebooks >= 1, codebook_size >= 2, dim >= 8")
        if self.max_frames < 1 or self.max_text_tokens < 1 or self.frame_rate <= 0:
            raise ValueError("max_frames, max_text_tokens and frame_rate must be positive")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern '{self.pattern}'")
        if self.text_null not in ("learned", "zeros"):
            raise ValueError(f"text_null must be 'learned' or 'zeros', got {self.text_null!r}")
        backbone_config(self.backbone, self.backbone_config)  # unknown backbone or option: error now

    @property
    def special_token(self) -> int:
        """Input id meaning "no token": the start of the sequence and the empty cells of a pattern."""
        return self.codebook_size

    def max_steps(self, num_frames: int | None = None) -> int:
        return num_steps(self.pattern, self.num_codebooks, self.max_frames if num_frames is None else num_frames)


@register_model("lm", LMConfig)
class TokenLM(nn.Module):
    """Sum of K embeddings -> backbone -> K heads, with text and melody conditioning."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = c = config
        K, N, D = c.num_codebooks, c.codebook_size, c.dim
        # One table holding K blocks of N + 1 rows; codebook k's id i is row k * (N + 1) + i.
        self.embed = nn.Embedding(K * (N + 1), D)
        self.register_buffer("embed_offsets", torch.arange(K).mul(N + 1)[None, :, None], persistent=False)
        self.start = nn.Parameter(torch.zeros(D))
        self.text_proj = nn.Linear(c.text_dim, D)
        if c.conditioning == "cross":
            if c.text_null == "learned":
                self.cross_start = nn.Parameter(torch.zeros(D))  # always visible: no empty attention rows
        else:
            self.text_pad = nn.Parameter(torch.zeros(D))  # fills padding and dropped text in the prefix
        self.melody_proj = nn.Linear(c.chroma_bins, D) if c.melody else None  # zeros -> its bias: "no melody"
        # No bias: a zero clock ("none") adds nothing.  Zero-initialised, so a trained model
        # given a clock to learn starts out exactly as it was.
        self.beat_proj = nn.Linear(CLOCK_DIM, D, bias=False) if c.beat_clock else None
        self.key_proj = nn.Linear(KEY_DIM, D, bias=False) if c.key_input else None  # the same, for the key
        self.backbone: Backbone = build_backbone(c.backbone, D, c.backbone_config, cross_attention=c.conditioning == "cross")
        self.head = nn.Linear(D, K * N, bias=False)  # the K heads as one matrix: one matmul per step
        # Our own layers start small (GPT-2 style); the backbone initialises itself.
        for module in (self.embed, self.text_proj, self.head, self.melody_proj):
            if module is not None:
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.start, std=0.02)
        for proj in (self.beat_proj, self.key_proj):
            if proj is not None:
                nn.init.zeros_(proj.weight)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = value

    # -- inputs ------------------------------------------------------------

    def embed_steps(self, ids: torch.Tensor) -> torch.Tensor:
        """Pattern steps (B, K, S) of ids in [0, N] (N = special) -> (B, S, D), summed over K."""
        return self.embed(ids + self.embed_offsets).sum(dim=1)

    def condition(self, cond: Conditioning | None, batch_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(prefix (B, P, D) or None, cross (B, S, D) or None, cross_mask (B, S) or None)."""
        c = self.config
        cond = cond or Conditioning()
        prefix: list[torch.Tensor] = []
        cross = cross_mask = None
        if cond.text is not None:
            if cond.text.shape[-1] != c.text_dim:
                raise ValueError(f"text embeddings are {cond.text.shape[-1]}-dim, the model expects {c.text_dim}")
            if cond.segments is not None:  # time-stamped: K sections side by side, each truncated alone
                if c.conditioning != "cross":
                    raise ValueError("time-stamped prompts need a cross-attention LM (conditioning='cross')")
                text, mask = _section_tokens(cond, c.max_text_tokens)
                text = self.text_proj(text)
            else:
                text = self.text_proj(cond.text[:, : c.max_text_tokens])
                mask = cond.text_mask[:, : c.max_text_tokens] if cond.text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
            if c.conditioning == "cross" and c.text_null == "zeros":
                # Padding and dropped text become zero states; a row with no real token sees
                # only zeros, which bias-free keys and values turn into exactly zero output
                # (where a fully masked row would be NaN or backend-defined).
                cross = text * mask[..., None].to(text.dtype)
                cross_mask = mask | ~mask.any(1, keepdim=True)
            elif c.conditioning == "cross":
                first = self.cross_start.expand(text.shape[0], 1, -1)
                cross = torch.cat([first, text], 1)
                cross_mask = F.pad(mask, (1, 0), value=True)
            else:  # fixed length, so batches and the unconditional rows line up
                text = F.pad(text, (0, 0, 0, c.max_text_tokens - text.shape[1]))
                mask = F.pad(mask, (0, c.max_text_tokens - mask.shape[1]), value=False)
                prefix.append(torch.where(mask[..., None], text, self.text_pad.to(text.dtype)))
        elif c.conditioning == "cross" and c.text_null == "zeros":
            cross = self.start.new_zeros(batch_size, 1, c.dim)
            cross_mask = torch.ones(batch_size, 1, dtype=torch.bool, device=cross.device)
        elif c.conditioning == "cross":
            cross = self.cross_start.expand(batch_size, 1, -1)
            cross_mask = torch.ones(batch_size, 1, dtype=torch.bool, device=cross.device)
        if c.melody:
            if cond.melody is None:
                raise ValueError("this model is melody-conditioned: give a melody (or zeros for none)")
            prefix.append(self.melody_proj(cond.melody.transpose(1, 2).to(self.start.dtype)))
        elif cond.melody is not None:
            raise ValueError("this model has no melody conditioning")
        return (torch.cat(prefix, 1) if prefix else None), cross, cross_mask

    def step_cross_masks(self, cond: Conditioning, num_frames: int) -> torch.Tensor:
        """(B, S, cross length) bool, for a time-stamped prompt (``cond.segments``): the cross mask
        of the input that predicts pattern step s, which sees only the section of the frame
        that step generates (the section of largest weight there) besides the always-visible
        first entry: the conditioning switches at the frame boundaries of the sections."""
        c = self.config
        if cond.segments is None or cond.text is None:
            raise ValueError("step_cross_masks is for time-stamped prompts (cond.segments)")
        if cond.segments.shape[-1] != num_frames:
            raise ValueError(f"segments must cover the {num_frames} frames, got {tuple(cond.segments.shape)}")
        _, mask = _section_tokens(cond, c.max_text_tokens)
        sections = cond.segments.shape[1]
        per = mask.shape[1] // sections
        frames = step_frames(layout(c.pattern, c.num_codebooks, num_frames)).to(cond.segments.device)
        owner = cond.segments[:, :, frames].argmax(1)  # (B, S): the section of each step
        own = (torch.arange(mask.shape[1], device=mask.device) // per)[None, None] == owner[..., None]
        visible = mask[:, None] & own  # (B, S, K * per)
        if c.text_null == "zeros":  # a row that sees no real token reads zeros (as condition() does)
            return visible | ~visible.any(-1, keepdim=True)
        return F.pad(visible, (1, 0), value=True)

    def step_inputs(self, cond: Conditioning | None, num_frames: int) -> torch.Tensor | None:
        """(B, S or 1, D): what is added to the input that predicts each pattern step: the
        projected beat clock of the frame the step generates, plus the projected key;
        None for a model with neither."""
        cond = cond or Conditioning()
        out = None
        if self.beat_proj is None:
            if cond.beat is not None:
                raise ValueError("this model has no beat clock")
        else:
            if cond.beat is None:
                raise ValueError("this model has a beat clock: give one (or zeros for none)")
            if cond.beat.shape[1:] != (CLOCK_DIM, num_frames):
                raise ValueError(f"beat clock must be (B, {CLOCK_DIM}, {num_frames}), got {tuple(cond.beat.shape)}")
            c = self.config
            frames = step_frames(layout(c.pattern, c.num_codebooks, num_frames)).to(cond.beat.device)
            out = self.beat_proj(cond.beat[:, :, frames].transpose(1, 2).to(self.start.dtype))
        if self.key_proj is None:
            if cond.key is not None:
                raise ValueError("this model takes no key input")
        else:
            if cond.key is not None and cond.key.dim() == 3 and cond.key.shape[1:] == (KEY_DIM, num_frames):
                # a key per frame (time-stamped prompts): each step reads the key of the frame it generates
                c = self.config
                frames = step_frames(layout(c.pattern, c.num_codebooks, num_frames)).to(cond.key.device)
                key = self.key_proj(cond.key[:, :, frames].transpose(1, 2).to(self.start.dtype))
            elif cond.key is None or cond.key.dim() != 2 or cond.key.shape[1] != KEY_DIM:
                got = None if cond.key is None else tuple(cond.key.shape)
                raise ValueError(f"this model takes a key: give (B, {KEY_DIM}) key vectors (zeros for none), got {got}")
            else:
                key = self.key_proj(cond.key.to(self.start.dtype))[:, None]
            out = key if out is None else out + key
        return out

    def sequence_input(self, steps: torch.Tensor, prefix: torch.Tensor | None, added: torch.Tensor | None = None) -> torch.Tensor:
        """[prefix | start | embed(steps)]: the backbone input for steps (B, K, S') already known.

        ``added`` (B, >= S' + 1 or 1, D) from :meth:`step_inputs` is added to the S' + 1 step inputs."""
        B = steps.shape[0]
        x = torch.cat([self.start.expand(B, 1, -1), self.embed_steps(steps)], 1)
        if added is not None:
            x = x + added[:, : x.shape[1]]
        return x if prefix is None else torch.cat([prefix, x], 1)

    # -- outputs -----------------------------------------------------------

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden (B, S, D) -> logits (B, K, S, N)."""
        B, S, _ = hidden.shape
        c = self.config
        return self.head(hidden).view(B, S, c.num_codebooks, c.codebook_size).permute(0, 2, 1, 3)

    def forward(self, steps: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, K, S, N) for the pattern sequence ``steps`` (B, K, S).

        The logits at step s depend only on steps 0..s-1 and the conditioning.
        """
        c = self.config
        if steps.dim() != 3 or steps.shape[1] != c.num_codebooks:
            raise ValueError(f"steps must be (B, K={c.num_codebooks}, S), got {tuple(steps.shape)}")
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) > c.special_token):
            raise ValueError(f"token ids must be in [0, {c.special_token}]")
        prefix, cross, cross_mask = self.condition(cond, steps.shape[0])
        beat_frames = cond.beat.shape[-1] if cond is not None and cond.beat is not None else 0
        if beat_frames and num_steps(c.pattern, c.num_codebooks, beat_frames) != steps.shape[2]:
            raise ValueError(f"the beat clock has {beat_frames} frames, which is not {steps.shape[2]} pattern steps")
        x = self.sequence_input(steps[:, :, :-1], prefix, self.step_inputs(cond, beat_frames))
        hidden = self.backbone(x, cross, cross_mask)
        P = 0 if prefix is None else prefix.shape[1]
        return self.logits(hidden[:, P:])

    def loss(self, steps: torch.Tensor, valid: torch.Tensor, cond: Conditioning | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced :func:`token_loss` of the pattern sequence ``steps``."""
        return token_loss(self.forward(steps, cond), steps, valid)


def _section_tokens(cond: Conditioning, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K sections of a time-stamped prompt's text, each cut to ``max_tokens``: (B, K * S', dim)
    and the mask (B, K * S')."""
    text, segments = cond.text, cond.segments
    b, sections = segments.shape[:2]
    if text.shape[1] % sections:
        raise ValueError(f"text of {text.shape[1]} tokens does not split into {sections} sections")
    per = text.shape[1] // sections
    mask = cond.text_mask if cond.text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    keep = min(per, max_tokens)
    text = text.view(b, sections, per, -1)[:, :, :keep].flatten(1, 2)
    return text, mask.view(b, sections, per)[:, :, :keep].flatten(1)


def token_loss(logits: torch.Tensor, steps: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the real cells, and its mean per codebook (K,).

    ``logits`` (B, K, S, N); ``steps`` (B, K, S) targets (the special id N marks empty
    cells); ``valid`` (K, S) or (B, K, S) says which cells count.
    """
    N = logits.shape[-1]
    ce = F.cross_entropy(logits.flatten(0, 2).float(), steps.clamp_max(N - 1).flatten(), reduction="none")
    weights = valid.expand_as(steps).to(ce.dtype)
    per_cell = ce.view(steps.shape) * weights
    total = per_cell.sum() / weights.sum().clamp_min(1)
    per_k = per_cell.sum((0, 2)) / weights.sum((0, 2)).clamp_min(1)
    return total, per_k.detach()
