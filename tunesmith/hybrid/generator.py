"""The two-stage generator (``generator_type: "two-stage"``): text -> coarse LM -> DPD -> VAE -> audio.

A generator directory is the DPD's model directory (``config.json`` with the generator type,
the coarse-token layout, the latent scale and the default controls), with the stage-1 LM's
model directory inside it as ``stage1/`` and the VAE under ``codec/`` (or named, when bundled).

Generation runs window by window whatever the duration (tunesmith.hybrid.continuation): the LM
plans coarse tokens a window ahead of the DPD, the DPD renders ``chunk_seconds`` of latents per
window after ``context_seconds`` of the previous window's tail, and :meth:`stream` decodes and
writes each chunk as it comes, so minutes of audio take the memory of one window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import soundfile as sf
import torch

from tunesmith.audio import Audio
from tunesmith.checkpoint import load_model, save
from tunesmith.conditioning.conditions import Conditioning, from_prompts
from tunesmith.errors import CheckpointError
from tunesmith.generator import (
    Control,
    Generator,
    check_request,
    check_seeds,
    load_parts,
)
from tunesmith.hybrid.continuation import (
    StreamDecoder,
    TokenPlanner,
    continue_latents,
    window_sizes,
)
from tunesmith.hybrid.dpd import DualPathDiffusion
from tunesmith.hybrid.render import SAMPLER_NAMES, render
from tunesmith.hybrid.stage1 import CarriedDecoder, carries_state
from tunesmith.hybrid.tokens import stack_frames, unstack_frames
from tunesmith.lm.decode import decode_window
from tunesmith.lm.model import TokenLM

STAGE1_DIR = "stage1"
NOISE_SEED_OFFSET = 0x5EED  # stage 2's noise stream of a row: seed + this (stage 1 samples from seed)


@dataclass
class RunStats:
    """What one generation cost: what the benchmark reports."""

    lm_passes: int = 0  # stage-1 forward passes (one per decoded step; a guided pair counts once)
    lm_windows: int = 0  # stage-1 windows (each begins with one prefill pass over its prompt, counted)
    nfe: int = 0  # stage-2 network evaluations, all windows
    windows: int = 0
    peak_token_frames: int = 0
    peak_decoder_frames: int = 0


class TwoStageGenerator(Generator):
    """Text -> coarse tokens (stage 1, a token LM) -> latents (stage 2, the DPD) -> audio (the VAE)."""

    generator_type = "two-stage"
    CONTROLS: ClassVar[dict[str, Control]] = {"cfg": Control((int, float), 0, 100), "temperature": Control((int, float), 0, 100),
                "top_k": Control(int, 0, 1 << 20), "top_p": Control((int, float), 0, 1),
                "steps": Control(int, 1, 1000), "sampler": Control(str), "token_cfg": Control((int, float), 0, 100),
                "chunk_seconds": Control((int, float), 0.2, 600), "context_seconds": Control((int, float), 0, 60),
                "carry_state": Control(bool), "unconditional": Control(bool)}

    def __init__(self, lm: TokenLM, dpd: DualPathDiffusion, codec: Any, text_encoder: Any = None, *,
                 codebooks: int = 1, stack: int = 5, latent_scale: float = 1.0, cfg: float = 3.0,
                 token_cfg: float = 1.0, steps: int = 20, sampler: str = "angle", chunk_seconds: float = 10.0,
                 context_seconds: float = 2.0) -> None:
        c, lc = dpd.config, lm.config
        if codec.latent_dim != c.latent_dim:
            raise ValueError(f"the VAE has {codec.latent_dim} latent channels, the DPD expects {c.latent_dim}")
        if abs(float(codec.frame_rate) - c.frame_rate) > 1e-6:
            raise ValueError(f"the VAE runs at {codec.frame_rate} frames/s, the DPD at {c.frame_rate}")
        if codebooks != c.num_codebooks or lc.num_codebooks != codebooks * stack:
            raise ValueError(f"stage 1 has {lc.num_codebooks} streams, stage 2 reads {c.num_codebooks} codebooks; "
                             f"with stack {stack} they need {codebooks * stack} and {codebooks}")
        if lc.codebook_size != c.codebook_size or abs(lc.frame_rate * stack - c.token_rate) > 1e-6:
            raise ValueError("stage 1 and stage 2 disagree on the coarse tokens (codebook size or frame rate)")
        if lc.pattern != "parallel":
            raise ValueError(f"the coarse LM decodes stacked frames with the 'parallel' pattern, not {lc.pattern!r}")
        super().__init__(dpd, codec, max_duration=3600.0, cfg=cfg)
        self.dpd, self.lm = self.network, lm.eval()
        self._text_encoder = text_encoder
        self.codebooks, self.stack, self.latent_scale = codebooks, stack, float(latent_scale)
        self.token_cfg, self.steps, self.sampler = float(token_cfg), int(steps), sampler
        self.chunk_seconds, self.context_seconds = float(chunk_seconds), float(context_seconds)
        self.frame_rate = c.frame_rate

    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None:
            from tunesmith.conditioning.encoders import get_text_encoder

            self._text_encoder = get_text_encoder(self.lm.config.text_encoder)
        return self._text_encoder

    def to(self, device: str | torch.device) -> TwoStageGenerator:
        for module in (self.dpd, self.lm, self.codec):
            module.to(device)
        return self

    # -- the two stages ---------------------------------------------------------

    def lm_conditioning(self, prompts: list[str], steps: int) -> Conditioning:
        c = self.lm.config
        return from_prompts(prompts, self.text_encoder, num_frames=steps, frame_rate=c.frame_rate,
                            beat_clock=c.beat_clock, key_input=c.key_input).to(self.lm.start.device)

    def planner(self, cond: Conditioning, batch: int, seed: int | list[int], stats: RunStats, *, cfg: float,
                temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0, carry: bool = True,
                on_step: Callable[[], None] | None = None) -> TokenPlanner:
        """Stage 1 as a :class:`TokenPlanner`.  A Transformer runs windows of its context, each
        prompted with the last half window of stacked steps (a sliding window); an SSM (with
        ``carry``) runs once for the whole piece, its constant-size state carrying the past."""
        lm, s, k = self.lm, self.stack, self.codebooks
        device = lm.start.device
        seeds = seed if isinstance(seed, list) else None
        generator: Any = ([torch.Generator(device=device).manual_seed(x) for x in seeds] if seeds
                          else torch.Generator(device=device).manual_seed(seed))

        def counted() -> None:
            stats.lm_passes += 1
            if on_step is not None:
                on_step()

        if carry and carries_state(lm):  # an SSM: one run, its state carrying the past; no window re-read
            steps = cond.beat.shape[-1] if cond.beat is not None else 1 << 30  # a state's size does not depend on it
            decoder = CarriedDecoder(lm, cond, batch, steps, cfg=cfg, temperature=temperature, top_k=top_k,
                                     top_p=top_p, generator=generator, on_step=counted)
            stats.lm_windows, stats.lm_passes = 1, stats.lm_passes + 1  # its one prefill

            def carried(prompt: torch.Tensor | None, at_least: int) -> torch.Tensor:
                return unstack_frames(decoder.next_steps(math.ceil(at_least / s)), k)

            return TokenPlanner(carried, 0)
        window = lm.config.max_frames
        keep_steps = max(1, window // 2) if window > 1 else 0
        done_steps = 0  # absolute stacked steps decoded so far

        def extend(prompt: torch.Tensor | None, at_least: int) -> torch.Tensor:
            nonlocal done_steps
            prompt_steps = None if prompt is None or not prompt.shape[-1] else stack_frames(prompt, s)
            have = 0 if prompt_steps is None else prompt_steps.shape[-1]
            new = min(max(math.ceil(at_least / s), 1), window - have)
            cut = cond.frames(done_steps - have, have + new)
            out = decode_window(lm, have + new, cut, batch_size=batch, prompt=prompt_steps,
                                cfg_scale=None if cfg == 1.0 else cfg, temperature=temperature, top_k=top_k,
                                top_p=top_p, generator=generator, on_step=counted)
            stats.lm_windows += 1
            stats.lm_passes += 1  # the prefill of the window's prompt
            done_steps += new
            return unstack_frames(out[..., have:], k)

        return TokenPlanner(extend, keep_steps * s)

    def window_renderer(self, batch: int, seed: int | list[int], stats: RunStats, *, steps: int, sampler: str,
                        token_cfg: float, progress: bool = False,
                        on_step: Callable[[int, int], None] | None = None) -> Callable[..., torch.Tensor]:
        """Stage 2 for one window: tokens and the known tail -> latents (model units)."""
        device, d = self.device, self.dpd.config.latent_dim
        seeds = seed if isinstance(seed, list) else [seed] * batch
        if not isinstance(seed, list) and batch > 1:  # one stream for the batch, as the other families do
            streams = [torch.Generator(device=device).manual_seed(seed + NOISE_SEED_OFFSET)]
        else:
            streams = [torch.Generator(device=device).manual_seed(x + NOISE_SEED_OFFSET) for x in seeds]

        def render_window(tokens: torch.Tensor, known: torch.Tensor | None, frames: int, index: int) -> torch.Tensor:
            if len(streams) == 1 and batch > 1:
                noise = torch.randn(batch, d, frames, generator=streams[0], device=device)
            else:
                noise = torch.cat([torch.randn(1, d, frames, generator=g, device=device) for g in streams])
            keep = full = None
            if known is not None:
                have = known.shape[-1]
                keep = torch.zeros(batch, 1, frames, device=device)
                keep[..., :have] = 1
                full = torch.nn.functional.pad(known, (0, frames - have))
            out = render(self.dpd, tokens.to(device), noise, steps=steps, sampler=sampler, cfg=token_cfg,
                         known=full, keep=keep, progress=progress, callback=on_step)
            stats.nfe += out.nfe
            stats.windows += 1
            return out.latents

        return render_window

    def latent_chunks(self, items: list[str], duration: float, seed: int | list[int], stats: RunStats, *,
                      progress: bool = False, callback: Callable[[int, int], None] | None = None,
                      **controls: Any) -> Iterator[torch.Tensor]:
        """Latent chunks (B, D, n) in model units, window after window, ``duration`` seconds in all."""
        c = self.dpd.config
        frames = max(1, math.ceil(duration * c.frame_rate))
        chunk = max(1, round(float(controls.get("chunk_seconds") or self.chunk_seconds) * c.frame_rate))
        context_s = controls.get("context_seconds")
        context = round((self.context_seconds if context_s is None else float(context_s)) * c.frame_rate)
        steps = int(controls.get("steps") or self.steps)
        sampler = str(controls.get("sampler") or self.sampler)
        if sampler not in SAMPLER_NAMES:
            raise ValueError(f"control 'sampler' must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
        cfg = self.cfg if controls.get("cfg") is None else float(controls["cfg"])
        token_cfg = self.token_cfg if controls.get("token_cfg") is None else float(controls["token_cfg"])
        lm_steps = math.ceil(frames * c.tokens_per_frame / self.stack)
        cond = self.lm_conditioning(items, lm_steps + self.lm.config.max_frames)
        if controls.get("unconditional"):
            cond, cfg = cond.null(), 1.0
        total = lm_steps + len(window_sizes(frames, chunk)) * steps
        done = 0

        def tick(*_: Any) -> None:
            nonlocal done
            done = min(done + 1, total)
            if callback is not None:
                callback(done, total)

        planner = self.planner(cond, len(items), seed, stats, cfg=cfg,
                               temperature=float(controls.get("temperature", 1.0)), top_k=int(controls.get("top_k", 250)),
                               top_p=float(controls.get("top_p", 0.0)), carry=controls.get("carry_state") is not False,
                               on_step=tick)
        renderer = self.window_renderer(len(items), seed, stats, steps=steps, sampler=sampler, token_cfg=token_cfg,
                                        progress=progress, on_step=tick)
        with torch.inference_mode():
            yield from continue_latents(renderer, planner, frames, chunk=chunk, context=context,
                                        tokens_per_frame=c.tokens_per_frame)
        stats.peak_token_frames = planner.peak_frames

    # -- the Generator interface ------------------------------------------------

    def generate(self, prompts: str | list[str], duration: float, seed: int | list[int] = 0, *,
                 progress: bool = False, callback: Callable[[int, int], None] | None = None,
                 **controls: Any) -> Audio:
        """Audio (B, C, duration * sample_rate).  Controls: stage 1 ``cfg`` (text guidance; the
        model's own when unset), ``temperature``, ``top_k``, ``top_p``; stage 2 ``steps``,
        ``sampler`` ("angle", MeLoDy's, or a sigma sampler), ``token_cfg`` (guidance on the coarse
        tokens); ``chunk_seconds`` / ``context_seconds`` (new and overlapping seconds per window);
        ``carry_state`` (an SSM stage 1 runs on with its state, default; False: sliding windows);
        ``unconditional`` (no text)."""
        self.check_controls(controls)
        items = check_request(prompts, duration, self.max_duration)
        seed = check_seeds(seed, len(items))
        stats = RunStats()
        latents = torch.cat(list(self.latent_chunks(items, duration, seed, stats, progress=progress,
                                                    callback=callback, **controls)), dim=-1)
        audio = self.decode(latents / self.latent_scale, duration)
        audio.info["two_stage"] = dict(vars(stats))
        return audio

    def stream(self, prompt: str, duration: float, path: str | Path, seed: int = 0, *, progress: bool = False,
               callback: Callable[[int, int], None] | None = None, fade_seconds: float = 0.02,
               **controls: Any) -> RunStats:
        """Generate ``duration`` seconds for one prompt straight into the audio file ``path``
        (WAV/FLAC, by its suffix), window by window: memory stays that of one window."""
        self.check_controls(controls)
        items = check_request(prompt, duration, self.max_duration)
        if len(items) != 1:
            raise ValueError("stream takes one prompt")
        seed = check_seeds(seed, 1)
        stats = RunStats()
        spf = round(self.sample_rate / self.frame_rate)
        context = int(getattr(self.codec, "context_frames", 4))
        decoder = StreamDecoder(lambda z: self.codec.decode(z / self.latent_scale), spf, context,
                                round(fade_seconds * self.sample_rate))
        total = self.num_samples(duration)
        written = 0
        path = Path(path)
        try:
            with sf.SoundFile(str(path), "w", samplerate=self.sample_rate, channels=self.channels,
                              subtype="PCM_16" if path.suffix.lower() in (".wav", ".flac") else None) as out:
                def write(wav: torch.Tensor | None) -> None:
                    nonlocal written
                    if wav is None or written >= total:
                        return
                    piece = wav[0, :, : total - written].clamp(-1, 1).T.cpu().numpy()
                    out.write(piece)
                    written += piece.shape[0]

                for chunk in self.latent_chunks(items, duration, seed, stats, progress=progress, callback=callback,
                                                **controls):
                    write(decoder.push(chunk))
                write(decoder.finish())
                if written < total:
                    out.write(torch.zeros(total - written, self.channels).numpy())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        stats.peak_decoder_frames = decoder.peak_frames
        return stats

    def render_tokens(self, tokens: torch.Tensor, seed: int = 0, *, steps: int | None = None,
                      sampler: str | None = None, token_cfg: float | None = None) -> torch.Tensor:
        """Stage 2 alone: latents (B, D, T) in model units for coarse tokens (B, K, T * r), one window."""
        c = self.dpd.config
        frames = tokens.shape[-1] // c.tokens_per_frame
        stats = RunStats()
        renderer = self.window_renderer(tokens.shape[0], seed, stats, steps=steps or self.steps,
                                        sampler=sampler or self.sampler,
                                        token_cfg=self.token_cfg if token_cfg is None else token_cfg)
        with torch.inference_mode():
            return renderer(tokens, None, frames, 0)

    # -- the directory ----------------------------------------------------------

    def config_entries(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "token_cfg": self.token_cfg, "codebooks": self.codebooks, "stack": self.stack,
                "latent_scale": self.latent_scale, "steps": self.steps, "sampler": self.sampler,
                "chunk_seconds": self.chunk_seconds, "context_seconds": self.context_seconds}

    def save(self, directory: str | Path, *, codec_name: str | None = None, fp16: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """The DPD's directory (and the VAE), with the stage-1 LM under ``stage1/``."""
        out = super().save(directory, codec_name=codec_name, fp16=fp16, extra=extra)
        lm = self.lm
        if fp16:
            lm = TokenLM(self.lm.config)
            lm.load_state_dict(self.lm.state_dict())
            lm = lm.half()
        save(lm, Path(out) / STAGE1_DIR, extra={"storage": "fp16" if fp16 else "fp32"})
        return Path(out)

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> TwoStageGenerator:
        network, codec, meta = load_parts(directory, device)
        stage1 = Path(directory) / STAGE1_DIR
        if not stage1.is_dir():
            raise CheckpointError(f"{directory} is a two-stage generator without its stage-1 LM ({STAGE1_DIR}/)")
        return cls.from_parts(network, codec, {**meta, "_stage1": load_model(stage1, map_location=device).float()}, device)

    @classmethod
    def from_parts(cls, network: torch.nn.Module, codec: Any, meta: dict[str, Any], device: str) -> TwoStageGenerator:
        lm = meta.get("_stage1")
        if not isinstance(network, DualPathDiffusion) or not isinstance(lm, TokenLM):
            raise CheckpointError("a two-stage generator holds a DPD and, under stage1/, a token LM")
        return cls(lm, network, codec, codebooks=int(meta.get("codebooks", 1)), stack=int(meta.get("stack", 5)),
                   latent_scale=float(meta.get("latent_scale", 1.0)), cfg=float(meta.get("cfg", 3.0)),
                   token_cfg=float(meta.get("token_cfg", 1.0)), steps=int(meta.get("steps", 20)),
                   sampler=str(meta.get("sampler", "angle")), chunk_seconds=float(meta.get("chunk_seconds", 10.0)),
                   context_seconds=float(meta.get("context_seconds", 2.0)))
