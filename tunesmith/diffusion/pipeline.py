"""Latent diffusion as a :class:`tunesmith.generator.Generator`: text -> DiT + sampler -> VAE -> audio.

A generator directory is the DiT's model directory (``config.json`` with
``generator_type: "latent-diffusion"``, the text encoder's name and the latent
scale) with the VAE's model directory inside it as ``codec/``.

Modes of :meth:`LatentDiffusionGenerator.generate`:
- text to audio (any duration up to the model's ``max_seconds``, by timing conditioning);
- ``init_audio`` alone, as long as ``duration``: audio-to-audio at ``strength``;
- ``init_audio`` with a ``mask`` (regions to regenerate), or shorter than ``duration``
  (outpainting: everything after it is generated): inpainting, through the model's
  mask channels when it has them, else RePaint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from tunesmith.audio import Audio, load_audio, resample, to_channels
from tunesmith.checkpoint import bundled_models, load_model, read_model_config, save
from tunesmith.conditioning.beat import prompt_clocks
from tunesmith.conditioning.key import prompt_keys
from tunesmith.diffusion.denoiser import CountingDenoiser, Denoiser
from tunesmith.diffusion.dit import DiT
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.inpaint import keep_known, sample_repaint, strength_to_sigma
from tunesmith.diffusion.samplers import get_sigmas, sample
from tunesmith.diffusion.train import GENERATOR_TYPE
from tunesmith.generator import check_request, register_generator

CODEC_DIR = "codec"


class LatentCodec(Protocol):
    """What the pipeline needs from a VAE (tunesmith.codec's VAE has it)."""

    sample_rate: int
    frame_rate: float
    latent_dim: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...  # (B, C, T) -> (B, D, F)

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...  # (B, D, F) -> (B, C, T)


@dataclass
class LatentResult:
    latents: torch.Tensor  # (B, D, F), in the codec's units
    nfe: int


class LatentDiffusionGenerator:
    """Text (+ reference audio) -> latents by a sampler over the DiT -> audio by the VAE."""

    generator_type = GENERATOR_TYPE

    def __init__(self, model: DiT, codec: LatentCodec, text_encoder: Any = None, *, text_encoder_name: str = "minilm",
                 latent_scale: float = 1.0, cfg: float = 4.0) -> None:
        if codec.latent_dim != model.config.latent_dim:
            raise ValueError(f"the VAE has {codec.latent_dim} latent channels, the DiT expects {model.config.latent_dim}")
        self.model, self.codec, self.latent_scale = model.eval(), codec, latent_scale
        self._text_encoder, self.text_encoder_name = text_encoder, text_encoder_name
        self.sample_rate = int(codec.sample_rate)
        self.frame_rate = float(codec.frame_rate)
        self.max_duration = float(model.config.max_seconds)
        self.cfg = float(cfg)  # the guidance scale when a call gives none: each model stores its own

    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None:
            from tunesmith.conditioning.text import get_text_encoder

            self._text_encoder = get_text_encoder(self.text_encoder_name)
        return self._text_encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_frames(self, duration: float) -> int:
        """Latent frames generated for ``duration`` seconds."""
        return max(2, math.ceil(duration * self.frame_rate))

    # -- audio <-> latents ---------------------------------------------------

    def encode_audio(self, audio: Audio | str | Path, frames: int | None = None) -> torch.Tensor:
        """Reference audio -> model-scaled latents (1, D, F), optionally cut/padded to ``frames``."""
        if isinstance(audio, (str, Path)):
            audio = load_audio(audio)
        if not isinstance(audio, Audio):
            raise TypeError(f"init_audio must be an Audio or a path, got {type(audio).__name__}")
        wav = audio.samples if audio.samples.dim() == 3 else audio.samples[None]
        wav = resample(wav, audio.sample_rate, self.sample_rate)
        wav = to_channels(wav, int(getattr(self.codec, "channels", wav.shape[1])))
        with torch.inference_mode():
            latents = self.codec.encode(wav.to(self.device)).float() * self.latent_scale
        if frames is not None:
            latents = latents[..., :frames]
        return latents

    def decode_latents(self, latents: torch.Tensor, num_samples: int) -> torch.Tensor:
        with torch.inference_mode():
            decode = getattr(self.codec, "decode_long", self.codec.decode)
            wav = decode(latents / self.latent_scale).float().cpu()
        wav = torch.nn.functional.pad(wav, (0, max(0, num_samples - wav.shape[-1])))[..., :num_samples]
        return wav.clamp(-1.0, 1.0)

    # -- sampling --------------------------------------------------------------

    def conditioning(self, prompts: Sequence[str], duration: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """(cond, uncond) inputs of the DiT: text tokens (dropped for uncond), timing and, for a
        model with a beat clock, the clock of the tempo each prompt names, and for one with a key
        input, the key each prompt names (both dropped for uncond)."""
        text, mask = self.text_encoder.encode(list(prompts))
        text, mask = text.to(self.device), mask.to(self.device)
        b = text.shape[0]
        timing = {
            "seconds_start": torch.zeros(b, device=self.device),
            "seconds_total": torch.full((b,), float(duration), device=self.device),
        }
        cond = {"text": text, "text_mask": mask, **timing}
        uncond = {"text": text, "text_mask": torch.zeros_like(mask), **timing}
        if self.model.config.beat_clock:
            clocks = prompt_clocks(list(prompts), self.num_frames(duration), self.frame_rate)
            cond["beat"], uncond["beat"] = clocks.to(self.device), torch.zeros_like(clocks).to(self.device)
        if self.model.config.key_input:
            keys = prompt_keys(list(prompts))
            cond["key"], uncond["key"] = keys.to(self.device), torch.zeros_like(keys).to(self.device)
        return cond, uncond

    @torch.no_grad()
    def generate_latents(
        self,
        cond: dict[str, Any],
        uncond: dict[str, Any] | None,
        frames: int,
        seed: int = 0,
        *,
        steps: int = 12,
        sampler: str = "dpmpp-2m",
        schedule: str = "exponential",
        sigma_min: float = 0.01,
        sigma_max: float = 80.0,
        cfg: float = 4.0,
        cfg_rescale: float = 0.0,
        cfg_interval: tuple[float, float] | None = None,
        init_latents: torch.Tensor | None = None,
        strength: float = 0.7,
        keep_mask: torch.Tensor | None = None,
        repaint_resample: int = 4,
        progress: bool = False,
    ) -> LatentResult:
        """Model-scaled latents (B, D, frames).  ``keep_mask`` (B, 1, frames) = 1 where ``init_latents`` is kept."""
        b = next(v for v in cond.values() if torch.is_tensor(v)).shape[0]
        d = self.model.config.latent_dim
        gen = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(b, d, frames, generator=gen, device=self.device)
        if keep_mask is not None:
            if init_latents is None:
                raise ValueError("a mask needs the reference audio it applies to (init_audio)")
            keep_mask = keep_mask.to(self.device, torch.float32).expand(b, 1, frames)
            known = init_latents.expand(b, d, frames) * keep_mask
            if self.model.config.inpainting:
                cond = {**cond, "inpaint_mask": keep_mask, "inpaint_latents": known}
                uncond = None if uncond is None else {**uncond, "inpaint_mask": keep_mask, "inpaint_latents": known}
        denoiser = Denoiser(self.model, self.model.config.parameterization, self.model.config.sigma_data)
        guided = cfg_denoiser(denoiser, cond, uncond, cfg, rescale=cfg_rescale, interval=cfg_interval)
        start = None
        if keep_mask is None and init_latents is not None:  # audio-to-audio
            sigma_max = strength_to_sigma(strength, sigma_max)
            start = init_latents.expand(b, d, frames)
            if sigma_max <= sigma_min:
                raise ValueError(f"strength {strength} is too low: nothing would change")
        sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max)
        if keep_mask is not None and not self.model.config.inpainting:
            counter = CountingDenoiser(guided)
            x = sample_repaint(counter, noise * sigmas[0], sigmas, known, keep_mask, resample=repaint_resample,
                               generator=gen, progress=progress)
            return LatentResult(x, counter.nfe)
        if keep_mask is not None:
            guided = keep_known(guided, known, keep_mask)
        out = sample(guided, noise, sigmas, sampler, init=start, generator=gen, progress=progress)
        x = out.x if keep_mask is None else keep_mask * known + (1 - keep_mask) * out.x
        return LatentResult(x, out.nfe)

    def generate(
        self,
        prompts: str | list[str],
        duration: float,
        seed: int = 0,
        *,
        progress: bool = False,
        init_audio: Audio | str | Path | None = None,
        mask: Sequence[tuple[float, float]] | torch.Tensor | None = None,
        unconditional: bool = False,
        **controls: Any,
    ) -> Audio:
        """Audio (B, C, T).  ``controls``: steps, sampler, schedule, sigma_min, sigma_max, cfg,
        cfg_rescale, cfg_interval, strength (audio-to-audio), repaint_resample.

        ``mask`` marks what to regenerate in ``init_audio``: a list of (start, end) seconds, or a
        bool tensor over latent frames or audio samples (True = regenerate).
        ``unconditional`` replaces the prompt by the null condition (timing stays), for baselines.
        """
        known = {"steps", "sampler", "schedule", "sigma_min", "sigma_max", "cfg", "cfg_rescale", "cfg_interval",
                 "strength", "repaint_resample"}
        unknown = set(controls) - known
        if unknown:
            raise ValueError(f"unknown controls for latent diffusion: {', '.join(sorted(unknown))}")
        items = check_request(prompts, duration, self.max_duration)
        frames = self.num_frames(duration)
        cond, uncond = self.conditioning(items, duration)
        controls.setdefault("cfg", self.cfg)
        if unconditional:
            cond, controls = uncond, {**controls, "cfg": 1.0}
        init_latents, keep = None, None
        if init_audio is not None:
            init_latents = self.encode_audio(init_audio, frames)
            have = init_latents.shape[-1]
            if mask is not None or have < frames:
                keep = self.keep_mask(mask, frames, have)
                init_latents = torch.nn.functional.pad(init_latents, (0, frames - have))
        elif mask is not None:
            raise ValueError("a mask needs the reference audio it applies to (init_audio)")
        result = self.generate_latents(cond, uncond, frames, seed, init_latents=init_latents, keep_mask=keep,
                                       progress=progress, **controls)
        return Audio(self.decode_latents(result.latents, round(duration * self.sample_rate)), self.sample_rate)

    def keep_mask(self, regenerate: Sequence[tuple[float, float]] | torch.Tensor | None, frames: int, have: int) -> torch.Tensor:
        """(1, 1, frames) float mask, 1 = keep: frames the reference covers and the user did not mark."""
        keep = torch.zeros(frames)
        keep[:have] = 1
        if regenerate is None:
            return keep[None, None]
        if torch.is_tensor(regenerate):
            flags = regenerate.flatten().bool()
            if flags.numel() != frames:  # given per audio sample: a frame is regenerated if any of its samples is
                per = self.sample_rate / self.frame_rate
                idx = (torch.arange(flags.numel()) / per).long().clamp(max=frames - 1)
                flags = torch.zeros(frames).index_add_(0, idx, flags.float()) > 0
            keep[flags] = 0
        else:
            for start, end in regenerate:
                if not (0 <= start < end):
                    raise ValueError(f"mask region ({start}, {end}) must satisfy 0 <= start < end (seconds)")
                keep[int(start * self.frame_rate) : math.ceil(end * self.frame_rate)] = 0
        return keep[None, None]

    def save(self, directory: str | Path, *, codec_name: str | None = None, fp16: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the generator directory: the DiT, and the VAE under ``codec/`` unless
        ``codec_name`` names the bundled VAE it uses.  ``fp16`` halves the DiT's bytes on
        disk (it loads as fp32); ``extra`` adds entries to config.json."""
        if codec_name is not None and codec_name not in bundled_models():
            raise ValueError(f"codec_name '{codec_name}' is not a bundled model (bundled: {', '.join(bundled_models())})")
        meta: dict[str, Any] = {**(extra or {}), "generator_type": GENERATOR_TYPE, "text_encoder": self.text_encoder_name,
                                "latent_scale": self.latent_scale, "storage": "fp16" if fp16 else "fp32", "cfg": self.cfg}
        model = self.model
        if fp16:  # a half copy: the live model stays fp32
            model = DiT(self.model.config)
            model.load_state_dict(self.model.state_dict())
            model = model.half()
        if codec_name is not None:
            meta["codec"] = codec_name
        directory = save(model, directory, extra=meta)
        if codec_name is None:
            save(self.codec, Path(directory) / CODEC_DIR)  # type: ignore[arg-type]
        return directory


@register_generator(GENERATOR_TYPE)
def load_latent_diffusion(directory: Path, device: str = "cpu") -> LatentDiffusionGenerator:
    meta = read_model_config(directory)
    model = load_model(directory, map_location=device)
    if not isinstance(model, DiT):
        raise ValueError(f"{directory}: expected a DiT, found {type(model).__name__}")
    model = model.float()  # fp16 on disk, fp32 to run
    codec_dir = Path(directory) / CODEC_DIR
    if not meta.get("codec") and not codec_dir.is_dir():
        raise FileNotFoundError(f"{directory} has no VAE under {CODEC_DIR}/ and names no bundled one")
    codec = load_model(meta.get("codec") or codec_dir, map_location=device)
    return LatentDiffusionGenerator(model, codec, text_encoder_name=meta.get("text_encoder", "minilm"),  # type: ignore[arg-type]
                                    latent_scale=float(meta.get("latent_scale", 1.0)), cfg=float(meta.get("cfg", 4.0)))
