"""The standard benchmark set: prompts and reference audio from the corpus test split.

Every model is compared on the same ground: ``build_benchmark`` picks clips of the test
split (works never seen in training), balanced over instrument families, and writes

    DIR/prompts.jsonl        prompt (the clip's caption) + exact targets from its tags
    DIR/reference/<id>.wav   the first ``duration`` seconds of the real clip
    DIR/benchmark.json       how the set was made (manifest, split, seed, counts)

Run it once per corpus version and commit nothing but the resulting results JSON of each
model; the set itself is rebuilt identically from the same corpus and seed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.audio import load_audio, save_audio


def _stratified(records: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Round-robin over the clips' main instrument family (shuffled by ``seed``), at most
    one clip per source work until every work has been used once."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        families = record["tags"].get("families") or ["unknown"]
        by_family[sorted(families)[0] if len(families) == 1 else "ensemble"].append(record)
    queues = {}
    for family in sorted(by_family):
        group = by_family[family]
        order = rng.permutation(len(group))
        seen, first, later = set(), [], []
        for i in order:
            r = group[int(i)]
            (later if r["source"] in seen else first).append(r)
            seen.add(r["source"])
        queues[family] = first + later
    chosen: list[dict[str, Any]] = []
    while len(chosen) < count and any(queues.values()):
        for family in sorted(queues):
            if queues[family] and len(chosen) < count:
                chosen.append(queues[family].pop(0))
    return chosen


def build_benchmark(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    count: int = 100,
    duration: float = 10.0,
    split: str = "test",
    seed: int = 0,
    sample_rate: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the benchmark set; returns the path of its prompts.jsonl."""
    from tqdm.auto import tqdm

    from tunesmith.data.manifest import read_manifest, resolve_audio

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    manifest = Path(manifest)
    records = [r for r in read_manifest(manifest) if r["split"] == split and r["duration"] >= min(duration, 5.0)]
    if not records:
        raise ValueError(f"{manifest} has no clips of at least {min(duration, 5.0):g} s in split '{split}'")
    chosen = _stratified(records, count, seed)
    out = Path(out_dir)
    (out / "reference").mkdir(parents=True, exist_ok=True)
    lines = []
    for record in tqdm(chosen, desc="benchmark", disable=not progress):
        audio = load_audio(resolve_audio(manifest, record), sample_rate=sample_rate)
        clip_seconds = min(duration, audio.duration)
        samples = audio.samples[:, : int(round(clip_seconds * audio.sample_rate))]
        rel = f"reference/{record['id']}.wav"
        save_audio(out / rel, samples, audio.sample_rate)
        tags = record["tags"]
        lines.append({
            "id": record["id"], "prompt": record["caption"], "duration": round(clip_seconds, 3),
            "tempo_bpm": tags.get("tempo_bpm"), "key": tags.get("key"), "mode": tags.get("mode"),
            "families": tags.get("families", []), "instruments": tags.get("instruments", []),
            "style": tags.get("style"), "reference": rel, "source": record["source"],
        })
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines))
    families = defaultdict(int)
    for line in lines:
        for f in line["families"]:
            families[f] += 1
    (out / "benchmark.json").write_text(json.dumps({
        "manifest": str(manifest), "split": split, "seed": seed, "count": len(lines), "duration": duration,
        "works": len({line["source"] for line in lines}), "family_counts": dict(sorted(families.items())),
    }, indent=2) + "\n")
    return prompts
