"""The evaluation report: ``metrics.json`` plus a self-contained HTML page.

The page has the summary table (one row per metric, with the issue-9 targets), the FAD
and CLAP tables, plots (prompted vs estimated tempo, CLAP scores, key relations) and one
row per prompt with its audio player, spectrogram and measurements.  Images are PNG files
beside the page (matplotlib, Agg backend); audio players point at ``audio/<id>.wav``.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.files import atomic_write_text
from tunesmith.spectral import log_mel


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, tensors dropped."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_metrics_json(results: dict[str, Any], path: Path) -> Path:
    atomic_write_text(path, json.dumps(_clean(results), indent=2) + "\n")
    return path


def spectrogram_png(wav: torch.Tensor, sample_rate: int, path: Path, title: str = "") -> Path:
    """A log-mel spectrogram image of mono audio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mono = wav.float().reshape(-1, wav.shape[-1]).mean(0)
    mel = log_mel(mono, sample_rate, n_fft=1024, hop=256, n_mels=80).numpy()
    fig, ax = plt.subplots(figsize=(4.0, 1.6), dpi=80)
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
              extent=(0, mono.shape[-1] / sample_rate, 0, mel.shape[0]))
    ax.set_xlabel("seconds", fontsize=7)
    ax.set_yticks([])
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plots(results: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """Summary plots; returns (file name, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["items"]
    made = []
    tempo = [(r["tempo_target"], r["tempo_estimated"]) for r in rows if r.get("tempo_target") and r.get("tempo_estimated")]
    if tempo:
        fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
        t, e = np.array(tempo).T
        ax.scatter(t, e, s=14)
        lo, hi = min(t.min(), e.min()) * 0.9, max(t.max(), e.max()) * 1.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="exact")
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], alpha=0.15, label="within 10%")
        ax.set_xlabel("prompted BPM")
        ax.set_ylabel("estimated BPM")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "tempo.png")
        plt.close(fig)
        made.append(("tempo.png", "Prompted against estimated tempo (beat tracking)"))
    scores = [r["clap_score"] for r in rows if r.get("clap_score") is not None]
    if scores:
        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        ax.hist(scores, bins=min(20, max(5, len(scores) // 2)), alpha=0.7, label="generated")
        refs = [r["reference_clap_score"] for r in rows if r.get("reference_clap_score") is not None]
        if refs:
            ax.hist(refs, bins=min(20, max(5, len(refs) // 2)), alpha=0.5, label="references")
        ax.set_xlabel("CLAP score (cosine)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "clap_scores.png")
        plt.close(fig)
        made.append(("clap_scores.png", "CLAP scores of generated audio and of the references"))
    from tunesmith.eval.metrics import key_relation
    from tunesmith.music import parse_key_name

    relations = [key_relation(parse_key_name(r["key_estimated"]), parse_key_name(r["key_target"]))
                 for r in rows if r.get("key_estimated") and r.get("key_target")]
    if relations:
        names = ["same", "fifth", "relative", "parallel", "other"]
        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        ax.bar(names, [relations.count(n) for n in names])
        ax.set_ylabel("prompts")
        fig.tight_layout()
        fig.savefig(out_dir / "key_relations.png")
        plt.close(fig)
        made.append(("key_relations.png", "Estimated key relative to the prompted key"))
    return made


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "–"
    return html.escape(str(value))


def _summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, value, prompts counted, the same metric on the real references)."""
    s = results["summary"]
    ceiling = results.get("reference_ceiling", {})

    def ref(name: str) -> Any:
        return ceiling.get(name, {}).get("rate")

    rows = [
        ("Instrument family right (CHiLS)", s["instrument_family_accuracy"]["rate"], s["instrument_family_accuracy"]["count"],
         ref("instrument_family_accuracy")),
        ("Tempo within 10% of prompt", s["tempo_within_10pct"]["rate"], s["tempo_within_10pct"]["count"], ref("tempo_within_10pct")),
        ("Tempo within 4% (Acc1)", s["tempo_acc1_4pct"]["rate"], s["tempo_acc1_4pct"]["count"], None),
        ("Tempo within 4% up to octave (Acc2)", s["tempo_acc2_4pct_octave"]["rate"], s["tempo_acc2_4pct_octave"]["count"],
         ref("tempo_acc2_4pct_octave")),
        ("Key right", s["key_accuracy"]["rate"], s["key_accuracy"]["count"], ref("key_accuracy")),
        ("Key MIREX score", s["key_mirex"]["mean"], s["key_mirex"]["count"], None),
        ("Mode right", s["mode_accuracy"]["rate"], s["mode_accuracy"]["count"], ref("mode_accuracy")),
        ("CLAP score (mean)", s["clap_score"]["mean"], s["clap_score"]["count"], results.get("clap_score_references")),
        ("CLAP score / references'", s["clap_score_ratio_to_references"], None, None),
        ("Melody chroma cosine", s["melody_chroma_cosine"]["mean"], s["melody_chroma_cosine"]["count"], None),
        ("KL of family tags (ref || gen)", results.get("kl_family_tags"), None, None),
        ("Samples hard-clipped (share, mean)", s.get("clipping_rate", {}).get("mean"),
         s.get("clipping_rate", {}).get("count"), None),
        ("Loudness (LUFS, mean)", s.get("loudness_lufs", {}).get("mean"), s.get("loudness_lufs", {}).get("count"), None),
        ("Median real-time factor", s["speed"]["median_rtf"], None, None),
        ("First call (s)", s["speed"]["first_call_seconds"], None, None),
    ]
    return [(name, _fmt(value), _fmt(count), _fmt(reference)) for name, value, count, reference in rows]


def write_report(results: dict[str, Any], items_audio: list[tuple[torch.Tensor, int]], out_dir: Path) -> Path:
    """Write metrics.json, images and index.html into ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    write_metrics_json(results, out_dir / "metrics.json")
    for row, (wav, sr) in zip(results["items"], items_audio):
        spectrogram_png(wav, sr, out_dir / "img" / f"{row['id']}.png")
    figures = plots(results, out_dir)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>tunesmith eval: {e(results.get('model', ''))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}th{background:#f3f3f3}"
        ".met{color:#080}.miss{color:#b00}figure{display:inline-block;margin:0 1em 1em 0}</style></head><body>",
        f"<h1>Evaluation of {e(str(results.get('model', '')))}</h1>",
        f"<p>{results['prompts']} prompts, sample rate {results['sample_rate']} Hz"
        + (f", {results['references']} reference clips" if results.get("references") else "") + ".</p>",
    ]
    for note in results.get("notes", []):
        parts.append(f"<p><em>{e(note)}</em></p>")
    parts.append("<h2>Summary</h2><p>The last column is the same measurement on the real reference clips: "
                 "the ceiling the estimators allow.</p><table id='metrics'><tr><th>Metric</th><th>Value</th>"
                 "<th>Prompts</th><th>References</th></tr>")
    for name, value, count, reference in _summary_rows(results):
        parts.append(f"<tr><td>{e(name)}</td><td>{value}</td><td>{count}</td><td>{reference}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Targets</h2><table id='targets'><tr><th>Target</th><th>Goal</th><th>Measured</th><th>Met</th></tr>")
    for name, t in results["summary"]["targets"].items():
        cls = "" if t["met"] is None else ("met" if t["met"] else "miss")
        parts.append(f"<tr><td>{e(name)}</td><td>{_fmt(t['target'])}</td><td>{_fmt(t['value'])}</td>"
                     f"<td class='{cls}'>{_fmt(t['met'])}</td></tr>")
    parts.append("</table>")
    fads = [(k, results[k]) for k in ("fad_mel_stats", "fad_clap") if k in results]
    if fads:
        parts.append("<h2>Frechet audio distance</h2><table id='fad'><tr><th>Embedding</th><th>FAD</th>"
                     "<th>95% bootstrap interval</th><th>FAD-inf</th><th>n generated / reference</th></tr>")
        for name, f in fads:
            if "error" in f:
                parts.append(f"<tr><td>{e(name)}</td><td colspan='4'>{e(f['error'])}</td></tr>")
                continue
            parts.append(f"<tr><td>{e(name)}</td><td>{_fmt(f['fad'])}</td><td>{_fmt(f['ci_low'])} – {_fmt(f['ci_high'])}</td>"
                         f"<td>{_fmt(f['fad_inf'])}</td><td>{f['n_a']} / {f['n_b']}</td></tr>")
        parts.append("</table>")
    if "memorization" in results:
        m = results["memorization"]
        parts.append("<h2>Memorization</h2><p>" + e(json.dumps(_clean(m))) + "</p>")
    if figures:
        parts.append("<h2>Plots</h2>")
        for name, caption in figures:
            parts.append(f"<figure><img src='{e(name)}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Prompts</h2><table id='items'><tr><th>Prompt</th><th>Audio</th><th>Spectrogram</th>"
                 "<th>Tempo (asked / heard)</th><th>Key (asked / heard)</th><th>Family (asked / heard)</th>"
                 "<th>CLAP</th><th>RTF</th></tr>")
    for r in results["items"]:
        parts.append(
            f"<tr><td><b>{e(r['id'])}</b><br>{e(r['prompt'])}</td>"
            f"<td><audio controls preload='none' src='{e(r['audio'])}'></audio></td>"
            f"<td><img src='img/{e(r['id'])}.png' alt='spectrogram of {e(r['id'])}'></td>"
            f"<td>{_fmt(r.get('tempo_target'))} / {_fmt(r.get('tempo_estimated'))}</td>"
            f"<td>{_fmt(r.get('key_target') or r.get('mode_target'))} / {_fmt(r.get('key_estimated'))}</td>"
            f"<td>{_fmt(r.get('families_target'))} / {_fmt(r.get('family_predicted'))}</td>"
            f"<td>{_fmt(r.get('clap_score'))}</td><td>{_fmt(r.get('rtf'))}</td></tr>"
        )
    parts.append("</table></body></html>")
    path = out_dir / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome binary, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def render_dom(html_path: Path, timeout: float = 60.0) -> str:
    """Open a page in headless Chromium and return the DOM it rendered (checks the report loads)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
             Path(html_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout
