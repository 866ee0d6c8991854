"""Output loudness of the bundled default, raw and normalised, at several lengths (issue 25).

    nice -n 15 python bench/loudness.py --out docs/loudness_bench.json

One sampling run per length gives both columns: the raw output (loudness=None: clamped at
full scale, as before) and the default, normalised one.  Each: dB RMS, the share of
samples at |x| >= 0.999, integrated loudness (BS.1770-4), true peak, loudness drift along the
clip (short-term 3 s loudness of the first vs the last 10 s), and the seconds normalisation took.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import tunesmith
from tunesmith import generator as G
from tunesmith.eval.metrics import clipping_rate
from tunesmith.loudness import LoudnessTarget, integrated_loudness, normalise, true_peak

PROMPT = "A lively march for brass band in B-flat major, 120 BPM."


def level(wav: torch.Tensor, sr: int) -> dict[str, float | None]:
    lufs = integrated_loudness(wav, sr)
    tenth = 10 * sr
    first, last = integrated_loudness(wav[..., :tenth], sr), integrated_loudness(wav[..., -tenth:], sr)
    return {"db_rms": round(20 * math.log10(float(wav.double().pow(2).mean().sqrt()) + 1e-12), 2),
            "clipped_percent": round(100 * clipping_rate(wav), 3),
            "lufs": round(lufs, 2) if math.isfinite(lufs) else None,
            "true_peak_dbtp": round(true_peak(wav, sr), 2),
            "lufs_first_10s_minus_last_10s": round(first - last, 2) if wav.shape[-1] > 2 * tenth else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0, 90.0])
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=Path("docs/loudness_bench.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = tunesmith.load(args.model)
    rows = []
    for duration in args.durations:
        # one sampling run gives both columns: the decode before its clamp at full scale, then
        # clamped (what loudness=None returns) and normalised (what the default returns); the
        # context variable is the one a generate call sets itself (tunesmith.generator)
        start = time.perf_counter()
        token = G._GENERATING.set(True)
        try:
            unclamped = generator.generate(PROMPT, duration=duration, seed=args.seed).samples[0]
        finally:
            G._GENERATING.reset(token)
        seconds = time.perf_counter() - start
        t0 = time.perf_counter()
        normalised, report = normalise(unclamped, generator.sample_rate, LoudnessTarget())
        normalise_seconds = time.perf_counter() - t0
        raw = unclamped.clamp(-1.0, 1.0)
        rows.append({"duration": duration, "generation_seconds": round(seconds, 1),
                     "normalise_seconds": round(normalise_seconds, 3),
                     "raw": level(raw, generator.sample_rate),
                     "normalised": level(normalised.clamp(-1.0, 1.0), generator.sample_rate),
                     "raw_peak_before_clamp": round(float(unclamped.abs().max()), 3), "report": report})
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"prompt": PROMPT, "seed": args.seed, "model": args.model,
                                    "target": {"lufs": -16.0, "true_peak_dbtp": -1.0}, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
