"""Benchmark: time-aware music (FUTGA): the captioner against known facts, and generation that
follows time-stamped prompts section by section.

1. Captioner on corpus clips never trained on (the test and valid splits of the corpus
   manifest; the captioner's settings were chosen on train clips): tempo (within 4% of the
   tagged tempo, Gouyon's Acc1; Acc2 beside it), mode, key, instrument family (the top CHiLS
   family is one of the clip's families) and boundary F-measure at +-2 s, all counts pooled
   over clips (a clip without sections adds its false boundaries), against the section plans
   the corpus builder rendered.
2. Captioner on real recordings (a Debian free-music package: Wesnoth's soundtrack), no ground
   truth: a table of its outputs for a person to read.
3. Generation: three-section prompts ("0:00-0:06 solo piano, quiet; 0:06-0:12 brass band, loud;
   0:12-0:18 solo piano, quiet"), each with its own seed, on the default DiT as bundled (it was
   never trained on time-varying conditioning).  A section *matches* when the CLAP's CHiLS family
   probability of its audio (the section less 0.5 s at each boundary) is higher for its own
   text's family than for each neighbour's, and its RMS level is above (below) a neighbour's
   wherever its text asks for louder (softer) than that neighbour: ``section_match_rate``.
   ``boundary_hit_rate``: asked boundaries with a boundary of the captioner's detector (default
   settings) within 2 s.  The same prompts with the three texts as one plain prompt (no times)
   are the baseline: what the sections add.

    nice -n 10 python bench/timeaware.py --json docs/timeaware_bench.json --audio-dir runs/timeaware \
        --figure docs/timeaware.png [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tunesmith.audio import load_audio  # noqa: E402
from tunesmith.data.captioner import CaptionerConfig, TimeCaptioner, boundary_scores, f_measure  # noqa: E402
from tunesmith.eval import metrics as M  # noqa: E402
from tunesmith.music import parse_key_name  # noqa: E402

CORPUS = Path("/work/data/corpus-v3/manifest.jsonl")
REAL_MUSIC = Path("/usr/share/games/wesnoth/1.16/data/core/music")
TARGETS = {"section_match_rate": 0.7, "boundary_hit_rate": 0.6}
# what a section asks for -> the CHiLS family the CLAP should hear
INSTRUMENTS = {"solo piano": "piano", "string quartet": "strings", "brass band": "brass", "church organ": "organ",
               "solo flute": "woodwinds", "acoustic guitar": "guitar", "choir": "choir", "marimba": "mallets"}
LEVELS = {"quiet": -1, "loud": 1}


# -- 1. the captioner on the corpus ----------------------------------------------------------------

def corpus_clips(manifest: Path, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` clips of the test and valid splits, half with planned sections where there are enough."""
    records = [json.loads(line) for line in manifest.open() if line.strip()]
    pool = [r for r in records if r["split"] in ("test", "valid")]
    random.Random(seed).shuffle(pool)
    sectioned = [r for r in pool if r["tags"].get("segments")][: count // 2]
    plain = [r for r in pool if not r["tags"].get("segments")][: count - len(sectioned)]
    return sectioned + plain


def caption_corpus(captioner: TimeCaptioner, clips: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    counts = {"tempo": 0, "tempo_acc2": 0, "mode": 0, "key": 0, "family": 0}
    hits = estimated = reference = 0
    rows, started = [], time.time()
    for i, record in enumerate(clips):
        audio = load_audio(root / record["audio"], captioner.config.sample_rate, channels=1)
        _, tags = captioner(audio.samples, audio.sample_rate)
        truth = record["tags"]
        bpm = tags.get("tempo_bpm_estimated")
        counts["tempo"] += bool(bpm) and M.tempo_match(bpm, truth["tempo_bpm"], 0.04)
        counts["tempo_acc2"] += bool(bpm) and M.tempo_match(bpm, truth["tempo_bpm"], 0.04, octave=True)
        counts["mode"] += tags.get("mode") == truth["mode"]
        counts["key"] += bool(tags.get("key")) and parse_key_name(tags["key"], tags["mode"]) == parse_key_name(truth["key"], truth["mode"])
        counts["family"] += tags["families"][0] in truth["families"]
        est = [s["start"] for s in tags["segments"][1:]]
        ref = [s["start"] for s in truth.get("segments", [])[1:]]
        h, e, r = boundary_scores(est, ref, 2.0)
        hits, estimated, reference = hits + h, estimated + e, reference + r
        rows.append({"id": record["id"], "tempo": [bpm, truth["tempo_bpm"]], "key": [f"{tags.get('key')} {tags.get('mode')}",
                     f"{truth['key']} {truth['mode']}"], "families": [tags["families"], truth["families"]],
                     "boundaries": [est, ref]})
        if (i + 1) % 10 == 0:
            print(f"  captioned {i + 1}/{len(clips)} ({time.time() - started:.0f} s)", flush=True)
    n = max(1, len(clips))
    return {"clips": len(clips), "caption_tempo_acc": round(counts["tempo"] / n, 3),
            "caption_tempo_acc2": round(counts["tempo_acc2"] / n, 3), "caption_mode_acc": round(counts["mode"] / n, 3),
            "caption_key_acc": round(counts["key"] / n, 3), "caption_family_acc": round(counts["family"] / n, 3),
            "caption_boundary_f": round(f_measure(hits, estimated, reference), 3),
            "boundary_precision": round(hits / estimated, 3) if estimated else None,
            "boundary_recall": round(hits / reference, 3) if reference else None,
            "boundary_counts": {"hits": hits, "estimated": estimated, "reference": reference},
            "seconds_per_clip": round((time.time() - started) / n, 2), "per_clip": rows}


# -- 2. the captioner on real recordings ------------------------------------------------------------

def caption_real(captioner: TimeCaptioner, folder: Path, count: int) -> list[dict[str, Any]]:
    if not folder.is_dir():
        print(f"  no real recordings at {folder} (apt-get install wesnoth-1.16-music)")
        return []
    table = []
    for path in sorted(folder.glob("*.ogg"))[:count]:
        audio = load_audio(path, captioner.config.sample_rate, channels=1, max_seconds=captioner.config.max_seconds)
        caption, tags = captioner(audio.samples, audio.sample_rate)
        table.append({"file": path.name, "seconds": round(audio.samples.shape[-1] / audio.sample_rate, 1),
                      "caption": caption, "timed_prompt": tags["timed_prompt"]})
        print(f"  {path.name}: {caption[:160]}", flush=True)
    return table


# -- 3. generation from three-section prompts -------------------------------------------------------

def three_section_prompts(count: int, seconds: float, seed: int) -> list[list[tuple[float, float, str, str, str]]]:
    """(start, end, text, family, level) x 3 per prompt: neighbours differ in instrument and level;
    half the prompts return to the first section's instrument."""
    rng = random.Random(seed)
    names = list(INSTRUMENTS)
    out = []
    for i in range(count):
        a, b = rng.sample(names, 2)
        c = a if i % 2 == 0 else rng.choice([n for n in names if n not in (a, b)])
        first = rng.choice(list(LEVELS))
        levels = [first, "loud" if first == "quiet" else "quiet", first]
        bpm = rng.choice((72, 90, 108, 126))
        texts = [f"{a}, {levels[0]}, {bpm} BPM", f"{b}, {levels[1]}", f"{c}, {levels[2]}"]
        out.append([(k * seconds, (k + 1) * seconds, texts[k], INSTRUMENTS[name], levels[k])
                    for k, name in enumerate((a, b, c))])
    return out


def score_sections(captioner: TimeCaptioner, wav: torch.Tensor, sr: int,
                   plan: list[tuple[float, float, str, str, str]]) -> dict[str, Any]:
    from tunesmith.clap.zeroshot import chils

    mono = wav.reshape(-1, wav.shape[-1]).float().mean(0)
    probs, levels = [], []
    for start, end, *_ in plan:
        part = mono[int((start + 0.5) * sr) : int((end - 0.5) * sr)]
        with torch.inference_mode():
            emb = captioner.auto.clap.embed_audio(part[None, None], sr)
        tagged = chils(captioner.auto.clap, emb, captioner.auto.hierarchy)
        probs.append(dict(zip(tagged.parent_names, tagged.parent_probs[0].tolist())))
        levels.append(10 * np.log10(max(float(part.pow(2).mean()), 1e-10)))
    sections = []
    for k, (_, _, _, family, level) in enumerate(plan):
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < len(plan)]
        family_ok = all(probs[k][family] > probs[k][plan[j][3]] for j in neighbours if plan[j][3] != family)
        level_ok = all((levels[k] - levels[j]) * (LEVELS[level] - LEVELS[plan[j][4]]) > 0
                       for j in neighbours if plan[j][4] != level)
        sections.append({"family_ok": family_ok, "level_ok": level_ok, "db": round(levels[k], 1),
                         "heard": max(probs[k], key=probs[k].get), "asked": family})
    asked = [plan[k][0] for k in range(1, len(plan))]
    found = [a for a, _ in captioner.sections(wav, sr)[1:]]
    hits, _, _ = boundary_scores(found, asked, 2.0)
    return {"sections": sections, "boundaries_found": found, "boundary_hits": hits, "boundaries_asked": len(asked)}


def generation(args: argparse.Namespace, captioner: TimeCaptioner) -> dict[str, Any]:
    import tunesmith
    from tunesmith.audio import save_audio
    from tunesmith.conditioning.prompt import format_timed_prompt

    gen = tunesmith.load(args.model)
    plans = three_section_prompts(args.prompts, args.section_seconds, args.seed)
    results: dict[str, list[dict[str, Any]]] = {"timed": [], "plain": []}
    seconds: dict[str, list[float]] = {"timed": [], "plain": []}
    for i, plan in enumerate(plans):
        timed = format_timed_prompt([(s, e, t) for s, e, t, *_ in plan])
        plain = ". ".join(t for _, _, t, *_ in plan)
        duration = plan[-1][1]
        for name, prompt in (("timed", timed), ("plain", plain)):
            if name == "plain" and args.no_baseline:
                continue
            started = time.time()
            audio = gen.generate(prompt, duration=duration, seed=args.seed + i)
            seconds[name].append(time.time() - started)
            scored = score_sections(captioner, audio.samples[0], audio.sample_rate, plan)
            results[name].append({"prompt": prompt, **scored})
            if args.audio_dir and i < 3:
                Path(args.audio_dir).mkdir(parents=True, exist_ok=True)
                save_audio(Path(args.audio_dir) / f"timeaware_{i}_{name}.wav", audio.samples[0], audio.sample_rate)
        print(f"[{i + 1}/{len(plans)}] {timed}\n    " + "  ".join(
            f"{name}: " + " ".join(f"{s['heard']}/{s['asked']}{'+' if s['family_ok'] and s['level_ok'] else '-'}"
                                   for s in r[-1]["sections"]) + f" bounds {r[-1]['boundaries_found']}"
            for name, r in results.items() if r), flush=True)

    def rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            return {}
        sections = [s for r in rows for s in r["sections"]]
        n = len(sections)
        return {"section_match_rate": round(sum(s["family_ok"] and s["level_ok"] for s in sections) / n, 3),
                "family_match_rate": round(sum(s["family_ok"] for s in sections) / n, 3),
                "level_match_rate": round(sum(s["level_ok"] for s in sections) / n, 3),
                "boundary_hit_rate": round(sum(r["boundary_hits"] for r in rows) / sum(r["boundaries_asked"] for r in rows), 3),
                "sections": n}

    return {"prompts": len(plans), "section_seconds": args.section_seconds, "model": args.model,
            "timed": rates(results["timed"]), "plain_baseline": rates(results["plain"]),
            "seconds_per_clip": {k: round(float(np.mean(v)), 1) for k, v in seconds.items() if v},
            "per_prompt": results}


def draw_figure(audio_dir: Path, plan_text: str, path: Path, index: int = 0) -> None:
    """Log-mel spectrograms of prompt ``index`` as sections and as one plain prompt, the asked
    boundaries marked: what the README shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunesmith.conditioning.prompt import parse_timed_prompt
    from tunesmith.spectral import log_mel

    sections = parse_timed_prompt(plan_text)
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
    for ax, name, title in zip(axes, ("timed", "plain"), ("time-stamped prompt", "the same texts as one plain prompt")):
        audio = load_audio(Path(audio_dir) / f"timeaware_{index}_{name}.wav", channels=1)
        mel = log_mel(audio.samples[0], audio.sample_rate, n_fft=2048, hop=480, n_mels=80).numpy()
        seconds = audio.samples.shape[-1] / audio.sample_rate
        ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
        for s in sections[1:]:
            ax.axvline(s.start, color="cyan", linestyle="--", linewidth=1.2)
        for s in sections:
            ax.text((s.start + s.end) / 2, mel.shape[0] * 0.9, s.text, color="white", ha="center", fontsize=8)
        ax.set_ylabel("mel bin")
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(plan_text, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    captioner = TimeCaptioner(CaptionerConfig(max_seconds=args.real_seconds))
    out: dict[str, Any] = {"date": datetime.now().isoformat(timespec="seconds"), "targets": TARGETS}
    print("1. captioner on corpus clips (test and valid splits)", flush=True)
    corpus = caption_corpus(captioner, corpus_clips(args.manifest, args.clips, args.seed), args.manifest.parent) \
        if args.manifest.is_file() and not args.generation_only else {}
    print("2. captioner on real recordings", flush=True)
    real = caption_real(captioner, args.real, args.real_files) if not args.generation_only else {}
    print("3. generation from three-section prompts", flush=True)
    generated = generation(args, captioner) if args.prompts else {}
    timed = generated.get("timed", {})
    out.update({key: corpus.get(key) for key in ("caption_tempo_acc", "caption_mode_acc", "caption_key_acc",
                                                 "caption_family_acc", "caption_boundary_f")})
    out.update({"section_match_rate": timed.get("section_match_rate"), "boundary_hit_rate": timed.get("boundary_hit_rate"),
                "baseline_section_match_rate": generated.get("plain_baseline", {}).get("section_match_rate"),
                "baseline_boundary_hit_rate": generated.get("plain_baseline", {}).get("boundary_hit_rate"),
                "captioner": corpus, "real_recordings": real, "generation": generated})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=CORPUS)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--real", type=Path, default=REAL_MUSIC)
    parser.add_argument("--real-files", type=int, default=6)
    parser.add_argument("--real-seconds", type=float, default=120.0, help="caption this much of each recording")
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--section-seconds", type=float, default=6.0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-prompt baseline")
    parser.add_argument("--generation-only", action="store_true",
                        help="only part 3 (a model's time-stamped generation), e.g. to compare checkpoints")
    parser.add_argument("--audio-dir", help="keep the first three prompts' audio here")
    parser.add_argument("--figure", help="with --audio-dir: save the first prompt's spectrograms here (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="8 clips, 1 recording, 2 prompts: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.real_files, args.prompts, args.real_seconds = 8, 1, 2, 60.0
    result = run(args)
    if args.figure and args.audio_dir and result["generation"].get("per_prompt", {}).get("plain"):
        draw_figure(Path(args.audio_dir), result["generation"]["per_prompt"]["timed"][0]["prompt"], Path(args.figure))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    top = {k: v for k, v in result.items() if not isinstance(v, (dict, list)) or k == "targets"}
    print(json.dumps(top, indent=2))


if __name__ == "__main__":
    main()
