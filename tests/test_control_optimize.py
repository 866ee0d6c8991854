"""DITTO's noise optimisation: it lowers a control loss, checkpointing changes no gradient, and
the memory kept for the backward pass does not grow with the sampler's steps."""

from __future__ import annotations

import pytest
import torch

from tunesmith.control.features import intensity_loss, intensity_target, loudness_curve
from tunesmith.control.optimize import optimize_noise, sample_with_grad, to_gaussian_shell
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.samplers import get_sigmas, sample_ddim

MU, STD = 0.3, 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of data ~ N(MU, STD^2) per coordinate."""
    s2 = sigma.view(-1, *[1] * (x.dim() - 1)) ** 2
    return (STD**2 * x + s2 * MU) / (STD**2 + s2)


@pytest.fixture(scope="module")
def tiny_dit():
    from tunesmith.serve.testing import tiny_generator  # a DiT + VAE of a few hundred kB
    from tunesmith.generator import load_generator
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        generator = load_generator(tiny_generator(f"{tmp}/tiny"))
    cond, _ = generator.conditioning(["a slow waltz"], 1.0)
    inputs = cond.model_inputs()
    model = generator.model
    denoiser = Denoiser(model, model.config.parameterization, model.config.sigma_data)
    return generator, (lambda x, sigma: denoiser(x, sigma, **inputs))


def test_the_sampler_is_ddim_and_the_shell_is_the_gaussian_one():
    torch.manual_seed(0)
    noise = torch.randn(2, 4, 16)
    sigmas = get_sigmas("karras", 8, 0.01, 80.0)
    reference = sample_ddim(gaussian_denoiser, noise * sigmas[0], sigmas)
    torch.testing.assert_close(sample_with_grad(gaussian_denoiser, noise, sigmas), reference)
    shell = to_gaussian_shell(3 * noise)
    torch.testing.assert_close(shell.flatten(1).norm(dim=1), torch.full((2,), 64**0.5))


def test_optimisation_moves_the_output_to_the_target():
    """With the exact denoiser the sampler maps noise n to about MU + STD * n, so a mean of
    MU + 0.5 STD is reachable on the shell; 40 Adam steps get there."""
    torch.manual_seed(0)
    sigmas = get_sigmas("karras", 10, 0.01, 80.0)
    target = MU + 0.5 * STD
    result = optimize_noise(gaussian_denoiser, sigmas, torch.randn(1, 1, 64),
                            lambda x0: (x0.mean() - target) ** 2, iterations=40, lr=0.1)
    assert result.losses[-1] < result.losses[0] / 100
    assert torch.allclose(result.noise.norm(), torch.tensor(8.0))  # still on the shell


def test_checkpointing_changes_no_gradient(tiny_dit):
    _, denoiser = tiny_dit
    sigmas = get_sigmas("exponential", 4, 0.05, 40.0)
    noise = torch.randn(1, 8, 25, generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointed in (True, False):
        x_t = noise.clone().requires_grad_(True)
        sample_with_grad(denoiser, x_t, sigmas, checkpointed=checkpointed).pow(2).mean().backward()
        grads.append(x_t.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def saved_bytes(denoiser, steps: int, checkpointed: bool) -> int:
    """Bytes the autograd graph keeps for the backward pass of one forward through the sampler."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    x_t = torch.randn(1, 8, 25, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sample_with_grad(denoiser, x_t, get_sigmas("exponential", steps, 0.05, 40.0), checkpointed=checkpointed)
    return total


def test_checkpointed_memory_does_not_grow_with_the_steps(tiny_dit):
    _, denoiser = tiny_dit
    step_input = 1 * 8 * 25 * 4  # one (1, 8, 25) float32 latent
    plain_growth = saved_bytes(denoiser, 16, False) - saved_bytes(denoiser, 4, False)
    kept_growth = saved_bytes(denoiser, 16, True) - saved_bytes(denoiser, 4, True)
    assert kept_growth <= 12 * 4 * step_input  # only each step's input and sigmas, per step
    assert plain_growth > 20 * kept_growth  # against every activation of every step


@pytest.mark.parametrize("curve", ["0:-27,1:-21", "0:-21,1:-27"])
def test_intensity_control_on_a_tiny_model(tiny_dit, curve):
    """Through the real DiT and VAE: a loudness ramp (up, or down) within what the untrained tiny
    model can make (-25 to -22 dB before) is reached, and the loss falls by a large factor."""
    generator, denoiser = tiny_dit
    sigmas = get_sigmas("exponential", 4, 0.05, 40.0)
    target = intensity_target(curve, 20, 20.0)

    def loudness(latents: torch.Tensor) -> torch.Tensor:
        wav = generator.codec.decode(latents / generator.latent_scale)[..., :24000]
        return loudness_curve(wav, generator.sample_rate, frame_rate=20.0)

    noise = torch.randn(1, 8, generator.num_frames(1.0), generator=torch.Generator().manual_seed(0))
    result = optimize_noise(denoiser, sigmas, noise, lambda x0: intensity_loss(loudness(x0), target),
                            iterations=40, lr=0.2)
    assert result.losses[-1] < result.losses[0] / 8, result.losses
    with torch.no_grad():
        achieved = loudness(sample_with_grad(denoiser, result.noise, sigmas))[0]
    assert torch.corrcoef(torch.stack([achieved, target]))[0, 1] > 0.9


def test_generate_takes_noise_optimisation_controls_and_reports_them(tmp_path, capsys):
    """The generator's controls and the CLI's flags: an intensity ramp is followed (correlation
    in the sidecar), a bad curve is one line, and the token LM refuses the control by name."""
    import json

    from tunesmith.cli import main
    from tunesmith.serve.testing import tiny_generator

    model = tiny_generator(tmp_path / "tiny")
    out = tmp_path / "ramp.wav"
    assert main(["generate", "a slow waltz", "--model", str(model), "--duration", "1", "--steps", "4",
                 "--intensity", "0:-27,1:-21", "--control-iterations", "30", "-o", str(out), "--no-progress"]) == 0
    report = json.loads((tmp_path / "ramp.wav.json").read_text())["control_report"]
    first, last = report["optimisation_loss"]
    assert last < first / 4 and report["intensity"]["correlation"] > 0.8
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(model), "--duration", "1", "--intensity", "0:shouting",
                 "-o", str(tmp_path / "no.wav"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shouting" in err and not (tmp_path / "no.wav").exists()
    assert main(["generate", "x", "--model", "tunesmith-small", "--duration", "1", "--structure", "ABA",
                 "-o", str(tmp_path / "lm.wav"), "--no-progress"]) == 2
    assert "unknown controls for token-lm: structure" in capsys.readouterr().err


@pytest.mark.parametrize("targets", [{"structure": "ABAB"}, {"loop": 0.25},
                                     {"intensity": "0:-21,1:-27", "structure": "AB"}])
def test_structure_loop_and_combined_controls_lower_their_loss(tiny_dit, targets):
    generator, _ = tiny_dit
    audio = generator.generate("a slow waltz", duration=1.0, seed=0, steps=4, control_iterations=20, control_lr=0.2,
                               control_steps=4, **targets)
    first, last = audio.info["control_report"]["optimisation_loss"]
    assert first == pytest.approx(len(targets))  # each control starts at 1 (normalised by its own start)
    assert last < first / 2
    assert set(audio.info["control_report"]) == {"optimisation_loss", *targets}
    plain = generator.generate("a slow waltz", duration=1.0, seed=0, steps=4)
    assert set(plain.info) == {"loudness"} and not torch.equal(plain.samples, audio.samples)  # no control report


def test_clap_control_moves_the_audio_towards_the_text():
    """Text control by CLAP: the bundled CLAP's embedding of the decoded audio moves towards the
    text's; the gradient reaches the audio through the mel front end and the window fusion."""
    from tunesmith.checkpoint import load_model
    from tunesmith.control.ditto import ControlLoss, clap_audio_embedding

    clap = load_model("clap-24k")
    wav = (0.1 * torch.randn(1, 1, 24000 * 5, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    loss = ControlLoss({"clap": "a solo piano, slow and tender"}, 24000, 5.0, clap=clap)
    first = loss(wav)
    assert first.item() == pytest.approx(1.0)  # each control's loss is scaled by its value at the start
    opt = torch.optim.Adam([wav], lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        loss(wav).backward()
        opt.step()
    report = loss.report(wav.detach())
    text = clap.embed_text(["a solo piano, slow and tender"])
    score = float(clap_audio_embedding(clap, wav.detach(), 24000) @ text.T)
    assert report["clap"]["score"] == pytest.approx(score, abs=1e-4)
    start = float(clap_audio_embedding(clap, (0.1 * torch.randn(1, 1, 24000 * 5, generator=torch.Generator().manual_seed(0))), 24000) @ text.T)
    assert score > start + 0.2  # the cosine to the text rose by a wide margin
    # longer clips: windows fused as the model's own embed_audio fuses them
    long = 0.1 * torch.randn(2, 1, 24000 * 10, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(clap_audio_embedding(clap, long, 24000), clap.embed_audio(long, 24000), atol=1e-5)
    with pytest.raises(ValueError, match="clap control is a text"):
        ControlLoss({"clap": "  "}, 24000, 5.0, clap=clap)


def test_a_loop_is_as_long_as_asked_and_its_seam_is_measured_on_what_is_returned(tiny_dit):
    """A loop is rendered longer by its overlap and folded: the file is the duration asked for,
    and the report's seam is measured on it, played twice."""
    from tunesmith.control.features import loop_seam_ratio

    generator, _ = tiny_dit
    audio = generator.generate("a slow waltz", duration=1.0, seed=0, steps=4, loop=0.3, control_iterations=2,
                               control_steps=2, loudness=None)
    assert audio.samples.shape[-1] == generator.num_samples(1.0)
    measured = loop_seam_ratio(audio.samples, generator.sample_rate)
    assert audio.info["control_report"]["loop"]["seam_ratio"] == pytest.approx(measured, abs=1e-3)
    with pytest.raises(ValueError, match="rendered .* long"):
        generator.generate("x", duration=generator.max_duration, seed=0, loop=1.0, control_iterations=1)


def test_a_one_step_student_is_optimised_through_its_own_step(tiny_dit):
    """DITTO on a one-step model: the optimisation's map is the model's sampler, so the output's
    loss is the one the optimisation ended with; a multi-step model only approximates it."""
    from tunesmith.diffusion.generator import LatentDiffusionGenerator

    generator, _ = tiny_dit
    student = LatentDiffusionGenerator(generator.model, generator.codec, generator._text_encoder,
                                       text_encoder_name=generator.text_encoder_name, latent_scale=generator.latent_scale,
                                       cfg=1.0, sampling={"sampler": "pingpong", "steps": 1, "sigma_max": 80.0})
    gaps = {}
    for name, model, controls in (("student", student, {"cfg": 1.0}), ("teacher", generator, {"cfg": 4.0, "steps": 4})):
        frames = model.num_frames(1.0)
        cond, uncond = model.conditioning(["a slow waltz"], 1.0, 0)
        noise, loss, losses = model.optimized_noise(cond, uncond, frames, 0, 1.0, {"intensity": "0:-21,1:-27"},
                                                    cfg=controls["cfg"], iterations=4, lr=0.2)
        latents = model.generate_latents(cond, uncond, frames, 0, noise=noise, **{**model.sampler_defaults, **controls}).latents
        achieved = float(loss(model.decode_latents(latents, 1.0).samples))
        gaps[name] = abs(achieved - losses[-1]) / losses[-1]
    assert gaps["student"] < 1e-4 < gaps["teacher"]
