"""`tunesmith serve`: the HTTP API (and the web page) on FastAPI + uvicorn.

Everything a user can get wrong is refused in one line before the port is bound: a
missing extra, a bad limit, a model that does not load, a port in use, or a public
address without an API key (anything but loopback needs one).

Several machines: ``--queue redis://HOST:PORT/DB`` puts the queue and the job store in Redis,
shared by every process given the same URL and ``--data-dir``; ``--worker-only`` runs workers
without HTTP (see docs/serving.md, "Several machines").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import sys
import threading

from tunesmith import DEFAULT_GENERATOR
from tunesmith.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page",
                       description="Serve generation over HTTP: queued jobs with progress events, short clips "
                                   "answered directly, OpenAPI docs at /docs, the web page at /.")
    p.add_argument("--host", metavar="ADDR", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, metavar="N", default=8000, help="port (default 8000)")
    p.add_argument("--model", nargs="+", action="extend", metavar="NAME",
                   help=f"bundled names or model directories to serve; the first is the default ({DEFAULT_GENERATOR})")
    p.add_argument("--workers", type=int, metavar="N", default=1,
                   help="generation threads (default 1; 0 with --queue: an API process, other processes generate)")
    p.add_argument("--queue", metavar="URL", default=None,
                   help="redis://HOST:PORT/DB: queue and job store in Redis, shared with every process given the "
                        "same URL and --data-dir (default: SQLite and memory, this process only)")
    p.add_argument("--worker-only", action="store_true",
                   help="with --queue: run the workers only, no HTTP (another process serves the API)")
    p.add_argument("--lease", type=float, metavar="S", default=30.0,
                   help="with --queue: a worker silent this long is presumed dead and its jobs run elsewhere "
                        "(default 30)")
    p.add_argument("--max-attempts", type=int, metavar="N", default=None,
                   help="starts a job may have when its worker dies mid-job (default 2 with --queue, else 1: "
                        "failed with the reason)")
    p.add_argument("--max-queue", type=int, metavar="N", default=64, help="queued jobs before 429 (default 64)")
    p.add_argument("--api-key", metavar="KEY|env",
                   help="bearer token every /v1 request must send; 'env' (or no flag) reads $TUNESMITH_API_KEY")
    p.add_argument("--data-dir", metavar="DIR", default="tunesmith-serve-data",
                   help="job store, results and uploads (default ./tunesmith-serve-data)")
    p.add_argument("--batch-window-ms", type=float, metavar="MS", default=50.0,
                   help="how long a request waits for others to batch with (default 50)")
    p.add_argument("--max-batch", type=int, metavar="N", default=4,
                   help="most requests in one batch (default 4; 1 = no batching)")
    p.add_argument("--max-duration", type=float, metavar="S", default=60.0,
                   help="longest audio a job may ask for, s (default 60)")
    p.add_argument("--max-steps", type=int, metavar="N", default=200,
                   help="most sampler steps a job may ask for (default 200)")
    p.add_argument("--max-control-iterations", type=int, metavar="N", default=100,
                   help="most noise-optimisation iterations a job may ask for (intensity, structure, loop, melody "
                        "on diffusion models; each costs a few sampler steps; default 100)")
    p.add_argument("--sync-max-duration", type=float, metavar="S", default=15.0,
                   help="longest clip of POST /v1/audio/music, s (default 15)")
    p.add_argument("--max-upload-mb", type=float, metavar="MB", default=20.0,
                   help="largest audio upload, MB (default 20)")
    p.add_argument("--max-upload-seconds", type=float, metavar="S", default=300.0,
                   help="longest audio upload, s (default 300)")
    p.add_argument("--result-ttl", type=float, metavar="S", default=86400.0,
                   help="seconds a finished job and its audio are kept (default 86400 = 1 day)")
    p.add_argument("--torch-threads", type=int, metavar="N", default=None,
                   help="torch threads (default: cores / workers)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as err:
            raise UserError(f"cannot bind {host}:{port}: {err.strerror or err}") from None


def run(args: argparse.Namespace) -> int:
    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(importlib.util.find_spec(m) for m in modules)]
    if missing and not args.worker_only:  # a worker without HTTP needs none of them
        raise UserError(f"tunesmith serve needs the serve extra ({', '.join(missing)} missing): "
                        "pip install 'tunesmith[serve]'")
    from tunesmith.serve.settings import ServeSettings, api_key_from

    try:
        workers = max(1, args.workers)
        settings = ServeSettings(
            data_dir=args.data_dir, models=tuple(args.model or [DEFAULT_GENERATOR]), host=args.host, port=args.port,
            api_key=api_key_from(args.api_key), workers=args.workers, max_queue=args.max_queue,
            torch_threads=args.torch_threads or max(1, (os.cpu_count() or 1) // workers),
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, max_duration=args.max_duration,
            max_steps=args.max_steps, max_control_iterations=args.max_control_iterations,
            sync_max_duration=args.sync_max_duration,
            max_upload_bytes=int(args.max_upload_mb * 1e6), max_upload_seconds=args.max_upload_seconds,
            result_ttl_s=args.result_ttl, queue_url=args.queue, lease_s=args.lease,
            max_attempts=args.max_attempts if args.max_attempts is not None else (2 if args.queue else 1),
        ).check()
        if args.worker_only and not args.queue:
            raise ValueError("--worker-only needs --queue redis://HOST:PORT/DB (the queue it takes jobs from)")
        if args.worker_only and settings.workers < 1:
            raise ValueError("--worker-only needs --workers >= 1")
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.worker_only:
        return run_workers(settings, args.log_level)
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.registry import ModelRegistry

    _port_free(settings.host, settings.port)
    if settings.queue_url:  # refused in one line now, not as a traceback from the app's startup
        from tunesmith.serve.redis_queue import connect

        try:
            connect(settings)[0].close()
        except ValueError as err:
            raise UserError(str(err)) from None
    try:
        registry = ModelRegistry.load(settings.models)
    except ValueError as err:  # tunesmith's UserErrors are ValueErrors: a model that does not load
        raise UserError(str(err)) from None
    app = create_app(settings, models=registry)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"tunesmith serve: http://{host}:{settings.port}  (models: {', '.join(registry.models)}; "
          f"data: {settings.data_dir}{'; API key required' if settings.api_key else ''})", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(settings.torch_threads or 1)
    uvicorn.run(app, host=settings.host.strip("[]"), port=settings.port, log_level=args.log_level)
    return 0


def run_workers(settings, log_level: str) -> int:
    """``--worker-only``: the workers of ``settings`` on its shared queue, until SIGTERM or SIGINT
    (running batches then go back to the queue for the other workers)."""
    import logging

    import torch

    from tunesmith.serve.registry import ModelRegistry
    from tunesmith.serve.scheduler import Scheduler, open_backend

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        registry = ModelRegistry.load(settings.models)
        store, queue, leases = open_backend(settings)
    except ValueError as err:
        raise UserError(str(err)) from None
    for directory in (settings.data_dir, settings.results_dir, settings.uploads_dir):
        directory.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(settings.torch_threads or 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    scheduler = Scheduler(settings, store, queue, registry, leases)
    scheduler.start()
    print(f"tunesmith serve --worker-only: {settings.workers} worker(s) as {scheduler.worker_id} on "
          f"{settings.queue_url} (models: {', '.join(registry.models)}; data: {settings.data_dir})",
          file=sys.stderr, flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        scheduler.stop()
        store.close()
    return 0
