"""tunesmith over HTTP: ``tunesmith serve`` (FastAPI + uvicorn).

One idea per module:

    settings.py   every limit and knob (ServeSettings)
    store.py      the job store interface and its SQLite implementation (jobs survive restarts)
    queue.py      the bounded queue interface and its in-memory implementation
    redis_queue.py  the queue, store and worker leases on Redis, for several processes (machines)
    registry.py   the models, loaded once per process, one lock each
    scheduler.py  worker threads: dynamic batching, progress, cancellation, recovery, retention
    results.py    result audio + sidecar, written as a pair
    uploads.py    reference audio: checked, then stored under server-chosen names
    schemas.py    the request and response bodies (the OpenAPI schema)
    routes.py     the HTTP routes
    app.py        create_app(settings) and the one error boundary
    testing.py    a tiny generator and a real server process, for tests and benchmarks
    static/       the web page (served at / and /static)

Imported only by the ``serve`` verb: nothing here loads unless a server runs.
"""

from tunesmith.serve.app import create_app
from tunesmith.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
