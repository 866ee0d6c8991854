"""`tunesmith data index`: good files are indexed, bad ones skipped with a reason, nothing crashes."""

import json

import numpy as np
import pytest
import soundfile as sf

from tunesmith.cli import main
from tunesmith.data.index import IndexOptions, index_folder
from tunesmith.data.manifest import read_manifest


def _tone(seconds, sr=8000, channels=2):
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wav] * channels, axis=1).astype(np.float32)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "songs"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "good.wav", _tone(3.5), 8000)
    (d / "good.txt").write_text("a sine tone\n")
    sf.write(d / "sub" / "tagged.flac", _tone(2.0, channels=1), 8000)
    (d / "sub" / "tagged.json").write_text(json.dumps({"caption": "another tone", "tags": {"mood": "calm"}}))
    sf.write(d / "silent.wav", np.zeros((8000, 1), np.float32), 8000)
    (d / "silent.txt").write_text("nothing")
    sf.write(d / "short.wav", _tone(0.2), 8000)
    (d / "short.txt").write_text("blip")
    nan = _tone(2.0)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 8000, subtype="FLOAT")
    (d / "nan.txt").write_text("broken")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    (d / "corrupt.txt").write_text("corrupt")
    raw = (d / "good.wav").read_bytes()
    (d / "truncated.flac").write_bytes(b"fLaC" + raw[4:60])
    (d / "truncated.txt").write_text("truncated")
    (d / "empty.wav").write_bytes(b"")
    (d / "empty.txt").write_text("empty")
    sf.write(d / "nocaption.wav", _tone(2.0), 8000)
    return d


def test_index_skips_bad_files_with_reasons(folder):
    report = index_folder(IndexOptions(folder=str(folder)), progress=False)
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"silent.wav", "short.wav", "nan.wav", "corrupt.wav", "truncated.flac", "empty.wav",
                            "nocaption.wav"}
    assert reasons["silent.wav"].startswith("silent") and reasons["short.wav"].startswith("too short")
    assert "NaN" in reasons["nan.wav"] and reasons["corrupt.wav"].startswith("unreadable")
    assert reasons["nocaption.wav"].startswith("no caption")
    records = read_manifest(folder / "manifest.jsonl")
    assert {r["id"]: r["caption"] for r in records} == {"good.wav": "a sine tone", "sub-tagged.flac": "another tone"}
    tagged = next(r for r in records if r["source"] == "sub/tagged.flac")
    assert tagged["tags"] == {"mood": "calm"} and tagged["channels"] == 1 and tagged["audio"] == "sub/tagged.flac"
    assert json.loads((folder / "index_report.json").read_text())["clips"] == 2


def test_index_processing_and_caption_table(folder, tmp_path):
    table = tmp_path / "captions.csv"
    table.write_text("file,caption,genre,split\ngood.wav,table caption,drone,test\nnocaption.wav,now captioned,,\n")
    out = tmp_path / "out"
    report = index_folder(IndexOptions(folder=str(folder), out=str(out), captions=str(table), sample_rate=16000,
                                       channels=1, segment_seconds=1.5, min_seconds=1.0, loudness_db=-20.0),
                          progress=False)
    records = read_manifest(out / "manifest.jsonl")
    good = [r for r in records if r["source"] == "good.wav"]
    assert [r["duration"] for r in good] == [1.5, 1.5]  # 3.5 s -> 1.5 + 1.5, the 0.5 s tail dropped
    assert all(r["caption"] == "table caption" and r["tags"] == {"genre": "drone"} and r["split"] == "test"
               for r in good)
    wav, sr = sf.read(out / good[0]["audio"])
    assert sr == 16000 and wav.ndim == 1 and abs(20 * np.log10(np.sqrt((wav**2).mean())) + 20) < 0.5
    assert any(r["source"] == "nocaption.wav" for r in records)
    assert report["clips"] == len(records)


def test_index_cli_prints_count(folder, capsys):
    assert main(["data", "index", str(folder), "--default-caption", "music"]) == 0
    out = capsys.readouterr().out
    assert "skipped corrupt.wav: unreadable" in out and "indexed 3 of 9 files" in out
    assert main(["data", "index", str(folder / "missing")]) == 2
