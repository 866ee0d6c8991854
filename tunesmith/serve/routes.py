"""The HTTP routes: jobs (Replicate-style), a synchronous endpoint for short clips, models, health.

    POST   /v1/generations               -> 202 job            (JSON, or multipart with audio files)
    GET    /v1/generations               -> recent jobs
    GET    /v1/generations/{id}          -> job
    DELETE /v1/generations/{id}          -> job, canceled      (409 once it has finished)
    GET    /v1/generations/{id}/events   -> server-sent events: queued, progress, done
    GET    /v1/generations/{id}/audio    -> the audio          (?format= converts)
    POST   /v1/audio/music               -> the audio itself   (like OpenAI's /v1/audio/speech)
    GET    /v1/models, GET /health

Every request is checked whole (body, model, limits, controls, then uploads) before a job is
made, and every answer names the seed and model, so a result can be reproduced with
``tunesmith generate``.  Errors are ``{"error": "one line"}`` (see app.py).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import math
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tunesmith import __version__
from tunesmith.audio import AUDIO_SUFFIXES
from tunesmith.generator import check_request
from tunesmith.serve import results
from tunesmith.serve.queue import JobQueue, QueueClosed, QueueFull
from tunesmith.serve.registry import ModelRegistry, ServedModel
from tunesmith.serve.scheduler import Scheduler
from tunesmith.serve.schemas import (
    ErrorBody,
    Format,
    GenerationRequest,
    Health,
    JobList,
    JobView,
    ModelList,
    MusicRequest,
    iso,
)
from tunesmith.serve.settings import ServeSettings
from tunesmith.serve.store import CANCELED, FAILED, FINISHED, INPUT_ERROR, QUEUED, RUNNING, SUCCEEDED, Job, JobStore
from tunesmith.serve.uploads import MIDI_FIELDS, UploadRejected, delete_uploads, store_upload

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}
AUDIO_FIELDS = ("init_audio", "melody", "prompt_audio", "intensity")  # the file parts a request may carry
TEXT_OR_FILE = ("intensity",)  # fields that are text, or a file (a recording whose loudness to follow)
JOB_ID = r"[0-9a-f]{32}\Z"


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class Service:
    """What the routes work with, built once per app (app.state.service)."""

    settings: ServeSettings
    store: JobStore
    queue: JobQueue
    registry: ModelRegistry
    scheduler: Scheduler


def service(request: Request) -> Service:
    return request.app.state.service


# -- authentication ------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, description="the server's API key, when it has one (`--api-key`)")


async def require_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """With an API key set, every /v1 request needs ``Authorization: Bearer KEY`` (a GET may send
    ``?api_key=KEY`` instead: a browser's EventSource and <audio> cannot set headers)."""
    key = service(request).settings.api_key
    if not key:
        return
    given = credentials.credentials if credentials else None
    if given is None and request.method == "GET":
        given = request.query_params.get("api_key")
    if not given or not secrets.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
        raise ApiError(401, "missing or wrong API key (send the header Authorization: Bearer KEY)",
                       {"WWW-Authenticate": "Bearer"})


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {400: "bad request (the message says which field)", 401: "missing or wrong API key",
             404: "no such job", 409: "the job is not in a state for this", 413: "upload too large or too long",
             415: "unsupported content type", 429: "queue full (see Retry-After)", 500: "generation failed",
             504: "took too long"}
    return {s: {"model": ErrorBody, "description": words[s]} for s in statuses}


router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=_errors(401))


# -- request parsing -------------------------------------------------------------------

def validation_message(err: ValidationError) -> str:
    """A pydantic error as one line naming the field."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    if first.get("type") == "extra_forbidden":
        if where in AUDIO_FIELDS:
            return f"{where}: send audio inputs as files in a multipart/form-data request"
        return f"unknown field '{where}'"
    if first.get("type") == "missing":
        return f"{where} is required"
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"{where}: {message}"


async def parse_body(request: Request, kind: type[BaseModel]) -> tuple[Any, dict[str, UploadFile], Any]:
    """The request as ``kind``, from JSON or a multipart form; also the form's files, and the
    form itself (the caller closes it)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: dict[str, UploadFile] = {}
    form = None
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=len(AUDIO_FIELDS), max_fields=64)
        except Exception as err:  # starlette: HTTPException(400) with the parser's reason
            detail = getattr(err, "detail", None) or str(err)
            raise ApiError(400, f"cannot read the multipart body: {detail}") from None
        try:
            data: Any = _form_fields(form, files)
        except ApiError:
            await form.close()
            raise
    elif content_type in ("application/json", ""):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"invalid JSON body: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}")
    else:
        raise ApiError(415, f"unsupported content type '{content_type}': send application/json or multipart/form-data")
    try:
        return kind.model_validate(data), files, form
    except ValidationError as err:
        if form is not None:
            await form.close()
        raise ApiError(400, validation_message(err)) from None


def _form_fields(form: Any, files: dict[str, UploadFile]) -> dict[str, Any]:
    """A multipart form's text fields (an empty one counts as not given); its files go to ``files``."""
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, str) and value == "":
            continue  # an empty field counts as not given
        if name in fields or name in files:
            if name in TEXT_OR_FILE and (name in files) != isinstance(value, UploadFile):
                raise ApiError(400, f"{name} is given twice, as text and as a file: send one")
            raise ApiError(400, f"field '{name}' is given twice")
        if isinstance(value, UploadFile):
            if name not in AUDIO_FIELDS:
                raise ApiError(400, f"unexpected file field '{name}' (audio inputs: {', '.join(AUDIO_FIELDS)})")
            files[name] = value
        else:
            fields[name] = value
    return fields


def _request_body(schema: type[BaseModel], multipart: bool) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its own body (JSON or multipart)."""
    json_schema = schema.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": json_schema}}
    if multipart:
        form = json.loads(json.dumps(json_schema))
        form["properties"]["mask"] = {"type": "string", "description": "JSON: [[start_s, end_s], ...]"}
        for name in AUDIO_FIELDS:
            kinds = "WAV, FLAC, OGG or MP3" + (", or MIDI (.mid)" if name in MIDI_FIELDS else "")
            upload = {"type": "string", "format": "binary", "description": f"{name}: {kinds} (models that take it)"}
            if name in TEXT_OR_FILE:  # text as in JSON, or a recording to follow
                text = dict(json_schema["properties"][name]["anyOf"][0])
                upload = {"anyOf": [text, upload], "description": json_schema["properties"][name]["description"]}
            form["properties"][name] = upload
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}


# -- building a job ---------------------------------------------------------------------

def check_limits(svc: Service, model: ServedModel, prompt: str, duration: float, controls: dict[str, Any],
                 audio_inputs: list[str], max_duration: float, prompt_field: str = "prompt") -> None:
    """The request against this server's limits and the model's controls; ApiError(400) naming the field."""
    limit = svc.settings.max_prompt_chars
    if len(prompt) > limit:
        raise ApiError(400, f"{prompt_field} is too long ({len(prompt)} characters; the limit is {limit})")
    try:
        check_request(prompt, duration, math.inf)
    except ValueError as err:
        raise ApiError(400, str(err).replace("prompt", prompt_field, 1)) from None
    if duration > max_duration:
        raise ApiError(400, f"duration {duration:g} s is beyond the limit of {max_duration:g} s for '{model.id}'")
    if controls.get("steps", 0) > svc.settings.max_steps:
        raise ApiError(400, f"steps {controls['steps']} is beyond this server's limit of {svc.settings.max_steps}")
    if controls.get("control_iterations", 0) > svc.settings.max_control_iterations:
        raise ApiError(400, f"control_iterations {controls['control_iterations']} is beyond this server's limit of "
                            f"{svc.settings.max_control_iterations}")
    for name in TEXT_OR_FILE:
        if name in controls and name in audio_inputs:
            raise ApiError(400, f"{name} is given twice, as text and as a file: send one")
    for name in audio_inputs:
        if name not in model.audio_inputs:
            takes = ", ".join(model.audio_inputs) or "none"
            raise ApiError(400, f"model '{model.id}' takes no {name} (its audio inputs: {takes})")
    if "mask" in controls and "init_audio" not in audio_inputs:
        raise ApiError(400, "mask needs init_audio (the audio whose regions it regenerates)")
    try:
        model.generator.check_controls({**controls, **{name: "upload" for name in audio_inputs}})
    except ValueError as err:
        raise ApiError(400, f"model '{model.id}': {err}") from None
    check_noise_targets(model, duration, controls, audio_inputs)


def noise_targets(model: ServedModel, controls: dict[str, Any], audio_inputs: list[str]) -> list[str]:
    """The noise-optimisation (DITTO) targets a request gives this model (none for a model without them)."""
    return [name for name in getattr(model.generator, "NOISE_CONTROLS", ())
            if name in controls or name in audio_inputs]


def check_noise_targets(model: ServedModel, duration: float, controls: dict[str, Any], audio_inputs: list[str]) -> None:
    """What the worker would refuse only after it started, refused now by name: the targets'
    text parsed (intensity curve, structure pattern), the loop against the clip, the targets
    against init_audio, and control_iterations without a target."""
    from tunesmith.control.ditto import FEATURE_RATE, ControlLoss
    from tunesmith.control.features import intensity_target, structure_target

    targets = noise_targets(model, controls, audio_inputs)
    if not targets:
        if "control_iterations" in controls:
            raise ApiError(400, "control_iterations needs a target: intensity, structure, loop, melody or clap")
        return
    if "init_audio" in audio_inputs:
        raise ApiError(400, f"{', '.join(targets)} (noise optimisation) do not combine with init_audio: "
                            "it starts from noise")
    if int(duration * FEATURE_RATE) < 4:
        raise ApiError(400, f"duration {duration:g} s is too short for {', '.join(targets)} "
                            f"(noise optimisation needs at least {4 / FEATURE_RATE:g} s)")
    parsers = {"intensity": lambda text: intensity_target(text, 2, FEATURE_RATE),
               "structure": lambda text: structure_target(text, 2, FEATURE_RATE),
               "loop": lambda seconds: ControlLoss({"loop": seconds}, model.generator.sample_rate, duration)}
    for name, parse in parsers.items():
        value = controls.get(name)
        if value is None:
            continue
        if name in TEXT_OR_FILE and Path(str(value).strip()).suffix.lower() in AUDIO_SUFFIXES:  # read as a path
            raise ApiError(400, f"{name}: to follow a recording, upload it as the {name} file (no paths)")
        try:
            parse(value)
        except ValueError as err:
            message = " ".join(str(err).split())
            raise ApiError(400, message if message.startswith(name) else f"{name}: {message}") from None


def default_control_iterations(model: ServedModel) -> int | None:
    """The iterations the generator runs when a request gives none (None: it does not say)."""
    try:
        default = inspect.signature(model.generator.optimized_noise).parameters["iterations"].default
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return default if isinstance(default, int) and not isinstance(default, bool) else None


async def create_job(svc: Service, req: GenerationRequest | MusicRequest, files: dict[str, UploadFile],
                     prompt: str, duration: float, fmt: str, max_duration: float) -> Job:
    """Check a request whole, store its uploads, queue the job (429 when the queue is full)."""
    try:
        model = svc.registry.get(req.model)
    except KeyError as err:
        raise ApiError(400, str(err.args[0])) from None
    controls = req.controls()
    max_duration = min(max_duration, model.generator.max_duration)
    if "duration" not in req.model_fields_set:  # the default, as long as this model and server allow
        duration = min(duration, max_duration)
    check_limits(svc, model, prompt, duration, controls, sorted(files), max_duration,
                 "input" if isinstance(req, MusicRequest) else "prompt")
    if noise_targets(model, controls, sorted(files)) and "control_iterations" not in controls:
        default = default_control_iterations(model)  # a server limit below the model's default caps it, on record
        if default is not None and default > svc.settings.max_control_iterations:
            controls["control_iterations"] = svc.settings.max_control_iterations
    if len(svc.queue) >= svc.queue.capacity:
        raise queue_full(svc)
    inputs: dict[str, str] = {}
    try:
        for name, upload in sorted(files.items()):
            inputs[name] = await run_in_threadpool(
                store_upload, name, upload.file, svc.settings.uploads_dir,
                max_bytes=svc.settings.max_upload_bytes, max_seconds=svc.settings.max_upload_seconds)
    except UploadRejected as err:
        delete_uploads(svc.settings.uploads_dir, list(inputs.values()))
        raise ApiError(err.status, str(err)) from None
    job = Job(id=uuid.uuid4().hex, model=model.id, prompt=prompt, duration=float(duration),
              seed=req.seed if req.seed is not None else secrets.randbelow(2**31), format=fmt,
              controls=controls, inputs=inputs, created_at=time.time())
    try:
        svc.scheduler.submit(job)
    except (QueueFull, QueueClosed):
        delete_uploads(svc.settings.uploads_dir, list(inputs.values()))
        raise queue_full(svc) from None
    return job


def queue_full(svc: Service) -> ApiError:
    wait = svc.scheduler.retry_after()
    return ApiError(429, f"the queue is full ({svc.queue.capacity} jobs); retry in {wait} s",
                    {"Retry-After": str(wait)})


def view(svc: Service, job: Job) -> dict[str, Any]:
    base = f"/v1/generations/{job.id}"
    expires = job.finished_at + svc.settings.result_ttl_s if job.finished_at is not None else None
    return JobView(
        id=job.id, status=job.status, model=job.model, prompt=job.prompt, duration=job.duration, seed=job.seed,
        format=job.format, controls=job.controls, inputs=sorted(job.inputs),
        position=(svc.scheduler.position(job.id) or 0) if job.status == QUEUED else None,
        progress={"step": job.step, "total": job.total}, error=job.error,
        created_at=iso(job.created_at), started_at=iso(job.started_at), finished_at=iso(job.finished_at),
        expires_at=iso(expires), sample_rate=job.sample_rate, generation_seconds=job.generation_seconds,
        batch_size=job.batch_size, info=job.info,
        urls={"get": base, "stream": f"{base}/events", "cancel": base, "audio": f"{base}/audio"},
    ).model_dump()


def find_job(svc: Service, job_id: str) -> Job:
    job = svc.store.get(job_id) if re.match(JOB_ID, job_id) else None
    if job is None:
        raise ApiError(404, f"no job '{job_id[:64]}' (unknown, or deleted after its retention time)")
    return job


def audio_headers(job: Job) -> dict[str, str]:
    """What reproduces the audio, on every audio answer."""
    return {"X-Job-Id": job.id, "X-Seed": str(job.seed), "X-Model": job.model,
            "X-Duration": f"{job.duration:g}", "X-Sample-Rate": str(job.sample_rate or ""),
            "Content-Disposition": f'inline; filename="{job.result_name}"'}


def not_ready(job: Job) -> ApiError:
    if job.status == FAILED:
        return ApiError(409, f"job {job.id} failed: {job.error}")
    if job.status == CANCELED:
        return ApiError(409, f"job {job.id} was canceled; it has no audio")
    return ApiError(409, f"job {job.id} is {job.status}; its audio is not ready (follow its stream URL)")


def audio_response(svc: Service, job: Job, fmt: str | None) -> Response:
    path = results.audio_path(svc.settings.results_dir, job)
    if not path.is_file():
        raise ApiError(404, f"the audio of job {job.id} is gone (deleted after its retention time)")
    headers = audio_headers(job)
    if fmt is None or fmt == job.format:
        return FileResponse(path, media_type=MEDIA_TYPES[job.format], headers=headers)
    import soundfile as sf
    import torch

    from tunesmith.audio import write_audio

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    write_audio(buffer, torch.from_numpy(data.T.copy()), rate, fmt)
    headers["Content-Disposition"] = f'inline; filename="{job.id}.{fmt}"'
    return Response(buffer.getvalue(), media_type=MEDIA_TYPES[fmt], headers=headers)


# -- routes ----------------------------------------------------------------------------------

@v1.post("/generations", status_code=202, response_model=JobView, summary="Queue a generation",
         responses=_errors(400, 413, 415, 429), openapi_extra=_request_body(GenerationRequest, multipart=True))
async def create_generation(request: Request) -> JSONResponse:
    """Queue a job; answers 202 with the job (its seed, drawn when absent, and its URLs).
    Audio inputs (``init_audio``, ``melody``, ``prompt_audio``, ``intensity`` as a recording) go as files
    in a multipart form; ``melody`` may be a MIDI file."""
    svc = service(request)
    req, files, form = await parse_body(request, GenerationRequest)
    try:
        job = await create_job(svc, req, files, req.prompt, req.duration, req.format, svc.settings.max_duration)
    finally:
        if form is not None:
            await form.close()
    body = view(svc, svc.store.get(job.id) or job)
    return JSONResponse(body, status_code=202, headers={"Location": body["urls"]["get"]})


@v1.get("/generations", response_model=JobList, summary="Recent jobs")
async def list_generations(request: Request, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
    svc = service(request)
    return {"data": [view(svc, job) for job in svc.store.recent(limit)]}


@v1.get("/generations/{job_id}", response_model=JobView, summary="A job", responses=_errors(404))
async def get_generation(request: Request, job_id: str) -> dict[str, Any]:
    svc = service(request)
    return view(svc, find_job(svc, job_id))


@v1.delete("/generations/{job_id}", response_model=JobView, summary="Cancel a job", responses=_errors(404, 409))
async def cancel_generation(request: Request, job_id: str) -> dict[str, Any]:
    """A queued job is dropped; a running one stops at its next step."""
    svc = service(request)
    find_job(svc, job_id)
    before = svc.scheduler.cancel(job_id)
    if before is None:
        raise ApiError(404, f"no job '{job_id}'")
    if before in FINISHED:
        done = "been canceled" if before == CANCELED else before
        raise ApiError(409, f"job {job_id} has already {done}; nothing to cancel")
    return view(svc, find_job(svc, job_id))


@v1.get("/generations/{job_id}/audio", summary="A finished job's audio", response_class=Response,
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "the audio"},
                   **_errors(404, 409)})
async def get_audio(request: Request, job_id: str,
                    format: Format | None = Query(None, description="convert to this format")) -> Response:
    svc = service(request)
    job = find_job(svc, job_id)
    if job.status != SUCCEEDED:
        raise not_ready(job)
    return await run_in_threadpool(audio_response, svc, job, format)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(request: Request, svc: Service, job_id: str) -> AsyncIterator[str]:
    """``queued`` {id, status, seed, model, position}, ``progress`` {id, status, seed, model, step,
    total}, then ``done`` {the job, as GET returns it}; each only when it changed, and a comment
    now and then keeps proxies from closing a quiet stream."""
    last: str | None = None
    last_sent = time.monotonic()
    while True:
        job = svc.store.get(job_id)
        if job is None:
            yield sse("error", {"error": f"job {job_id} was deleted"})
            return
        about = {"id": job.id, "status": job.status, "seed": job.seed, "model": job.model}
        if job.status == QUEUED:
            message = sse("queued", {**about, "position": svc.scheduler.position(job.id) or 0})
        elif job.status == RUNNING:
            message = sse("progress", {**about, "step": job.step, "total": job.total})
        else:
            yield sse("done", view(svc, job))
            return
        if message != last:
            yield message
            last, last_sent = message, time.monotonic()
        elif time.monotonic() - last_sent > svc.settings.keepalive_s:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(svc.settings.poll_interval_s)  # a client that left ends the stream at the next send


@v1.get("/generations/{job_id}/events", summary="Progress as server-sent events", response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "events: queued, progress, done"},
                   **_errors(404)})
async def stream_generation(request: Request, job_id: str) -> StreamingResponse:
    svc = service(request)
    find_job(svc, job_id)
    return StreamingResponse(job_events(request, svc, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@v1.post("/audio/music", summary="A short clip, answered with its audio", response_class=Response,
         responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                          "description": "the audio; X-Seed and X-Model say how to reproduce it"},
                    **_errors(400, 409, 413, 415, 429, 500, 504)},
         openapi_extra=_request_body(MusicRequest, multipart=True))
async def music(request: Request) -> Response:
    """Runs through the same queue as jobs (and may share a batch), for clips up to the server's
    ``sync_max_duration``; the answer is the audio bytes."""
    svc = service(request)
    req, files, form = await parse_body(request, MusicRequest)
    try:
        job = await create_job(svc, req, files, req.input, req.duration, req.response_format,
                               svc.settings.sync_max_duration)
    finally:
        if form is not None:
            await form.close()
    deadline = time.monotonic() + svc.settings.sync_timeout_s
    while True:
        found = svc.store.get(job.id)
        if found is None:
            raise ApiError(500, f"job {job.id} vanished")
        job = found
        if job.finished:
            break
        if time.monotonic() > deadline or await request.is_disconnected():
            svc.scheduler.cancel(job.id)
            raise ApiError(504, f"the clip took over {svc.settings.sync_timeout_s:g} s; canceled")
        await asyncio.sleep(svc.settings.poll_interval_s)
    if job.status == FAILED:
        raise ApiError(400 if job.error_kind == INPUT_ERROR else 500, job.error or "generation failed")
    if job.status == CANCELED:
        raise ApiError(409, f"job {job.id} was canceled")
    return await run_in_threadpool(audio_response, svc, job, None)


@v1.get("/models", response_model=ModelList, summary="The models this server runs")
async def list_models(request: Request) -> dict[str, Any]:
    svc = service(request)
    return {"default": svc.registry.default,
            "data": [m.describe(svc.settings.max_duration) for m in svc.registry]}


@router.get("/health", response_model=Health, summary="Liveness, models and queue")
async def health(request: Request) -> dict[str, Any]:
    svc = service(request)
    return {"status": "ok", "version": __version__, "models": list(svc.registry.models),
            "workers": svc.settings.workers, "queue": {"queued": len(svc.queue), "capacity": svc.queue.capacity}}


router.include_router(v1)
