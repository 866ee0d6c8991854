"""Tempo words (tunesmith.conditioning.tempo_words): prompts without a BPM number get a clock at a
tempo the seed draws from the corpus builder's own ranges."""

from __future__ import annotations

import pytest
import torch

from tunesmith.conditioning.beat import beat_clock, prompt_clocks
from tunesmith.conditioning.tempo_words import prompt_tempo, tempo_words
from tunesmith.data.captions import pace_word
from tunesmith.data.styles import STYLES


@pytest.mark.parametrize("prompt, style", [("a march for brass band", "march"), ("A tender Ballad on piano", "ballad"),
                                           ("waltz for strings", "waltz"), ("a hymn for organ", "chorale"),
                                           ("jazzy piano trio", "swing"), ("a lively tune for fiddle", "jig"),
                                           ("something serene with bells", "ambient")])
def test_a_style_word_gives_the_corpus_range_of_that_style(prompt, style):
    found = tempo_words(prompt)
    assert found is not None and (found.low, found.high) == STYLES[style].tempo


@pytest.mark.parametrize("word, caption_word", [("slow", "slow"), ("adagio", "slow"), ("fast", "fast"),
                                                ("up-tempo", "fast"), ("very fast", "very fast"),
                                                ("moderate", "moderate")])
def test_a_pace_word_gives_exactly_the_tempi_the_captions_call_so(word, caption_word):
    found = tempo_words(f"a {word} piece for flute")
    assert found is not None
    assert all(pace_word(bpm) == caption_word for bpm in range(found.low, found.high + 1))
    assert pace_word(found.low - 1) != caption_word or found.low == min(s.tempo[0] for s in STYLES.values())
    assert pace_word(found.high + 1) != caption_word or found.high == max(s.tempo[1] for s in STYLES.values())


def test_a_style_with_a_pace_word_takes_the_part_that_fits_both():
    fast_jig = tempo_words("a fast jig")
    assert (fast_jig.low, fast_jig.high) == (112, 132)  # jig 100-132, fast 112-149
    slow_march = tempo_words("a slow march")  # slower than any march of the corpus: its slow third
    assert slow_march.low == STYLES["march"].tempo[0] and slow_march.high < 110
    slow, fast = tempo_words("a slow ballad"), tempo_words("a very fast rock song")
    assert slow.high < fast.low  # the words, not their order, decide


def test_every_pace_adjective_is_a_corpus_style_adjective():
    from tunesmith.conditioning.tempo_words import PACE_ADJECTIVES

    corpus = {a for s in STYLES.values() for a in s.adjectives}
    assert set(PACE_ADJECTIVES) <= corpus, set(PACE_ADJECTIVES) - corpus


def test_a_number_wins_and_no_words_give_no_clock():
    assert prompt_tempo("a slow march at 140 BPM", seed=5) == 140.0
    for text in ("a piece for piano in C major", "a warm pad drone", "breakfast music", "steadfast strings",
                 "a gentle lullaby", "an elegant minuet"):
        assert tempo_words(text) is None and prompt_tempo(text, seed=1) is None


def test_the_seed_draws_the_tempo_over_the_whole_range():
    found = tempo_words("a ballad")
    draws = [prompt_tempo("a ballad", seed=s) for s in range(200)]
    assert draws[:5] == [prompt_tempo("a ballad", seed=s) for s in range(5)]  # reproducible
    assert all(found.low <= d <= found.high for d in draws)
    assert min(draws) == found.low and max(draws) == found.high and len(set(draws)) > 15


def test_prompt_clocks_use_each_rows_seed_and_leave_other_prompts_as_they_were():
    prompts = ["a fast jig", "a piece for piano in C major", "a march, 120 BPM"]
    clocks = prompt_clocks(prompts, 50, 21.5, seed=[3, 4, 5])
    torch.testing.assert_close(clocks[0], beat_clock(prompt_tempo("a fast jig", 3), 50, 21.5))
    assert torch.count_nonzero(clocks[1]) == 0  # no tempo word, no number: no clock, as before
    torch.testing.assert_close(clocks[2], beat_clock(120.0, 50, 21.5))
    one_seed = prompt_clocks(prompts[:1], 50, 21.5, seed=3)
    torch.testing.assert_close(one_seed[0], clocks[0])
