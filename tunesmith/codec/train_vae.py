"""`tunesmith train vae`: the VAE (continuous latents for diffusion) through the shared engine.

Same networks, losses and discriminator as the RVQ codec (see :mod:`tunesmith.codec.task`);
only the bottleneck differs.

    tunesmith train vae --preset small --out runs/vae-v1 [--resume] [--export DIR]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.codec.discriminators import DiscriminatorConfig
from tunesmith.codec.model import VAEConfig
from tunesmith.codec.task import SYNTHETIC, CodecRunParts, DataConfig, LossConfig
from tunesmith.codec.train import _train, export, make_task
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
        discriminator=DiscriminatorConfig(stft_resolutions=((512, 128),), stft_channels=4, periods=(2,),
                                          period_channels=(4, 8)),
        loss=LossConfig(gan_start_step=10),
        data=DataConfig(manifest=SYNTHETIC, segment_seconds=0.5, synthetic_clips=16, valid_clips=2, valid_seconds=1.0),
        train=_train(20, 4, 2e-3, warmup_steps=2, log_every=5, checkpoint_every=10, progress=False, valid_every=10),
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
