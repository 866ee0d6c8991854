"""Transformer vs Mamba-2 backbone for the token LM, at matched parameter counts (system 2).

    python bench/backbones.py --quick --json runs/bench-backbones.json
    python bench/backbones.py --tokens /work/data/tokens      # on real codec tokens

Three measurements, in one run, with the same LM around both backbones
(tunesmith.lm.model.TokenLM: summed codebook embeddings, delay pattern, K heads):

1. training throughput (tokens/s, forward + backward + AdamW) and peak memory at
   contexts of 10 s, 30 s and 120 s of 50 Hz token frames; each point runs in a
   fresh subprocess so its peak resident memory is its own;
2. per-step decoding latency against position (steps 100 ... 6000) with the
   backbone's own state (KV cache / SSM state);
3. training efficiency: validation loss against steps and wall-clock time, same
   data, optimizer, schedule and batches; for a main pair and a 4x smaller pair.

Data: ``--tokens DIR`` takes a frame cache (meta.json + <split>.safetensors, read by
tunesmith.data.cache.FrameCache).  Without it, a STAND-IN token set is built (and
labelled as such in the JSON): a 4-level residual k-means quantizer of log-mel
frames (50 Hz) of the corpus audio, or, without a corpus, a synthetic hierarchical
Markov source.  Stand-in tokens have music's temporal structure but are not codec
tokens; rerun with ``--tokens`` once the codec has encoded the corpus.

The JSON's top level: ``ssm_decode_flatness`` (slowest / fastest SSM step latency
between steps 100 and 6000), ``throughput_ratio_120s`` (SSM / Transformer training
tokens/s at 120 s) and ``val_loss_ratio_equal_steps`` (SSM / Transformer validation
loss after the same steps, main pair, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.lm.backbones.mamba2 import count_backbone_parameters, matched_options
from tunesmith.lm.model import LMConfig, TokenLM, token_loss
from tunesmith.lm.patterns import layout, to_sequence

FRAME_RATE = 50
CONTEXTS_S = (10, 30, 120)
DECODE_POSITIONS = (100, 500, 1000, 2000, 3000, 4000, 5000, 6000)
SSM_BASE = {"d_state": 64, "head_dim": 64}
#: "cpu": process CPU time (robust when other jobs share the cores; the default here),
#: "wall": elapsed time (right on an otherwise idle machine).  Both are always recorded.
CLOCK = "cpu"


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = clocks()
    return {"wall": wall - start[0], "cpu": cpu - start[1]}

# ---------------------------------------------------------------------------
# models


def pair_configs(dim: int, layers: int, heads: int, codebook_size: int, max_frames: int) -> dict[str, LMConfig]:
    """A Transformer LM and a Mamba-2 LM whose backbones have the same parameter count (within 1%)."""
    transformer = {"num_layers": layers, "num_heads": heads}
    target = count_backbone_parameters("transformer", dim, transformer)
    ssm = matched_options(dim, target, **SSM_BASE)
    common = dict(num_codebooks=4, codebook_size=codebook_size, dim=dim, conditioning="prefix", max_frames=max_frames)
    return {
        "transformer": LMConfig(backbone="transformer", backbone_config=transformer, **common),
        "mamba2": LMConfig(backbone="mamba2", backbone_config=ssm, **common),
    }


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_loss(model: TokenLM, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced cross-entropy of frames (B, K, T) through the delay pattern (no conditioning)."""
    c = model.config
    table = layout(c.pattern, c.num_codebooks, tokens.shape[-1])
    steps = to_sequence(tokens, table, fill=c.special_token)
    valid = (table.t() >= 0)[None]
    return token_loss(model(steps), steps, valid)[0]


# ---------------------------------------------------------------------------
# 1. throughput and peak memory (one subprocess per point)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark of this process (Linux) and return the current RSS in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux or not allowed: the peak then also covers what ran before
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_training_point(config: dict[str, Any], frames: int, repeats: int) -> dict[str, float]:
    """Forward + backward + AdamW step on one sequence of ``frames`` frames: tokens/s and peak memory.

    Peak memory is the rise of the process's peak resident set over its size before the
    first step (model, optimizer and inputs already allocated): activations, gradients
    and optimizer state.
    """
    torch.manual_seed(0)
    model = TokenLM(LMConfig(**config)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, model.config.codebook_size, (1, model.config.num_codebooks, frames))
    before = reset_peak_rss()
    times: list[dict[str, float]] = []
    for i in range(repeats + 1):  # the first is a warm-up
        start = clocks()
        opt.zero_grad(set_to_none=True)
        lm_loss(model, tokens).backward()
        opt.step()
        if i:
            times.append(elapsed(start))
    tokens = frames * model.config.num_codebooks
    wall, cpu = (float(np.median([t[k] for t in times])) for k in ("wall", "cpu"))
    return {"tokens_per_s": tokens / (cpu if CLOCK == "cpu" else wall), "tokens_per_wall_s": tokens / wall,
            "tokens_per_cpu_s": tokens / cpu, "peak_mem_mb": peak_rss_mb() - before}


def throughput(configs: dict[str, LMConfig], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for seconds in CONTEXTS_S:
        for name, config in configs.items():
            frames = seconds * FRAME_RATE
            job = json.dumps({"config": _config_dict(config), "frames": frames, "repeats": repeats, "clock": CLOCK,
                              "threads": torch.get_num_threads()})
            out = subprocess.run([sys.executable, __file__, "--_point", job], capture_output=True, text=True, check=True)
            row = {"backbone": name, "context_s": seconds, "frames": frames, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(f"  throughput {name:11s} {seconds:4d} s: {row['tokens_per_s']:8.0f} tok/s, "
                  f"{row['peak_mem_mb']:7.0f} MB", flush=True)
            rows.append(row)
    return rows


def _config_dict(config: LMConfig) -> dict[str, Any]:
    from tunesmith.config import to_dict

    return to_dict(config)


# ---------------------------------------------------------------------------
# 2. decoding latency against position


@torch.inference_mode()
def decode_latency(model: TokenLM, positions: tuple[int, ...], rounds: int) -> dict[int, float]:
    """Median milliseconds (of ``CLOCK``) of one decoding step (batch 1) at each position.

    A step is the whole path that depends on the backbone: embed one pattern step,
    ``backbone.step`` on one position, the K heads.  One decoding state per position
    is brought there by a single prefill call (the same state as stepping there one
    position at a time, which the tests check); then the positions are timed in
    interleaved rounds, one step each per round, so that load from other processes
    hits every position alike.
    """
    model.eval()
    c = model.config
    ids = torch.randint(0, c.codebook_size, (1, c.num_codebooks, 1))

    def step(state: Any) -> None:
        model.logits(model.backbone.step(model.embed_steps(ids), state))

    states = {}
    for target in positions:
        state = model.backbone.allocate_state(1, target + rounds + 1, "cpu", torch.float32)
        prefix = torch.randint(0, c.codebook_size, (1, c.num_codebooks, target - 4))
        model.backbone.step(model.embed_steps(prefix), state)
        for _ in range(4):  # untimed steps up to the position
            step(state)
        states[target] = state
    times: dict[int, list[float]] = {p: [] for p in positions}
    for _ in range(rounds):
        for target, state in states.items():
            start = clocks()
            step(state)
            times[target].append(elapsed(start)[CLOCK])
    return {p: 1e3 * float(np.median(t)) for p, t in times.items()}


# ---------------------------------------------------------------------------
# 3. training efficiency


class TokenData:
    """Train / valid clips of token frames (T, K) and seeded random windows of them."""

    def __init__(self, train: list[torch.Tensor], valid: list[torch.Tensor], codebook_size: int, description: str) -> None:
        self.train, self.valid, self.codebook_size, self.description = train, valid, codebook_size, description

    def windows(self, clips: list[torch.Tensor], count: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
        """(count, K, frames) int64 windows from clips at least ``frames`` long."""
        long = [c for c in clips if c.shape[0] >= frames]
        if not long:
            raise SystemExit(f"no clip has {frames} frames; use a shorter --segment")
        out = []
        for _ in range(count):
            clip = long[rng.integers(len(long))]
            start = rng.integers(clip.shape[0] - frames + 1)
            out.append(clip[start : start + frames].T.long())
        return torch.stack(out)


def train_curve(config: LMConfig, data: TokenData, steps: int, batch: int, frames: int, seed: int,
                valid: torch.Tensor, every: int, lr: float) -> dict[str, list[float]]:
    """AdamW with linear warm-up and cosine decay; the batches depend only on (seed, step)."""
    torch.manual_seed(seed)
    model = TokenLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))  # noqa: E731
    curve: dict[str, list[float]] = {"step": [], "val_loss": [], "train_seconds": [], "train_wall_seconds": [],
                                     "train_loss": []}
    spent = {"wall": 0.0, "cpu": 0.0}
    for step in range(steps + 1):
        if step % every == 0 or step == steps:
            curve["step"].append(step)
            curve["val_loss"].append(validate(model, valid))
            curve["train_seconds"].append(spent[CLOCK])
            curve["train_wall_seconds"].append(spent["wall"])
        if step == steps:
            break
        x = data.windows(data.train, batch, frames, np.random.default_rng([seed, step]))
        model.train()
        start = clocks()
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step)
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k, v in elapsed(start).items():
            spent[k] += v
        curve["train_loss"].append(float(loss.detach()))
    return curve


@torch.no_grad()
def validate(model: TokenLM, valid: torch.Tensor, batch: int = 8) -> float:
    model.eval()
    losses = [float(lm_loss(model, valid[i : i + batch])) for i in range(0, valid.shape[0], batch)]
    return float(np.mean(losses))


# ---------------------------------------------------------------------------
# data: a frame cache, or a stand-in built here


def load_frame_cache(path: str) -> TokenData:
    from tunesmith.data.cache import FrameCache

    splits = {}
    for split in ("train", "valid"):
        cache = FrameCache(path, split)
        splits[split] = [cache.clip_frames(i)[:, :4].to(torch.int64) for i in range(len(cache))]
    size = int(cache.meta.get("codebook_size", 0)) or int(max(int(c.max()) for c in splits["train"]) + 1)
    return TokenData(splits["train"], splits["valid"], size, f"frame cache {path} ({cache.meta.get('model', '?')})")


def build_standin(corpus: Path, out: Path, codebook_size: int, max_files: int, seed: int = 0) -> Path:
    """Residual k-means tokens of 50 Hz log-mel frames of the corpus audio, stored as a frame cache."""
    import soundfile as sf

    from tunesmith.data.cache import write_frame_cache
    from tunesmith.spectral import log_mel

    files = sorted(p for p in (corpus / "audio").rglob("*") if p.suffix in (".flac", ".wav"))[:max_files]
    if not files:
        raise SystemExit(f"no audio under {corpus}/audio")
    feats, names, sr = [], [], 0
    for path in files:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr % FRAME_RATE:
            continue
        mel = log_mel(torch.from_numpy(wav.mean(1)), sr, n_fft=1024, hop=sr // FRAME_RATE, n_mels=64)
        feats.append(mel.T)  # (frames, 64)
        names.append(path.stem)
    is_valid = [zlib.crc32(n.encode()) % 10 == 0 for n in names]
    train_all = torch.cat([f for f, v in zip(feats, is_valid) if not v])
    mean, std = train_all.mean(0), train_all.std(0) + 1e-5
    residual = [(f - mean) / std for f in feats]
    codes = [torch.empty(f.shape[0], 4, dtype=torch.int16) for f in feats]
    gen = torch.Generator().manual_seed(seed)
    for level in range(4):
        train_x = torch.cat([r for r, v in zip(residual, is_valid) if not v])
        centroids = kmeans(train_x, codebook_size, iters=12, gen=gen)
        for i, r in enumerate(residual):
            idx = torch.cdist(r, centroids).argmin(1)
            codes[i][:, level] = idx.to(torch.int16)
            residual[i] = r - centroids[idx]
    meta = {"kind": "tokens", "frame_rate": FRAME_RATE, "sample_rate": sr, "num_codebooks": 4,
            "codebook_size": codebook_size, "model": "STAND-IN: 4-level residual k-means of 64-bin log-mel frames"}
    for split, flag in (("train", False), ("valid", True)):
        items = [(c.numpy(), {"id": n, "caption": ""}) for c, n, v in zip(codes, names, is_valid) if v == flag]
        write_frame_cache(out, split, items, meta)
    return out


def kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on a random subset of up to 60k rows; empty clusters keep their centroid."""
    if x.shape[0] > 60000:
        x = x[torch.randperm(x.shape[0], generator=gen)[:60000]]
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


def synthetic_markov(codebook_size: int, clips: int, frames: int, seed: int) -> list[torch.Tensor]:
    """A hierarchical Markov source: a slow 'section' chain drives a 'note' chain; finer codebooks refine it."""
    rng = np.random.default_rng(seed)
    sections = 8
    trans = rng.dirichlet(np.full(codebook_size, 0.05), size=(sections, codebook_size))
    out = []
    for _ in range(clips):
        section, note = rng.integers(sections), rng.integers(codebook_size)
        frames_k = np.zeros((frames, 4), dtype=np.int64)
        for t in range(frames):
            if rng.random() < 0.01:
                section = rng.integers(sections)
            if t % 4 == 0:
                note = rng.choice(codebook_size, p=trans[section, note])
            frames_k[t, 0] = note
            for k in range(1, 4):
                frames_k[t, k] = (frames_k[t, k - 1] * 7 + k + (rng.random() < 0.2) * rng.integers(codebook_size)) % codebook_size
        out.append(torch.from_numpy(frames_k))
    return out


def get_data(args: argparse.Namespace) -> TokenData:
    if args.tokens:
        return load_frame_cache(args.tokens)
    corpus = Path(args.corpus)
    if (corpus / "audio").is_dir():
        out = Path(args.standin_dir)
        if not (out / "valid.safetensors").is_file():
            print(f"building stand-in tokens from {corpus} into {out} ...", flush=True)
            build_standin(corpus, out, args.standin_codebook, args.standin_files)
        data = load_frame_cache(str(out))
        data.description = f"STAND-IN tokens (not codec tokens): residual k-means of log-mel frames of {corpus}"
        return data
    train = synthetic_markov(args.standin_codebook, 200, 600, 0)
    valid = synthetic_markov(args.standin_codebook, 20, 600, 1)
    return TokenData(train, valid, args.standin_codebook, "STAND-IN tokens (not codec tokens): synthetic hierarchical Markov source")


# ---------------------------------------------------------------------------
# plots


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    colors = {"transformer": "tab:blue", "mamba2": "tab:orange"}
    paths = []

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in colors:
        rows = [r for r in result["throughput"] if r["backbone"] == name]
        a.plot([r["context_s"] for r in rows], [r["tokens_per_s"] for r in rows], "o-", color=colors[name], label=name)
        b.plot([r["context_s"] for r in rows], [r["peak_mem_mb"] for r in rows], "o-", color=colors[name], label=name)
    a.set(xlabel="context (s of 50 Hz frames)", ylabel=f"training tokens / {CLOCK} s", xscale="log", title="training throughput")
    b.set(xlabel="context (s of 50 Hz frames)", ylabel="peak memory (MB)", xscale="log", title="training peak memory")
    a.legend()
    fig.tight_layout()
    paths.append(str(out_dir / "ssm_throughput.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for name in colors:
        lat = result["decode_ms"][name]
        ax.plot([int(p) for p in lat], list(lat.values()), "o-", color=colors[name], label=name)
    ax.set(xlabel="decoding position (step)", ylabel=f"{CLOCK} ms per step (batch 1)", title="decoding latency", ylim=(0, None))
    ax.legend()
    fig.tight_layout()
    paths.append(str(out_dir / "ssm_decode.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    pairs = result["training"]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 3.6 * len(pairs)), squeeze=False)
    for row, (pair, runs) in enumerate(pairs.items()):
        for name in colors:
            for seed, curve in runs["curves"][name].items():
                style = "-" if seed == "0" else "--"
                axes[row, 0].plot(curve["step"], curve["val_loss"], style, color=colors[name], label=f"{name} seed {seed}")
                axes[row, 1].plot(curve["train_seconds"], curve["val_loss"], style, color=colors[name], label=f"{name} seed {seed}")
        axes[row, 0].set(xlabel="optimizer steps", ylabel="validation loss", title=f"{pair} pair: loss vs steps")
        axes[row, 1].set(xlabel=f"training time ({CLOCK} s)", ylabel="validation loss", title=f"{pair} pair: loss vs time")
        axes[row, 0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(str(out_dir / "ssm_training.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="smaller models, fewer steps and repeats, one seed")
    p.add_argument("--tokens", help="frame-cache directory of real tokens (meta.json + train/valid.safetensors)")
    p.add_argument("--corpus", default="/work/data/corpus-v1", help="audio corpus for the stand-in tokens")
    p.add_argument("--standin-dir", default="/work/data/ssm-standin-tokens")
    p.add_argument("--standin-codebook", type=int, default=256)
    p.add_argument("--standin-files", type=int, default=400)
    p.add_argument("--plots", default="docs", help="directory for the PNG plots ('' for none)")
    p.add_argument("--parts", default="throughput,decode,train")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); 1 makes CPU time exact work (no idle-thread spinning)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="time base of the ratios: process CPU time (default; robust on a shared machine) or wall-clock")
    p.add_argument("--steps", type=int, default=0, help="training steps of the efficiency study (0: by --quick)")
    p.add_argument("--seeds", default="", help="comma-separated seeds of the efficiency study (default: by --quick)")
    p.add_argument("--merge", nargs="+", help="merge the JSON of runs of different --parts and plot")
    p.add_argument("--_point", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = args.clock
    if args.merge:  # combine the parts of separate runs, then plot
        result: dict[str, Any] = {"runs": []}
        for path in args.merge:
            part = json.loads(Path(path).read_text())
            runs = result["runs"] + part.pop("runs", [])
            result.update(part)
            result["runs"] = runs
        finish(result, args)
        return
    if args._point:  # a child process measuring one throughput point
        job = json.loads(args._point)
        CLOCK = job["clock"]
        torch.set_num_threads(job["threads"])
        print(json.dumps(measure_training_point(job["config"], job["frames"], job["repeats"])))
        return

    quick = args.quick
    parts = set(args.parts.split(","))
    # the main pair and the 4x smaller pair (parameters scale with dim^2 at fixed depth)
    main_size = (128, 4, 4) if quick else (256, 6, 4)  # (dim, Transformer layers, heads)
    small_size = (64, 4, 2) if quick else (128, 6, 2)
    steps = 120 if quick else 1500
    batch, segment = (8, 150) if quick else (16, 300)
    seeds = (0,) if quick else (0, 1)
    every = 20 if quick else 100
    if args.steps:
        steps, every = args.steps, max(1, args.steps // 10)
    if args.seeds:
        seeds = tuple(int(x) for x in args.seeds.split(","))
    run_info = {"parts": sorted(parts), "quick": quick, "clock": CLOCK, "threads": torch.get_num_threads(),
                "load_avg_at_start": os.getloadavg()}
    result: dict[str, Any] = {"quick": quick, "clock": CLOCK, "runs": [run_info]}

    data = get_data(args) if "train" in parts else None
    codebook = data.codebook_size if data else args.standin_codebook
    max_frames = max(CONTEXTS_S) * FRAME_RATE + 8
    configs = pair_configs(*main_size, codebook, max_frames)
    result["models"] = {}
    for name, c in configs.items():
        with torch.device("meta"):
            m = TokenLM(c)
        result["models"][name] = {"dim": c.dim, "backbone_config": c.backbone_config, "lm_params": n_params(m),
                                  "backbone_params": n_params(m.backbone)}
    print("models:", json.dumps(result["models"]), flush=True)

    if "throughput" in parts:
        result["throughput"] = throughput(configs, repeats=1 if quick else 2)
        tps = {r["backbone"]: r["tokens_per_s"] for r in result["throughput"] if r["context_s"] == 120}
        result["throughput_ratio_120s"] = tps["mamba2"] / tps["transformer"]

    if "decode" in parts:
        result["decode_ms"] = {}
        for name, c in configs.items():
            torch.manual_seed(0)
            result["decode_ms"][name] = decode_latency(TokenLM(c), DECODE_POSITIONS, rounds=200 if quick else 500)
            print(f"  decode {name:11s}", {k: round(v, 2) for k, v in result["decode_ms"][name].items()}, flush=True)
        lat = list(result["decode_ms"]["mamba2"].values())
        result["ssm_decode_flatness"] = max(lat) / min(lat)
        tl = result["decode_ms"]["transformer"]
        result["transformer_decode_growth"] = tl[max(DECODE_POSITIONS)] / tl[min(DECODE_POSITIONS)]

    if "train" in parts:
        assert data is not None
        result["data"] = {"description": data.description, "codebook_size": data.codebook_size,
                          "train_clips": len(data.train), "valid_clips": len(data.valid),
                          "train_frames": int(sum(c.shape[0] for c in data.train))}
        result["training"] = {}
        valid = data.windows(data.valid, 32 if quick else 64, segment, np.random.default_rng(12345))
        for pair, size in (("main", main_size), ("4x-smaller", small_size)):
            pcs = pair_configs(*size, data.codebook_size, segment + 8)
            runs: dict[str, Any] = {"setup": {"steps": steps, "batch": batch, "segment_frames": segment, "lr": 1e-3,
                                              "optimizer": "AdamW(0.9, 0.95), wd 0.01, warm-up 10%, cosine to 10%, clip 1.0"},
                                    "params": {}, "curves": {n: {} for n in pcs}}
            for name, c in pcs.items():
                with torch.device("meta"):
                    runs["params"][name] = n_params(TokenLM(c))
            for seed in seeds:
                for name, c in pcs.items():
                    curve = train_curve(c, data, steps, batch, segment, seed, valid, every, lr=1e-3)
                    runs["curves"][name][str(seed)] = curve
                    result["training"][pair] = runs
                    if args.json:  # partial results survive an interrupted run
                        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                        Path(args.json + ".partial").write_text(json.dumps(result, indent=2) + "\n")
                    print(f"  train {pair:10s} {name:11s} seed {seed}: val loss {curve['val_loss'][0]:.3f} -> "
                          f"{curve['val_loss'][-1]:.3f} in {curve['train_seconds'][-1]:.0f} s", flush=True)
            final = {n: float(np.mean([cv["val_loss"][-1] for cv in runs["curves"][n].values()])) for n in pcs}
            secs = {n: float(np.mean([cv["train_seconds"][-1] for cv in runs["curves"][n].values()])) for n in pcs}
            runs["final_val_loss"], runs["train_seconds"] = final, secs
            runs["val_loss_ratio"] = final["mamba2"] / final["transformer"]
            result["training"][pair] = runs
        result["val_loss_ratio_equal_steps"] = result["training"]["main"]["val_loss_ratio"]
        result["val_loss_ratio_equal_steps_4x_smaller"] = result["training"]["4x-smaller"]["val_loss_ratio"]

    run_info["load_avg_at_end"] = os.getloadavg()
    finish(result, args)


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Plots (when every part is there), the JSON, and the one-line summary."""
    if args.plots and all(k in result for k in ("throughput", "decode_ms", "training")):
        result["plots"] = plot(result, Path(args.plots))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    head = {k: round(result[k], 3) for k in ("ssm_decode_flatness", "throughput_ratio_120s", "val_loss_ratio_equal_steps") if k in result}
    print("backbones:", " ".join(f"{k}={v}" for k, v in head.items()))


if __name__ == "__main__":
    main()
