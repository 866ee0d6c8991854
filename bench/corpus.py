"""Corpus build throughput: hours of audio built per hour of wall time, ours vs the fluidsynth CLI.

Ours: `build_corpus` end to end (parse, arrange, render, cut, encode FLAC, captions) with N
worker processes.  Peer: the `fluidsynth` command-line renderer (fast-render to a file) on
the same clips' MIDI files, one process per core, which is what a MIDI-to-audio pipeline
would otherwise call.  Prints one summary line; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunesmith.data.corpus import BuildOptions, build_corpus
from tunesmith.data.manifest import read_manifest
from tunesmith.data.soundfont import find_soundfont


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (load-independent cost)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _figures(seconds: float, wall: float, cpu: float, workers: int) -> dict:
    """Wall-clock speed, and the speed the same CPU time gives on ``workers`` otherwise idle cores."""
    return {"audio_seconds": seconds, "wall_seconds": wall, "cpu_seconds": cpu, "x_realtime": seconds / wall,
            "x_realtime_per_core": seconds / cpu, "x_realtime_idle_cores": workers * seconds / cpu}


def bench_ours(out: Path, hours: float, workers: int, seed: int) -> dict:
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    summary = build_corpus(BuildOptions(out=str(out), hours=hours, seed=seed, workers=workers), progress=False)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    return _figures(summary["hours"] * 3600, wall, cpu, workers) | {"clips": summary["clips"], "works": summary["works"]}


def bench_fluidsynth_cli(out: Path, workers: int, sample_rate: int) -> dict | None:
    exe = shutil.which("fluidsynth")
    if exe is None:
        return None
    soundfont = str(find_soundfont())
    records = read_manifest(out / "manifest.jsonl")
    render_dir = Path(tempfile.mkdtemp(prefix="bench-fs-"))

    def one(record: dict) -> None:
        subprocess.run([exe, "-ni", "-q", "-g", "0.5", "-r", str(sample_rate), "-F",
                        str(render_dir / f"{record['id']}.wav"), soundfont, str(out / record["midi"])],
                       check=True, capture_output=True)

    start, cpu0 = time.perf_counter(), _cpu_seconds()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, records))
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    shutil.rmtree(render_dir, ignore_errors=True)
    return _figures(sum(r["duration"] for r in records), wall, cpu, workers) | {"note": "render only"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hours", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--quick", action="store_true", help="0.1 hour instead of --hours")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    hours = 0.1 if args.quick else args.hours
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        ours = bench_ours(Path(tmp), hours, args.workers, args.seed)
        peer = bench_fluidsynth_cli(Path(tmp), args.workers, 24000)
    result = {"bench": "corpus", "hours": hours, "workers": args.workers, "ours": ours, "fluidsynth_cli": peer,
              "ours_over_cli_per_core": ours["x_realtime_per_core"] / peer["x_realtime_per_core"] if peer else None}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ratio = (f"; fluidsynth CLI render only: {peer['x_realtime_per_core']:.0f}x per core "
             f"(ours/CLI {result['ours_over_cli_per_core']:.2f})") if peer else ""
    print(f"corpus build end to end: {ours['x_realtime_idle_cores']:.0f}x real time on {args.workers} idle cores "
          f"({ours['x_realtime_per_core']:.0f}x per CPU-second; {ours['x_realtime']:.1f}x wall on this machine now, "
          f"{ours['audio_seconds'] / 3600:.2f} h, {ours['clips']} clips){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
