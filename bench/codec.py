"""Benchmark: our codecs against Opus on the same clips, in one run.

    python bench/codec.py [--manifest corpus/manifest.jsonl] [--folder DIR] [--json out.json] [--quick]

For each set (the corpus test split; any folder of real recordings) it reports mel
distance (multi-scale log-mel L1), multi-resolution STFT distance and SI-SDR of
- the RVQ codec at every bitrate it serves (2 kbps = 4 codebooks, 3 kbps = 6),
- the VAE,
- Opus (opus-tools: opusenc/opusdec, libopus) at 6, 12 and 24 kbps,
plus encode+decode speed as a multiple of real time on this machine's threads.
Prints one summary line; ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tunesmith.codec import load_codec
from tunesmith.codec.evaluate import (
    codec_roundtrip,
    evaluate_roundtrip,
    folder_clips,
    manifest_clips,
)
from tunesmith.codec.model import RVQCodec

DEFAULT_MANIFEST = "/work/data/corpus-v1/manifest.jsonl"
DEFAULT_FOLDER = "/usr/share/games/wesnoth/1.16/data/core/music"  # Debian: wesnoth-1.16-music


def opus_roundtrip(kbps: float, sample_rate: int):
    """(C, T) -> (C, T) through opusenc + opusdec at ``kbps`` (VBR, libopus defaults)."""
    if not (shutil.which("opusenc") and shutil.which("opusdec")):
        raise SystemExit("opus-tools (opusenc/opusdec) not found: apt-get install opus-tools")

    def run(wav: torch.Tensor) -> torch.Tensor:
        with tempfile.TemporaryDirectory() as tmp:
            src, enc, dst = Path(tmp, "in.wav"), Path(tmp, "x.opus"), Path(tmp, "out.wav")
            sf.write(src, wav.numpy().T, sample_rate, subtype="FLOAT")
            subprocess.run(["opusenc", "--quiet", "--bitrate", str(kbps), str(src), str(enc)], check=True,
                           stderr=subprocess.DEVNULL)
            subprocess.run(["opusdec", "--quiet", "--rate", str(sample_rate), str(enc), str(dst)], check=True)
            out, _ = sf.read(dst, dtype="float32", always_2d=True)
            run.bytes += enc.stat().st_size  # type: ignore[attr-defined]
        return torch.from_numpy(out.T.copy())[:, : wav.shape[-1]]

    run.bytes = 0  # type: ignore[attr-defined]
    return run


def speed(codec, seconds: float, repeats: int) -> float:
    """Encode+decode speed (x real time) on ``seconds`` of audio, best of ``repeats``."""
    wav = torch.randn(1, codec.channels, int(seconds * codec.sample_rate)) * 0.1
    roundtrip = codec_roundtrip(codec)
    roundtrip(wav[0, :, : codec.sample_rate])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        roundtrip(wav[0])
        best = min(best, time.perf_counter() - start)
    return seconds / best


def bench_set(name: str, clips: list, rvq: RVQCodec | None, vae, opus_rates: list[float]) -> dict:
    sr = 24000
    seconds = sum(w.shape[-1] for _, w in clips) / sr
    print(f"[{name}] {len(clips)} clips, {seconds:.0f} s", file=sys.stderr)
    rows: dict[str, dict] = {}
    if rvq is not None:
        for k in sorted({max(1, rvq.num_codebooks - 2), rvq.num_codebooks}):
            rows[f"ours-rvq-{rvq.bitrate(k) / 1000:g}kbps"] = {
                "kbps": rvq.bitrate(k) / 1000, **evaluate_roundtrip(clips, codec_roundtrip(rvq, k), sr, f"rvq {k}q")}
    if vae is not None:
        rows["ours-vae"] = {"kbps": None, **evaluate_roundtrip(clips, codec_roundtrip(vae), sr, "vae")}
    for kbps in opus_rates:
        run = opus_roundtrip(kbps, sr)
        result = evaluate_roundtrip(clips, run, sr, f"opus {kbps}")
        rows[f"opus-{kbps:g}kbps"] = {"kbps": kbps, "kbps_with_ogg_overhead": run.bytes * 8 / seconds / 1000, **result}
    return {"clips": len(clips), "seconds": seconds, "results": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", default="codec-24k")
    p.add_argument("--vae", default="vae-24k", help="VAE to include ('none' to skip)")
    p.add_argument("--manifest", default=DEFAULT_MANIFEST, help="corpus manifest; its test split is used")
    p.add_argument("--folder", default=DEFAULT_FOLDER, help="folder of real recordings ('none' to skip)")
    p.add_argument("--clips", type=int, default=40)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--opus", type=float, nargs="+", default=[6, 12, 24], help="Opus bitrates (kbps)")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="8 clips of 5 s per set, one speed repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.seconds = 8, 5.0

    torch.manual_seed(0)
    rvq = load_codec(args.codec) if args.codec != "none" else None
    vae = load_codec(args.vae) if args.vae != "none" else None
    ref = rvq or vae
    if ref is None:
        raise SystemExit("nothing to benchmark: both --codec and --vae are 'none'")
    sets = {}
    if args.manifest != "none" and Path(args.manifest).is_file():
        clips = list(manifest_clips(args.manifest, "test", ref.sample_rate, ref.channels, args.clips, args.seconds))
        sets["corpus-test"] = bench_set("corpus-test", clips, rvq, vae, args.opus)
    if args.folder != "none" and Path(args.folder).is_dir():
        # skip each file's first 20 s (intros are often quiet) to score the music itself
        clips = list(folder_clips(args.folder, ref.sample_rate, ref.channels, args.clips, args.seconds, 20.0))
        sets["real-recordings"] = bench_set("real-recordings", clips, rvq, vae, args.opus)
    if not sets:
        raise SystemExit("no evaluation set found: pass --manifest and/or --folder")
    speeds = {}
    for name, model in (("rvq", rvq), ("vae", vae)):
        if model is not None:
            speeds[name] = speed(model, 10.0 if args.quick else 60.0, 1 if args.quick else 3)
    result = {
        "machine": {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "codec": args.codec, "vae": args.vae, "sets": sets, "encode_decode_x_realtime": speeds, "quick": args.quick,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    parts = []
    for name, s in sets.items():
        r = s["results"]
        ours = {k: v["mel_distance"] for k, v in r.items() if k.startswith("ours")}
        opus6 = r.get("opus-6kbps", {}).get("mel_distance", float("nan"))
        parts.append(f"{name}: mel " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in ours.items()) + f" vs opus-6kbps {opus6:.3f}")
    parts.append("speed " + ", ".join(f"{k} {v:.0f}x RT" for k, v in speeds.items()))
    print(" | ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
