"""The bundled generators' output for a fixed seed, against a stored fingerprint.

A generator can be wrong and still make audio that is not silent (the latent scale applied
the wrong way at decode did exactly that), so each bundled model's output for a fixed
prompt and seed is compared with what it made when the fingerprint was recorded: its
loudness curve, its chroma, and (for the DiT) statistics of the latents before decoding.
Tolerances allow for float rounding on another CPU, not for a changed computation.

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


def fingerprint(name: str) -> dict[str, list[float]]:
    import tunesmith
    from tunesmith.spectral import chromagram

    generator = tunesmith.load(name)
    torch.manual_seed(0)
    audio = generator.generate(PROMPT, duration=DURATION, seed=SEED)
    wav = audio.samples[0, 0].double()
    hop = int(WINDOW * audio.sample_rate)
    rms = wav[: len(wav) // hop * hop].reshape(-1, hop).pow(2).mean(1).sqrt()
    chroma = chromagram(audio.samples[0, 0].float(), audio.sample_rate).double().mean(-1)
    out = {"loudness_db": (20 * rms.clamp_min(1e-9).log10()).tolist(),
           "chroma": (chroma / chroma.sum()).tolist()}
    if hasattr(generator, "generate_latents"):  # the DiT: the latents before the VAE
        cond, uncond = generator.conditioning([PROMPT], DURATION)
        latents = generator.generate_latents(cond, uncond, generator.num_frames(DURATION), SEED,
                                             cfg=generator.cfg).latents.double()
        out["latents"] = [latents.mean().item(), latents.std().item(), latents.abs().max().item(),
                          *latents.mean(-1)[0, :8].tolist()]
    return out


@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", ["tunesmith-small-dit", "tunesmith-small"])
def test_bundled_output_matches_its_fingerprint(name, stored, one_thread):
    now, then = fingerprint(name), stored[name]
    np.testing.assert_allclose(now["loudness_db"], then["loudness_db"], atol=1.0, err_msg="loudness curve moved")
    a, b = np.array(now["chroma"]), np.array(then["chroma"])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.98, "chroma moved"
    if "latents" in then:
        np.testing.assert_allclose(now["latents"], then["latents"], rtol=0.02, atol=0.02, err_msg="latents moved")


if __name__ == "__main__":
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(exist_ok=True)
    names = sys.argv[1:] or ["tunesmith-small-dit", "tunesmith-small"]
    FIXTURE.write_text(json.dumps({n: fingerprint(n) for n in names}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
