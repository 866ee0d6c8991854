"""Fault injection at the edges of generation: what a careless or hostile user, a full disk, a
signal or a broken model can do, and what must happen: one line on stderr, exit status 2,
nothing written that is garbage, nothing the user had lost.

Each case was found by trying it on the landed code; each test failed there.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import tunesmith
from tunesmith.audio import Audio, AudioError, load_audio, write_audio
from tunesmith.checkpoint import CheckpointError, load_model, save
from tunesmith.cli import main
from tunesmith.cli.generate import write_output

FAST = ["--duration", "0.5", "--steps", "2", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("tunesmith")


@pytest.fixture(scope="module")
def dit():
    return tunesmith.load("tunesmith-small-dit")


# ---------------------------------------------------------------------------
# loses or corrupts data


def test_a_sidecar_that_cannot_be_written_keeps_the_users_audio(tmp_path, capsys):
    song = tmp_path / "song.wav"
    song.write_bytes(b"the user's own recording")
    (tmp_path / "song.wav.json").mkdir()
    status, err = run_cli(capsys, "generate", "a waltz", "-o", str(song), *FAST)
    assert status == 2 and one_line(err) and "is a directory" in err
    assert song.read_bytes() == b"the user's own recording"


def test_a_failed_write_of_the_pair_puts_everything_back(tmp_path):
    """A failure between the two renames (here the audio's target turns out to be a folder)
    restores the sidecar that was there, and leaves no temp file."""
    audio, sidecar = tmp_path / "take.wav", tmp_path / "take.wav.json"
    sidecar.write_text('{"old": true}')
    audio.mkdir()
    (audio / "inside").write_text("x")
    with pytest.raises(OSError):
        write_output(audio, torch.zeros(1, 800), 8000, "wav", {"new": True})
    assert json.loads(sidecar.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.wav", "take.wav.json"]


def _writer(path: str, ident: int, rounds: int) -> None:
    for _ in range(rounds):
        write_output(Path(path), torch.full((1, 400), ident / 10), 8000, "wav", {"id": ident})


def test_concurrent_writers_never_mix_audio_and_sidecar(tmp_path):
    target = tmp_path / "same.wav"
    context = mp.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(target), i, 25)) for i in range(1, 5)]
    for w in workers:
        w.start()
    seen = set()
    deadline = time.time() + 60
    while any(w.is_alive() for w in workers) and time.time() < deadline:
        try:
            # the pair is renamed under the folder's lock; read it under the same lock
            import fcntl

            fd = os.open(tmp_path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if target.exists():
                    ident = json.loads((tmp_path / "same.wav.json").read_text())["id"]
                    level = round(float(sf.read(target)[0].mean()) * 10)
                    assert level == ident, "audio of one run beside the sidecar of another"
                    seen.add(ident)
            finally:
                os.close(fd)
        except FileNotFoundError:
            pass
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    ident = json.loads((tmp_path / "same.wav.json").read_text())["id"]
    assert round(float(sf.read(target)[0].mean()) * 10) == ident
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------
# garbage with exit status 0


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_guidance_must_be_a_finite_non_negative_number(value, tmp_path, capsys):
    status, err = run_cli(capsys, "generate", "a waltz", "--cfg", value, "-o", str(tmp_path / "x.wav"), *FAST)
    assert status == 2 and one_line(err) and "cfg" in err
    assert list(tmp_path.iterdir()) == []


def test_nan_audio_is_never_written(tmp_path):
    old = tmp_path / "keep.wav"
    sf.write(old, np.zeros(100), 8000)
    before = old.read_bytes()
    bad = torch.zeros(1, 100)
    bad[0, 50] = float("nan")
    with pytest.raises(AudioError, match="NaN"):
        write_output(old, bad, 8000, "wav", {})
    assert old.read_bytes() == before and not list(tmp_path.glob(".*"))
    with pytest.raises(AudioError, match="NaN"):
        tunesmith.audio.save_audio(tmp_path / "new.wav", bad, 8000)
    assert not (tmp_path / "new.wav").exists()


def test_weights_with_nan_or_integers_are_refused(tmp_path, dit):
    model = dit.model
    with torch.no_grad():
        saved = model.proj_out.weight.clone()
        model.proj_out.weight[0, 0] = float("nan")
        try:
            save(model, tmp_path / "nan")
        finally:
            model.proj_out.weight.copy_(saved)
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(tmp_path / "nan")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "nan" / "model.safetensors"))
    state = {k: (v.to(torch.int8) if k == "proj_out.weight" else v.nan_to_num()) for k, v in state.items()}
    save_file(state, str(tmp_path / "nan" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="int8"):
        load_model(tmp_path / "nan")


def test_codec_decode_of_nan_latents_writes_nothing(tmp_path, capsys):
    npz = tmp_path / "bad.npz"
    np.savez(npz, latents=np.full((32, 10), np.nan, dtype=np.float32), sample_rate=np.array(24000),
             channels=np.array(1), num_samples=np.array(9600), model=np.array("vae-24k"))
    status, err = run_cli(capsys, "codec", "decode", str(npz), str(tmp_path / "out.wav"))
    assert status == 2 and one_line(err) and "NaN" in err
    assert not (tmp_path / "out.wav").exists()


# ---------------------------------------------------------------------------
# tracebacks where one line is promised


def test_a_non_utf8_prompt_in_argv(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "generate", b"caf\xe9 \xff music",
                           "-o", str(tmp_path / "x.wav"), *FAST], capture_output=True, timeout=300)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2 and one_line(err) and "not valid text" in err
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_audio(tmp_path, capsys, monkeypatch):
    old = tmp_path / "out.wav"
    old.write_bytes(b"previous take")

    def full(*args, **kwargs):
        raise sf.LibsndfileError(2, "Error writing: ")  # what libsndfile says on ENOSPC

    monkeypatch.setattr(sf, "write", full)
    status, err = run_cli(capsys, "generate", "a waltz", "-o", str(old), *FAST)
    assert status == 2 and one_line(err) and "cannot write audio" in err
    assert old.read_bytes() == b"previous take" and sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_stdout_on_a_full_device(tmp_path):
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "generate", "a waltz", "-o", "-", *FAST],
                              stdout=full, stderr=subprocess.PIPE, timeout=300, cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 2 and "No space left" in err and "Traceback" not in err


def test_a_checkpoint_onto_a_full_disk_is_an_oserror(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import tunesmith.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError, match="cannot write"):
        checkpoint.save_tensors({"x": torch.zeros(2)}, tmp_path / "w.safetensors")


def test_a_file_name_too_long_is_refused_before_any_work(tmp_path, capsys):
    name = "x" * 250 + ".wav"
    status, err = run_cli(capsys, "generate", "a waltz", "-o", str(tmp_path / name), *FAST)
    assert status == 2 and one_line(err) and "too long" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["[1, 2, 3]", "[" * 100_000 + "]" * 100_000, '{"generator_type": "latent-diffusion"',
                                     "\xff\xfe not json"])
def test_a_broken_config_json_is_one_line(content, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(content.encode("latin-1"))
    status, err = run_cli(capsys, "generate", "a waltz", "--model", str(model), "-o", str(tmp_path / "x.wav"), *FAST)
    assert status == 2 and one_line(err) and "config.json" in err
    assert len(err) < 600


# ---------------------------------------------------------------------------
# the Python API names the parameter


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: g.generate(None, duration=1), "prompts must be a string or a list of strings, got NoneType"),
        (lambda g: g.generate("x", duration="10"), "duration must be a number of seconds, got str"),
        (lambda g: g.generate([1], duration=1), r"prompts\[0\] must be a string, got int"),
        (lambda g: g.generate(["ok", " "], duration=1), r"prompts\[1\] is empty"),
        (lambda g: g.generate("x", duration=float("nan")), "duration must be > 0"),
        (lambda g: g.generate("x", duration=1, steps=2.5), "control 'steps' must be int, got float"),
        (lambda g: g.generate("x", duration=1, steps=True), "control 'steps' must be int, got bool"),
        (lambda g: g.generate("x", duration=1, strength=2.0), r"control 'strength' must be in \[0, 1\]"),
        (lambda g: g.generate("x", duration=1, seed=-1), "seed must be in"),
        (lambda g: g.generate("x", duration=1, seed="1"), "seed must be an integer"),
        (lambda g: g.generate("x", duration=1, init_audio=Audio(torch.zeros(1, 2400), 24000), mask=[(0.0, math.inf)]),
         "both finite"),
        (lambda g: g.generate("x", duration=1, init_audio=Audio(torch.zeros(1, 2400), 24000), mask=[("a", 1)]),
         r"\(start, end\) pairs"),
    ],
)
def test_api_errors_name_the_parameter(call, message, dit):
    with pytest.raises(ValueError, match=message):
        call(dit)


def test_audio_checks_its_own_fields():
    with pytest.raises(AudioError, match="sample_rate must be a positive integer"):
        Audio(torch.zeros(1, 10), 0)
    with pytest.raises(AudioError, match="samples must be a torch.Tensor"):
        Audio([0.0, 1.0], 8000)
    with pytest.raises(AudioError, match="shape"):
        Audio(torch.zeros(10), 8000)


@pytest.mark.parametrize("flag, value, message", [("--temperature", "nan", "temperature"),
                                                  ("--top-k", "-5", "top_k")])
def test_token_lm_sampling_settings_are_checked(flag, value, message, tmp_path, capsys):
    status, err = run_cli(capsys, "generate", "a waltz", "--model", "tunesmith-small", flag, value,
                          "--duration", "0.5", "-o", str(tmp_path / "x.wav"), "--no-progress")
    assert status == 2 and one_line(err) and message in err
    assert list(tmp_path.iterdir()) == []


def test_a_hostile_config_cannot_raise_the_duration_limit(tmp_path, dit):
    directory = dit.save(tmp_path / "greedy", codec_name="vae-24k")
    meta = json.loads((directory / "config.json").read_text())
    meta["config"]["max_seconds"] = 1e9
    (directory / "config.json").write_text(json.dumps(meta))
    greedy = tunesmith.load(str(directory))
    assert greedy.max_duration <= 3600
    with pytest.raises(ValueError, match="beyond this model's limit"):
        greedy.generate("x", duration=1e6)


# ---------------------------------------------------------------------------
# inputs: checked before they are read


def test_a_melody_for_a_model_that_takes_none_is_never_read(tmp_path, capsys, monkeypatch):
    import tunesmith.audio

    def must_not_read(*args, **kwargs):
        raise AssertionError("the melody file was read before the model said it takes none")

    monkeypatch.setattr(tunesmith.audio, "load_audio", must_not_read)
    huge = tmp_path / "two-hours.wav"
    huge.write_bytes(b"RIFF")  # never opened
    status, err = run_cli(capsys, "generate", "a waltz", "--melody", str(huge), "--model", "tunesmith-small", "-o",
                          str(tmp_path / "x.wav"), *FAST)
    assert status == 2 and one_line(err) and "takes no melody" in err


def test_only_the_needed_start_of_a_long_melody_is_read(tmp_path):
    long = tmp_path / "long.wav"
    with sf.SoundFile(long, "w", 8000, 1) as f:
        for _ in range(60):  # 10 minutes, written in blocks
            f.write(0.1 * np.sin(np.arange(80_000) / 8000 * 2 * np.pi * 220))
    audio = load_audio(long, max_seconds=2.0)
    assert audio.samples.shape[-1] == 16_000


# ---------------------------------------------------------------------------
# model names


def test_a_repo_like_name_is_not_downloaded_without_consent(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.delenv("TUNESMITH_ALLOW_DOWNLOADS", raising=False)
    status, err = run_cli(capsys, "generate", "a waltz", "--model", "x/y", "-o", str(tmp_path / "a.wav"), *FAST)
    assert status == 2 and one_line(err) and "TUNESMITH_ALLOW_DOWNLOADS" in err
    status, err = run_cli(capsys, "generate", "a waltz", "--model", "./my-modle", "-o", str(tmp_path / "a.wav"), *FAST)
    assert status == 2 and one_line(err) and "no such model directory: ./my-modle" in err
    # a name inside an untrusted .npz is never fetched, even with consent for the user's own names
    monkeypatch.setenv("TUNESMITH_ALLOW_DOWNLOADS", "1")
    npz = tmp_path / "evil.npz"
    np.savez(npz, latents=np.zeros((32, 10), dtype=np.float32), sample_rate=np.array(24000), channels=np.array(1),
             num_samples=np.array(9600), model=np.array("evil/repo"))
    status, err = run_cli(capsys, "codec", "decode", str(npz), str(tmp_path / "out.wav"))
    assert status == 2 and one_line(err) and "evil/repo" in err


# ---------------------------------------------------------------------------
# signals and leftovers


def test_sigterm_during_the_write_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    import tunesmith.audio as audio_module

    real = audio_module.write_audio

    def interrupted(target, *args, **kwargs):
        real(target, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives with the temp file written, before the rename
        time.sleep(5)

    monkeypatch.setattr(audio_module, "write_audio", interrupted)
    status = main(["generate", "a waltz", "-o", str(tmp_path / "x.wav"), *FAST])
    assert status == 143
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path, capsys):
    stale = tmp_path / ".x.wav.abc123.tmp"
    fresh = tmp_path / ".x.wav.def456.tmp"  # another writer, still at work
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert main(["generate", "a waltz", "-o", str(tmp_path / "x.wav"), *FAST]) == 0
    assert not stale.exists() and fresh.exists()


# ---------------------------------------------------------------------------
# -o: honour what the user asked, or refuse


def test_output_to_stdout(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", "generate", "a waltz", "-o", "-", *FAST],
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    (tmp_path / "piped.wav").write_bytes(done.stdout)
    data, rate = sf.read(tmp_path / "piped.wav")
    assert rate == 24000 and len(data) == 12000
    assert json.loads(done.stderr.decode().splitlines()[-2])["prompt"] == "a waltz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piped.wav"]  # no ./-.wav


def test_output_formats_follow_the_name_or_are_refused(tmp_path, capsys):
    assert main(["generate", "a waltz", "-o", str(tmp_path / "x.mp3"), *FAST]) == 0
    assert sf.info(tmp_path / "x.mp3").format == "MP3" and not (tmp_path / "x.mp3.wav").exists()
    assert main(["generate", "a waltz", "-o", str(tmp_path / "plain"), "--format", "flac", *FAST]) == 0
    assert sf.info(tmp_path / "plain.flac").format == "FLAC"
    capsys.readouterr()
    for argv, message in ((["-o", str(tmp_path / "m.wav"), "--format", "flac"], "contradicts"),
                          (["-o", "/dev/null"], "not a regular file"),
                          (["-o", str(tmp_path / "song.xyz")], "cannot tell the audio format")):
        status, err = run_cli(capsys, "generate", "a waltz", *argv, *FAST)
        assert status == 2 and one_line(err) and message in err
    assert not (tmp_path / "m.flac").exists() and not Path("/dev/null.wav").exists()
    assert not (tmp_path / "song.xyz").exists() and not (tmp_path / "song.xyz.wav").exists()


def test_audio_writes_to_a_stream(tmp_path):
    import io

    buffer = io.BytesIO()
    write_audio(buffer, torch.zeros(1, 100), 8000, "flac")
    assert buffer.getvalue()[:4] == b"fLaC"
