"""The token LM as a :class:`tunesmith.generator.Generator`: text (+ melody, + audio prompt) -> audio.

A generator directory is the LM's model directory (``config.json`` with
``generator_type: "token-lm"`` + ``model.safetensors``) with the codec's model
directory inside it as ``codec/`` — or, when the codec is a bundled model, its name
under ``"codec"`` in config.json, so a bundled generator does not ship a second copy of
the bundled codec.  The text encoder is named by the LM config and is frozen, so it is
not stored.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from tunesmith.audio import Audio, load_audio, resample, to_channels
from tunesmith.checkpoint import bundled_models, load_model, read_model_config, save
from tunesmith.conditioning.beat import prompt_clocks
from tunesmith.conditioning.key import prompt_keys
from tunesmith.conditioning.melody import dominant_chroma
from tunesmith.conditioning.text import TextEncoder, get_text_encoder
from tunesmith.generator import check_request, register_generator
from tunesmith.lm.decode import generate_tokens
from tunesmith.lm.model import Conditioning, TokenLM
from tunesmith.lm.quantize import quantize_int8

GENERATOR_TYPE = "token-lm"
CODEC_DIR = "codec"


class TokenCodec(Protocol):
    """What the generator needs from a codec (tunesmith.codec's RVQ codec has it)."""

    frame_rate: float
    num_codebooks: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...  # (B, C, T) -> (B, K, F)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...  # (B, k <= K, F) -> (B, C, T)


def codec_sample_rate(codec: Any) -> int:
    rate = getattr(codec, "sample_rate", None) or getattr(getattr(codec, "config", None), "sample_rate", None)
    if rate is None:
        raise ValueError(f"{type(codec).__name__} does not say its sample_rate")
    return int(rate)


def codec_channels(codec: Any) -> int:
    return int(getattr(codec, "channels", None) or getattr(getattr(codec, "config", None), "channels", 1))


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (None: leave them), restoring the number after."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_audio(value: Any, name: str) -> Audio:
    if isinstance(value, Audio):
        return value
    if isinstance(value, (str, Path)):
        return load_audio(value)
    raise TypeError(f"{name} must be an Audio or a path to an audio file, got {type(value).__name__}")


class TokenLMGenerator:
    """Text -> tokens (the LM) -> audio (the codec's decoder)."""

    generator_type = GENERATOR_TYPE

    def __init__(
        self,
        lm: TokenLM,
        codec: TokenCodec,
        text_encoder: TextEncoder | None = None,
        *,
        max_duration: float = 300.0,
        int8: bool = False,
        unguided: tuple[str, ...] = (),
        cfg: float = 3.0,
    ) -> None:
        if abs(float(codec.frame_rate) - lm.config.frame_rate) > 1e-6:
            raise ValueError(f"codec frame rate {codec.frame_rate} differs from the LM's {lm.config.frame_rate}")
        if codec.num_codebooks < lm.config.num_codebooks:
            raise ValueError(f"codec has {codec.num_codebooks} codebooks, the LM predicts {lm.config.num_codebooks}")
        self.lm, self.codec = lm.eval(), codec.eval() if hasattr(codec, "eval") else codec
        self.int8 = int8
        # int8 linear weights: ~4x fewer bytes read per decoding step (see lm/quantize.py)
        self.decoder_lm = quantize_int8(lm) if int8 else self.lm
        self.text_encoder = text_encoder or get_text_encoder(lm.config.text_encoder)
        if self.text_encoder.dim != lm.config.text_dim:
            raise ValueError(f"text encoder gives {self.text_encoder.dim}-dim states, the LM expects {lm.config.text_dim}")
        self.sample_rate = codec_sample_rate(codec)
        self.channels = codec_channels(codec)
        self.frame_rate = lm.config.frame_rate
        self.max_duration = max_duration
        self.unguided = tuple(unguided)  # conditions guidance leaves unscaled (kept in the unconditional rows)
        self.cfg = float(cfg)  # the guidance scale when a call gives none: each model stores its own
        Conditioning().null(keep=self.unguided)  # an unknown name: an error now, not at the first generate

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def conditioning(self, prompts: list[str], num_frames: int, melody: Any = None) -> Conditioning:
        """Text states for ``prompts``; for a melody model, the reference's one-hot chroma; for a
        model with a beat clock, the clock of the tempo each prompt names; for one with a key
        input, the key each prompt names."""
        text, mask = self.text_encoder.encode(prompts)
        chroma = None
        if self.lm.config.melody:
            if melody is None:
                chroma = torch.zeros(len(prompts), self.lm.config.chroma_bins, num_frames)
            else:
                ref = _as_audio(melody, "melody")
                wav = ref.samples if ref.samples.dim() == 3 else ref.samples[None]
                chroma = dominant_chroma(wav, ref.sample_rate, self.frame_rate, num_frames)
                if chroma.shape[0] == 1:
                    chroma = chroma.expand(len(prompts), -1, -1)
                elif chroma.shape[0] != len(prompts):
                    raise ValueError(f"{chroma.shape[0]} melodies for {len(prompts)} prompts")
        elif melody is not None:
            raise ValueError("this model is not melody-conditioned; drop the melody control")
        beat = prompt_clocks(prompts, num_frames, self.frame_rate) if self.lm.config.beat_clock else None
        key = prompt_keys(prompts) if self.lm.config.key_input else None
        return Conditioning(text, mask, chroma, beat, key).to(self.device)

    def prompt_tokens(self, audio: Any, batch: int) -> torch.Tensor:
        """Codec tokens (B, K, F) of an audio prompt to continue."""
        ref = _as_audio(audio, "prompt_audio")
        wav = ref.samples if ref.samples.dim() == 3 else ref.samples[None]
        if ref.sample_rate != self.sample_rate:
            wav = resample(wav, ref.sample_rate, self.sample_rate)
        wav = to_channels(wav, self.channels)
        with torch.inference_mode():
            tokens = self.codec.encode(wav.to(self.device))[:, : self.lm.config.num_codebooks]
        return tokens.expand(batch, -1, -1) if tokens.shape[0] == 1 else tokens

    def generate(
        self,
        prompts: str | list[str],
        duration: float,
        seed: int = 0,
        *,
        progress: bool = False,
        cfg: float | None = None,
        temperature: float = 1.0,
        top_k: int = 250,
        top_p: float = 0.0,
        melody: Any = None,
        prompt_audio: Any = None,
        unconditional: bool = False,
        unguided: tuple[str, ...] | None = None,
        **controls: Any,
    ) -> Audio:
        """Audio (B, C, duration * sample_rate).  With ``prompt_audio`` the output starts
        with the prompt and continues it; ``melody`` (Audio or path) guides a melody model.
        ``unconditional`` drops every condition (the null condition of CFG), for baselines.
        ``unguided`` (default: the generator's ``self.unguided``) names conditions that
        guidance leaves unscaled (see :func:`tunesmith.lm.decode.decode_window`)."""
        if controls:
            raise ValueError(f"unknown controls for the token LM: {', '.join(sorted(controls))}")
        items = check_request(prompts, duration, self.max_duration)
        num_frames = max(1, math.ceil(duration * self.frame_rate))
        cond = self.conditioning(items, num_frames, melody)
        cfg = self.cfg if cfg is None else cfg
        if unconditional:
            cond, cfg = cond.null(), 1.0
        prompt = self.prompt_tokens(prompt_audio, len(items)) if prompt_audio is not None else None
        with _threads(self._decode_threads()):
            tokens = generate_tokens(self.decoder_lm, num_frames, cond, batch_size=len(items), prompt=prompt,
                                     cfg_scale=cfg, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                     progress=progress, unguided=self.unguided if unguided is None else tuple(unguided))
        with torch.inference_mode():
            decode = getattr(self.codec, "decode_long", self.codec.decode)
            wav = decode(tokens).float().cpu()
        samples = round(duration * self.sample_rate)
        wav = torch.nn.functional.pad(wav, (0, max(0, samples - wav.shape[-1])))[..., :samples]
        return Audio(wav.clamp(-1.0, 1.0), self.sample_rate)

    def _decode_threads(self) -> int | None:
        """One CPU thread for the token-by-token loop of a small LM, else torch's default.

        Each step of a small model is hundreds of tiny ops, too small to share between
        threads: for the bundled model (dim 256) 10 s decoded in 1.9 s on one thread,
        1.5 s on two threads that spin while waiting, 4.9 s on two that sleep
        (``OMP_WAIT_POLICY=PASSIVE``), and 101 s on spinning threads beside a training
        run.  One thread is never far from the best and never falls off that cliff.
        """
        return 1 if self.device.type == "cpu" and self.lm.config.dim <= 512 else None

    def save(self, directory: str | Path, *, codec_name: str | None = None, fp16: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the generator directory: the LM, and the codec under ``codec/`` unless ``codec_name``
        names the bundled codec it uses.  ``fp16`` halves the LM's bytes on disk (it loads as fp32);
        ``extra`` adds entries to config.json (e.g. where the weights were trained)."""
        if codec_name is not None and codec_name not in bundled_models():
            raise ValueError(f"codec_name '{codec_name}' is not a bundled model (bundled: {', '.join(bundled_models())})")
        lm = self.lm
        if fp16:  # a half copy: the live model stays fp32
            lm = TokenLM(self.lm.config)
            lm.load_state_dict(self.lm.state_dict())
            lm = lm.half()
        meta: dict[str, Any] = {**(extra or {}), "generator_type": GENERATOR_TYPE, "int8_decoding": self.int8,
                                "storage": "fp16" if fp16 else "fp32", "unguided": list(self.unguided), "cfg": self.cfg}
        if codec_name is not None:
            meta["codec"] = codec_name
        directory = save(lm, directory, extra=meta)
        if codec_name is None:
            save(self.codec, directory / CODEC_DIR)  # type: ignore[arg-type]
        return directory


@register_generator(GENERATOR_TYPE)
def load_token_lm(directory: Path, device: str = "cpu") -> TokenLMGenerator:
    """Load a generator directory; ``int8_decoding`` in its config.json quantises the LM on CPU."""
    meta = read_model_config(directory)
    lm = load_model(directory, map_location=device).float()
    codec = load_model(meta.get("codec") or Path(directory) / CODEC_DIR, map_location=device)
    int8 = bool(meta.get("int8_decoding", False)) and torch.device(device).type == "cpu"
    return TokenLMGenerator(lm, codec, int8=int8, unguided=tuple(meta.get("unguided", ())),  # type: ignore[arg-type]
                            cfg=float(meta.get("cfg", 3.0)))
