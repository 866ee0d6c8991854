"""Presto! distillation beyond the DMD loss (tests/test_distill_dmd.py): the students' few-step
sampler on an analytic consistency function, consistency distillation converging to the exact
ODE map of a Gaussian, Presto-L's variance-preserving layer skipping, the GAN head, and the
distillation task through the engine: a killed run resumes to the same weights, and the
exported student is a generator with its own sampler settings and no CFG pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tunesmith.checkpoint import load_tensors, save
from tunesmith.config import preset
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.diffusion.layerskip import LayerSkip, skipped_blocks
from tunesmith.diffusion.samplers import get_sigmas, sample
from tunesmith.distill.consistency import consistency_distillation_loss, consistency_pairs, teacher_ode_step
from tunesmith.distill.gan import FeatureCritic, block_outputs, lsgan_critic_loss, lsgan_generator_loss
from tunesmith.distill.layers import calibrate_gains, hidden_stds
from tunesmith.distill.train import make_task

pytestmark = pytest.mark.usefixtures("one_thread")

S = 0.7  # data standard deviation of the 1-D Gaussian tests


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(0, S^2): x S^2 / (S^2 + sigma^2)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1))
    return x * S**2 / (S**2 + sigma**2)


def gaussian_consistency(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The probability-flow ODE's end point from (x, sigma) for the same data: x S / sqrt(S^2 + sigma^2)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1))
    return x * S / (S**2 + sigma**2).sqrt()


# ---------------------------------------------------------------------------
# the students' sampler


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_pingpong_with_the_exact_consistency_function_samples_the_data(steps):
    """Denoise then re-noise: with the exact consistency function every step count gives N(0, S^2);
    one network evaluation per step."""
    sigmas = get_sigmas("exponential", steps, 0.3, 80.0)
    noise = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0))
    out = sample(gaussian_consistency, noise, sigmas, "pingpong", generator=torch.Generator().manual_seed(1))
    assert out.nfe == steps
    assert abs(float(out.x.std()) - S) < 0.01 and abs(float(out.x.mean())) < 0.01


def test_pingpong_with_the_denoiser_instead_shrinks_the_samples():
    """The posterior mean is not a sampler: re-noising its estimates loses variance (why students train)."""
    sigmas = get_sigmas("exponential", 4, 0.3, 80.0)
    noise = torch.randn(100_000, 1, generator=torch.Generator().manual_seed(0))
    out = sample(gaussian_denoiser, noise, sigmas, "pingpong", generator=torch.Generator().manual_seed(1))
    assert float(out.x.std()) < 0.9 * S


# ---------------------------------------------------------------------------
# consistency distillation


class ScalarConsistency(nn.Module):
    """f(x, sigma) = c_skip x + c_out g(sigma) x: the family that holds the exact answer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(-1, 1)
        c_skip, c_out = S**2 / (S**2 + sigma**2), sigma * S / (S**2 + sigma**2).sqrt()
        return c_skip * x + c_out * self.net(sigma.log() / 4) * x


def test_consistency_distillation_learns_the_teachers_ode_map():
    """Against an exact Gaussian teacher the student converges to the map its Euler steps define:
    the product of the per-step factors from the lowest level up (the analytic discrete answer)."""
    torch.manual_seed(0)
    student = ScalarConsistency()
    opt = torch.optim.Adam(student.parameters(), 1e-2)
    levels = get_sigmas("exponential", 32, 0.02, 40.0).flip(0)[1:]
    for _ in range(800):
        x0 = torch.randn(512, 1) * S
        hi, lo = consistency_pairs(levels, 512)
        loss = consistency_distillation_loss(student, gaussian_denoiser, x0, torch.randn_like(x0), hi, lo, huber_c=1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        got = student(torch.ones(len(levels), 1), levels).flatten()
    factors = 1 + (levels[:-1] - levels[1:]) * levels[1:] / (S**2 + levels[1:] ** 2)  # Euler, level j -> j-1
    want = torch.cat([got[:1], got[0] * torch.cumprod(factors, 0)])
    scale = (S**2 + levels**2).sqrt() / S  # errors in units of the data's spread
    error = float(((got - want).abs() * scale).mean())
    denoiser_error = float(((S**2 / (S**2 + levels**2) - want).abs() * scale).mean())  # where it would sit untrained
    assert error < 0.05 and denoiser_error > 0.3, (error, denoiser_error)


def test_the_teacher_step_is_an_euler_step_of_the_ode():
    x, sigma, nxt = torch.tensor([[1.5]]), torch.tensor([2.0]), torch.tensor([1.0])
    d = gaussian_denoiser(x, sigma)
    torch.testing.assert_close(teacher_ode_step(gaussian_denoiser, x, sigma, nxt), x + (nxt - sigma) * (x - d) / sigma)
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        consistency_distillation_loss(gaussian_consistency, gaussian_denoiser, x, x, nxt, sigma)


# ---------------------------------------------------------------------------
# Presto-L


def _tiny_config(**extra) -> DiTConfig:
    return DiTConfig(latent_dim=4, width=64, depth=6, heads=2, text_dim=16, fourier_dim=32, max_seconds=4.0, **extra)


def test_the_budget_skips_the_blocks_before_the_last_by_noise_level():
    skip = LayerSkip(6, (1.0, 10.0), (2, 4), "edm")
    assert skipped_blocks(6, 2) == [3, 4] and skipped_blocks(6, 4) == [1, 2, 3, 4]
    c_noise = torch.tensor([0.5, 3.0, 30.0]).log() / 4  # EDM's noise-level input for sigma 0.5, 3, 30
    assert skip.levels(c_noise).tolist() == [-1, 0, 1]
    assert [skip.blocks_run(s) for s in (0.5, 3.0, 30.0)] == [6, 4, 2]
    with pytest.raises(ValueError, match="first and last"):
        LayerSkip(6, (1.0,), (5,))


def test_skipped_blocks_are_not_computed():
    torch.manual_seed(0)
    dit = DiT(_tiny_config(skip_sigmas=(1.0,), skip_blocks=(3,)))
    calls = []
    for i, block in enumerate(dit.blocks):
        block.register_forward_hook(lambda _m, _a, _o, i=i: calls.append(i))
    den = Denoiser(dit)
    den(torch.randn(2, 4, 8), 5.0)
    assert calls == [0, 1, 5]
    calls.clear()
    den(torch.randn(2, 4, 8), 0.5)
    assert calls == list(range(6))


def test_calibrated_gains_keep_the_hidden_state_variance_and_plain_dropping_does_not():
    torch.manual_seed(0)
    teacher = DiT(_tiny_config()).eval()
    student = DiT(_tiny_config(skip_sigmas=(0.5,), skip_blocks=(3,))).eval()
    student.load_state_dict(teacher.state_dict(), strict=False)
    x0 = torch.randn(4, 4, 32)
    x = x0 + 2.0 * torch.randn_like(x0)
    want = torch.tensor(hidden_stds(teacher, x, 2.0))
    plain = torch.tensor(hidden_stds(student, x, 2.0))  # gains 1: plain dropping
    calibrate_gains(student, teacher, x0, generator=torch.Generator().manual_seed(0))
    kept = torch.tensor(hidden_stds(student, x, 2.0))
    assert ((kept - want).abs() / want).max() < 0.05, (kept, want)
    assert ((plain - want).abs() / want)[2:].max() > 0.15, (plain, want)


# ---------------------------------------------------------------------------
# the GAN head


def test_the_critic_reads_the_chosen_blocks_and_lsgan_losses_have_their_optima():
    torch.manual_seed(0)
    dit = DiT(_tiny_config())
    with block_outputs(dit, (2, 5)) as features:
        Denoiser(dit)(torch.randn(3, 4, 8), 1.0)
    assert len(features) == 2 and features[0].shape == (3, 9, 64)
    critic = FeatureCritic(64, (2, 5))
    assert critic(features).shape == (3,)
    ones, zeros = torch.ones(5), torch.zeros(5)
    assert float(lsgan_critic_loss(ones, zeros)) == 0.0 and float(lsgan_generator_loss(ones)) == 0.0
    assert float(lsgan_critic_loss(zeros, ones)) == 2.0


# ---------------------------------------------------------------------------
# the task, through the engine


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = preset("run/distill", "tiny").model
    dit = DiT(config)
    with torch.no_grad():
        dit.proj_out.weight.normal_(0, 0.1)
    return save(dit, tmp_path_factory.mktemp("teacher") / "dit", extra={"cfg": 3.0})


def _train(teacher: Path, out: Path, *, method: str = "dmd", stop_at: int | None = None, resume: bool = False,
           **distill) -> dict[str, torch.Tensor]:

    from tunesmith.train.engine import Trainer, seed_everything

    config = preset("run/distill", "tiny")
    config.teacher, config.train.out_dir = str(teacher), str(out)
    config.distill.method = method
    for key, value in distill.items():
        setattr(config.distill, key, value)
    seed_everything(config.train.seed)
    task = make_task(config)
    stop = (lambda trainer, step: trainer.request_stop() if step == stop_at else None) if stop_at else None
    trainer = Trainer(task, config.train, on_step_end=stop)
    result = trainer.fit(resume=resume)
    assert result.interrupted == (stop_at is not None and not resume)
    return {k: v.clone() for k, v in trainer.ema_state_dict("student").items()}


@pytest.mark.parametrize("method", ["dmd", "consistency"])
def test_a_killed_distillation_run_resumes_to_the_same_weights(teacher_dir, tmp_path, method):
    whole = _train(teacher_dir, tmp_path / "whole", method=method)
    _train(teacher_dir, tmp_path / "part", method=method, stop_at=2)
    resumed = _train(teacher_dir, tmp_path / "part", method=method, resume=True)
    start = load_tensors(teacher_dir / "model.safetensors")
    assert any(not torch.equal(whole[k], start[k].float()) for k in start), "training changed nothing"
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)


def test_the_dmd_step_updates_the_fake_model_before_the_student(teacher_dir):


    config = preset("run/distill", "tiny")
    config.teacher = str(teacher_dir)
    task = make_task(config)
    batch = task.collate([task.train_dataset[i] for i in range(4)])
    names = [name for name, loss, _ in task.training_step(task.modules(), batch, 0)]
    assert names == ["fake", "fake", "student"]


def test_a_layers_student_starts_calibrated_and_trains(teacher_dir, tmp_path):


    config = preset("run/distill", "tiny")
    config.teacher, config.distill.method = str(teacher_dir), "layers"
    config.model.skip_sigmas, config.model.skip_blocks = (1.0,), (2,)
    task = make_task(config)
    gains = task.model.layer_skip.gains.detach()
    assert not torch.equal(gains, torch.ones_like(gains))  # calibrated from the teacher
    assert task.modules().keys() == {"student"}
    _train(teacher_dir, tmp_path / "layers", method="layers")


def test_the_exported_student_samples_with_its_own_settings(tmp_path):
    """A few-step student directory: pingpong over its steps, no CFG pass, loadable by name."""
    from tunesmith.codec.model import VAECodec, VAEConfig
    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.diffusion.generator import LatentDiffusionGenerator
    from tunesmith.generator import load_generator

    torch.manual_seed(0)
    vae = VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8))
    dit = DiT(DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16, max_seconds=8.0))
    sampling = {"sampler": "pingpong", "steps": 2, "schedule": "exponential", "sigma_min": 0.5, "sigma_max": 80.0}
    directory = LatentDiffusionGenerator(dit, vae.eval(), get_text_encoder("minilm"), cfg=1.0,
                                         sampling=sampling).save(tmp_path / "student")
    student = load_generator(directory)
    assert student.sampler_defaults == sampling and student.cfg == 1.0
    totals = []
    student.generate("a march", 1.0, seed=0, callback=lambda done, total: totals.append(total))
    assert totals == [2, 2]
    with pytest.raises(ValueError, match="steps"):
        LatentDiffusionGenerator(dit, vae.eval(), sampling={"steps": 0})


def test_ditto2_optimises_through_one_step_of_the_student(tmp_path):
    """DITTO-2: the noise optimisation calls the surrogate (one step, no CFG pass) and never the
    teacher; the teacher then samples from the optimised noise."""
    from tunesmith.codec.model import VAECodec, VAEConfig
    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.diffusion.generator import LatentDiffusionGenerator

    torch.manual_seed(0)
    vae = VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8)).eval()
    config = DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16, max_seconds=8.0)
    teacher_dit, student_dit = DiT(config).eval(), DiT(config).eval()
    with torch.no_grad():
        for dit in (teacher_dit, student_dit):
            dit.proj_out.weight.normal_(0, 0.1)
    encoder = get_text_encoder("minilm")
    student_dir = LatentDiffusionGenerator(student_dit, vae, encoder, cfg=1.0,
                                           sampling={"sampler": "pingpong", "steps": 1}).save(tmp_path / "student")
    teacher = LatentDiffusionGenerator(teacher_dit, vae, encoder)
    calls = {"teacher": [], "student": []}
    teacher_dit.register_forward_hook(lambda _m, args, _o: calls["teacher"].append(args[0].shape[0]))
    surrogate = teacher.surrogate_model(str(student_dir))
    surrogate.register_forward_hook(lambda _m, args, _o: calls["student"].append(args[0].shape[0]))
    audio = teacher.generate("a march", 1.0, seed=0, steps=3, intensity="0:soft, 1:loud", control_iterations=2,
                             control_surrogate=str(student_dir))
    # per iteration one batch-1 student forward and its recomputation in backward (gradient
    # checkpointing), plus the final loss's; then 3 guided teacher steps (cond + uncond: batch 2)
    assert calls["student"] == [1] * 5 and calls["teacher"] == [2, 2, 2]
    plain = teacher.generate("a march", 1.0, seed=0, steps=3)
    assert not torch.equal(audio.samples, plain.samples)
    other = LatentDiffusionGenerator(DiT(DiTConfig(latent_dim=8, width=32, depth=1, heads=2, text_dim=384)), vae,
                                     encoder, latent_scale=0.5).save(tmp_path / "other")
    with pytest.raises(ValueError, match="not a student of this model"):
        teacher.generate("a march", 1.0, intensity="0:soft, 1:loud", control_iterations=1, control_surrogate=str(other))
