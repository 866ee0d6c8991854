"""MusicGen checkpoints (transformers layout) run by tunesmith's token-LM generator.

``load_musicgen(directory)`` reads a transformers MusicGen directory (``config.json``,
safetensors, the T5 tokenizer) and builds:

- the decoder as tunesmith's :class:`~tunesmith.lm.model.TokenLM` (sinusoidal positions,
  zero states for absent text, the delay pattern; weights by :mod:`.musicgen_keys`), so
  decoding runs tunesmith's loop: KV cache, int8 weights, CFG in one batch, top-k/top-p,
  per-prompt seeds, progress and cancel;
- the T5 encoder as transformers' ``T5EncoderModel`` behind tunesmith's text-encoder
  interface (frozen, cached per prompt);
- EnCodec as transformers' ``EncodecModel`` behind the token-codec interface (decode for
  generation, encode for an audio prompt).

Guidance follows transformers: the unconditional rows attend to zero text states, and
a scale of exactly 1 runs no unconditional rows.  (Below 1 transformers turns guidance
off; tunesmith applies the scale as given.)

Covered: mono checkpoints (facebook/musicgen-small, -medium, -large) and stereo ones
(``audio_channels: 2``: codebooks interleaved left, right; each channel decoded by the
mono EnCodec).  MusicGen-Melody is refused with the reason (see :mod:`.musicgen_keys`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.conditioning.text import HFTextEncoder
from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.hub.musicgen_keys import (
    IGNORED,
    SUBMODELS,
    MusicgenSpec,
    decoder_sources,
    decoder_state,
    musicgen_spec,
    submodel_state,
)
from tunesmith.lm.generator import TokenLMGenerator
from tunesmith.lm.model import TokenLM

MAX_TEXT_TOKENS = 512
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


class SafetensorsDirectory:
    """Every tensor of a directory's safetensors files (one file or shards), read on demand."""

    def __init__(self, directory: Path) -> None:
        from safetensors import SafetensorError, safe_open

        files = sorted(Path(directory).glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} has no .safetensors weights")
        self.where: dict[str, Any] = {}
        self._handles = []
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{file} is not a readable safetensors file ({str(err)[:120]})") from None
            self._handles.append(handle)
            for key in handle.keys():
                self.where[key] = handle

    def keys(self) -> set[str]:
        return set(self.where)

    def read(self, key: str) -> torch.Tensor:
        try:
            return self.where[key].get_tensor(key)
        except Exception as err:  # a truncated file fails here, on the tensor that is cut
            raise CheckpointError(f"weight '{key}' cannot be read ({str(err)[:120]}): a truncated file?") from None


class MusicgenT5Encoder(HFTextEncoder):
    """MusicGen's T5 encoder with the tokenizer saved beside it: (B, S, d_model) token states."""

    def __init__(self, directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], device: str = "cpu") -> None:
        self._config, self._state = config, state
        super().__init__(directory, max_tokens=MAX_TEXT_TOKENS, device=device)
        del self._state

    def _load(self):
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        if not any((Path(self.path) / name).is_file() for name in TOKENIZER_FILES):
            # transformers would build an empty T5 tokenizer here, and every prompt would encode the same
            raise CheckpointError(f"{self.path} has no T5 tokenizer ({' or '.join(TOKENIZER_FILES)})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"{self.path}: no usable T5 tokenizer (tokenizer.json or spiece.model): {str(err)[:160]}") from None
        model = T5EncoderModel(T5Config.from_dict(self._config))
        model.load_state_dict(self._state, strict=False)  # strict in content: submodel_state named every key
        model.tie_weights()
        return tokenizer, model


class EncodecTokens(nn.Module):
    """transformers' EnCodec as a token codec: (B, K, F) tokens <-> (B, C, T) audio.

    Stereo MusicGen interleaves the two channels' codebooks (left 0, right 0, left 1, ...),
    and each channel is coded by the same mono EnCodec."""

    def __init__(self, model: nn.Module, num_codebooks: int, channels: int) -> None:
        super().__init__()
        self.model = model.eval()
        self.channels = channels
        self.num_codebooks = num_codebooks
        self.sample_rate = int(model.config.sampling_rate)
        self.frame_rate = float(model.config.frame_rate)
        self.per_channel = num_codebooks // channels

    def _decode_mono(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens[None], [None] * tokens.shape[0]).audio_values

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            return self._decode_mono(tokens)
        return torch.cat([self._decode_mono(tokens[:, c :: self.channels]) for c in range(self.channels)], 1)

    def _encode_mono(self, wav: torch.Tensor) -> torch.Tensor:
        codes = self.model.encode(wav, bandwidth=max(self.model.config.target_bandwidths)).audio_codes
        if codes.shape[2] < self.per_channel:
            raise ValueError(f"EnCodec gives {codes.shape[2]} codebooks, the LM needs {self.per_channel}")
        return codes[0, :, : self.per_channel]

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            return self._encode_mono(wav[:, :1])
        parts = [self._encode_mono(wav[:, c : c + 1]) for c in range(self.channels)]
        return torch.stack(parts, 2).flatten(1, 2)  # (B, K/2, 2, F) -> left 0, right 0, left 1, ...


class MusicgenGenerator(TokenLMGenerator):
    """A MusicGen checkpoint run by tunesmith's token-LM generator (same controls and decoding)."""

    generator_type = "musicgen"

    def __init__(self, lm: TokenLM, codec: EncodecTokens, text_encoder: MusicgenT5Encoder, *, source: Path,
                 cfg: float = 3.0, int8: bool = False) -> None:
        super().__init__(lm, codec, text_encoder, cfg=cfg, int8=int8)
        self.source = Path(source)

    def save(self, directory: Any, **_: Any) -> Path:  # type: ignore[override]
        raise ValueError(f"a MusicGen generator is read from its transformers directory ({self.source}); "
                         "it has no tunesmith directory to save")


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path} is missing")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return value


def build_parts(directory: Path, spec: MusicgenSpec, tensors: SafetensorsDirectory,
                device: str = "cpu") -> tuple[TokenLM, EncodecTokens, MusicgenT5Encoder]:
    """The decoder, codec and text encoder of a MusicGen directory; every weight is checked
    (missing, misshapen, unexpected) before any is loaded."""
    from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel

    where = str(directory)
    keys = tensors.keys()
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        lm_shapes = {k: v.shape for k, v in TokenLM(spec.lm).state_dict().items()}
        t5_shapes = {k: v.shape for k, v in T5EncoderModel(T5Config.from_dict(spec.text_config)).state_dict().items()}
        codec_shapes = {k: v.shape for k, v in EncodecModel(EncodecConfig.from_dict(spec.audio_config)).state_dict().items()}
    lm_state = decoder_state(tensors.read, keys, spec, lm_shapes, where)
    t5_state, t5_used = submodel_state(tensors.read, keys, "text_encoder.", t5_shapes, where)
    codec_state, codec_used = submodel_state(tensors.read, keys, "audio_encoder.", codec_shapes, where)
    unexpected = sorted(keys - decoder_sources(spec) - t5_used - codec_used - set(IGNORED))
    if unexpected:
        raise CheckpointError(f"{where}: unexpected weight '{unexpected[0]}' (not part of the MusicGen that config.json "
                              f"describes; {len(unexpected)} such)")

    lm = TokenLM(spec.lm)
    lm.load_state_dict(lm_state, strict=True)
    codec_model = EncodecModel(EncodecConfig.from_dict(spec.audio_config))
    codec_model.load_state_dict(codec_state, strict=False)  # absent: only training statistics
    codec = EncodecTokens(codec_model, spec.lm.num_codebooks, spec.channels)
    text_encoder = MusicgenT5Encoder(directory, spec.text_config, t5_state, device=device)
    return lm.to(device).eval(), codec.to(device).eval(), text_encoder


def load_musicgen(directory: Path, device: str = "cpu", *, int8: bool = False) -> MusicgenGenerator:
    """A transformers MusicGen directory as a tunesmith generator (fp32; ``int8`` for int8
    decoding on CPU, or ``.use_int8()`` later)."""
    directory = Path(directory)
    config = _read_json(directory / "config.json", required=True)
    generation = _read_json(directory / "generation_config.json", required=False)
    try:
        spec = musicgen_spec(config, generation)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{directory / 'config.json'}: {err}") from None
    tensors = SafetensorsDirectory(directory)
    lm, codec, text_encoder = build_parts(directory, spec, tensors, device)
    quantize = int8 and torch.device(device).type == "cpu"
    return MusicgenGenerator(lm, codec, text_encoder, source=directory, cfg=spec.cfg, int8=quantize)


__all__ = ["EncodecTokens", "MusicgenGenerator", "MusicgenT5Encoder", "SUBMODELS", "load_musicgen"]
