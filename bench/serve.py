"""Benchmark: the HTTP service under concurrent clients, dynamic batching on and off.

A real ``tunesmith serve`` process (``tunesmith.serve.testing.running_server``) on a loopback
port serves a bundled model; N client threads (8, then 32) each submit a job, follow its
server-sent events to ``done``, fetch and check the audio, and submit the next, until the
run's job count or time budget is spent.  Every client asks for the same duration and steps
(so jobs can share a batch) with its own prompt and seed.  Each model is served twice:
batched (the server's defaults, or ``--max-batch`` / ``--batch-window-ms``) and one at a
time (``--max-batch 1``); the same torch threads both times.  Measured, per run:

- lost jobs: accepted (202) but not succeeded with whole audio by the end (must be 0), and
  429 answers (none expected: the queue's bound is above the client count);
- latency (submit to the ``done`` event), p50 and p95, and the server's own split of it:
  queue wait, and generation time per batch size;
- throughput: seconds of audio delivered per second of wall time;
- the server's peak resident memory (VmHWM of its process), against a stated ceiling;
- in-process, without HTTP: one ``generate`` call at batch sizes 1, 2, 4, 8, split into
  conditioning (text encoder), sampling (DiT steps / LM decoding) and codec decoding, which
  is what shows where batching can and cannot pay.

    nice -n 10 python bench/serve.py --json docs/serve_bench.json [--quick]
    nice -n 10 python bench/serve.py --sweep --json sweep.json   # batching settings at 8 clients

JSON top level: ``lost_jobs`` (must be 0), ``p95_seconds_8`` and ``throughput_ratio_8``
(batched / one at a time, 8 clients) for the default model, ``target_met`` (ratio >= 1.5),
``peak_rss_mb`` (the largest of any server) and ``rss_ceiling_mb``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the server inherits it (see tests/conftest.py)

TARGET_RATIO = 1.5  # batched / one-at-a-time throughput at 8 clients
RSS_CEILING_MB = 2048.0  # the stated ceiling for a server of one bundled model at these clip lengths
PROMPTS = ["A lively jig for fiddle and accordion, 120 BPM, D major", "Soft piano lullaby, 70 BPM, F major",
           "Military march for trumpets and tuba, steady 116 BPM, E-flat major",
           "Pulsing electronic synth arpeggios, hypnotic, 124 BPM, F minor",
           "A string quartet plays something wistful in D minor at 84 BPM", "Solo banjo breakdown, fast, G major",
           "Church organ chorale, slow, C major", "Jazz trio with walking bass, 140 BPM, B-flat major"]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    try:
        import psutil  # type: ignore[import-not-found]

        info = psutil.Process(pid).memory_full_info()
        if getattr(info, "peak_wset", None):
            return info.peak_wset / 2**20
    except Exception:
        pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_time(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class Run:
    """N clients in closed loops against one server until ``jobs`` are submitted or ``budget_s`` passes."""

    def __init__(self, base_url: str, body: dict[str, Any], concurrency: int, jobs: int, budget_s: float,
                 sample_rate: int) -> None:
        self.base_url, self.body, self.concurrency = base_url, body, concurrency
        self.jobs_left, self.budget_s, self.sample_rate = jobs, budget_s, sample_rate
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.rejected = 0
        self.errors: list[str] = []

    def _next(self) -> int | None:
        with self.lock:
            if self.jobs_left <= 0 or time.monotonic() > self.stop_submitting:
                return None
            self.jobs_left -= 1
            return self.jobs_left

    def client(self, index: int) -> None:
        import httpx
        import soundfile as sf

        with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(30.0, read=self.hard_timeout_s)) as http:
            while (n := self._next()) is not None:
                body = {**self.body, "prompt": PROMPTS[(index + n) % len(PROMPTS)], "seed": 1000 * index + n}
                record: dict[str, Any] = {"client": index, "status": "not accepted"}
                start = time.perf_counter()
                try:
                    answer = http.post("/v1/generations", json=body)
                    if answer.status_code == 429:
                        with self.lock:
                            self.rejected += 1
                        time.sleep(min(5.0, float(answer.headers.get("retry-after", "1"))))
                        continue
                    answer.raise_for_status()
                    record["id"] = answer.json()["id"]
                    record["status"] = "accepted"
                    done = None
                    with http.stream("GET", f"/v1/generations/{record['id']}/events") as stream:
                        event = None
                        for line in stream.iter_lines():
                            if line.startswith("event: "):
                                event = line[7:]
                            elif line.startswith("data: ") and event == "done":
                                done = json.loads(line[6:])
                                break
                    record["latency_s"] = time.perf_counter() - start
                    record["done_at"] = time.perf_counter()
                    if done is None:
                        raise RuntimeError("the event stream ended without 'done'")
                    record.update(status=done["status"], error=done["error"], batch_size=done["batch_size"],
                                  generation_s=done["generation_seconds"], duration=done["duration"])
                    created, started = parse_time(done["created_at"]), parse_time(done["started_at"])
                    finished = parse_time(done["finished_at"])
                    if created and started and finished:
                        record.update(queue_wait_s=started - created, server_latency_s=finished - created)
                    if done["status"] == "succeeded":
                        audio = http.get(f"/v1/generations/{record['id']}/audio")
                        audio.raise_for_status()
                        frames = sf.info(io.BytesIO(audio.content)).frames
                        record["audio_ok"] = frames == round(done["duration"] * self.sample_rate)
                except Exception as err:  # noqa: BLE001 - every failure is a lost or failed job, counted below
                    record["exception"] = f"{type(err).__name__}: {err}"
                with self.lock:
                    record["started"] = start
                    self.records.append(record)

    def go(self) -> dict[str, Any]:
        self.stop_submitting = time.monotonic() + self.budget_s
        self.hard_timeout_s = self.budget_s + 300.0  # a job still running then counts as lost
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.concurrency)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.hard_timeout_s + 60)
        wall = time.perf_counter() - t0
        return self.summary(wall)

    def summary(self, wall: float) -> dict[str, Any]:
        ok = [r for r in self.records if r["status"] == "succeeded" and r.get("audio_ok")]
        accepted = [r for r in self.records if "id" in r]
        lost = [r for r in accepted if not (r["status"] == "succeeded" and r.get("audio_ok"))]
        latencies = np.array([r["latency_s"] for r in ok]) if ok else np.array([np.nan])
        span = (max(r["done_at"] for r in ok) - min(r["started"] for r in self.records)) if ok else wall
        audio_s = sum(r["duration"] for r in ok)
        by_batch: dict[int, list[float]] = {}
        for r in ok:
            by_batch.setdefault(int(r["batch_size"] or 1), []).append(r["generation_s"])
        return {
            "concurrency": self.concurrency, "accepted": len(accepted), "succeeded": len(ok), "lost_jobs": len(lost),
            "lost": [{k: r.get(k) for k in ("id", "status", "error", "exception")} for r in lost][:10],
            "rejected_429": self.rejected,
            "p50_seconds": float(np.percentile(latencies, 50)), "p95_seconds": float(np.percentile(latencies, 95)),
            "max_seconds": float(np.max(latencies)),
            "queue_wait_p50_seconds": float(np.median([r.get("queue_wait_s", np.nan) for r in ok])) if ok else None,
            "wall_seconds": span, "audio_seconds": audio_s,
            "throughput_audio_s_per_s": audio_s / span if span > 0 else 0.0,
            "jobs_per_batch_size": {str(b): len(v) for b, v in sorted(by_batch.items())},
            # a batch's time is on each of its jobs: per job of a batch of b = time / b
            "generation_seconds_per_job_by_batch_size": {str(b): float(np.mean(v)) / b
                                                        for b, v in sorted(by_batch.items())},
        }


def per_job(run: dict[str, Any]) -> float:
    """Mean generation seconds per job over a run's batches, weighted by the jobs in each."""
    counts, times = run["jobs_per_batch_size"], run["generation_seconds_per_job_by_batch_size"]
    total = sum(counts.values())
    return sum(counts[b] * times[b] for b in counts) / total if total else float("nan")


def serve_runs(model: str, mode: str, server_args: list[str], body: dict[str, Any], plan: list[tuple[int, int]],
               budget_s: float, workdir: Path) -> dict[str, Any]:
    """One server (one model, one batching mode) and the runs of ``plan`` [(clients, jobs)] in turn."""
    import httpx

    from tunesmith.serve.testing import running_server

    data = workdir / f"{model}-{mode}"
    started = time.perf_counter()
    with running_server([model], data, args=server_args, timeout=300) as server:
        startup = time.perf_counter() - started
        rate = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"][0]["sample_rate"]
        warm = Run(server.base_url, body, 1, 1, budget_s, rate).go()  # first-call costs out of the way
        out: dict[str, Any] = {"server_args": server_args, "startup_seconds": startup,
                               "warmup_seconds": warm["p50_seconds"], "runs": {}}
        for clients, jobs in plan:
            result = Run(server.base_url, body, clients, jobs, budget_s, rate).go()
            out["runs"][str(clients)] = result
            print(f"  {model} {mode:>10} {clients:>2} clients: {result['succeeded']}/{result['accepted']} ok, "
                  f"lost {result['lost_jobs']}, p50 {result['p50_seconds']:.1f}s p95 {result['p95_seconds']:.1f}s, "
                  f"{result['throughput_audio_s_per_s']:.2f} audio s/s, batches {result['jobs_per_batch_size']}",
                  flush=True)
        out["peak_rss_mb"] = peak_rss_mb(server.process.pid)
        if server.process.poll() is not None:
            out["server_died"] = server.log()[-2000:]
    return out


def batch_timing(model: str, body: dict[str, Any], threads: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    """One in-process ``generate`` per batch size, split into conditioning, sampling and codec decoding."""
    import torch

    from tunesmith.generator import load_generator

    torch.set_num_threads(threads)
    gen = load_generator(model)
    phases: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    gen.conditioning = timed("conditioning", gen.conditioning)  # type: ignore[method-assign]
    gen.decode = timed("decode", gen.decode)  # type: ignore[method-assign]
    controls = {k: v for k, v in body.items() if k not in ("duration",)}
    gen.generate(PROMPTS[:1], body["duration"], 0, **controls)  # warm
    out: dict[str, Any] = {}
    for b in sizes:
        phases.clear()
        t = time.perf_counter()
        gen.generate([PROMPTS[i % len(PROMPTS)] for i in range(b)], body["duration"], list(range(b)), **controls)
        total = time.perf_counter() - t
        cond, dec = phases.get("conditioning", 0.0), phases.get("decode", 0.0)
        out[str(b)] = {"total_s": total, "per_job_s": total / b, "conditioning_s": cond, "decode_s": dec,
                       "sampling_s": total - cond - dec, "audio_s_per_s": b * body["duration"] / total}
    base = out[str(sizes[0])]["per_job_s"]
    for entry in out.values():
        entry["speedup_per_job"] = base / entry["per_job_s"]
    return out


# (max_batch, batch_window_ms, torch threads): what could make batching pay on few cores
SWEEP = [(1, 0.0, 2), (1, 0.0, 1), (2, 50.0, 2), (4, 50.0, 2), (4, 200.0, 2), (8, 50.0, 2), (4, 50.0, 1), (8, 50.0, 1)]


def sweep(args: argparse.Namespace) -> int:
    models = args.models or ["tunesmith-small-dit", "tunesmith-small"]
    duration = 3.0 if args.quick else 5.0
    jobs = 16 if args.quick else 24
    report: dict[str, Any] = {"config": {"duration": duration, "clients": 8, "jobs": jobs, "sweep": SWEEP,
                                         "cpu_count": os.cpu_count()}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="tunesmith-serve-sweep-") as tmp:
        for model in models:
            body: dict[str, Any] = {"duration": duration, **({"steps": 6} if "dit" in model and args.quick else {})}
            rows = []
            for max_batch, window, threads in SWEEP:
                server_args = ["--torch-threads", str(threads), "--max-queue", "256", "--log-level", "warning",
                               "--max-batch", str(max_batch), "--batch-window-ms", str(window)]
                out = serve_runs(model, f"b{max_batch}-w{window:g}-t{threads}", server_args, body, [(8, jobs)],
                                 args.budget or 120.0, Path(tmp))
                run = out["runs"]["8"]
                rows.append({"max_batch": max_batch, "batch_window_ms": window, "threads": threads,
                             "throughput_audio_s_per_s": run["throughput_audio_s_per_s"],
                             "p50_seconds": run["p50_seconds"], "p95_seconds": run["p95_seconds"],
                             "lost_jobs": run["lost_jobs"], "jobs_per_batch_size": run["jobs_per_batch_size"],
                             "generation_seconds_per_job_by_batch_size":
                                 run["generation_seconds_per_job_by_batch_size"],
                             "peak_rss_mb": out["peak_rss_mb"]})
            best_single = max(r["throughput_audio_s_per_s"] for r in rows if r["max_batch"] == 1)
            for r in rows:
                r["ratio_to_best_one_at_a_time"] = r["throughput_audio_s_per_s"] / best_single
            report["models"][model] = rows
    summary = "serve sweep (8 clients, throughput / best one-at-a-time): " + "; ".join(
        f"{m}: " + ", ".join(f"b{r['max_batch']} w{r['batch_window_ms']:g} t{r['threads']} "
                             f"{r['ratio_to_best_one_at_a_time']:.2f}x" for r in rows)
        for m, rows in report["models"].items())
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(summary)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="the default model only, shorter clips, fewer steps and jobs")
    ap.add_argument("--models", nargs="+", default=None,
                    help="bundled models (default: tunesmith-small-dit and tunesmith-small; --quick: the first)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server (default 2)")
    ap.add_argument("--max-batch", type=int, default=None, help="batched runs: --max-batch (default: the server's)")
    ap.add_argument("--batch-window-ms", type=float, default=None,
                    help="batched runs: --batch-window-ms (default: the server's)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of submitting per run (default 120, quick 40)")
    ap.add_argument("--no-timing", action="store_true", help="skip the in-process batch timing")
    ap.add_argument("--sweep", action="store_true",
                    help="instead: 8 clients against each batching setting in SWEEP and one at a time")
    args = ap.parse_args()
    if args.sweep:
        return sweep(args)

    from tunesmith.serve.settings import ServeSettings

    models = args.models or (["tunesmith-small-dit"] if args.quick else ["tunesmith-small-dit", "tunesmith-small"])
    duration = 3.0 if args.quick else 5.0
    plan = [(8, 16), (32, 32)] if args.quick else [(8, 24), (32, 32)]
    budget = args.budget or (40.0 if args.quick else 120.0)
    base_args = ["--torch-threads", str(args.threads), "--max-queue", "256", "--log-level", "warning"]
    batched: list[str] = []
    if args.max_batch is not None:
        batched += ["--max-batch", str(args.max_batch)]
    if args.batch_window_ms is not None:
        batched += ["--batch-window-ms", str(args.batch_window_ms)]
    defaults = ServeSettings()
    report: dict[str, Any] = {
        "config": {"models": models, "duration": duration, "plan_clients_jobs": plan, "budget_seconds": budget,
                   "threads": args.threads, "quick": args.quick, "cpu_count": os.cpu_count(),
                   "batched_args": batched or "server defaults",
                   "server_defaults": {"max_batch": defaults.max_batch, "batch_window_ms": defaults.batch_window_ms},
                   "target_ratio": TARGET_RATIO, "rss_ceiling_mb": RSS_CEILING_MB},
        "models": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunesmith-serve-bench-") as tmp:
        for model in models:
            body: dict[str, Any] = {"duration": duration}
            if "dit" in model and args.quick:
                body["steps"] = 6
            entry: dict[str, Any] = {"request": body}
            for mode, extra in (("batched", batched), ("one_at_a_time", ["--max-batch", "1"])):
                entry[mode] = serve_runs(model, mode, base_args + extra, body, plan, budget, Path(tmp))
            for clients, _ in plan:
                b, o = entry["batched"]["runs"][str(clients)], entry["one_at_a_time"]["runs"][str(clients)]
                entry[f"throughput_ratio_{clients}"] = (b["throughput_audio_s_per_s"] /
                                                       max(o["throughput_audio_s_per_s"], 1e-9))
                # why: what batching saved the generator per job (the rest of a job's cost is the same either way)
                entry[f"generation_speedup_per_job_{clients}"] = per_job(o) / per_job(b)
            if not args.no_timing:
                sizes = (1, 2, 4) if args.quick else (1, 2, 4, 8)
                entry["batch_timing"] = batch_timing(model, body, args.threads, sizes)
            report["models"][model] = entry

    first = report["models"][models[0]]
    runs = [r for m in report["models"].values() for mode in ("batched", "one_at_a_time")
            for r in m[mode]["runs"].values()]
    report["lost_jobs"] = sum(r["lost_jobs"] for r in runs)
    report["rejected_429"] = sum(r["rejected_429"] for r in runs)
    report["p95_seconds_8"] = first["batched"]["runs"]["8"]["p95_seconds"]
    report["p50_seconds_8"] = first["batched"]["runs"]["8"]["p50_seconds"]
    report["p95_seconds_8_one_at_a_time"] = first["one_at_a_time"]["runs"]["8"]["p95_seconds"]
    report["throughput_ratio_8"] = first["throughput_ratio_8"]
    report["throughput_ratio_32"] = first["throughput_ratio_32"]
    report["target_met"] = report["throughput_ratio_8"] >= TARGET_RATIO
    for model, entry in report["models"].items():
        report[f"throughput_ratio_8_{model}"] = entry["throughput_ratio_8"]
        report[f"generation_speedup_per_job_8_{model}"] = entry["generation_speedup_per_job_8"]
    report["target_met_by_model"] = {m: e["throughput_ratio_8"] >= TARGET_RATIO for m, e in report["models"].items()}
    report["peak_rss_mb"] = max(m[mode]["peak_rss_mb"] for m in report["models"].values()
                                for mode in ("batched", "one_at_a_time"))
    report["rss_ceiling_mb"] = RSS_CEILING_MB
    report["rss_under_ceiling"] = report["peak_rss_mb"] <= RSS_CEILING_MB
    report["seconds"] = time.perf_counter() - started
    per_model = ", ".join(f"{m} {e['throughput_ratio_8']:.2f}x" for m, e in report["models"].items())
    summary = (f"serve: 8 clients, batched / one at a time: {per_model} (target {TARGET_RATIO}x for "
               f"{models[0]}: {'met' if report['target_met'] else 'NOT met'}); p50 {report['p50_seconds_8']:.1f}s "
               f"p95 {report['p95_seconds_8']:.1f}s batched ({report['p95_seconds_8_one_at_a_time']:.1f}s one at a "
               f"time); lost jobs {report['lost_jobs']}; peak RSS {report['peak_rss_mb']:.0f} MB "
               f"(ceiling {RSS_CEILING_MB:.0f}); {report['seconds']:.0f}s")
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(summary)
    return 0 if report["lost_jobs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
