"""The corpus builder end to end on a tiny score folder: facts in tags and captions match the MIDI,
splits never share a work, builds are byte-identical for a seed and resume."""

import shutil
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf
from caption_facts import named_instruments

from tunesmith.data.corpus import BuildOptions, build_corpus, split_of
from tunesmith.data.instruments import BY_NAME, DRUM_CHANNEL
from tunesmith.data.manifest import read_manifest

pytest.importorskip("fluidsynth")

# a small tune written for these tests (two reels in one ABC file)
ABC = """X:1
T:Test Reel
M:4/4
L:1/8
K:G
|:GABc dedB|dedB dedB|c2ec B2dB|c2A2 A2BA|GABc dedB|dedB dedB|c2ec B2dB|A2F2 G4:|
X:2
T:Test Waltz
M:3/4
L:1/8
K:Dm
|:D2F2A2|d4 cA|B2A2G2|F4 E2|D2F2A2|d4 f2|e2c2A2|d6:|
"""

MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
NAMES = {"C": 0, "C-sharp": 1, "D-flat": 1, "D": 2, "E-flat": 3, "E": 4, "F": 5, "F-sharp": 6, "G": 7,
         "G-sharp": 8, "A-flat": 8, "A": 9, "B-flat": 10, "B": 11}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    from music21 import corpus

    folder = tmp_path_factory.mktemp("scores")
    for name in ("bwv66.6", "bwv11.6", "bwv40.8"):
        shutil.copy(Path(corpus.__file__).parent / "bach" / f"{name}.mxl", folder / f"{name}.mxl")
    (folder / "tunes.abc").write_text(ABC)
    return folder


@pytest.fixture(scope="module")
def fonts(tmp_path_factory):
    """Two SoundFonts by name (links to the one installed: CI has one), so that every build picks per render."""
    from tunesmith.data.soundfont import find_soundfont

    folder = tmp_path_factory.mktemp("fonts")
    for name in ("GM-A.sf2", "GM-B.sf2"):
        (folder / name).symlink_to(find_soundfont())
    return [str(folder / "GM-B.sf2"), str(folder / "GM-A.sf2")]  # out of order: the build sorts them


def _build(out, scores, fonts, workers=2, hours=0.03, seed=0):
    options = BuildOptions(out=str(out), hours=hours, seed=seed, sources=[str(scores)], workers=workers,
                           min_clip=6.0, max_clip=14.0, sample_rate=16000, soundfonts=fonts)
    return build_corpus(options, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, scores, fonts):
    out = tmp_path_factory.mktemp("corpus")
    summary = _build(out, scores, fonts)
    return out, summary, read_manifest(out / "manifest.jsonl")


def _midi_facts(path):
    mid = mido.MidiFile(str(path))
    programs, drums, tempo, key, hist = set(), False, None, None, np.zeros(12)
    for track in mid.tracks:
        now, on = 0, {}
        for msg in track:
            now += msg.time
            if msg.type == "set_tempo":
                tempo = msg.tempo
            elif msg.type == "key_signature":
                key = msg.key
            elif msg.type == "program_change" and msg.channel != DRUM_CHANNEL:
                programs.add(msg.program)
            elif msg.type == "note_on" and msg.velocity > 0:
                drums |= msg.channel == DRUM_CHANNEL
                on[(msg.channel, msg.note)] = now
            elif msg.type in ("note_off", "note_on") and (msg.channel, msg.note) in on:
                if msg.channel != DRUM_CHANNEL:
                    hist[msg.note % 12] += now - on.pop((msg.channel, msg.note))
    return programs, drums, tempo, key, hist


def test_build_reaches_hours_and_writes_card(built):
    out, summary, records = built
    assert summary["hours"] >= 0.03 - 14 / 3600
    assert sum(r["duration"] for r in records) >= 0.03 * 3600 - 14
    assert (out / "READY").is_file() and (out / "CARD.md").read_text().startswith("# tunesmith open corpus")
    for r in records:
        info = sf.info(str(out / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        assert 6.0 - 1e-6 <= r["duration"] <= 14.0 + 1e-6


def test_captions_name_only_instruments_in_the_midi(built):
    out, _, records = built
    for r in records:
        programs, drums, _, _, _ = _midi_facts(out / r["midi"])
        tags = r["tags"]
        assert {BY_NAME[n].program for n in tags["instruments"] if n != "drum kit"} == programs
        assert ("drum kit" in tags["instruments"]) == drums == tags["drums"]
        named = named_instruments(r["caption"], tags["ensemble"] if tags["ensemble_complete"] else "\0")
        assert named <= set(tags["instruments"]), (r["caption"], tags["instruments"])
        assert named or tags["ensemble_complete"], r["caption"]
        families = {BY_NAME[n].family if n != "drum kit" else "drums" for n in tags["instruments"]}
        assert families == set(tags["families"])


def test_tempo_and_key_tags_match_the_midi(built):
    out, _, records = built
    agree = 0
    for r in records:
        _, _, tempo, key, hist = _midi_facts(out / r["midi"])
        tags = r["tags"]
        beat = {"quarter": 1.0, "dotted quarter": 1.5, "half": 2.0, "eighth": 0.5}[tags["beat"]]
        assert abs(60e6 / tempo - tags["tempo_bpm"] * beat) < 0.05
        assert abs(60e6 / tempo - tags["quarter_bpm"]) < 0.01
        tonic = NAMES[tags["key"]]
        mido_major = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
        mido_minor = ["Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"]
        assert key == (mido_major if tags["mode"] == "major" else mido_minor)[tonic]
        agree += _estimated_key(hist) == (tonic, tags["mode"])
        work_tonic, work_mode = r["tags"]["work_key"].split(" ")
        assert work_mode in ("major", "minor") and work_tonic in NAMES
    # the clip's notes are in the tagged key (the work's key only breaks near-ties)
    assert agree >= 0.8 * len(records), (agree, len(records))


def _estimated_key(hist):
    """Krumhansl-Schmuckler: the key whose rotated profile correlates best with the pitch-class time."""
    best = max(((np.corrcoef(np.roll(profile, tonic), hist)[0, 1], tonic, mode)
                for tonic in range(12) for mode, profile in (("major", MAJOR), ("minor", MINOR))))
    return best[1], best[2]


def test_splits_are_by_work(built):
    _, _, records = built
    split_of_source = {}
    for r in records:
        assert split_of_source.setdefault(r["source"], r["split"]) == r["split"]
        assert r["split"] == split_of(r["source"])
    names = [f"w{i}" for i in range(2000)]
    shares = {s: sum(split_of(n) == s for n in names) / len(names) for s in ("train", "valid", "test")}
    assert 0.87 < shares["train"] < 0.93 and 0.03 < shares["valid"] < 0.07


def test_each_render_has_one_soundfont_drawn_by_the_seed_and_recorded(built, fonts):
    """Per render, not per clip: the clips of one render share it; the seed, work and render decide it."""
    from tunesmith.data.manifest import stable_hash
    from tunesmith.data.soundfont import pick_soundfont

    out, summary, records = built
    by_render = {}
    for r in records:
        render = r["id"].rsplit("-c", 1)[0]
        assert by_render.setdefault(render, r["soundfont"]) == r["soundfont"]
        index = int(render.rsplit("-r", 1)[1])
        assert r["soundfont"] == Path(pick_soundfont(sorted(fonts), 0, stable_hash(r["source"]), index)).stem
    assert set(by_render.values()) == {"GM-A", "GM-B"}  # both used
    assert summary["soundfonts"] == {name: sum(r["soundfont"] == name for r in records) for name in ("GM-A", "GM-B")}
    card = (out / "CARD.md").read_text()
    assert "| GM-A | GM-A.sf2 |" in card and "unknown (user-supplied)" in card


def test_soundfont_choice_is_seeded_and_known_ones_carry_their_licence():
    from tunesmith.data.soundfont import SOUNDFONTS, find_soundfonts, pick_soundfont, soundfont_licence

    fonts = ["a.sf2", "b.sf2", "c.sf2"]
    picks = [pick_soundfont(fonts, 0, 12345, k) for k in range(60)]
    assert picks == [pick_soundfont(fonts, 0, 12345, k) for k in range(60)]
    assert set(picks) == set(fonts) and picks != [pick_soundfont(fonts, 1, 12345, k) for k in range(60)]
    assert pick_soundfont(["only.sf2"], 3, 1, 2) == "only.sf2"
    assert all(info.licence for info in SOUNDFONTS) and soundfont_licence("FluidR3_GM").startswith("MIT")
    installed = find_soundfonts()
    assert installed == sorted(installed, key=lambda p: Path(p).stem) or len(installed) == 1


def test_long_clips_have_time_aware_segments(built):
    _, _, records = built
    for r in records:
        segs = r["tags"]["segments"]
        if not segs:
            continue
        assert r["duration"] > 20.0
        assert segs[0]["start"] == 0.0 and abs(segs[-1]["end"] - r["duration"]) < 0.01
        assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:]))
        assert segs[0]["text"].startswith("0:00-") and segs[0]["text"] in r["caption"]


@pytest.mark.slow
def test_same_seed_same_bytes_and_resume(built, scores, fonts, tmp_path):
    out, _, _ = built
    other = tmp_path / "again"
    _build(other, scores, fonts[::-1], workers=1, hours=0.015)  # a smaller build first, then resumed to full size
    _build(other, scores, fonts, workers=1)
    assert (other / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    first = read_manifest(out / "manifest.jsonl")[0]
    assert (other / first["audio"]).read_bytes() == (out / first["audio"]).read_bytes()
    different = tmp_path / "seed1"
    _build(different, scores, fonts, seed=1, hours=0.01)
    assert (different / "manifest.jsonl").read_bytes()[:2000] != (out / "manifest.jsonl").read_bytes()[:2000]


def test_bad_options_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="hours"):
        BuildOptions(out=str(tmp_path), hours=0)
    with pytest.raises(ValueError, match="max-clip"):
        BuildOptions(out=str(tmp_path), hours=1, min_clip=20, max_clip=10)
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        build_corpus(BuildOptions(out=str(tmp_path / "o"), hours=0.01, sources=[str(tmp_path / "nope")]),
                     progress=False)


def test_clip_plan_respects_limits_and_bar_lines():
    from tunesmith.data.arrange import Arrangement, PPQ
    from tunesmith.data.clips import plan_clips

    rng = np.random.default_rng(0)
    for bar_quarters in (3, 4, 8, 12):
        bars = [i * bar_quarters * PPQ for i in range(41)]
        arr = Arrangement("w", 0, "chamber", "piano", 90, 1.0, 600000, 0, 0, "major", bars, ["4/4"] * 40, [], [],
                          "room", 1, "steady")
        clips = plan_clips(arr, rng, 6.0, 14.0, tail_seconds=1.0)
        assert clips, bar_quarters
        for c in clips:
            assert 6.0 <= c.duration <= 14.0 + 1e-9
            assert c.start_tick in bars and c.end_tick in bars
        assert all(a.end_tick == b.start_tick for a, b in zip(clips, clips[1:]))
