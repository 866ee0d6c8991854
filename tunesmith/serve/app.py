"""``create_app(settings) -> FastAPI``: the service assembled, and its one error boundary.

Startup (the app's lifespan) opens the job store, loads the models (unless given), re-queues
what a previous process left queued, marks what it left running as failed, and starts the
workers; shutdown stops them (running batches go back to the queue) and closes the store.

Every 4xx/5xx answer is ``{"error": "one line"}``: the request's problem in words, never a
traceback (a 500 is logged in full on the server).  A body over the upload limit is cut off
while it streams in (413), before it fills a disk.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith import __version__
from tunesmith.generator import Generator
from tunesmith.serve.registry import ModelRegistry
from tunesmith.serve.routes import AUDIO_FIELDS, ApiError, Service, router
from tunesmith.serve.scheduler import Scheduler, one_line, open_backend
from tunesmith.serve.settings import ServeSettings

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger("tunesmith.serve")


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over ``limit`` bytes: at once by its Content-Length, or as soon as a
    streamed (chunked) body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"error": too_large_message(self.limit)}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


def too_large_message(limit: int) -> str:
    return f"the request body is over {limit / 1e6:.3g} MB"


class StaticFolder(StaticFiles):
    """The web page's folder; until it exists (another part of the build fills it), a 404."""

    async def check_config(self) -> None:
        if self.directory is not None and Path(self.directory).is_dir():
            await super().check_config()


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message, 500)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, body_limit: int) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404 and err.detail == "Not Found":
            message = f"no such URL: {request.method} {request.url.path}"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        return error(err.status_code, message, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, err: BodyTooLarge) -> JSONResponse:
        return error(413, too_large_message(body_limit))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error: {one_line(err)}")


def _openapi(app: FastAPI, settings: ServeSettings) -> dict[str, Any]:
    """The schema as served: this server's limits on the request bodies, and validation errors
    as 400s with the one error shape (not FastAPI's 422)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    limits = {"/v1/generations": ("prompt", settings.max_duration),
              "/v1/audio/music": ("input", settings.sync_max_duration)}
    for route, (prompt, max_duration) in limits.items():
        for content in schema["paths"][route]["post"]["requestBody"]["content"].values():
            properties = content["schema"]["properties"]
            properties[prompt]["maxLength"] = settings.max_prompt_chars
            properties["duration"]["maximum"] = max_duration
            properties["duration"]["default"] = min(properties["duration"]["default"], max_duration)
            properties["steps"]["anyOf"][0]["maximum"] = settings.max_steps
            if "control_iterations" in properties and "anyOf" in properties["control_iterations"]:
                properties["control_iterations"]["anyOf"][0]["maximum"] = settings.max_control_iterations
            service = getattr(app.state, "service", None)
            if service is not None:  # once started: the model ids it serves
                properties["model"]["anyOf"][0]["enum"] = list(service.registry.models)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                del responses["422"]
                responses.setdefault("400", {"description": "bad request",
                                             "content": {"application/json": {
                                                 "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema


def create_app(settings: ServeSettings, *, models: ModelRegistry | dict[str, Generator] | None = None) -> FastAPI:
    """The service as an ASGI app.  ``models``: a loaded registry (the CLI loads before binding,
    so a bad model name is a one-line error), generators in memory by id (tests), or None to
    load ``settings.models`` at startup."""
    settings.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for directory in (settings.data_dir, settings.results_dir, settings.uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        if isinstance(models, ModelRegistry):
            registry = models
        elif models is not None:
            registry = ModelRegistry.of(models)
        else:
            registry = await run_in_threadpool(ModelRegistry.load, settings.models)
        store, queue, leases = open_backend(settings)  # SQLite + memory, or a Redis server shared with other processes
        scheduler = Scheduler(settings, store, queue, registry, leases)
        scheduler.start()
        app.state.service = Service(settings, store, queue, registry, scheduler)
        try:
            yield
        finally:  # blocking on purpose: a cancelled await here would leave workers running past exit
            scheduler.stop()
            store.close()

    app = FastAPI(title="tunesmith", version=__version__, lifespan=lifespan,
                  description="Text-to-music over HTTP: queued jobs with progress events, or short clips "
                              "answered directly. Every answer names the seed and model that reproduce it.")
    body_limit = settings.max_upload_bytes * len(AUDIO_FIELDS) + (1 << 20)  # the files and the fields
    install_error_handlers(app, body_limit)
    app.include_router(router)
    app.mount("/static", StaticFolder(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise ApiError(404, "no web page in this build (the API is under /v1, its docs at /docs)")
        return FileResponse(page, media_type="text/html")

    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=body_limit)
    return app
