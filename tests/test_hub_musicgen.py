"""MusicGen checkpoints (transformers layout) run by tunesmith, against transformers itself.

Tiny random MusicGen models (a 2-layer T5, a 2-layer decoder, a small EnCodec) are built
from configs and saved with ``save_pretrained`` beside a word-level tokenizer, so nothing
is downloaded.  Stated tolerances: decoder logits within 1e-5 (fp32); greedy tokens
identical to ``generate(do_sample=False)``; the decoded audio within 1e-5; int8 decoding's
logits within 10% of the largest fp32 logit (1% on average), the same argmax on 90% of cells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tunesmith.conditioning.conditions import Conditioning  # noqa: E402
from tunesmith.errors import CheckpointError, ConfigError  # noqa: E402
from tunesmith.lm.decode import generate_tokens  # noqa: E402
from tunesmith.lm.patterns import layout, to_sequence  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N = 16  # codebook entries (the start and pad id is N)
PROMPTS = ["a calm piano waltz for strings", "loud drums"]  # different lengths: padding is exercised
WORDS = ["<pad>", "</s>", "<unk>", "a", "calm", "piano", "loud", "drums", "waltz", "for", "strings", "jazz"]


def build_musicgen(directory: Path, channels: int = 1) -> None:
    """A random MusicGen (and a tokenizer) written as transformers writes a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              PreTrainedTokenizerFast, T5Config)

    torch.manual_seed(0)
    text = T5Config(vocab_size=len(WORDS), d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                    relative_attention_num_buckets=8)
    audio = EncodecConfig(sampling_rate=3200, target_bandwidths=[2.0], hidden_size=16, num_filters=4,
                          upsampling_ratios=[8, 8], codebook_size=N, codebook_dim=16, num_lstm_layers=1)  # 50 Hz, 4 codebooks
    decoder = MusicgenDecoderConfig(vocab_size=N, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                                    num_codebooks=4 * channels, audio_channels=channels, max_position_embeddings=64,
                                    pad_token_id=N, bos_token_id=N)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
    with torch.no_grad():  # larger random weights than the init: peaked logits, so greedy choices are clear
        for name, p in model.decoder.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    g = model.generation_config
    g.pad_token_id = g.decoder_start_token_id = g.bos_token_id = N
    g.guidance_scale, g.top_k, g.do_sample, g.max_length = 3.0, 250, True, 200
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # T5 appends </s>
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class Pair:
    """One checkpoint directory, as transformers and as tunesmith load it."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration
        from transformers.utils import logging as hf_logging

        from tunesmith.hub.musicgen import load_musicgen

        hf_logging.set_verbosity_error()
        self.directory = directory
        self.ref = MusicgenForConditionalGeneration.from_pretrained(directory).eval()
        self.batch = AutoTokenizer.from_pretrained(directory)(PROMPTS, padding=True, return_tensors="pt")
        self.gen = load_musicgen(directory)
        self.K = self.ref.decoder.num_codebooks
        self.channels = self.gen.codec.channels

    def text(self) -> Conditioning:
        return Conditioning(*self.gen.text_encoder.encode(PROMPTS))

    def reference_tokens_and_audio(self, frames: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' greedy generate: the tokens (caught on their way to EnCodec) and the audio."""
        seen = []
        decode = self.ref.audio_encoder.decode

        def spy(codes, *args, **kwargs):
            seen.append(codes[0].clone())
            return decode(codes, *args, **kwargs)

        self.ref.audio_encoder.decode = spy
        try:
            with torch.no_grad():
                audio = self.ref.generate(**self.batch, do_sample=False, guidance_scale=guidance,
                                          max_length=frames + self.K // self.channels)
        finally:
            self.ref.audio_encoder.decode = decode
        tokens = seen[0] if self.channels == 1 else torch.stack(seen, 2).flatten(1, 2)  # channels interleaved
        return tokens, audio


@pytest.fixture(scope="module", params=[1, 2], ids=["mono", "stereo"])
def pair(request, tmp_path_factory) -> Pair:
    directory = tmp_path_factory.mktemp(f"musicgen{request.param}")
    build_musicgen(directory, channels=request.param)
    return Pair(directory)


@pytest.fixture(scope="module")
def mono(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("musicgen-mono")
    build_musicgen(directory)
    return directory


def teacher_forced(pair: Pair, frames: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens laid out in the checkpoint's delay pattern: ours (B, K, S) and
    transformers' decoder input (B * K, S): the start id, then the steps but the last."""
    c = pair.gen.lm.config
    tokens = torch.randint(0, N, (len(PROMPTS), pair.K, frames), generator=torch.Generator().manual_seed(seed))
    steps = to_sequence(tokens, layout(c.pattern, pair.K, frames), fill=N)
    theirs = torch.cat([torch.full((len(PROMPTS), pair.K, 1), N), steps[:, :, :-1]], 2)
    return steps, theirs.reshape(len(PROMPTS) * pair.K, -1)


def test_decoder_logits_match_transformers(pair):
    steps, decoder_input = teacher_forced(pair)
    shape = (len(PROMPTS), pair.K, steps.shape[2], N)
    with torch.no_grad():
        text_states = pair.ref.text_encoder(**pair.batch).last_hidden_state
        theirs = pair.ref(**pair.batch, decoder_input_ids=decoder_input).logits.reshape(shape)
        # the unconditional rows of transformers' guidance: zero text states, nothing attended
        theirs_null = pair.ref(encoder_outputs=(torch.zeros_like(text_states),),
                               attention_mask=torch.zeros_like(pair.batch.attention_mask),
                               decoder_input_ids=decoder_input).logits.reshape(shape)
        cond = pair.text()
        ours, ours_null = pair.gen.lm(steps, cond), pair.gen.lm(steps, cond.null())
    assert theirs.abs().max() > 0.1  # not a vacuous comparison
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours_null - theirs_null).abs().max() <= 1e-5
    assert (theirs - theirs_null).abs().max() > 1e-2  # the text matters, so the null rows are tested


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_greedy_tokens_and_audio_are_transformers(pair, guidance):
    frames = 16
    tokens, audio = pair.reference_tokens_and_audio(frames, guidance)
    ours = generate_tokens(pair.gen.lm, frames, pair.text(), cfg_scale=guidance, temperature=0.0)
    assert ours.shape == tokens.shape == (len(PROMPTS), pair.K, frames)
    assert torch.equal(ours, tokens)
    assert len(set(tokens.flatten().tolist())) > 4  # greedy decoding did not collapse onto one token
    out = pair.gen.generate(PROMPTS, duration=frames / pair.gen.frame_rate, seed=0, temperature=0.0, cfg=guidance)
    assert out.sample_rate == 3200 and out.samples.shape == (len(PROMPTS), pair.channels, frames * 64)
    assert (out.samples - audio.clamp(-1, 1)).abs().max() <= 1e-5


def test_int8_decoding_is_close(pair):
    from tunesmith.lm.int8 import quantize_int8

    steps, _ = teacher_forced(pair, frames=12, seed=2)
    cond = pair.text()
    with torch.no_grad():
        fp32 = pair.gen.lm(steps, cond)
        int8 = quantize_int8(pair.gen.lm)(steps, cond)
    error = (int8 - fp32).abs()
    assert 0 < error.max() <= 0.1 * fp32.abs().max() and error.mean() <= 0.01 * fp32.abs().max()
    assert (int8.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.9
    quick = pair.gen.use_int8()
    try:
        audio = quick.generate(PROMPTS[:1], duration=0.2, seed=0)
        assert audio.samples.shape == (1, pair.channels, 640) and torch.isfinite(audio.samples).all()
    finally:
        pair.gen.use_int8(False)


def test_seeds_controls_and_prompt_audio(pair):
    """tunesmith's decoding controls on a MusicGen: per-prompt seeds, top-p, the step callback,
    an audio prompt encoded by EnCodec and continued."""
    gen = pair.gen
    both = gen.generate(PROMPTS, duration=0.2, seed=[3, 4], top_k=5, top_p=0.9)
    alone = gen.generate(PROMPTS[1:], duration=0.2, seed=4, top_k=5, top_p=0.9)
    assert torch.allclose(both.samples[1:], alone.samples, atol=1e-6)
    calls = []
    gen.generate(PROMPTS[:1], duration=0.1, seed=0, callback=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] == 5 + pair.K // pair.channels - 1
    prompt = gen.decode(torch.randint(0, N, (1, pair.K, 4)), 4 / 50)
    tokens = gen.prompt_tokens(prompt, 1)
    assert tokens.shape == (1, pair.K, 4)
    continued = gen.generate(PROMPTS[:1], duration=0.2, seed=0, prompt_audio=prompt)
    assert continued.samples.shape == (1, pair.channels, 640)


def test_load_and_cli_write_a_wav(mono, tmp_path, monkeypatch):
    import soundfile

    import tunesmith
    from tunesmith.cli import main
    from tunesmith.hub.musicgen import MusicgenGenerator

    assert isinstance(tunesmith.load(str(mono)), MusicgenGenerator)
    monkeypatch.chdir(mono.parent)  # a relative directory, as a user would type it
    out = tmp_path / "mg.wav"
    assert main(["generate", "calm piano", "--model", f"./{mono.name}", "--duration", "0.5", "--seed", "1",
                 "--top-k", "4", "-o", str(out), "--no-progress"]) == 0
    data, rate = soundfile.read(out)
    assert rate == 3200 and data.shape == (1600,) and abs(data).max() > 0
    assert json.loads((tmp_path / "mg.wav.json").read_text())["model"] == f"./{mono.name}"
    # --int8: the same decoding with int8 weights
    assert main(["generate", "calm piano", "--model", f"./{mono.name}", "--duration", "0.5", "--seed", "1",
                 "--top-k", "4", "--int8", "-o", str(tmp_path / "mg8.wav"), "--no-progress"]) == 0
    assert soundfile.read(tmp_path / "mg8.wav")[0].shape == (1600,)
    assert json.loads((tmp_path / "mg8.wav.json").read_text())["int8"] is True
    assert main(["generate", "x", "--int8", "--model", "tunesmith-small-dit", "-o", str(tmp_path / "no.wav")]) == 2
    assert not (tmp_path / "no.wav").exists()


# ---------------------------------------------------------------------------
# broken checkpoints: one line naming the weight


def rewrite(source: Path, target: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(source / "model.safetensors")
    change(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


LAYER = "decoder.model.decoder.layers.1."


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop(LAYER + "encoder_attn.v_proj.weight"), [f"'{LAYER}encoder_attn.v_proj.weight' is missing"]),
    (lambda t: t.pop("decoder.lm_heads.3.weight"), ["'decoder.lm_heads.3.weight' is missing"]),
    (lambda t: t.pop("audio_encoder.quantizer.layers.2.codebook.embed"),
     ["'audio_encoder.quantizer.layers.2.codebook.embed'", "EnCodec", "missing"]),
    (lambda t: t.update({LAYER + "fc1.weight": t[LAYER + "fc1.weight"][:48]}),
     [f"'{LAYER}fc1.weight' has shape (48, 32), expected (64, 32)"]),
    (lambda t: t.update({"text_encoder.shared.weight": t["text_encoder.shared.weight"][:, :20].clone()}),
     ["'text_encoder.shared.weight' has shape (12, 20), expected (12, 24)"]),
    (lambda t: t.update({"decoder.model.decoder.layers.2.fc1.weight": torch.zeros(64, 32)}),
     ["unexpected weight 'decoder.model.decoder.layers.2.fc1.weight'"]),
], ids=["decoder-key", "head", "codec-key", "decoder-shape", "t5-shape", "unexpected"])
def test_broken_checkpoints_name_the_weight(mono, tmp_path, change, words):
    from tunesmith.generator import load_generator

    broken = rewrite(mono, tmp_path / "broken", change)
    with pytest.raises(CheckpointError) as err:
        load_generator(broken)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_truncated_untokenized_and_unsupported_variants(mono, tmp_path):
    from tunesmith.generator import load_generator

    cut = tmp_path / "cut"
    shutil.copytree(mono, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_generator(cut)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(mono, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no T5 tokenizer"):
        load_generator(no_tokenizer)
    melody = tmp_path / "melody"
    shutil.copytree(mono, melody)
    config = json.loads((melody / "config.json").read_text())
    (melody / "config.json").write_text(json.dumps({**config, "model_type": "musicgen_melody"}))
    with pytest.raises(ConfigError, match="MusicGen-Melody is not supported"):
        load_generator(melody)


def test_stereo_delay_pairs_the_channels():
    """MusicGen stereo: codebook j of the left and the right channel (2j, 2j + 1) share a delay of j."""
    from tunesmith.lm.patterns import num_steps, predicted_cells

    table = layout("stereo_delay", 8, 5)
    assert table.shape == (num_steps("stereo_delay", 8, 5), 8) == (8, 8)
    assert predicted_cells(table, 0) == [(0, 0), (0, 1)]
    assert predicted_cells(table, 3) == [(3, 0), (3, 1), (2, 2), (2, 3), (1, 4), (1, 5), (0, 6), (0, 7)]


@pytest.mark.parametrize("static", [False, True])
def test_sinusoidal_positions_step_equals_forward(static):
    """The backbone option MusicGen needs: its exact position table, and cached decoding
    (also with static shapes, as on CUDA) equal to the full forward."""
    from transformers.models.musicgen.modeling_musicgen import MusicgenSinusoidalPositionalEmbedding

    from tunesmith.lm.backbones import build_backbone
    from tunesmith.lm.backbones.transformer import sinusoidal_table

    assert torch.equal(sinusoidal_table(300, 48), MusicgenSinusoidalPositionalEmbedding.get_embedding(300, 48))
    torch.manual_seed(0)
    net = build_backbone("transformer", 32, {"num_layers": 2, "num_heads": 4, "positions": "sinusoidal"},
                         cross_attention=True).eval()
    x, cross = torch.randn(2, 12, 32), torch.randn(2, 5, 32)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        full = net(x, cross, mask)
        state = net.allocate_state(2, 16, "cpu", torch.float32, static=static)
        parts = [net.step(x[:, :5], state, cross, mask)] + [net.step(x[:, t : t + 1], state, cross, mask) for t in range(5, 12)]
        shifted = net(torch.cat([x[:, :1], x], 1), cross, mask)[:, 1:]  # the same inputs one position later
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert not torch.allclose(shifted, full, atol=1e-3)  # positions matter
