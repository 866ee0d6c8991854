"""The token LM as a :class:`tunesmith.generator.Generator`: text (+ melody, + audio prompt) -> audio.

A generator directory is the LM's model directory (``config.json`` with
``generator_type: "token-lm"`` + ``model.safetensors``) with the codec's model
directory inside it as ``codec/``, or, when the codec is a bundled model, its name
under ``"codec"`` in config.json, so a bundled generator does not ship a second copy of
the bundled codec.  The text encoder is named by the LM config and is frozen, so it is
not stored.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch

from tunesmith.audio import Audio
from tunesmith.conditioning.conditions import Conditioning, from_prompts
from tunesmith.conditioning.melody import melody_chroma
from tunesmith.conditioning.encoders import get_text_encoder
from tunesmith.conditioning.text import TextEncoder
from tunesmith.generator import Control, Generator, check_request, check_seeds, frames_for
from tunesmith.lm.decode import generate_tokens
from tunesmith.lm.int8 import quantize_int8
from tunesmith.lm.model import TokenLM



class TokenCodec(Protocol):
    """What the generator needs from a codec (tunesmith.codec's RVQ codec has it)."""

    frame_rate: float
    num_codebooks: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor: ...  # (B, C, T) -> (B, K, F)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...  # (B, k <= K, F) -> (B, C, T)


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


class TokenLMGenerator(Generator):
    """Text -> tokens (the LM) -> audio (the codec's decoder)."""

    generator_type = "token-lm"
    CONTROLS = {"cfg": Control((int, float), 0, 100), "temperature": Control((int, float), 0, 100),
                "top_k": Control(int, 0, 1 << 20), "top_p": Control((int, float), 0, 1),
                "melody": Control((Audio, str, Path)), "prompt_audio": Control((Audio, str, Path)),
                "unconditional": Control(bool), "unguided": Control((tuple, list))}

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
        super().__init__(lm, codec, max_duration=max_duration, cfg=cfg)
        self.lm = self.network
        self.int8 = int8
        # int8 linear weights: ~4x fewer bytes read per decoding step (see lm/int8.py)
        self.decoder_lm = quantize_int8(lm) if int8 else self.lm
        self.text_encoder = text_encoder or get_text_encoder(lm.config.text_encoder)
        if self.text_encoder.dim != lm.config.text_dim:
            raise ValueError(f"text encoder gives {self.text_encoder.dim}-dim states, the LM expects {lm.config.text_dim}")
        self.frame_rate = lm.config.frame_rate
        self.unguided = tuple(unguided)  # conditions guidance leaves unscaled (kept in the unconditional rows)
        Conditioning().null(keep=self.unguided)  # an unknown name: an error now, not at the first generate

    def accepts(self, control: str) -> bool:
        return self.lm.config.melody if control == "melody" else super().accepts(control)

    def use_int8(self, on: bool = True) -> "TokenLMGenerator":
        """Decode with int8 linear weights (CPU; about 4x fewer bytes read per step) or go back to fp32."""
        self.int8 = bool(on)
        self.decoder_lm = quantize_int8(self.lm) if on else self.lm
        return self

    def conditioning(self, prompts: list[str], num_frames: int, melody: Any = None,
                     seed: int | list[int] = 0) -> Conditioning:
        """The prompts' conditioning as this LM takes it; for a melody model, the reference's
        one-hot chroma (zeros, "no melody", without one); ``seed`` draws the tempo of a prompt
        with tempo words and no number."""
        c = self.lm.config
        chroma = None
        if c.melody:
            if melody is None:
                chroma = torch.zeros(len(prompts), c.chroma_bins, num_frames)
            else:
                chroma = melody_chroma(melody, self.frame_rate, num_frames)  # a recording's, or a MIDI file's
        elif melody is not None:
            raise ValueError("this model is not melody-conditioned; drop the melody control")
        cond = from_prompts(prompts, self.text_encoder, num_frames=num_frames, frame_rate=self.frame_rate,
                            beat_clock=c.beat_clock, key_input=c.key_input, melody=chroma, seed=seed)
        return cond.to(self.device)

    def prompt_tokens(self, audio: Any, batch: int) -> torch.Tensor:
        """Codec tokens (B, K, F) of an audio prompt to continue."""
        wav = self.reference_audio(audio, "prompt_audio")
        with torch.inference_mode():
            tokens = self.codec.encode(wav.to(self.device))[:, : self.lm.config.num_codebooks]
        return tokens.expand(batch, -1, -1) if tokens.shape[0] == 1 else tokens

    def generate(
        self,
        prompts: str | list[str],
        duration: float,
        seed: int | list[int] = 0,
        *,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
        **controls: Any,
    ) -> Audio:
        """Audio (B, C, duration * sample_rate).  Controls: ``cfg`` (the model's own scale if
        unset), ``temperature`` (1), ``top_k`` (250), ``top_p`` (0: off); ``melody`` (Audio or
        path) guides a melody model; with ``prompt_audio`` the output starts with the prompt
        and continues it.  ``unconditional`` drops every condition (the null condition of
        CFG), for baselines; ``unguided`` (default: the model's) names conditions that
        guidance leaves unscaled (see :func:`tunesmith.lm.decode.decode_window`)."""
        self.check_controls(controls)
        items = check_request(prompts, duration, self.max_duration)
        seed = check_seeds(seed, len(items))
        num_frames = frames_for(duration, self.frame_rate)
        cond = self.conditioning(items, num_frames, controls.get("melody"), seed)
        cfg = self.cfg if controls.get("cfg") is None else float(controls["cfg"])
        if controls.get("unconditional"):
            cond, cfg = cond.null(), 1.0
        prompt_audio = controls.get("prompt_audio")
        prompt = self.prompt_tokens(prompt_audio, len(items)) if prompt_audio is not None else None
        unguided = controls.get("unguided")
        with _threads(self._decode_threads()):
            tokens = generate_tokens(self.decoder_lm, num_frames, cond, batch_size=len(items), prompt=prompt,
                                     cfg_scale=cfg, temperature=float(controls.get("temperature", 1.0)),
                                     top_k=int(controls.get("top_k", 250)), top_p=float(controls.get("top_p", 0.0)),
                                     seed=seed, progress=progress, callback=callback,
                                     unguided=self.unguided if unguided is None else tuple(unguided))
        return self.decode(tokens, duration)

    def _decode_threads(self) -> int | None:
        """One CPU thread for the token-by-token loop of a small LM, else torch's default.

        Each step of a small model is hundreds of tiny ops, too small to share between
        threads: for the bundled model (dim 256) 10 s decoded in 1.9 s on one thread,
        1.5 s on two threads that spin while waiting, 4.9 s on two that sleep
        (``OMP_WAIT_POLICY=PASSIVE``), and 101 s on spinning threads beside a training
        run.  One thread is never far from the best and never falls off that cliff.
        """
        return 1 if self.device.type == "cpu" and self.lm.config.dim <= 512 else None

    def config_entries(self) -> dict[str, Any]:
        return {"int8_decoding": self.int8, "unguided": list(self.unguided), "cfg": self.cfg}

    @classmethod
    def from_parts(cls, network: torch.nn.Module, codec: Any, meta: dict[str, Any], device: str) -> "TokenLMGenerator":
        """``int8_decoding`` in config.json quantises the LM on CPU."""
        int8 = bool(meta.get("int8_decoding", False)) and torch.device(device).type == "cpu"
        return cls(network, codec, int8=int8, unguided=tuple(meta.get("unguided", ())),  # type: ignore[arg-type]
                   cfg=float(meta.get("cfg", 3.0)))
