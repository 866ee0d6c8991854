"""Benchmark: distilled students of the default DiT against the teacher, one table, same prompts and seeds.

Rows (each only when its model is given or can be built here):

- the teacher (``tunesmith-small-dit``) at its shipped setting (12 DPM-Solver++ steps, CFG 4)
  and at 50 steps (that one on the benchmark and the 10-s timing only: it costs 4x);
- Presto-S (``--student DIR``, a ``tunesmith train distill`` export) at 1, 2 and 4 steps;
- Presto-L: the teacher with a layer budget (``--layers DIR``, trained; without it, the budget
  below with gains calibrated from the teacher and no training: ``presto-l (calibrated)``),
  and the same budget with plain dropping (gains 1) to show what the calibration keeps;
- Presto-LS (``--ls DIR``) and a consistency student (``--consistency DIR``, 1-4 steps).

Columns: network evaluations (NFE: a CFG pass counts once) and DiT blocks run per clip; warm
seconds for 10 s and 30 s of audio (median of 3) with the split between text encoder, DiT
and VAE decode; on the benchmark (prompts with reference clips from the corpus's test split)
FAD of mel statistics and of CLAP embeddings, CLAP score, tempo / mode / family; tempo /
mode / family on both free-wording sets (Wilson intervals from the evaluator); diversity,
the mean pairwise CLAP-embedding distance (1 - cosine) between 4 seeds of each of 6 prompts.

    nice -n 10 python bench/distill.py --student runs/presto-s4-export --json docs/distill_bench.json [--quick]

JSON top level: ``nfe_student``, ``speedup_10s`` (teacher's warm seconds for 10 s / the
student's), ``fad_mel_ratio`` and ``fad_clap_ratio`` (student / teacher), ``diversity_ratio``
(student / teacher): for the student given by ``--student`` at its own step count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIVERSITY_PROMPTS = [
    "A slow, sad waltz for strings in D minor.",
    "A lively march for brass band in B-flat major, 120 BPM.",
    "Gentle solo piano, quiet and reflective.",
    "A fast jig on the fiddle with a bodhran.",
    "A chorale for organ in G major.",
    "Jazzy walking bass with piano and drums, 100 BPM.",
]
BUDGET = {"skip_sigmas": (2.0, 15.0), "skip_blocks": (2, 4)}  # Presto-L's budget for the 8-block DiT
LIGHT_ROWS = ("teacher, 50 steps",)  # 4x the teacher's time: measured on the benchmark only


class WithControls:
    """A generator with some controls fixed (a step count, say): what the evaluator calls."""

    def __init__(self, generator: Any, **controls: Any) -> None:
        self.generator, self.controls = generator, controls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def generate(self, prompts: Any, duration: float, seed: Any = 0, **controls: Any) -> Any:
        return self.generator.generate(prompts, duration, seed, **{**self.controls, **controls})


def blocks_per_clip(generator: Any, controls: dict[str, Any]) -> tuple[int, int]:
    """(NFE, DiT blocks run) for one clip at these settings."""
    from tunesmith.diffusion.generator import default_of
    from tunesmith.diffusion.samplers import expected_nfe, get_sigmas

    settings = {**generator.sampler_defaults, **controls}
    gen = generator.generate_latents
    steps = int(settings.get("steps", default_of(gen, "steps")))
    sampler = settings.get("sampler", default_of(gen, "sampler"))
    sigmas = get_sigmas(settings.get("schedule", default_of(gen, "schedule")), steps,
                        float(settings.get("sigma_min", default_of(gen, "sigma_min"))),
                        float(settings.get("sigma_max", default_of(gen, "sigma_max"))))
    nfe = expected_nfe(sampler, steps)
    skip = generator.model.layer_skip
    depth = generator.model.config.depth
    blocks = sum(depth if skip is None else skip.blocks_run(float(s)) for s in sigmas[:-1])
    return nfe, int(blocks * nfe / max(1, steps))


def timing(generator: Any, controls: dict[str, Any], duration: float, repeats: int) -> dict[str, float]:
    """Warm seconds for one clip (the whole ``generate`` call), and the split: text encoder, DiT
    sampling, VAE decode, and the rest (loudness normalisation); medians."""
    prompt = "A lively march for brass band in B-flat major, 120 BPM."
    generator.generate(prompt, duration, seed=0, **controls)  # warm-up
    parts: dict[str, list[float]] = {"total": [], "text": [], "dit": [], "decode": []}
    settings = {**generator.sampler_defaults, **controls}
    cfg = settings.pop("cfg", generator.cfg)
    for r in range(repeats):
        t0 = time.perf_counter()
        generator.generate(prompt, duration, seed=r, **controls)
        parts["total"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cond, uncond = generator.conditioning([prompt], duration)
        t1 = time.perf_counter()
        latents = generator.generate_latents(cond, uncond, generator.num_frames(duration), r, cfg=cfg, **settings).latents
        t2 = time.perf_counter()
        generator.decode_latents(latents, duration)
        t3 = time.perf_counter()
        for key, value in (("text", t1 - t0), ("dit", t2 - t1), ("decode", t3 - t2)):
            parts[key].append(value)
    out = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    out["other"] = round(max(0.0, out["total"] - out["text"] - out["dit"] - out["decode"]), 3)
    return out


def diversity(generator: Any, controls: dict[str, Any], clap: Any, prompts: list[str], seeds: int) -> float:
    """Mean pairwise 1 - cosine of CLAP audio embeddings between seeds of one prompt, over prompts."""
    distances = []
    for prompt in prompts:
        audio = generator.generate([prompt] * seeds, 10.0, list(range(seeds)), **controls)
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(clap.embed_audio(audio.samples.mean(1, keepdim=True), audio.sample_rate), dim=-1)
        sim = emb @ emb.T
        iu = torch.triu_indices(seeds, seeds, 1)
        distances.append(float((1 - sim[iu[0], iu[1]]).mean()))
    return float(np.mean(distances))


def evaluate_row(generator: Any, controls: dict[str, Any], bench_specs: list, free_specs: list, reference_dir: Path,
                 out: Path) -> dict[str, Any]:
    """The benchmark (FAD, CLAP score, adherence) and, when ``free_specs`` is not empty, the free sets."""
    from tunesmith.eval.evaluate import EvalOptions, evaluate

    wrapped = WithControls(generator, **controls)
    row: dict[str, Any] = {}
    results = evaluate(wrapped, bench_specs, out / "benchmark", EvalOptions(reference_dir=reference_dir, progress=False,
                                                                           fad_rounds=50))
    s = results["summary"]
    row["benchmark"] = {"fad_mel": results.get("fad_mel_stats", {}).get("fad"),
                        "fad_clap": results.get("fad_clap", {}).get("fad"),
                        "clap_score": s["clap_score"].get("mean"), "tempo": s.get("tempo_within_10pct"),
                        "mode": s.get("mode_accuracy"), "family": s.get("instrument_family_accuracy")}
    row["free"] = {"tempo": None, "mode": None, "family": None}
    if free_specs:
        free = evaluate(wrapped, free_specs, out / "free", EvalOptions(progress=False, fad_rounds=10))["summary"]
        row["free"] = {"tempo": free.get("tempo_within_10pct"), "mode": free.get("mode_accuracy"),
                       "family": free.get("instrument_family_accuracy")}
    return row


def layer_student(teacher_dir: Path, calibrated: bool, cache: str) -> Any:
    """The teacher with Presto-L's budget: gains calibrated from the teacher (no training), or 1 (plain dropping)."""
    from tunesmith.config import preset
    from tunesmith.diffusion.generator import LatentDiffusionGenerator
    from tunesmith.distill.train import make_task
    from tunesmith.generator import load_generator

    config = preset("run/distill", "small")
    config.teacher, config.distill.method, config.data.cache_dir = str(teacher_dir), "layers", cache
    config.model.skip_sigmas, config.model.skip_blocks = BUDGET["skip_sigmas"], BUDGET["skip_blocks"]
    task = make_task(config)
    student = task.model.eval()
    if not calibrated:
        student.layer_skip.gains.data.fill_(1.0)
    teacher = load_generator(teacher_dir)
    return LatentDiffusionGenerator(student, teacher.codec, teacher.text_encoder, text_encoder_name=teacher.text_encoder_name,
                                    latent_scale=teacher.latent_scale, cfg=teacher.cfg)


def _fmt(x: Any) -> str:
    if isinstance(x, dict):
        return f"{x.get('rate', float('nan')):.2f}" if "rate" in x else str(x)
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="tunesmith-small-dit")
    parser.add_argument("--student", help="a Presto-S student directory (tunesmith train distill --export)")
    parser.add_argument("--layers", help="a trained Presto-L student directory")
    parser.add_argument("--ls", help="a Presto-LS student directory")
    parser.add_argument("--consistency", help="a consistency-distilled student directory")
    parser.add_argument("--benchmark", default="/work/data/bench-v3", help="benchmark folder (prompts.jsonl + reference/); built from --manifest if missing")
    parser.add_argument("--manifest", default="/work/data/corpus-v3/manifest.jsonl")
    parser.add_argument("--cache", default="/work/data/cache/vae-24k-v3", help="latent cache (Presto-L calibration)")
    parser.add_argument("--work", default="/tmp/bench-distill")
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="8 benchmark and 8 free prompts, 2 diversity prompts, 1 timing repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--free", type=int, default=0, metavar="N",
                        help="use the first N/2 prompts of each free-wording set (default: all 144)")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only the rows whose name starts with this (repeatable); the shipped teacher always runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tunesmith.checkpoint import resolve
    from tunesmith.clap import DEFAULT_CLAP, load_clap
    from tunesmith.eval.benchmark import build_benchmark
    from tunesmith.eval.prompts import read_prompts
    from tunesmith.generator import load_generator
    import tunesmith.eval as eval_pkg

    bench_dir = Path(args.benchmark)
    if not (bench_dir / "prompts.jsonl").is_file():
        build_benchmark(args.manifest, bench_dir, count=41, duration=10.0, progress=False)
    bench_specs = read_prompts(bench_dir / "prompts.jsonl")
    root = Path(eval_pkg.__file__).parent
    free_specs = [s for name in ("free_prompts.jsonl", "free_prompts_2.jsonl") for s in read_prompts(root / name)]
    if args.free:
        sets = [read_prompts(root / name) for name in ("free_prompts.jsonl", "free_prompts_2.jsonl")]
        free_specs = sets[0][: args.free // 2] + sets[1][: args.free - args.free // 2]
    if args.quick:
        bench_specs, free_specs = bench_specs[:8], free_specs[:4] + free_specs[-4:]
    repeats, div_prompts = (1, DIVERSITY_PROMPTS[:2]) if args.quick else (3, DIVERSITY_PROMPTS)
    clap = load_clap(DEFAULT_CLAP)

    teacher_dir = resolve(args.teacher)
    teacher = load_generator(teacher_dir)
    rows: list[tuple[str, Any, dict[str, Any]]] = [("teacher (shipped: 12 steps, cfg 4)", teacher, {}),
                                                   ("teacher, 50 steps", teacher, {"steps": 50})]
    student = None
    if args.student:
        student = load_generator(args.student)
        own = int(student.sampler_defaults.get("steps", 4))
        rows += [(f"presto-s, {n} step{'s' * (n > 1)}", student, {"steps": n}) for n in sorted({1, 2, 4, own})]
        # where the student started: the teacher's weights under the student's sampler, no CFG pass
        from tunesmith.diffusion.generator import LatentDiffusionGenerator

        start = LatentDiffusionGenerator(teacher.model, teacher.codec, teacher.text_encoder,
                                         text_encoder_name=teacher.text_encoder_name, latent_scale=teacher.latent_scale,
                                         cfg=1.0, sampling=student.sampler_defaults)
        rows.append((f"untrained student (teacher weights, {own} pingpong steps)", start, {}))
    if args.layers:
        rows.append(("presto-l", load_generator(args.layers), {}))
    else:
        rows.append(("presto-l (calibrated, untrained)", layer_student(teacher_dir, True, args.cache), {}))
    rows.append(("plain layer dropping (same budget)", layer_student(teacher_dir, False, args.cache), {}))
    if args.ls:
        rows.append(("presto-ls", load_generator(args.ls), {}))
    if args.consistency:
        cd = load_generator(args.consistency)
        rows += [(f"consistency, {n} step{'s' * (n > 1)}", cd, {"steps": n}) for n in (1, 2, 4)]

    if args.only:
        rows = [rows[0]] + [r for r in rows[1:] if any(r[0].startswith(p) for p in args.only)]
    work = Path(args.work)
    table = []
    for i, (name, generator, controls) in enumerate(rows):
        print(f"[{i + 1}/{len(rows)}] {name}", file=sys.stderr)
        nfe, blocks = blocks_per_clip(generator, controls)
        full = name not in LIGHT_ROWS  # the slow reference row: benchmark and 10-s timing only
        row = {"name": name, "controls": controls, "nfe": nfe, "blocks": blocks,
               "seconds_10s": timing(generator, controls, 10.0, repeats if full else 1),
               "seconds_30s": timing(generator, controls, 30.0, repeats) if full else None}
        row.update(evaluate_row(generator, controls, bench_specs, free_specs if full else [], bench_dir / "reference",
                                work / f"row{i}"))
        row["diversity"] = diversity(generator, controls, clap, div_prompts, 4) if full else None
        table.append(row)
        print(json.dumps(row), file=sys.stderr)

    report: dict[str, Any] = {"rows": table, "benchmark_prompts": len(bench_specs), "free_prompts": len(free_specs),
                              "quick": args.quick, "threads": args.threads, "budget": BUDGET}
    if student is not None:
        base = table[0]
        own = next(r for r in table if r["name"].startswith("presto-s") and r["controls"]["steps"] == int(student.sampler_defaults.get("steps", 4)))

        def ratio(a: Any, b: Any) -> float | None:
            return None if a is None or b in (None, 0) else round(a / b, 3)

        report.update(nfe_student=own["nfe"], speedup_10s=ratio(base["seconds_10s"]["total"], own["seconds_10s"]["total"]),
                      fad_mel_ratio=ratio(own["benchmark"]["fad_mel"], base["benchmark"]["fad_mel"]),
                      fad_clap_ratio=ratio(own["benchmark"]["fad_clap"], base["benchmark"]["fad_clap"]),
                      diversity_ratio=ratio(own["diversity"], base["diversity"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print("name | NFE | blocks | s/10s | s/30s | FAD mel | FAD clap | CLAP | tempo/mode/family (bench) | free | diversity")
    for r in table:
        b, f = r["benchmark"], r["free"]
        s30 = r["seconds_30s"]["total"] if r["seconds_30s"] else "-"
        print(f"{r['name']} | {r['nfe']} | {r['blocks']} | {r['seconds_10s']['total']} | {s30} | "
              f"{_fmt(b['fad_mel'])} | {_fmt(b['fad_clap'])} | {_fmt(b['clap_score'])} | "
              f"{_fmt(b['tempo'])}/{_fmt(b['mode'])}/{_fmt(b['family'])} | {_fmt(f['tempo'])}/{_fmt(f['mode'])}/{_fmt(f['family'])} | "
              f"{_fmt(r['diversity'])}")
    if student is not None:
        print(f"summary: student NFE {report['nfe_student']}, speed-up {report['speedup_10s']}x for 10 s, FAD ratios "
              f"{report['fad_mel_ratio']} (mel) / {report['fad_clap_ratio']} (CLAP), diversity ratio {report['diversity_ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
