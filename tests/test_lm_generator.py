"""The token-LM generator end to end, with a small exact scalar codec written here.

The codec below is a real (if simple) residual quantizer: each frame's mean sample in
[-1, 1] is written in base N with K digits, one per codebook, and decoded back to a
constant frame.  It is not a stand-in for behaviour under test: it gives the
generator a codec whose round trip is exact, so prompts can be checked sample by sample.
"""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from tunesmith.audio import Audio
from tunesmith.checkpoint import register_model
from tunesmith.generator import Generator, load_generator
from tunesmith.lm.generator import TokenLMGenerator
from tunesmith.lm.model import LMConfig, TokenLM

K, N, SR, HOP = 3, 16, 3200, 64  # 50 frames per second



pytestmark = pytest.mark.usefixtures("one_thread")

@dataclass
class ScalarCodecConfig:
    num_codebooks: int = K
    codebook_size: int = N
    sample_rate: int = SR
    hop: int = HOP


@register_model("test-scalar-codec", ScalarCodecConfig)
class ScalarCodec(nn.Module):
    def __init__(self, config: ScalarCodecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_codebooks, self.frame_rate = config.num_codebooks, config.sample_rate / config.hop

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        c = self.config
        frames = wav.mean(1).unfold(-1, c.hop, c.hop).mean(-1)  # (B, F)
        levels = c.codebook_size**c.num_codebooks
        u = ((frames.clamp(-1, 1) + 1) / 2 * levels).long().clamp_max(levels - 1)
        digits = [(u // c.codebook_size ** (c.num_codebooks - 1 - k)) % c.codebook_size for k in range(c.num_codebooks)]
        return torch.stack(digits, 1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        k = tokens.shape[1]
        u = sum(tokens[:, i].double() * c.codebook_size ** (c.num_codebooks - 1 - i) for i in range(k))
        x = (u + 0.5 * c.codebook_size ** (c.num_codebooks - k)) / c.codebook_size**c.num_codebooks * 2 - 1
        return x.float().repeat_interleave(c.hop, -1)[:, None]


def make_generator(melody: bool = False, beat_clock: bool = False) -> TokenLMGenerator:
    torch.manual_seed(0)
    lm = TokenLM(LMConfig(num_codebooks=K, codebook_size=N, dim=32, backbone_config={"num_layers": 2, "num_heads": 4},
                          melody=melody, max_frames=40, frame_rate=SR / HOP, beat_clock=beat_clock))
    if beat_clock:
        torch.nn.init.normal_(lm.beat_proj.weight)  # as if trained
    return TokenLMGenerator(lm, ScalarCodec(ScalarCodecConfig()))


def test_the_scalar_codec_round_trips():
    codec = ScalarCodec(ScalarCodecConfig())
    tokens = torch.randint(0, N, (2, K, 7))
    assert torch.equal(codec.encode(codec.decode(tokens)), tokens)


def test_generate_shapes_seeds_and_protocol():
    gen = make_generator()
    assert isinstance(gen, Generator)
    a = gen.generate(["a waltz", "a reel"], duration=0.3, seed=1)
    b = gen.generate(["a waltz", "a reel"], duration=0.3, seed=1)
    c = gen.generate(["a waltz", "a reel"], duration=0.3, seed=2)
    assert a.sample_rate == SR and a.samples.shape == (2, 1, int(0.3 * SR))
    assert torch.isfinite(a.samples).all() and a.samples.abs().max() <= 1
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)


def test_longer_than_context_by_windows():
    gen = make_generator()
    out = gen.generate("a march", duration=1.2, seed=0, top_k=5)  # 60 frames, context 40
    assert out.samples.shape == (1, 1, int(1.2 * SR))


def test_audio_prompt_is_continued():
    gen = make_generator()
    prompt_tokens = torch.randint(0, N, (1, K, 10), generator=torch.Generator().manual_seed(3))
    prompt = Audio(gen.codec.decode(prompt_tokens)[0], SR)  # 0.2 s
    out = gen.generate(["x", "y"], duration=0.6, seed=0, prompt_audio=prompt)
    assert torch.equal(out.samples[:, :, : 10 * HOP], prompt.samples.expand(2, -1, -1))


def test_melody_model_and_controls():
    gen = make_generator(melody=True)
    t = torch.arange(SR) / SR
    ref = Audio(0.5 * torch.sin(2 * math.pi * 440 * t)[None], SR)
    cond = gen.conditioning(["a"], 50, ref)
    assert cond.melody.shape == (1, 12, 50) and cond.melody[0, 9, 5:45].all()
    out = gen.generate("a", duration=0.4, seed=0, melody=ref)
    assert out.samples.shape == (1, 1, int(0.4 * SR))
    with pytest.raises(ValueError, match="unknown controls"):
        gen.generate("a", duration=0.4, steps=3)
    with pytest.raises(ValueError, match="duration"):
        gen.generate("a", duration=-1)
    with pytest.raises(ValueError, match="empty"):
        gen.generate(" ", duration=1)
    with pytest.raises(ValueError, match="not melody-conditioned"):
        make_generator().generate("a", duration=0.2, melody=ref)


def test_save_and_load_generator(tmp_path):
    gen = make_generator()
    before = gen.generate("a hymn", duration=0.3, seed=4)
    gen.save(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen")
    assert isinstance(loaded, TokenLMGenerator) and not loaded.int8
    assert torch.equal(loaded.generate("a hymn", duration=0.3, seed=4).samples, before.samples)


def test_int8_decoding_generator(tmp_path):
    gen = TokenLMGenerator(make_generator(melody=True).lm, ScalarCodec(ScalarCodecConfig()), int8=True)
    assert gen.decoder_lm is not gen.lm
    out = gen.generate("a hymn", duration=0.3, seed=4)
    assert out.samples.shape == (1, 1, int(0.3 * SR)) and torch.isfinite(out.samples).all()
    gen.save(tmp_path / "gen8")
    assert load_generator(tmp_path / "gen8").int8


def test_generator_referencing_the_bundled_codec_stores_fp16_and_no_codec_copy(tmp_path):
    from tunesmith.checkpoint import load_model, read_model_config

    codec = load_model("codec-24k")
    torch.manual_seed(0)
    lm = TokenLM(LMConfig(num_codebooks=2, codebook_size=codec.config.codebook_size, dim=32,
                          backbone_config={"num_layers": 1, "num_heads": 4}, max_frames=20))
    gen = TokenLMGenerator(lm, codec)
    with pytest.raises(ValueError, match="not a bundled model"):
        gen.save(tmp_path / "bad", codec_name="no-such-codec")
    out = gen.save(tmp_path / "gen", codec_name="codec-24k", fp16=True)
    assert not (out / "codec").exists()
    meta = read_model_config(out)
    assert meta["codec"] == "codec-24k" and meta["storage"] == "fp16"
    loaded = load_generator(out)
    for (name, a), b in zip(lm.state_dict().items(), loaded.lm.state_dict().values()):
        assert b.dtype == torch.float32 and torch.equal(a.half().float(), b), name
    assert gen.lm.state_dict()["head.weight"].dtype == torch.float32  # saving did not halve the live model
    audio = loaded.generate("a waltz", duration=0.2, seed=1)
    assert audio.sample_rate == 24000 and audio.samples.shape[-1] == 4800


def test_unconditional_generation_ignores_the_prompt():
    gen = make_generator()
    a = gen.generate("a waltz", duration=0.3, seed=1, unconditional=True)
    b = gen.generate("a reel", duration=0.3, seed=1, unconditional=True)
    c = gen.generate("a reel", duration=0.3, seed=1, cfg=100.0)  # a random LM barely listens: amplify
    assert torch.equal(a.samples, b.samples) and not torch.equal(b.samples, c.samples)


def test_a_beat_clock_model_keeps_the_tempo_the_prompt_names(tmp_path):
    from tunesmith.conditioning.beat import beat_clock

    gen = make_generator(beat_clock=True)
    cond = gen.conditioning(["a reel at 150 BPM", "a tune"], 50)
    torch.testing.assert_close(cond.beat[0], beat_clock(150.0, 50, SR / HOP))
    assert cond.beat[1].abs().sum() == 0  # no tempo named (no number, no tempo word): no clock
    fast = gen.generate("a reel at 150 BPM", duration=1.2, seed=0)  # longer than the context: two windows
    slow = gen.generate("a reel at 60 BPM", duration=1.2, seed=0)
    assert fast.samples.shape == (1, 1, int(1.2 * SR)) and not torch.equal(fast.samples, slow.samples)
    gen.save(tmp_path / "clocked")
    assert torch.equal(load_generator(tmp_path / "clocked").generate("a reel at 150 BPM", duration=1.2, seed=0).samples,
                       fast.samples)
    steady = TokenLMGenerator(gen.lm, gen.codec, unguided=("beat",))  # guidance scales the text alone
    assert not torch.equal(steady.generate("a reel at 150 BPM", duration=1.2, seed=0).samples, fast.samples)
    steady.cfg = 5.0
    steady.save(tmp_path / "steady")
    loaded = load_generator(tmp_path / "steady")
    assert loaded.unguided == ("beat",) and loaded.cfg == 5.0  # the model's own defaults travel with it
    assert torch.equal(loaded.generate("a reel", duration=0.4, seed=0).samples,
                       loaded.generate("a reel", duration=0.4, seed=0, cfg=5.0).samples)
    with pytest.raises(ValueError, match="unknown conditions"):
        TokenLMGenerator(gen.lm, gen.codec, unguided=("tempo",))


def test_melody_end_to_end_through_the_cli(tmp_path, capsys):
    """`tunesmith generate --melody REF.wav` hands the melody to a melody model (it once passed a
    bare tensor and crashed) and the result is what the Python API gives for the same file."""
    import soundfile as sf

    from tunesmith.audio import load_audio
    from tunesmith.cli import main

    model_dir = make_generator(melody=True).save(tmp_path / "melody-model")
    t = torch.arange(SR) / SR
    for name, hz in (("a.wav", 440.0), ("b.wav", 311.0)):
        sf.write(tmp_path / name, (0.5 * torch.sin(2 * math.pi * hz * t)).numpy(), SR)
    outputs = {}
    for name in ("a.wav", "b.wav"):
        out = tmp_path / f"out-{name}"
        status = main(["generate", "a tune", "--model", str(model_dir), "--melody", str(tmp_path / name),
                       "--duration", "0.4", "-o", str(out), "--no-progress"])
        assert status == 0, capsys.readouterr().err
        outputs[name] = load_audio(out).samples
    assert not torch.equal(outputs["a.wav"], outputs["b.wav"])  # the melody reached the model
    reference = load_generator(model_dir).generate("a tune", duration=0.4, seed=0,
                                                   melody=load_audio(tmp_path / "a.wav", sample_rate=SR, channels=1))
    # the file holds 16-bit samples
    assert (outputs["a.wav"] - reference.samples[0]).abs().max() <= 1 / 32768 + 1e-6
    plain_dir = make_generator().save(tmp_path / "plain-model")
    status = main(["generate", "a tune", "--model", str(plain_dir), "--melody", str(tmp_path / "a.wav"),
                   "--duration", "0.4", "-o", str(tmp_path / "never.wav"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "takes no melody" in err and err.count("\n") == 1
    assert not (tmp_path / "never.wav").exists()


def test_per_prompt_seeds_reproduce_single_generations_and_callbacks_report_steps():
    """A batch with one seed per prompt gives each row what that prompt alone gives with its seed
    (a server batches requests and every result stays reproducible); the callback sees every step
    and can stop the decoding."""
    gen = make_generator()
    batch = gen.generate(["a waltz", "a reel", "a hymn"], duration=0.3, seed=[5, 9, 5]).samples
    for i, (prompt, seed) in enumerate((("a waltz", 5), ("a reel", 9), ("a hymn", 5))):
        alone = gen.generate(prompt, duration=0.3, seed=seed).samples[0]
        assert torch.allclose(batch[i], alone, atol=1e-6), prompt
    steps = []
    gen.generate("a waltz", duration=0.3, seed=1, callback=lambda done, total: steps.append((done, total)))
    total = steps[-1][1]
    assert steps == [(i, total) for i in range(1, total + 1)] and total >= 15

    class Stop(Exception):
        pass

    def stop_at_3(done, total):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        gen.generate("a waltz", duration=0.3, callback=stop_at_3)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        gen.generate(["a", "b", "c"], duration=0.3, seed=[1, 2])
