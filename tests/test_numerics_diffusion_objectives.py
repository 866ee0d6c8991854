"""Preconditioning, targets, losses and training-noise distributions against their formulas.

EDM: Karras et al. 2022, Table 1 (c_skip, c_out, c_in, c_noise, loss weight 1 / c_out^2).
v-objective: Salimans & Ho 2022 on the cosine schedule alpha = cos(pi t / 2), s = sin(pi t / 2).
"""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.diffusion.denoiser import CountingDenoiser, Denoiser
from tunesmith.diffusion.objectives import (
    T_EPS,
    cosine_alpha_sigma,
    edm_coefficients,
    edm_loss,
    edm_target,
    sample_training_sigmas,
    sigma_to_t,
    t_to_sigma,
    v_loss,
    v_target,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_edm_coefficients_hand_values():
    # sigma = 1.5, sigma_data = 0.5: sigma^2 + sigma_data^2 = 2.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(torch.tensor([1.5], dtype=torch.float64), 0.5)
    assert float(c_skip) == pytest.approx(0.25 / 2.5, rel=1e-12)
    assert float(c_out) == pytest.approx(1.5 * 0.5 / math.sqrt(2.5), rel=1e-12)
    assert float(c_in) == pytest.approx(1 / math.sqrt(2.5), rel=1e-12)
    assert float(c_noise) == pytest.approx(math.log(1.5) / 4, rel=1e-12)


def test_edm_coefficients_formulas_and_unit_variance():
    sigma = torch.tensor([0.002, 0.03, 0.4, 1.0, 3.0, 80.0], dtype=torch.float64)
    for sd in (0.5, 1.0, 1.7):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
        total = sigma**2 + sd**2
        assert torch.allclose(c_skip, sd**2 / total, rtol=1e-12)
        assert torch.allclose(c_out, sigma * sd / total.sqrt(), rtol=1e-12)
        assert torch.allclose(c_in, total.rsqrt(), rtol=1e-12)
        assert torch.allclose(c_noise, sigma.log() / 4, rtol=1e-12)
        # Karras' derivation: Var(c_in x) = 1 and Var(target of F) = 1 for Var(x0) = sd^2
        assert torch.allclose(c_in**2 * total, torch.ones_like(sigma), rtol=1e-12)
        target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
        assert torch.allclose(target_var, torch.ones_like(sigma), rtol=1e-10)


def test_edm_target_closed_form_and_loss_weight():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    sigma, sd = torch.tensor([0.1, 0.5, 2.0, 20.0], dtype=torch.float64), 0.6
    s = sigma.view(-1, 1, 1)
    # (x0 - c_skip (x0 + sigma n)) / c_out simplifies to (sigma x0 - sd^2 n) / (sd sqrt(sigma^2 + sd^2))
    expected = (s * x0 - sd**2 * noise) / (sd * (s**2 + sd**2).sqrt())
    assert torch.allclose(edm_target(x0, noise, sigma, sd), expected, rtol=1e-10)
    # MSE on F equals lambda(sigma) |D - x0|^2 with lambda = 1 / c_out^2 (EDM's loss weight)
    pred = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    c_skip, c_out, _, _ = (c.view(-1, 1, 1) for c in edm_coefficients(sigma, sd))
    d = c_skip * (x0 + s * noise) + c_out * pred
    weight = (s**2 + sd**2) / (s * sd) ** 2
    assert float(edm_loss(pred, x0, noise, sigma, sd)) == pytest.approx(float((weight * (d - x0) ** 2).mean()), rel=1e-6)
    assert float(edm_loss(pred, x0, noise, sigma, sd)) == pytest.approx(float(((pred - expected) ** 2).mean()), rel=1e-6)


def test_cosine_schedule_hand_values():
    t = torch.tensor([0.0, 1 / 3, 0.5, 2 / 3], dtype=torch.float64)
    alpha, s = cosine_alpha_sigma(t)
    assert alpha.tolist() == pytest.approx([1.0, math.sqrt(3) / 2, math.sqrt(0.5), 0.5], abs=1e-12)
    assert s.tolist() == pytest.approx([0.0, 0.5, math.sqrt(0.5), math.sqrt(3) / 2], abs=1e-12)
    assert t_to_sigma(t).tolist() == pytest.approx([0.0, 1 / math.sqrt(3), 1.0, math.sqrt(3)], abs=1e-12)
    assert sigma_to_t(torch.tensor([0.0, 1.0, math.sqrt(3)], dtype=torch.float64)).tolist() == pytest.approx([0.0, 0.5, 2 / 3], abs=1e-12)


def test_v_target_and_loss_hand_values():
    x0 = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    noise = torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    t = torch.tensor([1 / 3], dtype=torch.float64)  # alpha = sqrt(3)/2, s = 1/2
    v = v_target(x0, noise, t)
    a, s = math.sqrt(3) / 2, 0.5
    assert v.tolist()[0] == pytest.approx([a * 0.5 - s * 2.0, a * 3.0 - s * -1.0], rel=1e-12)
    pred = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    expected = ((0 - v[0, 0]) ** 2 + (1 - v[0, 1]) ** 2) / 2
    assert float(v_loss(pred, x0, noise, t)) == pytest.approx(float(expected), rel=1e-6)
    # per-item t broadcasts over the other axes
    t2 = torch.tensor([0.2, 0.7], dtype=torch.float64)
    x2, n2 = torch.ones(2, 3, 4, dtype=torch.float64), torch.full((2, 3, 4), 2.0, dtype=torch.float64)
    v2 = v_target(x2, n2, t2)
    for i, ti in enumerate(t2.tolist()):
        assert torch.allclose(v2[i], torch.full((3, 4), 2 * math.cos(math.pi * ti / 2) - math.sin(math.pi * ti / 2), dtype=torch.float64))


# ---------------------------------------------------------------------------
# the Denoiser wrapper: what the network sees and how its output is combined


class Recorder:
    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, x, level, **cond):
        self.inputs.append((x.clone(), level.clone(), cond))
        return self.fn(x, level)


def test_v_denoiser_inputs_and_output_by_hand():
    net = Recorder(lambda z, t: 0.5 * z + t.view(-1, 1))  # an arbitrary v-network
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0])
    out = Denoiser(net, "v")(x, sigma)
    z, t, _ = net.inputs[0]
    for i, s in enumerate(sigma.tolist()):
        a, si = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)  # cos / sin of atan(sigma)
        ti = 2 * math.atan(s) / math.pi
        assert float(t[i]) == pytest.approx(ti, rel=1e-6)
        assert z[i].tolist() == pytest.approx((x[i] * a).tolist(), rel=1e-6)
        v = 0.5 * z[i] + ti
        assert out[i].tolist() == pytest.approx((a * z[i] - si * v).tolist(), rel=1e-5)


def test_edm_denoiser_inputs_and_output_by_hand():
    net = Recorder(lambda xin, c: xin * 2 - c.view(-1, 1))
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    sigma, sd = torch.tensor([0.5, 2.0]), 0.7
    out = Denoiser(net, "edm", sigma_data=sd)(x, sigma)
    xin, c_noise, _ = net.inputs[0]
    for i, s in enumerate(sigma.tolist()):
        total = s * s + sd * sd
        assert float(c_noise[i]) == pytest.approx(math.log(s) / 4, rel=1e-6)
        assert xin[i].tolist() == pytest.approx((x[i] / math.sqrt(total)).tolist(), rel=1e-6)
        f = xin[i] * 2 - math.log(s) / 4
        expected = sd * sd / total * x[i] + s * sd / math.sqrt(total) * f
        assert out[i].tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_scalar_sigma_is_broadcast_per_item():
    net = Recorder(lambda z, t: z * t.view(-1, 1))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    dv = Denoiser(net, "v")
    assert torch.allclose(dv(x, 1.3), dv(x, torch.full((3,), 1.3)))
    assert net.inputs[0][1].shape == (3,)


@pytest.mark.parametrize("parameterization", ["v", "edm"])
def test_denoiser_loss_by_hand(parameterization):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 2, 5, generator=g, dtype=torch.float64), torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    sigma, sd = torch.tensor([0.3, 1.0, 6.0], dtype=torch.float64), 0.5
    net = Recorder(lambda inp, level: 0.3 * inp)
    loss = Denoiser(net, parameterization, sigma_data=sd).loss(x0, sigma, noise)
    inp, level, _ = net.inputs[0]
    s = sigma.view(-1, 1, 1)
    if parameterization == "v":
        t = 2 * torch.atan(sigma) / math.pi
        a, si = torch.cos(math.pi * t / 2).view(-1, 1, 1), torch.sin(math.pi * t / 2).view(-1, 1, 1)
        assert torch.allclose(level, t, rtol=1e-10)
        assert torch.allclose(inp, a * x0 + si * noise, rtol=1e-10)  # = (x0 + sigma n) / sqrt(1 + sigma^2)
        assert torch.allclose(inp, (x0 + s * noise) / (1 + s**2).sqrt(), rtol=1e-10)
        target = a * noise - si * x0
    else:
        assert torch.allclose(level, sigma.log() / 4, rtol=1e-10)
        assert torch.allclose(inp, (x0 + s * noise) / (s**2 + sd**2).sqrt(), rtol=1e-10)
        target = (s * x0 - sd**2 * noise) / (sd * (s**2 + sd**2).sqrt())
    assert float(loss) == pytest.approx(float(((0.3 * inp - target) ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize("parameterization", ["v", "edm"])
def test_ideal_network_turns_into_the_ideal_denoiser(parameterization):
    """Plug the exact network for Gaussian data into the wrapper: D must be E[x0 | x] exactly."""
    mu, std, sd = 0.4, 0.8, 0.8
    x = torch.linspace(-5, 5, 11, dtype=torch.float64).view(1, -1).expand(3, -1)
    sigma = torch.tensor([0.05, 1.0, 9.0], dtype=torch.float64)
    ideal = (std**2 * x + sigma.view(-1, 1) ** 2 * mu) / (std**2 + sigma.view(-1, 1) ** 2)

    def v_net(z, t):
        a, s = (c.view(-1, 1) for c in cosine_alpha_sigma(t))
        xx = z / a
        sg = s / a
        x0 = (std**2 * xx + sg**2 * mu) / (std**2 + sg**2)
        return a * (xx - x0) / sg - s * x0

    def edm_net(xin, c_noise):
        sg = (4 * c_noise).exp().view(-1, 1)
        xx = xin * (sg**2 + sd**2).sqrt()
        x0 = (std**2 * xx + sg**2 * mu) / (std**2 + sg**2)
        return (x0 - sd**2 / (sg**2 + sd**2) * xx) / (sg * sd / (sg**2 + sd**2).sqrt())

    d = Denoiser(v_net if parameterization == "v" else edm_net, parameterization, sigma_data=sd)
    assert torch.allclose(d(x, sigma.float()), ideal, atol=1e-5)


def test_counting_denoiser_counts_and_passes_through():
    c = CountingDenoiser(lambda x, s, **k: x * s + k.get("b", 0))
    assert float(c(torch.tensor(2.0), 3.0, b=1)) == 7.0
    c(torch.tensor(1.0), 1.0)
    assert c.nfe == 2


# ---------------------------------------------------------------------------
# training noise levels


def test_training_sigmas_are_exact_transforms_of_the_seeded_draws():
    n = 5000
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    u = torch.rand(n, generator=g())
    got = sample_training_sigmas(n, "uniform", g())
    assert torch.allclose(got, torch.tan(u.clamp(T_EPS, 1 - T_EPS) * math.pi / 2), rtol=1e-5)
    r = torch.randn(n, generator=g())
    got = sample_training_sigmas(n, "logit_normal", g(), mean=0.3, std=0.7)
    assert torch.allclose(got, torch.tan(torch.sigmoid(r * 0.7 + 0.3).clamp(T_EPS, 1 - T_EPS) * math.pi / 2), rtol=1e-5)
    got = sample_training_sigmas(n, "log_normal", g(), mean=0.3, std=0.7)
    assert torch.allclose(got, (r * 0.7 + 0.3).exp(), rtol=1e-6)


def test_training_sigma_distribution_statistics():
    n = 40000
    g = torch.Generator().manual_seed(0)
    # uniform: t = 2 atan(sigma) / pi ~ U(0, 1): mean 1/2, variance 1/12, quartiles 1/4, 3/4
    t = sigma_to_t(sample_training_sigmas(n, "uniform", g).double())
    assert float(t.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(t.var()) == pytest.approx(1 / 12, abs=0.003)
    assert torch.quantile(t, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist() == pytest.approx([0.25, 0.75], abs=0.01)
    assert float(t.min()) >= T_EPS - 1e-7 and float(t.max()) <= 1 - T_EPS + 1e-7
    # logit-normal: logit(t) ~ N(mean, std)
    t = sigma_to_t(sample_training_sigmas(n, "logit_normal", g, mean=0.5, std=0.8).double())
    logit = torch.log(t / (1 - t))
    assert float(logit.mean()) == pytest.approx(0.5, abs=0.02)
    assert float(logit.std()) == pytest.approx(0.8, abs=0.02)
    # EDM's defaults: ln sigma ~ N(-1.2, 1.2)
    ls = sample_training_sigmas(n, "log_normal", g).log()
    assert float(ls.mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(ls.std()) == pytest.approx(1.2, abs=0.03)
    with pytest.raises(ValueError):
        sample_training_sigmas(0, "uniform")
