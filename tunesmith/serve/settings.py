"""Every knob and limit of the HTTP service in one dataclass.

The CLI fills it from flags, tests build it directly, and everything else reads it: the
request limits (prompt length, duration, steps, upload size and length), the queue's
bound, batching, retention, and where the data lives.  Nothing else in ``tunesmith.serve``
hard-codes a number a deployer might want to change.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith import DEFAULT_GENERATOR

API_KEY_ENV = "TUNESMITH_API_KEY"
FORMATS = ("wav", "flac", "mp3", "ogg")  # what a result can be written as
UPLOAD_FORMATS = ("WAV", "FLAC", "OGG", "MP3")  # what libsndfile reports for the uploads we take


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeSettings:
    """The service's configuration; ``check()`` refuses values that cannot work, by name."""

    data_dir: Path = Path("tunesmith-serve-data")
    models: tuple[str, ...] = (DEFAULT_GENERATOR,)  # the first is the default
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    # work
    workers: int = 1  # generation threads (they share the loaded models; one model runs one batch at a time)
    # several processes (machines) on one queue: see redis_queue.py and docs/serving.md "Several machines"
    queue_url: str | None = None  # redis://HOST:PORT/DB: queue and job store in Redis; None: SQLite + memory
    lease_s: float = 30.0  # a worker silent this long is presumed dead and its running jobs go to another
    max_attempts: int = 1  # starts a job may have when its worker dies mid-job; 1: fail it with the reason
    max_queue: int = 64  # queued jobs beyond this get 429 + Retry-After
    torch_threads: int | None = None  # None: leave torch's setting alone
    # Dynamic batching, on by default because it measured faster for both families (bench/serve.py, 8 clients,
    # 5 s clips, 2 CPU cores, throughput over one at a time; docs/serve_bench.json and serve_bench_sweep.json):
    # the DiT 1.19-1.30x at max_batch 4 (2: 1.25x, 8: 1.32x with a worse p95; its steps are compute-bound, so a
    # batch saves little per job), the token LM 2.2-2.65x (2: 1.65x, 8: 2.50x; its decoding is memory-bound).
    # A 200 ms window and 1 torch thread measured no better; the window costs a lone request <= 50 ms.
    # The same defaults for both families.
    batch_window_ms: float = 50.0  # how long the first request of a batch waits for company
    max_batch: int = 4  # 1 turns batching off
    # per-request limits
    max_prompt_chars: int = 1000
    max_duration: float = 60.0  # seconds; also never beyond a model's own limit
    max_steps: int = 200
    max_control_iterations: int = 100  # noise optimisation (DITTO): each iteration runs a few steps and a decode
    sync_max_duration: float = 15.0  # POST /v1/audio/music is for short clips
    sync_timeout_s: float = 300.0
    max_upload_bytes: int = 20 * 1024 * 1024  # per file
    max_upload_seconds: float = 300.0
    # retention
    result_ttl_s: float = 24 * 3600.0  # finished jobs (row, audio, uploads) are deleted this long after they end
    cleanup_interval_s: float = 60.0
    # streaming
    poll_interval_s: float = 0.1  # how often the event stream and the synchronous endpoint look at a job
    keepalive_s: float = 15.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.models = tuple(self.models)

    def check(self) -> "ServeSettings":
        if not self.models:
            raise ValueError("no model to serve")
        if self.workers < (0 if self.queue_url else 1):  # 0: an API process; other processes run the jobs
            raise ValueError(f"workers must be >= 1, got {self.workers}" if not self.queue_url else
                             f"workers must be >= 0, got {self.workers}")
        if self.queue_url and not self.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"queue must be a Redis URL (redis://HOST:PORT/DB), got '{self.queue_url}'")
        for name in ("max_queue", "max_batch", "max_prompt_chars", "max_steps", "max_control_iterations",
                     "max_upload_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_duration", "sync_max_duration", "max_upload_seconds", "result_ttl_s", "cleanup_interval_s",
                     "poll_interval_s", "keepalive_s", "sync_timeout_s", "lease_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"binding to {self.host} (not loopback) needs an API key: give --api-key KEY "
                             f"or set {API_KEY_ENV}")
        return self

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.sqlite3"


def api_key_from(value: str | None) -> str | None:
    """``--api-key KEY`` as given, ``--api-key env`` (or no flag) from $TUNESMITH_API_KEY."""
    if value is None or value == "env":
        found = os.environ.get(API_KEY_ENV) or None
        if value == "env" and not found:
            raise ValueError(f"--api-key env: ${API_KEY_ENV} is not set")
        return found
    if not value.strip():
        raise ValueError("--api-key is empty")
    return value
