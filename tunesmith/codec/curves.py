"""Training curves of codec runs (log.jsonl of the shared engine) as one PNG."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """Mel / STFT loss (train and valid) and RVQ perplexity against the step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, run_dir in runs.items():
        log = read_log(run_dir)
        train = [r for r in log if "mel" in r]
        valid = [r for r in log if any(k.startswith("valid/") for k in r)]
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["mel"] for r in train], label=f"{label} train", alpha=0.7)
        vkeys = sorted({k for r in valid for k in r if k.startswith("valid/mel")})
        for key in vkeys:
            axes[0].plot([r["step"] for r in valid if key in r], [r[key] for r in valid if key in r], "o-",
                         label=f"{label} {key}")
        axes[1].plot(steps, [r["stft"] for r in train], label=f"{label} train", alpha=0.7)
        pkeys = sorted(k for k in (train[-1] if train else {}) if k.startswith("perplexity/"))
        for key in pkeys:
            axes[2].plot(steps, [r.get(key, float("nan")) for r in train], label=f"{label} codebook {key.split('/')[1]}")
    axes[0].set_title("multi-scale mel distance")
    axes[1].set_title("multi-resolution STFT distance")
    axes[2].set_title("RVQ perplexity per batch (400 frames)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
