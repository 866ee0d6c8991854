"""`tunesmith train distill`: few-step and fewer-layer students of a latent-diffusion teacher.

Three methods, one task, through the shared engine (``method``):

- ``dmd`` (Presto-S): a student generator G, a fake denoiser trained online on G's samples,
  and a least-squares GAN head on the fake's features (tunesmith.distill.dmd, .gan).  Per
  optimizer step: ``fake_updates`` updates of the fake model (denoising loss on G's samples
  at ``fake_noise`` levels + the critic's loss on noised real and generated latents at
  ``gan_noise`` levels), then one of G (the DMD gradient at ``dmd_noise`` levels against
  the guided teacher + ``gan_weight`` times the generator's GAN loss).
- ``consistency``: consistency distillation against the teacher's guided ODE steps
  (tunesmith.distill.consistency).
- ``layers`` (Presto-L): a student that skips blocks at high noise levels (a budget in
  ``model.skip_sigmas`` / ``skip_blocks``), gains calibrated from the teacher, trained to
  reproduce the teacher's denoised estimates at every noise level.  It samples like the
  teacher (same sampler, with guidance), each step cheaper.

A budget on a ``dmd`` or ``consistency`` student gives Presto-LS.  The few-step students
sample with :func:`tunesmith.diffusion.samplers.sample_pingpong` over ``student_steps``
noise levels (exponential from ``sigma_max`` to ``sigma_min``), and train on exactly those:
a multi-step G sees its own sampler's intermediate states (``generator_inputs =
"backward"``, DMD2's backward simulation) or noised real latents (``"real"``).  Guidance is
folded in: the student runs without a CFG pass (``cfg`` 1 in its directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn

from tunesmith.checkpoint import read_model_config, resolve, save
from tunesmith.conditioning.conditions import drop_conditions
from tunesmith.config import ConfigError, from_dict, register_preset
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.diffusion.generator import LatentDiffusionGenerator
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.objectives import sample_training_sigmas
from tunesmith.diffusion.samplers import get_sigmas
from tunesmith.diffusion.train import SYNTHETIC, DataConfig, DiffusionTask
from tunesmith.diffusion.train import RunConfig as DiffusionRunConfig
from tunesmith.distill.consistency import consistency_distillation_loss, consistency_pairs
from tunesmith.distill.dmd import distribution_matching_loss, fake_score_loss
from tunesmith.distill.gan import FeatureCritic, block_outputs, lsgan_critic_loss, lsgan_generator_loss
from tunesmith.distill.layers import calibrate_gains
from tunesmith.train.engine import TrainConfig, unwrap


@dataclass
class NoiseLevels:
    """A distribution of noise levels sigma (tunesmith.diffusion.objectives.sample_training_sigmas), clamped."""

    distribution: Literal["uniform", "logit_normal", "log_normal"] = "log_normal"
    mean: float = -1.2
    std: float = 1.2
    sigma_min: float = 0.01
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max or self.std <= 0:
            raise ValueError(f"noise levels need 0 < sigma_min < sigma_max and std > 0, got {self}")

    def draw(self, n: int, device: torch.device) -> torch.Tensor:
        sigma = sample_training_sigmas(n, self.distribution, mean=self.mean, std=self.std)
        return sigma.clamp(self.sigma_min, self.sigma_max).to(device)


@dataclass
class DistillConfig:
    method: Literal["dmd", "consistency", "layers"] = "dmd"
    teacher_cfg: float = 0.0  # guidance folded into the student; 0: the teacher's own shipped scale
    # the student's sampler (dmd, consistency): its noise levels are get_sigmas(schedule, student_steps, ...)
    student_steps: int = 4
    schedule: Literal["exponential", "karras", "cosine"] = "exponential"
    sigma_min: float = 0.5
    sigma_max: float = 80.0
    generator_inputs: Literal["backward", "real"] = "backward"
    # dmd: which noise levels each loss sees (Presto-S's point: it matters)
    dmd_noise: NoiseLevels = field(default_factory=lambda: NoiseLevels("log_normal", 0.5, 1.2))
    fake_noise: NoiseLevels = field(default_factory=lambda: NoiseLevels("log_normal", -0.4, 1.4))
    gan_noise: NoiseLevels = field(default_factory=lambda: NoiseLevels("log_normal", -0.4, 1.0))
    fake_updates: int = 2  # fake-score updates per generator update (DMD2: 5)
    fake_lr_scale: float = 1.0
    gan_weight: float = 0.05  # of the generator's GAN loss against the per-element DMD loss; 0 disables the GAN head
    gan_blocks: tuple[int, ...] = ()  # DiT blocks the critic reads; () = the middle and the last
    # consistency
    consistency_levels: int = 40
    huber_c: float = 0.03
    # layers: noise levels of the output-matching loss
    layers_noise: NoiseLevels = field(default_factory=lambda: NoiseLevels("log_normal", 0.0, 1.5))
    calibration_items: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.student_steps <= 16:
            raise ValueError(f"student_steps must be in [1, 16], got {self.student_steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.fake_updates < 1 or self.gan_weight < 0 or self.teacher_cfg < 0 or self.consistency_levels < 2:
            raise ValueError("fake_updates >= 1, gan_weight >= 0, teacher_cfg >= 0 and consistency_levels >= 2")


@dataclass
class RunConfig(DiffusionRunConfig):
    teacher: str = "tunesmith-small-dit"  # a latent-diffusion generator (or DiT) directory or bundled name
    distill: DistillConfig = field(default_factory=DistillConfig)


# ---------------------------------------------------------------------------
# presets


@register_preset("run/distill", "tiny")
def _tiny() -> RunConfig:
    """Synthetic latents and a tiny teacher (set ``teacher`` to its directory): for tests."""
    return RunConfig(
        model=DiTConfig(latent_dim=4, width=64, depth=4, heads=2, text_dim=16, fourier_dim=32, max_seconds=4.0),
        data=DataConfig(segment_frames=16, synthetic_items=64, synthetic_text_tokens=3, mask_probability=0.0),
        train=TrainConfig(steps=6, batch_size=4, lr=1e-4, warmup_steps=0, log_every=2, checkpoint_every=3,
                          checkpoint_minutes=0, progress=False, grad_clip=1.0, weight_decay=0.0),
        teacher="",
        distill=DistillConfig(student_steps=2, fake_updates=2, gan_weight=0.1, calibration_items=4),
    )


@register_preset("run/distill", "small")
def _small() -> RunConfig:
    """The bundled DiT's 4-step Presto-S student on the corpus's cached latents (10-s windows)."""
    return RunConfig(
        data=DataConfig(cache_dir="/work/data/cache/vae-24k-v3", segment_frames=160, mask_probability=0.0,
                        caption_resample=0.5),
        train=TrainConfig(steps=3000, batch_size=4, lr=5e-5, warmup_steps=20, schedule="constant", weight_decay=0.0,
                          betas=(0.0, 0.99), ema_decay=0.99, grad_clip=1.0, log_every=5, checkpoint_every=0,
                          checkpoint_minutes=4.0),
        # one fake update per student update (DMD2 uses 5): what 2 CPU cores allow; the GAN term steadies it
        distill=DistillConfig(fake_updates=1),
    )


# ---------------------------------------------------------------------------
# the task


class FakeScore(nn.Module):
    """The fake denoiser's network (a DiT, initialised from the teacher) with the GAN critic
    on its block outputs: ``forward(x, noise_level, critic=True, ...)`` returns the critic's
    scores instead of the network's output, so both paths go through this module (DDP)."""

    def __init__(self, dit: DiT, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.dit, self.config = dit, dit.config
        self.blocks = blocks or (dit.config.depth // 2, dit.config.depth - 1)
        self.critic = FeatureCritic(dit.config.width, self.blocks)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, *, critic: bool = False, **cond: Any) -> torch.Tensor:
        if not critic:
            return self.dit(x, noise_level, **cond)
        with block_outputs(self.dit, self.blocks) as features:
            self.dit(x, noise_level, **cond)
        return self.critic(features)


def teacher_settings(teacher: str) -> tuple[Path, DiTConfig, dict[str, Any]]:
    """(directory, DiT config, generator entries) of a teacher named by path or bundled name."""
    directory = resolve(teacher)
    meta = read_model_config(directory)
    if meta.get("model_type") != "dit":
        raise ConfigError(f"the teacher {teacher} is a {meta.get('model_type')}, not a latent-diffusion DiT")
    return directory, from_dict(DiTConfig, meta["config"]), meta


class DistillTask(DiffusionTask):
    """Student ("student"), and for dmd the fake denoiser with its critic ("fake")."""

    def __init__(self, config: RunConfig) -> None:
        if not config.teacher:
            raise ConfigError("distillation needs a teacher: set teacher=NAME_OR_PATH (tunesmith train distill --teacher ...)")
        directory, teacher_config, meta = teacher_settings(config.teacher)
        # the student is the teacher's architecture (plus any layer budget), starting from its weights
        budget = {"skip_sigmas": tuple(config.model.skip_sigmas), "skip_blocks": tuple(config.model.skip_blocks)}
        config.model = DiTConfig(**{**teacher_config.__dict__, **budget})
        config.init_from = str(directory)
        if config.data.cache_dir != SYNTHETIC:
            config.data.text_encoder = meta.get("text_encoder", config.data.text_encoder)
            config.data.latent_scale = float(meta.get("latent_scale", config.data.latent_scale))
        super().__init__(config)
        d = config.distill
        self.distill = d
        self.teacher = DiT(teacher_config)
        from tunesmith.checkpoint import init_from

        init_from(self.teacher, directory)
        self.teacher.requires_grad_(False).eval()
        self.teacher_cfg = d.teacher_cfg or float(meta.get("cfg", 4.0))
        self.fake: FakeScore | None = None
        if d.method == "dmd":
            fake = DiT(teacher_config)
            fake.load_state_dict(self.teacher.state_dict())
            self.fake = FakeScore(fake, tuple(d.gan_blocks))
        self.lr_scale = {"fake": d.fake_lr_scale}
        self.student_sigmas = get_sigmas(d.schedule, d.student_steps, d.sigma_min, d.sigma_max)
        levels = get_sigmas("exponential", d.consistency_levels - 1, d.sigma_min / 10, d.sigma_max)
        self.consistency_levels = levels.flip(0)[1:]  # increasing, without the appended 0
        if self.model.layer_skip is not None and "layer_skip.gains" in self.new_parameters:
            self.calibrate()  # a new budget (a resumed run then loads its trained gains over these)

    def calibrate(self) -> None:
        """The layer budget's gains from the teacher's statistics on a few training windows (seeded)."""
        import numpy as np

        n = min(self.distill.calibration_items, len(self.train_dataset))
        items = [self.train_dataset.get_item(i, np.random.default_rng(i)) for i in range(n)]  # type: ignore[attr-defined]
        batch = self.collate(items)
        cond = self.conditioning(batch, torch.device("cpu")).model_inputs()
        calibrate_gains(self.model, self.teacher, batch["latents"], generator=torch.Generator().manual_seed(0), **cond)

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.model} if self.fake is None else {"fake": self.fake, "student": self.model}

    # -- pieces ------------------------------------------------------------

    def _denoiser(self, net: nn.Module) -> Denoiser:
        return Denoiser(net, self.config.model.parameterization, self.config.model.sigma_data)

    def _teacher(self, device: torch.device, cond: dict[str, Any], uncond: dict[str, Any] | None) -> Any:
        self.teacher.to(device)
        return cfg_denoiser(self._denoiser(self.teacher), cond, uncond, self.teacher_cfg)

    def student_sample(self, student: nn.Module, x_real: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """G's output x0 at one of its own noise levels: from pure noise through its earlier steps
        (backward simulation, no gradient) or from noised real latents; with gradient when enabled."""
        sigmas = self.student_sigmas.to(x_real.device)
        k = int(torch.randint(0, len(sigmas) - 1, ()))
        den = self._denoiser(student)
        noise = torch.randn_like(x_real)
        if self.distill.generator_inputs == "real" and k > 0:
            x = x_real + sigmas[k] * noise
        else:
            x = noise * sigmas[0]
            with torch.no_grad():
                for i in range(k):
                    x = self._denoiser(unwrap(student))(x, sigmas[i], **cond) + sigmas[i + 1] * torch.randn_like(x)
        return den(x, sigmas[k], **cond)

    def _critic(self, fake: nn.Module, x0: torch.Tensor, levels: Any, cond: dict[str, Any]) -> torch.Tensor:
        sigma = levels.draw(x0.shape[0], x0.device)
        x_in, noise_level = self._denoiser(unwrap(fake)).network_inputs(x0 + sigma.view(-1, 1, 1) * torch.randn_like(x0), sigma)
        return fake(x_in, noise_level, critic=True, **cond)

    # -- training steps ----------------------------------------------------

    def training_step(self, modules: dict[str, nn.Module], batch: dict[str, Any], step: int) -> Any:
        x_real = batch["latents"]
        cond = self.conditioning(batch, x_real.device)
        method = self.distill.method
        if method == "dmd":
            return self._dmd_step(modules, x_real, cond.model_inputs(), cond.null().model_inputs())
        if method == "consistency":
            return self._consistency_step(modules["student"], x_real, cond.model_inputs(), cond.null().model_inputs())
        return self._layers_step(modules["student"], x_real, cond)

    def _dmd_step(self, modules: dict[str, nn.Module], x_real: torch.Tensor, cond: dict[str, Any],
                  uncond: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor, dict[str, float]]]:
        d, student, fake = self.distill, modules["student"], modules["fake"]
        b = x_real.shape[0]
        with torch.no_grad():
            generated = self.student_sample(unwrap(student), x_real, cond)
        for _ in range(d.fake_updates):
            sigma = d.fake_noise.draw(b, x_real.device)
            loss = fake_score_loss(self._denoiser(fake), generated, torch.randn_like(generated), sigma, **cond)
            metrics = {"fake_dsm": float(loss.detach())}
            if d.gan_weight > 0:
                real_score = self._critic(fake, x_real, d.gan_noise, cond)
                fake_score = self._critic(fake, generated, d.gan_noise, cond)
                critic = lsgan_critic_loss(real_score, fake_score)
                loss = loss + critic
                metrics.update(critic=float(critic.detach()), score_real=float(real_score.detach().mean()),
                               score_fake=float(fake_score.detach().mean()))
            yield "fake", loss, metrics
        x0 = self.student_sample(student, x_real, cond)
        sigma = d.dmd_noise.draw(b, x_real.device)
        teacher = self._teacher(x_real.device, cond, uncond)
        fake_den = self._denoiser(unwrap(fake))
        # per element (DMD2's reduction), so that gan_weight means the same at any latent size
        dmd = distribution_matching_loss(x0, torch.randn_like(x0), sigma, teacher, lambda x, s: fake_den(x, s, **cond))
        dmd = dmd / x0[0].numel()
        loss, metrics = dmd, {"dmd": float(dmd.detach())}
        if d.gan_weight > 0:
            gan = lsgan_generator_loss(self._critic(fake, x0, d.gan_noise, cond))
            loss = loss + d.gan_weight * gan
            metrics["gan"] = float(gan.detach())
        yield "student", loss, metrics

    def _consistency_step(self, student: nn.Module, x_real: torch.Tensor, cond: dict[str, Any],
                          uncond: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        d = self.distill
        sigma_hi, sigma_lo = consistency_pairs(self.consistency_levels, x_real.shape[0])
        sigma_hi, sigma_lo = sigma_hi.to(x_real.device), sigma_lo.to(x_real.device)
        den = self._denoiser(student)
        loss = consistency_distillation_loss(lambda x, s: den(x, s, **cond), self._teacher(x_real.device, cond, uncond),
                                             x_real, torch.randn_like(x_real), sigma_hi, sigma_lo, huber_c=d.huber_c)
        return loss, {"sigma_hi_median": float(sigma_hi.median())}

    def _layers_step(self, student: nn.Module, x_real: torch.Tensor, cond: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The teacher's denoised estimate, conditional or (dropped) unconditional as CFG will ask."""
        inputs = drop_conditions(cond, self.config.dropout).model_inputs()
        sigma = self.distill.layers_noise.draw(x_real.shape[0], x_real.device)
        x_t = x_real + sigma.view(-1, 1, 1) * torch.randn_like(x_real)
        self.teacher.to(x_real.device)
        with torch.no_grad():
            target = self._denoiser(self.teacher)(x_t, sigma, **inputs)
        # EDM's weight lambda = (sigma^2 + 1) / sigma^2: equal say for every noise level
        weight = ((sigma**2 + 1) / sigma**2).view(-1, 1, 1)
        loss = (weight * (self._denoiser(student)(x_t, sigma, **inputs) - target).pow(2)).mean()
        return loss, {"sigma_median": float(sigma.median())}


def make_task(config: RunConfig) -> DistillTask:
    return DistillTask(config)


def student_sampling(config: RunConfig) -> dict[str, Any]:
    """The sampler settings written into the student's directory (its defaults at generation)."""
    d = config.distill
    if d.method == "layers":
        return {}
    return {"sampler": "pingpong", "steps": d.student_steps, "schedule": d.schedule, "sigma_min": d.sigma_min,
            "sigma_max": d.sigma_max}


def export(trainer: Any, config: RunConfig, out_dir: Path) -> Path:
    """The student as a generator directory: the teacher's VAE and text encoder, its own sampler
    settings, and no CFG pass (a few-step student has guidance folded in)."""
    student = DiT(config.model)
    student.load_state_dict(trainer.ema_state_dict("student"))
    directory, _, meta = teacher_settings(config.teacher)
    training = {"method": config.distill.method, "teacher": config.teacher, "step": trainer.step,
                "run_dir": str(trainer.out_dir)}
    has_codec = bool(meta.get("codec")) or (directory / "codec").is_dir()
    if meta.get("generator_type") != LatentDiffusionGenerator.generator_type or not has_codec:
        return save(student, out_dir, extra={"distilled": training})  # a bare DiT teacher: a bare student
    from tunesmith.checkpoint import bundled_models
    from tunesmith.generator import load_generator

    teacher = load_generator(directory)
    cfg = teacher.cfg if config.distill.method == "layers" else 1.0
    generator = LatentDiffusionGenerator(student, teacher.codec, text_encoder_name=meta.get("text_encoder", "minilm"),
                                         latent_scale=float(meta.get("latent_scale", 1.0)), cfg=cfg,
                                         sampling=student_sampling(config))
    codec = meta.get("codec")
    bundled = codec in bundled_models()
    return generator.save(out_dir, codec_name=codec if bundled else None, fp16=bundled, extra={"distilled": training})
