"""The DiT (shapes, masks, chunked attention, checkpointing, save/load) and training it on synthetic latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tunesmith
from tunesmith.checkpoint import load_model
from tunesmith.config import ConfigError, apply_overrides, from_dict, preset, to_dict
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.diffusion.guidance import cfg_denoiser
from tunesmith.diffusion.samplers import get_sigmas, sample
from tunesmith.diffusion.train import SyntheticLatents, make_task, random_keep_mask
from tunesmith.train.engine import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(latent_dim=4, width=32, depth=2, heads=2, text_dim=8, fourier_dim=16, max_seconds=10.0)


def _randomize_output(model: DiT, seed: int = 0) -> DiT:
    """The output layer starts at zero; give it weights so outputs depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.proj_out.weight.copy_(torch.randn(model.proj_out.weight.shape, generator=g) * 0.1)
    return model.eval()


def _inputs(b=2, t=11, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, 4, t, generator=g),
        noise_level=torch.rand(b, generator=g),
        text=torch.randn(b, s, 8, generator=g),
        text_mask=torch.ones(b, s, dtype=torch.bool),
        seconds_start=torch.zeros(b),
        seconds_total=torch.full((b,), 5.0),
    )


def test_dit_starts_at_zero_and_keeps_the_shape():
    model = DiT(DiTConfig(**TINY)).eval()
    args = _inputs()
    out = model(**args)
    assert out.shape == args["x"].shape and torch.equal(out, torch.zeros_like(out))
    out = _randomize_output(model)(**args)
    assert out.abs().mean() > 0 and torch.isfinite(out).all()


def test_any_length_and_chunked_attention_agree():
    model = _randomize_output(DiT(DiTConfig(**TINY)))
    chunked = _randomize_output(DiT(DiTConfig(**{**TINY, "attn_chunk": 4})))
    chunked.load_state_dict(model.state_dict())
    for t in (2, 9, 33):
        args = _inputs(t=t)
        with torch.no_grad():
            assert torch.allclose(model(**args), chunked(**args), atol=1e-5)


@pytest.mark.parametrize("offset", [0, 2])
def test_windowed_attention_is_block_diagonal_attention(offset):
    from tunesmith.diffusion.dit import windowed_attention

    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 23, 3, 2, 8, generator=g)  # strided views, as the DiT passes them
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    window = (torch.arange(23) + (4 - offset) % 4) // 4 if offset else torch.arange(23) // 4
    allowed = window[:, None] == window[None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.allclose(windowed_attention(q, k, v, 4, offset), expected, atol=1e-5)
    full = torch.nn.functional.scaled_dot_product_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4])
    assert torch.allclose(windowed_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], 4), full, atol=1e-6)


def test_local_layers_change_only_long_inputs():
    full = _randomize_output(DiT(DiTConfig(**TINY)))
    local = _randomize_output(DiT(DiTConfig(**{**TINY, "local_window": 3})))
    local.load_state_dict(full.state_dict())
    assert [local.config.is_global(i) for i in range(2)] == [False, True]
    assert [DiTConfig(local_window=8, depth=8).window_offset(i) for i in (0, 2, 4, 6)] == [0, 4, 0, 4]
    with torch.no_grad():
        short, long = _inputs(t=2), _inputs(t=40)
        assert torch.allclose(full(**short), local(**short), atol=1e-6)  # 3 positions fit one window: full attention
        assert not torch.allclose(full(**long), local(**long), atol=1e-4)
        assert torch.isfinite(local(**long)).all()


def test_text_mask_hides_padding_and_dropped_text_is_finite():
    model = _randomize_output(DiT(DiTConfig(**TINY)))
    args = _inputs()
    args["text_mask"][:, 3:] = False
    changed = dict(args, text=args["text"].clone())
    changed["text"][:, 3:] += 5.0  # only padded tokens change
    with torch.no_grad():
        assert torch.allclose(model(**args), model(**changed), atol=1e-6)
        dropped = model(**dict(args, text_mask=torch.zeros_like(args["text_mask"])))
        assert torch.isfinite(dropped).all()
        assert not torch.allclose(dropped, model(**args))  # the text matters
        later = model(**dict(args, seconds_total=torch.full((2,), 9.0)))
        assert not torch.allclose(later, model(**args))  # and so does the timing
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 3, 8), torch.ones(1))
    with pytest.raises(ValueError, match="text must be"):
        model(torch.randn(1, 4, 8), torch.ones(1), text=torch.randn(1, 2, 7))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = _randomize_output(DiT(DiTConfig(**{**TINY, "adaln": True}))).train()
    args = _inputs()
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(**args).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = _randomize_output(DiT(DiTConfig(**TINY)))
    tunesmith.save(model, tmp_path / "dit")
    meta = json.loads((tmp_path / "dit" / "config.json").read_text())
    assert meta["model_type"] == "dit"
    loaded = load_model(tmp_path / "dit")
    args = _inputs()
    with torch.no_grad():
        assert torch.equal(model(**args), loaded(**args))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="heads"):
        DiTConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="parameterization"):
        from_dict(DiTConfig, {"parameterization": "eps"})
    cfg = preset("run/diffusion", "tiny")
    assert from_dict(type(cfg), to_dict(cfg)) == cfg
    assert apply_overrides(cfg, ["model.depth=3"]).model.depth == 3


def test_random_masks_cover_all_three_kinds():
    rng = np.random.default_rng(0)
    masks = [random_keep_mask(20, rng) for _ in range(60)]
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    assert any(m[0] == 1 and m[-1] == 0 for m in masks)  # prefix kept
    assert any(m[0] == 1 and m[-1] == 1 and m.min() == 0 for m in masks)  # a hole
    assert all(m.max() == 1 and m.min() == 0 or m.min() == 1 or m.max() == 0 for m in masks)


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["v", "edm"])
def test_tiny_dit_learns_synthetic_latents(tmp_path, parameterization):
    """Through the shared engine: the loss falls, and samples have each class's mean and the data's spread."""
    cfg = preset("run/diffusion", "tiny")
    cfg = apply_overrides(cfg, [f"train.out_dir={tmp_path}", f"model.parameterization={parameterization}",
                                "objective.noise_distribution=" + ("uniform" if parameterization == "v" else "log_normal")])
    task = make_task(cfg)
    losses: list[float] = []
    trainer = Trainer(task, cfg.train)
    orig = task.training_step

    def step(modules, batch, i):
        loss, metrics = orig(modules, batch, i)
        losses.append(loss.item())
        return loss, metrics

    task.training_step = step  # record every loss
    trainer.fit()
    assert np.mean(losses[-50:]) < 0.75 * np.mean(losses[:20])

    model = trainer.raw["dit"].eval()
    data: SyntheticLatents = task.train_dataset  # type: ignore[assignment]
    n, frames = 64, cfg.data.segment_frames
    den = Denoiser(model, parameterization, cfg.model.sigma_data)
    for label in range(cfg.data.synthetic_classes):
        text = data.class_text[label].expand(n, -1, -1)
        timing = {"seconds_start": torch.zeros(n), "seconds_total": torch.full((n,), frames / 25.0)}
        cond = {"text": text, "text_mask": torch.ones(n, text.shape[1], dtype=torch.bool), **timing}
        noise = torch.randn(n, cfg.model.latent_dim, frames, generator=torch.Generator().manual_seed(label))
        x = sample(cfg_denoiser(den, cond, None, 1.0), noise, get_sigmas("karras", 20, 0.01, 80.0), "dpmpp-2m").x
        mean_error = (x.mean(dim=(0, 2)) - data.class_means[label]).abs().max().item()
        other = data.class_means[1 - label]
        assert mean_error < 0.15
        assert mean_error < 0.2 * (data.class_means[label] - other).abs().max().item()
        assert abs(x.std(dim=(0, 2)).mean().item() / cfg.data.synthetic_std - 1) < 0.15


def test_beat_clock_starts_silent_then_steers_and_is_checked():
    from tunesmith.conditioning.beat import CLOCK_DIM, beat_clock

    plain = _randomize_output(DiT(DiTConfig(**TINY)))
    clocked = DiT(DiTConfig(**TINY, beat_clock=True)).eval()
    clocked.load_state_dict(plain.state_dict(), strict=False)  # as init_from does
    args = _inputs()
    clock = beat_clock(120.0, 11, 25.0).expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(clocked(**args, beat=clock), plain(**args))  # zero-initialised: no change yet
        torch.nn.init.normal_(clocked.beat_proj.weight)
        assert not torch.allclose(clocked(**args, beat=clock), plain(**args))
        torch.testing.assert_close(clocked(**args, beat=torch.zeros(2, CLOCK_DIM, 11)), plain(**args))  # zeros: none
    with pytest.raises(ValueError, match="no beat clock"):
        plain(**args, beat=clock)
    with pytest.raises(ValueError, match="beat clock must be"):
        clocked(**args, beat=clock[..., :5])


def test_key_input_starts_silent_then_steers_and_is_checked():
    from tunesmith.conditioning.key import KEY_DIM, key_vector

    plain = _randomize_output(DiT(DiTConfig(**TINY)))
    keyed = DiT(DiTConfig(**TINY, key_input=True)).eval()
    keyed.load_state_dict(plain.state_dict(), strict=False)  # as init_from does
    args = _inputs()
    key = torch.stack([key_vector(0, "major"), key_vector(9, "minor")])
    with torch.no_grad():
        torch.testing.assert_close(keyed(**args, key=key), plain(**args))  # zero-initialised: no change yet
        torch.nn.init.normal_(keyed.key_proj.weight)
        out = keyed(**args, key=key)
        assert not torch.allclose(out, plain(**args))
        assert not torch.allclose(out, keyed(**args, key=key.flip(0)))
        torch.testing.assert_close(keyed(**args, key=torch.zeros(2, KEY_DIM)), plain(**args))  # zeros: none
    with pytest.raises(ValueError, match="no key input"):
        plain(**args, key=key)
    with pytest.raises(ValueError, match="key must be"):
        keyed(**args, key=key[:, :5])


def test_cached_latent_windows_carry_the_clips_beat_grid(tmp_path):
    from tunesmith.conditioning.beat import beat_clock
    from tunesmith.data.cache import write_frame_cache
    from tunesmith.diffusion.train import CachedLatents, DataConfig

    meta = {"kind": "latents", "model": "test", "frame_rate": 25.0, "sample_rate": 24000, "latent_dim": 4}
    items = [(np.zeros((80, 4), dtype=np.float32), {"id": "a", "caption": "x", "tags": {"tempo_bpm": 100}})]
    write_frame_cache(tmp_path, "train", items, meta)
    data = DataConfig(cache_dir=str(tmp_path), segment_frames=20)
    windows = CachedLatents(data, DiTConfig(**TINY, beat_clock=True))
    item = windows.get_item(0, np.random.default_rng(1))
    start = round(item["seconds_start"] * 25.0)
    assert start > 0
    torch.testing.assert_close(item["beat"], beat_clock(100.0, 20, 25.0, start_frame=start))
    assert "beat" not in CachedLatents(data, DiTConfig(**TINY)).get_item(0, np.random.default_rng(1))


def test_cached_latent_windows_draw_fresh_captions_from_the_tags(tmp_path):
    from tunesmith.conditioning.prompt import parse_tempo
    from tunesmith.conditioning.key import record_key
    from tunesmith.diffusion.train import collate
    from tunesmith.data.cache import write_frame_cache
    from tunesmith.diffusion.train import CachedLatents, DataConfig

    meta = {"kind": "latents", "model": "test", "frame_rate": 25.0, "sample_rate": 24000, "latent_dim": 4}
    tags = {"instruments": ["marimba"], "families": ["mallets"], "tempo_bpm": 128, "key": "C", "mode": "major",
            "style": "pop", "dynamics_range": ["mf", "mf"], "meter": "4/4", "ensemble": "marimba",
            "ensemble_complete": False, "segments": []}
    write_frame_cache(tmp_path, "train", [(np.zeros((80, 4), dtype=np.float32), {"id": "a", "caption": "x", "tags": tags})], meta)
    fixed = CachedLatents(DataConfig(cache_dir=str(tmp_path), segment_frames=20), DiTConfig(**TINY))
    assert {fixed.get_item(0, np.random.default_rng(s))["caption"] for s in range(5)} == {"x"}
    fresh = CachedLatents(DataConfig(cache_dir=str(tmp_path), segment_frames=20, caption_resample=1.0), DiTConfig(**TINY))
    captions = [fresh.get_item(0, np.random.default_rng(s))["caption"] for s in range(10)]
    assert len(set(captions)) > 5 and "x" not in captions
    keyed = CachedLatents(DataConfig(cache_dir=str(tmp_path), segment_frames=20), DiTConfig(**TINY, key_input=True))
    torch.testing.assert_close(keyed.get_item(0, np.random.default_rng(0))["key"], record_key({"tags": tags}))
    assert "key" in collate([keyed.get_item(0, np.random.default_rng(s)) for s in range(2)])
    assert all(parse_tempo(c) in (None, 128) for c in captions)
    with pytest.raises(ValueError, match="caption_resample"):
        DataConfig(caption_resample=1.5)
