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
