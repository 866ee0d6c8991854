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
    assert main(["generate", "a waltz", "--melody", str(melody), "-o", str(tmp_path / "m_out.wav"), "--no-progress"]) == 2
    err = capsys.readouterr().err  # the bundled models take no melody
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
