"""A job's result on disk: DATA_DIR/results/<id>.<format> and its sidecar <id>.<format>.json.

The pair is written the way ``tunesmith generate`` writes its outputs (temp files beside
the targets, renamed together under a lock on the folder, the audio last), and the sidecar
has the CLI's fields, so a result is reproduced with ``tunesmith generate PROMPT --model M
--seed S --duration D ...``.  Because the audio is renamed last, an audio file that exists
is whole and its sidecar is beside it: that is what a restart trusts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.audio import write_audio
from tunesmith.files import atomic_group, remove_stale_temps
from tunesmith.serve.store import Job


def audio_path(results_dir: Path, job: Job) -> Path:
    return results_dir / job.result_name


def sidecar_path(results_dir: Path, job: Job) -> Path:
    return results_dir / f"{job.result_name}.json"


SIDECAR_FIELDS = ("prompt", "seed", "model", "duration", "sample_rate", "format", "melody", "controls",
                  "generation_seconds", "id", "inputs", "batch_size")


def sidecar(job: Job, sample_rate: int, seconds: float, batch_size: int,
            info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CLI sidecar's fields (prompt, seed, model, duration, sample_rate, format, melody,
    controls, generation_seconds, and what the generator reported: e.g. control_report) plus the
    job's id, its uploaded inputs and its batch size."""
    extra = {k: v for k, v in (info or {}).items() if k not in SIDECAR_FIELDS}
    return {"prompt": job.prompt, "seed": job.seed, "model": job.model, "duration": job.duration,
            "sample_rate": sample_rate, "format": job.format, "melody": job.inputs.get("melody"),
            "controls": job.controls, "generation_seconds": round(seconds, 3),
            "id": job.id, "inputs": job.inputs, "batch_size": batch_size, **extra}


def info_of(meta: dict[str, Any]) -> dict[str, Any]:
    """What a sidecar holds beyond its fixed fields: the generator's report (a restart recovers it)."""
    return {k: v for k, v in meta.items() if k not in SIDECAR_FIELDS}


def write_result(results_dir: Path, job: Job, samples: torch.Tensor, sample_rate: int, seconds: float,
                 batch_size: int, info: dict[str, Any] | None = None) -> None:
    """Write the audio (C, T) and its sidecar as a pair: both whole, or neither."""
    results_dir.mkdir(parents=True, exist_ok=True)
    meta = sidecar(job, sample_rate, seconds, batch_size, info)
    with atomic_group(sidecar_path(results_dir, job), audio_path(results_dir, job)) as (meta_tmp, audio_tmp):
        write_audio(audio_tmp, samples, sample_rate, job.format)
        meta_tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


def read_sidecar(results_dir: Path, job: Job) -> dict[str, Any] | None:
    """The sidecar of a finished result, or None when the pair is not complete."""
    if not audio_path(results_dir, job).is_file():
        return None
    try:
        return json.loads(sidecar_path(results_dir, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def delete_result(results_dir: Path, job: Job) -> None:
    """The audio first (what marks a result complete), then the sidecar and any temp files."""
    audio_path(results_dir, job).unlink(missing_ok=True)
    sidecar_path(results_dir, job).unlink(missing_ok=True)
    remove_temps(results_dir, job)


def remove_temps(results_dir: Path, job: Job) -> None:
    """Temp files of a writer of this job's result that will never finish (a killed process)."""
    remove_stale_temps(audio_path(results_dir, job), older_than=-1.0)
    remove_stale_temps(sidecar_path(results_dir, job), older_than=-1.0)
