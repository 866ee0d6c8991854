"""Two-stage generation (tunesmith.hybrid): angle math, the dual-path network's limits, token
conditioning that is really used, continuation with flat memory and continuous seams, the
generator directory, stage-1 initialisation and the training data."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tunesmith.hybrid import angle
from tunesmith.hybrid.continuation import StreamDecoder, TokenPlanner, continue_latents
from tunesmith.hybrid.dpd import DPDConfig, DualPathDiffusion
from tunesmith.hybrid.tokens import (
    lm_forward_passes,
    stack_frames,
    tokens_per_frame,
    unstack_frames,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest beside other work) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------
# angle-parameterised diffusion


def test_angle_rotation_identities_and_the_v_objective():
    from tunesmith.diffusion.objectives import v_target

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 10, generator=g), torch.randn(3, 4, 10, generator=g)
    t = torch.rand(3, 10, generator=g) * 0.98 + 0.01
    z, v = angle.noisy(x0, eps, t), angle.velocity(x0, eps, t)
    torch.testing.assert_close(angle.predicted_x0(z, v, t), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(angle.velocity_from_x0(z, x0, t), v, atol=1e-4, rtol=0)
    # per-item angles are the cosine v-objective of tunesmith.diffusion (the same coordinates)
    ti = t[:, 0]
    torch.testing.assert_close(angle.velocity(x0, eps, ti), v_target(x0, eps, ti), atol=1e-6, rtol=0)


def test_angle_sampler_is_ddim_and_exact_for_a_point_mass():
    from tunesmith.diffusion.samplers import sample_ddim

    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 3, 7, generator=g)
    target = torch.randn(2, 3, 7, generator=g)
    exact = angle.sample(lambda z, t: angle.velocity_from_x0(z, target, t), noise, angle.times(3))
    torch.testing.assert_close(exact, target, atol=1e-4, rtol=0)  # data = one point: any step count lands on it

    s2 = 0.7**2  # Gaussian data N(0, s2): the ideal denoiser is linear, E[x0 | x] = x s2 / (s2 + sigma^2)
    schedule = angle.times(6)
    phis = angle.angle(schedule)

    def v_oracle(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phi = angle.angle(t)[:, None, :]
        sigma = torch.tan(phi)
        x0 = (z / torch.cos(phi)) * s2 / (s2 + sigma**2)
        return angle.velocity_from_x0(z, x0, t)

    ours = angle.sample(v_oracle, noise, schedule)
    sigmas = torch.tan(phis)
    sigmas[-1] = 0.0
    ddim = sample_ddim(lambda x, s: x * s2 / (s2 + s**2), noise * torch.tan(phis[0]), sigmas)
    torch.testing.assert_close(ours, ddim, atol=1e-4, rtol=1e-4)


def test_angle_sampler_keeps_known_frames():
    g = torch.Generator().manual_seed(2)
    noise, known = torch.randn(1, 2, 9, generator=g), torch.randn(1, 2, 9, generator=g)
    keep = torch.zeros(1, 1, 9)
    keep[..., :4] = 1
    seen = []

    def net(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return torch.zeros_like(z)

    out = angle.sample(net, noise, angle.times(3), known=known, keep=keep)
    assert torch.equal(out[..., :4], known[..., :4])
    assert all(float(t[0, :4].abs().max()) == 0 and float(t[0, 4:].min()) > 0 for t in seen[:-1])


def test_multi_chunk_times_one_per_segment_stratified():
    t = angle.multi_chunk_times(64, 20, 5, torch.Generator().manual_seed(0))
    assert t.shape == (64, 20)
    per_segment = t.view(64, 4, 5)
    assert torch.equal(per_segment, per_segment[..., :1].expand_as(per_segment))
    bins = (per_segment[..., 0] * 4).floor().sort(dim=1).values
    assert torch.equal(bins, torch.arange(4.0).expand(64, 4))  # one segment in each quarter of (0, 1)


# ---------------------------------------------------------------------------
# coarse tokens


def test_stacking_layout_and_pass_counts():
    tokens = torch.arange(2 * 10).view(1, 2, 10)  # codebook k, frame f = 10 k + f
    steps = stack_frames(tokens, 5)
    assert steps.shape == (1, 10, 2)
    for i in range(10):  # stream i = (frame offset i // K, codebook i % K)
        assert steps[0, i].tolist() == [10 * (i % 2) + i // 2 + 5 * j for j in range(2)]
    assert torch.equal(unstack_frames(steps, 2), tokens)
    assert tokens_per_frame(50.0, 25.0) == 2
    with pytest.raises(ValueError, match="align"):
        tokens_per_frame(50.0, 21.5)
    # 10 s of codec-24k: the 4-codebook delay LM against the stacked coarse LM (K = 1, s = 5)
    ratio = lm_forward_passes(500, 4, "delay") / lm_forward_passes(500, 1, "parallel", stack=5)
    assert ratio == pytest.approx(503 / 100)


# ---------------------------------------------------------------------------
# the dual-path network


def _randomised(model: DualPathDiffusion, seed: int = 0) -> DualPathDiffusion:
    """Give every weight (also the zero-initialised gates and output) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _silence(layers: torch.nn.ModuleList) -> None:
    """Zero a path's output projections: its layers then add exactly nothing."""
    with torch.no_grad():
        for layer in layers:
            for proj in (layer.out1, layer.out2, layer.ff_out):
                proj.weight.zero_()
                proj.bias.zero_()


def test_segment_one_and_segment_length_reduce_to_the_same_plain_transformer():
    """segment = T: the fine path is full attention over the sequence (the coarse path sees one
    vector, silenced here); segment = 1: the coarse path is full attention over the frames (the
    fine path is frame-wise, silenced).  Given the same layer weights they are one plain
    transformer, reached by two different code paths."""
    cfg = DPDConfig(latent_dim=3, width=16, depth=2, heads=2, segment=4, num_codebooks=1, codebook_size=5,
                    tokens_per_frame=1, token_rate=25.0, fourier_dim=8, shift=False)
    a = _randomised(DualPathDiffusion(cfg))
    b = DualPathDiffusion(cfg).eval()
    b.load_state_dict(a.state_dict())  # the same shared parts (also the Fourier features' buffer) ...
    for fa, cb in zip(a.fine, b.coarse):  # ... and b's coarse layers are a's fine layers
        cb.load_state_dict(fa.state_dict())
    _silence(a.coarse)
    _silence(b.fine)
    g = torch.Generator().manual_seed(3)
    x, level = torch.randn(2, 3, 12, generator=g), torch.rand(2, 12, generator=g)
    tokens = torch.randint(0, 5, (2, 1, 12), generator=g)
    with torch.no_grad():
        whole, framewise = a(x, level, tokens, segment=12), b(x, level, tokens, segment=1)
        torch.testing.assert_close(whole, framewise, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(whole, a(x, level, tokens, segment=4), atol=1e-3)  # segments do change it


def test_fine_path_is_local_to_segments_and_tokens_are_time_aligned():
    cfg = DPDConfig(latent_dim=3, width=16, depth=2, heads=2, segment=4, num_codebooks=1, codebook_size=5,
                    fourier_dim=8, shift=False)
    model = _randomised(DualPathDiffusion(cfg))
    _silence(model.coarse)
    g = torch.Generator().manual_seed(4)
    x, level = torch.randn(1, 3, 12, generator=g), torch.rand(1, generator=g)
    tokens = torch.randint(0, 5, (1, 1, 24), generator=g)
    with torch.no_grad():
        base = model(x, level, tokens)
        moved = x.clone()
        moved[..., 5] += 1.0  # a frame of segment 1
        changed = (model(moved, level, tokens) - base).abs().amax(dim=1)[0] > 1e-6
        assert changed.tolist() == [False] * 4 + [True] * 4 + [False] * 4
        other = tokens.clone()
        other[..., 16:18] = (other[..., 16:18] + 1) % 5  # the tokens under latent frame 8 (segment 2)
        changed = (model(x, level, other) - base).abs().amax(dim=1)[0] > 1e-6
        assert changed.tolist() == [False] * 8 + [True] * 4
        # segment 1 = each frame alone: the fine path is frame-wise
        changed = (model(moved, level, tokens, segment=1) - model(x, level, tokens, segment=1)).abs().amax(dim=1)[0] > 1e-6
        assert changed.tolist() == [False] * 5 + [True] + [False] * 6
    shifted = _randomised(DualPathDiffusion(dataclasses.replace(cfg, shift=True)))
    _silence(shifted.coarse)
    with torch.no_grad():  # shifted boundaries in the second pair: frame 5 now reaches across its segment
        changed = (shifted(moved, level, tokens) - shifted(x, level, tokens)).abs().amax(dim=1)[0] > 1e-6
        assert changed[2] and changed[7] and not changed[11]
    _randomised(model)  # the coarse path, back on, carries information across all segments
    with torch.no_grad():
        assert bool(((model(moved, level, tokens) - model(x, level, tokens)).abs() > 1e-6).all())


def test_dpd_refuses_bad_inputs():
    model = DualPathDiffusion(DPDConfig(latent_dim=3, width=16, depth=1, heads=2, segment=4, codebook_size=5,
                                        fourier_dim=8))
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="tokens must be"):
        model(x, torch.rand(1), torch.zeros(1, 1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(x, torch.rand(1), torch.full((1, 1, 16), 6))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 2, 8), torch.rand(1))
    with pytest.raises(ValueError, match="token_rate"):
        DPDConfig(tokens_per_frame=2, frame_rate=25.0, token_rate=75.0)


# ---------------------------------------------------------------------------
# a tiny trained stage 2: the tokens are used


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained briefly on the synthetic task (latents follow the tokens)."""
    from tunesmith.config import preset
    from tunesmith.hybrid.train import make_task
    from tunesmith.train.engine import Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    config = preset("run/hybrid", "tiny")
    out = tmp_path_factory.mktemp("dpd")
    config.train = dataclasses.replace(config.train, out_dir=str(out), steps=250, log_every=25)
    task = make_task(config)
    Trainer(task, config.train).fit()
    torch.set_num_threads(before)
    losses = [json.loads(line)["loss/dpd"] for line in (out / "log.jsonl").read_text().splitlines()]
    return task, config, losses


@pytest.mark.slow
def test_training_lowers_the_loss(trained):
    _, _, losses = trained
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_swapping_the_tokens_swaps_the_output(trained):
    from tunesmith.hybrid.render import render
    from tunesmith.hybrid.train import tokens_to_latents

    task, config, _ = trained
    model, data = task.model.eval(), task.train_dataset
    items = [data.get_item(i, np.random.default_rng(1000 + i)) for i in range(2)]
    tokens = torch.stack([it["tokens"] for it in items])
    targets = torch.stack([tokens_to_latents(data.table, it["tokens"], config.model.tokens_per_frame) for it in items])
    noise = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(5))
    out = render(model, tokens, noise, steps=8).latents
    swapped = render(model, tokens.flip(0), noise, steps=8).latents

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).mean())

    for i in range(2):  # each output follows its own tokens, whatever the noise it started from
        assert err(out[i], targets[i]) < 0.3 * err(out[i], targets[1 - i])
        assert err(swapped[i], targets[1 - i]) < 0.3 * err(swapped[i], targets[i])
    null = render(model, torch.full_like(tokens, config.model.codebook_size), noise, steps=8).latents
    assert err(null[0], targets[0]) > 2 * err(out[0], targets[0])  # without tokens it cannot know them


@pytest.mark.slow
def test_continuation_seams_of_the_trained_model(trained):
    """Windows of 16 frames after 4 known ones: the seams are no rougher than the frames inside."""
    from tunesmith.hybrid.render import render

    task, config, _ = trained
    model, data = task.model.eval(), task.train_dataset
    r = config.model.tokens_per_frame
    tokens = torch.cat([data.get_item(i, np.random.default_rng(i))["tokens"] for i in range(4)], dim=-1)[None]
    gen = torch.Generator().manual_seed(6)

    def window(toks, known, frames, index):
        keep = full = None
        if known is not None:
            keep = torch.zeros(1, 1, frames)
            keep[..., : known.shape[-1]] = 1
            full = torch.nn.functional.pad(known, (0, frames - known.shape[-1]))
        return render(model, toks, torch.randn(1, 4, frames, generator=gen), steps=8, known=full, keep=keep).latents

    planner = TokenPlanner(lambda prompt, n: (_ for _ in ()).throw(AssertionError("all planned")), keep=0)
    planner.tokens = tokens
    chunks = list(continue_latents(window, planner, 64, chunk=12, context=4, tokens_per_frame=r))
    x = torch.cat(chunks, dim=-1)[0]
    jumps = (x[:, 1:] - x[:, :-1]).norm(dim=0)
    seams = [12 * k - 1 for k in range(1, 6)]  # jump into frame 12 k
    changes = (tokens[0, 0, ::r][1:] != tokens[0, 0, ::r][:-1]) | (tokens[0, 0, 1::r][1:] != tokens[0, 0, 1::r][:-1])
    inside = [j for j in range(63) if j not in seams]
    print("seam/inside jump", float(jumps[seams].mean()), float(jumps[inside].mean()), changes[seams].tolist())
    assert float(jumps[seams].mean()) < 1.5 * float(jumps[inside].mean())


# ---------------------------------------------------------------------------
# continuation: the machinery, with an exact model


def _constant_clip_velocity(prior: float = 1.0):
    """The ideal velocity for data that is one constant vector c ~ N(0, prior) over all frames:
    the posterior mean of c from every frame's z_t = cos(phi_t) c + sin(phi_t) eps_t."""

    def v(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phi = angle.angle(t)[:, None, :]
        cos, sin = torch.cos(phi), torch.sin(phi).clamp_min(1e-6)
        precision = 1 / prior + (cos**2 / sin**2).sum(-1, keepdim=True)
        c = (cos * z / sin**2).sum(-1, keepdim=True) / precision
        x0 = torch.where(t[:, None, :] == 0, z, c.expand_as(z))
        return angle.velocity_from_x0(z, x0, t)

    return v


def test_continuation_carries_the_context_across_seams():
    gen = torch.Generator().manual_seed(7)
    oracle = _constant_clip_velocity()

    def window(tokens, known, frames, index):
        keep = full = None
        if known is not None:
            keep = torch.zeros(1, 1, frames)
            keep[..., : known.shape[-1]] = 1
            full = torch.nn.functional.pad(known, (0, frames - known.shape[-1]))
        return angle.sample(oracle, torch.randn(1, 2, frames, generator=gen), angle.times(4), known=full, keep=keep)

    def run(context: int) -> torch.Tensor:
        planner = TokenPlanner(lambda prompt, n: torch.zeros(1, 1, max(n, 8), dtype=torch.long), keep=4)
        return torch.cat(list(continue_latents(window, planner, 100, chunk=10, context=context, tokens_per_frame=2)), -1)

    with_context, without = run(3), run(0)
    assert with_context.shape == (1, 2, 100)
    seam = lambda x: (x[..., 10::10] - x[..., 9:-1:10]).abs().max()
    assert float(seam(with_context)) < 1e-4  # one clip: the tail carried every window to the same c
    assert float(seam(without)) > 0.3  # independent windows: a new c at every seam


def test_token_planner_holds_a_bounded_tail():
    calls = []

    def extend(prompt, n):
        calls.append(0 if prompt is None else prompt.shape[-1])
        return torch.arange(8).view(1, 1, 8) + 8 * len(calls)

    planner = TokenPlanner(extend, keep=4)
    for start in range(0, 400, 10):
        got = planner.take(start, start + 10)
        assert got.shape[-1] == 10
        planner.release(start + 10)
    assert planner.peak_frames <= 24
    assert calls[0] == 0 and set(calls[1:]) == {4}
    with pytest.raises(ValueError, match="released"):
        planner.take(0, 4)


def test_stream_decoder_matches_one_decode_away_from_the_seams():
    """Decoding chunk by chunk with context gives the one-shot decoding (a local decoder here)."""
    kernel = torch.tensor([0.25, 0.5, 0.25])

    def decode(z: torch.Tensor) -> torch.Tensor:  # a 3-tap smoother, 4 samples per frame
        smooth = torch.nn.functional.conv1d(z.sum(1, keepdim=True), kernel.view(1, 1, 3), padding=1)
        return smooth.repeat_interleave(4, dim=-1)

    z = torch.randn(1, 2, 50, generator=torch.Generator().manual_seed(8))
    whole = decode(z)
    stream = StreamDecoder(decode, 4, context=2, fade=3)
    pieces = [p for k in range(0, 50, 7) if (p := stream.push(z[..., k : k + 7])) is not None]
    pieces.append(stream.finish())
    torch.testing.assert_close(torch.cat(pieces, -1), whole, atol=1e-6, rtol=0)
    assert stream.peak_frames <= 7 + 2 + 2 + 1


# ---------------------------------------------------------------------------
# the generator


def test_generate_stream_and_controls(tmp_path):
    import soundfile as sf

    from tunesmith.hybrid.tiny import tiny_two_stage

    gen = tiny_two_stage()
    audio = gen.generate(["a waltz for strings", "fast drums"], 5.0, seed=[1, 2], loudness=None)
    alone = gen.generate("fast drums", 5.0, seed=2, loudness=None)
    assert audio.samples.shape == (2, 1, 5 * 24000)
    torch.testing.assert_close(audio.samples[1], alone.samples[0], atol=1e-5, rtol=0)
    stats = audio.info["two_stage"]
    assert stats["lm_passes"] == math.ceil(5 * 50 / 2) + stats["lm_windows"]  # one per stacked step + prefills
    hotter = gen.generate("fast drums", 5.0, seed=2, temperature=3.0, loudness=None)
    assert not torch.allclose(hotter.samples, alone.samples)
    with pytest.raises(ValueError, match="unknown controls"):
        gen.generate("x", 1.0, guidance=2.0)
    with pytest.raises(ValueError, match="sampler"):
        gen.generate("x", 1.0, sampler="nope")
    other = gen.generate("fast drums", 5.0, seed=2, sampler="dpmpp-2m", steps=3, loudness=None)
    assert other.samples.shape == alone.samples.shape and torch.isfinite(other.samples).all()
    stats = gen.stream("a waltz", 7.5, tmp_path / "out.wav", seed=0)
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.frames) == (24000, 7.5 * 24000)
    assert stats.windows == 2 and stats.nfe == 2 * gen.steps


def test_save_and_load_round_trip(tmp_path):
    from tunesmith.errors import CheckpointError
    from tunesmith.generator import load_generator
    from tunesmith.hybrid.tiny import HashTextEncoder, tiny_two_stage

    gen = tiny_two_stage(backbone="mamba2")
    gen.token_cfg = 1.5
    directory = gen.save(tmp_path / "two-stage")
    assert (directory / "stage1" / "model.safetensors").is_file() and (directory / "codec").is_dir()
    meta = json.loads((directory / "config.json").read_text())
    assert meta["generator_type"] == "two-stage" and meta["model_type"] == "dpd" and meta["token_cfg"] == 1.5
    loaded = load_generator(directory)
    assert type(loaded).__name__ == "TwoStageGenerator" and loaded.lm.config.backbone == "mamba2"
    loaded._text_encoder = HashTextEncoder()
    a = gen.generate("a march", 3.0, seed=4, loudness=None).samples
    b = loaded.generate("a march", 3.0, seed=4, loudness=None).samples
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    (directory / "stage1" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="stage1"):  # without the stage-1 weights it does not load
        load_generator(directory)


def test_coarse_lm_starts_from_a_trained_lm():
    from tunesmith.hybrid.stage1 import coarse_lm_from
    from tunesmith.lm.model import LMConfig, TokenLM

    torch.manual_seed(0)
    source = TokenLM(LMConfig(num_codebooks=4, codebook_size=16, dim=32, backbone_config={"num_layers": 2, "num_heads": 2},
                              text_dim=16, max_frames=100))
    coarse, missing = coarse_lm_from(source, codebooks=2, stack=3)
    assert missing == []
    c = coarse.config
    assert (c.num_codebooks, c.pattern, c.frame_rate, c.max_frames) == (6, "parallel", 50.0 / 3, 33)
    emb, src = coarse.embed.weight.view(6, 17, 32), source.embed.weight.view(4, 17, 32)
    head, src_head = coarse.head.weight.view(6, 16, 32), source.head.weight.view(4, 16, 32)
    for i in range(6):  # stream i carries codebook i % 2
        assert torch.equal(emb[i], src[i % 2]) and torch.equal(head[i], src_head[i % 2])
    for name, p in source.backbone.state_dict().items():
        assert torch.equal(coarse.backbone.state_dict()[name], p)


# ---------------------------------------------------------------------------
# training data


def test_cached_pairs_align_tokens_with_latents(tmp_path):
    from tunesmith.data.cache import FrameCache, write_frame_cache
    from tunesmith.hybrid.train import CachedPairs, DataConfig, stack_token_cache

    rng = np.random.default_rng(0)
    lat = [rng.standard_normal((30, 3)).astype(np.float32), rng.standard_normal((12, 3)).astype(np.float32)]
    tok = [np.stack([np.arange(60) // 2, np.arange(60) % 7], 1), np.stack([np.arange(24) // 2, np.arange(24) % 7], 1)]
    infos = [{"id": f"c{i}", "caption": "x"} for i in range(2)]
    write_frame_cache(tmp_path / "lat", "train", zip(lat, infos), {"kind": "latents", "frame_rate": 25.0, "sample_rate": 24000,
                                                                   "latent_dim": 3, "model": "vae"})
    write_frame_cache(tmp_path / "tok", "train", zip(tok[::-1], infos[::-1]), {"kind": "tokens", "frame_rate": 50.0,
                                                                              "sample_rate": 24000, "num_codebooks": 2,
                                                                              "model": "codec"})
    data = DataConfig(token_cache=str(tmp_path / "tok"), latent_cache=str(tmp_path / "lat"), segment_frames=16,
                      latent_scale=2.0)
    pairs = CachedPairs(data, DPDConfig(latent_dim=3, num_codebooks=1, codebook_size=64))
    item = pairs.get_item(0, np.random.default_rng(3))  # clip c0 (stored second in the token cache)
    start = int(item["tokens"][0, 0])  # token frame 2 j holds j: the window's first latent frame
    assert item["tokens"][0].tolist() == [start + j // 2 for j in range(32)]
    torch.testing.assert_close(item["latents"], torch.from_numpy(lat[0][start : start + 16].T.astype(np.float16)).float() * 2.0)  # fp16 in the cache
    short = pairs.get_item(1, np.random.default_rng(0))  # 12 frames: padded with "no token"
    assert short["tokens"][0, 24:].eq(64).all() and short["latents"][:, 12:].eq(0).all()
    stacked = FrameCache(stack_token_cache(tmp_path / "tok", tmp_path / "stacked", 1, 5), "train")
    assert stacked.meta["frame_rate"] == 10.0 and stacked.clip_frames(1).shape == (12, 5)


# ---------------------------------------------------------------------------
# memory: minutes take what seconds take


@pytest.mark.slow
def test_three_minutes_take_the_memory_of_thirty_seconds(tmp_path):
    code = f"""
import resource, torch
torch.set_num_threads(1)
from tunesmith.hybrid.tiny import tiny_two_stage
gen = tiny_two_stage(chunk_seconds=10.0, context_seconds=2.0)
out = []
for seconds in (30.0, 30.0, 180.0):
    stats = gen.stream("a long piece", seconds, {str(tmp_path)!r} + f"/{{seconds}}.wav", seed=0)
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, stats.peak_token_frames, stats.peak_decoder_frames))
print(out)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    (rss30, tok30, dec30), _, (rss180, tok180, dec180) = eval(result.stdout.strip().splitlines()[-1])
    assert (tok180, dec180) == (tok30, dec30)  # what the loop holds does not grow with the length
    print("peak RSS KiB", rss30, rss180, "held frames", tok30, dec30)
    assert rss180 - rss30 < 24 * 1024, (rss30, rss180)  # KiB: the audio of 3 minutes alone would be 17 MB


def test_train_hybrid_from_the_command_line(tmp_path):
    from tunesmith.checkpoint import load_model
    from tunesmith.cli import main

    out = tmp_path / "run"
    code = main(["train", "hybrid", "--preset", "tiny", "--out", str(out), "--set", "train.steps=3",
                 "--set", "model.objective=v", "--export", str(tmp_path / "dpd")])
    assert code == 0
    model = load_model(tmp_path / "dpd")
    assert isinstance(model, DualPathDiffusion) and model.config.objective == "v"
    assert len((out / "log.jsonl").read_text().splitlines()) >= 1


def test_an_ssm_stage_one_carries_its_state_instead_of_windows():
    """One carried run equals decode_window over the same steps (same seed), however it is cut into
    requests; the generator then decodes minutes with one prefill, never re-reading a window."""
    from tunesmith.hybrid.stage1 import CarriedDecoder
    from tunesmith.hybrid.tiny import tiny_two_stage
    from tunesmith.lm.decode import decode_window

    gen = tiny_two_stage(backbone="mamba2", lm_window=16)
    cond = gen.lm_conditioning(["a march", "slow piano"], 40)
    options = {"temperature": 1.0, "top_k": 5, "top_p": 0.0}
    reference = decode_window(gen.lm, 40, cond, batch_size=2, cfg_scale=2.0,
                              generator=torch.Generator().manual_seed(3), **options)
    carried = CarriedDecoder(gen.lm, cond, 2, 40, cfg=2.0, generator=torch.Generator().manual_seed(3), **options)
    assert torch.equal(torch.cat([carried.next_steps(15), carried.next_steps(25)], dim=-1), reference)
    audio = gen.generate("a march", 6.0, seed=1, loudness=None)  # 150 steps: far past the 16-step window
    stats = audio.info["two_stage"]
    assert stats["lm_windows"] == 1 and stats["lm_passes"] == 150 + 1
    windowed = gen.generate("a march", 6.0, seed=1, carry_state=False, loudness=None).info["two_stage"]
    assert windowed["lm_windows"] > 10 and windowed["lm_passes"] == 150 + windowed["lm_windows"]
