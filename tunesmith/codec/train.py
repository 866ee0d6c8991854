"""`tunesmith train codec`: the RVQ codec through the shared training engine.

    tunesmith train codec --preset small --out runs/codec-v1 [--resume] [--export DIR]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.checkpoint import save
from tunesmith.codec.discriminators import Discriminator, DiscriminatorConfig
from tunesmith.codec.model import RVQCodec, RVQCodecConfig
from tunesmith.codec.task import SYNTHETIC, CodecRunParts, CodecTask, DataConfig, LossConfig, make_datasets
from tunesmith.config import register_preset, to_dict
from tunesmith.train.engine import TrainConfig, Trainer


@dataclass
class RunConfig(CodecRunParts):
    model: RVQCodecConfig = field(default_factory=RVQCodecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def make_task(config: Any) -> CodecTask:
    """Build the codec (RVQ or VAE, by the type of ``config.model``), discriminator and data."""
    from tunesmith.codec.model import VAECodec, VAEConfig

    if config.loss.phase > 0 and config.model.phase == "griffin-lim":
        raise ValueError("loss.phase supervises a decoder that predicts the phase; model.phase is 'griffin-lim'")
    model = VAECodec(config.model) if isinstance(config.model, VAEConfig) else RVQCodec(config.model)
    if config.init_from:
        _init_from(model, config.init_from)
    disc = Discriminator(config.discriminator, config.model.channels)
    train, valid = make_datasets(config.data, config.model, config.train.seed)
    return CodecTask(model, disc, config.loss, train, valid, config.data.valid_clips)


def _init_from(model: RVQCodec | Any, source: str) -> None:
    """Copy the weights of the model directory ``source`` into ``model``; the architectures must agree."""
    from tunesmith.checkpoint import load_model
    from tunesmith.config import to_dict as as_dict

    trained = load_model(source)
    if type(trained) is not type(model) or as_dict(trained.config) != as_dict(model.config):
        raise ValueError(f"init_from: {source} holds a {type(trained).__name__} with a different config than this run's model")
    model.load_state_dict({k: v.float() for k, v in trained.state_dict().items()})


def export(trainer: Trainer, config: Any, out_dir: Path, fp16: bool = True) -> Path:
    """Write the codec's (EMA if enabled) weights as a model directory, fp16 by default."""
    task: CodecTask = trainer.task  # type: ignore[assignment]
    model = type(task.codec)(config.model)
    model.load_state_dict(trainer.ema_state_dict("codec"))
    if fp16:
        model = model.half()
    extra = {"training": {"step": trainer.step, "run_dir": str(trainer.out_dir), "storage": "fp16" if fp16 else "fp32"}}
    path = save(model, out_dir, extra=extra)
    (path / "run_config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    return path


def _train(steps: int, batch: int, lr: float, **kw: Any) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, betas=(0.8, 0.99), weight_decay=0.01,
                       warmup_steps=kw.pop("warmup_steps", 200), schedule="cosine", min_lr_ratio=0.1,
                       grad_clip=10.0, **kw)


def tiny_run_parts() -> dict[str, Any]:
    """What the tiny codec and VAE runs share: a small discriminator, early GAN, synthetic clips."""
    return dict(
        discriminator=DiscriminatorConfig(stft_resolutions=((512, 128),), stft_channels=4, periods=(2,),
                                          period_channels=(4, 8)),
        loss=LossConfig(gan_start_step=10),
        data=DataConfig(manifest=SYNTHETIC, segment_seconds=0.5, synthetic_clips=16, valid_clips=2, valid_seconds=1.0),
        train=_train(20, 4, 2e-3, warmup_steps=2, log_every=5, checkpoint_every=10, progress=False, valid_every=10),
    )


@register_preset("run/codec", "tiny")
def _tiny() -> RunConfig:
    return RunConfig(
        model=RVQCodecConfig(dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16,
                             num_codebooks=3, codebook_size=64, codebook_dim=4, restart_after=4),
        **tiny_run_parts(),
    )


@register_preset("run/codec", "small")
def _small() -> RunConfig:
    # 50 frames/s x 6 codebooks x 10 bits = 3 kbps; quantizer dropout also serves 0.5-2.5 kbps.
    return RunConfig(
        model=RVQCodecConfig(dim=256, encoder_depths=(1, 3), decoder_depths=(4, 2), latent_dim=128,
                             num_codebooks=6, codebook_size=1024, codebook_dim=8),
        discriminator=DiscriminatorConfig(stft_channels=16, periods=(2, 3, 5), period_channels=(16, 32, 64)),
        # The GAN makes a CPU step about 7x slower (0.33 s -> 2.4 s) and, switched on at
        # step 4000 of our first run, lowered chroma similarity (0.56 -> 0.34): it starts late.
        loss=LossConfig(gan_start_step=30_000),
        data=DataConfig(segment_seconds=1.0),
        train=_train(100_000, 8, 5e-4, log_every=20, valid_every=250, checkpoint_every=0, checkpoint_minutes=5.0),
    )
