"""Classifier-free guidance and inpainting against hand computations on toy denoisers."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.inpaint import check_mask, keep_known, sample_repaint, strength_to_sigma
from tunesmith.diffusion.samplers import sample_euler

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(calls=None):
    """A non-linear conditional denoiser: each item's output depends on its own label and sigma."""

    def den(x, sigma, label=None):
        if calls is not None:
            calls.append((x.shape[0], torch.as_tensor(sigma).clone(), None if label is None else label.clone()))
        s = torch.as_tensor(sigma, dtype=x.dtype)
        s = s.view(-1, *[1] * (x.dim() - 1)) if s.dim() else s
        return torch.tanh(x) * (1 + label) / (1 + s) + label**2 * s

    return den


def _xs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 8, generator=g, dtype=torch.float64)


COND = {"label": torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64).view(3, 1, 1)}
UNCOND = {"label": torch.zeros(3, 1, 1, dtype=torch.float64)}


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0, 7.5])
def test_cfg_is_uncond_plus_scale_times_difference(scale):
    x, sigma = _xs(), torch.tensor(1.7)
    den = toy()
    dc, du = den(x, sigma, **COND), den(x, sigma, **UNCOND)
    got = cfg_denoiser(den, COND, UNCOND, scale)(x, sigma)
    assert torch.allclose(got, du + scale * (dc - du), rtol=1e-12, atol=1e-12)


def test_cfg_batches_cond_first_with_the_same_sigma():
    calls = []
    x, sigma = _xs(), torch.tensor(0.9)
    cfg_denoiser(toy(calls), COND, UNCOND, 3.0)(x, sigma)
    (batch, sig, label), = calls
    assert batch == 6 and torch.equal(sig, torch.full((6,), 0.9))
    assert torch.equal(label, torch.cat([COND["label"], UNCOND["label"]]))


def test_cfg_without_uncond_or_at_scale_one_is_the_conditional_model():
    calls = []
    x, sigma = _xs(), torch.tensor(0.9)
    den = toy(calls)
    assert torch.equal(cfg_denoiser(den, COND, None, 5.0)(x, sigma), den(x, sigma, **COND))
    assert torch.equal(cfg_denoiser(den, COND, UNCOND, 1.0)(x, sigma), den(x, sigma, **COND))
    assert all(c[0] == 3 for c in calls)


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
def test_cfg_rescale_by_hand(phi):
    """Lin et al. 2024 eq. 15-16 in noise-prediction space, per item:
    eps_cfg = (x - D_cfg)/sigma; eps_rescaled = eps_cfg * std(eps_c)/std(eps_cfg);
    eps = phi eps_rescaled + (1 - phi) eps_cfg; D = x - sigma eps."""
    x, s, scale = _xs(), 1.7, 4.0
    den = toy()
    dc, du = den(x, torch.tensor(s), **COND), den(x, torch.tensor(s), **UNCOND)
    expected = []
    for i in range(3):
        d = du[i] + scale * (dc[i] - du[i])
        eps_cfg, eps_c = (x[i] - d) / s, (x[i] - dc[i]) / s
        eps_r = eps_cfg * eps_c.std() / eps_cfg.std()
        eps = phi * eps_r + (1 - phi) * eps_cfg
        expected.append(x[i] - s * eps)
    got = cfg_denoiser(den, COND, UNCOND, scale, rescale=phi)(x, torch.tensor(s))
    assert torch.allclose(got, torch.stack(expected), rtol=1e-9, atol=1e-12)
    # phi = 1 gives exactly the conditional noise std per item
    if phi == 1.0:
        eps = (x - got) / s
        eps_c = (x - dc) / s
        assert torch.allclose(eps.std(dim=(1, 2)), eps_c.std(dim=(1, 2)), rtol=1e-9)


def test_cfg_interval_is_inclusive_and_uses_only_cond_outside():
    lo, hi = 0.5, 2.0
    x = _xs()
    for s, inside in ((0.4999, False), (0.5, True), (1.0, True), (2.0, True), (2.0001, False), (10.0, False)):
        calls = []
        den = toy(calls)
        got = cfg_denoiser(den, COND, UNCOND, 3.0, interval=(lo, hi))(x, torch.tensor(s))
        dc = toy()(x, torch.tensor(s), **COND)
        du = toy()(x, torch.tensor(s), **UNCOND)
        if inside:
            assert calls[0][0] == 6 and torch.allclose(got, du + 3.0 * (dc - du), rtol=1e-12)
        else:
            assert calls[0][0] == 3 and torch.equal(got, dc)


# ---------------------------------------------------------------------------
# inpainting


def test_keep_known_by_hand():
    known = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    mask = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    pinned = keep_known(lambda x, s: x * 10 + s, known, mask)
    out = pinned(torch.tensor([[[5.0, 6.0, 7.0, 8.0]]]), torch.tensor(0.5))
    assert out.tolist() == [[[1.0, 60.5, 70.5, 4.0]]]


def test_check_mask_shapes_and_values():
    lat = torch.zeros(2, 3, 4)
    assert check_mask(torch.tensor([1.0, 0.0, 0.0, 1.0]), lat).shape == (2, 1, 4)
    assert check_mask(torch.tensor([[1, 0, 1, 1], [0, 0, 1, 1]]), lat)[:, 0].tolist() == [[1, 0, 1, 1], [0, 0, 1, 1]]
    with pytest.raises(ValueError, match="0 \\(generate\\) or 1"):
        check_mask(torch.tensor([0.5, 0.0, 0.0, 1.0]), lat)
    with pytest.raises(ValueError, match="mask must be"):
        check_mask(torch.ones(5), lat)


def _den(x, sigma):
    """Couples the frames (through their mean), so the noised known region steers the unknown one."""
    s = torch.as_tensor(sigma, dtype=x.dtype)
    return (0.25 * x + 0.2 * x.mean(-1, keepdim=True) + s**2 * 0.3) / (0.45 + s**2)


def _repaint_reference(x, sigmas, known, mask, resample, seed):
    """RePaint (Lugmayr et al. 2022, Alg. 1) in VE units with Euler steps, written out here:
    per step and round: known part <- known + sigma z; x <- D + (x - D) sigma'/sigma;
    between rounds x <- x + sqrt(sigma^2 - sigma'^2) z (diffuse back); no resampling into sigma' = 0."""
    g = torch.Generator().manual_seed(seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        rounds = resample if s_next > 0 else 1
        for r in range(rounds):
            z = torch.randn(x.shape, generator=g, dtype=x.dtype)
            x = torch.where(mask.bool(), known + s * z, x)
            d = _den(x, torch.tensor(s, dtype=x.dtype))
            x = d + (x - d) * (s_next / s)
            if r < rounds - 1:
                x = x + math.sqrt(s * s - s_next * s_next) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return torch.where(mask.bool(), known, x)


@pytest.mark.parametrize("resample", [1, 3])
def test_repaint_matches_the_reference_with_the_same_noise(resample):
    g = torch.Generator().manual_seed(1)
    known = torch.randn(2, 1, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 6).expand(2, 1, 6)
    sigmas = torch.tensor([5.0, 1.5, 0.4, 0.0], dtype=torch.float64)
    x = torch.randn(2, 1, 6, generator=g, dtype=torch.float64) * 5.0
    got = sample_repaint(_den, x, sigmas, known, mask, resample=resample, generator=torch.Generator().manual_seed(4))
    ref = _repaint_reference(x, sigmas, known, mask, resample, seed=4)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_repaint_noises_the_known_region_to_the_current_level():
    seen = []

    def den(x, sigma):
        seen.append((x.clone(), float(sigma)))
        return torch.zeros_like(x)

    known = torch.full((1, 1, 4), 2.0, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64).view(1, 1, 4)
    sigmas = torch.tensor([3.0, 0.5, 0.0], dtype=torch.float64)
    sample_repaint(den, torch.zeros(1, 1, 4, dtype=torch.float64), sigmas, known, mask, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    for x, s in seen:  # known part = known + sigma_i z with the generator's next draw
        z = torch.randn((1, 1, 4), generator=g, dtype=torch.float64)
        assert torch.allclose(x[..., :2], 2.0 + s * z[..., :2], rtol=1e-12)


def test_repaint_without_known_region_is_euler():
    x = torch.randn(2, 1, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5
    sigmas = torch.tensor([5.0, 2.0, 0.7, 0.1, 0.0], dtype=torch.float64)
    mask = torch.zeros(2, 1, 5, dtype=torch.float64)
    got = sample_repaint(_den, x, sigmas, torch.zeros_like(x), mask, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(got, sample_euler(_den, x, sigmas), rtol=1e-12, atol=1e-12)


def test_strength_to_sigma_hand_values():
    # t(sigma_max = 1) = 1/2; strength 1/2 -> t = 1/4 -> sigma = tan(pi/8) = sqrt(2) - 1
    assert strength_to_sigma(0.5, 1.0) == pytest.approx(math.sqrt(2) - 1, rel=1e-6)
    assert strength_to_sigma(1.0, 1.0) == pytest.approx(1.0, rel=1e-6)
    # t(sqrt 3) = 2/3; strength 3/4 -> t = 1/2 -> sigma = 1
    assert strength_to_sigma(0.75, math.sqrt(3)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError):
        strength_to_sigma(1.5, 1.0)


def test_bridged_seams_land_on_the_kept_frames_and_fade_out():
    """The first regenerated frame after (and the last before) a kept run takes its kept
    neighbour's value up to the fade's first weight; the offset falls along a raised cosine;
    kept frames and frames past the bridge are untouched."""
    from tunesmith.diffusion.inpaint import bridge_seams

    latents = torch.zeros(1, 2, 20)
    latents[..., 8:14] = 5.0  # regenerated frames 8..13 sit 5 away from the kept 0 on both sides
    keep = torch.ones(1, 1, 20)
    keep[..., 8:14] = 0
    out = bridge_seams(latents, keep, 3)
    w = [0.5 * (1 + math.cos(math.pi * j / 4)) for j in (1, 2, 3)]  # 0.854, 0.5, 0.146
    expected = torch.tensor([5 - 5 * w[0], 5 - 5 * w[1], 5 - 5 * w[2], 5 - 5 * w[2], 5 - 5 * w[1], 5 - 5 * w[0]])
    assert torch.allclose(out[0, 0, 8:14], expected.float(), atol=1e-5)
    assert torch.equal(out[..., :8], latents[..., :8]) and torch.equal(out[..., 14:], latents[..., 14:])
    assert torch.equal(bridge_seams(latents, keep, 0), latents)
    # longer than the region: each seam bridges half of it (3 frames), the same as above
    assert torch.allclose(bridge_seams(latents, keep, 10), out)
    one = torch.zeros(1, 1, 5)
    one[..., 0], one[..., 2], one[..., 4] = 2.0, 9.0, 4.0  # one regenerated frame between kept 2 and 4 (others 0)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 1.0, 1.0]]])
    one[..., 1], one[..., 3] = 2.0, 4.0
    assert float(bridge_seams(one, mask, 6)[0, 0, 2]) == pytest.approx(3.0)  # half-way between its neighbours
    tail = torch.zeros(1, 1, 10)
    tail[..., 4:] = 1.0  # outpainting: one seam, the whole rest of the clip to bridge over
    bridged = bridge_seams(tail, torch.tensor([[[1.0] * 4 + [0.0] * 6]]), 6)
    assert float(bridged[0, 0, 4]) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi / 7)))
