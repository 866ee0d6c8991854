"""The README's commands, run or parsed, so that they cannot rot.

- the quick start runs exactly as written (minus the install), offline, with the bundled model;
- every concrete `tunesmith ...` example in its code blocks parses with today's CLI;
- the one-line test set-up is what `.ci/run` runs.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tunesmith.cli import VERBS, build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def example_commands() -> list[str]:
    """Concrete `tunesmith` lines in the README's code blocks (synopses with [options] left out)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)
    lines = [line.split("  #")[0].split(" > ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("tunesmith ") and not re.search(r"\[|\||\bKIND\b|\.\.\.", line)]


def test_quick_start_runs_as_written(tmp_path):
    (command,) = indented_commands(section("Quick start"))
    install, run = command.split(" && ")
    assert install == "pip install torch==2.13.0 -e ."  # the CPU build, pinned
    argv = shlex.split(run)
    assert argv[:2] == ["tunesmith", "generate"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tunesmith.cli", *argv[1:], "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    output = tmp_path / argv[argv.index("-o") + 1]
    info = sf.info(output)
    assert info.samplerate == 24000 and abs(info.duration - 10.0) < 1e-3
    assert (tmp_path / f"{output.name}.json").is_file()


def test_every_example_parses():
    commands = example_commands()
    assert len(commands) >= 5
    for command in commands:
        argv = shlex.split(command)[1:]
        assert argv[0] in VERBS, command
        try:
            build_parser([argv[0]]).parse_args(argv)
        except SystemExit:
            pytest.fail(f"README example does not parse: {command}")


def test_the_test_setup_is_one_line_and_is_what_ci_runs():
    (command,) = indented_commands(section("Develop and test"))
    assert command.startswith("sudo apt-get update && sudo apt-get install") and command.endswith("&& pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.replace("sudo ", "$SUDO ") in ci
