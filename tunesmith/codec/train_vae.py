"""`tunesmith train vae`: the VAE (continuous latents for diffusion) through the shared engine.

Same networks, losses and discriminator as the RVQ codec (see :mod:`tunesmith.codec.task`);
only the bottleneck differs.

    tunesmith train vae --preset small --out runs/vae-v1 [--resume] [--export DIR]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.codec.discriminators import DiscriminatorConfig
from tunesmith.codec.model import VAEConfig
from tunesmith.codec.task import CodecRunParts, DataConfig, LossConfig
from tunesmith.codec.train import _train, export, make_task, tiny_run_parts
from tunesmith.config import register_preset
from tunesmith.train.engine import TrainConfig

__all__ = ["RunConfig", "make_task", "export"]


@dataclass
class RunConfig(CodecRunParts):
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@register_preset("run/vae", "tiny")
def _tiny() -> RunConfig:
    return RunConfig(
        model=VAEConfig(dim=32, strides=(2, 2), encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8),
        **tiny_run_parts(),
    )


@register_preset("run/vae", "small")
def _small() -> RunConfig:
    # 25 latent frames/s x 32 channels (Stable Audio-like heavy downsampling, 960 samples per frame).
    return RunConfig(
        model=VAEConfig(dim=256, strides=(2, 2), encoder_depths=(1, 1, 3), decoder_depths=(3, 2, 1), latent_dim=32),
        discriminator=DiscriminatorConfig(stft_channels=16, periods=(2, 3, 5), period_channels=(16, 32, 64)),
        loss=LossConfig(gan_start_step=30_000),  # late, as for the RVQ codec (see codec.train)
        data=DataConfig(segment_seconds=1.0),
        train=_train(100_000, 8, 5e-4, log_every=20, valid_every=250, checkpoint_every=0, checkpoint_minutes=5.0),
    )
