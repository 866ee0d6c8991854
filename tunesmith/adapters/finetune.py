"""`tunesmith finetune`: LoRA adapters for any tunesmith generator, trained on a folder, through the one engine.

    run_finetune(FinetuneConfig(folder="my-songs", model="tunesmith-small-dit", out="my-style"))

The base generator's network is loaded and frozen, peft wraps its attention and
feed-forward projections with low-rank updates (:mod:`tunesmith.adapters.lora`), and the
family's own training task (``DiffusionTask`` for a DiT, ``LMTask`` for a token LM) trains
them on the folder's latents or tokens (:mod:`tunesmith.adapters.data`), with the engine's
schedule, seeded order, progress bar and atomic, resumable checkpoints.  Every
``valid_every`` steps the loss on the held-out files is measured with fixed draws (noise
levels and noise, or the LM's teacher-forced cross-entropy), the best adapter so far is
kept, and training stops once ``patience`` validations in a row have not improved on it.
The run directory (``<out>.run`` by default: index, cache, checkpoints, logs) stays
beside the adapter directory, which holds only the few MB that generation needs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from tunesmith import DEFAULT_GENERATOR
from tunesmith.adapters import lora
from tunesmith.adapters.data import DataOptions, prepare_folder
from tunesmith.adapters.directory import ADAPTER_TYPE, write_adapter
from tunesmith.adapters.prior import PRIOR_SPLIT, MixedWindows, median_loudness, prepare_prior, prior_count
from tunesmith.checkpoint import BUNDLED_DIR, load_tensors, read_directory_meta, resolve, save_tensors
from tunesmith.config import require, save_config
from tunesmith.data.manifest import read_manifest
from tunesmith.errors import CheckpointError, UserError
from tunesmith.files import atomic_write_text
from tunesmith.generator import load_parts
from tunesmith.train import state
from tunesmith.train.engine import TrainConfig, Trainer, seed_everything, unwrap

BEST_WEIGHTS, BEST_STATE = "best_adapter.safetensors", "best.json"
FAMILIES = {"latent-diffusion": "latents", "token-lm": "tokens"}  # generator_type -> what the cache holds


@dataclass
class FinetuneConfig:
    folder: str = ""
    model: str = DEFAULT_GENERATOR  # the base: a bundled name or a generator directory
    out: str = "my-style"  # the adapter directory
    run_dir: str = ""  # index, cache, checkpoints and logs; default "<out>.run"
    lora: lora.LoraSettings = field(default_factory=lora.LoraSettings)
    data: DataOptions = field(default_factory=DataOptions)
    # the defaults are what bench/finetune.py measured: 30 minutes of audio in about 15 minutes on 2 cores
    steps: int = 200  # at most; early stopping may end sooner
    batch_size: int = 4
    lr: float = 1e-3
    warmup_steps: int = 10
    window_seconds: float = 10.0  # training window, as the bundled models were trained
    # prior preservation: this share of the training clips are the base's own generations
    # (tunesmith.adapters.prior); off by default: on the benchmark it kept prompt adherence but
    # made the output burstier and further from the folder's style (docs/finetune.md)
    prior_share: float = 0.0
    valid_every: int = 40  # steps; 0: no validation (and no early stopping)
    patience: int = 3  # validations without a new best before stopping; 0: never stop early
    valid_windows: int = 12  # held-out windows per validation (at most)
    seed: int = 0
    checkpoint_minutes: float = 5.0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        for name in ("warmup_steps", "valid_every", "patience"):
            require(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        require(self.valid_windows >= 1, "valid_windows", self.valid_windows, ">= 1")
        require(0.0 <= self.prior_share < 1.0, "prior_share", self.prior_share, "in [0, 1)")
        require(np.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        require(np.isfinite(self.window_seconds) and self.window_seconds > 0, "window_seconds", self.window_seconds, "> 0")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(f"{str(self.out).rstrip('/')}.run")


@dataclass
class FinetuneResult:
    adapter: Path | None  # None when interrupted (resume to finish)
    steps: int
    best_step: int | None
    valid_loss_base: float | None
    valid_loss_best: float | None
    stopped_early: bool
    interrupted: bool
    minutes: dict[str, float]
    data: dict[str, Any]


# ---------------------------------------------------------------------------
# the base


def base_name(model: str) -> str:
    """How the adapter names its base: a bundled name as it is, a directory by its absolute path
    (so the adapter loads from any working directory)."""
    directory = resolve(model)
    if directory.resolve().parent == BUNDLED_DIR.resolve():
        return directory.name
    return str(directory.resolve())


def load_base(model: str) -> tuple[nn.Module, Any, dict[str, Any], Path]:
    """(network, codec, config.json, directory) of a tunesmith generator to fine-tune."""
    directory = resolve(model)
    kind = read_directory_meta(directory).get("generator_type")
    if kind == ADAPTER_TYPE:
        raise UserError(f"{model} is a LoRA adapter; fine-tune its base, or merge it first (tunesmith finetune merge)")
    if kind not in FAMILIES:
        raise UserError(f"{model} is not a generator tunesmith can fine-tune (generator_type={kind!r}; "
                        f"it takes {', '.join(FAMILIES)})")
    network, codec, meta = load_parts(directory)
    return network, codec, meta, directory


# ---------------------------------------------------------------------------
# the families


def _diffusion_task(config: FinetuneConfig, network: nn.Module, meta: dict[str, Any], cache: Path,
                    train: TrainConfig, prior: bool) -> tuple[Any, Callable[[nn.Module], float] | None]:
    from tunesmith.diffusion.train import CachedLatents, DataConfig, RunConfig, make_task

    frame_rate = float(json.loads((cache / "meta.json").read_text())["frame_rate"])
    frames = max(2, round(config.window_seconds * frame_rate))
    data = DataConfig(cache_dir=str(cache), segment_frames=frames, text_encoder=meta.get("text_encoder", "minilm"),
                      latent_scale=float(meta.get("latent_scale", 1.0)))
    run = RunConfig(model=network.config, data=data, train=train)
    task = make_task(run)
    task.model = network  # the base with its LoRA layers, in place of the fresh DiT the task built
    if prior:
        task.train_dataset = MixedWindows(task.train_dataset,
                                          CachedLatents(dataclasses.replace(data, split=PRIOR_SPLIT), network.config))
    if not (cache / "valid.safetensors").is_file():
        return task, None
    valid = dataclasses.replace(data, split="valid", mask_probability=0.0)
    dataset = CachedLatents(valid, network.config)
    return task, lambda net: _diffusion_valid_loss(task, net, dataset, config.valid_windows)


def _diffusion_valid_loss(task: Any, net: nn.Module, dataset: Any, windows: int) -> float:
    """The training loss on held-out windows at fixed draws: four noise levels spread over the
    schedule (t = 1/8, 3/8, 5/8, 7/8) and one seeded noise per window, the same every time."""
    from tunesmith.diffusion.denoiser import Denoiser
    from tunesmith.diffusion.objectives import t_to_sigma

    items = [dataset.get_item(i % len(dataset), np.random.default_rng([7, i])) for i in range(min(windows, 4 * len(dataset)))]
    batch = task.collate(items)
    device = next(net.parameters()).device
    x0 = batch["latents"].to(device)
    cond = task.conditioning(batch, device)
    c = task.config.model
    denoiser = Denoiser(net, c.parameterization, c.sigma_data)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234)).to(device)
    extra = {"inpaint_mask": batch["inpaint_mask"].to(device), "inpaint_latents": x0} if c.inpainting else {}
    losses = []
    for t in (0.125, 0.375, 0.625, 0.875):
        sigma = t_to_sigma(torch.full((x0.shape[0],), t)).to(device)
        losses.append(float(denoiser.loss(x0, sigma, noise, **cond.model_inputs(), **extra)))
    return float(np.mean(losses))


def _lm_task(config: FinetuneConfig, network: nn.Module, meta: dict[str, Any], cache: Path,
             train: TrainConfig, prior: bool) -> tuple[Any, Callable[[nn.Module], float] | None]:
    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.lm.train import RunConfig, make_task

    c = network.config
    frames = max(2, min(c.max_frames, round(config.window_seconds * c.frame_rate)))
    has_valid = (cache / "valid.safetensors").is_file()
    run = RunConfig(model=c, data=str(cache), valid_split="valid" if has_valid else "", segment_frames=frames,
                    valid_batches=max(1, -(-config.valid_windows // config.batch_size)), train=train)
    task = make_task(run)
    task.model = network
    if prior:
        task.train_dataset = MixedWindows(task.train_dataset,
                                          task._windows(PRIOR_SPLIT, get_text_encoder(c.text_encoder), Path(train.out_dir)))
    if not has_valid:
        return task, None
    return task, lambda net: task.validate({"lm": net}, 0)["loss"]


class AdapterTask:
    """A family's task training only the LoRA layers, plus held-out validation that keeps the
    best adapter (``best_adapter.safetensors`` + ``best.json`` in the run directory, atomic)."""

    def __init__(self, inner: Any, name: str, network: nn.Module, modules: list[str],
                 valid_loss: Callable[[nn.Module], float] | None, run_dir: Path, config: FinetuneConfig) -> None:
        self.inner, self.name, self.network, self.layers = inner, name, network, modules
        self.valid_loss, self.run_dir, self.config = valid_loss, run_dir, config
        self.train_dataset = inner.train_dataset
        path = run_dir / BEST_STATE
        self.best: dict[str, Any] | None = json.loads(path.read_text()) if path.is_file() else None
        self.stopped_early = False

    def modules(self) -> dict[str, nn.Module]:
        return {self.name: self.network}

    def collate(self, items: list[Any]) -> Any:
        return self.inner.collate(items)

    def training_step(self, modules: dict[str, nn.Module], batch: Any, step: int) -> Any:
        return self.inner.training_step(modules, batch, step)

    def measure(self, net: nn.Module, step: int) -> float:
        """The held-out loss now; a new best is saved with its step."""
        assert self.valid_loss is not None
        was_training = net.training
        net.eval()
        with torch.no_grad(), torch.random.fork_rng():
            loss = self.valid_loss(net)
        net.train(was_training)
        if self.best is None or loss < self.best["loss"]:
            save_tensors(lora.adapter_tensors(unwrap(net), self.layers), self.run_dir / f".{BEST_WEIGHTS}.tmp")
            (self.run_dir / f".{BEST_WEIGHTS}.tmp").replace(self.run_dir / BEST_WEIGHTS)
            self.best = {"step": step, "loss": loss, "base_loss": (self.best or {}).get("base_loss", loss)}
            atomic_write_text(self.run_dir / BEST_STATE, json.dumps(self.best) + "\n")
        return loss

    def validate(self, modules: dict[str, nn.Module], step: int) -> dict[str, float]:
        loss = self.measure(modules[self.name], step)
        assert self.best is not None
        return {"loss": loss, "best_loss": self.best["loss"], "best_step": self.best["step"]}

    def should_stop(self, step: int) -> bool:
        """Early stopping: ``patience`` validations since the best one."""
        c = self.config
        if self.valid_loss is None or not c.patience or not c.valid_every or self.best is None:
            return False
        return step - int(self.best["step"]) >= c.patience * c.valid_every


# ---------------------------------------------------------------------------
# the run


def run_finetune(config: FinetuneConfig, *, resume: bool = False, log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Prepare the folder, train the adapter, write it to ``config.out``; returns what happened."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    start = time.monotonic()
    if not config.folder:
        raise UserError("no folder given: tunesmith finetune DIR --model NAME --out ADAPTER")
    run_dir = config.run_path
    if Path(config.out).resolve() == run_dir.resolve():
        raise UserError(f"--run-dir must differ from --out ({config.out}): the adapter directory holds only the adapter")
    if resume and not state.has_checkpoint(run_dir / "checkpoints"):
        raise CheckpointError(f"nothing to resume in {run_dir}: no checkpoint")
    network, codec, meta, base_dir = load_base(config.model)  # an unknown base fails here, before any work
    base = base_name(config.model)
    family = meta["generator_type"]
    if not resume:
        for stale in (run_dir / "checkpoints", run_dir / BEST_WEIGHTS, run_dir / BEST_STATE, run_dir / "log.jsonl"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)

    codec_name = str(meta.get("codec") or (base_dir / "codec"))
    data = prepare_folder(config.folder, run_dir, codec, codec_name, FAMILIES[family], config.data,
                          progress=config.progress, log=log)
    if data.train_clips == 0:
        raise UserError(f"no clips left to train on in {config.folder} after holding out {len(data.valid_files)} files")
    log(f"data: {data.train_clips} training clips from {len(data.train_files)} files, {data.valid_clips} held-out "
        f"clips{' from ' + ', '.join(data.valid_files) if data.valid_files else ''}; {data.hours * 60:.1f} minutes in all"
        f"{f', {data.auto_captioned} captioned automatically' if data.auto_captioned else ''}")
    prior_clips = prior_count(data.train_clips, config.prior_share)
    if prior_clips:
        records = [r for r in read_manifest(data.manifest) if r["split"] == "train"]
        lufs = median_loudness([run_dir / "index" / r["audio"] for r in records])
        seconds = float(np.median([float(r["duration"]) for r in records]))  # as long and as loud as the user's clips
        prior_clips = prepare_prior(base_dir, run_dir, data.cache_dir, codec, FAMILIES[family], prior_clips,
                                    seconds, config.seed, lufs=lufs, progress=config.progress, log=log)
    else:
        prepare_prior(base_dir, run_dir, data.cache_dir, codec, FAMILIES[family], 0, 0.0, config.seed)
    del codec
    prepared = time.monotonic()

    seed_everything(config.seed)  # the LoRA initialisation follows the seed
    layers = lora.inject(network, config.lora, meta["model_type"])
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    log(f"LoRA: rank {config.lora.rank} on {len(layers)} layers, {trainable / 1e6:.2f}M trainable parameters "
        f"({100 * trainable / sum(p.numel() for p in network.parameters()):.1f}% of the network)")
    batch_size = min(config.batch_size, data.train_clips)
    train = TrainConfig(out_dir=str(run_dir), steps=config.steps, batch_size=batch_size, lr=config.lr,
                        warmup_steps=min(config.warmup_steps, config.steps - 1), schedule="constant", weight_decay=0.0,
                        grad_clip=1.0, seed=config.seed, valid_every=config.valid_every if data.valid_clips else 0,
                        checkpoint_every=config.valid_every or 500, checkpoint_minutes=config.checkpoint_minutes,
                        keep_checkpoints=1, log_every=min(10, config.steps), progress=config.progress)
    build = _diffusion_task if family == "latent-diffusion" else _lm_task
    name = "dit" if family == "latent-diffusion" else "lm"
    inner, valid_loss = build(config, network, meta, data.cache_dir, train, prior_clips > 0)
    if len(inner.train_dataset) < batch_size:
        batch_size = len(inner.train_dataset)
        train = dataclasses.replace(train, batch_size=batch_size)
    task = AdapterTask(inner, name, network, layers, valid_loss if train.valid_every else None, run_dir, config)
    if task.valid_loss is not None and (task.best is None or not resume):
        base_loss = task.measure(network, 0)  # the base (B = 0): what the adapter has to beat
        log(f"held-out loss of the base: {base_loss:.4f}")

    def early_stop(trainer: Trainer, step: int) -> None:
        if task.should_stop(step):
            task.stopped_early = True
            trainer.request_stop()

    trainer = Trainer(task, train, on_step_end=early_stop)
    try:
        result = trainer.fit(resume=resume, on_start=lambda t: save_config(config, run_dir / "finetune_config.json"))
    finally:
        trainer.close()
    trained = time.monotonic()
    minutes = {"prepare": round((prepared - start) / 60, 3), "train": round((trained - prepared) / 60, 3),
               "total": round((trained - start) / 60, 3)}
    best = task.best or {}
    outcome = FinetuneResult(None, result.step, best.get("step"), best.get("base_loss"), best.get("loss"),
                             task.stopped_early, result.interrupted and not task.stopped_early, minutes, data.summary())
    if outcome.interrupted:
        log(f"interrupted at step {result.step}; checkpoint saved in {run_dir}. Continue with the same command and --resume")
        return outcome
    if best and (run_dir / BEST_WEIGHTS).is_file():
        tensors = load_tensors(run_dir / BEST_WEIGHTS)
        chosen = f"the best held-out loss, step {best['step']}"
    else:
        tensors = lora.adapter_tensors(unwrap(trainer.modules[name]), layers)
        chosen = f"the last step, {result.step}"
    training = {"steps": result.step, "max_steps": config.steps, "chosen": chosen, "stopped_early": task.stopped_early,
                "valid_loss_base": best.get("base_loss"), "valid_loss_best": best.get("loss"),
                "prior_clips": prior_clips, "prior_share": config.prior_share,
                "batch_size": batch_size, "lr": config.lr, "seed": config.seed, "window_seconds": config.window_seconds,
                "run_dir": str(run_dir), "minutes": minutes, "data": data.summary()}
    peft = lora.peft_config(config.lora, layers, base).to_dict()
    outcome.adapter = write_adapter(config.out, tensors, base=base, base_dir=base_dir, rank=config.lora.rank,
                                    alpha=config.lora.lora_alpha, targets=list(config.lora.targets), modules=layers,
                                    peft_config=peft, training=training)
    log(f"adapter ({chosen}) written to {outcome.adapter}")
    return outcome
