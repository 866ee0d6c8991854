"""The dataset card: what a corpus contains, in numbers, beside its manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.data.soundfont import soundfont_licence
from tunesmith.files import atomic_write_text


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Hours, clips, works and histograms (instruments, families, styles, tempo, keys, splits)."""
    seconds = sum(r["duration"] for r in records)
    splits = Counter(r["split"] for r in records)
    split_hours = Counter()
    for r in records:
        split_hours[r["split"]] += r["duration"] / 3600
    tags = [r.get("tags", {}) for r in records]

    def hist(values) -> dict[str, int]:
        return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))

    tempo_bins = [f"{10 * (t['tempo_bpm'] // 10)}-{10 * (t['tempo_bpm'] // 10) + 9}" for t in tags if "tempo_bpm" in t]
    return {
        "hours": round(seconds / 3600, 3),
        "clips": len(records),
        "works": len({r["source"] for r in records}),
        "mean_clip_seconds": round(seconds / len(records), 2) if records else 0.0,
        "splits": {k: {"clips": splits[k], "hours": round(split_hours[k], 3)} for k in sorted(splits)},
        "instruments": hist(i for t in tags for i in t.get("instruments", [])),
        "families": hist(f for t in tags for f in t.get("families", [])),
        "styles": hist(t.get("style") for t in tags if t.get("style")),
        "tempo_bpm": dict(sorted(Counter(tempo_bins).items(), key=lambda kv: int(kv[0].split("-")[0]))),
        "keys": hist(f"{t['key']} {t['mode']}" for t in tags if "key" in t),
        "modes": hist(t.get("mode") for t in tags if t.get("mode")),
        "meters": hist(t.get("meter") for t in tags if t.get("meter")),
        "eras": hist(t.get("era") for t in tags if t.get("era")),
        "dynamics": hist(t.get("dynamics") for t in tags if t.get("dynamics")),
        "with_segments": sum(1 for t in tags if t.get("segments")),
        "soundfonts": hist(r["soundfont"] for r in records if r.get("soundfont")),
    }


def _table(title: str, counts: dict[str, int], limit: int = 30) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in list(counts.items())[:limit])
    return f"### {title}\n\n| value | clips |\n|---|---|\n{rows}\n"


def _soundfont_rows(counts: dict[str, int], options: dict[str, Any]) -> list[str]:
    """One row per SoundFont the build could pick (a single --soundfont, or the list), with its licence."""
    from tunesmith.data.soundfont import soundfont_name

    files = [f for f in [options.get("soundfont"), *(options.get("soundfonts") or [])] if f]
    named = {soundfont_name(f): Path(str(f)).name for f in files}
    for name in counts:
        named.setdefault(name, "")
    return [f"| {name} | {file} | {counts.get(name, 0)} | {soundfont_licence(name)} |" for name, file in sorted(named.items())]


def write_card(out: str | Path, records: list[dict[str, Any]], skipped: list[dict[str, Any]],
               options: dict[str, Any]) -> dict[str, Any]:
    """Write ``card.json`` and ``CARD.md`` into ``out``; returns the summary."""
    out = Path(out)
    summary = summarize(records)
    reasons = Counter(s["reason"].split(":")[0] for s in skipped)
    summary["skipped"] = {"count": len(skipped), "reasons": dict(reasons.most_common())}
    summary["build"] = {k: v for k, v in options.items() if k not in ("out", "workers")}
    atomic_write_text(out / "card.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    lines = [
        "# tunesmith open corpus",
        "",
        "Public-domain scores (music21's bundled corpus and any user score folders), arranged for",
        "General MIDI instruments, rendered with FluidSynth and captioned from the exact facts of",
        "each render. Splits are by source work.",
        "",
        f"- hours: {summary['hours']}",
        f"- clips: {summary['clips']} (mean {summary['mean_clip_seconds']} s)",
        f"- works: {summary['works']}",
        "- splits: " + ", ".join(f"{k} {v['clips']} clips / {v['hours']} h" for k, v in summary["splits"].items()),
        f"- clips with time-aware segment descriptions: {summary['with_segments']}",
        f"- skipped works: {len(skipped)}" + (f" ({', '.join(f'{k}: {v}' for k, v in reasons.most_common(5))})" if skipped else ""),
        f"- seed {options.get('seed')}, {options.get('sample_rate')} Hz, {options.get('channels')} channel(s), "
        f"humanised timing, velocity and mix: {'yes' if options.get('humanize', False) else 'no'}",
        "",
        "### SoundFonts (one per render, drawn by the seed)",
        "",
        "| SoundFont | file | clips | licence |",
        "|---|---|---|---|",
        *_soundfont_rows(summary["soundfonts"], options),
        "",
    ]
    for key in ("styles", "families", "instruments", "tempo_bpm", "keys", "meters", "eras", "dynamics"):
        lines.append(_table(key.replace("_", " "), summary[key]))
    atomic_write_text(out / "CARD.md", "\n".join(lines))
    return summary
