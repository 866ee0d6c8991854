"""Tempo words on the bundled default: does a prompt without a number keep a tempo that fits its words?

    nice -n 15 python bench/tempo_words.py --out docs/tempo_words_bench.json

24 free-wording prompts with tempo words and no BPM number, one clip each (seed = its index),
generated twice: before (no beat clock for them, as the generators did until now) and after (a
clock at a tempo the seed draws from the words' range, tunesmith.conditioning.tempo_words).
Scored: the share of clips whose estimated tempo lies in the words' range (and the same up to
an octave, which beat trackers confuse), and after, the share within 10% of the drawn tempo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import tunesmith
from tunesmith.conditioning import tempo_words as words
from tunesmith.eval.metrics import estimate_tempo, wilson_interval

PROMPTS = [
    "A slow waltz for strings and piano.",
    "a lively jig on fiddle and flute",
    "A fast jig for folk band.",
    "a tender ballad for piano and cello",
    "A march for brass band in B-flat major.",
    "an energetic rock track with distorted guitars",
    "Upbeat synth pop with bright electric piano",
    "laid-back jazz combo with saxophone and upright bass",
    "a solemn chorale for church organ",
    "Serene ambient pads with soft bells",
    "a very fast reel for fiddle",
    "Slow piano piece in A minor",
    "a quick folk tune on accordion",
    "An adagio for string orchestra",
    "allegro for woodwind quartet",
    "a brisk military march with snare drums",
    "a relaxed swing tune on vibraphone",
    "pulsing electronic track with synth bass",
    "a moderately paced folk song with guitar",
    "uptempo pop song with drums",
    "a calm, slow ballad on nylon guitar",
    "rousing march for wind band",
    "spirited dance tune for pan flute and banjo",
    "a stately hymn for brass choir",
]


def in_range(bpm: float, low: int, high: int, octave: bool = False) -> bool:
    candidates = (bpm, bpm * 2, bpm / 2) if octave else (bpm,)
    return any(low * 0.97 <= c <= high * 1.03 for c in candidates)  # 3%: the estimator's own grain


def rate(flags: list[bool]) -> dict[str, object]:
    return {"rate": round(sum(flags) / len(flags), 3), "count": len(flags),
            "ci95": [round(x, 3) for x in wilson_interval(sum(flags), len(flags))]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("docs/tempo_words_bench.json"))
    parser.add_argument("--limit", type=int, default=len(PROMPTS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # beside other jobs on 2 cores
    generator = tunesmith.load()
    rows = []
    start = time.perf_counter()
    for seed, prompt in enumerate(PROMPTS[: args.limit]):
        found = words.tempo_words(prompt)
        assert found is not None and words.parse_tempo(prompt) is None, prompt
        row = {"prompt": prompt, "words": list(found.words), "range": [found.low, found.high], "seed": seed,
               "drawn_bpm": words.prompt_tempo(prompt, seed)}
        for when in ("before", "after"):
            if when == "before":  # the generators as they were: words give no clock
                with mock.patch.object(words, "tempo_words", lambda text: None):
                    audio = generator.generate(prompt, duration=args.duration, seed=seed)
            else:
                audio = generator.generate(prompt, duration=args.duration, seed=seed)
            wav = audio.samples[0].mean(0).numpy()
            try:
                bpm = float(estimate_tempo(wav, audio.sample_rate))
            except ValueError:
                bpm = float("nan")
            row[when] = {"estimated_bpm": round(bpm, 1), "in_range": in_range(bpm, found.low, found.high),
                         "in_range_octave": in_range(bpm, found.low, found.high, octave=True),
                         "within_10pct_of_drawn": bool(abs(bpm - row["drawn_bpm"]) <= 0.1 * row["drawn_bpm"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {when: {"in_range": rate([r[when]["in_range"] for r in rows]),
                      "in_range_up_to_octave": rate([r[when]["in_range_octave"] for r in rows]),
                      "within_10pct_of_drawn": rate([r[when]["within_10pct_of_drawn"] for r in rows])}
               for when in ("before", "after")}
    result = {"model": "tunesmith-small-dit (bundled default)", "duration": args.duration, "summary": summary,
              "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
