"""Faults an adversarial user found in the data tools: each must be one line and status 2, or a
skipped file with its reason, never a crash, a hang, a silent loss or a whole file in memory."""

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.signal  # noqa: F401 (imported here, so its import does not count in the memory peak)
import soundfile as sf

from tunesmith.audio import resample
from tunesmith.cli import main
from tunesmith.data import index as index_module
from tunesmith.data.index import IndexOptions, index_folder
from tunesmith.data.manifest import ManifestError, read_manifest
from tunesmith.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _tone(seconds, sr=8000, channels=1, freq=440.0, start=0):
    t = (start + np.arange(int(seconds * sr))) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * freq * t)] * channels, axis=1).astype(np.float32)


def _song(folder, name, seconds=2.0, caption="a tone"):
    sf.write(folder / name, _tone(seconds), 8000)
    if caption is not None:
        (folder / name).with_suffix(".txt").write_text(caption)


# 1. the audio indexer runs on the base install (no music21, mido, FluidSynth)


def _run_without_data_extra(args):
    """``tunesmith ARGS`` in a fresh interpreter where the [data] extra's packages cannot be imported."""
    code = ("import sys\n"
            "for name in ('mido', 'music21', 'fluidsynth', 'webdataset'):\n"
            "    sys.modules[name] = None\n"
            "from tunesmith.cli import main\n"
            f"rc = main({list(args)!r})\n"
            "assert 'tunesmith.data.corpus' not in sys.modules\n"
            "sys.exit(rc)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_index_needs_no_data_extra(tmp_path):
    _song(tmp_path, "a.wav")
    out = tmp_path / "out"
    run = _run_without_data_extra(["data", "index", str(tmp_path), "--out", str(out), "--sample-rate", "16000"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert [r["source"] for r in read_manifest(out / "manifest.jsonl")] == ["a.wav"]
    # the corpus builder does need the extra: it says so in one line, not a traceback
    run = _run_without_data_extra(["data", "build-corpus", "--out", str(tmp_path / "c"), "--hours", "1"])
    assert run.returncode == 2 and "tunesmith[data]" in run.stderr and len(run.stderr.strip().splitlines()) == 1


# 2. a bad caption sidecar skips its file with the reason; the run goes on


def test_bad_sidecars_skip_their_file_not_the_run(tmp_path, capsys):
    _song(tmp_path, "good.wav")
    _song(tmp_path, "latin1.wav", caption=None)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 music")
    sidecars = {
        "tagstring.json": json.dumps({"caption": "rock song", "tags": "rock"}),
        "array.json": "[1, 2, 3]",
        "invalid.json": "{not json",
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "objcaption.json": json.dumps({"caption": {"text": "nested"}}),
        "badsplit.json": json.dumps({"caption": "ok", "split": ["train"]}),
    }
    for name, text in sidecars.items():
        _song(tmp_path, name.replace(".json", ".wav"), caption=None)
        (tmp_path / name).write_text(text)
    assert main(["data", "index", str(tmp_path)]) == 0
    reasons = {s["file"]: s["reason"] for s in json.loads((tmp_path / "index_report.json").read_text())["skipped"]}
    assert set(reasons) == {"latin1.wav"} | {n.replace(".json", ".wav") for n in sidecars}
    assert all("sidecar" in r or "split" in r for r in reasons.values()), reasons
    assert "UTF-8" in reasons["latin1.wav"] and "'tags' must be an object" in reasons["tagstring.wav"]
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["good.wav"]
    assert "skipped deep.wav: sidecar deep.json" in capsys.readouterr().out


@pytest.mark.parametrize("name, text", [
    ("captions.jsonl", '{"file": "a.wav", "caption": "x"}\n{broken\n'),
    ("captions.jsonl", '["a.wav", "x"]\n'),
    ("captions.csv", b"file,caption\na.wav,caf\xe9\n"),
    ("captions.csv", "file,name\na.wav,x\n"),
])
def test_bad_caption_table_is_one_line_and_writes_nothing(tmp_path, capsys, name, text):
    _song(tmp_path, "a.wav", caption=None)
    table = tmp_path / name
    table.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["data", "index", str(tmp_path), "--captions", str(table)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(table) in err
    assert not (tmp_path / "manifest.jsonl").exists()


def test_data_errors_are_user_errors(tmp_path):
    assert issubclass(ManifestError, UserError)
    bad = tmp_path / "m.jsonl"
    bad.write_bytes(b'{"id": "a"}\n\xff\xfe\n')
    with pytest.raises(ManifestError, match="m.jsonl"):
        read_manifest(bad)
    for kwargs in ({"segment_seconds": 0.0}, {"segment_seconds": float("nan")}, {"sample_rate": 0},
                   {"min_seconds": -1.0}):
        with pytest.raises(UserError):
            IndexOptions(folder=str(tmp_path), **kwargs)


# 3. long files are read in blocks: memory is bounded by a block, not by the file


@pytest.fixture()
def long_song(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    sr, minutes = 8000, 10
    with sf.SoundFile(folder / "long.wav", "w", sr, 1, subtype="PCM_16") as f:
        for second in range(60 * minutes):
            f.write(_tone(1.0, sr, start=second * sr))
    (folder / "long.txt").write_text("ten minutes of a sine")
    return folder, sr * 60 * minutes


def _largest_reads(monkeypatch):
    """Record the frame count of every SoundFile.read (-1, the default, means the whole file)."""
    sizes = []
    real = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        sizes.append(frames if frames >= 0 else self.frames)
        return real(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return sizes


@pytest.mark.parametrize("process", [False, True])
def test_long_file_is_read_in_blocks(long_song, tmp_path, monkeypatch, process):
    folder, frames = long_song
    sizes = _largest_reads(monkeypatch)
    options = IndexOptions(folder=str(folder), out=str(tmp_path / "out"))
    if process:  # clips longer than a block: resampled, normalised and written block by block
        options = IndexOptions(folder=str(folder), out=str(tmp_path / "out"), sample_rate=16000, channels=1,
                               segment_seconds=300.0, loudness_db=-20.0)
    tracemalloc.start()
    try:
        report = index_folder(options, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report["skipped"] == [] and max(sizes) <= 2 * index_module.BLOCK_FRAMES
    assert peak < frames * 4 / 3  # the whole file as float32 would be 19 MB
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    if not process:
        assert [r["duration"] for r in records] == [600.0]
        return
    assert [r["duration"] for r in records] == [300.0, 300.0] and [r["offset"] for r in records] == [0.0, 300.0]
    wav, sr = sf.read(tmp_path / "out" / records[1]["audio"], dtype="float32")
    assert sr == 16000 and abs(20 * np.log10(np.sqrt(np.mean(wav**2))) + 20) < 0.2


def test_block_resampling_matches_whole_file(tmp_path, monkeypatch):
    """Block edges leave no trace: the blocks join into what resampling the whole file gives."""
    rng = np.random.default_rng(0)
    noise = (0.2 * rng.standard_normal((22050 * 2, 2))).astype(np.float32)
    sf.write(tmp_path / "n.wav", noise, 22050, subtype="FLOAT")
    (tmp_path / "n.txt").write_text("noise")
    monkeypatch.setattr(index_module, "BLOCK_FRAMES", 1000, raising=False)
    index_folder(IndexOptions(folder=str(tmp_path), out=str(tmp_path / "out"), sample_rate=16000, channels=1),
                 progress=False)
    (record,) = read_manifest(tmp_path / "out" / "manifest.jsonl")
    got, _ = sf.read(tmp_path / "out" / record["audio"], dtype="float32")
    import torch

    want = resample(torch.from_numpy(noise.T.copy()).mean(0, keepdim=True), 22050, 16000).clamp(-1, 1)[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-4  # PCM_16 rounding


def test_full_disk_stops_the_index_with_one_line(tmp_path, monkeypatch, capsys):
    """A write error is the user's to fix (status 2), not every input file "unreadable"."""
    _song(tmp_path, "a.wav")
    out = tmp_path / "out"

    def full(self, data):
        raise RuntimeError("System error : No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", full)
    assert main(["data", "index", str(tmp_path), "--out", str(out), "--sample-rate", "16000"]) == 2
    assert "cannot write audio" in capsys.readouterr().err
    assert not (out / "manifest.jsonl").exists() and list((out / "audio").iterdir()) == []


# 4. fifos, devices, broken links, loops and unreadable folders are listed, never opened


def test_special_files_are_listed_and_never_block(tmp_path):
    folder = tmp_path / "songs"
    (folder / "sub").mkdir(parents=True)
    _song(folder, "good.wav")
    os.mkfifo(folder / "fifo.wav")
    (folder / "fifo.txt").write_text("a fifo")
    os.symlink("/dev/zero", folder / "zero.wav")
    (folder / "zero.txt").write_text("endless zeros")
    os.symlink(folder / "missing.wav", folder / "broken.wav")
    os.symlink(folder, folder / "sub" / "loop")
    code = f"from tunesmith.cli import main; import sys; sys.exit(main(['data', 'index', {str(folder)!r}]))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    reasons = {s["file"]: s["reason"] for s in json.loads((folder / "index_report.json").read_text())["skipped"]}
    assert reasons == {"fifo.wav": "not a regular file (a fifo)", "zero.wav": "not a regular file (a character device)",
                       "broken.wav": "broken link", "sub/loop": reasons.get("sub/loop")}
    assert "loop" in reasons["sub/loop"]
    assert [r["source"] for r in read_manifest(folder / "manifest.jsonl")] == ["good.wav"]


def test_unreadable_folder_is_listed(tmp_path, monkeypatch):
    _song(tmp_path, "good.wav")
    (tmp_path / "locked").mkdir()
    _song(tmp_path / "locked", "hidden.wav")
    real = os.scandir

    def scandir(path="."):  # chmod 000 does not stop root, so refuse the way the OS would
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = index_folder(IndexOptions(folder=str(tmp_path)), progress=False)
    assert report["skipped"] == [{"file": "locked", "reason": "folder not readable (Permission denied)"}]
    assert report["clips"] == 1


# 5. the corpus builder: files that share a stem keep their own ids and their own skip entries


BROKEN = {"broken.abc": "X:1\nT:broken\nK:Q#\n|: this is not abc at all ]]]\n",
          "broken.mid": "MThd this is not midi",
          "broken.musicxml": "<score-partwise><part id='P1'><measure"}


def test_same_stem_scores_keep_their_own_ids(tmp_path):
    from tunesmith.data.sources import folder_works, unique_stems

    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a b.mid").write_text("x")
    (tmp_path / "a-b.mid").write_text("x")
    ids = sorted(w.id for w in folder_works(tmp_path))
    assert len(set(ids)) == 5 and f"{tmp_path.name}/broken.abc" in ids
    assert unique_stems(["x/song.mid", "y.abc"]) == {"x/song.mid": "x/song", "y.abc": "y"}
    from tunesmith.data.manifest import slug

    assert len({slug(i).casefold() for i in ids}) == 5  # distinct clip file names too


def test_corpus_lists_every_broken_file_once(tmp_path):
    pytest.importorskip("music21")
    pytest.importorskip("fluidsynth")
    from tunesmith.data.corpus import BuildOptions, build_corpus
    from tunesmith.data.soundfont import SoundFontError, find_soundfont

    try:
        find_soundfont()
    except SoundFontError:
        pytest.skip("no General MIDI SoundFont installed")
    scores = tmp_path / "scores"
    scores.mkdir()
    for name, text in BROKEN.items():
        (scores / name).write_text(text)
    os.mkfifo(scores / "pipe.mid")
    out = tmp_path / "corpus"
    build_corpus(BuildOptions(out=str(out), hours=0.01, sources=[str(scores)], workers=1), progress=False)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["work"] for s in skipped) == [f"scores/{n}" for n in sorted(BROKEN)] + ["scores/pipe.mid"]
    assert read_manifest(out / "manifest.jsonl") == []


def test_corpus_stops_on_an_unusable_soundfont(tmp_path, capsys):
    """A SoundFont FluidSynth cannot load fails every unit: one line and status 2, not 0 h built."""
    pytest.importorskip("music21")
    pytest.importorskip("fluidsynth")
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "tune.abc").write_text("X:1\nT:Tune\nM:4/4\nL:1/8\nK:G\n|:GABc dedB|dedB dedB|c2ec B2dB|A2F2 G4:|\n")
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"RIFF not a soundfont")
    argv = ["data", "build-corpus", "--out", str(tmp_path / "c"), "--hours", "0.01", "--sources", str(scores),
            "--soundfont", str(bogus), "--workers", "1"]
    assert main(argv) == 2
    assert str(bogus) in capsys.readouterr().err
    assert not (tmp_path / "c" / "READY").exists()
