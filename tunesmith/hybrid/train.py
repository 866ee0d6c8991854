"""`tunesmith train hybrid`: stage 2 (the DPD) on cached coarse tokens + VAE latents, through the one engine.

Data is a pair of frame caches of the same manifest (matched by clip id): codec tokens
(``data.token_cache``, e.g. codec-24k's, built by ``tunesmith codec cache --model codec-24k``)
and VAE latents (``data.latent_cache``); or, with ``data.token_cache = "synthetic"``, latents
that are a fixed function of random token runs plus a little smooth noise (a task whose answer
is the tokens: what the tests check).

Per item (seeded by the engine, so a resumed run sees the same draws): a random window of the
clip, its tokens at ``tokens_per_frame`` per latent frame, and with probability
``mask_probability`` a known prefix (the continuation the generator asks for: the tail of the
previous window).  Per step: the tokens of each row dropped with probability ``token_dropout``
(guidance), and MeLoDy's multi-chunk angles (one per segment) for half the rows, one noise level
for the others (sampling moves all free frames together).

Stage 1 trains as any token LM (``tunesmith train lm``) on a stacked coarse cache written by
:func:`stack_token_cache`, starting from a trained LM through
:func:`tunesmith.hybrid.stage1.coarse_lm_from` (docs/hybrid.md has the commands).
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
from tunesmith.config import ConfigError, register_preset
from tunesmith.diffusion.denoiser import Denoiser
from tunesmith.diffusion.objectives import sample_training_sigmas
from tunesmith.hybrid import angle
from tunesmith.hybrid.dpd import DPDConfig, DualPathDiffusion
from tunesmith.hybrid.tokens import stack_frames
from tunesmith.train.engine import TrainConfig

SYNTHETIC = "synthetic"


@dataclass
class DataConfig:
    token_cache: str = SYNTHETIC  # a frame cache of codec tokens, or "synthetic"
    latent_cache: str = "/work/data/cache/vae-24k-v3"  # a frame cache of VAE latents of the same clips
    split: str = "train"
    segment_frames: int = 250  # latent frames per training window (10 s at 25/s)
    latent_scale: float = 0.146  # latents are multiplied by this (vae-24k: about unit variance)
    mask_probability: float = 0.5  # probability of a known prefix (continuation) on an item
    max_clips: int = 0  # use only the first clips (0: all)
    # synthetic data
    synthetic_items: int = 512
    synthetic_run: int = 4  # mean length of a token run, in token frames
    synthetic_std: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        if self.segment_frames < 2 or self.latent_scale <= 0 or self.synthetic_items < 1 or self.synthetic_run < 1:
            raise ValueError("segment_frames >= 2, latent_scale > 0, synthetic_items >= 1, synthetic_run >= 1")


@dataclass
class ObjectiveConfig:
    # angle objective: the probability that a row gets one noise level per segment (MeLoDy's multi-chunk)
    # rather than one for the row; sampling moves all free frames together, so rows see both
    multi_chunk: float = 0.5
    ordered: bool = True  # multi-chunk levels stratified over (0, 1) within each row
    noise_distribution: Literal["uniform", "logit_normal", "log_normal"] = "uniform"  # v / edm objectives
    noise_mean: float = -1.2
    noise_std: float = 1.2


@dataclass
class RunConfig:
    model: DPDConfig = field(default_factory=DPDConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    token_dropout: float = 0.1  # per row: all tokens -> "no token" (the unconditional branch of guidance)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str = ""  # a DPD (or two-stage generator) directory to start from
    stage1: str = ""  # a coarse LM directory: export then writes a whole two-stage generator
    stack: int = 5  # the coarse LM's frame stacking (with stage1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.objective.multi_chunk <= 1.0:
            raise ValueError(f"objective.multi_chunk must be in [0, 1], got {self.objective.multi_chunk}")
        if not 0.0 <= self.token_dropout <= 1.0:
            raise ValueError(f"token_dropout must be in [0, 1], got {self.token_dropout}")


# ---------------------------------------------------------------------------
# presets


@register_preset("run/hybrid", "tiny")
def _tiny() -> RunConfig:
    return RunConfig(
        model=DPDConfig(latent_dim=4, width=32, depth=2, heads=2, segment=4, codebook_size=8, fourier_dim=16,
                        ffn_mult=2.0),
        data=DataConfig(segment_frames=16, synthetic_items=256, latent_scale=1.0),
        train=TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup_steps=20, weight_decay=0.0, log_every=50,
                          checkpoint_every=0, checkpoint_minutes=0, progress=False, betas=(0.9, 0.99)),
    )


@register_preset("run/hybrid", "small")
def _small() -> RunConfig:
    """Stage 2 at a CPU budget: width 256, 4 pairs (about 8M parameters), 1-s segments, 10-s windows
    of vae-24k latents (32 channels, 25/s) read against codec-24k's first codebook (50/s)."""
    return RunConfig(
        model=DPDConfig(latent_dim=32, width=256, depth=4, heads=4, segment=25, codebook_size=1024),
        data=DataConfig(token_cache="/work/data/cache/codec-24k-v3", latent_cache="/work/data/cache/vae-24k-v3",
                        segment_frames=250, latent_scale=0.146),
        train=TrainConfig(steps=100_000, batch_size=8, lr=4e-4, weight_decay=1e-3, warmup_steps=300,
                          warmup="exponential", schedule="constant", ema_decay=0.999, betas=(0.9, 0.99),
                          checkpoint_every=0, checkpoint_minutes=5.0),
    )


# ---------------------------------------------------------------------------
# data


def prefix_mask(frames: int, rng: np.random.Generator, probability: float) -> np.ndarray:
    """(frames,) float, 1 = known: with ``probability`` a prefix of 1 .. frames/2 frames."""
    keep = np.zeros(frames, dtype=np.float32)
    if rng.random() < probability:
        keep[: int(rng.integers(1, max(2, frames // 2 + 1)))] = 1
    return keep


class SyntheticPairs(Dataset):
    """Random runs of coarse tokens and latents that follow them: frame j = the mean of a fixed random
    vector per token over its token frames, plus smooth noise; the tokens say what the latents are."""

    def __init__(self, data: DataConfig, model: DPDConfig) -> None:
        self.data, self.model = data, model
        g = torch.Generator().manual_seed(data.seed)
        self.table = torch.randn(model.num_codebooks, model.codebook_size, model.latent_dim, generator=g)

    def __len__(self) -> int:
        return self.data.synthetic_items

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        m, d = self.model, self.data
        frames, r = d.segment_frames, m.tokens_per_frame
        n = frames * r
        run_of = np.repeat(np.arange(n), rng.geometric(1.0 / d.synthetic_run, size=n))[:n]  # frame -> its run
        values = rng.integers(0, m.codebook_size, size=(m.num_codebooks, n))
        tokens = torch.from_numpy(values[:, run_of]).long()
        latents = tokens_to_latents(self.table, tokens, r)
        smooth = torch.from_numpy(rng.standard_normal((m.latent_dim, frames)).astype(np.float32)).cumsum(-1)
        smooth = smooth / torch.arange(1, frames + 1, dtype=torch.float32).sqrt()  # a random walk, unit scale
        latents = latents + d.synthetic_std * smooth
        keep = prefix_mask(frames, rng, d.mask_probability)
        return {"latents": latents, "tokens": tokens, "keep": torch.from_numpy(keep)[None]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


def tokens_to_latents(table: torch.Tensor, tokens: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """The synthetic task's answer: (K, N, D) table, tokens (K, F * r) -> latents (D, F)."""
    k, n = tokens.shape
    per_token = sum(table[i][tokens[i]] for i in range(k))  # (F r, D)
    return per_token.view(n // tokens_per_frame, tokens_per_frame, -1).mean(1).T.contiguous()


class CachedPairs(Dataset):
    """Random windows of clips present in both caches: latents and the coarse tokens under them."""

    def __init__(self, data: DataConfig, model: DPDConfig) -> None:
        from tunesmith.data.cache import FrameCache

        self.data, self.model = data, model
        self.tokens = FrameCache(data.token_cache, data.split)
        self.latents = FrameCache(data.latent_cache, data.split)
        if self.tokens.kind != "tokens" or self.latents.kind != "latents":
            raise ConfigError(f"{data.token_cache} must hold tokens and {data.latent_cache} latents")
        if int(self.latents.meta["latent_dim"]) != model.latent_dim:
            raise ConfigError(f"cache latents have {self.latents.meta['latent_dim']} channels, model.latent_dim is {model.latent_dim}")
        if int(self.tokens.meta.get("num_codebooks", self.tokens.data.shape[1])) < model.num_codebooks:
            raise ConfigError(f"the token cache has fewer than {model.num_codebooks} codebooks")
        ratio = float(self.tokens.meta["frame_rate"]) / float(self.latents.meta["frame_rate"])
        if abs(ratio - model.tokens_per_frame) > 1e-6:
            raise ConfigError(f"tokens at {self.tokens.meta['frame_rate']}/s and latents at {self.latents.meta['frame_rate']}/s "
                              f"are not model.tokens_per_frame = {model.tokens_per_frame} apart")
        index = {r["id"]: i for i, r in enumerate(self.tokens.records)}
        self.pairs = [(index[r["id"]], j) for j, r in enumerate(self.latents.records) if r["id"] in index]
        if data.max_clips:
            self.pairs = self.pairs[: data.max_clips]
        if not self.pairs:
            raise ConfigError(f"no clip is in both {data.token_cache} and {data.latent_cache}")

    def __len__(self) -> int:
        return len(self.pairs)

    def get_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        m, d = self.model, self.data
        ti, li = self.pairs[index]
        lat, tok = self.latents.clip_frames(li), self.tokens.clip_frames(ti)
        r, size = m.tokens_per_frame, d.segment_frames
        total = min(lat.shape[0], tok.shape[0] // r)
        start = int(rng.integers(0, max(1, total - size + 1)))
        window = lat[start : start + min(size, total - start)].T.float() * d.latent_scale
        tokens = tok[start * r : (start + window.shape[-1]) * r, : m.num_codebooks].T.long()
        have = window.shape[-1]
        if have < size:  # a short clip: zeros and "no token" after its end
            window = torch.nn.functional.pad(window, (0, size - have))
            tokens = torch.nn.functional.pad(tokens, (0, (size - have) * r), value=m.codebook_size)
        keep = prefix_mask(size, rng, d.mask_probability)
        return {"latents": window, "tokens": tokens, "keep": torch.from_numpy(keep)[None]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index, np.random.default_rng(index))


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([it[key] for it in items]) for key in ("latents", "tokens", "keep")}


def stack_token_cache(source: str | Path, out: str | Path, codebooks: int, stack: int,
                      splits: tuple[str, ...] = ("train", "valid", "test")) -> Path:
    """Write the stage-1 training cache: the first ``codebooks`` codebooks of a token cache,
    ``stack`` frames per step (tunesmith.hybrid.tokens.stack_frames), at 1/stack of the frame rate;
    clips keep their captions and tags (the tempo and key tags still describe them)."""
    from tunesmith.data.cache import FrameCache, write_frame_cache

    meta = None
    for split in splits:
        if not (Path(source) / f"{split}.safetensors").is_file():
            continue
        cache = FrameCache(source, split)
        meta = {**cache.meta, "num_codebooks": codebooks * stack, "frame_rate": float(cache.meta["frame_rate"]) / stack,
                "model": f"{cache.meta.get('model', '')}/coarse-k{codebooks}-stack{stack}"}

        def items(cache: FrameCache = cache) -> Any:
            for i in range(len(cache)):
                frames = cache.clip_frames(i)[:, :codebooks].T.long()
                frames = frames[:, : frames.shape[-1] // stack * stack]
                steps = stack_frames(frames[None], stack)[0] if frames.shape[-1] else frames.new_zeros(codebooks * stack, 0)
                yield steps.T.numpy().astype(np.int16), cache.records[i]

        write_frame_cache(out, split, items(), meta)
    if meta is None:
        raise ConfigError(f"{source} has none of the splits {', '.join(splits)}")
    return Path(out)


# ---------------------------------------------------------------------------
# the task


class HybridTask:
    """One module ("dpd"); the loss is the objective of ``model.objective`` (angle: multi-chunk)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        if config.data.token_cache == SYNTHETIC:
            self.train_dataset: Dataset = SyntheticPairs(config.data, config.model)
        else:
            for path in (config.data.token_cache, config.data.latent_cache):
                if not Path(path).is_dir():
                    raise ConfigError(f"cache not found: {path} (build it with `tunesmith codec cache`, or use 'synthetic')")
            self.train_dataset = CachedPairs(config.data, config.model)
        self.model = DualPathDiffusion(config.model)
        self.new_parameters: list[str] = []
        if config.init_from:
            from tunesmith.checkpoint import init_from

            self.new_parameters = init_from(self.model, config.init_from)

    def modules(self) -> dict[str, nn.Module]:
        return {"dpd": self.model}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(items)

    def training_step(self, modules: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(modules["dpd"], batch, self.config)


def step_loss(net: nn.Module, batch: dict[str, torch.Tensor], config: RunConfig,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPD's training loss on one batch (the engine seeds the global RNG per step)."""
    c, obj = config.model, config.objective
    x0, tokens, keep = batch["latents"], batch["tokens"], batch["keep"]
    b, _, t = x0.shape
    dev = x0.device
    drop = torch.rand(b, generator=generator).to(dev) < config.token_dropout
    tokens = torch.where(drop[:, None, None], torch.full_like(tokens, c.codebook_size), tokens)
    noise = torch.randn(x0.shape, generator=generator).to(dev)
    extra = {"inpaint_mask": keep, "inpaint_latents": x0} if c.inpainting else {}
    free = 1 - keep
    if c.objective == "angle":
        chunked = angle.multi_chunk_times(b, t, c.segment, generator, ordered=obj.ordered)
        whole = angle.multi_chunk_times(b, t, t, generator)
        per_row = torch.rand(b, 1, generator=generator) < obj.multi_chunk
        times = torch.where(per_row, chunked, whole).to(dev) * free[:, 0]  # known frames sit at t = 0 (z = x0 there)
        z = angle.noisy(x0, noise, times)
        loss = angle.loss(net(z, times, tokens, **extra), x0, noise, times, weight=free if c.inpainting else None)
        return loss, {"t_mean": float(times.mean())}
    sigma = sample_training_sigmas(b, obj.noise_distribution, generator, mean=obj.noise_mean, std=obj.noise_std).to(dev)
    loss = Denoiser(net, "edm" if c.objective == "edm" else "v", c.sigma_data).loss(x0, sigma, noise, tokens=tokens, **extra)
    return loss, {"sigma_median": float(sigma.median())}


def make_task(config: RunConfig) -> HybridTask:
    return HybridTask(config)


def export(trainer: Any, config: RunConfig, out_dir: Path) -> Path:
    """Write the trained DPD (EMA weights when enabled); with ``stage1`` (a coarse LM directory) and a
    latent cache naming its VAE, a whole two-stage generator directory."""
    model = DualPathDiffusion(config.model)
    model.load_state_dict(trainer.ema_state_dict("dpd"))
    training = {"step": trainer.step, "run_dir": str(trainer.out_dir)}
    vae_name = None
    if config.data.token_cache != SYNTHETIC:
        vae_name = json.loads((Path(config.data.latent_cache) / "meta.json").read_text()).get("model")
    if config.stage1 and vae_name:
        from tunesmith.checkpoint import bundled_models, load_model
        from tunesmith.hybrid.generator import TwoStageGenerator

        lm = load_model(config.stage1)
        generator = TwoStageGenerator(lm, model, load_model(vae_name), codebooks=config.model.num_codebooks,  # type: ignore[arg-type]
                                      stack=config.stack, latent_scale=config.data.latent_scale)
        bundled = vae_name in bundled_models()
        return generator.save(out_dir, codec_name=vae_name if bundled else None, extra={"training": training})
    return save(model, out_dir, extra={"training": training, "latent_scale": config.data.latent_scale})
