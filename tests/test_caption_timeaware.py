"""The time-aware captioner (FUTGA): boundaries by novelty, sections described and related, on
signals whose facts are known (hand-worked matrices, synthesised sections, SoundFont renders of
a planned section change), and the folder-to-manifest path with its skipped files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunesmith.audio import save_audio
from tunesmith.data.captioner import (
    TimeCaptioner,
    boundary_scores,
    f_measure,
    level_word,
    novelty_curve,
    pick_boundaries,
    section_labels,
)
from tunesmith.eval import probes as P
from tunesmith.eval.metrics import Key, tempo_match

SR = 24000
pytestmark = pytest.mark.usefixtures("one_thread")


# -- pure parts, against hand-worked values ----------------------------------------------------

def test_novelty_of_two_opposite_blocks_is_one_at_the_change_and_zero_inside():
    a, b = np.array([1.0, 0.0]), np.array([-1.0, 0.0])
    features = np.stack([a] * 20 + [b] * 20, axis=1)  # frames 0-19 one way, 20-39 the other
    novelty = novelty_curve(features, half_width=4)
    assert novelty[20] == pytest.approx(1.0)  # every kernel sign agrees with the matrix
    assert abs(novelty[10]) < 1e-12 and abs(novelty[30]) < 1e-12  # a uniform block: + and - cancel
    assert int(np.argmax(novelty)) == 20
    assert pick_boundaries(novelty, rate=4.0, threshold=0.5, min_gap=1.0, duration=10.0) == [5.0]


def test_boundary_matching_is_one_to_one_within_the_tolerance():
    assert boundary_scores([5.0, 10.5, 30.0], [4.0, 11.0, 20.0], 2.0) == (2, 3, 3)
    assert boundary_scores([10.0, 10.5], [10.0], 2.0) == (1, 2, 1)  # one reference, matched once
    assert f_measure(2, 3, 3) == pytest.approx(2 / 3)
    assert f_measure(0, 0, 0) == 1.0 and f_measure(0, 2, 0) == 0.0


def test_sections_repeat_a_letter_only_when_alike():
    a, b, c = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    assert section_labels([a, b, a + 0.05], 0.9) == ["A", "B", "A"]
    assert section_labels([a, b, c], 0.9) == ["A", "B", "C"]
    assert level_word(-40) == "very soft" and level_word(-20) == "medium" and level_word(-5) == "very loud"


# -- the captioner on audio with a known plan ---------------------------------------------------

@pytest.fixture(scope="module")
def captioner() -> TimeCaptioner:
    return TimeCaptioner()


def _aba(bpm: int = 100, bars: int = 3) -> tuple[np.ndarray, float]:
    """A quiet dull tune, a loud bright one, the quiet one again: sections of bars * 4 beats in D minor."""
    span = bars * 4 * 60 / bpm
    key = Key(2, "minor")
    quiet = P.synthesize(P.tune_notes(key, bpm, bars=bars, seed=1), SR, span, partials=2) * 0.15
    loud = P.synthesize(P.tune_notes(key, bpm, bars=bars, seed=2), SR, span, partials=8) * 0.9
    return np.concatenate([quiet, loud, quiet]), span


def test_synthesised_aba_gets_its_boundaries_form_tempo_and_mode(captioner):
    wav, span = _aba()
    caption, tags = captioner(torch.from_numpy(wav)[None], SR)
    sections = tags["segments"]
    assert [s["label"] for s in sections] == ["A", "B", "A"]
    assert abs(sections[1]["start"] - span) <= 2.0 and abs(sections[2]["start"] - 2 * span) <= 2.0
    assert "louder" in sections[1]["change"] and "softer" in sections[2]["change"]
    assert "return of A" in sections[2]["text"]
    assert tempo_match(tags["tempo_bpm_estimated"], 100, 0.04)
    assert (tags["key"], tags["mode"]) == ("D", "minor")
    assert "form ABA" in caption and caption.endswith(".") and sections[0]["text"] in caption
    assert tags["timed_prompt"].startswith("0:00-0:0")  # what `tunesmith generate` takes back


def test_a_planned_change_from_brass_to_strings_in_a_soundfont_render(captioner):
    if P.find_soundfont() is None:
        pytest.skip("no General MIDI SoundFont installed")
    key, bpm, bars = Key(2, "minor"), 96, 4
    span = bars * 4 * 60 / bpm  # 10 s

    def notes(seed: int) -> list:  # a tune over two i-iv-V-i cadences: the key is in the notes, not only implied
        chords = [(s + o, n, p, 0.5) for o in (0.0, 8 * 60 / bpm) for s, n, p, _ in P.cadence_notes(key, bpm)]
        return P.tune_notes(key, bpm, bars=bars, seed=seed) + chords

    brass = P.render_with_soundfont(notes(3), SR, span, program=61)  # brass section, soft
    strings = P.render_with_soundfont(notes(4), SR, span, program=48)  # then strings, loud
    wav = np.concatenate([0.25 * brass, 0.8 * strings])
    _, tags = captioner(torch.from_numpy(wav)[None], SR)
    sections = tags["segments"]
    assert len(sections) == 2 and abs(sections[1]["start"] - span) <= 2.0
    assert "brass" in sections[0]["families"] and "strings" in sections[1]["families"]
    assert "louder" in sections[1]["change"] and "strings join" in sections[1]["text"]
    assert (tags["key"], tags["mode"]) == ("D", "minor") and tempo_match(tags["tempo_bpm_estimated"], bpm, 0.04)


def test_a_folder_becomes_a_manifest_with_bad_files_skipped(tmp_path, captioner):
    from tunesmith.cli import main
    from tunesmith.data.manifest import read_manifest, resolve_audio

    wav, _ = _aba(bpm=120, bars=1)  # 6 s
    (tmp_path / "music" / "sub").mkdir(parents=True)
    save_audio(tmp_path / "music" / "tune.wav", torch.from_numpy(wav)[None], SR)
    save_audio(tmp_path / "music" / "sub" / "quiet.flac", torch.from_numpy(wav[: 3 * SR])[None], SR)
    (tmp_path / "music" / "broken.wav").write_bytes(b"RIFF not really")
    out = tmp_path / "captions" / "manifest.jsonl"
    assert main(["data", "caption", str(tmp_path / "music"), "--out", str(out), "--no-progress"]) == 0
    records = read_manifest(out)
    assert sorted(resolve_audio(out, r).name for r in records) == ["quiet.flac", "tune.wav"]
    assert sorted(r["id"] for r in records) == ["sub-quiet", "tune"] and all(r["caption"] and r["tags"]["timed_prompt"] for r in records)
    assert main(["data", "caption", str(tmp_path / "music" / "broken.wav"), "--out", str(tmp_path / "x.jsonl"),
                 "--no-progress"]) == 2
    assert not (tmp_path / "x.jsonl").exists()
