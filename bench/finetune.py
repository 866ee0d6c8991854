"""Benchmark: LoRA fine-tuning of the default DiT on real recordings it has never heard.

The base model was trained only on FluidSynth renders of public-domain scores; this
benchmark fine-tunes it on real orchestral game music (Debian's ``wesnoth-1.16-music``,
GPL-2+, 41 tracks, 128 minutes; the tracks and their licence are listed in
docs/finetune.md), split by track:

- held-out tracks: 10 s reference windows, never trained on;
- training tracks: about 30 minutes of audio, given to ``tunesmith finetune`` as a folder
  (no captions: the automatic tempo/key/instrument captioner writes them).

Measured, in this one run: FAD (mel statistics and CLAP embeddings, with bootstrap
intervals) of the base and of the adapter to the held-out windows, generating one clip per
reference window from that window's automatic caption (the same prompts and seeds for
both); CLAP score on those prompts; text adherence of base and adapter on the two
free-wording prompt sets (tempo, mode, instrument family with Wilson intervals, CLAP
score); the minutes the fine-tune took (indexing, captioning, encoding, training) and the
peak memory of the process.

    apt-get download wesnoth-1.16-music && dpkg -x wesnoth-1.16-music_*.deb /tmp/wesnoth
    nice -n 10 python bench/finetune.py --tracks /tmp/wesnoth/usr/share/games/wesnoth/1.16/data/core/music \\
        --work /tmp/bench-finetune --json docs/finetune_bench.json [--quick]

Every stage leaves its result in ``--work``; run the same command again after an
interruption and finished stages are read back, training resumes from its checkpoint.

JSON top level: ``fad_heldout_before``, ``fad_heldout_after`` (mel statistics),
``fad_heldout_reduction`` (1 - after / before), the same for the CLAP embedding, and ``minutes``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TRACKS = "/tmp/ftdeb/wesnoth/usr/share/games/wesnoth/1.16/data/core/music"
PACKAGE = "wesnoth-1.16-music (Debian, version 1:1.16.9-1), GPL-2+"
MIN_TRACK_SECONDS = 30.0  # shorter stingers (victory, defeat) are left out of the held-out set
WINDOW = 10.0


def choose_tracks(tracks: Path, train_minutes: float, heldout_tracks: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training tracks of about ``train_minutes`` in all, held-out tracks), chosen by a seeded hash."""
    import soundfile as sf

    from tunesmith.data.manifest import stable_hash

    files = sorted(tracks.glob("*.ogg"))
    if not files:
        raise SystemExit(f"no .ogg tracks in {tracks}: apt-get download wesnoth-1.16-music and dpkg -x it (see --help)")
    order = sorted(files, key=lambda f: stable_hash(f"{seed}:{f.name}"))
    long = [f for f in order if sf.info(str(f)).duration >= MIN_TRACK_SECONDS]
    heldout = sorted(long[:heldout_tracks])
    train, total = [], 0.0
    for f in order:
        if f in heldout:
            continue
        if total >= train_minutes * 60:
            break
        train.append(f)
        total += sf.info(str(f)).duration
    return sorted(train), heldout


def reference_windows(heldout: list[Path], per_track: int, sample_rate: int) -> list[tuple[str, Any]]:
    """``per_track`` evenly spaced 10 s mono windows of each held-out track (silent ones skipped)."""
    from tunesmith.audio import load_audio, rms_db

    out = []
    for path in heldout:
        audio = load_audio(path, sample_rate=sample_rate, channels=1)
        samples = audio.samples
        size = int(WINDOW * sample_rate)
        span = samples.shape[-1] - size
        for k in range(per_track):
            start = int(span * (k + 0.5) / per_track)
            window = samples[:, start:start + size]
            if window.shape[-1] == size and rms_db(window) > -45:
                out.append((f"{path.stem}@{start / sample_rate:.0f}s", window))
    return out


def stage(work: Path, name: str, compute) -> Any:
    """A stage's result from ``work/name.json`` when it is there, else computed and stored."""
    path = work / f"{name}.json"
    if path.is_file():
        print(f"[{name}] read back from {path}", file=sys.stderr)
        return json.loads(path.read_text())
    start = time.monotonic()
    result = compute()
    result["stage_minutes"] = round((time.monotonic() - start) / 60, 2)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{name}] done in {result['stage_minutes']:.1f} min", file=sys.stderr)
    return result


def heldout_set(work: Path, heldout: list[Path], per_track: int) -> dict[str, Any]:
    """The reference windows, written as wav, with their automatic captions (the generation prompts)."""
    from tunesmith.adapters.autocaption import AutoCaptioner
    from tunesmith.audio import save_audio

    folder = work / "heldout"
    folder.mkdir(exist_ok=True)
    captioner = AutoCaptioner()
    items = []
    for i, (name, wav) in enumerate(reference_windows(heldout, per_track, 24000)):
        caption, tags = captioner(wav, 24000)
        path = save_audio(folder / f"{i:03d}.wav", wav, 24000)
        items.append({"id": f"{i:03d}", "window": name, "audio": str(path), "prompt": caption, "tags": tags})
    return {"items": items}


def fad_set(generator, items: list[dict[str, Any]], clap, out: Path, reference_lufs: float | None) -> dict[str, Any]:
    """Generate one clip per reference (its caption, seed i), then score them (:func:`score_set`)."""
    from tunesmith.audio import save_audio

    out.mkdir(parents=True, exist_ok=True)
    seconds = []
    for i, it in enumerate(items):
        start = time.perf_counter()
        audio = generator.generate([it["prompt"]], WINDOW, seed=i)
        seconds.append(time.perf_counter() - start)
        save_audio(out / f"{it['id']}.wav", audio.samples[0], audio.sample_rate, format="wav")
    return {**score_set(items, clap, out, reference_lufs), "generation_seconds_median": float(np.median(seconds))}


def score_set(items: list[dict[str, Any]], clap, out: Path, reference_lufs: float | None) -> dict[str, Any]:
    """FAD (mel statistics, CLAP) of the clips saved in ``out`` to the reference windows, and CLAP score.

    The references are brought to ``reference_lufs`` first, the loudness every tunesmith generator
    delivers (-16 LUFS by default): the mel-statistics embedding is level-sensitive, and the
    windows keep their tracks' own mastering levels (-21 dB RMS with a 4.5 dB spread here), so
    unmatched, FAD would mostly measure the output normaliser, not the style."""
    import torch

    from tunesmith.audio import load_audio
    from tunesmith.eval import metrics as M
    from tunesmith.loudness import LoudnessTarget, normalise

    gen_mel, gen_clap, ref_mel, ref_clap, scores = [], [], [], [], []
    text = clap.embed_text([it["prompt"] for it in items])
    for i, it in enumerate(items):
        gen = load_audio(out / f"{it['id']}.wav")
        ref = load_audio(it["audio"])
        ref_wav = ref.samples
        if reference_lufs is not None:
            ref_wav, _ = normalise(ref_wav, ref.sample_rate, LoudnessTarget(reference_lufs))
        gen_mel.append(M.mel_statistics_embedding(gen.samples.mean(0), gen.sample_rate))
        ref_mel.append(M.mel_statistics_embedding(ref_wav[0], ref.sample_rate))
        with torch.inference_mode():
            gen_clap.append(clap.embed_audio(gen.samples[None], gen.sample_rate))
            ref_clap.append(clap.embed_audio(ref_wav[None], ref.sample_rate))
        scores.append(float(M.clap_score(gen_clap[-1], text[i:i + 1])[0]))
    gm, rm = np.concatenate(gen_mel), np.concatenate(ref_mel)
    gc, rc = torch.cat(gen_clap).double().numpy(), torch.cat(ref_clap).double().numpy()
    return {"fad_mel_stats": M.fad_with_uncertainty(gm, rm, rounds=200, seed=0).to_dict(),
            "fad_clap": M.fad_with_uncertainty(gc, rc, rounds=200, seed=0).to_dict(),
            "clap_score": _mean_ci(scores), "clips": len(items), "reference_lufs": reference_lufs}


def rescored(work: Path, name: str, stage_result: dict[str, Any], items, clap, audio: Path,
             reference_lufs: float | None) -> dict[str, Any]:
    """A stored stage scored again from its saved audio when it was scored against references at
    another loudness (no generation repeated)."""
    if stage_result["fad_set"].get("reference_lufs", "raw") == reference_lufs:
        return stage_result
    print(f"[{name}] scoring the saved clips against references at {reference_lufs} LUFS", file=sys.stderr)
    kept = {k: v for k, v in stage_result["fad_set"].items() if k == "generation_seconds_median"}
    stage_result["fad_set"] = {**score_set(items, clap, audio, reference_lufs), **kept}
    (work / f"{name}.json").write_text(json.dumps(stage_result, indent=2) + "\n")
    return stage_result


def _mean_ci(values: list[float], rounds: int = 1000) -> dict[str, float]:
    """Mean with a bootstrap 95% interval."""
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(0)
    means = [arr[rng.integers(0, len(arr), len(arr))].mean() for _ in range(rounds)]
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(arr.mean()), "ci95": [float(low), float(high)], "count": int(arr.size)}


def adherence(generator, out: Path, limit: int | None) -> dict[str, Any]:
    """The evaluator on both free-wording sets (one draw per prompt): tempo, mode, family, CLAP score."""
    import tunesmith.eval as eval_pkg
    from tunesmith.eval.evaluate import EvalOptions, evaluate
    from tunesmith.eval.prompts import read_prompts

    root = Path(eval_pkg.__file__).parent
    specs = [s for name in ("free_prompts.jsonl", "free_prompts_2.jsonl") for s in read_prompts(root / name)]
    specs = specs[:limit] if limit else specs
    results = evaluate(generator, specs, out, EvalOptions(progress=False, fad_rounds=50))
    s = results["summary"]
    scores = [r["clap_score"] for r in results["items"] if r.get("clap_score") is not None]
    return {"prompts": len(specs), "tempo_within_10pct": s["tempo_within_10pct"], "mode_accuracy": s["mode_accuracy"],
            "instrument_family_accuracy": s["instrument_family_accuracy"], "clap_score": _mean_ci(scores),
            "clap_scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", default=DEFAULT_TRACKS, help="folder of the package's .ogg tracks")
    parser.add_argument("--work", default="/tmp/bench-finetune", help="stage results, the run, the adapter")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a small slice: 2 training minutes, 4 steps, 4 + 4 prompts")
    parser.add_argument("--train-minutes", type=float, default=30.0)
    parser.add_argument("--heldout-tracks", type=int, default=8)
    parser.add_argument("--windows-per-track", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--prior-share", type=float, default=0.0, help="prior preservation share (0: the folder alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-lufs", type=float, default=-16.0,
                        help="bring the reference windows to this loudness before FAD (the generators' output "
                             "loudness; the mel-statistics embedding is level-sensitive)")
    parser.add_argument("--also-scale", type=float, action="append", default=[], metavar="S",
                        help="also measure the adapter at this strength (repeatable), e.g. 0.5")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_minutes, args.heldout_tracks, args.windows_per_track, args.steps, args.batch_size = 2.0, 2, 2, 4, 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    import tunesmith
    from tunesmith.adapters.data import DataOptions
    from tunesmith.adapters.finetune import FinetuneConfig, run_finetune
    from tunesmith.adapters.lora import LoraSettings
    from tunesmith.clap import load_clap

    train_tracks, heldout = choose_tracks(Path(args.tracks), args.train_minutes, args.heldout_tracks, args.seed)
    folder = work / "train-tracks"
    if not folder.is_dir():
        folder.mkdir()
        for track in train_tracks:
            if args.quick:  # the first 60 s of each track
                from tunesmith.audio import load_audio, save_audio

                audio = load_audio(track, max_seconds=60)
                save_audio(folder / f"{track.stem}.flac", audio.samples, audio.sample_rate)
            else:
                shutil.copy(track, folder / track.name)
    print(f"training tracks ({len(train_tracks)}): {', '.join(t.stem for t in train_tracks)}\n"
          f"held-out tracks ({len(heldout)}): {', '.join(t.stem for t in heldout)}", file=sys.stderr)

    heldout_stage = stage(work, "heldout", lambda: heldout_set(work, heldout, args.windows_per_track))
    refs = heldout_stage["items"]
    if args.quick:
        refs = refs[:4]
    clap = load_clap()
    limit = 4 if args.quick else None
    base = tunesmith.load()
    lufs = args.reference_lufs
    before = stage(work, "before", lambda: {"fad_set": fad_set(base, refs, clap, work / "gen-before", lufs),
                                            "free_wording": adherence(base, work / "eval-before", limit)})
    before = rescored(work, "before", before, refs, clap, work / "gen-before", lufs)

    config = FinetuneConfig(folder=str(folder), model=tunesmith.DEFAULT_GENERATOR, out=str(work / "adapter"),
                            run_dir=str(work / "run"), lora=LoraSettings(rank=args.rank), data=DataOptions(seed=args.seed),
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr, prior_share=args.prior_share,
                            valid_every=max(2, args.steps // 5), patience=3, valid_windows=12, seed=args.seed,
                            progress=True)

    def train() -> dict[str, Any]:
        resume = (work / "run" / "checkpoints" / "latest").exists()
        result = run_finetune(config, resume=resume)
        if result.interrupted:
            raise SystemExit("interrupted: run the same command again to resume")
        return {"adapter": str(result.adapter), "steps": result.steps, "best_step": result.best_step,
                "valid_loss_base": result.valid_loss_base, "valid_loss_best": result.valid_loss_best,
                "stopped_early": result.stopped_early, "minutes": result.minutes, "data": result.data,
                "prior_clips": json.loads((Path(result.adapter) / "config.json").read_text())["training"]["prior_clips"],
                "resumed": resume, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}

    trained = stage(work, "train", train)
    adapted = tunesmith.load(trained["adapter"])
    after = stage(work, "after", lambda: {"fad_set": fad_set(adapted, refs, clap, work / "gen-after", lufs),
                                          "free_wording": adherence(adapted, work / "eval-after", limit)})
    after = rescored(work, "after", after, refs, clap, work / "gen-after", lufs)

    scaled = {}
    for scale in args.also_scale:
        weaker = tunesmith.load(trained["adapter"], adapter_scale=scale)
        scaled[f"{scale:g}"] = rescored(work, f"after_scale_{scale:g}", stage(work, f"after_scale_{scale:g}", lambda g=weaker, s=scale: {
            "fad_set": fad_set(g, refs, clap, work / f"gen-after-{s:g}", lufs),
            "free_wording": adherence(g, work / f"eval-after-{s:g}", limit)}), refs, clap, work / f"gen-after-{scale:g}", lufs)

    result: dict[str, Any] = {"bench": "finetune", "quick": args.quick, "dataset": PACKAGE,
                              "train_tracks": [t.name for t in train_tracks], "heldout_tracks": [t.name for t in heldout],
                              "train_audio_minutes": round(trained["data"]["hours"] * 60, 1),
                              "heldout_windows": len(refs), "settings": {k: getattr(args, k) for k in (
                                  "steps", "batch_size", "lr", "rank", "prior_share", "reference_lufs", "seed")}}
    for embedding, key in (("mel_stats", "fad_mel_stats"), ("clap", "fad_clap")):
        b, a = before["fad_set"][key]["fad"], after["fad_set"][key]["fad"]
        suffix = "" if embedding == "mel_stats" else "_clap"
        result[f"fad_heldout_before{suffix}"] = b
        result[f"fad_heldout_after{suffix}"] = a
        result[f"fad_heldout_reduction{suffix}"] = 1 - a / b if b else None
    result["minutes"] = trained["minutes"]["total"]
    result["minutes_detail"] = trained["minutes"]
    result["peak_rss_mb"] = trained["peak_rss_mb"]
    result["training"] = {k: trained.get(k) for k in ("steps", "best_step", "valid_loss_base", "valid_loss_best",
                                                       "stopped_early", "data", "prior_clips")}
    result["before"], result["after"] = before, after
    base_scores = np.asarray(before["free_wording"]["clap_scores"])
    result["free_wording_clap_score_change"] = _mean_ci(
        (np.asarray(after["free_wording"]["clap_scores"]) - base_scores).tolist())
    for scale, measured in scaled.items():  # a weaker adapter: how much style, how much text adherence
        b_mel, b_clap = before["fad_set"]["fad_mel_stats"]["fad"], before["fad_set"]["fad_clap"]["fad"]
        measured["fad_heldout_reduction"] = 1 - measured["fad_set"]["fad_mel_stats"]["fad"] / b_mel
        measured["fad_heldout_reduction_clap"] = 1 - measured["fad_set"]["fad_clap"]["fad"] / b_clap
        measured["free_wording_clap_score_change"] = _mean_ci(
            (np.asarray(measured["free_wording"]["clap_scores"]) - base_scores).tolist())
    result["adapter_scales"] = scaled
    stages = [heldout_stage, before, trained, after, *scaled.values()]
    result["bench_minutes"] = round(sum(x.get("stage_minutes", 0.0) for x in stages), 1)  # also over resumed runs
    result["this_run_minutes"] = round((time.monotonic() - started) / 60, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    red, red_c = result["fad_heldout_reduction"], result["fad_heldout_reduction_clap"]
    change = result["free_wording_clap_score_change"]
    print(f"fine-tune on {result['train_audio_minutes']:.0f} min of held-out-style audio in {result['minutes']:.1f} min: "
          f"FAD to held-out tracks {result['fad_heldout_before']:.2f} -> {result['fad_heldout_after']:.2f} "
          f"({100 * red:.0f}% lower; CLAP-FAD {100 * red_c:.0f}% lower); free-wording CLAP score change "
          f"{change['mean']:+.3f} [{change['ci95'][0]:+.3f}, {change['ci95'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
