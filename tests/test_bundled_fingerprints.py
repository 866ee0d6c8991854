"""The bundled generators' output for a fixed seed, against a stored fingerprint.

A generator can be wrong and still make audio that is not silent (the latent scale applied
the wrong way at decode did exactly that), so each bundled model's output for a fixed
prompt and seed is compared with what it made when the fingerprint was recorded: its
loudness curve, its chroma, and (for the DiT) statistics of the latents before decoding.
Tolerances allow for float rounding on another CPU, not for a changed computation.

The fingerprints are of the raw model output (``loudness=None``); one more, of the default
model's output as users get it (normalised to -16 LUFS), checks the normalisation on top.

Re-record (only after a deliberate change of model or sampler): ``python tests/test_bundled_fingerprints.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "bundled_fingerprints.json"
PROMPT = "A lively march for brass band in B-flat major, 120 BPM."
SEED, DURATION, WINDOW = 2, 4.0, 0.5


NORMALISED = "tunesmith-small-dit normalised"  # the fixture's entry for the normalised output


def fingerprint(name: str, loudness: float | None = None) -> dict[str, list[float]]:
    import tunesmith
    from tunesmith.spectral import chromagram

    generator = tunesmith.load(name)
    torch.manual_seed(0)
    audio = generator.generate(PROMPT, duration=DURATION, seed=SEED, loudness=loudness)
    wav = audio.samples[0, 0].double()
    hop = int(WINDOW * audio.sample_rate)
    rms = wav[: len(wav) // hop * hop].reshape(-1, hop).pow(2).mean(1).sqrt()
    chroma = chromagram(audio.samples[0, 0].float(), audio.sample_rate).double().mean(-1)
    out = {"loudness_db": (20 * rms.clamp_min(1e-9).log10()).tolist(),
           "chroma": (chroma / chroma.sum()).tolist()}
    if loudness is not None:
        from tunesmith.loudness import integrated_loudness, true_peak

        out["lufs"] = [integrated_loudness(audio.samples[0], audio.sample_rate),
                       true_peak(audio.samples[0], audio.sample_rate)]
        return out
    if hasattr(generator, "generate_latents"):  # the DiT: the latents before the VAE
        cond, uncond = generator.conditioning([PROMPT], DURATION)
        settings = {"cfg": generator.cfg, **generator.sampler_defaults}  # a student's own sampler and steps
        latents = generator.generate_latents(cond, uncond, generator.num_frames(DURATION), SEED, **settings).latents.double()
        out["latents"] = [latents.mean().item(), latents.std().item(), latents.abs().max().item(),
                          *latents.mean(-1)[0, :8].tolist()]
    return out


@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", ["tunesmith-small-dit", "tunesmith-small", "tunesmith-small-dit-presto"])
def test_bundled_output_matches_its_fingerprint(name, stored, one_thread):
    now, then = fingerprint(name), stored[name]
    np.testing.assert_allclose(now["loudness_db"], then["loudness_db"], atol=1.0, err_msg="loudness curve moved")
    a, b = np.array(now["chroma"]), np.array(then["chroma"])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.98, "chroma moved"
    if "latents" in then:
        np.testing.assert_allclose(now["latents"], then["latents"], rtol=0.02, atol=0.02, err_msg="latents moved")


def test_normalised_output_matches_its_fingerprint(stored, one_thread):
    """The default model's output as users get it: the raw curve moved by one gain to -16 LUFS."""
    now, then = fingerprint("tunesmith-small-dit", -16.0), stored[NORMALISED]
    np.testing.assert_allclose(now["lufs"][0], -16.0, atol=0.05, err_msg="not at the target loudness")
    assert now["lufs"][1] <= -1.0 + 0.05, "true peak above the ceiling"
    np.testing.assert_allclose(now["loudness_db"], then["loudness_db"], atol=1.0, err_msg="loudness curve moved")
    np.testing.assert_allclose(now["lufs"], then["lufs"], atol=0.3, err_msg="loudness or true peak moved")
    raw = np.array(stored["tunesmith-small-dit"]["loudness_db"])  # a gain (and the limiter's dips) on the raw curve
    shift = np.array(now["loudness_db"]) - raw
    assert np.corrcoef(raw, now["loudness_db"])[0, 1] > 0.95 and np.median(shift) > 1.0, \
        "the normalised output is not the raw output brought up"


def test_bundled_models_fit_the_budget():
    """Everything under tunesmith/models (installed with the package) stays within 150 MB."""
    import tunesmith

    root = Path(tunesmith.__file__).parent / "models"
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total <= 150 * 1024**2, f"bundled models take {total / 1024**2:.1f} MB, over the 150 MB budget"


if __name__ == "__main__":
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(exist_ok=True)
    names = sys.argv[1:] or ["tunesmith-small-dit", "tunesmith-small", "tunesmith-small-dit-presto", NORMALISED]
    stored = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
    for n in names:
        stored[n] = fingerprint("tunesmith-small-dit", -16.0) if n == NORMALISED else fingerprint(n)
    FIXTURE.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
