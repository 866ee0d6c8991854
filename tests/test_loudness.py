"""Loudness (tunesmith.loudness) against BS.1770-4's own numbers, and the normalisation every
generator's output goes through (tunesmith.generator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunesmith.loudness import (
    LoudnessTarget,
    integrated_loudness,
    k_weighting,
    limit,
    normalise,
    true_peak,
)


def sine(freq: float, amplitude: float, seconds: float, sample_rate: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def test_k_weighting_at_48k_is_the_tables_of_annex_1():
    (b1, a1), (b2, a2) = k_weighting(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-8)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-8)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-8)


@pytest.mark.parametrize("sample_rate", [48000, 44100, 24000])
def test_a_997_hz_sine_reads_its_level(sample_rate):
    """RMS 0.1 (-20 dB) in one channel reads -20.0 LUFS; peak 0.1 (-20 dBFS by AES17) reads -23.01,
    since a 0 dBFS sine in one channel reads -3.01 LKFS (BS.1770-4 sec. 2.10)."""
    assert integrated_loudness(sine(997, 0.1 * math.sqrt(2), 5, sample_rate), sample_rate) == pytest.approx(-20.0, abs=0.1)
    assert integrated_loudness(sine(997, 1.0, 5, sample_rate), sample_rate) == pytest.approx(-3.01, abs=0.1)


def test_stereo_sine_of_ebu_tech_3341_case_1():
    """-23 dBFS in each of two channels reads -23.0 LUFS: the channels add by power."""
    x = sine(1000, 10 ** (-23 / 20), 20, 48000)
    assert integrated_loudness(np.stack([x, x]), 48000) == pytest.approx(-23.0, abs=0.1)
    assert integrated_loudness(x, 48000) == pytest.approx(-26.01, abs=0.1)  # one channel: half the power


def test_halving_power_is_minus_3_and_amplitude_minus_6():
    x = sine(440, 0.3, 4, 24000)
    level = integrated_loudness(x, 24000)
    assert integrated_loudness(x / math.sqrt(2), 24000) - level == pytest.approx(-3.01, abs=0.01)
    assert integrated_loudness(x / 2, 24000) - level == pytest.approx(-6.02, abs=0.01)


def test_gating_ignores_silence_and_quiet_passages():
    sr = 24000
    tone = sine(997, 0.1 * math.sqrt(2), 5, sr)
    level = integrated_loudness(tone, sr)
    # absolute gate: 20 s of silence after the tone do not lower it (ungated they would by 7 dB;
    # the 3 blocks that straddle the end, still above both gates, by 0.13 dB)
    assert integrated_loudness(np.concatenate([tone, np.zeros(20 * sr)]), sr) == pytest.approx(level, abs=0.2)
    # relative gate: a passage 20 LU quieter is left out (ungated the mean would read 3 dB lower)
    quiet = tone / 10
    assert integrated_loudness(np.concatenate([tone, quiet]), sr) == pytest.approx(level, abs=0.2)
    assert integrated_loudness(np.zeros(5 * sr), sr) == -math.inf
    assert integrated_loudness(tone[: sr // 4], sr) == -math.inf  # shorter than one 400 ms block


def test_agrees_with_pyloudnorm_where_it_is_installed():
    """pyloudnorm's filter class "DeMan" is BS.1770's own filter; its default one approximates it."""
    pyln = pytest.importorskip("pyloudnorm")
    rng = np.random.default_rng(1)
    for sr in (24000, 44100, 48000):
        x = rng.standard_normal((2, sr * 7)) * np.linspace(0.001, 0.3, sr * 7)
        x[:, :sr] = 0
        expected = pyln.Meter(sr, filter_class="DeMan").integrated_loudness(x.T)
        assert integrated_loudness(x, sr) == pytest.approx(expected, abs=1e-3)


def test_true_peak_finds_the_peak_between_samples():
    """A quarter-rate sine at phase pi/4 has samples at 0.707 of its peak: -9.03 dBFS sampled, -6.02 dBTP."""
    sr = 24000
    x = sine(sr / 4, 0.5, 1, sr, phase=math.pi / 4)
    fade = np.minimum(1.0, np.minimum(np.arange(x.size), np.arange(x.size)[::-1]) / 2400)  # no edge ringing
    assert 20 * math.log10(np.abs(x).max()) == pytest.approx(-9.03, abs=0.01)
    assert true_peak(x * fade, sr) == pytest.approx(-6.02, abs=0.05)
    assert true_peak(np.zeros(100), sr) == -math.inf


def test_normalise_reaches_the_target_whatever_the_input_level():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((1, 24000 * 6)) * 0.01, dtype=torch.float32)
    target = LoudnessTarget(-18.0, -1.0)
    quiet, report = normalise(x, 24000, target)
    loud, _ = normalise(x * 30, 24000, target)  # the same signal 29.5 dB louder (and over full scale)
    assert integrated_loudness(quiet, 24000) == pytest.approx(-18.0, abs=0.1)
    assert true_peak(quiet, 24000) <= -1.0 + 1e-6
    assert report["lufs_before"] == pytest.approx(integrated_loudness(x, 24000), abs=0.01)
    torch.testing.assert_close(quiet, loud, atol=1e-4, rtol=1e-3)  # scale-invariant


def test_normalise_limits_peaks_instead_of_missing_the_target():
    """A soft tone with rare full-scale clicks: one gain to -16 LUFS would put the clicks 15 dB
    over the ceiling; the limiter cuts them and the loudness still reaches the target."""
    sr = 24000
    x = sine(220, 0.05, 10, sr)
    x[::sr // 3] = 0.95
    out, report = normalise(torch.tensor(x[None], dtype=torch.float32), sr, LoudnessTarget())
    assert integrated_loudness(out, sr) == pytest.approx(-16.0, abs=0.1)
    assert true_peak(out, sr) <= -1.0 + 1e-6
    assert report["limited_db"] < -6.0
    assert np.abs(out.numpy()).max() < 10 ** (-1 / 20) + 1e-6


def test_the_limiter_leaves_quiet_audio_alone():
    x = sine(220, 0.1, 2, 24000)[None]
    np.testing.assert_array_equal(limit(x, 24000, -1.0), x)


def test_low_sample_rates_of_tiny_models_are_measured_and_normalised():
    """At 3200 Hz the K shelf (1.7 kHz) is past Nyquist: the high-pass alone, and finite numbers."""
    x = torch.tensor(sine(200, 0.3, 2, 3200)[None], dtype=torch.float32)
    assert integrated_loudness(x, 3200) == pytest.approx(20 * math.log10(0.3 / math.sqrt(2)) - 0.691, abs=0.5)
    out, report = normalise(x, 3200, LoudnessTarget())
    assert torch.isfinite(out).all() and report["lufs"] == pytest.approx(-16.0, abs=0.1)


def test_silence_is_returned_unchanged():
    x = torch.zeros(1, 24000)
    out, report = normalise(x, 24000, LoudnessTarget())
    assert out is x and report["lufs"] is None


def test_bad_targets_are_refused_by_name():
    with pytest.raises(ValueError, match="loudness target"):
        LoudnessTarget(lufs=5.0)
    with pytest.raises(ValueError, match="true-peak ceiling"):
        LoudnessTarget(true_peak_dbtp=3.0)


# -- every generator's output ------------------------------------------------------------------

from tunesmith.audio import Audio  # noqa: E402
from tunesmith.generator import Generator  # noqa: E402


class _Codec:
    sample_rate = 8000

    def eval(self):
        return self

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes


class LoudGenerator(Generator):
    """Decodes a tone whose level is set by the prompt and whose peaks pass full scale."""

    generator_type = "test-loud"

    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(1, 1), _Codec(), max_duration=10.0, cfg=1.0)

    def generate(self, prompts, duration, seed=0, **controls) -> Audio:
        items = [prompts] if isinstance(prompts, str) else prompts
        t = torch.arange(self.num_samples(duration)) / self.sample_rate
        rows = [float(p) * torch.sin(2 * math.pi * 300 * t) for p in items]
        return self.decode(torch.stack(rows)[:, None], duration)


class ChildGenerator(LoudGenerator):
    """A family that calls its parent's generate (as the Stable Audio loader does)."""

    generator_type = "test-child"

    def generate(self, prompts, duration, seed=0, **controls) -> Audio:
        audio = super().generate(prompts, duration, seed, **controls)
        audio.info["child"] = True
        return audio


def test_every_generator_normalises_each_row_by_default():
    audio = LoudGenerator().generate(["0.01", "1.6"], 3.0)
    for row in audio.samples:
        assert integrated_loudness(row, 8000) == pytest.approx(-16.0, abs=0.1)
    info = audio.info["loudness"]
    assert info["target_lufs"] == -16.0 and len(info["lufs"]) == 2
    assert info["lufs_before"][0] < -35 < info["lufs_before"][1] - 35  # 44 dB apart before
    assert (audio.samples.abs() >= 0.999).float().mean() == 0  # the 1.6-peak row is not clipped


def test_loudness_none_is_the_raw_output_and_a_value_is_its_target():
    gen = LoudGenerator()
    raw = gen.generate("1.6", 2.0, loudness=None)
    assert raw.info["loudness"] == {"target_lufs": None}
    assert raw.samples.abs().max() == 1.0 and (raw.samples.abs() >= 0.999).float().mean() > 0.3  # clamped
    assert integrated_loudness(gen.generate("0.2", 2.0, loudness=-23).samples[0], 8000) == pytest.approx(-23.0, abs=0.1)
    gen.loudness = -20.0  # the generator's own setting
    assert integrated_loudness(gen.generate("0.2", 2.0).samples[0], 8000) == pytest.approx(-20.0, abs=0.1)
    for bad in ("loud", 3.0, float("nan"), True):
        with pytest.raises(ValueError, match="loudness"):
            gen.generate("0.2", 2.0, loudness=bad)


def test_controls_that_set_the_level_are_left_alone_unless_a_loudness_is_named():
    """A user's audio the output keeps (inpainting, a continuation) and a loudness curve in dBFS."""
    gen = LoudGenerator()
    for name in ("init_audio", "prompt_audio", "intensity"):
        kept = gen.generate("0.05", 2.0, **{name: "given"})
        assert kept.info["loudness"] == {"target_lufs": None, "level_set_by": [name]}
        assert kept.samples.abs().max() == pytest.approx(0.05, abs=1e-3)
    named = gen.generate("0.05", 2.0, loudness=-20, intensity="given")
    assert integrated_loudness(named.samples[0], 8000) == pytest.approx(-20.0, abs=0.1)


def test_a_family_calling_its_parent_is_normalised_once():
    audio = ChildGenerator().generate("0.05", 2.0, loudness=-30)
    assert audio.info["child"] and audio.info["loudness"]["target_lufs"] == -30
    assert integrated_loudness(audio.samples[0], 8000) == pytest.approx(-30.0, abs=0.1)
    raw = ChildGenerator().generate("0.05", 2.0, loudness=None)
    assert raw.info["loudness"] == {"target_lufs": None}
    assert raw.samples.abs().max() == pytest.approx(0.05, abs=1e-3)


def test_clipping_rate_counts_samples_at_full_scale():
    from tunesmith.eval.metrics import clipping_rate

    x = torch.zeros(1, 1000)
    x[0, :30], x[0, 30:40], x[0, 40:50] = 1.0, -0.9995, 0.998  # 40 at full scale; 0.998 is not
    assert clipping_rate(x) == pytest.approx(0.04)
    assert clipping_rate(torch.tensor(sine(100, 1.5, 1, 8000)).clamp(-1, 1)) > 0.4  # a clamped loud tone
    assert clipping_rate(np.zeros((2, 10))) == 0.0


def test_the_cli_normalises_by_default_and_records_it(tmp_path, capsys):
    import json

    from tunesmith.audio import load_audio
    from tunesmith.cli import main
    from tunesmith.serve.testing import tiny_generator

    model = str(tiny_generator(tmp_path / "tiny"))
    base = ["generate", "a calm piano", "--model", model, "--duration", "2", "--steps", "2", "--no-progress"]
    runs = {"default": [], "quieter": ["--loudness", "-24"], "raw": ["--no-loudness"]}
    level = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.wav"
        assert main([*base, *extra, "-o", str(out)]) == 0
        sidecar = json.loads(out.with_suffix(".wav.json").read_text())
        level[name] = integrated_loudness(load_audio(out).samples, 24000)
        level[name + " sidecar"] = sidecar["loudness"]["target_lufs"]
    assert level["default"] == pytest.approx(-16.0, abs=0.2) and level["default sidecar"] == -16.0
    assert level["quieter"] == pytest.approx(-24.0, abs=0.2) and level["quieter sidecar"] == -24.0
    assert level["raw sidecar"] is None and abs(level["raw"] + 16.0) > 1.0
    capsys.readouterr()
    assert main([*base, "--loudness", "3", "-o", str(tmp_path / "bad.wav")]) == 2
    assert "--loudness must be in [-70, 0]" in capsys.readouterr().err
    assert not (tmp_path / "bad.wav").exists()
