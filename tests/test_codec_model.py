"""Codec shapes, round trips, bitrates, chunking and save/load, with tiny untrained models."""

import pytest
import torch

from tunesmith.checkpoint import CheckpointError, save
from tunesmith.codec import RVQCodec, RVQCodecConfig, VAECodec, VAEConfig, load_codec
from tunesmith.spectral import istft_same, stft_same
from tunesmith.codec.synthetic import render_clip

import numpy as np


def tiny_rvq(**kw) -> RVQCodec:
    torch.manual_seed(0)
    cfg = dict(dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16, num_codebooks=4,
               codebook_size=32, codebook_dim=4)
    cfg.update(kw)
    return RVQCodec(RVQCodecConfig(**cfg)).eval()


def tiny_vae() -> VAECodec:
    torch.manual_seed(0)
    return VAECodec(VAEConfig(dim=32, encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8)).eval()


def clip(seconds: float, seed: int = 0) -> torch.Tensor:
    return render_clip(np.random.default_rng(seed), int(seconds * 24000), 24000)[None]


def test_stft_same_is_exactly_invertible():
    x = torch.randn(3, 24000)
    spec = stft_same(x, 960, 240)
    assert spec.shape == (3, 481, 100)
    assert torch.allclose(istft_same(spec, 960, 240), x, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of the hop"):
        stft_same(torch.randn(1, 1000), 960, 240)


def test_overlap_add_equals_fold_and_is_differentiable():
    from tunesmith.spectral import _overlap_add

    frames = torch.randn(2, 7, 960, requires_grad=True)
    ours = _overlap_add(frames, 240)
    folded = torch.nn.functional.fold(frames.transpose(1, 2), output_size=(1, 6 * 240 + 960), kernel_size=(1, 960),
                                      stride=(1, 240))[:, 0, 0]
    assert ours.shape == (2, 6 * 240 + 960)
    assert torch.allclose(ours, folded, atol=1e-5)
    ours.square().sum().backward()
    assert frames.grad is not None and torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


def test_griffin_lim_keeps_a_consistent_spectrogram_consistent():
    from tunesmith.spectral import griffin_lim

    x = clip(1.0)[:, 0]
    magnitude = stft_same(x, 960, 240).abs()
    y = griffin_lim(magnitude, 960, 240, iters=16)
    error = (stft_same(y, 960, 240).abs() - magnitude).norm() / magnitude.norm()
    assert y.shape == x.shape and error < 0.2


def test_rvq_shapes_and_frame_rate():
    codec = tiny_rvq()
    assert codec.frame_rate == 50.0 and codec.bitrate() == 50 * 4 * 5
    wav = clip(1.3)  # not a whole number of frames: padded up
    tokens = codec.encode(wav)
    assert tokens.dtype == torch.int64 and tokens.shape == (1, 4, 65)
    assert 0 <= tokens.min() and tokens.max() < 32
    out = codec.decode(tokens)
    assert out.shape == (1, 1, 65 * 480)
    assert torch.isfinite(out).all()


def test_rvq_decodes_at_every_bitrate_and_codes_are_prefixes():
    codec = tiny_rvq()
    wav = clip(1.0)
    full = codec.encode(wav)
    outs = []
    for k in range(1, 5):
        tokens = codec.encode(wav, num_codebooks=k)
        assert torch.equal(tokens, full[:, :k])  # residual stages do not depend on later ones
        out = codec.decode(tokens)
        assert out.shape == (1, 1, 24000)
        outs.append(out)
    assert not torch.allclose(outs[0], outs[-1])  # later codebooks change the audio
    with pytest.raises(ValueError, match="num_codebooks"):
        codec.encode(wav, num_codebooks=5)
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode(torch.full((1, 2, 10), 32))


def test_quantizer_dropout_uses_fewer_codebooks_in_training():
    codec = tiny_rvq(quantizer_dropout=1.0)
    codec.train()
    torch.manual_seed(1)
    wav = clip(0.5).repeat(8, 1, 1)
    z = codec.encoder(wav)
    out_drop, _, _ = codec.quantizer(z)
    codec.quantizer.quantizer_dropout = 0.0
    torch.manual_seed(1)
    out_full, _, _ = codec.quantizer(z)
    # with dropout some items keep fewer stages, so their quantized latents differ
    differs = [(not torch.allclose(out_drop[i], out_full[i])) for i in range(8)]
    assert any(differs)  # with probability 1 - 4**-8 at least one item dropped stages


def test_vae_shapes_sampling_and_seed():
    vae = tiny_vae()
    assert vae.frame_rate == 25.0
    wav = clip(2.0)
    mean = vae.encode(wav)
    assert mean.shape == (1, 8, 50)
    a, b = vae.encode(wav, sample=True, seed=3), vae.encode(wav, sample=True, seed=3)
    c = vae.encode(wav, sample=True, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert vae.decode(mean).shape == (1, 1, 48000)
    with pytest.raises(ValueError, match="latents of shape"):
        vae.decode(torch.zeros(1, 7, 10))


@pytest.mark.parametrize("make", [tiny_rvq, tiny_vae])
def test_chunked_equals_unchunked(make):
    codec = make()
    wav = clip(7.3, seed=2)
    with torch.inference_mode():
        whole = codec.encode(wav)
        chunked = codec.encode_long(wav, chunk_seconds=1.5)
    if whole.dtype == torch.int64:
        assert (whole == chunked).float().mean() > 0.99
    else:
        assert torch.allclose(whole, chunked, atol=1e-4)
    with torch.inference_mode():
        audio = codec.decode(whole)
        audio_chunked = codec.decode_long(whole, chunk_seconds=1.5)
    assert audio.shape == audio_chunked.shape
    assert torch.allclose(audio, audio_chunked, atol=1e-4)


def test_bad_audio_is_rejected():
    codec = tiny_rvq()
    with pytest.raises(ValueError, match="shape"):
        codec.encode(torch.zeros(1, 2, 4800))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((1, 1, 4800), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(1, 1, 0))


def test_save_load_roundtrip_fp16(tmp_path):
    codec = tiny_rvq()
    save(codec.half(), tmp_path / "c")
    loaded = load_codec(tmp_path / "c")
    codec = codec.float()
    wav = clip(1.0)
    assert loaded.num_codebooks == 4 and next(loaded.parameters()).dtype == torch.float32
    assert (loaded.encode(wav) == codec.encode(wav)).float().mean() > 0.95
    with pytest.raises(CheckpointError):
        load_codec(tmp_path / "missing")


def test_integrated_phase_synthesizes_a_steady_tone_between_bins():
    from tunesmith.spectral import integrated_phase

    n_fft, hop, sr, f = 960, 240, 24000, 440.0  # 440 Hz sits between bins 17 (425 Hz) and 18 (450 Hz)
    frames, bins = 100, n_fft // 2 + 1
    centre = f * n_fft / sr
    k = torch.arange(bins, dtype=torch.float32)
    magnitude = torch.where((k - centre).abs() < 2, torch.ones(bins), torch.zeros(bins))[None, :, None].expand(1, bins, frames)
    deviation = (centre - k)[None, :, None].expand(1, bins, frames)  # every bin rotates at 440 Hz
    local = torch.full((1, bins, frames), torch.pi * centre)  # one angle for all bins of the partial
    phase, _ = integrated_phase(deviation, local, n_fft, hop)
    wav = istft_same(torch.polar(magnitude.contiguous(), phase), n_fft, hop)[0, 4800:-4800]
    spectrum = torch.fft.rfft(wav * torch.hann_window(wav.shape[-1]))
    peak_hz = float(spectrum.abs().argmax()) * sr / wav.shape[-1]
    assert abs(peak_hz - f) < 2
    # the "direct" parameterisation with the same angle every frame cannot: its energy sits on the frame-rate comb
    alternating = (-torch.pi * (k - centre))[None, :, None].expand(1, bins, frames)  # the same frame every hop
    wav_direct = istft_same(torch.polar(magnitude.contiguous(), alternating.contiguous()), n_fft, hop)[0, 4800:-4800]
    peak_direct = float(torch.fft.rfft(wav_direct * torch.hann_window(wav.shape[-1])).abs().argmax()) * sr / wav.shape[-1]
    assert abs(peak_direct % (sr / hop)) < 2 or abs(peak_direct % (sr / hop) - sr / hop) < 2


def test_direct_phase_decoder_still_loads_and_runs():
    codec = tiny_rvq(phase="direct")
    out = codec.decode(codec.encode(clip(1.0)))
    assert out.shape == (1, 1, 24000) and torch.isfinite(out).all()


def test_griffin_lim_recovers_a_steady_tone_between_bins_from_its_magnitude():
    """The held-note case a frame-wise phase cannot do: 440 Hz sits between bins 17 and 18."""
    from tunesmith.spectral import griffin_lim

    sr, n_fft, hop = 24000, 960, 240
    t = torch.arange(sr) / sr
    tone = (0.5 * torch.sin(2 * torch.pi * 440.0 * t) + 0.25 * torch.sin(2 * torch.pi * 660.0 * t))[None]
    magnitude = stft_same(tone, n_fft, hop).abs()
    wav = griffin_lim(magnitude, n_fft, hop, iters=16)[0, 2400:-2400]
    spectrum = torch.fft.rfft(wav * torch.hann_window(wav.shape[-1])).abs()
    peak_hz = float(spectrum.argmax()) * sr / wav.shape[-1]
    assert abs(peak_hz - 440.0) < 2
    # more iterations bring the magnitude of the result closer to the one asked for
    def error(iters: int) -> float:
        out = griffin_lim(magnitude, n_fft, hop, iters=iters)
        return float((stft_same(out, n_fft, hop).abs() - magnitude).norm() / magnitude.norm())
    assert error(16) < error(2) < error(0)
    assert torch.equal(griffin_lim(magnitude, n_fft, hop, 4), griffin_lim(magnitude, n_fft, hop, 4))  # deterministic
    with pytest.raises(ValueError, match="magnitudes of shape"):
        griffin_lim(magnitude[:, :100], n_fft, hop)


def test_griffin_lim_decoder_is_differentiable_in_the_magnitude():
    codec = tiny_rvq()
    assert codec.config.phase == "griffin-lim"
    latents = codec.quantizer.decode(codec.encode(clip(1.0)))
    params = codec.decoder.frame_params(latents)
    wav, _ = codec.decoder.synthesize(params)
    wav.square().sum().backward()
    assert codec.decoder.head.weight.grad is not None and codec.decoder.head.weight.grad.abs().sum() > 0


def test_linear_path_is_the_whole_codec_at_initialisation():
    """The convolutional stacks start at zero, so training starts from a linear spectral autoencoder."""
    codec = tiny_rvq()
    assert codec.config.uses_linear_path and not tiny_rvq(phase="direct").config.uses_linear_path
    wav = clip(1.0)
    features = codec.encoder.features(wav)  # (1, 100 frames, 481)
    pairs = features.reshape(1, 50, 2 * 481)
    assert torch.allclose(codec.encoder(wav).transpose(1, 2), codec.encoder.linear(pairs), atol=1e-5)
    z = torch.randn(1, codec.config.latent_dim, 50)
    log_magnitude = codec.decoder.frame_params(z)[:, 0]  # (1, 481, 100)
    expected = codec.decoder.linear(z.transpose(1, 2)).reshape(1, 100, 481).transpose(1, 2)
    assert torch.allclose(log_magnitude, expected, atol=1e-5)
