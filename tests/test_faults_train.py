"""Training under hostile input and bad luck: each test is a fault an adversarial user found.

The promise (README): bad input is one line on stderr and exit status 2, and nothing the run
had is written over or lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from toy_task import ToyTask

from tunesmith.cli import main
from tunesmith.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    preset,
)
from tunesmith.diffusion.train import RunConfig
from tunesmith.errors import CheckpointError
from tunesmith.train import TrainConfig, Trainer
from tunesmith.train import state as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out: Path, *extra: str, preset_name: str | None = "tiny") -> int:
    args = ["train", "diffusion", "--out", str(out), *extra]
    return main([*args, "--preset", preset_name] if preset_name else args)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(run: Path) -> dict[str, str]:
    """Every file of a run directory (but logs) with a hash of its bytes."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts and p.name != "log.jsonl"
    }


def _toy_config(out: Path, steps: int = 6, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out), steps=steps, batch_size=4, warmup_steps=1, log_every=2, checkpoint_every=2,
                       keep_checkpoints=3, checkpoint_minutes=0, progress=False, **kw)


def _start_step(out: Path, steps: int = 6) -> int:
    """Resume the toy run in ``out`` and return the step it started from."""
    started = []
    Trainer(ToyTask(), _toy_config(out, steps)).fit(resume=True, on_start=lambda t: started.append(t.step))
    return started[0]


# 1. --resume with a changed model size --------------------------------------------------


def test_resume_with_another_model_size_names_the_parameter_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--set", "train.steps=2") == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(run, "--resume", "--set", "model.width=48", preset_name=None) == 2
    line = _one_line_error(capsys)
    assert "does not fit" in line and "'dit." in line and "48" in line
    assert _snapshot(run) == before  # run_config.json and the checkpoints as they were
    assert json.loads((run / "run_config.json").read_text())["model"]["width"] == 64
    # a plain --resume still works, and then records the (compatible) change
    assert _train(run, "--resume", "--set", "train.steps=3", preset_name=None) == 0
    assert json.loads((run / "run_config.json").read_text())["train"]["steps"] == 3
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_00000003"


# 2. --resume with nothing, or a broken `latest`, to resume from --------------------------


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert _train(tmp_path / "empty", "--resume") == 2
    assert "nothing to resume in" in _one_line_error(capsys)
    assert not (tmp_path / "empty").exists()  # nothing written
    with pytest.raises(CheckpointError, match="nothing to resume .*no checkpoint"):
        Trainer(ToyTask(), _toy_config(tmp_path / "toy")).fit(resume=True)


@pytest.mark.parametrize("damage", ["missing", "truncated", "bad-state", "no-pointer", "pointer-escapes"])
def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, capsys, damage):
    run = tmp_path / "run"
    Trainer(ToyTask(), _toy_config(run)).fit()
    root = run / "checkpoints"
    assert [p.name for p in ckpt.step_directories(root)] == ["step_00000006", "step_00000004", "step_00000002"]
    newest = root / "step_00000006"
    if damage == "missing":
        for p in newest.iterdir():
            p.unlink()
        newest.rmdir()
    elif damage == "truncated":
        weights = newest / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad-state":
        (newest / "state.json").write_bytes(b"\xff\xfe")
    elif damage == "no-pointer":
        (root / "latest").unlink()
        for p in newest.iterdir():
            p.unlink()
        newest.rmdir()
    else:
        (root / "latest").write_text("../../elsewhere\n")
        for p in newest.iterdir():
            p.unlink()
        newest.rmdir()
    capsys.readouterr()
    assert _start_step(run, steps=8) == 4  # never 0
    assert "resuming from step_00000004" in capsys.readouterr().err


def test_resume_refuses_when_no_checkpoint_reads(tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(), _toy_config(run)).fit()
    for path in ckpt.step_directories(run / "checkpoints"):
        (path / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Trainer(ToyTask(), _toy_config(run, 8)).fit(resume=True)


# 3. absurd numbers in TrainConfig ------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    ["train.lr=nan", "train.lr=inf", "train.lr=-1e-3", "train.lr=0", "train.batch_size=0", "train.steps=-5",
     "train.grad_accum=0", "train.ema_decay=1", "train.ema_decay=-0.5", "train.ema_decay=nan",
     "train.betas=[0.9, 1.5]", "train.betas=[nan, 0.9]", "train.weight_decay=-1", "train.grad_clip=nan",
     "train.warmup_steps=-1", "train.min_lr_ratio=2", "train.log_every=0", "train.keep_checkpoints=0",
     "train.checkpoint_minutes=inf", "train.seed=-1", "train.num_workers=-1"],
)
def test_absurd_train_settings_are_config_errors_naming_the_key(tmp_path, capsys, setting):
    key = setting.split("=")[0]
    with pytest.raises(ConfigError) as err:
        apply_overrides(preset("run/diffusion", "tiny"), [setting])
    assert f"'{key}" in str(err.value)  # 'train.lr' or 'train.betas[1]'
    assert _train(tmp_path / "run", "--set", setting) == 2
    assert "train." in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_train_config_refuses_nan_when_built_in_python():
    with pytest.raises(ConfigError, match="'lr' must be a finite number > 0, got nan"):
        TrainConfig(lr=math.nan)


# 4. hostile config files ---------------------------------------------------------------


def _bomb_items(levels: int = 7) -> list[str]:
    """YAML flow items, a few hundred bytes, that expand to 9**levels strings."""
    items = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    return items + [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]


def _alias_bomb() -> str:
    """The bomb under a valid key of the diffusion run config."""
    return "init_from:\n" + "".join(f"  - {item}\n" for item in _bomb_items())


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    start = time.monotonic()
    with pytest.raises(ConfigError, match="more than") as err:
        load_config(RunConfig, path)
    assert time.monotonic() - start < 5 and len(str(err.value)) < 300
    with pytest.raises(ConfigError, match="recursive"):
        (tmp_path / "self.yaml").write_text("init_from: &a [*a]\n")
        load_config(RunConfig, tmp_path / "self.yaml")
    with pytest.raises(ConfigError, match="more than"):  # the same through --set
        apply_overrides(RunConfig(), ["init_from=[" + ", ".join(_bomb_items()) + "]"])


def test_values_quoted_in_config_errors_are_cut_short():
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"init_from": ["x" * 10_000] * 50})
    assert len(str(err.value)) < 300
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"k" * 10_000: 1})
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_non_utf8_and_deeply_nested_files_are_config_errors(tmp_path, suffix):
    latin = tmp_path / f"latin{suffix}"
    latin.write_bytes(b'{"init_from": "caf\xe9"}' if suffix == ".json" else b"init_from: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(RunConfig, latin)
    for depth in (100, 100_000):  # past the config limit, and past Python's recursion limit
        deep = tmp_path / f"deep{depth}{suffix}"
        nested = "[" * depth + "]" * depth
        deep.write_text(f'{{"init_from": {nested}}}' if suffix == ".json" else f"init_from: {nested}\n")
        with pytest.raises(ConfigError, match="nested"):
            load_config(RunConfig, deep)


def test_hostile_config_is_one_line_from_the_cli(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    assert _train(tmp_path / "run", "--config", str(path), preset_name=None) == 2
    assert "bomb.yaml" in _one_line_error(capsys)


# 5. what a SIGKILL mid-checkpoint leaves ------------------------------------------------


def test_stale_checkpoint_temporaries_are_cleared_on_start(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(ToyTask(), _toy_config(run, 4)).fit()
    root = run / "checkpoints"
    (root / ".step_00000006.tmpab12cd").mkdir()
    (root / ".step_00000006.tmpab12cd" / "weights.safetensors").write_bytes(b"half")
    (root / ".step_00000002.old").mkdir()  # step_00000002 exists: this is debris
    (root / ".latest.x1y2.tmp").write_text("step_000")
    (root / ".tmp_old_style").mkdir()
    (root / "notes.txt").write_text("mine")  # not the engine's: kept
    (run / ".step_00000009.tmpzz").mkdir()  # outside the checkpoints directory: kept
    assert _start_step(run, 6) == 4
    left = sorted(p.name for p in root.iterdir())
    assert left == ["latest", "notes.txt", "step_00000002", "step_00000004", "step_00000006"]
    assert (run / ".step_00000009.tmpzz").is_dir()
    assert "removed what an interrupted checkpoint left" in capsys.readouterr().err


def test_checkpoint_caught_between_its_renames_is_put_back(tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(), _toy_config(run, 4)).fit()
    root = run / "checkpoints"
    (root / "step_00000004").rename(root / ".step_00000004.old")  # killed after the first rename
    (root / ".step_00000004.tmpq").mkdir()  # the new copy, perhaps incomplete
    assert _start_step(run, 6) == 4
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


# 6. the same seed, the same run -------------------------------------------------------


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "weights.safetensors"))


def test_two_runs_with_the_same_seed_are_bit_identical(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        torch.manual_seed(len(name) * 1000 + ord(name))  # whatever state the process was left in
        assert _train(tmp_path / name, "--set", "train.steps=2", "--set", f"train.seed={seed}") == 0
    a, b, c = (_weights(tmp_path / n, 2) for n in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters


# 7. a full disk -----------------------------------------------------------------------


def test_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    real = ckpt.save_tensors
    calls = []

    def fill_disk_on_second(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")  # what a full disk leaves mid-write
            raise OSError(28, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    with mock.patch.object(ckpt, "save_tensors", fill_disk_on_second):
        status = _train(run, "--set", "train.steps=4", "--set", "train.checkpoint_every=2")
    assert status == 2
    line = _one_line_error(capsys)
    assert "No space left on device" in line and "step_00000002 kept" in line
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002"]
    assert ckpt.latest_checkpoint(root).name == "step_00000002"
    ckpt.read_checkpoint(root / "step_00000002")  # whole
    assert _train(run, "--resume", preset_name=None) == 0
    assert "resuming" not in capsys.readouterr().err  # latest was valid: no fallback needed
    assert ckpt.latest_checkpoint(root).name == "step_00000004"
