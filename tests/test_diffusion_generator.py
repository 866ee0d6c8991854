"""The latent-diffusion generator end to end: real (tiny, untrained) DiT and VAE, the real MiniLM encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tunesmith.audio import Audio
from tunesmith.cli import main
from tunesmith.codec.model import VAECodec, VAEConfig
from tunesmith.conditioning.encoders import get_text_encoder
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.diffusion.generator import LatentDiffusionGenerator
from tunesmith.generator import Generator, load_generator


pytestmark = pytest.mark.usefixtures("one_thread")


def _dit(inpainting: bool = True, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16, max_seconds=8.0,
                          inpainting=inpainting))
    with torch.no_grad():  # an untrained output layer is zero; give it weights so outputs vary
        model.proj_out.weight.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def generator() -> LatentDiffusionGenerator:
    torch.manual_seed(0)
    vae = VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8))
    return LatentDiffusionGenerator(_dit(), vae.eval(), get_text_encoder("minilm"))


def test_generate_returns_audio_and_seeds_reproduce(generator):
    assert isinstance(generator, Generator)
    a = generator.generate(["a waltz for strings", "fast drums"], duration=1.3, seed=1, steps=4)
    b = generator.generate(["a waltz for strings", "fast drums"], duration=1.3, seed=1, steps=4)
    c = generator.generate(["a waltz for strings", "fast drums"], duration=1.3, seed=2, steps=4)
    assert a.sample_rate == 24000 and a.samples.shape == (2, 1, round(1.3 * 24000))
    assert torch.isfinite(a.samples).all() and a.samples.abs().max() <= 1
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(a.samples, c.samples)


def test_guidance_scale_one_is_the_conditional_model(generator):
    cond, uncond = generator.conditioning(["slow piano"], 2.0)
    one = generator.generate_latents(cond, uncond, 20, seed=3, steps=5, cfg=1.0)
    plain = generator.generate_latents(cond, None, 20, seed=3, steps=5)
    guided = generator.generate_latents(cond, uncond, 20, seed=3, steps=5, cfg=5.0)
    assert torch.equal(one.latents, plain.latents) and one.nfe == plain.nfe == 5
    assert not torch.allclose(guided.latents, plain.latents)


@pytest.mark.parametrize("inpainting", [True, False])
def test_inpainting_keeps_known_latents_exactly(generator, inpainting):
    gen = LatentDiffusionGenerator(_dit(inpainting), generator.codec, generator.text_encoder)
    cond, uncond = gen.conditioning(["a folk tune"], 2.0)
    known = torch.randn(1, 8, 30, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(1, 1, 30)
    keep[..., :10] = 1
    keep[..., 25:] = 1
    out = gen.generate_latents(cond, uncond, 30, seed=0, steps=6, cfg=3.0, init_latents=known, keep_mask=keep,
                               repaint_resample=2)
    kept = keep.expand_as(known).bool()
    assert torch.equal(out.latents[kept], known[kept])
    assert not torch.allclose(out.latents[~kept], known[~kept])
    assert out.nfe == (6 if inpainting else 5 * 2 + 1)


def test_audio_to_audio_strength_controls_the_departure(generator):
    cond, _ = generator.conditioning(["a march"], 2.0)
    ref = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(0))
    dist = [
        (generator.generate_latents(cond, None, 40, seed=0, steps=8, init_latents=ref, strength=s).latents - ref).norm().item()
        for s in (0.1, 0.5, 1.0)
    ]
    assert dist[0] < dist[1] < dist[2]


def test_outpainting_and_masks_from_seconds(generator):
    ref = Audio(0.1 * torch.randn(1, 24000, generator=torch.Generator().manual_seed(0)), 24000)
    out = generator.generate("a calm ending", duration=2.0, seed=0, steps=3, init_audio=ref)
    assert out.samples.shape == (1, 1, 48000)
    keep = generator.keep_mask([(0.2, 0.4)], frames=50, have=25)
    assert keep.shape == (1, 1, 50)
    assert keep[0, 0, :5].eq(1).all() and keep[0, 0, 5:10].eq(0).all() and keep[0, 0, 10:25].eq(1).all()
    assert keep[0, 0, 25:].eq(0).all()  # beyond the reference: generated
    per_sample = torch.zeros(50 * 960, dtype=torch.bool)
    per_sample[960 * 30 : 960 * 31] = True
    assert generator.keep_mask(per_sample, frames=50, have=50)[0, 0].eq(0).nonzero().flatten().tolist() == [30]


def test_bad_requests_get_clear_errors(generator):
    with pytest.raises(ValueError, match="beyond this model's limit"):
        generator.generate("x", duration=9.0)
    with pytest.raises(ValueError, match="duration must be > 0"):
        generator.generate("x", duration=-1)
    with pytest.raises(ValueError, match="unknown controls"):
        generator.generate("x", duration=1.0, temperature=1.0)
    with pytest.raises(ValueError, match="needs the reference audio"):
        generator.generate("x", duration=1.0, mask=[(0.0, 0.5)])
    with pytest.raises(ValueError, match="unknown sampler"):
        generator.generate("x", duration=1.0, sampler="plms")
    with pytest.raises(ValueError, match="latent channels"):
        LatentDiffusionGenerator(DiT(DiTConfig(latent_dim=4, width=32, depth=1, heads=2, text_dim=384)), generator.codec)


def test_save_and_load_generator(generator, tmp_path):
    directory = generator.save(tmp_path / "gen")
    assert json.loads((directory / "config.json").read_text())["generator_type"] == "latent-diffusion"
    loaded = load_generator(directory)
    loaded._text_encoder = generator.text_encoder
    a = generator.generate("a hymn", duration=1.0, seed=5, steps=3)
    b = loaded.generate("a hymn", duration=1.0, seed=5, steps=3)
    assert torch.equal(a.samples, b.samples)
    # a model's own guidance scale is stored with it and used when a call gives none
    generator.cfg = 7.0
    try:
        strong = load_generator(generator.save(tmp_path / "strong"))
    finally:
        generator.cfg = 4.0
    strong._text_encoder = generator.text_encoder
    assert strong.cfg == 7.0
    c = strong.generate("a hymn", duration=1.0, seed=5, steps=3)
    assert torch.equal(c.samples, loaded.generate("a hymn", duration=1.0, seed=5, steps=3, cfg=7.0).samples)
    assert not torch.equal(c.samples, a.samples)


def test_fp16_storage_and_a_bundled_vae_referenced_by_name(generator, tmp_path):
    half = load_generator(generator.save(tmp_path / "half", fp16=True))
    half._text_encoder = generator.text_encoder
    assert next(half.model.parameters()).dtype == torch.float32  # stored in fp16, run in fp32
    a = generator.generate("a hymn", duration=1.0, seed=5, steps=3).samples
    b = half.generate("a hymn", duration=1.0, seed=5, steps=3).samples
    assert (a - b).abs().max() < 0.05 * a.abs().max() + 1e-4
    with pytest.raises(ValueError, match="not a bundled model"):
        generator.save(tmp_path / "x", codec_name="no-such-vae")
    from tunesmith.checkpoint import load_model

    vae = load_model("vae-24k")
    dit = DiT(DiTConfig(latent_dim=vae.latent_dim, width=32, depth=1, heads=2, text_dim=384))
    directory = LatentDiffusionGenerator(dit, vae, generator.text_encoder).save(tmp_path / "named", codec_name="vae-24k")
    assert json.loads((directory / "config.json").read_text())["codec"] == "vae-24k"
    assert not (directory / "codec").exists()  # no second copy of the bundled VAE
    assert load_generator(directory).codec.latent_dim == vae.latent_dim


def _as_if_trained(generator, projection: str, **flags):
    """A tiny DiT with the given conditioning flags whose new projection has random weights,
    as if trained, in a generator with the fixture's VAE and text encoder."""
    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16, max_seconds=8.0, **flags))
    with torch.no_grad():
        dit.proj_out.weight.normal_(0, 0.1)
        getattr(dit, projection).weight.normal_(0, 1.0)
    return dit, LatentDiffusionGenerator(dit.eval(), generator.codec, generator.text_encoder)


def test_a_beat_clock_model_gets_the_prompted_tempo(generator):
    from tunesmith.conditioning.beat import beat_clock

    dit, clocked = _as_if_trained(generator, "beat_proj", beat_clock=True)
    cond, uncond = clocked.conditioning(["a jig at 150 BPM", "a tune for fiddle"], 1.0)
    frames = clocked.num_frames(1.0)
    torch.testing.assert_close(cond.beat[0], beat_clock(150.0, frames, clocked.frame_rate))
    assert cond.beat[1].abs().sum() == 0 and uncond.beat.abs().sum() == 0  # no tempo word, no number
    with_clock = clocked.generate("a jig at 150 BPM", duration=1.0, seed=0, steps=3).samples
    with torch.no_grad():
        dit.beat_proj.weight.zero_()
    assert not torch.equal(with_clock, clocked.generate("a jig at 150 BPM", duration=1.0, seed=0, steps=3).samples)
    assert generator.conditioning(["a jig at 150 BPM"], 1.0)[0].beat is None  # a model without a clock gets none


def test_a_key_input_model_gets_the_prompted_key(generator):
    from tunesmith.conditioning.key import key_vector

    _, keyed = _as_if_trained(generator, "key_proj", key_input=True)
    cond, uncond = keyed.conditioning(["a hymn in B-flat minor", "a hymn"], 1.0)
    torch.testing.assert_close(cond.key[0], key_vector(10, "minor"))
    assert cond.key[1].abs().sum() == 0 and uncond.key.abs().sum() == 0
    minor = keyed.generate("a hymn in B-flat minor", duration=1.0, seed=0, steps=3).samples
    assert not torch.equal(minor, keyed.generate("a hymn in B-flat major", duration=1.0, seed=0, steps=3).samples)
    assert generator.conditioning(["a hymn in B-flat minor"], 1.0)[0].key is None


def test_train_cli_runs_and_exports(tmp_path, capsys):
    code = main(["train", "diffusion", "--preset", "tiny", "--set", "train.steps=4", "--out", str(tmp_path / "run"),
                 "--export", str(tmp_path / "model")])
    assert code == 0
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["model_type"] == "dit" and meta["generator_type"] == "latent-diffusion"
    assert main(["train", "diffusion", "--preset", "tiny", "--set", "data.cache_dir=/nonexistent",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "latent cache not found" in capsys.readouterr().err


def test_training_on_a_latent_cache(tmp_path):
    import numpy as np

    from tunesmith.config import apply_overrides, preset
    from tunesmith.data.cache import write_frame_cache
    from tunesmith.diffusion.train import make_task
    from tunesmith.train.engine import Trainer

    rng = np.random.default_rng(0)
    items = [(rng.standard_normal((n, 4)).astype(np.float32), {"id": f"c{i}", "caption": f"tune number {i}"})
             for i, n in enumerate([30, 12, 50, 20])]
    meta = {"kind": "latents", "model": "none", "frame_rate": 25.0, "sample_rate": 24000, "latent_dim": 4}
    cache = write_frame_cache(tmp_path / "cache", "train", items, meta)
    cfg = apply_overrides(preset("run/diffusion", "tiny"), [
        f"data.cache_dir={cache}", "model.text_dim=384", "train.batch_size=2", "train.steps=3",
        f"train.out_dir={tmp_path / 'run'}", "data.segment_frames=16"])
    task = make_task(cfg)
    item = task.train_dataset.get_item(1, np.random.default_rng(0))  # a 12-frame clip, padded to 16
    assert item["latents"].shape == (4, 16) and item["latents"][:, 12:].eq(0).all()
    assert item["seconds_total"] == pytest.approx(12 / 25) and item["caption"] == "tune number 1"
    result = Trainer(task, cfg.train).fit()
    assert result.step == 3 and np.isfinite(result.last_metrics["loss/dit"])
    with pytest.raises(Exception, match="channels"):
        make_task(apply_overrides(cfg, ["model.latent_dim=8"]))


def test_unconditional_generation_ignores_the_prompt(generator):
    a = generator.generate("a waltz for strings", duration=1.0, seed=5, steps=3, unconditional=True)
    b = generator.generate("fast drums", duration=1.0, seed=5, steps=3, unconditional=True)
    c = generator.generate("fast drums", duration=1.0, seed=5, steps=3)
    assert torch.equal(a.samples, b.samples) and not torch.equal(b.samples, c.samples)


def test_per_prompt_seeds_reproduce_single_generations_and_callbacks_report_steps(generator):
    batch = generator.generate(["a waltz", "fast drums"], duration=1.0, seed=[3, 8], steps=4).samples
    for i, (prompt, seed) in enumerate((("a waltz", 3), ("fast drums", 8))):
        alone = generator.generate(prompt, duration=1.0, seed=seed, steps=4).samples[0]
        assert torch.allclose(batch[i], alone, atol=3e-5), prompt  # 1e-5 raw; the loudness gain scales it
    steps = []
    generator.generate("a waltz", duration=1.0, steps=5, callback=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 5) for i in range(1, 6)]

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        generator.generate("a waltz", duration=1.0, steps=5, callback=stop)
    with pytest.raises(ValueError, match="seed"):
        generator.generate(["a", "b"], duration=1.0, seed=[1])


def test_keep_weights_are_one_on_kept_samples_and_a_raised_cosine_into_the_gap():
    from tunesmith.diffusion.inpaint import keep_weights

    kept = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool).repeat_interleave(10)
    w = keep_weights(kept, fade=8)
    assert w[:20].eq(1).all() and w[60:].eq(1).all()  # kept: the user's samples, untouched
    # distance d into the gap: 0.5 (1 + cos(pi d / 8)); d = 4 is the half point, d >= 8 is all generated
    assert w[23].item() == pytest.approx(0.5) and w[56].item() == pytest.approx(0.5)
    assert w[20].item() == pytest.approx(0.5 * (1 + math.cos(math.pi / 8)))
    assert w[27:53].eq(0).all() and w[26] > 0
    assert torch.equal(keep_weights(kept, fade=0), kept.float())


def test_inpainting_and_outpainting_return_the_users_own_samples(generator):
    ref = Audio(0.1 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(1)), 24000)
    out = generator.generate("a calm ending", duration=2.0, seed=0, steps=3, init_audio=ref, mask=[(0.8, 1.2)])
    kept = torch.ones(48000, dtype=torch.bool)
    kept[int(0.8 * 24000) : int(1.2 * 24000)] = False
    assert torch.equal(out.samples[0, 0, kept], ref.samples[0, kept])  # bit for bit, not a VAE re-decode
    gap = out.samples[0, 0, int(0.85 * 24000) : int(1.15 * 24000)]
    assert (gap - ref.samples[0, int(0.85 * 24000) : int(1.15 * 24000)]).abs().mean() > 0.01  # regenerated
    head = Audio(ref.samples[:, :24000], 24000)
    out = generator.generate("a calm ending", duration=2.0, seed=0, steps=3, init_audio=head)
    assert torch.equal(out.samples[0, 0, :24000], head.samples[0])
    assert out.samples[0, 0, 24000 + 480 :].abs().max() > 0  # the continuation is generated


def test_midi_melody_is_the_top_line_per_frame(tmp_path):
    import mido

    from tunesmith.conditioning.melody import melody_chroma

    mid = mido.MidiFile(ticks_per_beat=480)  # 120 BPM: a beat is 0.5 s
    track = mido.MidiTrack()
    mid.tracks.append(track)
    # C4 alone for a beat; then E4 over a held C4 for a beat (top line: E); a beat of rest; a drum hit; G3
    track += [mido.Message("note_on", note=60, velocity=80, time=0),
              mido.Message("note_on", note=64, velocity=80, time=480),
              mido.Message("note_off", note=64, time=480), mido.Message("note_off", note=60, time=0),
              mido.Message("note_on", channel=9, note=36, velocity=100, time=480),
              mido.Message("note_off", channel=9, note=36, time=0),
              mido.Message("note_on", note=55, velocity=80, time=0), mido.Message("note_on", note=55, velocity=0, time=480)]
    path = tmp_path / "tune.mid"
    mid.save(path)
    chroma = melody_chroma(path, frame_rate=10.0, num_frames=22)
    top = [int(c.argmax()) if c.sum() > 0 else None for c in chroma[0].T]
    assert top == [0] * 5 + [4] * 5 + [None] * 5 + [7] * 5 + [None] * 2
    (tmp_path / "bad.mid").write_bytes(b"MThd not really")
    with pytest.raises(ValueError, match="bad.mid is not a readable MIDI file"):
        melody_chroma(tmp_path / "bad.mid", 10.0, 10)


def test_a_melody_control_on_a_diffusion_model_raises_its_accuracy(generator, tmp_path):
    """DITTO's melody control: a reference's dominant pitch class per frame, followed by optimising the noise."""
    notes = torch.tensor([261.63, 329.63, 392.0, 523.25]).repeat_interleave(12000)  # C E G C, half a second each
    ref = Audio(0.3 * torch.sin(2 * torch.pi * torch.cumsum(notes, 0) / 24000)[None], 24000)
    out = generator.generate("a tune", duration=2.0, seed=0, steps=3, melody=ref, control_iterations=8,
                             control_lr=0.3, control_steps=3)
    report = out.info["control_report"]
    first, last = report["optimisation_loss"]
    assert last < first  # the loss went down
    assert 0.0 <= report["melody"]["accuracy"] <= 1.0 and report["melody"]["loss"] > 0
    with pytest.raises(ValueError, match="do not combine with init_audio"):
        generator.generate("a tune", duration=2.0, seed=0, melody=ref, init_audio=ref)


def test_a_controlled_generation_reports_one_count_over_optimisation_and_sampling(generator):
    seen = []
    generator.generate("x", duration=1.0, seed=0, steps=3, intensity="0:-30,1:-10", control_iterations=2,
                       control_steps=2, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
