"""Time-stamped prompts: "0:00-0:20 solo piano; 0:20-0:45 strings join" conditions each frame on
its own section's text (the DiT by per-section cross-attention mixed by frame weights, the token
LM by switching its cross mask at the section's frames), and a plain prompt is untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tunesmith.conditioning.beat import beat_clock
from tunesmith.conditioning.conditions import (
    from_prompts,
    section_clock,
    section_keys,
    section_weights,
)
from tunesmith.conditioning.key import key_vector
from tunesmith.conditioning.prompt import (
    TimedSegment,
    format_timed_prompt,
    is_timed,
    mmss,
    parse_timed_prompt,
)
from tunesmith.diffusion.dit import DiT, DiTConfig

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.usefixtures("one_thread")

THREE = "0:00-0:20 solo piano, quiet; 0:20-0:45 strings join, louder; 0:45-1:00 piano alone again"


# -- parsing -----------------------------------------------------------------------------------

def test_sections_are_parsed_in_order_with_their_text():
    assert parse_timed_prompt(THREE) == [TimedSegment(0, 20, "solo piano, quiet"),
                                         TimedSegment(20, 45, "strings join, louder"),
                                         TimedSegment(45, 60, "piano alone again")]
    assert parse_timed_prompt("0:05-0:12.5 harp; 0:12.5-1:02 choir.")[1] == TimedSegment(12.5, 62, "choir")
    assert parse_timed_prompt("0:05-0:10 harp")[0].start == 0  # the first section starts the piece


def test_plain_prompts_and_corpus_captions_are_not_time_stamped():
    assert parse_timed_prompt("a waltz for strings, 90 BPM") is None
    caption = "A pop tune in B-flat major. 0:00-0:10 electric piano, forceful; 0:10-0:22 electric bass comes in."
    assert not is_timed(caption) and parse_timed_prompt(caption) is None  # trained as one prompt: stays one


@pytest.mark.parametrize("text,message", [
    ("0:00-0:20 piano; 0:10-0:30 strings", "section 2 .*starts before section 1 ends"),
    ("0:00-0:20 piano; 0:30-0:25 strings", "section 2 .*ends before it starts"),
    ("0:00-0:20 piano; strings", "section 2 .*does not start with a time span"),
    ("0:00-0:20 ; 0:20-0:30 strings", "section 1 .*has no text"),
])
def test_bad_sections_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_timed_prompt(text)


def test_sections_from_python_format_to_the_same_text():
    text = format_timed_prompt([(0, 12.5, "piano"), (12.5, 30, "strings")])
    assert text == "0:00-0:12.5 piano; 0:12.5-0:30 strings"
    assert parse_timed_prompt(text) == [TimedSegment(0, 12.5, "piano"), TimedSegment(12.5, 30, "strings")]
    assert mmss(75) == "1:15" and mmss(0.25) == "0:00.25"
    with pytest.raises(ValueError, match="section 2"):
        format_timed_prompt([(0, 5, "a"), (5, 9, "b; c")])


# -- frame weights, clocks, keys ----------------------------------------------------------------

def test_section_weights_sum_to_one_and_crossfade_linearly():
    fr = 10.0
    w = section_weights([0.0, 2.0, 5.0], 70, fr, crossfade=1.0)
    torch.testing.assert_close(w.sum(0), torch.ones(70))
    t = (torch.arange(70) + 0.5) / fr
    assert (w[0][t < 1.5] == 1).all() and (w[0][t > 2.5] == 0).all()
    assert (w[1][(t > 2.5) & (t < 4.5)] == 1).all() and (w[2][t < 4.5] == 0).all()
    # at t = 2.05 s the ramp centred on 2 s is 0.5 + 0.05 = 0.55 into section 2
    assert w[1][20].item() == pytest.approx(0.55) and w[0][20].item() == pytest.approx(0.45)
    hard = section_weights([0.0, 2.0], 40, fr, crossfade=0.0)
    assert torch.equal(hard[1], (t[:40] >= 2).float())


def test_the_clock_follows_the_sections_tempo():
    fr = 25.0
    sections = parse_timed_prompt("0:00-0:02 piano, 90 BPM; 0:02-0:04 strings join; 0:04-0:06 drums, 150 BPM")
    clock = section_clock(sections, 150, fr)
    # 90 BPM from frame 0 through the second section (which names none: the tempo holds, no jump)
    torch.testing.assert_close(clock[:, :100], beat_clock(90, 100, fr))
    # a new tempo starts on a beat at its section's first frame (t = 4 s: frame 100)
    torch.testing.assert_close(clock[:, 100:], beat_clock(150, 50, fr))
    assert section_clock(parse_timed_prompt("0:00-0:02 piano; 0:02-0:04 harp"), 100, fr).abs().sum() == 0


def test_keys_follow_the_sections_and_reach_the_frames():
    sections = parse_timed_prompt("0:00-0:01 piano in D minor; 0:01-0:02 strings join; 0:02-0:03 F major")
    keys = section_keys(sections)
    torch.testing.assert_close(keys[1], key_vector(2, "minor"))
    torch.testing.assert_close(keys[2], key_vector(5, "major"))

    class Fixed:  # a deterministic text encoder: one token per text, its length as the state
        dim = 4

        def encode(self, texts):
            return torch.tensor([[[len(t), 1.0, 0.0, 0.0]] for t in texts]), torch.ones(len(texts), 1, dtype=torch.bool)

    cond = from_prompts(["0:00-0:01 piano in D minor; 0:01-0:02 F major"], Fixed(), num_frames=20, frame_rate=10.0,
                        beat_clock=True, key_input=True, duration=2.0)
    assert cond.key.shape == (1, 26, 20) and cond.segments.shape == (1, 2, 20)
    torch.testing.assert_close(cond.key[0, :, 5], key_vector(2, "minor"))
    torch.testing.assert_close(cond.key[0, :, 15], key_vector(5, "major"))
    torch.testing.assert_close(cond.text[0, :, 0], torch.tensor([len("piano in D minor"), len("F major")], dtype=torch.float))
    with pytest.raises(ValueError, match=r"section 2 \(0:01-0:02\) starts after the end"):
        from_prompts(["0:00-0:01 piano; 0:01-0:02 harp"], Fixed(), num_frames=10, frame_rate=10.0, duration=1.0)


def test_plain_prompts_build_exactly_the_conditioning_of_before():
    class Fixed:
        dim = 4

        def encode(self, texts):
            return torch.arange(len(texts) * 8, dtype=torch.float).view(len(texts), 2, 4), torch.ones(len(texts), 2, dtype=torch.bool)

    cond = from_prompts(["a waltz, 90 BPM, D minor", "a reel"], Fixed(), num_frames=30, frame_rate=10.0,
                        beat_clock=True, key_input=True, duration=3.0)
    assert cond.segments is None and cond.key.shape == (2, 26) and cond.text.shape == (2, 2, 4)
    torch.testing.assert_close(cond.beat[0], beat_clock(90, 30, 10.0))


# -- the DiT: frame t reads only its own section's text ---------------------------------------------

def _dit(depth: int) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=4, width=32, depth=depth, heads=2, text_dim=8, fourier_dim=16, max_seconds=8.0))
    with torch.no_grad():
        model.proj_out.weight.normal_(0, 0.1)
    return model.eval()


def test_dit_frames_get_gradient_only_from_their_own_sections_text():
    # one block: self-attention comes before cross-attention, so output frame t depends on the
    # text only through its own cross-attention: the gradient test is exact
    model, t = _dit(1), 30
    torch.manual_seed(1)
    x, text = torch.randn(1, 4, t), torch.randn(1, 3 * 5, 8, requires_grad=True)
    mask = torch.ones(1, 15, dtype=torch.bool)
    mask[0, 13:] = False  # padding in the last section
    weights = section_weights([0.0, 1.0, 2.0], t, 10.0, crossfade=0.4)[None]
    y = model(x, torch.tensor([0.3]), text=text, text_mask=mask, segments=weights)
    sections = weights[0].argmax(0)
    pure = (weights[0] == 1).any(0)  # frames outside every crossfade
    for k in range(3):
        frames = ((sections == k) & pure).nonzero().flatten()
        grad, = torch.autograd.grad(y[..., frames].sum(), text, retain_graph=True)
        own = slice(5 * k, 5 * k + 5)
        assert grad[0, own].abs().sum() > 0
        others = torch.ones(15, dtype=torch.bool)
        others[own] = False
        assert grad[0, others].abs().max() == 0, f"section {k} frames read another section's text"
    # a frame in a crossfade reads both neighbours, and nothing else
    fade = ((weights[0, 0] > 0) & (weights[0, 1] > 0)).nonzero().flatten()[:1]
    grad, = torch.autograd.grad(y[..., fade].sum(), text)
    assert grad[0, :5].abs().sum() > 0 and grad[0, 5:10].abs().sum() > 0 and grad[0, 10:].abs().max() == 0


def test_dit_cross_attention_of_a_frame_is_unchanged_when_other_sections_text_is_swapped():
    model, t = _dit(2), 24
    torch.manual_seed(2)
    text = torch.randn(1, 2 * 4, 8)
    swapped = text.clone()
    swapped[:, 4:] = torch.randn(1, 4, 8)  # the second section says something else
    weights = section_weights([0.0, 1.2], t, 10.0, crossfade=0.4)[None]
    h = torch.randn(1, t + 1, 32)
    block = model.blocks[1]
    a = block.cross_attention(h, model.encode_text(text, None, 1, segments=weights))
    b = block.cross_attention(h, model.encode_text(swapped, None, 1, segments=weights))
    first = 1 + (weights[0, 0] == 1).nonzero().flatten()  # +1: the global token comes first
    assert torch.equal(a[:, first], b[:, first])
    assert not torch.equal(a[:, -1], b[:, -1])


@pytest.fixture(scope="module")
def generator():
    from tunesmith.codec.model import VAECodec, VAEConfig
    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.diffusion.generator import LatentDiffusionGenerator

    torch.manual_seed(0)
    vae = VAECodec(VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8))
    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_dim=8, width=32, depth=2, heads=2, text_dim=384, fourier_dim=16, max_seconds=8.0,
                        beat_clock=True, key_input=True))
    with torch.no_grad():
        for p in (dit.proj_out.weight, dit.beat_proj.weight, dit.key_proj.weight):
            p.normal_(0, 0.1)
    return LatentDiffusionGenerator(dit.eval(), vae.eval(), get_text_encoder("minilm"))


def test_a_one_section_prompt_is_bit_identical_to_the_plain_prompt(generator):
    plain = generator.generate("a waltz for strings in D minor, 90 BPM", duration=2.0, seed=3, steps=3).samples
    timed = generator.generate("0:00-0:02 a waltz for strings in D minor, 90 BPM", duration=2.0, seed=3, steps=3).samples
    assert torch.equal(plain, timed)


def test_sections_as_python_tuples_equal_the_typed_prompt_and_change_the_audio(generator):
    sections = [(0, 1, "solo piano, quiet"), (1, 2, "brass band, loud, 140 BPM")]
    a = generator.generate(sections, duration=2.0, seed=0, steps=3).samples
    b = generator.generate("0:00-0:01 solo piano, quiet; 0:01-0:02 brass band, loud, 140 BPM", duration=2.0, seed=0,
                           steps=3).samples
    assert torch.equal(a, b)
    whole = generator.generate("solo piano, quiet", duration=2.0, seed=0, steps=3).samples
    assert not torch.equal(a, whole)
    cond, uncond = generator.conditioning([format_timed_prompt(sections)], 2.0)
    assert cond.segments.shape[1] == 2 and not uncond.text_mask.any()
    assert cond.beat[0, :, : generator.num_frames(1.0) - 1].abs().sum() == 0 and cond.beat[0, :, -1].abs().sum() > 0
    with pytest.raises(ValueError, match="starts after the end"):
        generator.generate(sections, duration=0.5, seed=0, steps=2)


# -- the token LM: the cross mask switches at the sections' frames --------------------------------

def _lm(layers: int):
    from test_lm_generator import HOP, SR, K, N, ScalarCodec, ScalarCodecConfig

    from tunesmith.lm.generator import TokenLMGenerator
    from tunesmith.lm.model import LMConfig, TokenLM

    torch.manual_seed(0)
    lm = TokenLM(LMConfig(num_codebooks=K, codebook_size=N, dim=32, backbone_config={"num_layers": layers, "num_heads": 4},
                          max_frames=40, frame_rate=SR / HOP))
    return TokenLMGenerator(lm, ScalarCodec(ScalarCodecConfig()))


def _tokens(gen, prompt: str, duration: float, prompt_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's own decoding path (conditioning, guidance, sampling), up to the tokens."""
    from tunesmith.lm.decode import generate_tokens

    frames = round(duration * gen.frame_rate)
    cond = gen.conditioning([prompt], frames)
    return generate_tokens(gen.lm, frames, cond, batch_size=1, prompt=prompt_tokens, cfg_scale=3.0, top_k=4, seed=0)


def test_lm_step_masks_show_each_step_only_its_sections_text():
    gen = _lm(2)
    frames = 30
    cond = gen.conditioning(["0:00-0:00.2 a waltz; 0:00.2-0:00.6 a loud brass reel in D minor"], frames)
    masks = gen.lm.step_cross_masks(cond, frames)  # (1, S, 1 + 2 * per)
    per = (masks.shape[-1] - 1) // 2
    from tunesmith.lm.patterns import layout, step_frames

    owner = (step_frames(layout(gen.lm.config.pattern, gen.lm.config.num_codebooks, frames)) >= 10).long()
    assert masks[0, :, 0].all()  # the always-visible first entry
    for s, k in enumerate(owner.tolist()):
        seen = masks[0, s, 1:].view(2, per).any(-1)
        assert seen[k] and not seen[1 - k], s


def test_lm_later_sections_text_does_not_reach_earlier_frames():
    gen = _lm(2)
    a = _tokens(gen, "0:00-0:00.3 a waltz; 0:00.3-0:00.6 a loud brass reel", 0.6)
    b = _tokens(gen, "0:00-0:00.3 a waltz; 0:00.3-0:00.6 solo harp, soft", 0.6)
    boundary = 15  # 0.3 s at 50 frames per second
    assert torch.equal(a[..., :boundary], b[..., :boundary])
    assert not torch.equal(a, b)
    # without the switch every step would read both sections: the plain prompt of both texts differs early
    both = _tokens(gen, "a waltz; a loud brass reel", 0.6)
    assert not torch.equal(both[..., :boundary], a[..., :boundary])


def test_lm_frames_after_a_boundary_read_only_their_own_sections_text():
    # one layer: the cached self-attention keys hold no text, so with the first section's frames
    # given as an audio prompt, the second section's tokens depend on its text alone
    gen = _lm(1)
    prompt = torch.randint(0, gen.lm.config.codebook_size, (1, gen.lm.config.num_codebooks, 15),
                           generator=torch.Generator().manual_seed(4))
    a = _tokens(gen, "0:00-0:00.3 a waltz; 0:00.3-0:00.6 a loud brass reel", 0.6, prompt)
    b = _tokens(gen, "0:00-0:00.3 solo harp, soft; 0:00.3-0:00.6 a loud brass reel", 0.6, prompt)
    c = _tokens(gen, "0:00-0:00.3 a waltz; 0:00.3-0:00.6 solo harp, soft", 0.6, prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_lm_plain_prompt_is_unchanged_by_a_one_section_prompt():
    gen = _lm(2)
    assert torch.equal(_tokens(gen, "a waltz in D minor", 0.5), _tokens(gen, "0:00-0:00.5 a waltz in D minor", 0.5))



def test_a_section_with_tempo_words_gets_the_tempo_a_plain_prompt_would():
    """Tempo words without a number draw the section's tempo from the words' range with the seed,
    exactly as a plain prompt's clock does (tunesmith.conditioning.tempo_words)."""
    from tunesmith.conditioning.beat import beat_clock
    from tunesmith.conditioning.conditions import section_clock
    from tunesmith.conditioning.prompt import parse_timed_prompt
    from tunesmith.conditioning.tempo_words import prompt_tempo, tempo_words

    sections = parse_timed_prompt("0:00-0:04 solo piano, quiet; 0:04-0:08 a fast jig on the fiddle")
    for seed in (0, 5):
        clock = section_clock(sections, 200, 25.0, seed=seed)
        assert clock[:, :100].abs().sum() == 0  # no tempo named yet
        bpm = prompt_tempo("a fast jig on the fiddle", seed)
        low, high = tempo_words("a fast jig").low, tempo_words("a fast jig").high
        assert low <= bpm <= high
        torch.testing.assert_close(clock[:, 100:], beat_clock(bpm, 100, 25.0))


# -- training on time-stamped windows ---------------------------------------------------------

SEGMENTS = [{"start": 0.0, "end": 6.0, "instruments": ["marimba"], "dynamics": "p"},
            {"start": 6.0, "end": 9.0, "instruments": ["marimba", "trumpet"], "dynamics": "f"},
            {"start": 9.0, "end": 9.5, "instruments": ["trumpet"], "dynamics": "ff"},
            {"start": 9.5, "end": 16.0, "instruments": ["trumpet"], "dynamics": "mp"}]


def test_a_window_hears_its_sections_from_its_own_start():
    import numpy as np

    from tunesmith.data.captions import DYNAMIC_WORDS, window_sections

    rng = np.random.default_rng(0)
    sections = window_sections(SEGMENTS, 4.0, 8.0, rng, {"tempo_bpm": 96, "key": "F", "mode": "major"})
    # 4-6 s of the first, 6-9 s of the second, 9-9.5 s of the third (too short: its time goes to the one before)
    # and 9.5-12 s of the last, relative to the window's start
    assert [(a, b) for a, b, _ in sections] == [(0.0, 2.0), (2.0, 5.5), (5.5, 8.0)]
    first, second, last = (text for _, _, text in sections)
    assert "marimba" in first and any(w in first for w in DYNAMIC_WORDS["p"])
    assert "trumpet" in second and any(w in second for w in DYNAMIC_WORDS["f"])
    assert any(w in last for w in DYNAMIC_WORDS["mp"]) and "BPM" not in second + last
    assert window_sections(SEGMENTS, 0.5, 5.0, rng) == []  # one section only: a plain window
    assert parse_timed_prompt(format_timed_prompt(sections))[1].start == 2.0


def test_time_stamped_training_windows_cross_a_boundary_and_condition_like_generation(tmp_path):
    import numpy as np

    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.data.cache import write_frame_cache
    from tunesmith.diffusion.train import DataConfig, DiffusionTask, RunConfig, collate
    from tunesmith.train.engine import TrainConfig

    meta = {"kind": "latents", "model": "test", "frame_rate": 25.0, "sample_rate": 24000, "channels": 1, "latent_dim": 8}
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal((400, 8)).astype(np.float32),
              {"id": f"c{i}", "caption": "a marimba piece", "duration": 16.0,
               "tags": {"segments": SEGMENTS if i else [], "tempo_bpm": 96}}) for i in range(2)]
    write_frame_cache(tmp_path / "cache", "train", clips, meta)
    model = DiTConfig(latent_dim=8, width=32, depth=1, heads=2, text_dim=384, fourier_dim=16, max_seconds=20.0, beat_clock=True)
    data = DataConfig(cache_dir=str(tmp_path / "cache"), segment_frames=200, section_probability=1.0, mask_probability=0.0)
    task = DiffusionTask(RunConfig(model=model, data=data, train=TrainConfig(out_dir=str(tmp_path / "run"))))
    items = [task.train_dataset.get_item(1, np.random.default_rng(seed)) for seed in range(12)]
    for item in items:
        sections = parse_timed_prompt(item["caption"])
        assert sections is not None and len(sections) >= 2
        start = item["seconds_start"]
        inside = [b - start for b in (6.0, 9.0, 9.5) if 0 < b - start < 8.0]
        assert any(1.5 <= t <= 6.5 for t in inside)  # a boundary in the window's middle
    plain = task.train_dataset.get_item(0, np.random.default_rng(0))
    assert plain["caption"] == "a marimba piece"  # a clip without sections trains as before

    batch = collate([items[0], plain])
    cond = task.conditioning(batch, torch.device("cpu"))
    expected = from_prompts([items[0]["caption"], plain["caption"]], get_text_encoder("minilm"), num_frames=200,
                            frame_rate=25.0)
    assert torch.equal(cond.text, expected.text) and torch.equal(cond.text_mask, expected.text_mask)
    assert torch.equal(cond.segments, expected.segments)
    assert torch.equal(cond.seconds_start, batch["seconds_start"])  # timing (and the clip's clock) from the clip
    loss, _ = task.training_step({"dit": task.model}, batch, 0)
    assert torch.isfinite(loss)
