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

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from tunesmith.audio import AUDIO_SUFFIXES, Audio, load_audio
from tunesmith.conditioning.conditions import Conditioning, from_prompts
from tunesmith.conditioning.melody import melody_chroma
from tunesmith.control.ditto import FEATURE_RATE, ControlLoss, rendered_seconds
from tunesmith.control.features import loudness_curve
from tunesmith.control.optimize import optimize_noise
from tunesmith.diffusion.denoiser import CountingDenoiser, Denoiser
from tunesmith.diffusion.dit import DiT
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.inpaint import bridge_seams, keep_known, sample_repaint, splice_kept, strength_to_sigma
from tunesmith.diffusion.samplers import StepCallback, get_sigmas, sample
from tunesmith.generator import Control, Generator, check_request, check_seeds, frames_for


class LatentCodec(Protocol):
    """What the generator needs from a VAE (tunesmith.codec's VAE has it)."""

    sample_rate: int
    frame_rate: float
    latent_dim: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...  # (B, C, T) -> (B, D, F)

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...  # (B, D, F) -> (B, C, T)


@dataclass
class LatentResult:
    latents: torch.Tensor  # (B, D, F), in the codec's units
    nfe: int


def default_of(function: Any, parameter: str) -> Any:
    """A keyword's default, read from the signature (one place states it)."""
    return inspect.signature(function).parameters[parameter].default


SEAM_FADE_SECONDS = 0.02  # crossfade from the user's kept audio into generated audio
SEAM_BRIDGE_FRAMES = 6  # regenerated latent frames over which a seam's offset fades out (240 ms at 25/s)


def reference_targets(targets: dict[str, Any], duration: float) -> dict[str, Any]:
    """Controls given by example, as the feature the loss compares: a melody (recording or MIDI)
    as its one-hot chroma, an intensity given as a recording as its loudness curve."""
    frames = int(duration * FEATURE_RATE)
    out = dict(targets)
    if "melody" in out:
        out["melody"] = melody_chroma(out["melody"], FEATURE_RATE, frames)
    intensity = out.get("intensity")
    if isinstance(intensity, Audio) or (isinstance(intensity, (str, Path))
                                        and Path(intensity).suffix.lower() in AUDIO_SUFFIXES):
        ref = intensity if isinstance(intensity, Audio) else load_audio(intensity, channels=1, max_seconds=duration + 1)
        # smoothed as DITTO smooths its targets: the level's shape, not every transient
        out["intensity"] = loudness_curve(ref.samples, ref.sample_rate, FEATURE_RATE, smooth_seconds=0.5)[0, :frames]
    return out


class LatentDiffusionGenerator(Generator):
    """Text (+ reference audio) -> latents by a sampler over the DiT -> audio by the VAE."""

    generator_type = "latent-diffusion"
    CONTROLS = {"steps": Control(int, 1, 1000), "sampler": Control(str), "schedule": Control(str),
                "sigma_min": Control((int, float), 1e-6, 1e4), "sigma_max": Control((int, float), 1e-6, 1e4),
                "cfg": Control((int, float), 0, 100), "cfg_rescale": Control((int, float), 0, 1),
                "cfg_interval": Control((tuple, list)), "strength": Control((int, float), 0, 1),
                "repaint_resample": Control(int, 1, 100), "init_audio": Control((Audio, str, Path)),
                "mask": Control((list, tuple, torch.Tensor)), "unconditional": Control(bool),
                # noise optimisation (DITTO): targets, and how hard to optimise towards them
                "intensity": Control((str, Audio, Path)), "structure": Control(str),
                "loop": Control((int, float), 0.05, 600), "melody": Control((Audio, str, Path)), "clap": Control(str),
                "control_iterations": Control(int, 1, 1000), "control_lr": Control((int, float), 1e-4, 10),
                "control_steps": Control(int, 1, 100), "control_weights": Control(dict),
                "control_surrogate": Control(str)}
    NOISE_CONTROLS = ("intensity", "structure", "loop", "melody", "clap")

    def __init__(self, model: DiT, codec: LatentCodec, text_encoder: Any = None, *, text_encoder_name: str = "minilm",
                 latent_scale: float = 1.0, cfg: float = 4.0, sampling: dict[str, Any] | None = None) -> None:
        if codec.latent_dim != model.config.latent_dim:
            raise ValueError(f"the VAE has {codec.latent_dim} latent channels, the DiT expects {model.config.latent_dim}")
        super().__init__(model, codec, max_duration=float(model.config.max_seconds), cfg=cfg)
        self.model, self.latent_scale = self.network, latent_scale
        self._text_encoder, self.text_encoder_name = text_encoder, text_encoder_name
        self.frame_rate = float(codec.frame_rate)
        # The model's own sampler settings (a distilled student's steps, sampler and noise levels),
        # used where a request does not set them; checked like any control.
        self.sampler_defaults = dict(sampling or {})
        self.check_controls(self.sampler_defaults)

    @property
    def text_encoder(self) -> Any:
        if self._text_encoder is None:
            from tunesmith.conditioning.encoders import get_text_encoder

            self._text_encoder = get_text_encoder(self.text_encoder_name)
        return self._text_encoder

    def num_frames(self, duration: float) -> int:
        """Latent frames generated for ``duration`` seconds."""
        return frames_for(duration, self.frame_rate, minimum=2)

    # -- audio <-> latents ---------------------------------------------------

    def encode_audio(self, audio: Audio | str | Path, frames: int | None = None) -> torch.Tensor:
        """Reference audio -> model-scaled latents (1, D, F), optionally cut to ``frames``."""
        return self.encode_wav(self.reference_audio(audio, "init_audio"), frames)

    def encode_wav(self, wav: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """(1, C, T) audio at the codec's rate and channels -> model-scaled latents (1, D, F)."""
        with torch.inference_mode():
            latents = self.codec.encode(wav.to(self.device)).float() * self.latent_scale
        if frames is not None:
            latents = latents[..., :frames]
        return latents

    def decode_latents(self, latents: torch.Tensor, duration: float) -> Audio:
        """Model-scaled latents -> audio: the scale undone first (latents / latent_scale are the VAE's)."""
        return self.decode(latents / self.latent_scale, duration)

    # -- sampling --------------------------------------------------------------

    def conditioning(self, prompts: Sequence[str], duration: float,
                     seed: int | list[int] = 0) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) of the DiT: the prompts' conditioning as this model takes it (text,
        timing, and the tempo clock and key when it has those inputs; ``seed`` draws the tempo
        of a prompt with tempo words and no number), and its null."""
        c = self.model.config
        cond = from_prompts(list(prompts), self.text_encoder, num_frames=self.num_frames(duration),
                            frame_rate=self.frame_rate, beat_clock=c.beat_clock, key_input=c.key_input,
                            duration=duration, seed=seed).to(self.device)
        return cond, cond.null()

    def initial_noise(self, batch: int, frames: int, seed: int | list[int],
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The unit-scale starting noise (B, D, frames) a seed (or one seed per row) gives."""
        d = self.model.config.latent_dim
        if isinstance(seed, list):
            if len(seed) != batch:
                raise ValueError(f"{len(seed)} seeds for a batch of {batch}")
            return torch.cat([torch.randn(1, d, frames, generator=torch.Generator(device=self.device).manual_seed(s),
                                          device=self.device) for s in seed])
        generator = generator or torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(batch, d, frames, generator=generator, device=self.device)

    def optimized_noise(self, cond: Conditioning, uncond: Conditioning | None, frames: int, seed: int | list[int],
                        duration: float, targets: dict[str, Any], *, cfg: float, iterations: int = 20,
                        lr: float = 0.05, steps: int = 6, weights: dict[str, float] | None = None,
                        surrogate: str | None = None, progress: bool = False, callback: StepCallback | None = None,
                        ) -> tuple[torch.Tensor, ControlLoss, list[float]]:
        """DITTO: the seed's starting noise, optimised (``iterations`` Adam steps through a
        ``steps``-step DDIM sampler, guided, and the VAE) towards the ``targets``.

        DITTO-2 (Novack et al. 2024): with ``surrogate`` (a one-step distilled student of this
        model, by name or path) the optimisation runs through one step of the student instead,
        without a CFG pass; the optimised noise is then sampled by this model as usual.  A one-step
        student used as the model itself optimises through its own step (``steps`` is then moot)."""
        b = cond.batch_size() or 1
        loss = ControlLoss(reference_targets(targets, duration), self.sample_rate, duration, weights)
        if surrogate is None:
            net = self.model
            denoiser = Denoiser(net, net.config.parameterization, net.config.sigma_data)
            guided = cfg_denoiser(denoiser, cond.model_inputs(), None if uncond is None else uncond.model_inputs(), cfg)
        else:
            net = self.surrogate_model(surrogate)
            denoiser = Denoiser(net, net.config.parameterization, net.config.sigma_data)
            guided = cfg_denoiser(denoiser, cond.model_inputs(), None, 1.0)
        if surrogate is not None:  # one student step from pure noise
            sigmas = torch.tensor([80.0, 0.0])
        elif int(self.sampler_defaults.get("steps", 0) or 0) == 1:
            # a one-step student as the model: its own map (one denoising from sigma_max) is what it
            # samples with, so the noise is optimised through exactly that
            sigmas = torch.tensor([float(self.sampler_defaults.get("sigma_max", 80.0)), 0.0])
        else:
            sigmas = get_sigmas("exponential", steps, 0.01, 80.0)
        samples = self.num_samples(loss.render_seconds)

        def loss_of(latents: torch.Tensor) -> torch.Tensor:
            return loss(self.codec.decode(latents / self.latent_scale)[..., :samples])

        frozen = [p for p in (*net.parameters(), *self.codec.parameters()) if p.requires_grad]
        for p in frozen:  # gradients for the noise only, none into the weights
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                result = optimize_noise(guided, sigmas, self.initial_noise(b, frames, seed), loss_of, iterations=iterations, lr=lr,
                                        progress=progress,
                                        callback=None if callback is None else lambda i, n, _: callback(i, n))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return result.noise, loss, result.losses

    @torch.no_grad()
    def generate_latents(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        frames: int,
        seed: int | list[int] = 0,
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
        seam_frames: int = SEAM_BRIDGE_FRAMES,
        progress: bool = False,
        callback: StepCallback | None = None,
        noise: torch.Tensor | None = None,
    ) -> LatentResult:
        """Model-scaled latents (B, D, frames).  ``keep_mask`` (B, 1, frames) = 1 where ``init_latents`` is kept;
        the regenerated latents are bridged onto the kept ones over ``seam_frames`` (see bridge_seams).

        ``seed`` as a list gives each row its own initial noise, so row i equals a generation of
        that row alone with seed[i] (with a deterministic sampler: the default, DDIM, Euler and
        Heun without churn); a stochastic sampler's later draws come from seed[0].  ``noise``
        (unit scale) replaces the seed's initial noise (an optimised one, say)."""
        b = cond.batch_size() or 1
        cond_in = cond.model_inputs()
        uncond_in = None if uncond is None else uncond.model_inputs()
        d = self.model.config.latent_dim
        seeds = seed if isinstance(seed, list) else None
        gen = torch.Generator(device=self.device).manual_seed(seeds[0] if seeds else seed)
        if noise is None:
            noise = self.initial_noise(b, frames, seed, gen)
        if keep_mask is not None:
            if init_latents is None:
                raise ValueError("a mask needs the reference audio it applies to (init_audio)")
            keep_mask = keep_mask.to(self.device, torch.float32).expand(b, 1, frames)
            known = init_latents.expand(b, d, frames) * keep_mask
            if self.model.config.inpainting:
                cond_in = {**cond_in, "inpaint_mask": keep_mask, "inpaint_latents": known}
                uncond_in = None if uncond_in is None else {**uncond_in, "inpaint_mask": keep_mask, "inpaint_latents": known}
        denoiser = Denoiser(self.model, self.model.config.parameterization, self.model.config.sigma_data)
        guided = cfg_denoiser(denoiser, cond_in, uncond_in, cfg, rescale=cfg_rescale, interval=cfg_interval)
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
                               generator=gen, progress=progress, callback=callback)
            return LatentResult(bridge_seams(x, keep_mask, seam_frames), counter.nfe)
        if keep_mask is not None:
            guided = keep_known(guided, known, keep_mask)
        out = sample(guided, noise, sigmas, sampler, init=start, generator=gen, progress=progress, callback=callback)
        if keep_mask is None:
            return LatentResult(out.x, out.nfe)
        x = keep_mask * known + (1 - keep_mask) * out.x
        return LatentResult(bridge_seams(x, keep_mask, seam_frames), out.nfe)

    def generate(
        self,
        prompts: str | list[str],
        duration: float,
        seed: int | list[int] = 0,
        *,
        progress: bool = False,
        callback: StepCallback | None = None,
        **controls: Any,
    ) -> Audio:
        """Audio (B, C, T).  Controls: steps, sampler, schedule, sigma_min, sigma_max, cfg,
        cfg_rescale, cfg_interval, strength (audio-to-audio), repaint_resample, and:

        ``init_audio`` (Audio or path): alone and as long as ``duration``, audio-to-audio at
        ``strength``; shorter, the rest is generated (outpainting); with ``mask``, the marked
        regions are regenerated (inpainting): a list of (start, end) seconds, or a bool tensor
        over latent frames or audio samples (True = regenerate); the kept audio is returned as
        given, crossfaded into the new over 20 ms.  ``unconditional`` replaces the prompt by the
        null condition (timing stays), for baselines.

        Noise optimisation (DITTO; see tunesmith.control.ditto): ``intensity`` (points, or a
        recording to follow), ``structure``, ``loop``, ``melody`` (a recording or a MIDI file),
        ``clap`` (a text to sound like); ``control_iterations``, ``control_lr``,
        ``control_steps`` and ``control_weights`` (name -> weight) set how.
        """
        self.check_controls(controls)
        controls = {**self.sampler_defaults, **controls}
        items = check_request(prompts, duration, self.max_duration)
        seed = check_seeds(seed, len(items))
        init_audio, mask = controls.pop("init_audio", None), controls.pop("mask", None)
        unconditional = bool(controls.pop("unconditional", False))
        targets = {name: controls.pop(name) for name in self.NOISE_CONTROLS if name in controls}
        optimisation = {key: controls.pop(name) for key, name in (("iterations", "control_iterations"), ("lr", "control_lr"),
                        ("steps", "control_steps"), ("weights", "control_weights"),
                        ("surrogate", "control_surrogate")) if name in controls}
        render = rendered_seconds(targets, duration)  # a loop: longer by its overlap, folded in after decoding
        if render > self.max_duration + 1e-9:
            raise ValueError(f"a {duration:g} s loop is rendered {render:g} s long (duration + loop), over this "
                             f"model's {self.max_duration:g} s: shorten the duration or the loop")
        frames = self.num_frames(render)
        cond, uncond = self.conditioning(items, render, seed)
        if controls.get("cfg") is None:
            controls["cfg"] = self.cfg
        if unconditional:
            cond, controls = uncond, {**controls, "cfg": 1.0}
        init_latents, keep, reference = None, None, None
        if init_audio is not None:
            reference = self.reference_audio(init_audio, "init_audio")
            init_latents = self.encode_wav(reference, frames)
            have = init_latents.shape[-1]
            if mask is not None or have < frames:
                keep = self.keep_mask(mask, frames, have)
                init_latents = torch.nn.functional.pad(init_latents, (0, frames - have))
        elif mask is not None:
            raise ValueError("a mask needs the reference audio it applies to (init_audio)")
        noise, control_loss, losses = None, None, []
        if targets:
            if init_audio is not None:
                raise ValueError("noise-optimisation controls (intensity, structure, loop, melody, clap) do not combine with init_audio")
            # one count for the whole job: the optimisation's iterations, then the sampler's steps
            iterations = int(optimisation.get("iterations", default_of(self.optimized_noise, "iterations")))
            steps = int(controls.get("steps", default_of(self.generate_latents, "steps")))
            report = callback
            noise, control_loss, losses = self.optimized_noise(
                cond, uncond, frames, seed, duration, targets, cfg=controls["cfg"], progress=progress,
                callback=None if report is None else lambda i, n: report(i, n + steps), **optimisation)
            if report is not None:
                callback = lambda done, total: report(iterations + done, iterations + total)  # noqa: E731
        elif optimisation:
            raise ValueError(f"{', '.join('control_' + k for k in optimisation)} need a target: intensity, structure, loop, melody or clap")
        result = self.generate_latents(cond, uncond, frames, seed, init_latents=init_latents, keep_mask=keep,
                                       progress=progress, callback=callback, noise=noise, **controls)
        audio = self.decode_latents(result.latents, render)
        if keep is not None:  # inpainting / outpainting: what the user kept is their own audio, not a re-decode
            kept = self.kept_samples(mask, audio.samples.shape[-1])
            fade = round(SEAM_FADE_SECONDS * self.sample_rate)
            audio = Audio(splice_kept(audio.samples, reference, kept, fade).clamp(-1.0, 1.0), self.sample_rate)
        if control_loss is not None:
            report = {"optimisation_loss": [round(losses[0], 6), round(losses[-1], 6)], **control_loss.report(audio.samples)}
            audio = Audio(control_loss.loop(audio.samples), self.sample_rate)  # a loop: its tail folded in
            audio.info["control_report"] = report
        return audio

    def surrogate_model(self, name: str) -> DiT:
        """The DiT of a few-step student of this model (DITTO-2's surrogate), loaded once."""
        cache = self.__dict__.setdefault("_surrogates", {})
        if name not in cache:
            from tunesmith.generator import load_generator

            student = load_generator(name, str(self.device))
            if not isinstance(student, LatentDiffusionGenerator) or student.latent_scale != self.latent_scale \
                    or student.text_encoder_name != self.text_encoder_name \
                    or student.model.config.latent_dim != self.model.config.latent_dim:
                raise ValueError(f"control_surrogate '{name}' is not a student of this model (another latent "
                                 "space, latent scale or text encoder)")
            cache[name] = student.model
        return cache[name]

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
            for region in regenerate:
                if not (isinstance(region, (tuple, list)) and len(region) == 2
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in region)):
                    raise ValueError(f"mask regions must be (start, end) pairs of seconds, got {str(region)[:60]}")
                start, end = region
                if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                    raise ValueError(f"mask region ({start}, {end}) must satisfy 0 <= start < end, both finite (seconds)")
                keep[int(start * self.frame_rate) : math.ceil(end * self.frame_rate)] = 0
        return keep[None, None]

    def kept_samples(self, regenerate: Sequence[tuple[float, float]] | torch.Tensor | None, total: int) -> torch.Tensor:
        """(total,) bool, True = the user's sample is kept: the regions exactly as asked, in samples
        (the latent mask of :meth:`keep_mask` covers them in whole frames, so it is wider)."""
        kept = torch.ones(total, dtype=torch.bool)
        if regenerate is None:
            return kept
        if torch.is_tensor(regenerate):
            flags = regenerate.flatten().bool()
            if flags.numel() != total:  # given per latent frame
                per = self.sample_rate / self.frame_rate
                flags = flags[(torch.arange(total) / per).long().clamp(max=flags.numel() - 1)]
            return ~flags
        for start, end in regenerate:  # already checked by keep_mask
            kept[round(start * self.sample_rate) : round(end * self.sample_rate)] = False
        return kept

    def config_entries(self) -> dict[str, Any]:
        entries = {"text_encoder": self.text_encoder_name, "latent_scale": self.latent_scale, "cfg": self.cfg}
        return {**entries, "sampling": self.sampler_defaults} if self.sampler_defaults else entries

    @classmethod
    def from_parts(cls, network: Any, codec: Any, meta: dict[str, Any], device: str) -> "LatentDiffusionGenerator":
        if not isinstance(network, DiT):
            raise ValueError(f"a latent-diffusion generator holds a DiT, found {type(network).__name__}")
        return cls(network, codec, text_encoder_name=meta.get("text_encoder", "minilm"),
                   latent_scale=float(meta.get("latent_scale", 1.0)), cfg=float(meta.get("cfg", 4.0)),
                   sampling=meta.get("sampling"))
