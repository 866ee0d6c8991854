"""The one training engine: every model in tunesmith (codec, CLAP, token LM, DiT) trains here.

A model plugs in as a :class:`Task` (what to train, on what data, with which loss);
the engine owns everything else: AdamW with warm-up and decay, gradient
accumulation and clipping, EMA, bf16 autocast and gradient checkpointing on GPU,
a seeded data order, validation, JSONL/TensorBoard logs, a progress bar,
DDP or FSDP under ``torchrun``, and atomic, complete checkpoints that resume
exactly — also after SIGINT/SIGTERM, which save and exit cleanly.

Determinism: the data order is a permutation seeded by (seed, epoch), and the
random state of optimizer step ``s`` on rank ``r`` is re-seeded from
(seed, r, s) at the start of each step.  The random state is therefore a pure
function of the position in training, which is what makes a resumed run equal to
an uninterrupted one without storing per-rank generator states.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tunesmith.config import register_preset, require, to_dict
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.files import atomic_write_text
from tunesmith.train import state as ckpt
from tunesmith.train.ema import EMA
from tunesmith.train.regularize import penalised_loss, twice_differentiable
from tunesmith.train.schedule import lr_multiplier


@dataclass
class TrainConfig:
    """How to train (the same for every model)."""

    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    warmup: Literal["linear", "exponential"] = "linear"
    schedule: Literal["cosine", "inverse_sqrt", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.0  # 0 disables; e.g. 0.999
    # lambda of the micro-batch gradient-norm penalty (tunesmith.train.regularize) over the
    # grad_accum micro-batches; 0 disables (it costs a second backward pass)
    grad_norm_penalty: float = 0.0
    seed: int = 0
    amp: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_checkpointing: Literal["auto", "on", "off"] = "auto"  # auto: on for GPU
    compile: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"
    num_workers: int = 0
    log_every: int = 10
    valid_every: int = 0  # 0 disables
    checkpoint_every: int = 500  # steps; 0 disables step-based checkpoints
    checkpoint_minutes: float = 5.0  # also checkpoint on wall-clock time; 0 disables
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        """Refuse, when the config is read, values that would fail (or silently train wrong) only
        once training starts: ``lr=nan``, ``batch_size=0``, ``ema_decay=1``, a negative warm-up."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        for name in ("warmup_steps", "valid_every", "checkpoint_every", "num_workers"):
            require(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        require(_finite(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        for name in ("weight_decay", "grad_clip", "checkpoint_minutes", "grad_norm_penalty"):
            value = getattr(self, name)
            require(_finite(value) and value >= 0, name, value, "a finite number >= 0")
        require(_finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio,
                "in [0, 1]")
        require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "in [0, 1) (0 disables)")
        for i, beta in enumerate(self.betas):
            require(0 <= beta < 1, f"betas[{i}]", beta, "in [0, 1)")
        require(0 <= self.seed < 2**32, "seed", self.seed, "in [0, 2**32)")  # numpy's seed range
        require(bool(self.out_dir.strip()), "out_dir", self.out_dir, "a directory")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@register_preset("train", "tiny")
def _tiny_train() -> TrainConfig:
    return TrainConfig(steps=20, batch_size=4, warmup_steps=2, log_every=5, checkpoint_every=10, progress=False)


class Task(Protocol):
    """What the engine needs from a model family.

    ``modules()`` names the trainable modules; each gets its own AdamW (a GAN has
    two).  ``training_step`` returns ``(loss, metrics)`` for a single optimizer, or
    yields ``(module_name, loss, metrics)`` once per module in the order the
    updates should happen (discriminator first, then generator).  When a loss for
    one module runs another module, call the other through ``unwrap`` so that DDP
    does not wait for gradients it will never get.
    """

    train_dataset: Dataset | IterableDataset

    def modules(self) -> dict[str, nn.Module]: ...

    def training_step(self, modules: dict[str, nn.Module], batch: Any, step: int) -> Any: ...


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP / compiled wrapper."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random``: call it before a task builds its modules, so that
    model initialisation (and so the whole run) is a function of ``train.seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seeded_item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A random generator for one data item: the same item in the same epoch gets the same draws."""
    return np.random.default_rng([seed, epoch, index])


class _EpochIndexed(Dataset):
    """Maps key ``epoch * n + index`` to ``dataset.get_item(index, rng)`` (or ``dataset[index]``)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.n = dataset, seed, len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.n)
        getter = getattr(self.dataset, "get_item", None)
        if getter is not None:
            return getter(index, seeded_item_rng(self.seed, epoch, index))
        return self.dataset[index]


class _BatchOrder:
    """Infinite, resumable order of micro-batches for this rank.

    The global batch of step ``b`` in an epoch is ``perm[b*G:(b+1)*G]`` with
    G = batch_size * grad_accum * world_size; micro-batch ``m`` of rank ``r`` is the
    slice starting at ``(m * world + r) * batch_size``.  One process with the same
    global batch therefore sees exactly the union of what the ranks see.
    """

    def __init__(self, n: int, batch: int, accum: int, world: int, rank: int, seed: int, start_step: int) -> None:
        self.n, self.batch, self.accum, self.world, self.rank, self.seed = n, batch, accum, world, rank, seed
        self.global_batch = batch * accum * world
        if n < self.global_batch:
            raise ConfigError(f"the dataset has {n} items, fewer than one global batch of {self.global_batch} "
                              f"(train.batch_size {batch} x train.grad_accum {accum} x {world} processes)")
        self.steps_per_epoch = n // self.global_batch
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            epoch, b = divmod(step, self.steps_per_epoch)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=gen)
            for m in range(self.accum):
                start = b * self.global_batch + (m * self.world + self.rank) * self.batch
                yield [epoch * self.n + int(i) for i in perm[start : start + self.batch]]
            step += 1


@dataclass
class FitResult:
    step: int
    interrupted: bool
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


class Trainer:
    """Train a :class:`Task` under a :class:`TrainConfig`; call :meth:`fit`."""

    def __init__(
        self,
        task: Task,
        config: TrainConfig,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        on_step_end: Callable[["Trainer", int], None] | None = None,
        lr_scale: dict[str, float] | None = None,
    ) -> None:
        self.task, self.config = task, config
        self.collate_fn = collate_fn or getattr(task, "collate", None)
        self.on_step_end = on_step_end
        self.lr_scale = lr_scale or getattr(task, "lr_scale", {}) or {}
        self.out_dir = Path(config.out_dir)
        self._owns_process_group = not dist.is_initialized()
        self.rank, self.world, self.local_rank = _init_distributed()
        self._owns_process_group = self._owns_process_group and dist.is_initialized()
        self.device = torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.use_bf16 = config.amp == "bf16" or (config.amp == "auto" and self.device.type == "cuda")
        self.step = 0
        self._stop_requested = False

        seed_everything(config.seed)  # modules built by task.modules() start the same on every rank
        self.raw = {name: m.to(self.device) for name, m in task.modules().items()}
        checkpointing = config.grad_checkpointing == "on" or (
            config.grad_checkpointing == "auto" and self.device.type == "cuda"
        )
        for m in self.raw.values():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = checkpointing
        self.modules = {name: self._wrap(m) for name, m in self.raw.items()}
        self.optimizers = {
            name: torch.optim.AdamW(
                [p for p in self.modules[name].parameters() if p.requires_grad],
                lr=config.lr * self.lr_scale.get(name, 1.0),
                betas=config.betas,
                weight_decay=config.weight_decay,
            )
            for name in self.modules
        }
        # EMA shadows live beside the (possibly sharded) weights: under FSDP they are DTensor shards.
        self.emas = {n: EMA(unwrap(m), config.ema_decay) for n, m in self.modules.items()} if config.ema_decay > 0 else {}

    # -- setup -------------------------------------------------------------

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world > 1 and any(p.requires_grad for p in module.parameters()):
            if self.config.distributed == "fsdp":
                # FSDP2: parameters become sharded DTensors; works on CPU (gloo) and GPU.
                from torch.distributed.fsdp import fully_shard

                for child in module.children():
                    if any(p.requires_grad for p in child.parameters()):
                        fully_shard(child)
                module = fully_shard(module)
            else:
                ids = [self.local_rank] if self.device.type == "cuda" else None
                module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if self.config.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        return module

    def _loader(self, start_step: int) -> Iterator[Any]:
        cfg, data = self.config, self.task.train_dataset
        if isinstance(data, IterableDataset):
            loader = DataLoader(data, batch_size=cfg.batch_size, collate_fn=self.collate_fn, num_workers=cfg.num_workers)
            it = iter(_repeat(loader))
            for _ in range(start_step * cfg.grad_accum):  # deterministic stream: skip what was consumed
                next(it)
            return it
        order = _BatchOrder(len(data), cfg.batch_size, cfg.grad_accum, self.world, self.rank, cfg.seed, start_step)
        self.steps_per_epoch = order.steps_per_epoch
        loader = DataLoader(
            _EpochIndexed(data, cfg.seed),
            batch_sampler=order,
            collate_fn=self.collate_fn,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        return iter(loader)

    # -- checkpoints -------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / "checkpoints"

    def _module_state(self, name: str) -> dict[str, torch.Tensor]:
        module = self.modules[name]
        if self.world > 1 and self.config.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unwrap(module).state_dict()

    def _optimizer_state(self, name: str) -> dict[str, Any]:
        if self.world > 1 and self.config.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.modules[name], self.optimizers[name], options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizers[name].state_dict()

    def save_checkpoint(self) -> Path | None:
        """Write a complete checkpoint of the current step (collective under torchrun)."""
        tensors: dict[str, torch.Tensor] = {}
        optim_meta: dict[str, Any] = {}
        for name in self.modules:
            module_state, optim_state = self._module_state(name), self._optimizer_state(name)  # collective
            if self.rank != 0:
                continue  # full state dicts are gathered on rank 0 only
            for key, value in module_state.items():
                tensors[f"model/{name}/{key}"] = value
            opt_tensors, optim_meta[name] = ckpt.flatten_optimizer_state(f"optim/{name}", optim_state)
            tensors.update(opt_tensors)
        for name, ema in self.emas.items():
            for key, value in ema.shadow.items():
                tensors[f"ema/{name}/{key}"] = _full(value)
        path = None
        if self.rank == 0:
            state = {
                "step": self.step,
                "data_position": {"optimizer_steps": self.step, "micro_batches_per_step": self.config.grad_accum},
                "rng": {"scheme": "reseeded per step from (seed, rank, step)", "seed": self.config.seed},
                "optimizers": optim_meta,
                "ema_updates": {n: e.updates for n, e in self.emas.items()},
                "world_size": self.world,
                "train_config": to_dict(self.config),
            }
            path = ckpt.write_checkpoint(self.checkpoint_root, self.step, tensors, state, self.config.keep_checkpoints)
        if self.world > 1:
            dist.barrier()
        return path

    def restore(self) -> Path:
        """Load the checkpoint a resumed run starts from, and return its path.

        That is what ``latest`` names or, when it is missing or damaged, the newest checkpoint
        that reads (said on stderr): a resumed run never quietly starts again from step 0.
        """
        root = self.checkpoint_root
        candidates = ckpt.resume_candidates(root)
        if not candidates:
            raise CheckpointError(f"nothing to resume in {self.out_dir}: no checkpoint")
        problems = []
        for path in candidates:
            try:
                tensors, state = ckpt.read_checkpoint(path)
            except CheckpointError as err:
                problems.append(str(err))
                continue
            pointer = ckpt.read_pointer(root)
            if path.name != pointer:
                why = f"names {pointer}, which is missing or unreadable" if pointer else "is missing or unreadable"
                self._note(f"{root / ckpt.LATEST} {why}{' (' + problems[0] + ')' if problems else ''}; "
                           f"resuming from {path.name}")
            self._load(path, tensors, state)
            return path
        raise CheckpointError(f"nothing to resume in {self.out_dir}: no readable checkpoint ({problems[0]})")

    def load_checkpoint(self, path: Path) -> None:
        """Load checkpoint ``path`` into the modules, optimizers and EMA (collective under FSDP)."""
        tensors, state = ckpt.read_checkpoint(path)
        self._load(path, tensors, state)

    def _load(self, path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        # Check every module's shapes before loading any: a checkpoint of another model size is
        # the user's mistake (a changed --set), to be named in one line, not a torch traceback.
        modules = {}
        for name, module in self.modules.items():
            prefix = f"model/{name}/"
            module_state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            _check_fits(path, name, module_state, unwrap(module).state_dict())
            if name not in state["optimizers"]:
                raise CheckpointError(f"{path} has no optimizer state for module '{name}'; not this run's checkpoint")
            modules[name] = module_state
        for name, module in self.modules.items():
            module_state = modules[name]
            optim_state = ckpt.unflatten_optimizer_state(f"optim/{name}", tensors, state["optimizers"][name])
            try:
                if self.world > 1 and self.config.distributed == "fsdp":
                    from torch.distributed.checkpoint.state_dict import (
                        StateDictOptions,
                        set_model_state_dict,
                        set_optimizer_state_dict,
                    )

                    opts = StateDictOptions(full_state_dict=True)
                    set_model_state_dict(module, module_state, options=opts)
                    set_optimizer_state_dict(module, self.optimizers[name], optim_state, options=opts)
                else:
                    unwrap(module).load_state_dict(module_state)
                    self.optimizers[name].load_state_dict(optim_state)
            except (KeyError, ValueError, RuntimeError) as err:
                message = " ".join(str(err).split())[:200]
                raise CheckpointError(f"{path} does not fit this run's optimizer for '{name}': {message}") from None
        for name, ema in self.emas.items():
            prefix = f"ema/{name}/"
            loaded = {k[len(prefix) :]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}
            if set(loaded) != set(ema.shadow) or name not in state.get("ema_updates", {}):
                # EMA switched on for a run that had none: start averaging from the resumed weights
                self._note(f"{path.name} has no EMA of '{name}'; the EMA starts from its weights")
                self.emas[name] = EMA(unwrap(self.modules[name]), self.config.ema_decay)
                continue
            ema.shadow = {k: _like(loaded[k], old) for k, old in ema.shadow.items()}
            ema.updates = state["ema_updates"][name]
        self.step = int(state["step"])

    def _note(self, message: str) -> None:
        if self.rank == 0:
            print(f"note: {message}", file=sys.stderr, flush=True)

    def ema_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Full weights to export for module ``name``: the EMA when enabled, else the live
        weights (collective under FSDP: call it on every rank)."""
        module = unwrap(self.modules[name])
        state = self.emas[name].state_dict(module) if name in self.emas else module.state_dict()
        return {k: _full(v) for k, v in state.items()}

    # -- the loop ----------------------------------------------------------

    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def request_stop(self) -> None:
        """End :meth:`fit` after the current step, with a checkpoint, as SIGINT does (early
        stopping calls this from ``on_step_end``); the result says ``interrupted``."""
        self._stop_requested = True

    def _seed_step(self) -> None:
        seed = (self.config.seed * 1_000_003 + self.rank * 7919 + self.step) % (2**63)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))

    def _apply_lr(self) -> float:
        cfg = self.config
        mult = lr_multiplier(
            self.step,
            total_steps=cfg.steps,
            warmup_steps=cfg.warmup_steps,
            schedule=cfg.schedule,
            min_ratio=cfg.min_lr_ratio,
            warmup=cfg.warmup,
        )
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = cfg.lr * self.lr_scale.get(name, 1.0) * mult
        return cfg.lr * mult

    def _update(self, name: str) -> float:
        params = [p for p in self.modules[name].parameters() if p.grad is not None]
        norm = 0.0
        if self.config.grad_clip > 0 and params:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)
        return norm

    def _sync_flags(self, *flags: bool) -> list[bool]:
        """Agree across ranks: any rank's True becomes everyone's."""
        if self.world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def fit(self, resume: bool = False, on_start: Callable[[Trainer], None] | None = None) -> FitResult:
        """Train to ``config.steps``; with ``resume`` continue from the latest checkpoint.

        ``on_start(trainer)`` runs on every rank once the state is ready (restored, or fresh)
        and before anything is written: the place to record the run's config, so that a
        resume that fails (a checkpoint of another size) leaves the run as it was.
        """
        cfg = self.config
        is_main = self.rank == 0
        if cfg.grad_norm_penalty > 0 and self.world > 1:  # DDP's reducer runs on backward(), not autograd.grad
            raise ConfigError("grad_norm_penalty is for single-process training (its double backward bypasses "
                              "DDP/FSDP's gradient reduction); set it to 0 under torchrun")
        if is_main:
            cleared = ckpt.remove_stale_temporaries(self.checkpoint_root)
            if cleared:
                where = self.checkpoint_root
                self._note(f"removed what an interrupted checkpoint left in {where}: {', '.join(cleared)}")
        if self.world > 1:
            dist.barrier()  # the other ranks look for checkpoints only once the directory is tidy
        if resume:
            self.restore()
        data = self._loader(self.step)  # a batch larger than the dataset fails here, before any write
        if on_start is not None:
            on_start(self)
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "train_config.json", json.dumps(to_dict(cfg), indent=2))
        log = _Logger(self.out_dir, enabled=is_main)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._request_stop)
        multi = len(self.modules) > 1
        single_name = next(iter(self.modules))
        bar = None
        if is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        running: dict[str, list[float]] = {}
        last_ckpt_time = time.monotonic()
        last_metrics: dict[str, float] = {}
        result_ckpt = None
        interrupted = False
        t_log = time.monotonic()
        try:
            while self.step < cfg.steps:
                self._seed_step()
                lr = self._apply_lr()
                for m in self.modules.values():
                    m.train()
                norms: dict[str, float] = {}
                for micro in range(cfg.grad_accum):
                    batch = _to_device(next(data), self.device)
                    last_micro = micro == cfg.grad_accum - 1
                    sync = contextlib.ExitStack()
                    if not last_micro:
                        for m in self.modules.values():
                            if hasattr(m, "no_sync"):
                                sync.enter_context(m.no_sync())
                    if cfg.grad_norm_penalty > 0:  # its double backward needs attention's math kernel
                        sync.enter_context(twice_differentiable())
                    with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                        out = self.task.training_step(self.modules, batch, self.step)
                        parts = [(single_name, *out)] if isinstance(out, tuple) else out
                        for name, loss, metrics in parts:
                            if not torch.isfinite(loss.detach()):
                                raise FloatingPointError(f"loss of '{name}' is {loss.item()} at step {self.step}")
                            if cfg.grad_norm_penalty > 0:  # its value is logged; loss/ stays the plain loss
                                penalised, penalty = penalised_loss(loss, self.modules[name].parameters(),
                                                                    cfg.grad_norm_penalty)
                                metrics = {**metrics, f"grad_penalty/{name}": penalty.detach()}
                            scaled = (penalised if cfg.grad_norm_penalty > 0 else loss) / cfg.grad_accum
                            if multi:
                                params = [p for p in self.modules[name].parameters() if p.requires_grad]
                                scaled.backward(inputs=params)
                                if last_micro:  # sequential updates: the next loss sees this update
                                    norms[name] = self._update(name)
                            else:
                                scaled.backward()
                            for k, v in {f"loss/{name}": loss.detach(), **metrics}.items():
                                running.setdefault(k, []).append(float(v))
                if not multi:
                    norms[single_name] = self._update(single_name)
                for name, ema in self.emas.items():
                    ema.update(unwrap(self.modules[name]))
                self.step += 1
                for name, norm in norms.items():
                    running.setdefault(f"grad_norm/{name}", []).append(norm)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k.split("/")[-1]: f"{np.mean(v):.4f}" for k, v in running.items() if k.startswith("loss/")})
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last_metrics = {k: float(np.mean(v)) for k, v in running.items()}
                    now = time.monotonic()
                    log.write({"step": self.step, "lr": lr, "sec_per_step": (now - t_log) / cfg.log_every, **last_metrics})
                    t_log, running = now, {}
                if cfg.valid_every and self.step % cfg.valid_every == 0 and hasattr(self.task, "validate"):
                    self._validate(log)
                if self.on_step_end is not None:
                    self.on_step_end(self, self.step)
                due_time = cfg.checkpoint_minutes > 0 and time.monotonic() - last_ckpt_time > 60 * cfg.checkpoint_minutes
                due_step = cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0
                stop, due_time = self._sync_flags(self._stop_requested, due_time)
                if stop or due_time or due_step or self.step == cfg.steps:
                    result_ckpt = self.save_checkpoint()
                    last_ckpt_time = time.monotonic()
                if stop:
                    interrupted = self.step < cfg.steps
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if bar is not None:
                bar.close()
            log.close()
        return FitResult(self.step, interrupted, last_metrics, result_ckpt)

    def close(self) -> None:
        """Leave the process group this trainer joined, once every rank has arrived.

        Ranks finish at different moments (rank 0 writes files); tearing gloo down while a
        peer is still mid-exit aborts the process, so all ranks meet at a barrier first.
        """
        if self._owns_process_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self._owns_process_group = False

    def _validate(self, log: "_Logger") -> None:
        sharded = self.world > 1 and self.config.distributed == "fsdp"
        if self.rank == 0 or sharded:  # sharded forwards are collective: every rank runs them
            raw = {n: unwrap(m) for n, m in self.modules.items()}
            for m in raw.values():
                m.eval()
            with torch.no_grad():
                metrics = self.task.validate(raw, self.step)  # type: ignore[attr-defined]
            log.write({"step": self.step, **{f"valid/{k}": float(v) for k, v in metrics.items()}})
        if self.world > 1:
            dist.barrier()


def _check_fits(path: Path, name: str, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming the first parameter of module ``name`` that the
    checkpoint lacks, has extra, or holds in another shape (DTensor shapes are global)."""
    hint = "resume with the run's saved config (plain --resume), or start a new run with --out"
    for key, wanted in expected.items():
        if key not in saved:
            raise CheckpointError(f"{path} does not fit this model: it has no parameter '{name}.{key}'; {hint}")
        if tuple(saved[key].shape) != tuple(wanted.shape):
            raise CheckpointError(
                f"{path} does not fit this model: parameter '{name}.{key}' is {tuple(saved[key].shape)} in the "
                f"checkpoint but {tuple(wanted.shape)} in the model; {hint}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise CheckpointError(f"{path} does not fit this model: parameter '{name}.{extra[0]}' is not in the model; "
                              f"{hint}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor shard (collective), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``reference`` (sharded again when the reference is a DTensor)."""
    if hasattr(reference, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(reference.dtype), reference.device_mesh, reference.placements)
    return full.to(reference.dtype)


def _repeat(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not (batch and isinstance(batch[0], str)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


class _Logger:
    """JSONL always; TensorBoard too when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        self.file = open(out_dir / "log.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self.file is None:
            return
        record = {"time": time.time(), **record}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(config, **changes)
