"""What goes over the wire: request bodies, the job object, and the error shape.

These pydantic models are the OpenAPI schema (``/openapi.json``, ``/docs``) as well as the
parsers.  Limits that depend on the server's settings or the model (duration, steps,
prompt length) are checked in the routes, where the message can name the limit.  Audio
inputs are not fields here: they arrive as files in a multipart request (see uploads.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Format = Literal["wav", "flac", "mp3", "ogg"]
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
Sampler = Literal["dpmpp-2m", "euler", "heun", "ddim", "dpmpp-2m-sde", "dpmpp-3m-sde"]

# request fields that are generator controls, passed on only when given
CONTROL_FIELDS = ("steps", "cfg", "sampler", "strength", "mask", "temperature", "top_k", "top_p",
                  "intensity", "structure", "loop", "clap", "control_iterations", "unconditional")
# the noise-optimisation (DITTO) targets a request may give as text or numbers; melody (and
# intensity as a recording) come as uploaded files
NOISE_TARGET_FIELDS = ("intensity", "structure", "loop", "clap")


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one line")


class Controls(BaseModel):
    """The generation controls a request may set; a model refuses those it does not take."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, max_length=200, description="a model id from GET /v1/models (default: the first)")
    seed: int | None = Field(None, ge=0, lt=2**63, description="random seed; drawn (and returned) when absent")
    steps: int | None = Field(None, ge=1, description="sampler steps (diffusion models)")
    cfg: float | None = Field(None, ge=0, le=100, description="classifier-free guidance scale (default: the model's)")
    sampler: Sampler | None = Field(None, description="sampler (diffusion models)")
    strength: float | None = Field(None, ge=0, le=1, description="audio-to-audio: 1 = from noise (with init_audio)")
    mask: list[tuple[float, float]] | None = Field(
        None, max_length=64, description="inpainting: [[start_s, end_s], ...] regions of init_audio to regenerate")
    temperature: float | None = Field(None, ge=0, le=100, description="sampling temperature (token LMs)")
    top_k: int | None = Field(None, ge=0, le=1 << 20, description="top-k sampling (token LMs)")
    top_p: float | None = Field(None, ge=0, le=1, description="nucleus sampling (token LMs)")
    # noise optimisation (DITTO; diffusion models): the CLI's --intensity, --structure, --loop, --control-iterations
    intensity: str | None = Field(
        None, max_length=1000, description="loudness over time as 'seconds:level' points, e.g. '0:soft,5:loud,10:-30' "
        "(dBFS or a word: silent, very soft, soft, quiet, medium, moderate, loud, very loud); or upload a "
        "recording as the intensity file to follow its loudness")
    structure: str | None = Field(
        None, max_length=200, description="sections that repeat: letters ('AABA', equal lengths) or "
        "'A:4,B:8,A:4' (seconds)")
    loop: float | None = Field(None, gt=0, le=600, description="seconds of overlap of a seamless loop: S more "
                               "seconds are rendered, made to repeat the head and crossfaded into it (at most half the clip)")
    clap: str | None = Field(None, min_length=1, max_length=500,
                             description="a text to sound like, by tunesmith's CLAP (text control by noise "
                             "optimisation; with unconditional=true the prompt's text is not used otherwise)")
    control_iterations: int | None = Field(
        None, ge=1, description="noise-optimisation steps towards intensity, structure, loop, melody or clap "
        "(default 20, or this server's limit if lower)")
    unconditional: bool | None = Field(None, description="ignore the prompt's text (timing stays): a baseline, "
                                       "or text control by clap alone (diffusion models)")

    @field_validator("mask", mode="before")
    @classmethod
    def _mask_from_form(cls, value: Any) -> Any:
        """A multipart form sends the mask as JSON text."""
        if isinstance(value, str):
            import json

            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("mask must be JSON: [[start_s, end_s], ...]") from None
        return value

    @field_validator("mask")
    @classmethod
    def _mask_regions(cls, value: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        for start, end in value or []:
            if not 0 <= start < end:
                raise ValueError(f"each mask region needs 0 <= start < end, got [{start:g}, {end:g}]")
        return value

    def controls(self) -> dict[str, Any]:
        """The generator controls this request sets (JSON values)."""
        out = {}
        for name in CONTROL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = [list(r) for r in value] if name == "mask" else value
        return out


class GenerationRequest(Controls):
    """POST /v1/generations (JSON, or multipart/form-data with the same fields plus audio files)."""

    prompt: str = Field(description="what the music should be, e.g. 'a lively jig for fiddle, 120 BPM'")
    duration: float = Field(10.0, gt=0, description="seconds of audio")
    format: Format = Field("wav", description="audio format of the result")


class MusicRequest(Controls):
    """POST /v1/audio/music: a short clip, answered with the audio itself (like OpenAI's /v1/audio/speech)."""

    input: str = Field(description="the prompt")
    duration: float = Field(5.0, gt=0, description="seconds of audio (short clips only)")
    response_format: Format = Field("wav", description="audio format of the answer")


class Progress(BaseModel):
    step: int
    total: int


class JobUrls(BaseModel):
    get: str
    stream: str
    cancel: str
    audio: str


class JobView(BaseModel):
    id: str
    status: Status
    model: str
    prompt: str
    duration: float
    seed: int
    format: Format
    controls: dict[str, Any]
    inputs: list[str] = Field(description="the audio inputs the job was given (their control names)")
    position: int | None = Field(description="while queued: place in the queue (1 = next; 0 = being started)")
    progress: Progress
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str | None = Field(description="when a finished job and its audio are deleted")
    sample_rate: int | None
    generation_seconds: float | None
    batch_size: int | None
    info: dict[str, Any] = Field(
        description="what the generator reported about the result, as in the CLI's sidecar: e.g. control_report, "
        "each noise-optimisation control's achieved loss and adherence (intensity and structure: correlation; "
        "melody: accuracy; loop: seam_ratio)")
    urls: JobUrls


class JobList(BaseModel):
    data: list[JobView]


class ControlInfo(BaseModel):
    types: list[str]
    low: float | None
    high: float | None


class ModelInfo(BaseModel):
    id: str
    type: str
    sample_rate: int
    channels: int
    max_duration: float
    default_cfg: float
    controls: dict[str, ControlInfo]
    audio_inputs: list[str]


class ModelList(BaseModel):
    default: str
    data: list[ModelInfo]


class QueueInfo(BaseModel):
    queued: int
    capacity: int


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    models: list[str]
    workers: int
    queue: QueueInfo


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
