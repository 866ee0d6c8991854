"""The real-recording indexer (tunesmith.data.real) on tiny made-up files: clips, captions,
licences, splits by track."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from tunesmith.data.manifest import read_manifest, split_of
from tunesmith.data.real import RealOptions, RealSource, clip_spans, index_recordings, mix_proportion
from tunesmith.errors import UserError

SR = 8000


def tone(seconds: float, hz: float, amplitude: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture()
def sources(tmp_path):
    game = tmp_path / "game"
    (game / "act2").mkdir(parents=True)
    sf.write(game / "theme.ogg", tone(23.0, 220), SR)  # 2 clips of 10 s; the last 3 s dropped
    sf.write(game / "act2" / "battle.flac", np.stack([tone(12.0, 330, sr=16000), tone(12.0, 440, sr=16000)], 1), 16000)  # stereo, 16 kHz
    sf.write(game / "silence.wav", np.zeros(SR * 12, np.float32), SR)
    sf.write(game / "jingle.wav", tone(2.0, 500), SR)  # too short
    (game / "broken.wav").write_bytes(b"RIFF....not audio")
    (game / "notes.txt").write_text("not audio")
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "a.wav", tone(10.0, 262), SR)
    return [RealSource("game-music", str(game), "GPL-2+", words="game music"),
            RealSource("other-music", str(other), "CC-BY-SA-3.0")]


def test_clip_spans_cut_consecutive_clips_and_spread_a_limit():
    assert clip_spans(23 * SR, SR, 10.0, 5.0) == [(0, 10 * SR), (10 * SR, 20 * SR)]
    assert clip_spans(23 * SR, SR, 10.0, 3.0)[-1] == (20 * SR, 23 * SR)
    assert clip_spans(4 * SR, SR, 10.0, 5.0) == []
    spans = clip_spans(100 * SR, SR, 10.0, 5.0, limit=3)
    assert [a // SR for a, _ in spans] == [0, 30, 60]  # spread over the track, not its start


def test_index_writes_captioned_licensed_clips_split_by_track(sources, tmp_path):
    calls = []

    def captioner(wav, sr):
        calls.append((tuple(wav.shape), sr))
        return f"strings, {wav.shape[-1] / sr:g} s", {"families": ["strings"]}

    out = tmp_path / "out"
    card = index_recordings(RealOptions(out=str(out), sources=sources, sample_rate=SR), captioner, progress=False)
    records = read_manifest(out / "manifest.jsonl")
    by_track = {}
    for r in records:
        by_track.setdefault(r["source"], []).append(r)
        assert r["split"] == split_of(r["source"]) and r["kind"] == "real"
        assert r["licence"] == ("GPL-2+" if r["source"].startswith("game-music/") else "CC-BY-SA-3.0")
        info = sf.info(str(out / r["audio"]))
        assert info.samplerate == SR and info.channels == 1 and abs(info.frames / SR - r["duration"]) < 1e-3
        assert r["caption"] == f"strings, {r['duration']:g} s" and r["tags"] == {"families": ["strings"]}
    assert sorted(by_track) == ["game-music/act2/battle.flac", "game-music/theme.ogg", "other-music/a.wav"]
    assert [r["offset"] for r in by_track["game-music/theme.ogg"]] == [0.0, 10.0]
    assert [r["duration"] for r in by_track["game-music/act2/battle.flac"]] == [10.0]  # resampled; 2 s dropped
    assert len(calls) == len(records) and all(sr == SR for _, sr in calls)
    skipped = {json.loads(line)["file"]: json.loads(line)["reason"] for line in (out / "skipped.jsonl").read_text().splitlines()}
    assert set(skipped) == {"silence.wav", "jingle.wav", "broken.wav"}
    assert "silent" in skipped["silence.wav"] and "shorter" in skipped["jingle.wav"]
    assert card["sources"]["game-music"] == {"licence": "GPL-2+", "clips": 3, "tracks": 2, "hours": round(30 / 3600, 4)}
    assert card["sources"]["other-music"]["clips"] == 1 and card["clips"] == 4
    assert sum(s["clips"] for s in card["splits"].values()) == 4
    assert json.loads((out / "real_card.json").read_text())["hours"] == card["hours"]


def test_the_same_input_gives_the_same_manifest_and_no_captioner_uses_the_sources_words(sources, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    index_recordings(RealOptions(out=str(a), sources=sources, sample_rate=SR), progress=False)
    index_recordings(RealOptions(out=str(b), sources=sources[::-1], sample_rate=SR), progress=False)
    ra, rb = read_manifest(a / "manifest.jsonl"), read_manifest(b / "manifest.jsonl")
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(ra, key=key) == sorted(rb, key=key)
    assert {r["caption"] for r in ra} == {"game music", "music"}


def test_a_split_follows_the_track_not_the_clip():
    ids = [f"src/track{i}.ogg" for i in range(400)]
    splits = [split_of(i) for i in ids]
    assert {"train", "valid", "test"} <= set(splits)
    assert 0.02 < splits.count("test") / len(ids) < 0.09  # about 5% of tracks held out


def test_mix_proportion_and_bad_options(sources, tmp_path):
    assert mix_proportion(30 * 3600, 5 * 3600, 0.25) == pytest.approx(2.0)  # 10 h of 40: one real clip counts twice
    assert mix_proportion(10.0, 10.0, 0.5) == pytest.approx(1.0)
    with pytest.raises(UserError, match="share"):
        mix_proportion(1.0, 1.0, 1.0)
    with pytest.raises(UserError, match="licence"):
        RealSource("x", str(tmp_path), " ")
    with pytest.raises(UserError, match="plain id"):
        RealSource("a b", str(tmp_path), "MIT")
    with pytest.raises(UserError, match="no sources"):
        RealOptions(out=str(tmp_path))
    with pytest.raises(UserError, match="folder not found"):
        index_recordings(RealOptions(out=str(tmp_path / "o"), sources=[RealSource("x", str(tmp_path / "nope"), "MIT")]),
                         progress=False)
    assert math.isfinite(mix_proportion(1.0, 2.0, 0.1))


def test_the_autocaptioner_captions_a_recording(tmp_path):
    """The captioner of tunesmith.adapters (CLAP families, key, tempo) plugs in as it is."""
    from tunesmith.adapters.autocaption import AutoCaptioner

    folder = tmp_path / "src"
    folder.mkdir()
    beat = np.zeros(SR * 10, np.float32)
    for k in range(0, len(beat), SR // 2):  # clicks at 120 BPM over an A-major chord
        beat[k:k + 200] += 0.5
    chord = tone(10.0, 220, 0.1) + tone(10.0, 277.18, 0.1) + tone(10.0, 329.63, 0.1)
    sf.write(folder / "t.wav", beat + chord, SR)
    out = tmp_path / "out"
    index_recordings(RealOptions(out=str(out), sources=[RealSource("s", str(folder), "CC0-1.0")], sample_rate=SR),
                     AutoCaptioner(), progress=False)
    (record,) = read_manifest(out / "manifest.jsonl")
    assert record["tags"]["families"] and record["caption"].startswith(record["tags"]["instruments"][0])
