"""`tunesmith generate` rejects bad requests with one line, exit 2, and no file left behind."""

import pytest

from tunesmith.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate"], "no prompt given"),
        (["generate", "a waltz", "--duration", "0"], "--duration must be > 0"),
        (["generate", "a waltz", "--duration", "-3"], "--duration must be > 0"),
        (["generate", "a waltz", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["generate", "a waltz", "--prompts", "x.txt"], "not both"),
        (["generate", "a waltz", "--model", "clap-24k"], "is not a generator"),
    ],
)
def test_bad_requests(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_and_bad_prompt_file(capsys, tmp_path):
    assert main(["generate", "a waltz", "-o", str(tmp_path / "missing-dir" / "x.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n")
    assert main(["generate", "--prompts", str(empty), "-o", str(tmp_path / "out")]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert main(["generate", "--prompts", str(tmp_path / "nope.txt")]) == 2
    assert "prompt file not found" in capsys.readouterr().err


def test_the_bundled_default_model_makes_music_offline(tmp_path, capsys, monkeypatch):
    """The first-run experience: the default model, no network, a .wav and its sidecar."""
    import json

    import torch

    import tunesmith
    from tunesmith.audio import load_audio
    from tunesmith import DEFAULT_GENERATOR as DEFAULT_MODEL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    out = tmp_path / "waltz.wav"
    assert main(["generate", "a gentle waltz for strings in D major", "--duration", "1.5", "--seed", "3",
                 "-o", str(out), "--no-progress"]) == 0
    audio = load_audio(out)
    assert audio.sample_rate == 24000 and audio.samples.shape[-1] == 36000
    assert audio.samples.abs().max() > 1e-3  # not silence
    meta = json.loads(out.with_suffix(".wav.json").read_text())
    assert meta["prompt"] == "a gentle waltz for strings in D major" and meta["seed"] == 3 and meta["model"] == DEFAULT_MODEL
    # the Python API gives the same audio for the same seed
    gen = tunesmith.load(DEFAULT_MODEL)
    again = gen.generate("a gentle waltz for strings in D major", duration=1.5, seed=3)
    assert torch.allclose(again.samples[0], audio.samples, atol=1e-4)  # the file is 16-bit PCM
    # a control the model does not take is a one-line error and leaves no file
    melody = tmp_path / "m.wav"
    from tunesmith.audio import save_audio

    save_audio(melody, 0.3 * torch.sin(torch.arange(24000) / 24000 * 2 * torch.pi * 440)[None], 24000)
    capsys.readouterr()
    assert main(["generate", "a waltz", "--melody", str(melody), "--model", "tunesmith-small", "-o",
                 str(tmp_path / "m_out.wav"), "--no-progress"]) == 2
    err = capsys.readouterr().err  # the bundled token LM takes no melody (the DiT takes one by noise optimisation)
    assert "melody" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m_out.wav").exists()


def test_the_bundled_dit_is_selectable_and_keeps_the_beat(tmp_path, monkeypatch):
    """The other bundled generator, by name, offline; its beat clock comes from the prompt."""
    import json

    from tunesmith.audio import load_audio
    from tunesmith.checkpoint import read_model_config, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert read_model_config(resolve("tunesmith-small-dit"))["config"]["beat_clock"]
    out = tmp_path / "march.wav"
    assert main(["generate", "a march for brass band, 120 BPM", "--model", "tunesmith-small-dit", "--duration", "2",
                 "--steps", "4", "-o", str(out), "--no-progress"]) == 0
    audio = load_audio(out)
    assert audio.samples.shape[-1] == 48000 and audio.samples.abs().max() > 1e-3
    assert json.loads(out.with_suffix(".wav.json").read_text())["model"] == "tunesmith-small-dit"


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory):
    from tunesmith.serve.testing import tiny_generator

    return str(tiny_generator(tmp_path_factory.mktemp("tiny") / "tiny-dit"))


def test_inpainting_from_the_cli_keeps_the_users_samples(tiny_dit, tmp_path, capsys):
    import json

    import torch

    from tunesmith.audio import load_audio, save_audio

    ref = tmp_path / "ref.wav"
    save_audio(ref, 0.2 * torch.randn(1, 48000, generator=torch.Generator().manual_seed(0)), 24000)
    out = tmp_path / "out.wav"
    argv = ["generate", "a calm piano", "--model", tiny_dit, "--duration", "2", "--steps", "3", "--no-progress",
            "--init-audio", str(ref), "--inpaint", "0.5:1.0", "-o", str(out)]
    assert main(argv) == 0
    got, want = load_audio(out).samples[0], load_audio(ref).samples[0]
    assert torch.equal(got[:12000], want[:12000]) and torch.equal(got[24000:], want[24000:])
    assert not torch.equal(got[12500:23500], want[12500:23500])
    sidecar = json.loads(out.with_suffix(".wav.json").read_text())
    assert sidecar["controls"]["mask"] == [[0.5, 1.0]] and sidecar["controls"]["init_audio"] == str(ref)
    capsys.readouterr()
    for bad, words in ((["--inpaint", "1:0.5"], "--inpaint '1:0.5'"), (["--inpaint", "x"], "START:END")):
        assert main([*argv[:-4], *bad, "-o", str(tmp_path / "bad.wav")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "bad.wav").exists()


def test_a_midi_melody_from_the_cli_on_a_diffusion_model(tiny_dit, tmp_path):
    import json

    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for note in (60, 64, 67, 72):
        track += [mido.Message("note_on", note=note, velocity=80, time=0), mido.Message("note_off", note=note, time=240)]
    mid.save(tmp_path / "tune.mid")
    out = tmp_path / "tune.wav"
    assert main(["generate", "a tune", "--model", tiny_dit, "--duration", "1", "--steps", "2", "--no-progress",
                 "--melody", str(tmp_path / "tune.mid"), "--control-iterations", "2", "-o", str(out)]) == 0
    report = json.loads(out.with_suffix(".wav.json").read_text())["control_report"]
    assert 0 <= report["melody"]["accuracy"] <= 1 and len(report["optimisation_loss"]) == 2
