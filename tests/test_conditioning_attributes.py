"""Tempo and key parsed from prompts, and the attribute tokens they become."""

import pytest
import torch

from tunesmith.conditioning.attributes import (
    MIN_DIM,
    TOKEN_NORM,
    AttributeTextEncoder,
    attribute_tokens,
    tempo_features,
)
from tunesmith.conditioning.prompt import parse_key, parse_tempo


@pytest.mark.parametrize(
    "text, bpm",
    [
        ("Harp arpeggios, dreamy and calm, E-flat major at 76 BPM", 76.0),
        ("around 72 beats per minute, A minor", 72.0),
        ("a waltz at 90bpm", 90.0),
        ("quick, 132.5 bpm", 132.5),
        ("slow and tender", None),
        ("opus 5 BPM", None),  # outside the tempo range
        ("track 808, 120 BPM", 120.0),
    ],
)
def test_parse_tempo(text, bpm):
    assert parse_tempo(text) == bpm


@pytest.mark.parametrize(
    "text, key",
    [
        ("in A major", (9, "major")),
        ("B-flat major fanfare", (10, "major")),
        ("F# minor, 140 bpm", (6, "minor")),
        ("Bb minor", (10, "minor")),
        ("E-flat major at 76 BPM", (3, "major")),
        ("a minor-key waltz", (None, "minor")),  # the article is not the note A
        ("no key named", (None, None)),
    ],
)
def test_parse_key(text, key):
    assert parse_key(text) == key


def test_tempo_features_are_smooth_in_log_tempo():
    def distance(a, b):
        return (tempo_features(a) - tempo_features(b)).norm().item()

    assert distance(120, 123) < distance(120, 140) < distance(120, 200)
    assert distance(60, 61) < 0.5 * distance(60, 90)


def test_attribute_tokens_shapes_and_norms():
    tokens = attribute_tokens("G minor piece, about 102 BPM", 384)
    assert tokens.shape == (2, 384)
    assert torch.allclose(tokens.norm(dim=-1), torch.full((2,), TOKEN_NORM))
    assert attribute_tokens("just some music", 384).shape == (0, 384)
    assert not torch.equal(attribute_tokens("G minor", 384), attribute_tokens("G major", 384))
    with pytest.raises(ValueError, match="at least"):
        attribute_tokens("120 BPM", MIN_DIM - 1)


class FakeEncoder:
    """A deterministic stand-in base encoder: one token per word, values from the word's length."""

    dim = 384

    def encode(self, texts):
        from tunesmith.conditioning.text import pad_states

        return pad_states([torch.stack([torch.full((self.dim,), float(len(w))) for w in t.split()]) for t in texts])

    def embed(self, texts):
        return torch.ones(len(texts), self.dim)


def test_attribute_encoder_puts_attributes_first_and_keeps_the_words():
    encoder = AttributeTextEncoder(FakeEncoder())
    states, mask = encoder.encode(["piano in C major at 100 BPM", "plain words"])
    assert mask.sum(1).tolist() == [7 + 2, 2]
    assert torch.equal(states[0, :2], attribute_tokens("piano in C major at 100 BPM", 384))
    assert torch.equal(states[0, 2], torch.full((384,), 5.0))  # "piano"
    assert torch.equal(states[1, 0], torch.full((384,), 5.0))  # "plain": no attributes to put first
    assert torch.equal(encoder.embed(["x"]), torch.ones(1, 384))
