"""`tunesmith train clap` end to end on a tiny synthesized corpus: it learns, exports, resumes."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.cli import main
from tunesmith.clap import load_clap
from tunesmith.clap.model import ClapModel
from tunesmith.clap.train import RunConfig, evaluate_clap
from tunesmith.config import apply_overrides, preset
from tunesmith.eval.probes import write_probe_corpus


@pytest.fixture(scope="module")
def probe_manifest(tmp_path_factory):
    return write_probe_corpus(tmp_path_factory.mktemp("probe"), {"train": 24, "valid": 4, "test": 8}, seconds=4.0)


@pytest.mark.slow
def test_train_clap_cli_learns_instrument_families(probe_manifest, tmp_path):
    run, model_dir = tmp_path / "run", tmp_path / "clap"
    args = ["train", "clap", "--preset", "tiny", "--out", str(run), "--export", str(model_dir),
            "--set", f"data.manifest={probe_manifest}", "--set", "train.steps=30", "--set", "train.batch_size=8",
            "--set", "train.lr=0.002", "--set", "train.checkpoint_every=10"]
    assert main(args) == 0
    trained = load_clap(model_dir)
    assert isinstance(trained, ClapModel)
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["model_type"] == "clap" and meta["trained_steps"] == 30
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss/clap"])) for r in log if "loss/clap" in r)

    scores = evaluate_clap(trained, probe_manifest, "test", progress=False)
    assert scores["own_vs_other_family_caption"] >= 0.9, scores
    assert scores["chils_family_accuracy_single_family_clips"] >= 0.9, scores

    # Resuming a finished run at a higher step count continues from the saved step.
    assert main([*args[:-2], "--set", "train.steps=32", "--resume"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log) == 32

    # A run's latest checkpoint exports to the same model the CLI wrote at the end.
    from tunesmith.clap.report import export_latest

    exported, step = export_latest(run, tmp_path / "from-checkpoint")
    assert step == 32
    wav = torch.randn(1, 1, 24000) * 0.1
    torch.testing.assert_close(load_clap(exported).embed_audio(wav, 24000), load_clap(model_dir).embed_audio(wav, 24000))


def test_clap_task_rejects_a_missing_manifest(tmp_path):
    config = apply_overrides(preset("run/clap", "tiny"), [f"data.manifest={tmp_path / 'nope.jsonl'}"])
    assert isinstance(config, RunConfig)
    from tunesmith.clap.train import make_task

    with pytest.raises(FileNotFoundError, match="manifest not found"):
        make_task(config)
