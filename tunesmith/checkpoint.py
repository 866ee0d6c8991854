"""Model directories: ``config.json`` + ``model.safetensors``, and nothing that can run code.

A model class opts in with :func:`register_model`; it must take its config
dataclass as the only constructor argument and keep it as ``self.config``.
``save(model, dir)`` writes the directory; ``load(name_or_path)`` resolves a
bundled name, a local path, or (when the network allows) a Hugging Face repo id,
and rebuilds the model.  Weights are read with safetensors only: a pickle file in
its place is refused before anything in it can execute.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunesmith import __version__
from tunesmith.config import from_dict, to_dict
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.files import atomic_directory, current_umask

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BUNDLED_DIR = Path(__file__).parent / "models"

M = TypeVar("M")

_MODEL_TYPES: dict[str, tuple[type, type]] = {}

# Where each saved type is implemented: a directory's type is looked up here and only that
# module is imported, so loading the default generator never loads the training engine or
# another family.  A new model type or generator family adds its line.
MODEL_TYPE_MODULES: dict[str, str] = {
    "codec-rvq": "tunesmith.codec.model",
    "codec-vae": "tunesmith.codec.model",
    "codec-oobleck": "tunesmith.codec.oobleck",  # Stable Audio's VAE (tunesmith/hub/stable_audio.py)
    "clap": "tunesmith.clap.model",
    "lm": "tunesmith.lm.model",
    "dit": "tunesmith.diffusion.dit",
    "dpd": "tunesmith.hybrid.dpd",  # the two-stage generator's dual-path diffusion (stage 2)
}
GENERATOR_TYPE_MODULES: dict[str, str] = {  # generator_type -> "module:class"
    "token-lm": "tunesmith.lm.generator:TokenLMGenerator",
    "latent-diffusion": "tunesmith.diffusion.generator:LatentDiffusionGenerator",
    "lora-adapter": "tunesmith.adapters.generator:AdapterGenerator",  # a base generator + a LoRA update
    "two-stage": "tunesmith.hybrid.generator:TwoStageGenerator",  # coarse-token LM + dual-path diffusion
}
# public layouts: format name -> "module:function(directory, device) -> Generator", imported on first use
PUBLIC_FORMATS: dict[str, str] = {
    "musicgen": "tunesmith.hub.musicgen:load_musicgen",
    "stable-audio-open": "tunesmith.hub.stable_audio:load_stable_audio",
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".th", ".ckpt", ".pkl")


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def detect_format(directory: str | Path) -> str | None:
    """The public format of a directory (a key of :data:`PUBLIC_FORMATS`), or None when it is
    not one (a tunesmith directory, or something else)."""
    directory = Path(directory)
    index = _json_object(directory / "model_index.json")
    if index is not None and index.get("_class_name") == "StableAudioPipeline":
        return "stable-audio-open"
    config = _json_object(directory / "config.json")
    if config is not None and "generator_type" not in config:
        if config.get("model_type") in ("musicgen", "musicgen_melody"):
            return "musicgen"
    return None


def refuse_pickles(directory: str | Path) -> None:
    """One line when a directory holds its weights only as pickles (which we never unpickle)."""
    directory = Path(directory)
    if any(directory.rglob("*.safetensors")):
        return
    pickles = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{directory} holds its weights as pickles ({', '.join(pickles[:3])}), which can run code "
                              "when loaded; tunesmith reads only safetensors: use the transformers/diffusers "
                              "safetensors release of this model")


def register_model(name: str, config_class: type) -> Callable[[type[M]], type[M]]:
    """Class decorator: make ``cls`` saveable/loadable under ``model_type`` ``name``."""

    def wrap(cls: type[M]) -> type[M]:
        _MODEL_TYPES[name] = (cls, config_class)
        cls.model_type = name  # type: ignore[attr-defined]
        return cls

    return wrap


def model_types() -> list[str]:
    return sorted(_MODEL_TYPES)


# ---------------------------------------------------------------------------
# tensors <-> files, atomically


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors with safetensors (contiguous CPU copies; shared storage is fine)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        save_file(flat, str(path), metadata=metadata)
    except SafetensorError as err:  # a full disk arrives as "os error 28"
        raise OSError(f"cannot write {path}: {err}") from None
    os.chmod(path, 0o666 & ~current_umask())  # safetensors writes 0600; new files follow the umask


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length, then a JSON object.

    Checked before anything else reads the file, so a pickle (which starts with 0x80 or,
    for torch.save, a zip 'PK' signature) is never handed to a loader.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle above all) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if not _looks_like_safetensors(path):
        raise CheckpointError(
            f"{path} is not a safetensors file (a pickle or torch.save file, perhaps); refusing to load "
            "it, since pickle can execute code. Convert it to safetensors in a trusted environment."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from None


# ---------------------------------------------------------------------------
# model directories


def save(model: torch.nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for a registered model, atomically."""
    model_type = getattr(model, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise TypeError(f"{type(model).__name__} is not a registered model (use @register_model)")
    directory = Path(directory)
    meta = {
        "model_type": model_type,
        "tunesmith_version": __version__,
        "config": to_dict(model.config),
        **(extra or {}),
    }
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_tensors(dict(model.state_dict()), tmp / WEIGHTS_FILE)
    return directory


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


DOWNLOADS_ENV = "TUNESMITH_ALLOW_DOWNLOADS"


def downloads_allowed() -> bool:
    """Fetching from the Hugging Face Hub needs the user's explicit consent (this variable = 1):
    a model name can come from a file someone else wrote."""
    return os.environ.get(DOWNLOADS_ENV, "") == "1" and not hf_hub_offline()


def hf_hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hf_cached_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of a repo, if one is there (never touches the network)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or a malformed id): the caller says what to do
        return None


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def resolve(name_or_path: str | Path, *, allow_download: bool | None = None) -> Path:
    """Find a model directory: a local path, a bundled name, a Hugging Face repo id already in the
    local HF cache, or (with consent: ``allow_download``, default :func:`downloads_allowed`; never
    under HF_HUB_OFFLINE) a repo id fetched from the Hub."""
    if not isinstance(name_or_path, (str, Path)):
        raise CheckpointError(f"a model is named by a string or a path, got {type(name_or_path).__name__}")
    text = str(name_or_path)
    if not text.strip():
        raise CheckpointError("no model named (an empty name)")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{text} is not a model directory (it is a file)")
    if (BUNDLED_DIR / text / CONFIG_FILE).is_file() and "/" not in text and "\\" not in text:
        return BUNDLED_DIR / text
    known = ", ".join(bundled_models()) or "none"
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
    if not looks_like_repo:
        if "/" in text or text.startswith((".", "~")):
            raise CheckpointError(f"no such model directory: {text}")
        raise CheckpointError(f"unknown model '{text}': not a directory and not a bundled model (bundled: {known})")
    cached = hf_cached_snapshot(text)
    if cached is not None:
        return cached
    where = f"not a directory, not a bundled model (bundled: {known}) and not in the Hugging Face cache ({hf_cache_dir()})"
    if hf_hub_offline():
        raise CheckpointError(f"unknown model '{text}': {where}; HF_HUB_OFFLINE is set, so download it elsewhere "
                              f"with `hf download {text}` into that cache, or pass its directory")
    if not (downloads_allowed() if allow_download is None else allow_download):
        raise CheckpointError(f"unknown model '{text}': {where}; download it with `hf download {text}` (it goes to "
                              f"that cache), or set {DOWNLOADS_ENV}=1 to let tunesmith fetch it")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"fetching '{text}' needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*/*.json",
                                                            "*/*.safetensors", "*.model", "*/*.model"]))
    except Exception as err:  # network or not-found: report, don't crash
        raise CheckpointError(f"could not fetch '{text}' from the Hugging Face Hub: {str(err)[:200]}") from None


def read_directory_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a directory, which must be a JSON object."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model directory: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {str(err)[:200]}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a {type(meta).__name__}")
    return meta


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model directory."""
    meta = read_directory_meta(directory)
    if "model_type" not in meta or "config" not in meta:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: expected keys 'model_type' and 'config'")
    return meta


def load_model(name_or_path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a registered model from its directory (eval mode)."""
    directory = resolve(name_or_path)
    meta = read_model_config(directory)
    model_type = meta["model_type"]
    if model_type not in _MODEL_TYPES and model_type in MODEL_TYPE_MODULES:
        importlib.import_module(MODEL_TYPE_MODULES[model_type])  # registers the type
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(f"{directory}: unknown model_type '{model_type}' "
                              f"(known: {', '.join(sorted({*MODEL_TYPE_MODULES, *_MODEL_TYPES}))})")
    cls, config_class = _MODEL_TYPES[model_type]
    try:
        config = from_dict(config_class, meta["config"])
    except ConfigError as err:
        raise CheckpointError(f"{directory}/{CONFIG_FILE}: {err}") from None
    model = cls(config)
    state = load_tensors(directory / WEIGHTS_FILE)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{directory}: weights do not match the config (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]}, wrong shape: {wrong_shape[:3]})"
        )
    check_weights(state, expected, directory)
    model.load_state_dict(state)
    return model.to(map_location).eval()


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse weights a model must not run with: integers where it has floats (they would be cast
    silently) and NaN or infinite values (they make NaN audio, or full-scale noise)."""
    for name, tensor in state.items():
        if expected[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{where}: weight '{name}' is {tensor.dtype}, the model needs floating point")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: weight '{name}' contains NaN or infinite values (a corrupt file?)")


def init_from(model: torch.nn.Module, source: str | Path) -> list[str]:
    """Copy the weights of the model directory ``source`` into ``model``, a model of the same
    type that may add parts the trained one lacks (new conditioning, say): those keep their
    initialisation.  Returns their parameter names; any other difference is an error."""
    trained = load_model(source)
    if type(trained) is not type(model):
        raise ValueError(f"init_from: {source} holds a {type(trained).__name__}, this run trains a {type(model).__name__}")
    own, theirs = model.state_dict(), trained.state_dict()
    extra = sorted(set(theirs) - set(own))
    mismatched = sorted(k for k in theirs if k in own and own[k].shape != theirs[k].shape)
    if extra or mismatched:
        raise ValueError(f"init_from: {source} does not fit this run's model "
                         f"(parameters it has and the model lacks: {extra or 'none'}; different shapes: {mismatched or 'none'})")
    model.load_state_dict({k: v.float() for k, v in theirs.items()}, strict=False)
    return sorted(set(own) - set(theirs))
