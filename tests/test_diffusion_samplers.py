"""Samplers, parameterizations, guidance and inpainting against exact analytic denoisers.

For Gaussian data (and mixtures of Gaussians) the ideal denoiser E[x0 | x0 + sigma * noise]
has a closed form, so every sampler's output distribution is known in advance.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.inpaint import keep_known, sample_repaint, strength_to_sigma
from tunesmith.diffusion.objectives import (
    cosine_alpha_sigma,
    edm_coefficients,
    edm_target,
    sample_training_sigmas,
    sigma_to_t,
    t_to_sigma,
    v_target,
)
from tunesmith.diffusion.samplers import SAMPLERS, expected_nfe, get_sigmas, sample

SIGMA_MAX = 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _col(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return sigma.view(-1, *[1] * (x.dim() - 1)) if sigma.dim() else sigma


def gaussian_denoiser(mu: float, std: float):
    """Exact E[x0 | x] for x0 ~ N(mu, std^2) per element."""

    def denoise(x, sigma, **_):
        s2 = _col(sigma, x) ** 2
        return (std**2 * x + s2 * mu) / (std**2 + s2)

    return denoise


def mixture_denoiser(weights, means, stds):
    """Exact E[x0 | x] for a 1-D mixture of Gaussians (elementwise)."""
    w, m, s = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, stds))

    def denoise(x, sigma, **_):
        xd = x.double()[..., None]
        s2 = _col(sigma, x).double()[..., None] ** 2 if torch.as_tensor(sigma).dim() else torch.as_tensor(sigma, dtype=torch.float64) ** 2
        var = s**2 + s2
        logp = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (xd - m) ** 2 / var
        post = torch.softmax(logp, dim=-1)
        mean_k = (s**2 * xd + s2 * m) / var
        return (post * mean_k).sum(-1).to(x.dtype)

    return denoise


def mixture_samples(n, weights, means, stds, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=g)
    return torch.tensor(means)[k] + torch.tensor(stds)[k] * torch.randn(n, generator=g)


STEPS = {"euler": 100, "heun": 30, "ddim": 100, "dpmpp-2m": 30, "dpmpp-2m-sde": 60, "dpmpp-3m-sde": 60}
MIX = ([0.3, 0.7], [-2.0, 1.5], [0.3, 0.5])
# the samplers that integrate a denoiser's ODE/SDE; "pingpong" samples a distilled student's
# consistency function instead (tests/test_distill.py checks it against an analytic one)
SOLVERS = [name for name in SAMPLERS if name != "pingpong"]


@pytest.mark.parametrize("sampler", SOLVERS)
def test_every_sampler_matches_gaussian_moments(sampler):
    mu, std = 0.7, 0.5
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    sigmas = get_sigmas("karras", STEPS[sampler], 0.002, SIGMA_MAX)
    out = sample(gaussian_denoiser(mu, std), noise, sigmas, sampler, generator=torch.Generator().manual_seed(1))
    assert out.nfe == expected_nfe(sampler, STEPS[sampler])
    assert abs(out.x.mean().item() - mu) < 0.02
    assert abs(out.x.std().item() / std - 1) < 0.04


@pytest.mark.parametrize("sampler, options", [("ddim", {"eta": 1.0}), ("euler", {"s_churn": 40.0}), ("heun", {"s_churn": 40.0})])
def test_stochastic_variants_match_gaussian_moments(sampler, options):
    """Ancestral DDIM (eta = 1) and EDM's churn are first order in their noise: more steps, same target."""
    mu, std = 0.7, 0.5
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    steps = 60 if sampler == "heun" else 300
    sigmas = get_sigmas("exponential", steps, 0.002, SIGMA_MAX)
    x = sample(gaussian_denoiser(mu, std), noise, sigmas, sampler, generator=torch.Generator().manual_seed(1), **options).x
    assert abs(x.mean().item() - mu) < 0.02
    assert abs(x.std().item() / std - 1) < 0.04


@pytest.mark.parametrize("sampler", SOLVERS)
def test_every_sampler_matches_mixture_moments(sampler):
    weights, means, stds = MIX
    ref = mixture_samples(200000, weights, means, stds, seed=3)
    noise = torch.randn(10000, 1, generator=torch.Generator().manual_seed(0))
    sigmas = get_sigmas("karras", STEPS[sampler], 0.002, SIGMA_MAX)
    x = sample(mixture_denoiser(*MIX), noise, sigmas, sampler, generator=torch.Generator().manual_seed(1)).x
    assert abs(x.mean().item() - ref.mean().item()) < 0.05
    assert abs(x.std().item() / ref.std().item() - 1) < 0.05
    assert abs((x < 0).float().mean().item() - weights[0]) < 0.02  # the modes keep their weights
    def near_modes(v):  # within two standard deviations of either mode
        return (((v - 1.5).abs() < 1.0) | ((v + 2.0).abs() < 0.6)).float().mean().item()

    assert abs(near_modes(x) - near_modes(ref)) < 0.02  # nothing left stranded between the modes


@pytest.mark.parametrize("steps", [10, 15, 20])
def test_dpmpp_2m_is_closer_than_euler_at_few_steps(steps):
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0))
    # Gaussian: the probability-flow ODE's endpoint is known exactly.
    mu, std = 0.7, 0.5
    exact = mu + (noise * SIGMA_MAX - mu) * std / math.sqrt(std**2 + SIGMA_MAX**2)
    sigmas = get_sigmas("karras", steps, 0.002, SIGMA_MAX)
    den = gaussian_denoiser(mu, std)
    err = {s: (sample(den, noise, sigmas, s).x - exact).abs().mean().item() for s in ("euler", "dpmpp-2m")}
    assert err["dpmpp-2m"] < 0.75 * err["euler"]
    # Mixture: reference endpoint from Heun at many steps; DPM-Solver's own schedule (uniform in
    # lambda = -log sigma).  (On Karras' rho = 7 schedule at 10 steps its first steps are too long
    # for a bimodal target and it overshoots as much as Euler undershoots.)
    den = mixture_denoiser(*MIX)
    ref = _mixture_reference(noise)
    sigmas = get_sigmas("exponential", steps, 0.002, SIGMA_MAX)
    outs = {s: sample(den, noise, sigmas, s).x for s in ("euler", "dpmpp-2m")}
    err = {s: (x - ref).abs().mean().item() for s, x in outs.items()}
    assert err["dpmpp-2m"] < 0.75 * err["euler"]
    std_err = {s: abs(x.std().item() - ref.std().item()) for s, x in outs.items()}
    assert std_err["dpmpp-2m"] < std_err["euler"]


_REFERENCE: dict[str, torch.Tensor] = {}


def _mixture_reference(noise: torch.Tensor) -> torch.Tensor:
    if "mix" not in _REFERENCE:
        _REFERENCE["mix"] = sample(mixture_denoiser(*MIX), noise, get_sigmas("karras", 200, 0.002, SIGMA_MAX), "heun").x
    return _REFERENCE["mix"]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_counts_are_exact(sampler, steps):
    calls = []

    def den(x, sigma):
        calls.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return torch.zeros_like(x)

    out = sample(den, torch.randn(3, 2), get_sigmas("exponential", steps), sampler)
    assert out.nfe == len(calls) == expected_nfe(sampler, steps)
    assert all(c > 0 for c in calls)  # never evaluated at sigma = 0


def test_schedules_are_decreasing_and_span_the_range():
    for name in ("karras", "exponential", "cosine"):
        s = get_sigmas(name, 12, 0.01, 50.0)
        assert len(s) == 13 and s[-1] == 0
        assert torch.allclose(s[[0, -2]], torch.tensor([50.0, 0.01]), rtol=1e-4)
        assert bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="sigma_min"):
        get_sigmas("karras", 5, 1.0, 0.5)
    with pytest.raises(ValueError, match="unknown sigma schedule"):
        get_sigmas("linear", 5)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, s: x, torch.randn(2), get_sigmas("karras", 3), "plms")


# ---------------------------------------------------------------------------
# parameterizations


def test_cosine_time_and_sigma_are_inverse():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(sigma_to_t(t_to_sigma(t)), t)
    alpha, s = cosine_alpha_sigma(t)
    assert torch.allclose(alpha**2 + s**2, torch.ones_like(t))
    assert torch.allclose(s / alpha, t_to_sigma(t))


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal", "log_normal"])
def test_training_sigmas_are_positive_finite_and_seeded(distribution):
    a = sample_training_sigmas(1000, distribution, torch.Generator().manual_seed(0))
    b = sample_training_sigmas(1000, distribution, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and bool((a > 0).all()) and bool(torch.isfinite(a).all())
    if distribution == "log_normal":
        assert abs(a.log().mean().item() + 1.2) < 0.15
    if distribution == "uniform":
        assert abs(sigma_to_t(a).mean().item() - 0.5) < 0.05
    with pytest.raises(ValueError, match="noise distribution"):
        sample_training_sigmas(4, "beta")  # type: ignore[arg-type]


def test_v_and_edm_recover_x0_from_their_exact_targets():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 5, generator=g), torch.randn(6, 3, 5, generator=g)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 50.0])
    x = x0 + sigma.view(-1, 1, 1) * noise
    v_net = lambda z, t: v_target(x0, noise, t)  # noqa: E731
    edm_net = lambda xin, c_noise: edm_target(x0, noise, (4 * c_noise).exp(), 0.5)  # noqa: E731
    dv, de = Denoiser(v_net, "v"), Denoiser(edm_net, "edm", sigma_data=0.5)
    assert torch.allclose(dv(x, sigma), x0, atol=1e-4)
    assert torch.allclose(de(x, sigma), x0, atol=1e-4)
    assert dv.loss(x0, sigma, noise).item() < 1e-10
    assert de.loss(x0, sigma, noise).item() < 1e-10
    assert dv.loss(x0, sigma, noise + 1).item() > 0.1  # a wrong prediction is penalized


def test_v_and_edm_parameterizations_agree_on_the_same_denoiser():
    """Wrap one ideal denoiser as a v-network and as an EDM network: D(x, sigma) and samples agree."""
    mu, std, sd = 0.3, 0.8, 0.5
    ideal = gaussian_denoiser(mu, std)

    def v_net(z, t):  # the v an ideal v-model outputs
        alpha, s = (c.view(-1, 1) for c in cosine_alpha_sigma(t))
        sigma = t_to_sigma(t)
        x = z / alpha
        x0 = ideal(x, sigma)
        eps = (x - x0) / sigma.view(-1, 1)
        return alpha * eps - s * x0

    def edm_net(xin, c_noise):  # the F an ideal EDM model outputs
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = (c.view(-1, 1) for c in edm_coefficients(sigma, sd))
        x = xin / c_in
        return (ideal(x, sigma) - c_skip * x) / c_out

    dv, de = Denoiser(v_net, "v"), Denoiser(edm_net, "edm", sigma_data=sd)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)) * 3
    for sigma in (0.005, 0.2, 1.0, 7.0, 60.0):
        assert torch.allclose(dv(x, sigma), de(x, sigma), atol=1e-4)
        assert torch.allclose(dv(x, sigma), ideal(x, torch.tensor(sigma)), atol=1e-4)
    noise = torch.randn(500, 1, generator=torch.Generator().manual_seed(1))
    sigmas = get_sigmas("karras", 15, 0.002, SIGMA_MAX)
    assert torch.allclose(sample(dv, noise, sigmas).x, sample(de, noise, sigmas).x, atol=1e-3)


# ---------------------------------------------------------------------------
# guidance


def labelled_denoiser(calls: list[int] | None = None):
    """Ideal denoiser for x0 ~ N(label, 0.5^2): the label (B, 1) is the condition; None is N(0, 1)."""

    def den(x, sigma, label=None):
        if calls is not None:
            calls.append(x.shape[0])
        s2 = _col(sigma, x) ** 2
        if label is None:
            return x / (1 + s2)
        return (0.25 * x + s2 * label) / (0.25 + s2)

    return den


def test_cfg_scale_one_equals_conditional_and_zero_unconditional():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    cond = {"label": torch.full((4, 1), 2.0)}
    uncond = {"label": torch.zeros(4, 1)}
    den = labelled_denoiser()
    for sigma in (0.1, 1.0, 10.0):
        assert torch.equal(cfg_denoiser(den, cond, uncond, 1.0)(x, torch.tensor(sigma)), den(x, torch.tensor(sigma), **cond))
        assert torch.allclose(cfg_denoiser(den, cond, uncond, 0.0)(x, torch.tensor(sigma)), den(x, torch.tensor(sigma), **uncond), atol=1e-6)
        d3 = cfg_denoiser(den, cond, uncond, 3.0)(x, torch.tensor(sigma))
        dc, du = den(x, torch.tensor(sigma), **cond), den(x, torch.tensor(sigma), **uncond)
        assert torch.allclose(d3, du + 3 * (dc - du), atol=1e-5)


def test_cfg_runs_one_batched_forward_and_respects_the_interval():
    calls: list[int] = []
    den = labelled_denoiser(calls)
    cond, uncond = {"label": torch.ones(2, 1)}, {"label": torch.zeros(2, 1)}
    guided = cfg_denoiser(den, cond, uncond, 4.0, interval=(0.5, 5.0))
    out = sample(guided, torch.randn(2, 3), get_sigmas("exponential", 10, 0.01, 50.0), "euler")
    sig = get_sigmas("exponential", 10, 0.01, 50.0)[:-1]
    inside = int(((sig >= 0.5) & (sig <= 5.0)).sum())
    assert out.nfe == 10 == len(calls)
    assert calls.count(4) == inside and calls.count(2) == 10 - inside  # batched cond+uncond only inside


def test_cfg_rescale_matches_the_conditional_noise_std():
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    cond, uncond = {"label": torch.full((3, 1), 1.5)}, {"label": torch.zeros(3, 1)}
    den, sigma = labelled_denoiser(), torch.tensor(2.0)
    d = cfg_denoiser(den, cond, uncond, 7.0, rescale=1.0)(x, sigma)
    eps, eps_cond = (x - d) / 2.0, (x - den(x, sigma, **cond)) / 2.0
    assert torch.allclose(eps.std(dim=1), eps_cond.std(dim=1), rtol=1e-4)
    with pytest.raises(ValueError, match="rescale"):
        cfg_denoiser(den, cond, uncond, 3.0, rescale=1.5)


def test_cfg_shifts_the_sampled_mean_as_predicted():
    """Guidance w on Gaussians N(2, .25) vs N(0, 1) moves the final mean beyond the conditional one."""
    n = 4000
    cond, uncond = {"label": torch.full((n, 1), 2.0)}, {"label": torch.zeros(n, 1)}
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    sigmas = get_sigmas("karras", 30, 0.002, SIGMA_MAX)
    plain = sample(cfg_denoiser(labelled_denoiser(), cond, uncond, 1.0), noise, sigmas).x
    guided = sample(cfg_denoiser(labelled_denoiser(), cond, uncond, 3.0), noise, sigmas).x
    assert abs(plain.mean().item() - 2.0) < 0.03
    assert guided.mean().item() > 2.2


# ---------------------------------------------------------------------------
# seeds


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp-2m-sde", "dpmpp-3m-sde"])
def test_stochastic_samplers_reproduce_with_a_seed(sampler):
    den = gaussian_denoiser(0.0, 1.0)
    opts = {"s_churn": 10.0} if sampler == "euler" else ({"eta": 1.0} if sampler == "ddim" else {})
    sigmas = get_sigmas("karras", 8)
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    a = sample(den, noise, sigmas, sampler, generator=torch.Generator().manual_seed(7), **opts).x
    b = sample(den, noise, sigmas, sampler, generator=torch.Generator().manual_seed(7), **opts).x
    c = sample(den, noise, sigmas, sampler, generator=torch.Generator().manual_seed(8), **opts).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------
# inpainting and audio-to-audio


def correlated_denoiser(rho: float):
    """Ideal denoiser for x0 (B, 1, 2) ~ N(0, [[1, rho], [rho, 1]]) over two frames."""
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])

    def den(x, sigma, **_):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        gain = cov @ torch.linalg.inv(cov + s * s * torch.eye(2))
        return x @ gain.T

    return den


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_inpainting_keeps_the_known_region_exactly(sampler):
    g = torch.Generator().manual_seed(0)
    known = torch.randn(3, 4, 16, generator=g)
    mask = torch.zeros(3, 1, 16)
    mask[..., :5] = 1
    mask[..., 12:] = 1
    den = keep_known(gaussian_denoiser(0.0, 1.0), known, mask)
    out = sample(den, torch.randn(3, 4, 16, generator=g), get_sigmas("karras", 6), sampler, generator=g).x
    keep = mask.expand_as(known).bool()
    assert torch.equal(out[keep], known[keep])
    assert not torch.allclose(out[~keep], known[~keep])


def test_repaint_keeps_known_and_fills_with_the_conditional_distribution():
    rho, n = 0.8, 4000
    g = torch.Generator().manual_seed(0)
    known = torch.zeros(n, 1, 2)
    known[:, 0, 0] = 1.5  # frame 0 known = 1.5 -> frame 1 ~ N(rho * 1.5, 1 - rho^2)
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 2).expand(n, 1, 2)
    sigmas = get_sigmas("karras", 20, 0.002, SIGMA_MAX)
    start = torch.randn(n, 1, 2, generator=g) * SIGMA_MAX
    den = correlated_denoiser(rho)
    once = sample_repaint(den, start, sigmas, known, mask, resample=1, generator=g)
    out = sample_repaint(den, start, sigmas, known, mask, resample=10, generator=g)
    assert torch.equal(out[:, 0, 0], known[:, 0, 0]) and torch.equal(once[:, 0, 0], known[:, 0, 0])
    # Replacement alone under-uses the known frame (a known bias); RePaint's resampling fixes most of it.
    target = rho * 1.5
    assert abs(out[:, 0, 1].mean().item() - target) < 0.15
    assert abs(out[:, 0, 1].mean().item() - target) < 0.3 * abs(once[:, 0, 1].mean().item() - target)
    assert abs(out[:, 0, 1].std().item() - math.sqrt(1 - rho**2)) < 0.1


def test_strength_maps_to_a_starting_noise_level():
    levels = [strength_to_sigma(s, SIGMA_MAX) for s in (0.1, 0.5, 0.9, 1.0)]
    assert levels == sorted(levels)
    assert math.isclose(levels[-1], SIGMA_MAX, rel_tol=1e-4)
    assert math.isclose(strength_to_sigma(0.5, 1e6), 1.0, rel_tol=1e-3)  # t = 1/2 is sigma = 1
    with pytest.raises(ValueError, match="strength"):
        strength_to_sigma(0.0, SIGMA_MAX)
