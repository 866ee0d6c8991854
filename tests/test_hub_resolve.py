"""Finding public checkpoints: a local path, then the Hugging Face cache; never the network
without consent, never under HF_HUB_OFFLINE; pickled weights refused with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.checkpoint import detect_format, resolve
from tunesmith.errors import CheckpointError
from tunesmith.generator import load_generator


def fake_hf_cache(root: Path, repo_id: str, files: dict[str, str]) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/REV/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    return snapshot


def run_resolve(name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """In a fresh process: huggingface_hub reads its cache location and offline flag at import."""
    code = f"from tunesmith.checkpoint import resolve\nprint(resolve({name!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TUNESMITH_"))}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    return env


def test_a_repo_id_in_the_hf_cache_resolves_to_its_snapshot(tmp_path, hf_env):
    snapshot = fake_hf_cache(tmp_path / "hub", "someone/musicgen-tiny", {"config.json": json.dumps({"model_type": "musicgen"})})
    for offline in ("0", "1"):
        result = run_resolve("someone/musicgen-tiny", {**hf_env, "HF_HUB_OFFLINE": offline})
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == snapshot


def test_a_missing_repo_says_what_to_download_and_where(tmp_path, hf_env):
    for env, words in (({}, "TUNESMITH_ALLOW_DOWNLOADS=1"), ({"HF_HUB_OFFLINE": "1", "TUNESMITH_ALLOW_DOWNLOADS": "1"}, "HF_HUB_OFFLINE is set")):
        result = run_resolve("someone/not-here", {**hf_env, **env})
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert "hf download someone/not-here" in last and str(tmp_path / "hub") in last and words in last


def test_formats_are_told_apart(tmp_path):
    musicgen, sao, ours, other = (tmp_path / n for n in ("mg", "sao", "ours", "other"))
    for d in (musicgen, sao, ours, other):
        d.mkdir()
    (musicgen / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    (sao / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    (ours / "config.json").write_text(json.dumps({"model_type": "musicgen", "generator_type": "token-lm"}))
    (other / "config.json").write_text("[1, 2]")
    assert [detect_format(d) for d in (musicgen, sao, ours, other)] == ["musicgen", "stable-audio-open", None, None]
    assert resolve(musicgen) == musicgen


@pytest.mark.parametrize("files", [["state_dict.bin", "compression_state_dict.bin"], ["config.json", "pytorch_model.bin"]])
def test_pickled_weights_are_refused_with_the_reason(tmp_path, files):
    for name in files:
        (tmp_path / name).write_text(json.dumps({"model_type": "musicgen"}) if name == "config.json" else "not read")
    with pytest.raises(CheckpointError, match=r"pickles \(.*\.bin.*can run code"):
        load_generator(tmp_path)
