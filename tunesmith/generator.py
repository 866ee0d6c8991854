"""The one base every generator is built on (token LM, latent diffusion, and every later family).

The CLI, the Python API, the server and the evaluator talk only to this interface:

    gen = load_generator("NAME_OR_PATH")
    audio = gen.generate(["a waltz for strings"], duration=10.0, seed=0)   # Audio (B, C, T)

A generator is a network (the LM, the DiT) that makes codes (tokens, latents) plus the
codec that turns codes into audio.  Everything that is the same for every family lives
here: the generator directory (the network's model directory, with the codec under
``codec/`` or named in ``config.json`` when it is bundled), fp16 storage, the request
checks, reference audio in the codec's rate and channels, decoding, and the check of
the controls a call passes.  A family says how codes are made (``generate``) and which
controls it takes (``CONTROLS``).

A generator directory's ``config.json`` names its ``generator_type``; the module that
implements a type is imported only when a directory of that type is loaded
(:data:`tunesmith.checkpoint.GENERATOR_TYPE_MODULES`).
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from tunesmith import DEFAULT_GENERATOR
from tunesmith.audio import Audio, load_audio, resample, to_channels
from tunesmith.checkpoint import (
    CONFIG_FILE,
    GENERATOR_TYPE_MODULES,
    PUBLIC_FORMATS,
    bundled_models,
    detect_format,
    load_model,
    read_directory_meta,
    read_model_config,
    refuse_pickles,
    resolve,
    save,
)
from tunesmith.errors import CheckpointError
from tunesmith.loudness import LoudnessTarget, check_target, normalise

CODEC_DIR = "codec"
MAX_PROMPT_CHARS = 2000
ADAPTER_GENERATOR_TYPE = "lora-adapter"  # tunesmith.adapters: the one type that takes an adapter scale
MAX_DURATION = 3600.0  # seconds; whatever a model's config claims (a hostile one may say 1e9)
DEFAULT_LOUDNESS = LoudnessTarget()  # every output: -16 LUFS integrated, true peak <= -1 dBTP
# controls that set the output's level themselves (a user's audio the output keeps, a loudness curve
# in dBFS): their output is not normalised unless a call names a loudness
LEVEL_CONTROLS = ("init_audio", "prompt_audio", "intensity")
_MODEL_SETTING = object()  # ``loudness`` not given: the generator's own ``loudness`` setting
# Inside a generate call: None outside, else whether its output will be normalised.  A family's
# generate that calls its parent's (super().generate) runs inside the outer call, which alone
# normalises; decode leaves the headroom to normalisation rather than clipping at full scale.
_GENERATING: contextvars.ContextVar[bool | None] = contextvars.ContextVar("tunesmith_generating", default=None)


def check_request(prompts: str | list[str], duration: float, max_duration: float) -> list[str]:
    """Validate a generation request, naming the parameter at fault; returns the prompts as a list.

    A time-stamped prompt may be given as sections, a list of (start_s, end_s, text) (or a list
    of such lists for a batch): it becomes the text "0:00-0:20 text; ..." that the CLI takes."""
    from tunesmith.conditioning.prompt import format_timed_prompt, is_section_list

    if is_section_list(prompts):
        prompts = format_timed_prompt(prompts)  # type: ignore[arg-type]
    elif isinstance(prompts, (list, tuple)):
        prompts = [format_timed_prompt(p) if is_section_list(p) else p for p in prompts]
    if isinstance(prompts, str):
        items = [prompts]
    elif isinstance(prompts, (list, tuple)):
        items = list(prompts)
    else:
        raise ValueError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if not items:
        raise ValueError("no prompt given")
    for i, p in enumerate(items):
        where = "prompt" if isinstance(prompts, str) else f"prompts[{i}]"
        if not isinstance(p, str):
            raise ValueError(f"{where} must be a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError("prompt is empty" if isinstance(prompts, str) else f"{where} is empty")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"{where} is too long ({len(p)} characters; the limit is {MAX_PROMPT_CHARS})")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from argv arrive as lone surrogates
            raise ValueError(f"{where} is not valid text (undecodable bytes; use UTF-8)") from None
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ValueError(f"duration must be a number of seconds, got {type(duration).__name__}")
    if not (duration > 0) or not math.isfinite(duration):
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if duration > max_duration:
        raise ValueError(f"duration {duration:g} s is beyond this model's limit of {max_duration:g} s")
    return items


def check_seed(seed: int, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an integer, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"{name} must be in [0, 2**63), got {seed}")
    return seed


def check_seeds(seed: int | list[int], batch: int) -> int | list[int]:
    """One seed for the batch, or a list with one per prompt (row i then equals prompt i generated
    alone with seed[i]: what lets a server batch requests and every result stay reproducible)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"seed: {len(seed)} seeds for {batch} prompts")
        return [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
    return check_seed(seed)


def _number(x: float | None, missing: str) -> str:
    return missing if x is None else str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Control:
    """A generation control: the types its value may have and, for numbers, its range."""

    types: type | tuple[type, ...]
    low: float | None = None
    high: float | None = None

    def check(self, name: str, value: Any) -> None:
        numeric = self.low is not None or self.high is not None
        if (numeric and isinstance(value, bool)) or not isinstance(value, self.types):
            kinds = self.types if isinstance(self.types, tuple) else (self.types,)
            raise ValueError(f"control '{name}' must be {' or '.join(k.__name__ for k in kinds)}, "
                             f"got {type(value).__name__} ({str(value)[:40]})")
        if numeric:
            if not math.isfinite(value):
                raise ValueError(f"control '{name}' must be a finite number, got {value}")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise ValueError(f"control '{name}' must be in [{_number(self.low, '-inf')}, {_number(self.high, 'inf')}], got {value}")


def codec_sample_rate(codec: Any) -> int:
    rate = getattr(codec, "sample_rate", None) or getattr(getattr(codec, "config", None), "sample_rate", None)
    if rate is None:
        raise ValueError(f"{type(codec).__name__} does not say its sample_rate")
    return int(rate)


def codec_channels(codec: Any) -> int:
    return int(getattr(codec, "channels", None) or getattr(getattr(codec, "config", None), "channels", 1))


def as_audio(value: Audio | str | Path, name: str) -> Audio:
    """An Audio with (B, C, T) samples from an Audio or an audio file's path."""
    if isinstance(value, (str, Path)):
        value = load_audio(value)
    if not isinstance(value, Audio):
        raise TypeError(f"{name} must be an Audio or a path to an audio file, got {type(value).__name__}")
    samples = value.samples if value.samples.dim() == 3 else value.samples[None]
    return Audio(samples, value.sample_rate)


class Generator:
    """Text (+ controls) -> codes by a network -> audio by a codec.

    Subclasses set ``generator_type`` and ``CONTROLS`` (name -> the type a value must
    have), keep their network as ``self.network`` and implement ``generate``.
    """

    generator_type: ClassVar[str] = ""
    CONTROLS: ClassVar[dict[str, Control]] = {}
    network: torch.nn.Module
    loudness: float | None = DEFAULT_LOUDNESS.lufs  # LUFS every output is normalised to; None: raw output

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every family's ``generate`` gets the output loudness normalisation (one place for all)."""
        super().__init_subclass__(**kwargs)
        if "generate" in cls.__dict__:
            cls.generate = _loudness_normalised(cls.__dict__["generate"])  # type: ignore[method-assign]

    def __init__(self, network: torch.nn.Module, codec: Any, *, max_duration: float, cfg: float) -> None:
        self.network = network.eval()
        self.codec = codec.eval() if hasattr(codec, "eval") else codec
        self.sample_rate = codec_sample_rate(codec)
        self.channels = codec_channels(codec)
        self.max_duration = min(float(max_duration), MAX_DURATION)
        self.cfg = float(cfg)  # the guidance scale when a call gives none: each model stores its own

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def generate(self, prompts: str | list[str], duration: float, seed: int | list[int] = 0, *,
                 progress: bool = False, callback: Callable[[int, int], None] | None = None,
                 **controls: Any) -> Audio:
        """Audio (B, C, T) for a batch of prompts; ``controls`` are the family's ``CONTROLS``.

        ``seed``: one for the batch, or one per prompt (row i then equals prompt i alone with
        seed[i]).  ``callback(done, total)`` runs after each sampling or decoding step; an
        exception raised in it stops the generation there (a server's progress and cancel)."""
        raise NotImplementedError

    # -- checks ------------------------------------------------------------------

    def accepts(self, control: str) -> bool:
        """Whether this model takes ``control`` (a family's model may lack an input, e.g. melody)."""
        return control in self.CONTROLS

    def check_controls(self, controls: dict[str, Any]) -> None:
        """Refuse controls this model does not take, and values of the wrong type or range, by name,
        before any work (and before any input file is read)."""
        family = self.generator_type or type(self).__name__
        unknown = sorted(set(controls) - set(self.CONTROLS))
        if unknown:
            raise ValueError(f"unknown controls for {family}: {', '.join(unknown)} "
                             f"(it takes: {', '.join(sorted(self.CONTROLS)) or 'none'})")
        for name, value in controls.items():
            if value is not None:
                self.CONTROLS[name].check(name, value)

    # -- audio in, audio out -----------------------------------------------------

    def reference_audio(self, audio: Audio | str | Path, name: str) -> torch.Tensor:
        """A user's reference (an Audio or a file) as (B, C, T) at the codec's rate and channels."""
        audio = as_audio(audio, name)
        wav = resample(audio.samples, audio.sample_rate, self.sample_rate)
        return to_channels(wav, self.channels)

    def num_samples(self, duration: float) -> int:
        return round(duration * self.sample_rate)

    def decode(self, codes: torch.Tensor, duration: float) -> Audio:
        """Codes -> exactly ``duration`` seconds of audio in [-1, 1] (long inputs decoded in chunks)."""
        with torch.inference_mode():
            decode = getattr(self.codec, "decode_long", self.codec.decode)
            wav = decode(codes).float().cpu()
        samples = self.num_samples(duration)
        wav = torch.nn.functional.pad(wav, (0, max(0, samples - wav.shape[-1])))[..., :samples]
        if _GENERATING.get():  # normalisation follows: it scales the peaks under the ceiling instead
            return Audio(wav, self.sample_rate)
        return Audio(wav.clamp(-1.0, 1.0), self.sample_rate)

    # -- the generator directory ---------------------------------------------------

    def config_entries(self) -> dict[str, Any]:
        """What this family stores in config.json beside the network's config."""
        return {"cfg": self.cfg}

    def save(self, directory: str | Path, *, codec_name: str | None = None, fp16: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the generator directory: the network, and the codec under ``codec/`` unless
        ``codec_name`` names the bundled codec it uses.  ``fp16`` halves the network's bytes
        on disk (it loads as fp32); ``extra`` adds entries to config.json."""
        if codec_name is not None and codec_name not in bundled_models():
            raise ValueError(f"codec_name '{codec_name}' is not a bundled model (bundled: {', '.join(bundled_models())})")
        network = self.network
        if fp16:  # a half copy: the live network stays fp32
            network = type(self.network)(self.network.config)
            network.load_state_dict(self.network.state_dict())
            network = network.half()
        meta: dict[str, Any] = {**(extra or {}), "generator_type": self.generator_type,
                                "storage": "fp16" if fp16 else "fp32", **self.config_entries()}
        if codec_name is not None:
            meta["codec"] = codec_name
        directory = save(network, directory, extra=meta)
        if codec_name is None:
            save(self.codec, Path(directory) / CODEC_DIR)
        return directory

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> "Generator":
        """Rebuild a generator from its directory: the network (fp32), its codec, its settings."""
        return cls.from_parts(*load_parts(directory, device), device)

    @classmethod
    def from_parts(cls, network: torch.nn.Module, codec: Any, meta: dict[str, Any], device: str) -> "Generator":
        raise NotImplementedError


def _loudness_normalised(generate: Callable[..., Audio]) -> Callable[..., Audio]:
    """``generate`` with a ``loudness`` keyword (LUFS, or None for the raw output; default: the
    generator's ``loudness``) whose output rows are each normalised to it (BS.1770-4, true peak
    under DEFAULT_LOUDNESS's ceiling), recorded in ``audio.info["loudness"]`` for the sidecar."""

    @functools.wraps(generate)
    def wrapper(self: Generator, prompts: Any, duration: Any, seed: Any = 0, *, loudness: Any = _MODEL_SETTING,
                **kwargs: Any) -> Audio:
        if _GENERATING.get() is not None:  # called through super(): the outer call normalises
            return generate(self, prompts, duration, seed, **kwargs)
        lufs = self.loudness if loudness is _MODEL_SETTING else loudness
        if lufs is not None:
            lufs = check_target(lufs)
        # from a user's audio (audio-to-audio, inpainting, a continuation) its level stands and the samples
        # kept from it stay exact; an intensity curve asks for levels in dBFS
        referenced = loudness is _MODEL_SETTING and any(kwargs.get(name) is not None for name in LEVEL_CONTROLS)
        if referenced:
            lufs = None
        token = _GENERATING.set(lufs is not None)
        try:
            audio = generate(self, prompts, duration, seed, **kwargs)
        finally:
            _GENERATING.reset(token)
        if lufs is None:
            setters = [name for name in LEVEL_CONTROLS if kwargs.get(name) is not None]
            audio.info["loudness"] = {"target_lufs": None, **({"level_set_by": setters} if referenced else {})}
            return audio
        target = LoudnessTarget(lufs, DEFAULT_LOUDNESS.true_peak_dbtp)
        rows, reports = [], []
        for row in audio.samples:
            out, report = normalise(row, audio.sample_rate, target)
            rows.append(out.clamp(-1.0, 1.0))  # under a -1 dBTP ceiling this changes nothing
            reports.append(report)
        audio.samples = torch.stack(rows)
        audio.info["loudness"] = {"target_lufs": lufs, "true_peak_ceiling_dbtp": target.true_peak_dbtp,
                                  **{key: [r[key] for r in reports] for key in reports[0]}}
        return audio

    return wrapper


def load_parts(directory: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """(network in fp32, codec, config.json) of a generator directory: what ``from_parts`` takes."""
    meta = read_model_config(directory)
    network = load_model(directory, map_location=device).float()  # fp16 on disk, fp32 to run
    codec_dir = Path(directory) / CODEC_DIR
    if not meta.get("codec") and not codec_dir.is_dir():
        raise CheckpointError(f"{directory} has no codec under {CODEC_DIR}/ and names no bundled one")
    return network, load_model(meta.get("codec") or codec_dir, map_location=device), meta


def frames_for(duration: float, frame_rate: float, minimum: int = 1) -> int:
    """Codec frames that cover ``duration`` seconds."""
    return max(minimum, math.ceil(duration * frame_rate))


# ---------------------------------------------------------------------------
# generator types -> implementations

_LOADERS: dict[str, Callable[[Path, str], Generator]] = {}


def register_generator(generator_type: str) -> Callable[[Callable[[Path, str], Generator]], Callable[[Path, str], Generator]]:
    """Register ``loader(directory, device) -> Generator`` for a type outside the package (a plug-in,
    a test); the package's own types are found through GENERATOR_TYPE_MODULES."""

    def wrap(fn: Callable[[Path, str], Generator]) -> Callable[[Path, str], Generator]:
        _LOADERS[generator_type] = fn
        return fn

    return wrap


def generator_class(generator_type: str) -> type[Generator]:
    """The class implementing a built-in ``generator_type``, imported on first use."""
    module_name, _, class_name = GENERATOR_TYPE_MODULES[generator_type].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_generator(name_or_path: str | Path | None = None, device: str = "cpu", *,
                   adapter_scale: float | None = None) -> Generator:
    """Load a generator from a bundled name, a directory, or ``None``/"default" for the default one.

    ``adapter_scale``: for a LoRA adapter directory, the strength of its update (0: the base
    exactly; default: the adapter's own, 1 unless changed); an error for anything else."""
    if name_or_path is None or str(name_or_path) == "default":
        name_or_path = DEFAULT_GENERATOR
    directory = resolve(name_or_path)
    public = detect_format(directory)  # MusicGen (transformers), Stable Audio Open (diffusers)
    if public is not None:
        if adapter_scale is not None:
            raise CheckpointError(f"an adapter scale applies to a LoRA adapter; {name_or_path} is a {public} checkpoint")
        refuse_pickles(directory)
        module_name, _, function = PUBLIC_FORMATS[public].partition(":")
        return getattr(importlib.import_module(module_name), function)(directory, device)
    if not (Path(directory) / CONFIG_FILE).is_file():
        refuse_pickles(directory)  # audiocraft's own checkpoints are pickles: say so, not "no config.json"
    kind = read_directory_meta(directory).get("generator_type")
    if adapter_scale is not None:
        if kind != ADAPTER_GENERATOR_TYPE:
            raise CheckpointError(f"an adapter scale applies to a LoRA adapter; {name_or_path} is not one "
                                  f"(generator_type={kind!r})")
        return generator_class(kind).load(directory, device, adapter_scale=adapter_scale)  # type: ignore[call-arg]
    if kind in _LOADERS:
        return _LOADERS[kind](directory, device)
    if kind in GENERATOR_TYPE_MODULES:
        return generator_class(kind).load(directory, device)
    known = ", ".join(sorted({*GENERATOR_TYPE_MODULES, *_LOADERS}))
    raise CheckpointError(f"{directory} is not a generator (generator_type={kind!r}; known: {known})")
