"""The command line: help, version, and one-line errors with exit status 2."""

import re
import subprocess
import sys

from tunesmith import __version__
from tunesmith.cli import VERBS, main


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_verb_and_each_one_runs():
    """Every listed verb has a module of its own with a working --help; nothing listed is a promise."""
    out = _cli("--help")
    assert out.returncode == 0
    for verb in ("generate", "models", "train", "eval", "data", "codec", "serve"):
        assert verb in VERBS and verb in out.stdout
    for verb in VERBS:
        assert VERBS[verb][0] == f"tunesmith.cli.{verb}"
        assert _cli(verb, "--help").returncode == 0, verb


def test_codec_has_no_second_train_verb():
    out = _cli("codec", "--help")
    actions = re.findall(r"^    (\w+)", out.stdout, flags=re.MULTILINE)
    assert out.returncode == 0 and "encode" in actions and "train" not in actions


def test_version(capsys):
    out = _cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_config_errors_are_one_line(tmp_path, capsys):
    status = main(["train", "lm", "--config", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "\n" not in err and "missing.json" in err
    assert "Traceback" not in err


def test_resume_uses_the_runs_saved_config(tmp_path, capsys):
    """--resume without --preset/--config continues with the config the run was started with."""
    import json

    assert main(["train", "diffusion", "--preset", "tiny", "--out", str(tmp_path), "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    config["train"]["lr"] = 0.123
    (tmp_path / "run_config.json").write_text(json.dumps(config))
    assert main(["train", "diffusion", "--out", str(tmp_path), "--resume", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 0.123
    assert main(["train", "diffusion", "--preset", "tiny", "--out", str(tmp_path), "--resume", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] != 0.123
