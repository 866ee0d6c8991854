"""Stable Audio Open in diffusers' layout, run by tunesmith's own DiT, VAE port and samplers.

Every model is a tiny random one built offline from its config (diffusers' StableAudioDiTModel,
StableAudioProjectionModel and AutoencoderOobleck; transformers' T5 from a T5Config with a
Unigram tokenizer made with ``tokenizers``) and saved in the diffusers layout.  Checked:

- the DiT (with CFG's unconditional row and the timing) matches diffusers' within 1e-5;
- the VAE's decode matches within 1e-4 (and its encode);
- the whole pipeline: for the same initial noise and the same SDE noise, StableAudioPipeline's
  audio (its own scheduler, CosineDPMSolverMultistepScheduler) and ours agree within 1e-4;
- 44.1 kHz stereo out; long form, audio-to-audio, inpainting, a DITTO control and a
  distillation loss run on it; ``tunesmith.load`` and ``tunesmith generate --model DIR``;
- a removed or reshaped tensor is one line naming the key.

The pipeline's scheduler draws its SDE noise from torchsde's Brownian tree; torchsde is not
installed here, so the test gives the scheduler a seeded Gaussian noise source instead (the
same draws our sampler makes from the same seed) and runs diffusers' scheduler code otherwise
unchanged.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from safetensors.torch import load_file, save_file  # noqa: E402

from tunesmith.audio import Audio, load_audio  # noqa: E402
from tunesmith.errors import CheckpointError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 44100
TRANSFORMER = dict(sample_size=24, in_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                   num_key_value_attention_heads=2, out_channels=8, cross_attention_dim=24, time_proj_dim=32,
                   global_states_input_dim=40, cross_attention_input_dim=20)
PROJECTION = dict(text_encoder_dim=16, conditioning_dim=20, min_value=0, max_value=64)  # T5 width 16 != 20: a Linear
VAE = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4], channel_multiples=[1, 2], decoder_channels=8,
           decoder_input_channels=8, audio_channels=2, sampling_rate=SR)
SCHEDULER = dict(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
                 prediction_type="v_prediction", rho=7.0, solver_type="midpoint", final_sigmas_type="zero")
WORDS = ["calm", "piano", "loud", "drums", "melody", "with", "and", "fast", "techno", "beat"]
HOP = 8  # prod(downsampling_ratios)
WINDOW_S = TRANSFORMER["sample_size"] * HOP / SR  # the model's window: 192 samples
DURATION = 0.0025  # 110.25 samples: no rounding tie between int() and round()
PROMPTS = ["calm piano melody", "fast techno beat with loud drums and piano"]


def cosine_scheduler_class():
    """diffusers' CosineDPMSolverMultistepScheduler, importable without torchsde (see the module docstring)."""
    try:
        import torchsde  # noqa: F401
    except ImportError:
        sys.modules["torchsde"] = types.ModuleType("torchsde")
        try:
            from diffusers.schedulers.scheduling_cosine_dpmsolver_multistep import CosineDPMSolverMultistepScheduler
        finally:
            del sys.modules["torchsde"]
        return CosineDPMSolverMultistepScheduler
    from diffusers.schedulers.scheduling_cosine_dpmsolver_multistep import CosineDPMSolverMultistepScheduler
    return CosineDPMSolverMultistepScheduler


def seeded_scheduler(config: dict, seed: int):
    """The pipeline's scheduler with its SDE noise drawn from torch.Generator(seed), one draw per step."""
    base = cosine_scheduler_class()

    class Seeded(base):
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            generator = torch.Generator().manual_seed(seed)
            self.noise_sampler = lambda sigma, sigma_next: torch.randn(self._shape, generator=generator)

    scheduler = Seeded.from_config(config)
    return scheduler


def tiny_tokenizer(max_length: int = 12):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=max_length, extra_ids=0)


def write_sao(directory: Path) -> dict:
    """A tiny random Stable Audio Open directory, as diffusers and transformers save it."""
    from diffusers import AutoencoderOobleck, StableAudioDiTModel
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    parts = {
        "transformer": StableAudioDiTModel(**TRANSFORMER),
        "projection_model": StableAudioProjectionModel(**PROJECTION),
        "vae": AutoencoderOobleck(**VAE),
        "text_encoder": T5EncoderModel(T5Config(vocab_size=3 + len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                num_heads=2, decoder_start_token_id=0)),
        "tokenizer": tiny_tokenizer(),
    }
    with torch.no_grad():  # Snake's alpha and beta start at 0 (a plain sine): give every channel its own
        for name, p in parts["vae"].named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.copy_(torch.randn_like(p) * 0.3)
    for name, part in parts.items():
        part.eval() if hasattr(part, "eval") else None
        part.save_pretrained(directory / name)
    parts["scheduler"] = cosine_scheduler_class().from_config(SCHEDULER)
    parts["scheduler"].save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableAudioPipeline", "_diffusers_version": diffusers.__version__,
        "projection_model": ["stable_audio", "StableAudioProjectionModel"],
        "scheduler": ["diffusers", "CosineDPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "StableAudioDiTModel"], "vae": ["diffusers", "AutoencoderOobleck"]}))
    return parts


@pytest.fixture(scope="module")
def sao(tmp_path_factory):
    """(directory, diffusers parts, our generator), built once."""
    from transformers import AutoTokenizer

    from tunesmith.hub.stable_audio import load_stable_audio

    directory = tmp_path_factory.mktemp("sao")
    parts = write_sao(directory)
    parts["tokenizer"] = AutoTokenizer.from_pretrained(directory / "tokenizer")  # as a user's pipeline reads it
    return directory, parts, load_stable_audio(directory, "cpu")


def pipeline(parts: dict, scheduler):
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                               projection_model=parts["projection_model"], tokenizer=parts["tokenizer"],
                               transformer=parts["transformer"], scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_dit_inputs(parts: dict, prompts: list[str], duration: float):
    """The transformer's inputs for (cond, uncond) rows, built as StableAudioPipeline builds them."""
    pipe = pipeline(parts, cosine_scheduler_class().from_config(SCHEDULER))
    with torch.no_grad():
        text = pipe.encode_prompt(prompts, "cpu", False)
        start, end = pipe.encode_duration(0.0, duration, "cpu", False, len(prompts))
        sequence = torch.cat([text, start, end], dim=1)
        sequence = torch.cat([sequence, torch.zeros_like(sequence)])  # the unconditional rows: all zeros
        glob = torch.cat([start, end], dim=2).repeat(2, 1, 1)
    return sequence, glob


def dit_outputs(sao, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    _, parts, gen = sao
    sequence, glob = diffusers_dit_inputs(parts, PROMPTS, DURATION)
    rotary = get_1d_rotary_pos_embed(TRANSFORMER["attention_head_dim"] // 2, x.shape[-1] + 1, use_real=True,
                                     repeat_interleave_real=False)
    cond, uncond = gen.conditioning(PROMPTS, DURATION)
    with torch.no_grad():
        theirs = parts["transformer"](x, torch.tensor([t]), encoder_hidden_states=sequence, global_hidden_states=glob,
                                      rotary_embedding=rotary, return_dict=False)[0]
        ours = gen.model(x, torch.full((x.shape[0],), t), **cond.cat(uncond).model_inputs())
    return ours, theirs


def test_dit_matches_diffusers_with_timing_and_cfg(sao):
    x = torch.randn(4, 8, 24, generator=torch.Generator().manual_seed(1))
    ours, theirs = dit_outputs(sao, x, 0.6)
    assert theirs.abs().max() > 0.1  # a real signal, not zeros on both sides
    assert (ours - theirs).abs().max().item() < 1e-5
    assert not torch.allclose(theirs[:2], theirs[2:], atol=1e-3)  # text and its absence differ


def test_a_wrong_table_row_breaks_parity(sao, monkeypatch):
    """The test above can fail: q and k without the rotary reordering give another network."""
    import tunesmith.hub.stable_audio_keys as keys
    from tunesmith.hub.stable_audio import load_stable_audio

    directory, parts, _ = sao
    plain = keys.Transform("cat", lambda t, c: torch.cat(t), keys.QKV.sources)
    rows = [(target, sources, plain if transform is keys.QKV else transform) for target, sources, transform in keys.DIT_KEYS]
    monkeypatch.setattr("tunesmith.hub.stable_audio.DIT_KEYS", rows)
    wrong = load_stable_audio(directory, "cpu")
    x = torch.randn(4, 8, 24, generator=torch.Generator().manual_seed(1))
    ours, theirs = dit_outputs((directory, parts, wrong), x, 0.6)
    assert (ours - theirs).abs().max().item() > 1e-3


def test_vae_matches_diffusers(sao):
    _, parts, gen = sao
    z = torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(2))
    wav = torch.randn(2, 2, 24 * HOP, generator=torch.Generator().manual_seed(3)) * 0.3
    with torch.no_grad():
        assert (gen.codec.decode(z) - parts["vae"].decode(z).sample).abs().max().item() < 1e-4
        theirs = parts["vae"].encode(wav).latent_dist.mean
        assert (gen.codec.encode(wav) - theirs).abs().max().item() < 1e-4
    assert gen.sample_rate == SR and gen.channels == 2 and gen.codec.frame_rate == SR / HOP


def test_pipeline_audio_matches_for_the_same_noise(sao):
    """StableAudioPipeline (its scheduler, guidance 7, 8 steps) against our generator's sampling and
    decoding: the same initial noise, the same SDE draws.  Tolerance 1e-4 on audio in [-1, 1] (float
    rounding through 8 steps and the decoder; the pipeline starts at sqrt(sigma_max^2 + 1) times the
    noise where ours starts at sigma_max: a 2e-6 relative difference)."""
    _, parts, gen = sao
    steps, seed = 8, 5
    noise = torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(4))
    scheduler = seeded_scheduler(SCHEDULER, seed)
    scheduler._shape = noise.shape
    with torch.no_grad():
        theirs = pipeline(parts, scheduler)(PROMPTS, audio_end_in_s=DURATION, num_inference_steps=steps,
                                            guidance_scale=7.0, latents=noise.clone()).audios
    cond, uncond = gen.conditioning(PROMPTS, DURATION)
    assert gen.num_frames(DURATION) == 24  # the whole window, as the pipeline generates it
    latents = gen.generate_latents(cond, uncond, 24, seed, noise=noise, steps=steps, cfg=7.0).latents
    ours = gen.decode_latents(latents, DURATION).samples
    assert ours.shape == theirs.shape == (2, 2, int(DURATION * SR))
    assert theirs.abs().max() > 1e-3
    assert (ours - theirs.clamp(-1, 1)).abs().max().item() < 1e-4  # ours is clipped to [-1, 1]


def test_generate_is_stereo_44k_and_every_mode_runs(sao):
    _, _, gen = sao
    audio = gen.generate("calm piano", duration=DURATION, seed=3, steps=3)
    assert audio.sample_rate == SR and audio.samples.shape == (1, 2, round(DURATION * SR))
    assert torch.equal(audio.samples, gen.generate("calm piano", duration=DURATION, seed=3, steps=3).samples)
    long = gen.generate("calm piano", duration=3 * WINDOW_S, seed=3, steps=2, sampler="heun", schedule="karras")
    assert long.samples.shape == (1, 2, round(3 * WINDOW_S * SR))  # long form: past the window
    assert gen.num_frames(DURATION) == 24 and gen.num_frames(3 * WINDOW_S) == 72
    gen.full_window = False  # only the frames the duration needs
    try:
        assert gen.num_frames(DURATION) == 14
        cropped = gen.generate("calm piano", duration=DURATION, seed=3, steps=3)
    finally:
        gen.full_window = True
    assert cropped.samples.shape == audio.samples.shape and not torch.allclose(cropped.samples, audio.samples)
    reference = Audio(torch.randn(1, 2, 150, generator=torch.Generator().manual_seed(6)).clamp(-1, 1) * 0.5, SR)
    a2a = gen.generate("techno beat", duration=DURATION, seed=3, steps=4, init_audio=reference, strength=0.5)
    inpaint = gen.generate("techno beat", duration=DURATION, seed=3, steps=4, init_audio=reference,
                           mask=[(0.0005, 0.0015)], repaint_resample=2)
    for out in (a2a, inpaint):
        assert out.samples.shape == (1, 2, round(DURATION * SR)) and torch.isfinite(out.samples).all()
    assert not torch.allclose(a2a.samples, inpaint.samples)


def test_ditto_intensity_control_runs(sao):
    _, _, gen = sao
    audio = gen.generate("loud drums", duration=0.25, seed=1, steps=2, intensity="0:-40,0.25:-10",
                         control_iterations=2, control_steps=2)
    assert audio.samples.shape == (1, 2, round(0.25 * SR))
    report = audio.info["control_report"]
    assert len(report["optimisation_loss"]) == 2 and "intensity" in report


def test_a_distillation_loss_runs_on_it(sao):
    """DMD (tunesmith.distill) over the loaded DiT: teacher guided, a trainable copy as fake score."""
    import copy

    from tunesmith.diffusion.denoiser import Denoiser
    from tunesmith.diffusion.guidance import cfg_denoiser
    from tunesmith.distill.dmd import distribution_matching_loss, fake_score_loss

    _, _, gen = sao
    cond, uncond = gen.conditioning(["calm piano"], DURATION)
    teacher = cfg_denoiser(Denoiser(gen.model, "v"), cond.model_inputs(), uncond.model_inputs(), 7.0)
    fake_net = copy.deepcopy(gen.model).train()
    fake = Denoiser(fake_net, "v")
    x0 = torch.randn(1, 8, 24, requires_grad=True)
    sigma, noise = torch.tensor([2.0]), torch.randn(1, 8, 24)
    loss = distribution_matching_loss(x0, noise, sigma, teacher, lambda x, s: fake(x, s, **cond.model_inputs()))
    loss.backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all()
    fake_loss = fake_score_loss(fake, x0.detach(), noise, sigma, **cond.model_inputs())
    fake_loss.backward()
    assert all(p.grad is not None for p in fake_net.blocks[0].parameters())


def test_tunesmith_load_and_the_cli_write_stereo_wav(sao, tmp_path, capsys):
    import tunesmith
    from tunesmith.cli import main
    from tunesmith.hub.stable_audio import StableAudioGenerator

    directory, _, _ = sao
    assert isinstance(tunesmith.load(str(directory)), StableAudioGenerator)
    out = tmp_path / "loop.wav"
    assert main(["generate", "techno beat", "--model", str(directory), "--duration", "0.004", "--steps", "2",
                 "-o", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    audio = load_audio(out)
    assert audio.sample_rate == SR and audio.samples.shape == (2, round(0.004 * SR))


def broken_copy(sao, tmp_path: Path, part: str, edit) -> Path:
    directory = tmp_path / "broken"
    shutil.copytree(sao[0], directory)
    name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(directory / part / name))
    edit(tensors)
    save_file(tensors, str(directory / part / name), metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("part, edit, words", [
    ("transformer", lambda t: t.pop("transformer_blocks.1.attn1.to_q.weight"),
     ["missing key 'transformer_blocks.1.attn1.to_q.weight'"]),
    ("transformer", lambda t: t.update({"transformer_blocks.0.attn2.to_k.weight":
                                        t["transformer_blocks.0.attn2.to_k.weight"].reshape(16, 48)}),
     ["'transformer_blocks.0.attn2.to_k.weight' has shape [16, 48], expected [32, 24]"]),
    ("transformer", lambda t: t.update({"extra.weight": torch.zeros(2)}), ["unexpected key 'extra.weight'"]),
    ("projection_model", lambda t: t.pop("end_number_conditioner.time_positional_embedding.1.bias"),
     ["missing key 'end_number_conditioner.time_positional_embedding.1.bias'"]),
    ("vae", lambda t: t.pop("decoder.block.0.conv_t1.weight_v"), ["missing key 'decoder.block.0.conv_t1.weight_v'"]),
    ("text_encoder", lambda t: t.pop("encoder.final_layer_norm.weight"), ["encoder.final_layer_norm.weight"]),
])
def test_broken_checkpoints_name_the_key(sao, tmp_path, part, edit, words):
    from tunesmith.generator import load_generator

    directory = broken_copy(sao, tmp_path, part, edit)
    with pytest.raises(CheckpointError) as err:
        load_generator(str(directory))
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_truncated_file_names_the_file(sao, tmp_path):
    from tunesmith.hub.stable_audio import load_stable_audio

    directory = tmp_path / "truncated"
    shutil.copytree(sao[0], directory)
    weights = directory / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors") as err:
        load_stable_audio(directory, "cpu")
    assert "\n" not in str(err.value)


def test_onednn_matmuls_match_and_leave_gradients_alone(sao):
    """The loader routes the DiT's matmuls through oneDNN at inference: the same outputs, and under
    autograd (DITTO, distillation) the ordinary path, so gradients are torch's own."""
    _, _, gen = sao
    cond, uncond = gen.conditioning(PROMPTS, DURATION)
    inputs = cond.cat(uncond).model_inputs()
    x = torch.randn(4, 8, 24, generator=torch.Generator().manual_seed(8))
    t = torch.full((4,), 0.4)
    grads = []
    try:
        for onednn in (True, False):
            gen.model.use_onednn(onednn)
            with torch.no_grad():
                out = gen.model(x, t, **inputs)
            xg = x.clone().requires_grad_(True)
            gen.model(xg, t, **inputs).square().sum().backward()
            grads.append((out, xg.grad))
    finally:
        gen.model.use_onednn(True)
    assert (grads[0][0] - grads[1][0]).abs().max() < 1e-5
    assert torch.equal(grads[0][1], grads[1][1])


def test_the_vae_port_saves_and_loads_as_a_tunesmith_model(sao, tmp_path):
    from tunesmith.checkpoint import load_model, save

    _, _, gen = sao
    save(gen.codec, tmp_path / "vae")
    again = load_model(tmp_path / "vae")
    z = torch.randn(1, 8, 5, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(again.decode(z), gen.codec.decode(z))
