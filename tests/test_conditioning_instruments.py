"""Instruments named in free wording and in the corpus's captions map to the right slots."""

import numpy as np
import pytest
import torch
from test_conditioning_attributes import FakeEncoder

from tunesmith.conditioning.attributes import (
    MIN_DIM,
    MIN_DIM_WITH_INSTRUMENTS,
    TOKEN_NORM,
    AttributeTextEncoder,
    attribute_tokens,
)
from tunesmith.conditioning.instruments import (
    FAMILY_SLOTS,
    INSTRUMENT_DIM,
    INSTRUMENT_SLOTS,
    instrument_vector,
    parse_instruments,
)
from tunesmith.data.captions import resample_caption
from tunesmith.data.instruments import BY_NAME, DRUM_KIT, FAMILIES
from tunesmith.data.styles import STYLES


@pytest.mark.parametrize("text, instruments, families", [
    ("French horns and trombones play a dark theme", {"french horn", "trombone"}, {"brass"}),
    ("Military march for trumpets and tuba", {"trumpet", "tuba"}, {"brass"}),
    ("A string quartet plays something wistful", {"violin", "viola", "cello"}, {"strings"}),
    ("An oboe sings a sad tune over bassoon", {"oboe", "bassoon"}, {"woodwinds"}),  # no "bass" in "bassoon"
    ("Deep synth bass and a drum kit", {"synth bass", "drum kit"}, {"bass", "drums"}),
    ("Walking upright bass with brushed drums", {"upright bass", "drum kit"}, {"bass", "drums"}),
    ("Warm synth pads, ambient and slow", {"warm pad"}, {"synth"}),
    ("Shimmering synthesizer drone", set(), {"synth"}),
    ("Funky electric bass line with a tight drum groove", {"electric bass", "drum kit"}, {"bass", "drums"}),
    ("Smoky tenor saxophone ballad", {"tenor sax"}, {"woodwinds"}),
    ("Lively folk jig on the fiddle", {"fiddle"}, {"strings"}),
    ("A proud fanfare for the woodwinds", set(), {"woodwinds"}),
    ("Graceful chamber arrangement for keys", set(), {"piano"}),
    ("Some calm music, slow", set(), set()),
    ("", set(), set()),
])
def test_free_wording_names_the_instruments_and_families(text, instruments, families):
    assert parse_instruments(text) == (instruments, families)


def test_every_instrument_and_family_has_a_slot():
    # slots are append-only: a model trained on them breaks if one moves
    assert set(BY_NAME) | {DRUM_KIT.name} <= set(INSTRUMENT_SLOTS)
    assert set(FAMILIES) <= set(FAMILY_SLOTS)
    assert len(set(INSTRUMENT_SLOTS)) == len(INSTRUMENT_SLOTS) and len(set(FAMILY_SLOTS)) == len(FAMILY_SLOTS)
    assert INSTRUMENT_SLOTS[:3] == ("piano", "bright piano", "electric piano") and FAMILY_SLOTS[0] == "bass"


def test_corpus_captions_give_back_their_clips_families():
    rng = np.random.default_rng(0)
    checked = 0
    for style in STYLES.values():
        for ensemble, voices in style.ensembles:
            instruments = sorted(set(voices))
            tags = {"instruments": instruments, "families": sorted({BY_NAME[n].family for n in instruments}),
                    "tempo_bpm": 100, "key": "D", "mode": "minor", "style": style.name, "adjectives": list(style.adjectives),
                    "dynamics_range": list(style.dynamics), "meter": "4/4", "ensemble": ensemble,
                    "ensemble_complete": True, "segments": []}
            for _ in range(8):
                caption = resample_caption({"caption": "", "tags": tags}, rng, 1.0)
                names, families = parse_instruments(caption)
                assert families == set(tags["families"]), caption
                assert names <= set(instruments) | {"string ensemble", "brass section"}, caption
                checked += 1
    assert checked > 100


def test_instrument_vector_sets_family_then_instrument_slots():
    vector = instrument_vector({"marimba"}, {"mallets"})
    assert vector.shape == (INSTRUMENT_DIM,) and vector.sum() == 2
    assert vector[FAMILY_SLOTS.index("mallets")] == 1
    assert vector[len(FAMILY_SLOTS) + INSTRUMENT_SLOTS.index("marimba")] == 1


def test_instrument_tokens_are_opt_in_and_leave_the_first_layout_alone():
    text = "Soft vibraphone lullaby, 70 BPM, F major"
    plain, with_instruments = attribute_tokens(text, 384), attribute_tokens(text, 384, instruments=True)
    assert plain.shape == (2, 384) and with_instruments.shape == (3, 384)
    assert torch.equal(plain, with_instruments[:2])
    assert torch.allclose(with_instruments.norm(dim=-1), torch.full((3,), TOKEN_NORM))
    assert with_instruments[2, :MIN_DIM].abs().sum() == 0  # the instrument token lives past the tempo/key layout
    assert not torch.equal(attribute_tokens("solo marimba", 384, True), attribute_tokens("solo harp", 384, True))
    assert attribute_tokens("just some music", 384, instruments=True).shape == (0, 384)
    with pytest.raises(ValueError, match="at least"):
        attribute_tokens("solo harp", MIN_DIM_WITH_INSTRUMENTS - 1, instruments=True)


def test_encoder_with_instruments_adds_one_token_per_prompt_that_names_them():
    states, mask = AttributeTextEncoder(FakeEncoder(), instruments=True).encode(["solo cello", "quiet music"])
    assert mask.sum(1).tolist() == [1 + 2, 2]
    assert torch.equal(states[0, 0], attribute_tokens("solo cello", 384, instruments=True)[0])
