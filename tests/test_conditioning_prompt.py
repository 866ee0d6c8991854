"""The one prompt parser: the models and the evaluator read a prompt the same way."""

from __future__ import annotations

import pytest
import torch

from tunesmith.conditioning.key import key_vector, prompt_keys
from tunesmith.conditioning.prompt import parse_prompt
from tunesmith.eval.prompts import attributes_from_text
from tunesmith.music import Key, parse_key_name


@pytest.mark.parametrize(
    "text, tempo, key, mode",
    [
        ("Soft vibraphone lullaby, 70 BPM, F major", 70.0, Key(5, "major"), "major"),  # the evaluator once saw no key
        ("a gentle lullaby on solo piano, slow, in a major key", None, None, "major"),  # ...and once A major here
        ("A minor-key waltz for strings", None, None, "minor"),
        ("Brass march in B-flat major at 120 beats per minute", 120.0, Key(10, "major"), "major"),
        ("Jazz trio, F# minor, 96 bpm", 96.0, Key(6, "minor"), "minor"),
        ("organ chorale in E♭ minor", None, Key(3, "minor"), "minor"),
        ("a folk tune", None, None, None),
    ],
)
def test_models_and_evaluator_agree(text, tempo, key, mode):
    facts = parse_prompt(text)
    assert (facts.tempo_bpm, facts.key, facts.mode) == (tempo, key, mode)
    # what the evaluator scores against
    targets = attributes_from_text(text)
    assert targets.get("tempo_bpm") == tempo and targets.get("mode") == mode
    assert (parse_key_name(targets["key"], targets["mode"]) if "key" in targets else None) == key
    # what the models are conditioned on
    expected = key_vector(key.tonic, key.mode) if key else key_vector(None, mode)
    torch.testing.assert_close(prompt_keys([text])[0], expected)


def test_instruments_and_families_come_from_the_same_parse():
    facts = parse_prompt("a string quartet with a French horn")
    assert {"violin", "viola", "cello", "french horn"} <= facts.instruments
    assert {"strings", "brass"} <= facts.families
    assert attributes_from_text("a string quartet with a French horn")["families"] == sorted(facts.families)
    assert attributes_from_text("a string quartet", {"brass": ()}).get("families") is None  # only scorable ones


@pytest.mark.parametrize("name, key", [("B-flat major", Key(10, "major")), ("Am", Key(9, "minor")),
                                        ("AM", Key(9, "major")), ("f#", Key(6, "major")), ("E♭ min", Key(3, "minor"))])
def test_key_names(name, key):
    assert parse_key_name(name) == key
