"""The key vector: what the prompt names, laid out so related keys are near."""

import pytest
import torch

from tunesmith.conditioning.key import KEY_DIM, record_key, key_vector, prompt_keys


def test_layout_and_nearness():
    c_major, a_minor, g_major, fs_major = key_vector(0, "major"), key_vector(9, "minor"), key_vector(7, "major"), key_vector(6, "major")
    assert c_major.shape == (KEY_DIM,)
    assert torch.isclose(c_major[:12].norm(), torch.tensor(1.0))  # seven scale tones of 1/sqrt(7)
    assert (c_major[:12] > 0).nonzero().flatten().tolist() == [0, 2, 4, 5, 7, 9, 11]
    assert torch.equal(c_major[:12], a_minor[:12])  # relative keys share every note ...
    assert c_major[12:].argmax() == 0 and a_minor[12:24].argmax() == 9 and a_minor[24:].tolist() == [0.0, 1.0]
    # ... a fifth apart they share six of seven, a tritone apart two
    scale = lambda v: float(v[:12] @ c_major[:12])  # noqa: E731
    assert scale(g_major) > scale(fs_major)
    assert key_vector(None, "minor")[:24].abs().sum() == 0 and key_vector(None, None).abs().sum() == 0
    with pytest.raises(ValueError, match="mode"):
        key_vector(0, "dorian")
    with pytest.raises(ValueError, match="pitch class"):
        key_vector(12, "major")


def test_prompts_and_clips():
    keys = prompt_keys(["Harp arpeggios, E-flat major at 76 BPM", "a minor-key waltz", "drums at 120 BPM", "in F# minor"])
    torch.testing.assert_close(keys[0], key_vector(3, "major"))
    torch.testing.assert_close(keys[1], key_vector(None, "minor"))  # the article "a" is not the note A
    assert keys[2].abs().sum() == 0
    torch.testing.assert_close(keys[3], key_vector(6, "minor"))
    torch.testing.assert_close(record_key({"tags": {"key": "B-flat", "mode": "minor"}}), key_vector(10, "minor"))
    assert record_key({"tags": {"tempo_bpm": 90}}).abs().sum() == 0
