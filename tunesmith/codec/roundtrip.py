"""Audio through a codec and back: what a generator built on that codec can at best produce.

Two uses: the evaluation's codec floor (the references' own round trip, scored like
generated audio), and a corpus copy for training models that judge generated audio,
so that they learn to look past the codec's artifacts (a CLAP trained on clean audio
alone scored the instrument family of codec round trips 14 points lower than of the
originals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tunesmith.audio import resample, save_audio, to_channels
from tunesmith.data.datasets import read_segment
from tunesmith.data.manifest import read_manifest, resolve_audio, write_manifest


def round_trip(codec: Any, samples: torch.Tensor, sample_rate: int, num_codebooks: int | None = None) -> torch.Tensor:
    """(C, T) audio encoded and decoded by ``codec`` (its first ``num_codebooks`` codebooks),
    returned at the input's rate, channels and length."""
    wav = to_channels(samples[None], codec.channels)
    if sample_rate != codec.sample_rate:
        wav = resample(wav, sample_rate, codec.sample_rate)
    with torch.inference_mode():
        codes = codec.encode_long(wav, num_codebooks) if num_codebooks else codec.encode_long(wav)
        out = codec.decode_long(codes)[..., : wav.shape[-1]]
    if sample_rate != codec.sample_rate:
        out = resample(out, codec.sample_rate, sample_rate)
    return to_channels(out, samples.shape[0])[0, :, : samples.shape[-1]].clamp(-1, 1)


def round_trip_manifest(codec: Any, manifest: str | Path, out_dir: str | Path, num_codebooks: int | None = None,
                        *, progress: bool = True) -> Path:
    """A copy of a corpus with every clip passed through ``codec``: ``out_dir/manifest.jsonl``
    (the same records, ``audio`` pointing at the round trips) and ``out_dir/audio/``.

    Clips already written are kept, so an interrupted run continues where it stopped.
    """
    out_dir = Path(out_dir)
    records = read_manifest(manifest)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    copied = []
    for record in tqdm(records, desc="round trip", disable=not progress):
        target = Path("audio") / f"{record['id']}.flac"
        if not (out_dir / target).is_file():
            source = resolve_audio(manifest, record)
            samples = read_segment(source, None, 0.0, codec.sample_rate, codec.channels)
            save_audio(out_dir / target, round_trip(codec, samples, codec.sample_rate, num_codebooks), codec.sample_rate)
        copied.append({**record, "audio": str(target), "sample_rate": codec.sample_rate, "channels": codec.channels})
    return write_manifest(out_dir / "manifest.jsonl", copied)
