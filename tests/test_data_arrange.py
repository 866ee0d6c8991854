"""Arranging pieces: harmonisation, drum patterns, determinism, ranges, captions, SoundFont lookup."""

import numpy as np
import pytest

from tunesmith.data.arrange import PPQ, arrange
from tunesmith.data.captions import caption
from tunesmith.music import tonic_name
from tunesmith.data.clips import _merge_short
from tunesmith.data.drums import bar_pattern, meter_class
from tunesmith.data.harmony import harmonize, spans
from tunesmith.data.score import Piece
from tunesmith.data.soundfont import SoundFontError, find_soundfont
from tunesmith.data.styles import STYLES


def _tune(bars=8, meter="4/4", bar_ql=4.0):
    # C-major arpeggios: bar i outlines I, IV, V, I ... so the harmoniser has a known answer
    triads = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]
    notes = []
    for b in range(bars):
        for k, pitch in enumerate(triads[b % 4]):
            notes.append([b * bar_ql + k * bar_ql / 3, bar_ql / 3, pitch])
    return Piece(id="test/tune", title="Tune", composer="", era="traditional", collection="test", parts=[notes],
                 measure_starts=[b * bar_ql for b in range(bars + 1)], meters=[meter] * bars,
                 bar_lengths=[bar_ql] * bars, beat_ql=1.0, tonic_pc=0, mode="major", monophonic=True)


def test_harmonizer_finds_the_outlined_chords():
    piece = _tune()
    chords = harmonize(piece.parts[0], [(a, a + 4.0) for a in piece.measure_starts[:-1]], 0, "major")
    assert [c.label for c in chords] == ["I", "IV", "V", "I"] * 2
    assert len(spans([0.0, 4.0, 8.0], [4.0, 4.0], 1.0)) == 4  # 4/4 bars: chords every half bar
    assert len(spans([0.0, 3.0, 6.0], [3.0, 3.0], 1.0)) == 2  # 3/4 bars: one chord per bar


@pytest.mark.parametrize("meter", ["2/4", "4/4", "2/2", "3/4", "6/8", "12/8", "5/4"])
def test_drum_patterns_stay_inside_the_bar(meter):
    num, den = (int(x) for x in meter.split("/"))
    beats = num / 3 if meter_class(meter) == "compound" else num
    for style in STYLES:
        hits = bar_pattern(style, meter)
        assert hits and all(0 <= off < beats and 35 <= note <= 81 and 0 < vel <= 127 for off, note, vel in hits)


def test_arrangement_is_deterministic_and_in_range():
    piece = _tune(bars=16)
    for seed in range(12):
        a = arrange(piece, np.random.default_rng(seed))
        b = arrange(piece, np.random.default_rng(seed))
        assert [t.notes for t in a.tracks] == [t.notes for t in b.tracks]
        assert a.tempo_bpm == b.tempo_bpm and a.transpose == b.transpose
        lo, hi = STYLES[a.style].tempo
        assert lo <= a.tempo_bpm <= hi and a.tonic_pc == (a.transpose % 12)
        assert a.sections[0].start == 0 and a.sections[-1].end == a.bar_ticks[-1]
        for t in a.tracks:
            assert t.notes, (a.style, t.role)
            if t.role != "drums":
                inside = np.mean([t.instrument.low <= p <= t.instrument.high for _, _, p, _ in t.notes])
                assert inside >= 0.9, (t.instrument.name, inside)
            assert all(0 <= s < e and 1 <= v <= 127 for s, e, _, v in t.notes)
        melody = a.tracks[0].notes
        assert {p % 12 for _, _, p, _ in melody} <= {(pc + a.transpose) % 12 for pc in (0, 2, 4, 5, 7, 9, 11)}
        assert a.bar_ticks[1] == 4 * PPQ


def test_caption_states_the_facts_in_varied_words():
    tags = {"instruments": ["violin", "piano"], "families": ["piano", "strings"], "tempo_bpm": 96, "key": tonic_name(10, "major"),
            "mode": "major", "meter": "3/4", "style": "waltz", "ensemble": "violin with piano", "ensemble_complete": False,
            "dynamics": "p", "dynamics_range": ["p", "mf"], "space": "room", "composer": "traditional",
            "era": "traditional", "work": "A Tune", "collection_label": "", "adjectives": ["lilting"], "segments": []}
    texts = {caption(tags, np.random.default_rng(s)) for s in range(30)}
    assert len(texts) >= 20
    for text in texts:
        assert "B-flat major" in text and "96" in text and "violin" in text.lower() and "piano" in text.lower()


def test_short_segments_fold_into_neighbours():
    segs = [{"start": 0.0, "end": 2.0}, {"start": 2.0, "end": 12.0}, {"start": 12.0, "end": 13.0}]
    assert [(s["start"], s["end"]) for s in _merge_short(segs, 3.0)] == [(0.0, 13.0)]


def test_missing_soundfont_names_the_package(tmp_path, monkeypatch):
    with pytest.raises(SoundFontError, match="SoundFont not found"):
        find_soundfont(tmp_path / "none.sf2")
    monkeypatch.setattr("tunesmith.data.soundfont.CANDIDATES", ())
    monkeypatch.delenv("TUNESMITH_SOUNDFONT", raising=False)
    with pytest.raises(SoundFontError, match="fluid-soundfont-gm"):
        find_soundfont()


def test_render_is_deterministic_stereo_and_audible():
    pytest.importorskip("fluidsynth")
    from tunesmith.data.render import render

    try:
        soundfont = find_soundfont()
    except SoundFontError:
        pytest.skip("no GM SoundFont installed")
    arr = arrange(_tune(bars=4), np.random.default_rng(3), max_seconds=12.0, min_seconds=4.0)
    a = render(arr, soundfont, 16000, channels=2, tail_seconds=0.5)
    b = render(arr, soundfont, 16000, channels=2, tail_seconds=0.5)
    assert a.shape == (2, round((arr.seconds(arr.bar_ticks[-1]) + 0.5) * 16000))
    assert np.array_equal(a, b) and np.isfinite(a).all()
    assert np.sqrt((a**2).mean()) > 1e-3
    mono = render(arr, soundfont, 16000, channels=1, tail_seconds=0.5)
    assert mono.shape == (1, a.shape[1]) and np.allclose(mono[0], a.mean(axis=0), atol=1e-6)


def test_metadata_filters_works(tmp_path):
    from tunesmith.data.sources import folder_works, read_metadata

    for name in ("a.mxl", "b.mxl", "c.abc"):
        (tmp_path / name).write_text("x")
    (tmp_path / "meta.csv").write_text("path,rating,tags\na.mxl,4.5,folk;dance\nb.mxl,2.0,folk\nc.abc,5,hymn\n")
    meta = read_metadata(tmp_path / "meta.csv", min_rating=4.0, tags=("folk",))
    assert list(meta) == ["a.mxl"]
    assert [w.id for w in folder_works(tmp_path, meta)] == [f"{tmp_path.name}/a"]
    assert len(folder_works(tmp_path)) == 3
    assert len(folder_works(tmp_path, read_metadata(tmp_path / "meta.csv"), only_listed=False)) == 3
    (tmp_path / "metadata.csv").write_text("path,rating,composer_name,title\nb.mxl,3,Anon,Song\n")
    from tunesmith.data.corpus import BuildOptions, list_works

    works = list_works(BuildOptions(out=str(tmp_path / "o"), hours=1, sources=[str(tmp_path)]))
    assert len(works) == 3 and [(w.composer, w.title) for w in works if w.id.endswith("/b")] == [("Anon", "Song")]
    picky = list_works(BuildOptions(out=str(tmp_path / "o"), hours=1, sources=[str(tmp_path)], min_rating=2.5))
    assert [w.id for w in picky] == [f"{tmp_path.name}/b"]


def test_accompaniment_follows_the_melody_after_transposition():
    piece = _tune(bars=8, meter="3/4", bar_ql=3.0)
    checked = 0
    for seed in range(20):
        a = arrange(piece, np.random.default_rng(seed))
        comp = [t for t in a.tracks if t.role in ("accompaniment", "bass")]
        for bar, triad in ((1, (5, 9, 0)), (2, (7, 11, 2))):  # the IV and V bars of the tune
            start, end = a.bar_ticks[bar], a.bar_ticks[bar + 1]
            allowed = {(pc + a.transpose) % 12 for pc in triad}
            for t in comp:
                pcs = {p % 12 for s, _, p, _ in t.notes if start <= s < end}
                assert pcs <= allowed, (seed, a.style, t.role, bar, pcs, allowed)
                checked += bool(pcs)
    assert checked > 20


def test_key_finding_on_exact_notes():
    from tunesmith.data.keys import estimate_key, pitch_class_weights

    scale = [(i, i + 1, p) for i, p in enumerate([62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62])]
    assert estimate_key(pitch_class_weights(scale)) == (2, "major")
    minor = [(i, i + 1, p) for i, p in enumerate([57, 60, 64, 69, 71, 72, 68, 69, 64, 57])]
    assert estimate_key(pitch_class_weights(minor)) == (9, "minor")
    assert estimate_key(np.zeros(12), prior=(5, "major")) == (5, "major")
    with pytest.raises(ValueError, match="no pitched notes"):
        estimate_key(np.zeros(12))
