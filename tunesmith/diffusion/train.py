"""`tunesmith train diffusion`: the DiT on cached VAE latents, through the shared engine.

Data is either a frame cache of VAE latents (``data.cache_dir``, written by the
corpus tools) with captions encoded by a frozen text encoder, or — with
``data.cache_dir = "synthetic"`` — Gaussian latents whose per-channel mean is set
by one of a few classes, each class with its own fixed random "text" tokens.
The synthetic task has a known answer, which is what the tests check.

Per item (seeded by the engine, so a resumed run sees the same draws):
- a random window of the clip, with its timing (seconds_start, seconds_total);
- the clip's beat grid and key (``tunesmith.conditioning.from_clip``), when the model takes them;
- with probability ``mask_probability`` an inpainting mask: keep a prefix (continuation),
  keep everything but one span (inpainting), or keep random spans.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tunesmith.checkpoint import save
from tunesmith.conditioning.conditions import (ConditionDropout, Conditioning, drop_conditions, from_clip, section_rows,
                                              section_text)
from tunesmith.conditioning.prompt import format_timed_prompt, parse_timed_prompt
from tunesmith.config import ConfigError, register_preset
from tunesmith.data.captions import resample_caption, window_sections
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.diffusion.generator import LatentDiffusionGenerator
from tunesmith.diffusion.objectives import sample_training_sigmas
from tunesmith.train.engine import TrainConfig

SYNTHETIC = "synthetic"


@dataclass
class DataConfig:
    cache_dir: str = SYNTHETIC  # a latent frame cache directory, or "synthetic"
    split: str = "train"
    segment_frames: int = 250  # training window (10 s at 25 frames/s)
    text_encoder: str = "minilm"  # frozen encoder for cached captions
    latent_scale: float = 1.0  # latents are multiplied by this (aim for unit variance)
    mask_probability: float = 0.3  # probability of an inpainting mask on an item
    caption_resample: float = 0.0  # probability of a caption freshly drawn from the clip's tags (data.captions.resample_caption)
    # probability that a clip with sections (tags.segments) trains as a time-stamped prompt: a window
    # across one of its section boundaries, each frame conditioned on its own section's text
    section_probability: float = 0.0
    # synthetic data
    synthetic_items: int = 512
    synthetic_classes: int = 2
    synthetic_text_tokens: int = 4
    synthetic_std: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("mask_probability", "caption_resample", "section_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.segment_frames < 2 or self.latent_scale <= 0 or self.synthetic_items < 1 or self.synthetic_classes < 1:
            raise ValueError("segment_frames >= 2, latent_scale > 0, synthetic_items >= 1, synthetic_classes >= 1")


@dataclass
class ObjectiveConfig:
    noise_distribution: Literal["uniform", "logit_normal", "log_normal"] = "uniform"
    noise_mean: float = -1.2  # logit-normal / log-normal location
    noise_std: float = 1.2


@dataclass
class RunConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # per condition, for guidance (each batch, in training_step); the DiT drops its text less often than the LM
    dropout: ConditionDropout = field(default_factory=lambda: ConditionDropout(text=0.1))
    train: TrainConfig = field(default_factory=TrainConfig)
    # A DiT (or latent-diffusion generator) directory to start from (tunesmith.checkpoint.init_from):
    # it may lack parts this model adds, e.g. a beat clock, which then start at zero.
    init_from: str = ""


# ---------------------------------------------------------------------------
# presets


@register_preset("run/diffusion", "tiny")
def _tiny() -> RunConfig:
    return RunConfig(
        model=DiTConfig(latent_dim=4, width=64, depth=2, heads=2, text_dim=16, fourier_dim=32, max_seconds=4.0),
        data=DataConfig(segment_frames=16, synthetic_items=256, synthetic_text_tokens=3),
        train=TrainConfig(steps=300, batch_size=16, lr=2e-3, warmup_steps=20, weight_decay=0.001, log_every=50,
                          checkpoint_every=0, checkpoint_minutes=0, progress=False, betas=(0.9, 0.99)),
    )


@register_preset("run/diffusion", "medium")
def _medium() -> RunConfig:
    # 25 latent frames/s x 32 channels (the small VAE); Stable Audio 2's recipe: AdamW 1e-4,
    # weight decay 1e-3, exponential warm-up, EMA, v-objective.
    return RunConfig(
        # Windowed attention (~10 s windows, shifted) in every other layer: linear cost in minutes-long pieces.
        model=DiTConfig(latent_dim=32, width=512, depth=8, heads=8, text_dim=384, max_seconds=190.0,
                        local_window=256, global_every=2),
        data=DataConfig(cache_dir="/work/data/cache/vae-24k", segment_frames=250),
        train=TrainConfig(steps=200_000, batch_size=16, lr=1e-4, weight_decay=1e-3, warmup_steps=1000,
                          warmup="exponential", schedule="constant", ema_decay=0.999, betas=(0.9, 0.999),
                          checkpoint_every=0, checkpoint_minutes=5.0),
    )


@register_preset("run/diffusion", "small")
def _small() -> RunConfig:
    """The size that fits the 100 MB budget beside the token LM: width 384, 8 blocks, 6 heads, 20M
    parameters (40 MB in fp16), trained on CPU.

    The corpus VAE's latents have a standard deviation of about 6.9 (vae-24k over corpus-v2), so
    they are scaled by 0.146 to unit variance.  A higher learning rate than Stable Audio 2's 1e-4
    (which is tuned for batch 256 on GPUs) because CPU runs are short; text through the attribute
    tokens (tempo and key) like the token LM.
    """
    return RunConfig(
        model=DiTConfig(latent_dim=32, width=384, depth=8, heads=6, text_dim=384, max_seconds=190.0,
                        local_window=256, global_every=2),
        data=DataConfig(cache_dir="/work/data/cache/vae-24k", segment_frames=250, text_encoder="minilm+attributes",
                        latent_scale=0.146),
        train=TrainConfig(steps=200_000, batch_size=16, lr=4e-4, weight_decay=1e-3, warmup_steps=300,
                          warmup="exponential", schedule="constant", ema_decay=0.999, betas=(0.9, 0.99),
                          checkpoint_every=0, checkpoint_minutes=5.0),
    )


# ---------------------------------------------------------------------------
# data


def random_keep_mask(frames: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 float mask over frames (1 = known): prefix, all-but-one-span, or random spans."""
    mask = np.zeros(frames, dtype=np.float32)
    kind = rng.integers(3)
    if kind == 0:  # continuation / outpainting: keep a prefix
        mask[: rng.integers(1, frames)] = 1
    elif kind == 1:  # inpainting: regenerate one span
        start = rng.integers(0, frames - 1)
        end = rng.integers(start + 1, frames + 1)
        mask[:] = 1
        mask[start:end] = 0
    else:  # several known spans
        for _ in range(rng.integers(1, 4)):
            start = rng.integers(0, frames)
            mask[start : start + rng.integers(1, max(2, frames // 3))] = 1
    return mask


class SyntheticLatents(Dataset):
    """Latents x0 = class mean + std * noise (per channel); each class has fixed random text tokens.

    ``class_means`` (C, D) and ``class_text`` (C, S, text_dim) are seeded by ``seed``.
    """

    def __init__(self, data: DataConfig, model: DiTConfig, frame_rate: float = 25.0) -> None:
        self.data, self.frames, self.frame_rate = data, data.segment_frames, frame_rate
        g = torch.Generator().manual_seed(data.seed)
        self.class_means = torch.randn(data.synthetic_classes, model.latent_dim, generator=g)
        self.class_text = torch.randn(data.synthetic_classes, data.synthetic_text_tokens, model.text_dim, generator=g)

    def __len__(self) -> int:
        return self.data.synthetic_items

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        label = index % self.data.synthetic_classes
        noise = torch.from_numpy(rng.standard_normal((self.class_means.shape[1], self.frames)).astype(np.float32))
        latents = self.class_means[label][:, None] + self.data.synthetic_std * noise
        seconds = self.frames / self.frame_rate
        return _finish_item(latents, self.class_text[label], None, 0.0, seconds, self.data, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


class CachedLatents(Dataset):
    """Random windows of cached VAE latent clips, with captions and timing."""

    def __init__(self, data: DataConfig, model: DiTConfig) -> None:
        from tunesmith.data.cache import FrameCache

        self.data = data
        self.cache = FrameCache(data.cache_dir, data.split)
        if self.cache.kind != "latents":
            raise ConfigError(f"{data.cache_dir} holds {self.cache.kind}, not VAE latents")
        width = int(self.cache.meta["latent_dim"])
        if width != model.latent_dim:
            raise ConfigError(f"cache latents have {width} channels but model.latent_dim is {model.latent_dim}")
        self.frame_rate = float(self.cache.meta["frame_rate"])
        self.beat_clock, self.key_input = model.beat_clock, model.key_input

    def __len__(self) -> int:
        return len(self.cache)

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        clip = self.cache.clip_frames(index)
        total = clip.shape[0]
        size = self.data.segment_frames
        record = self.cache.records[index]
        segments = (record.get("tags") or {}).get("segments") or []
        timed = len(segments) > 1 and self.data.section_probability > 0 and rng.random() < self.data.section_probability
        sections: list[tuple[float, float, str]] = []
        if timed:
            for _ in range(4):  # a window may hear too little of a short section: draw again
                start = self._window_across_a_boundary(segments, total, rng)
                heard = min(size, total - start) / self.frame_rate
                sections = window_sections(segments, start / self.frame_rate, heard, rng, record.get("tags"))
                if sections:
                    break
        else:
            start = int(rng.integers(0, max(1, total - size + 1)))
        window = clip[start : start + size].T.float() * self.data.latent_scale
        if window.shape[-1] < size:  # short clip: zero-pad; seconds_total tells the model where it ends
            window = torch.nn.functional.pad(window, (0, size - window.shape[-1]))
        caption = format_timed_prompt(sections) if sections else resample_caption(record, rng, self.data.caption_resample)
        item = _finish_item(window, None, caption, start / self.frame_rate, total / self.frame_rate, self.data, rng)
        # the clip's grid (cut at a bar line: a beat on its first frame) from the window's start, and its key
        item.update(from_clip(record, num_frames=size, frame_rate=self.frame_rate, start_frame=start,
                              beat_clock=self.beat_clock, key_input=self.key_input))
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))

    def _window_across_a_boundary(self, segments: list[dict[str, Any]], total: int, rng: np.random.Generator) -> int:
        """A window start (frames) that puts one of the clip's section boundaries, drawn at random,
        somewhere in the middle 60% of the window."""
        size = self.data.segment_frames
        boundary = float(segments[int(rng.integers(1, len(segments)))]["start"]) * self.frame_rate
        low, high = boundary - 0.8 * size, boundary - 0.2 * size
        start = int(round(rng.uniform(low, high)))
        return int(np.clip(start, 0, max(0, total - size)))


def _finish_item(
    latents: torch.Tensor,
    text: torch.Tensor | None,
    caption: str | None,
    seconds_start: float,
    seconds_total: float,
    data: DataConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    frames = latents.shape[-1]
    keep = random_keep_mask(frames, rng) if rng.random() < data.mask_probability else np.zeros(frames, np.float32)
    return {
        "latents": latents,
        "text": text,
        "caption": caption,
        "seconds_start": seconds_start,
        "seconds_total": seconds_total,
        "inpaint_mask": torch.from_numpy(keep)[None],
    }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "latents": torch.stack([it["latents"] for it in items]),
        "seconds_start": torch.tensor([it["seconds_start"] for it in items], dtype=torch.float32),
        "seconds_total": torch.tensor([it["seconds_total"] for it in items], dtype=torch.float32),
        "inpaint_mask": torch.stack([it["inpaint_mask"] for it in items]),
    }
    for name in ("beat", "key"):
        if name in items[0]:
            batch[name] = torch.stack([it[name] for it in items])
    if items[0]["text"] is not None:
        batch["text"] = torch.stack([it["text"] for it in items])
    else:
        batch["caption"] = [it["caption"] for it in items]
    return batch


# ---------------------------------------------------------------------------
# the task


class DiffusionTask:
    """One module ("dit"); the loss is the objective of ``model.parameterization`` at random noise levels."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        cache = config.data.cache_dir
        if cache == SYNTHETIC:
            self.train_dataset: Dataset = SyntheticLatents(config.data, config.model)
        else:
            if not Path(cache).is_dir():
                raise ConfigError(f"latent cache not found: {cache} (build it with the corpus tools, or use 'synthetic')")
            self.train_dataset = CachedLatents(config.data, config.model)
        self.frame_rate = float(self.train_dataset.frame_rate)  # latent frames per second, for section weights
        self.model = DiT(config.model)
        if config.init_from:
            from tunesmith.checkpoint import init_from

            self.new_parameters = init_from(self.model, config.init_from)
        self._text_encoder = None

    def modules(self) -> dict[str, nn.Module]:
        return {"dit": self.model}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def conditioning(self, batch: dict[str, Any], device: torch.device) -> Conditioning:
        """The batch's conditioning (text encoded here, from the captions), before dropout."""
        if "text" in batch:
            text = batch["text"]
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
        else:
            if self._text_encoder is None:
                from tunesmith.conditioning.encoders import get_text_encoder

                self._text_encoder = get_text_encoder(self.config.data.text_encoder)
            sections = [parse_timed_prompt(c) for c in batch["caption"]]
            if any(sections):  # time-stamped windows: each frame reads its own section's text, as in generation
                with torch.no_grad():
                    text, mask, segments = section_text(section_rows(batch["caption"], sections), self._text_encoder, batch["latents"].shape[-1],
                                                        self.frame_rate)
                cond = Conditioning(text, mask, beat=batch.get("beat"), key=batch.get("key"),
                                    seconds_start=batch["seconds_start"], seconds_total=batch["seconds_total"],
                                    segments=segments)
                return cond.to(device)
            with torch.no_grad():
                text, mask = self._text_encoder.encode(batch["caption"])
        cond = Conditioning(text, mask, beat=batch.get("beat"), key=batch.get("key"),
                            seconds_start=batch["seconds_start"], seconds_total=batch["seconds_total"])
        return cond.to(device)


    def training_step(self, modules: dict[str, nn.Module], batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        net = modules["dit"]
        cfg, obj = self.config.model, self.config.objective
        x0 = batch["latents"]
        b = x0.shape[0]
        sigma = sample_training_sigmas(b, obj.noise_distribution, mean=obj.noise_mean, std=obj.noise_std).to(x0.device)
        noise = torch.randn_like(x0)
        cond = drop_conditions(self.conditioning(batch, x0.device), self.config.dropout)
        denoiser = Denoiser(net, cfg.parameterization, cfg.sigma_data)
        extra = {"inpaint_mask": batch["inpaint_mask"], "inpaint_latents": x0} if cfg.inpainting else {}
        loss = denoiser.loss(x0, sigma, noise, **cond.model_inputs(), **extra)
        return loss, {"sigma_median": float(sigma.median())}


def make_task(config: RunConfig) -> DiffusionTask:
    return DiffusionTask(config)


def export(trainer: Any, config: RunConfig, out_dir: Path) -> Path:
    """Write the trained DiT (EMA weights when enabled) as a latent-diffusion generator directory.

    The VAE is the model the cache names: referenced by name when it is a bundled model
    (no second copy; the DiT is then stored in fp16, like the bundled LM), else copied
    under ``codec/``.  Without a VAE (synthetic data, or one that cannot be loaded) the
    DiT alone is written.
    """
    model = DiT(config.model)
    model.load_state_dict(trainer.ema_state_dict("dit"))
    meta = {
        "generator_type": LatentDiffusionGenerator.generator_type,
        "text_encoder": config.data.text_encoder,
        "latent_scale": config.data.latent_scale,
        "training": {"step": trainer.step, "run_dir": str(trainer.out_dir)},
    }
    codec = None
    if config.data.cache_dir != SYNTHETIC:
        codec = json.loads((Path(config.data.cache_dir) / "meta.json").read_text()).get("model")
    if codec:
        from tunesmith.checkpoint import bundled_models, load_model

        try:
            vae = load_model(codec)
        except Exception as err:  # the run is still useful; say what is missing
            print(f"note: could not bundle the VAE '{codec}' ({err}); add it under {Path(out_dir) / 'codec'}")
        else:
            generator = LatentDiffusionGenerator(model, vae, text_encoder_name=config.data.text_encoder,  # type: ignore[arg-type]
                                                 latent_scale=config.data.latent_scale)
            bundled = codec in bundled_models()
            return generator.save(out_dir, codec_name=codec if bundled else None, fp16=bundled,
                                  extra={"training": meta["training"]})
    return save(model, out_dir, extra=meta)
