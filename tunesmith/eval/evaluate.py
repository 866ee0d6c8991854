"""Run a generator on a prompt set and measure everything: the engine behind `tunesmith eval`.

The evaluator talks to a generator only through ``tunesmith.generator.Generator``:
``generate([prompt], duration, seed, **controls) -> Audio``.  For each prompt it keeps
the audio, the time it took, and what the signal says (tempo, key), then, over the set,
what the CLAP says (text agreement, instrument family, tag distributions) and how far the
set is from real references (FAD in two embeddings, KL), and how close it comes to
training clips (memorization).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.audio import Audio, AudioError, load_audio, save_audio
from tunesmith.codec.roundtrip import round_trip
from tunesmith.eval import metrics as M
from tunesmith.eval.prompts import PromptSpec
from tunesmith.loudness import integrated_loudness

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

# What issue 9 asks of a shipped model (fractions of prompts / of the references' score).
TARGETS = {
    "instrument_family_accuracy": 0.70,
    "tempo_within_10pct": 0.60,
    "mode_accuracy": 0.70,
    "clap_score_ratio": 0.80,
}


@dataclass
class EvalOptions:
    reference_dir: Path | None = None
    clap: str | None = None  # CLAP name or directory; None: the bundled one if present
    require_clap: bool = False
    train_manifest: Path | None = None  # memorization check against these clips
    memorization_clips: int = 400
    memorization_threshold_chroma: float = 0.95
    memorization_threshold_clap: float = 0.98
    fad_rounds: int = 200
    seed: int = 0
    progress: bool = True
    # Generate with every condition dropped (the CFG null prompt): the baseline that shows
    # what the text conditioning adds (issue 9 asks for FAD conditional vs unconditional).
    unconditional: bool = False
    # Score the references after a round trip through this codec (name or directory):
    # the codec-reconstruction floor that issue 9 asks to report beside a generator's FAD.
    through_codec: str | None = None
    codec_codebooks: int | None = None


def _tqdm(iterable, progress: bool, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not progress, dynamic_ncols=True, **kwargs)


def load_clap_or_none(name: str | None, required: bool):
    """The CLAP to score with, or None (with the reason) when none is available."""
    from tunesmith.checkpoint import CheckpointError
    from tunesmith.clap import DEFAULT_CLAP, load_clap

    try:
        return load_clap(name or DEFAULT_CLAP), None
    except CheckpointError as err:
        if required or name is not None:
            raise
        return None, f"no CLAP model available ({err}); CLAP-based metrics skipped"


def generate_all(generator, specs: list[PromptSpec], audio_dir: Path, progress: bool = True,
                 unconditional: bool = False) -> list[dict[str, Any]]:
    """Generate one clip per prompt, timing each call; audio is written to ``audio_dir``."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for spec in _tqdm(specs, progress, desc="generate"):
        controls: dict[str, Any] = {"unconditional": True} if unconditional else {}
        if spec.melody:
            controls["melody"] = load_audio(spec.melody, sample_rate=generator.sample_rate)
        start = time.perf_counter()
        out: Audio = generator.generate([spec.prompt], spec.duration, spec.seed, progress=False, **controls)
        seconds = time.perf_counter() - start
        samples = out.samples
        if samples.dim() == 3:
            samples = samples[0]
        if samples.dim() != 2 or samples.shape[-1] == 0:
            raise AudioError(f"generator returned audio of shape {tuple(out.samples.shape)} for prompt '{spec.id}'")
        path = save_audio(audio_dir / f"{spec.id}.wav", samples.float().cpu(), out.sample_rate)
        items.append({
            "id": spec.id, "prompt": spec.prompt, "audio": str(path.relative_to(audio_dir.parent)),
            "wav": samples.float().cpu(), "sample_rate": out.sample_rate,
            "duration": samples.shape[-1] / out.sample_rate, "seconds": seconds,
            "rtf": M.real_time_factor(seconds, samples.shape[-1] / out.sample_rate),
        })
    return items


def reference_items(specs: list[PromptSpec], reference_dir: Path | None, audio_dir: Path,
                    through_codec: Any = None, num_codebooks: int | None = None) -> list[dict[str, Any]]:
    """The reference clips in place of generated audio (copied to ``audio_dir``; no timing).

    With ``through_codec`` (a codec model) each clip is encoded and decoded first: what a
    generator that produced the references' own tokens or latents would score, the floor
    of every generator built on that codec.  ``num_codebooks`` limits an RVQ codec's stages.
    """
    audio_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for spec in specs:
        audio = load_audio(_reference_audio(spec, reference_dir))
        samples = audio.samples[:, : int(round(spec.duration * audio.sample_rate))]
        if through_codec is not None:
            samples = round_trip(through_codec, samples, audio.sample_rate, num_codebooks)
        path = save_audio(audio_dir / f"{spec.id}.wav", samples, audio.sample_rate)
        items.append({
            "id": spec.id, "prompt": spec.prompt, "audio": str(path.relative_to(audio_dir.parent)), "wav": samples,
            "sample_rate": audio.sample_rate, "duration": samples.shape[-1] / audio.sample_rate,
            "seconds": None, "rtf": None,
        })
    return items


def _safely(fn, *args, **kwargs):
    """Run a metric; a ValueError (silent or pulse-less audio...) becomes (None, reason)."""
    try:
        return fn(*args, **kwargs), None
    except ValueError as err:
        return None, str(err)


def signal_metrics(item: dict[str, Any], spec: PromptSpec) -> dict[str, Any]:
    """Tempo, key and melody of one generated clip against what its prompt asked for."""
    wav, sr = item["wav"], item["sample_rate"]
    row: dict[str, Any] = {"notes": []}
    silent = float(wav.abs().max()) < 1e-4
    if silent:
        row["notes"].append("generated audio is silent")
    tempo, why = (None, "silent") if silent else _safely(M.estimate_tempo, wav, sr)
    row["tempo_estimated"] = tempo
    row["tempo_target"] = spec.tempo_bpm
    if why and not silent:
        row["notes"].append(f"tempo: {why}")
    if spec.tempo_bpm is not None:
        if tempo is None:
            row.update(tempo_rel_error=None, tempo_within_10pct=False, tempo_acc1=False, tempo_acc2=False)
        else:
            row["tempo_rel_error"] = M.tempo_relative_error(tempo, spec.tempo_bpm)
            row["tempo_within_10pct"] = row["tempo_rel_error"] <= 0.10
            row["tempo_acc1"] = M.tempo_match(tempo, spec.tempo_bpm, 0.04)
            row["tempo_acc2"] = M.tempo_match(tempo, spec.tempo_bpm, 0.04, octave=True)
    row["clipping_rate"] = M.clipping_rate(wav)
    lufs = integrated_loudness(wav.reshape(-1, wav.shape[-1]), sr)
    row["loudness_lufs"] = lufs if math.isfinite(lufs) else None
    key, why = (None, "silent") if silent else _safely(M.estimate_key, wav, sr)
    row["key_estimated"] = key.name if key else None
    target = spec.target_key
    row["key_target"] = target.name if target else None
    row["mode_target"] = spec.mode
    if target is not None:
        row["key_correct"] = key == target
        row["key_mirex"] = M.mirex_key_score(key, target) if key else 0.0
    if spec.mode is not None:
        row["mode_correct"] = key is not None and key.mode == spec.mode
    if spec.melody:
        melody = load_audio(spec.melody, sample_rate=sr)
        value, why = (None, "silent") if silent else _safely(M.chroma_cosine_similarity, wav, melody.samples, sr)
        row["melody_chroma_cosine"] = value
    return row


def _reference_audio(spec: PromptSpec, reference_dir: Path | None) -> Path | None:
    if spec.reference:
        return Path(spec.reference)
    if reference_dir is not None:
        for suffix in AUDIO_SUFFIXES:
            candidate = reference_dir / f"{spec.id}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def with_draws(specs: list[PromptSpec], draws: int, reference_dir: Path | None = None) -> list[PromptSpec]:
    """Every prompt ``draws`` times, with seeds seed, seed + 1, ...: rates then count every
    draw, which narrows their uncertainty without changing what they measure.  Draw j of
    prompt "p7" is "p7-d<j>" and keeps the prompt's reference."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if draws == 1:
        return list(specs)
    out = []
    for spec in specs:
        reference = _reference_audio(spec, reference_dir)
        out += [replace(spec, id=f"{spec.id}-d{j}", seed=spec.seed + j, reference=str(reference) if reference else None)
                for j in range(draws)]
    return out


def _mel_embeddings(clips: list[tuple[torch.Tensor, int]]) -> np.ndarray:
    return np.concatenate([M.mel_statistics_embedding(w, sr) for w, sr in clips])


def _fad(gen: np.ndarray, ref: np.ndarray, rounds: int, seed: int) -> dict[str, Any]:
    if len(gen) < 2 or len(ref) < 2:
        return {"error": f"need at least 2 embeddings per set (generated {len(gen)}, reference {len(ref)})"}
    return M.fad_with_uncertainty(gen, ref, rounds=rounds, seed=seed).to_dict()


def evaluate(generator, specs: list[PromptSpec], out_dir: Path, options: EvalOptions, *, model_name: str = "") -> dict[str, Any]:
    """Generate every prompt, measure, and return the results (also what metrics.json holds)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    clap, why = load_clap_or_none(options.clap, options.require_clap)
    if why:
        notes.append(why)

    if generator is None:  # score the references themselves: the ceiling of every metric
        missing = [s.id for s in specs if _reference_audio(s, options.reference_dir) is None]
        if missing:
            raise AudioError(f"no reference audio for prompt(s) {', '.join(missing[:5])}")
        codec = None
        if options.through_codec:
            from tunesmith.checkpoint import load_model

            codec = load_model(options.through_codec)
        items = reference_items(specs, options.reference_dir, out_dir / "audio", codec, options.codec_codebooks)
    else:
        items = generate_all(generator, specs, out_dir / "audio", options.progress, options.unconditional)
    rows = []
    for item, spec in _tqdm(list(zip(items, specs)), options.progress, desc="signal metrics"):
        row = {k: v for k, v in item.items() if k not in ("wav",)}
        row.update(signal_metrics(item, spec))
        row["families_target"] = spec.families
        rows.append(row)

    # References: paired by prompt id (or the prompt's own 'reference'), and the whole folder as a set.
    paired = {spec.id: p for spec in specs if (p := _reference_audio(spec, options.reference_dir)) is not None}
    reference_files = sorted(set(paired.values()) | (
        {p for p in options.reference_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES} if options.reference_dir else set()))
    sr = items[0]["sample_rate"]
    references = {str(p): load_audio(p, sample_rate=sr, channels=1) for p in _tqdm(reference_files, options.progress, desc="references")}

    gen_clips = [(it["wav"].mean(0), it["sample_rate"]) for it in items]
    results: dict[str, Any] = {"model": model_name, "prompts": len(specs), "sample_rate": sr, "notes": notes,
                               "unconditional": options.unconditional}
    if options.through_codec:
        results["through_codec"] = {"codec": options.through_codec, "num_codebooks": options.codec_codebooks}
    if references:
        ref_clips = [(a.samples[0], a.sample_rate) for a in references.values()]
        results["fad_mel_stats"] = _fad(_mel_embeddings(gen_clips), _mel_embeddings(ref_clips), options.fad_rounds, options.seed)
        results["references"] = len(references)

    if clap is not None:
        results.update(_clap_metrics(clap, items, specs, rows, paired, references, options))
    if paired:
        ceiling = _reference_ceiling(specs, paired, references, rows, options)
        ceiling["instrument_family_accuracy"] = results.pop("reference_family_accuracy", {"rate": None, "count": 0})
        results["reference_ceiling"] = ceiling

    if options.train_manifest is not None:
        results["memorization"] = _memorization(items, rows, clap, options)

    results["summary"] = summarize_rows(rows, results)
    results["items"] = rows
    return results


def _clap_metrics(clap, items, specs, rows, paired, references, options: EvalOptions) -> dict[str, Any]:
    from tunesmith.clap.zeroshot import chils, instrument_hierarchy

    out: dict[str, Any] = {}
    gen_emb = torch.cat([clap.embed_audio(it["wav"][None], it["sample_rate"]) for it in items])
    text_emb = clap.embed_text([s.prompt for s in specs])
    scores = M.clap_score(gen_emb, text_emb)
    hierarchy = instrument_hierarchy()
    tags = chils(clap, gen_emb, hierarchy)
    for row, score, family in zip(rows, scores, tags.parents):
        row["clap_score"] = float(score)
        row["family_predicted"] = family
        if row["families_target"]:
            row["family_correct"] = family in row["families_target"]
    if references:
        ref_keys = list(references)
        ref_emb = torch.cat([clap.embed_audio(references[k].samples[None], references[k].sample_rate) for k in ref_keys])
        index = {k: i for i, k in enumerate(ref_keys)}
        out["fad_clap"] = _fad(gen_emb.double().numpy(), ref_emb.double().numpy(), options.fad_rounds, options.seed)
        pairs = [(i, index[str(paired[s.id])]) for i, s in enumerate(specs) if s.id in paired]
        if pairs:
            gi, ri = zip(*pairs)
            ref_scores = M.clap_score(ref_emb[list(ri)], text_emb[list(gi)])
            for (g, _), rs in zip(pairs, ref_scores):
                rows[g]["reference_clap_score"] = float(rs)
            ref_tags = chils(clap, ref_emb[list(ri)], hierarchy)
            out["kl_family_tags"] = M.paired_kl(ref_tags.parent_probs, tags.parent_probs[list(gi)])
            judged = [(specs[g].families, fam) for (g, _), fam in zip(pairs, ref_tags.parents) if specs[g].families]
            if judged:
                out["reference_family_accuracy"] = {"rate": sum(f in t for t, f in judged) / len(judged), "count": len(judged)}
            out["clap_score_references"] = float(np.mean(ref_scores))
            out["clap_score_generated_on_paired"] = float(np.mean(scores[list(gi)]))
    out["clap_model"] = str(getattr(clap, "source", "")) or "clap"
    return out


def _reference_ceiling(specs, paired, references, rows, options: EvalOptions) -> dict[str, Any]:
    """The adherence metrics measured on the real reference clips against the same targets:
    what a perfect generator would score given the estimators' own errors."""
    ref_rows = []
    for spec in specs:
        if spec.id not in paired:
            continue
        audio = references[str(paired[spec.id])]
        ref_rows.append(signal_metrics({"wav": audio.samples, "sample_rate": audio.sample_rate}, spec))
    return {
        "clips": len(ref_rows),
        "tempo_within_10pct": _rate(ref_rows, "tempo_within_10pct"),
        "tempo_acc2_4pct_octave": _rate(ref_rows, "tempo_acc2"),
        "key_accuracy": _rate(ref_rows, "key_correct"),
        "mode_accuracy": _rate(ref_rows, "mode_correct"),
        "instrument_family_accuracy": {"rate": None, "count": 0},
    }


def _memorization(items, rows, clap, options: EvalOptions) -> dict[str, Any]:
    """Nearest training clip of every generated clip, by chroma sequence and by CLAP."""
    from tunesmith.data.manifest import read_manifest, resolve_audio

    records = [r for r in read_manifest(options.train_manifest) if r["split"] == "train"]
    if not records:
        return {"error": f"{options.train_manifest} has no train clips"}
    rng = np.random.default_rng(options.seed)
    chosen = [records[i] for i in sorted(rng.choice(len(records), min(options.memorization_clips, len(records)), replace=False))]
    sr = items[0]["sample_rate"]
    prints, owners, clap_train = [], [], []
    for j, record in enumerate(_tqdm(chosen, options.progress, desc="training clips")):
        audio = load_audio(resolve_audio(options.train_manifest, record), sample_rate=sr, channels=1)
        fp = M.chroma_fingerprints(audio.samples[0], sr)
        prints.append(fp)
        owners.extend([j] * len(fp))
        if clap is not None:
            clap_train.append(clap.embed_audio(audio.samples[None], sr))
    train_fp = np.concatenate(prints)
    flagged = 0
    for item, row in zip(items, rows):
        fp = M.chroma_fingerprints(item["wav"].mean(0), sr)
        best, index = M.nearest_neighbours(fp, train_fp)
        k = int(np.argmax(best))
        row["nearest_train_chroma"] = float(best[k])
        row["nearest_train_id"] = chosen[owners[int(index[k])]]["id"]
        copy = row["nearest_train_chroma"] >= options.memorization_threshold_chroma
        if clap_train:
            sims, idx = M.nearest_neighbours(clap.embed_audio(item["wav"][None], sr), torch.cat(clap_train))
            row["nearest_train_clap"] = float(sims[0])
            copy = copy or row["nearest_train_clap"] >= options.memorization_threshold_clap
        row["possible_copy"] = bool(copy)
        flagged += int(copy)
    return {
        "train_clips_compared": len(chosen),
        "flagged": flagged,
        "threshold_chroma": options.memorization_threshold_chroma,
        "threshold_clap": options.memorization_threshold_clap,
        "max_chroma_similarity": max(r["nearest_train_chroma"] for r in rows),
    }


def _rate(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [bool(r[key]) for r in rows if r.get(key) is not None]
    if not values:
        return {"rate": None, "count": 0}
    return {"rate": sum(values) / len(values), "count": len(values), "ci95": list(M.wilson_interval(sum(values), len(values)))}


def summarize_rows(rows: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    """Set-level numbers: adherence rates, CLAP score, speed, and the issue-9 targets."""
    summary: dict[str, Any] = {
        "tempo_within_10pct": _rate(rows, "tempo_within_10pct"),
        "tempo_acc1_4pct": _rate(rows, "tempo_acc1"),
        "tempo_acc2_4pct_octave": _rate(rows, "tempo_acc2"),
        "tempo_rel_error": M.summarize([r.get("tempo_rel_error") for r in rows if r.get("tempo_rel_error") is not None]),
        "key_accuracy": _rate(rows, "key_correct"),
        "key_mirex": M.summarize([r["key_mirex"] for r in rows if "key_mirex" in r]),
        "mode_accuracy": _rate(rows, "mode_correct"),
        "instrument_family_accuracy": _rate(rows, "family_correct"),
        "clap_score": M.summarize([r.get("clap_score") for r in rows if r.get("clap_score") is not None]),
        "melody_chroma_cosine": M.summarize([r["melody_chroma_cosine"] for r in rows if r.get("melody_chroma_cosine") is not None]),
        "clipping_rate": M.summarize([r.get("clipping_rate") for r in rows]),
        "loudness_lufs": M.summarize([r.get("loudness_lufs") for r in rows]),
    }
    seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
    rtfs = [r["rtf"] for r in rows if r["rtf"] is not None]
    summary["speed"] = {
        "first_call_seconds": seconds[0] if seconds else None,
        "median_seconds": float(np.median(seconds)) if seconds else None,
        "median_rtf": float(np.median(rtfs[1:] if len(rtfs) > 1 else rtfs)) if rtfs else None,
        "total_audio_seconds": float(sum(r["duration"] for r in rows)),
    }
    ratio = None
    if results.get("clap_score_references"):
        ratio = results["clap_score_generated_on_paired"] / results["clap_score_references"]
    summary["clap_score_ratio_to_references"] = ratio
    measured = {
        "instrument_family_accuracy": summary["instrument_family_accuracy"]["rate"],
        "tempo_within_10pct": summary["tempo_within_10pct"]["rate"],
        "mode_accuracy": summary["mode_accuracy"]["rate"],
        "clap_score_ratio": ratio,
    }
    summary["targets"] = {
        name: {"target": goal, "value": measured[name], "met": None if measured[name] is None else measured[name] >= goal}
        for name, goal in TARGETS.items()
    }
    return summary
