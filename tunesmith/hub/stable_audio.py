"""Stable Audio Open (diffusers' layout) as a tunesmith generator: 44.1 kHz stereo.

    gen = tunesmith.load("stabilityai/stable-audio-open-1.0")   # a directory, or a repo in the HF cache
    audio = gen.generate("128 BPM tech house drum loop", duration=10.0, seed=0)

A diffusers directory (``model_index.json`` naming ``StableAudioPipeline``) holds the DiT
(``transformer/``), the projection model (``projection_model/``: T5's projection and the two
number conditioners of the timing), the Oobleck VAE (``vae/``), T5 (``text_encoder/``,
``tokenizer/``) and the scheduler's settings (``scheduler/``).  The DiT and the projection
model become one tunesmith :class:`~tunesmith.diffusion.dit.DiT`, the VAE a
:class:`~tunesmith.codec.oobleck.OobleckVAE` (both by the table in
:mod:`tunesmith.hub.stable_audio_keys`); T5 runs in transformers.  The result is a
:class:`~tunesmith.diffusion.generator.LatentDiffusionGenerator`, so every sampler, guidance
option, audio-to-audio, inpainting (RePaint: the model has no mask channels) and the DITTO
controls apply, and its denoiser is an ordinary tunesmith denoiser for distillation.

What Stable Audio's pipeline does and this reproduces: the v-objective on the cosine schedule
(our ``"v"`` denoiser; sigma_data 1), DPM-Solver++(2M) SDE over an exponential schedule from
sigma 500 to 0.3 (from ``scheduler/``), guidance 7, the whole training window of latents
generated whatever the duration (the timing tells the model where the sound ends) and the
audio cut to the duration, T5 padded to the tokenizer's full length.  ``full_window = False``
generates only the frames the duration needs: faster for short clips, outside what the model
was trained on.  Weights are read from safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from tunesmith.audio import Audio
from tunesmith.codec.oobleck import OobleckVAE
from tunesmith.conditioning.text import HFTextEncoder
from tunesmith.diffusion.dit import DiT
from tunesmith.diffusion.generator import LatentDiffusionGenerator, LatentResult
from tunesmith.errors import CheckpointError
from tunesmith.hub.stable_audio_keys import (
    DIT_KEYS,
    SamplingConfig,
    dit_config,
    expand,
    map_weights,
    sampling_config,
    vae_config,
    vae_keys,
)

PARTS = ("transformer", "projection_model", "vae", "text_encoder", "tokenizer")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
MAX_TEXT_TOKENS = 4096  # a tokenizer without model_max_length says 10^30: refuse, not allocate
DEFAULT_STEPS = 100  # the pipeline's default
DEFAULT_CFG = 7.0


class StableAudioTextEncoder(HFTextEncoder):
    """T5 as Stable Audio's pipeline runs it: every prompt padded to the tokenizer's full length,
    because the DiT reads the padding (as zeros) without a mask, as it was trained."""

    def __init__(self, directory: Path, device: str = "cpu") -> None:
        self.directory = Path(directory)
        super().__init__(self.directory, max_tokens=0, device=device)  # max_tokens: the tokenizer's, set in _load

    def _load(self):  # local files only: never the network
        from transformers import AutoTokenizer, T5EncoderModel
        from transformers.utils import logging as hf_logging

        tokenizer_dir, model_dir = self.directory / "tokenizer", self.directory / "text_encoder"
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except Exception as err:  # transformers raises many kinds; one line is what the user needs
            raise CheckpointError(f"{tokenizer_dir}: cannot load the tokenizer ({_first_line(err)})") from None
        length = int(getattr(tokenizer, "model_max_length", 0) or 0)
        if not 0 < length <= MAX_TEXT_TOKENS:
            raise CheckpointError(f"{tokenizer_dir}: tokenizer_config.json needs a model_max_length in "
                                  f"[1, {MAX_TEXT_TOKENS}] (the pipeline pads every prompt to it), got {length}")
        self.max_tokens = length
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # missing keys are reported below, as one line
        hf_logging.disable_progress_bar()
        try:
            model, info = T5EncoderModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                         dtype=torch.float32, output_loading_info=True)
        except Exception as err:
            raise CheckpointError(f"{model_dir}: cannot load T5 ({_first_line(err)})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
            keys = sorted(info.get(kind) or [], key=str)
            if keys:
                raise CheckpointError(f"{model_dir}: {kind.replace('_', ' ')[:-1]} '{_key_name(keys[0])}'")
        return tokenizer, model.float()

    def encode(self, texts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = super().encode(texts)
        pad = self.max_tokens - states.shape[1]
        return F.pad(states, (0, 0, 0, pad)), F.pad(mask, (0, pad))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _key_name(key: Any) -> str:
    return key[0] if isinstance(key, tuple) else str(key)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({_first_line(err)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def read_safetensors(folder: Path, stem: str = DIFFUSERS_WEIGHTS) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """A diffusers part's tensors (one file, an fp16 variant, or shards listed in an index) and
    the file each came from.  Truncated or foreign files are one line naming the file."""
    index = folder / f"{stem}.safetensors.index.json"
    files = [folder / f"{stem}.safetensors", folder / f"{stem}.fp16.safetensors"]
    if index.is_file():
        weight_map = _json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        paths = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        paths = [next((f for f in files if f.is_file()), files[0])]
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (safetensors weights expected)")
        try:
            part = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file, truncated? ({_first_line(err)})") from None
        tensors.update(part)
        origin.update(dict.fromkeys(part, path))
    return tensors, origin


def _loaded(module: torch.nn.Module, state: dict[str, torch.Tensor], device: str) -> torch.nn.Module:
    module.load_state_dict(state, assign=True)  # built on the meta device: the mapped tensors become its weights
    return module.to(device).eval()


def _check_parts(directory: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        if not (directory / part).is_dir():
            raise CheckpointError(f"{directory}: no {part}/ folder (a Stable Audio Open directory has "
                                  f"{', '.join(p + '/' for p in PARTS)})")


def load_dit(directory: Path, text_dim: int, device: str = "cpu") -> DiT:
    """transformer/ and projection_model/ as one tunesmith DiT (``text_dim``: T5's width)."""
    directory = Path(directory)
    _check_parts(directory, ("transformer", "projection_model"))
    config = dit_config(_json(directory / "transformer" / "config.json"),
                        _json(directory / "projection_model" / "config.json"), text_dim)
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for part in ("transformer", "projection_model"):
        found, paths = read_safetensors(directory / part)
        tensors.update({f"{part}/{k}": v for k, v in found.items()})
        origin.update({f"{part}/{k}": p for k, p in paths.items()})
    with torch.device("meta"):
        dit = DiT(config)
    state = map_weights(expand(DIT_KEYS, config.depth), tensors, dit.state_dict(), config,
                        lambda k: str(origin.get(k) or directory / k.split("/")[0]))
    del tensors
    return _loaded(dit, state, device).use_onednn(torch.device(device).type == "cpu")  # faster CPU matmuls


def load_vae(directory: Path, device: str = "cpu") -> OobleckVAE:
    """vae/ (diffusers' AutoencoderOobleck) as tunesmith's Oobleck port."""
    directory = Path(directory)
    _check_parts(directory, ("vae",))
    config = vae_config(_json(directory / "vae" / "config.json"))
    found, paths = read_safetensors(directory / "vae")
    tensors = {f"vae/{k}": v for k, v in found.items()}
    where = {f"vae/{k}": str(p) for k, p in paths.items()}
    # torch's newer weight-norm parametrisation names g and v differently: read either
    for key in [k for k in tensors if ".parametrizations.weight.original" in k]:
        stem, which = key.split(".parametrizations.weight.original")
        renamed = f"{stem}.weight_{'g' if which == '0' else 'v'}"
        tensors[renamed], where[renamed] = tensors.pop(key), where.pop(key)
    with torch.device("meta"):
        vae = OobleckVAE(config)
    state = map_weights(vae_keys(list(vae.state_dict())), tensors, vae.state_dict(), None,
                        lambda k: where.get(k, str(directory / "vae")))
    return _loaded(vae, state, device)


def load_parts(directory: Path, device: str = "cpu") -> tuple[DiT, OobleckVAE, StableAudioTextEncoder, SamplingConfig]:
    """The DiT (with the projection model), the VAE, T5 and the sampling settings of a directory."""
    directory = Path(directory)
    _check_parts(directory, PARTS)
    text = StableAudioTextEncoder(directory, device)
    dit = load_dit(directory, text.dim, device)
    vae = load_vae(directory, device)
    if vae.latent_dim != dit.config.latent_dim:
        raise CheckpointError(f"{directory}: the VAE has {vae.latent_dim} latent channels, the DiT {dit.config.latent_dim}")
    scheduler = directory / "scheduler" / "scheduler_config.json"
    sampling = sampling_config(_json(scheduler) if scheduler.is_file() else None)
    return dit, vae, text, sampling


class StableAudioGenerator(LatentDiffusionGenerator):
    """Stable Audio Open run by tunesmith's DiT, samplers and controls (see the module docstring)."""

    generator_type = "stable-audio-open"

    def __init__(self, model: DiT, codec: OobleckVAE, text_encoder: StableAudioTextEncoder, *,
                 sampling: SamplingConfig = SamplingConfig(), window_frames: int = 1024, cfg: float = DEFAULT_CFG,
                 full_window: bool = True) -> None:
        super().__init__(model, codec, text_encoder, text_encoder_name="t5 (stable-audio-open)", latent_scale=1.0, cfg=cfg)
        self.sampling, self.window_frames, self.full_window = sampling, int(window_frames), full_window

    @property
    def window_seconds(self) -> float:
        """The length the model was trained on (the pipeline's longest output)."""
        return self.window_frames / self.frame_rate

    def num_frames(self, duration: float) -> int:
        frames = super().num_frames(duration)
        return max(frames, self.window_frames) if self.full_window else frames

    def encode_wav(self, wav: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """With the full window: the reference in a window of silence, as the pipeline encodes it
        (so a reference of any length up to the window is audio-to-audio; regenerate a region,
        e.g. to continue a clip, with ``mask``)."""
        if frames is None or not self.full_window:
            return super().encode_wav(wav, frames)
        samples = frames * self.codec.samples_per_frame
        wav = F.pad(wav, (0, max(0, samples - wav.shape[-1])))[..., :samples]
        with torch.inference_mode():
            return self.codec.encode(wav.to(self.device)).float()[..., :frames] * self.latent_scale

    def generate(self, prompts: str | list[str], duration: float, seed: int | list[int] = 0, *,
                 progress: bool = False, callback: Any = None, **controls: Any) -> Audio:
        """As the base generator's; with noise optimisation and no sampler named, the pipeline's
        sampler's deterministic twin (DPM-Solver++(2M)), so that the optimised noise is what decides."""
        if controls.get("sampler") is None and any(controls.get(n) is not None for n in self.NOISE_CONTROLS):
            controls["sampler"] = "dpmpp-2m"
        return super().generate(prompts, duration, seed, progress=progress, callback=callback, **controls)

    def generate_latents(self, cond: Any, uncond: Any, frames: int, seed: int | list[int] = 0, *,
                         steps: int = DEFAULT_STEPS, sampler: str | None = None, schedule: str | None = None,
                         sigma_min: float | None = None, sigma_max: float | None = None, **options: Any) -> LatentResult:
        """As the base generator's, with the pipeline's sampler, schedule and sigma range by default."""
        s = self.sampling
        return super().generate_latents(cond, uncond, frames, seed, steps=steps, sampler=sampler or s.sampler,
                                        schedule=schedule or s.schedule,
                                        sigma_min=s.sigma_min if sigma_min is None else sigma_min,
                                        sigma_max=s.sigma_max if sigma_max is None else sigma_max, **options)

    def save(self, directory: str | Path, **_: Any) -> Path:
        raise CheckpointError("a Stable Audio Open generator is read from its diffusers directory; "
                              "it is not written in tunesmith's layout")


def load_stable_audio(directory: Path, device: str = "cpu") -> StableAudioGenerator:
    """A diffusers Stable Audio Open directory as a tunesmith generator (44.1 kHz stereo for SAO 1.0)."""
    directory = Path(directory)
    dit, vae, text, sampling = load_parts(directory, device)
    window = _json(directory / "transformer" / "config.json").get("sample_size", 1024)
    if not isinstance(window, int) or window < 1:
        raise CheckpointError(f"{directory / 'transformer' / 'config.json'}: sample_size must be a positive integer")
    return StableAudioGenerator(dit, vae, text, sampling=sampling, window_frames=window)
