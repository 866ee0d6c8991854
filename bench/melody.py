"""Melody conditioning experiment: does the output follow the melody it was given?

A melody-conditioned token LM (``model.melody=true``) generates one clip per test
recording of the corpus, from that recording's caption and its one-hot chromagram
(MusicGen sec. 2.2).  Each output is scored by chroma cosine similarity (MusicGen
sec. 4.1; ``tunesmith.eval.metrics.chroma_cosine_similarity``) against

- its own reference (``matched``),
- another recording's reference (``random``: a fixed derangement over different works),

and two controls show where the similarity comes from:

- ``no_melody``: the same captions without a melody, scored against the references
  (what the text alone, which names the key, achieves);
- ``swapped``: the caption of recording i with the melody of recording j, scored
  against j's reference (``swapped_to_melody``) and against i's (``swapped_to_text``):
  if the melody is followed, the output sides with the melody, not with the caption.

    python bench/melody.py --model runs/lm-melody/model --json melody.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.audio import Audio, load_audio
from tunesmith.eval.metrics import chroma_cosine_similarity
from tunesmith.generator import load_generator

DEFAULT_MANIFEST = "/work/data/corpus-v2/manifest.jsonl"


def pick_clips(manifest: Path, count: int, seconds: float, seed: int) -> list[dict[str, Any]]:
    """Test clips at least ``seconds`` long, one per work (so a derangement never pairs a work with itself)."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    tests = [r for r in rows if r.get("split") == "test" and r["duration"] >= seconds]
    random.Random(seed).shuffle(tests)
    chosen, works = [], set()
    for r in tests:
        work = r.get("tags", {}).get("work_id", r["id"])
        if work not in works:
            works.add(work)
            chosen.append(r)
    if len(chosen) < 2:
        raise SystemExit(f"need at least 2 test clips of {seconds} s from different works in {manifest}")
    return chosen[:count]


def similarity(outputs: torch.Tensor, refs: list[torch.Tensor], order: list[int], sr: int) -> list[float]:
    return [chroma_cosine_similarity(outputs[i].numpy(), refs[j].numpy(), sr) for i, j in enumerate(order)]


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def sign_test_p(wins: int, n: int) -> float:
    """One-sided exact binomial p-value of at least ``wins`` of ``n`` paired wins under a fair coin."""
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a melody-conditioned token-LM generator directory")
    p.add_argument("--manifest", default=DEFAULT_MANIFEST, help="corpus manifest; its test split is used")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    gen = load_generator(args.model)
    sr = gen.sample_rate
    clips = pick_clips(Path(args.manifest), args.clips, args.seconds, args.seed)
    n, samples = len(clips), int(args.seconds * sr)
    root = Path(args.manifest).parent
    refs = [load_audio(root / c["audio"], sr, 1).samples[:, :samples] for c in clips]
    captions = [c["caption"] for c in clips]
    melodies = Audio(torch.stack(refs), sr)
    shift = max(1, n // 2)
    other = [(i + shift) % n for i in range(n)]  # a derangement: every clip paired with another work

    def run(melody: Audio | None, label: str) -> torch.Tensor:
        print(f"generating {n} x {args.seconds:g} s ({label})", flush=True)
        out = gen.generate(captions, duration=args.seconds, seed=args.seed, cfg=args.cfg, melody=melody, progress=True)
        return out.samples.mean(dim=1)  # (B, T) mono

    matched_out = run(melodies, "own melody")
    none_out = run(None, "no melody")
    swapped_out = run(Audio(melodies.samples[other], sr), "another clip's melody")
    mono_refs = [r.mean(dim=0) for r in refs]
    own, rand = list(range(n)), other
    scores = {
        "matched": similarity(matched_out, mono_refs, own, sr),
        "random": similarity(matched_out, mono_refs, rand, sr),
        "no_melody": similarity(none_out, mono_refs, own, sr),
        "swapped_to_melody": similarity(swapped_out, mono_refs, rand, sr),
        "swapped_to_text": similarity(swapped_out, mono_refs, own, sr),
        "reference_vs_random_reference": [chroma_cosine_similarity(mono_refs[i].numpy(), mono_refs[j].numpy(), sr)
                                          for i, j in enumerate(rand)],
    }
    wins = sum(a > b for a, b in zip(scores["matched"], scores["random"]))
    swap_wins = sum(a > b for a, b in zip(scores["swapped_to_melody"], scores["swapped_to_text"]))
    result = {
        "model": args.model,
        "clips": n,
        "seconds": args.seconds,
        "seed": args.seed,
        "cfg": args.cfg,
        "chroma_cosine": {k: summary(v) for k, v in scores.items()},
        "matched_beats_random": {"wins": wins, "n": n, "sign_test_p": sign_test_p(wins, n)},
        "swapped_follows_melody": {"wins": swap_wins, "n": n, "sign_test_p": sign_test_p(swap_wins, n)},
        "per_clip": [{"id": c["id"], **{k: v[i] for k, v in scores.items()}} for i, c in enumerate(clips)],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    cc = result["chroma_cosine"]
    print(f"melody: matched {cc['matched']['mean']:.3f} vs random reference {cc['random']['mean']:.3f} "
          f"(wins {wins}/{n}, p={result['matched_beats_random']['sign_test_p']:.2g}); no melody {cc['no_melody']['mean']:.3f}; "
          f"swapped: to its melody {cc['swapped_to_melody']['mean']:.3f} vs to its text's clip {cc['swapped_to_text']['mean']:.3f}")


if __name__ == "__main__":
    main()
