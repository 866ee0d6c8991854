"""Turn a training run into a model directory without the trainer: read the latest checkpoint's
codec weights (the EMA when the run kept one) and save them, fp16 by default.

This is what ships ``tunesmith/models/codec-24k`` while training goes on in the background.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.checkpoint import CheckpointError, save
from tunesmith.codec.model import RVQCodec, RVQCodecConfig, VAECodec, VAEConfig
from tunesmith.config import ConfigError, from_dict
from tunesmith.train.state import latest_checkpoint, read_checkpoint


def load_run_codec(run_dir: str | Path) -> tuple[RVQCodec | VAECodec, int, dict]:
    """(codec with the latest checkpoint's weights, its step, the run config dict)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "run_config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a codec run directory (no run_config.json)")
    run_config = json.loads(config_path.read_text())
    model_dict = run_config.get("model", {})
    try:
        if "num_codebooks" in model_dict:
            model: RVQCodec | VAECodec = RVQCodec(from_dict(RVQCodecConfig, model_dict))
        else:
            model = VAECodec(from_dict(VAEConfig, model_dict))
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet")
    tensors, state = read_checkpoint(latest)
    prefix = "ema/codec/" if any(k.startswith("ema/codec/") for k in tensors) else "model/codec/"
    weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if prefix == "ema/codec/":  # the EMA holds floating tensors only; integer buffers come from the live model
        live = {k[len("model/codec/"):]: v for k, v in tensors.items() if k.startswith("model/codec/")}
        weights = {**live, **weights}
    model.load_state_dict(weights)
    return model.eval(), int(state["step"]), run_config


def export_run(run_dir: str | Path, out_dir: str | Path, fp16: bool = True) -> Path:
    """Write the run's latest codec as ``out_dir`` (config.json + model.safetensors + run_config.json)."""
    model, step, run_config = load_run_codec(run_dir)
    if fp16:
        model = model.half()
    extra = {"training": {"step": step, "run_dir": str(run_dir), "storage": "fp16" if fp16 else "fp32"}}
    path = save(model, out_dir, extra=extra)
    (path / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    return path
