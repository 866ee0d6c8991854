"""The codec GAN as a training-engine Task, shared by the RVQ codec and the VAE.

Per step: reconstruct the batch; after ``gan_start_step`` first update the
discriminator on (real, reconstruction), then the codec on
    mel * L_mel + stft * L_stft + bottleneck terms [+ adversarial * L_adv + fm * L_fm].
Before ``gan_start_step`` only the reconstruction terms train the codec, so the GAN
starts from a decoder that already reconstructs (as Vocos and EnCodec recommend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from tunesmith.codec.discriminators import Discriminator, DiscriminatorConfig
from tunesmith.codec.evaluate import chroma_similarity
from tunesmith.codec.gaussian import gaussian_kl
from tunesmith.codec.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    harmonic_distance,
    magnitude_distances,
    mel_distance,
    phase_derivative_loss,
    stft_distance,
)
from tunesmith.spectral import stft_same
from tunesmith.codec.model import NetConfig, RVQCodec, VAECodec
from tunesmith.codec.rvq import perplexity
from tunesmith.codec.synthetic import SyntheticClips
from tunesmith.train import unwrap

SYNTHETIC = "synthetic"


@dataclass
class DataConfig:
    manifest: str = "/work/data/corpus-v2/manifest.jsonl"  # or "synthetic" for seeded test signals
    segment_seconds: float = 1.0
    synthetic_clips: int = 512
    valid_clips: int = 8  # clips of the valid split scored by validate()
    valid_seconds: float = 4.0

    def __post_init__(self) -> None:
        if self.segment_seconds <= 0 or self.valid_seconds <= 0:
            raise ValueError("segment_seconds and valid_seconds must be > 0")


@dataclass
class LossConfig:
    mel: float = 15.0
    stft: float = 1.0
    harmonic: float = 5.0  # long-window low-band log-magnitude L1 (see losses.harmonic_distance): keeps pitch
    adversarial: float = 1.0
    feature_matching: float = 2.0
    commitment: float = 0.25  # RVQ only
    codebook: float = 1.0  # RVQ only
    kl: float = 1e-4  # VAE only
    phase: float = 0.0  # instantaneous-frequency + group-delay losses (APNet); experimental, 0 disables
    gan_start_step: int = 4000


@dataclass
class CodecRunParts:
    """Fields every codec run config has (subclasses add ``model`` and ``train``)."""

    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # A model directory (e.g. a shipped codec) whose weights start the run: fine-tuning with a
    # new recipe without repeating the hours that taught the codec what it already knows.
    init_from: str = ""


def make_datasets(data: DataConfig, model: NetConfig, seed: int) -> tuple[Dataset, Dataset]:
    """(train, valid) datasets: the corpus manifest, or synthetic clips."""
    if data.manifest == SYNTHETIC:
        train = SyntheticClips(data.synthetic_clips, data.segment_seconds, model.sample_rate, model.channels, seed)
        valid = SyntheticClips(data.valid_clips, data.valid_seconds, model.sample_rate, model.channels, seed + 1)
        return train, valid
    from tunesmith.data.datasets import AudioClipDataset

    train = AudioClipDataset(data.manifest, "train", model.sample_rate, model.channels, data.segment_seconds)
    valid = AudioClipDataset(data.manifest, "valid", model.sample_rate, model.channels, data.valid_seconds)
    return train, valid


class CodecTask:
    """A Task for the engine: modules ``codec`` and ``discriminator``."""

    def __init__(self, codec: RVQCodec | VAECodec, discriminator: Discriminator, loss: LossConfig,
                 train_dataset: Dataset, valid_dataset: Dataset, valid_clips: int) -> None:
        self.codec, self.discriminator, self.loss = codec, discriminator, loss
        self.train_dataset, self.valid_dataset = train_dataset, valid_dataset
        self.valid_clips = min(valid_clips, len(valid_dataset))  # type: ignore[arg-type]

    def modules(self) -> dict[str, nn.Module]:
        return {"codec": self.codec, "discriminator": self.discriminator}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {"audio": torch.stack([it["audio"] for it in items])}

    def _bottleneck(self, codec: nn.Module, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """Reconstruction, the decoder's complex STFT, bottleneck loss and its metrics for either codec."""
        raw = unwrap(codec)
        if isinstance(raw, RVQCodec):
            recon, _, stats = codec(wav)
            loss = self.loss.commitment * stats["commitment"] + self.loss.codebook * stats["codebook"]
            metrics = {"commitment": float(stats["commitment"].detach()), "restarted": float(stats["restarted"])}
            for k, counts in enumerate(stats["usage"]):
                metrics[f"perplexity/{k}"] = perplexity(counts)
            return recon, stats["magnitude"] if recon is None else stats["spectrum"], loss, metrics
        recon, mean, std, spectrum = codec(wav)
        kl = gaussian_kl(mean.float(), std.float())
        return recon, spectrum, self.loss.kl * kl, {"kl": float(kl.detach()), "latent_std": float(mean.detach().std())}

    def _magnitude_losses(self, raw: nn.Module, magnitude: torch.Tensor, wav: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """A Griffin-Lim codec's reconstruction loss: its magnitudes against the input's, same STFT.

        mel * log-mel L1 + harmonic * log-magnitude L1 (every bin: where the partials sit)
        + stft * spectral convergence.  No waveform, so no phase retrieval in training.
        """
        c = raw.config
        target = stft_same(raw._prepare(wav).flatten(0, 1), c.n_fft, c.hop).abs()
        d = magnitude_distances(magnitude, target, c.sample_rate, c.n_fft)
        total = self.loss.mel * d["mel"] + self.loss.harmonic * d["log"] + self.loss.stft * d["convergence"]
        return total, {f"magnitude_{k}": float(v.detach()) for k, v in d.items()}

    def training_step(self, modules: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int) -> Iterator:
        wav = batch["audio"]
        recon, spectrum, bottleneck, metrics = self._bottleneck(modules["codec"], wav)
        raw = unwrap(modules["codec"])
        if recon is None:  # a Griffin-Lim codec: ``spectrum`` holds its magnitudes
            reconstruction, more = self._magnitude_losses(raw, spectrum, wav)
            metrics.update(more)
            total = reconstruction + bottleneck
            if step >= self.loss.gan_start_step:
                from tunesmith.spectral import griffin_lim

                c = raw.config
                recon = griffin_lim(spectrum, c.n_fft, c.hop, c.griffin_lim_iters).reshape(wav.shape[0], c.channels, -1)[..., : wav.shape[-1]]
                yield from self._adversarial(modules, wav, recon, total, metrics)
            else:
                yield "codec", total, metrics
            return
        mel = mel_distance(recon, wav, raw.sample_rate)
        stft = stft_distance(recon, wav)
        total = self.loss.mel * mel + self.loss.stft * stft + bottleneck
        metrics.update(mel=float(mel.detach()), stft=float(stft.detach()))
        if self.loss.harmonic > 0:
            harmonic = harmonic_distance(recon, wav, raw.sample_rate)
            total = total + self.loss.harmonic * harmonic
            metrics.update(harmonic=float(harmonic.detach()))
        if self.loss.phase > 0:
            c = raw.config
            target = stft_same(raw._prepare(wav).flatten(0, 1), c.n_fft, c.hop)
            frequency, delay = phase_derivative_loss(spectrum, target)
            total = total + self.loss.phase * (frequency + delay)
            metrics.update(phase_frequency=float(frequency.detach()), phase_delay=float(delay.detach()))
        if step >= self.loss.gan_start_step:
            yield from self._adversarial(modules, wav, recon, total, metrics)
        else:
            yield "codec", total, metrics

    def _adversarial(self, modules: dict[str, nn.Module], wav: torch.Tensor, recon: torch.Tensor, total: torch.Tensor,
                     metrics: dict[str, float]) -> Iterator:
        """The GAN phase: update the discriminator, then the codec with adversarial + feature-matching terms."""
        outputs_real = modules["discriminator"](wav)
        outputs_fake = modules["discriminator"](recon.detach())
        d_loss = discriminator_loss([o[0] for o in outputs_real], [o[0] for o in outputs_fake])
        yield "discriminator", d_loss, {}
        disc = unwrap(modules["discriminator"])  # the codec's loss must not wait on D's gradients
        with torch.no_grad():
            real_features = [o[1] for o in disc(wav)]
        fake = disc(recon)
        adv = generator_adversarial_loss([o[0] for o in fake])
        fm = feature_matching_loss(real_features, [o[1] for o in fake])
        total = total + self.loss.adversarial * adv + self.loss.feature_matching * fm
        metrics.update(adversarial=float(adv.detach()), feature_matching=float(fm.detach()))
        yield "codec", total, metrics

    @torch.no_grad()
    def validate(self, modules: dict[str, nn.Module], step: int) -> dict[str, float]:
        """Mel and STFT distances on the first ``valid_clips`` clips of the valid split."""
        codec = unwrap(modules["codec"])
        device = next(codec.parameters()).device
        wav = torch.stack([self.valid_dataset[i]["audio"] for i in range(self.valid_clips)]).to(device)
        out: dict[str, float] = {}
        if isinstance(codec, RVQCodec):
            for k in sorted({1, codec.num_codebooks // 2, codec.num_codebooks} - {0}):
                recon = codec.decode(codec.encode(wav, k))
                out[f"mel@{k}q"] = float(mel_distance(recon, wav, codec.sample_rate))
            out["stft"] = float(stft_distance(recon, wav))
        else:
            recon = codec.decode(codec.encode(wav))
            out["mel"] = float(mel_distance(recon, wav, codec.sample_rate))
            out["stft"] = float(stft_distance(recon, wav))
        out["harmonic"] = float(harmonic_distance(recon, wav, codec.sample_rate))
        out["chroma"] = float(sum(chroma_similarity(r, w, codec.sample_rate)
                                  for r, w in zip(recon, wav)) / len(wav))
        return out
