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
    """Validation mel distance (waveform, all codebooks) and chroma similarity, and the last
    run's RVQ perplexity, against the step: one line per run.

    Validation is what compares runs whose training losses differ (a Griffin-Lim codec
    trains on magnitudes, a phase-predicting one on waveforms).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    last_train: list[dict] = []
    last_label = ""
    for index, (label, run_dir) in enumerate(runs.items()):
        color = f"C{index}"
        log = read_log(run_dir)
        valid = [r for r in log if any(k.startswith("valid/") for k in r)]
        mel_keys = sorted(k for k in {k for r in valid for k in r} if k.startswith("valid/mel"))
        if mel_keys:
            key = mel_keys[-1]  # the most codebooks (or the VAE's only one)
            axes[0].plot([r["step"] for r in valid if key in r], [r[key] for r in valid if key in r], "o-",
                         label=f"{label} {key.removeprefix('valid/')}", markersize=3, color=color)
        chroma = [r for r in valid if "valid/chroma" in r]
        if chroma:
            axes[1].plot([r["step"] for r in chroma], [r["valid/chroma"] for r in chroma], "o-", label=label, markersize=3, color=color)
        train = [r for r in log if any(k.startswith("perplexity/") for k in r)]
        if train:
            last_train, last_label = train, label
    for key in sorted(k for k in (last_train[-1] if last_train else {}) if k.startswith("perplexity/")):
        axes[2].plot([r["step"] for r in last_train], [r.get(key, float("nan")) for r in last_train],
                     label=f"codebook {key.split('/')[1]}", alpha=0.8)
    axes[0].set_title("validation mel distance (lower is better)", fontsize=10)
    axes[1].set_title("validation chroma similarity (0.51 = unrelated clips)", fontsize=10)
    axes[2].set_title(f"RVQ perplexity per batch ({last_label.split(' (')[0]})" if last_label else "RVQ perplexity per batch",
                      fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
