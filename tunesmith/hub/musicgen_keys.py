"""MusicGen (transformers layout) -> tunesmith: the key table and the config mapping.

A transformers MusicGen directory holds one ``config.json`` (``text_encoder``: a T5
config, ``audio_encoder``: an EnCodec config, ``decoder``: the token LM) and safetensors
whose keys start with ``text_encoder.``, ``audio_encoder.``, ``decoder.`` and
``enc_to_dec_proj.``.  The T5 encoder and EnCodec run as transformers modules and take
their weights under their own names (:data:`SUBMODELS`); the decoder is rebuilt as
tunesmith's :class:`~tunesmith.lm.model.TokenLM` by the table below.

In the table, ``{i}`` runs over the decoder layers, ``{k}`` over the codebooks and
``{q,k,v}`` over the names listed; ``how`` says what becomes of the sources:

- ``copy``:  the one source as it is;
- ``stack``: the sources concatenated along the first axis, in the order listed (our
  fused q/k/v and k/v projections, the K embedding tables as one table of K blocks,
  the K heads as one matrix);
- ``start``: the sum over codebooks of each table's row for the start id (MusicGen
  feeds the start id in every codebook at position 0; tunesmith keeps that sum as its
  ``start`` vector).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from tunesmith.errors import CheckpointError, ConfigError
from tunesmith.lm.model import LMConfig

DEC = "decoder.model.decoder."
LAYER = DEC + "layers.{i}."

# tunesmith name                             transformers name(s)                          how
DECODER_TABLE: tuple[tuple[str, str, str], ...] = (
    ("embed.weight",                          DEC + "embed_tokens.{k}.weight",                "stack"),
    ("start",                                 DEC + "embed_tokens.{k}.weight",                "start"),
    ("text_proj.weight",                      "enc_to_dec_proj.weight",                       "copy"),
    ("text_proj.bias",                        "enc_to_dec_proj.bias",                         "copy"),
    ("backbone.blocks.{i}.norm1.weight",      LAYER + "self_attn_layer_norm.weight",          "copy"),
    ("backbone.blocks.{i}.norm1.bias",        LAYER + "self_attn_layer_norm.bias",            "copy"),
    ("backbone.blocks.{i}.attn.qkv.weight",   LAYER + "self_attn.{q,k,v}_proj.weight",        "stack"),
    ("backbone.blocks.{i}.attn.out.weight",   LAYER + "self_attn.out_proj.weight",            "copy"),
    ("backbone.blocks.{i}.norm_cross.weight", LAYER + "encoder_attn_layer_norm.weight",       "copy"),
    ("backbone.blocks.{i}.norm_cross.bias",   LAYER + "encoder_attn_layer_norm.bias",         "copy"),
    ("backbone.blocks.{i}.cross.q.weight",    LAYER + "encoder_attn.q_proj.weight",           "copy"),
    ("backbone.blocks.{i}.cross.kv.weight",   LAYER + "encoder_attn.{k,v}_proj.weight",       "stack"),
    ("backbone.blocks.{i}.cross.out.weight",  LAYER + "encoder_attn.out_proj.weight",         "copy"),
    ("backbone.blocks.{i}.norm2.weight",      LAYER + "final_layer_norm.weight",              "copy"),
    ("backbone.blocks.{i}.norm2.bias",        LAYER + "final_layer_norm.bias",                "copy"),
    ("backbone.blocks.{i}.ffn.0.weight",      LAYER + "fc1.weight",                           "copy"),
    ("backbone.blocks.{i}.ffn.2.weight",      LAYER + "fc2.weight",                           "copy"),
    ("backbone.norm.weight",                  DEC + "layer_norm.weight",                      "copy"),
    ("backbone.norm.bias",                    DEC + "layer_norm.bias",                        "copy"),
    ("head.weight",                           "decoder.lm_heads.{k}.weight",                  "stack"),
)
# When the T5 width equals the decoder's, MusicGen has no enc_to_dec_proj: text_proj is the identity.
NO_PROJECTION = ("text_proj.weight", "text_proj.bias")
# In some files, never needed: the sinusoidal position table (recomputed, bit for bit).
IGNORED = (DEC + "embed_positions.weights",)

# sub-model prefix -> (what it is, renames of older names -> current transformers names)
SUBMODELS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "text_encoder.": ("T5 encoder", ()),
    "audio_encoder.": ("EnCodec", ((".weight_g", ".parametrizations.weight.original0"),  # weight norm, before
                                   (".weight_v", ".parametrizations.weight.original1"))),  # torch parametrizations
}
# T5 ties its input embedding to the shared table; a file holds either name.
TIED = {"encoder.embed_tokens.weight": "shared.weight", "shared.weight": "encoder.embed_tokens.weight"}
# EnCodec's codebook statistics of k-means training; decoding reads only ``codebook.embed``.
TRAINING_ONLY = re.compile(r"quantizer\.layers\.\d+\.codebook\.(inited|cluster_size|embed_avg)$")


# ---------------------------------------------------------------------------
# the config


@dataclass(frozen=True)
class MusicgenSpec:
    """What tunesmith needs to know of a MusicGen config.json (and generation_config.json)."""

    lm: LMConfig
    text_config: dict[str, Any]
    audio_config: dict[str, Any]
    channels: int  # audio channels of the output: 1, or 2 (codebooks interleaved left, right)
    projection: bool  # whether the checkpoint has enc_to_dec_proj
    scale_embedding: bool
    start_id: int
    cfg: float  # the checkpoint's default guidance scale
    top_k: int


def _get(section: dict[str, Any], name: str, where: str, default: Any = ...) -> Any:
    if name in section:
        return section[name]
    if default is ...:
        raise ConfigError(f"MusicGen config.json: '{where}.{name}' is missing")
    return default


def musicgen_spec(config: dict[str, Any], generation: dict[str, Any] | None = None) -> MusicgenSpec:
    """The tunesmith LM config (and the rest) for a MusicGen config.json; anything tunesmith
    cannot run the same way is a one-line ConfigError naming the entry."""
    if config.get("model_type") == "musicgen_melody":
        raise ConfigError("MusicGen-Melody is not supported yet: it prepends 235 frames of chroma (about 7.8 per "
                          "second) and the text to the decoder's input instead of cross-attending to the text, a "
                          "layout tunesmith's token LM does not have; use a text-only MusicGen checkpoint "
                          "(facebook/musicgen-small/medium/large or a -stereo- one)")
    sections = {}
    for name in ("decoder", "text_encoder", "audio_encoder"):
        value = config.get(name)
        if not isinstance(value, dict):
            raise ConfigError(f"MusicGen config.json: '{name}' is missing or not an object")
        sections[name] = value
    dec, text, audio = sections["decoder"], sections["text_encoder"], sections["audio_encoder"]
    if text.get("model_type") != "t5":
        raise ConfigError(f"MusicGen config.json: text_encoder.model_type is {text.get('model_type')!r}; only T5 is supported")
    if audio.get("model_type") != "encodec":
        raise ConfigError(f"MusicGen config.json: audio_encoder.model_type is {audio.get('model_type')!r}; only EnCodec is supported")
    activation = _get(dec, "activation_function", "decoder", "gelu")
    if activation != "gelu":
        raise ConfigError(f"MusicGen config.json: decoder.activation_function {activation!r} is not supported (only 'gelu')")
    K = int(_get(dec, "num_codebooks", "decoder", 4))
    N = int(_get(dec, "vocab_size", "decoder", 2048))
    D = int(_get(dec, "hidden_size", "decoder", 1024))
    channels = int(_get(dec, "audio_channels", "decoder", 1))
    if channels not in (1, 2) or (channels == 2 and K % 2):
        raise ConfigError(f"MusicGen config.json: decoder.audio_channels={channels} with {K} codebooks; "
                          "expected 1, or 2 with an even number of codebooks")
    codebook_size = int(_get(audio, "codebook_size", "audio_encoder", 1024))
    if codebook_size != N:
        raise ConfigError(f"MusicGen config.json: decoder.vocab_size {N} differs from audio_encoder.codebook_size {codebook_size}")
    text_dim = int(_get(text, "d_model", "text_encoder", 512))
    cross_size = dec.get("cross_attention_hidden_size")
    projection = text_dim != D and cross_size is None
    if not projection and text_dim != D:
        raise ConfigError(f"MusicGen config.json: decoder.cross_attention_hidden_size={cross_size} with a {text_dim}-wide "
                          f"T5 and a {D}-wide decoder: transformers itself cannot run this")
    generation = generation or {}
    start_id = generation.get("decoder_start_token_id", generation.get("bos_token_id", dec.get("bos_token_id", N)))
    pad_id = generation.get("pad_token_id", dec.get("pad_token_id", N))
    if start_id != N or pad_id != N:
        raise ConfigError(f"MusicGen config: the start and pad ids must be vocab_size ({N}), got "
                          f"decoder_start_token_id={start_id}, pad_token_id={pad_id}")
    from transformers import EncodecConfig  # EnCodec's frame rate, as transformers derives it

    frame_rate = float(EncodecConfig.from_dict(audio).frame_rate)
    lm = LMConfig(
        num_codebooks=K, codebook_size=N, dim=D, backbone="transformer",
        backbone_config={"num_layers": int(_get(dec, "num_hidden_layers", "decoder", 24)),
                         "num_heads": int(_get(dec, "num_attention_heads", "decoder", 16)),
                         "ffn_dim": int(_get(dec, "ffn_dim", "decoder", 4096)),
                         "norm_eps": 1e-5, "positions": "sinusoidal"},
        pattern="delay" if channels == 1 else "stereo_delay", conditioning="cross", text_null="zeros",
        text_encoder="musicgen-t5", text_dim=text_dim, max_text_tokens=512,
        frame_rate=frame_rate, max_frames=int(round(30 * frame_rate)),  # MusicGen was trained on 30 s
    )
    return MusicgenSpec(lm=lm, text_config=text, audio_config=audio, channels=channels, projection=projection,
                        scale_embedding=bool(dec.get("scale_embedding", False)), start_id=int(start_id),
                        cfg=float(generation.get("guidance_scale") or 3.0), top_k=int(generation.get("top_k") or 250))


# ---------------------------------------------------------------------------
# the weights


def _expand(pattern: str, layers: int, codebooks: int) -> list[str]:
    """One table cell's names: ``{i}`` and ``{k}`` bound by the caller, ``{a,b}`` listed here."""
    names = [pattern]
    choice = re.search(r"\{([a-z_]+(?:,[a-z_]+)+)\}", pattern)
    if choice:
        names = [pattern[: choice.start()] + c + pattern[choice.end():] for c in choice.group(1).split(",")]
    if "{k}" in pattern:
        names = [n.replace("{k}", str(k)) for n in names for k in range(codebooks)]
    return names


def _shape(t: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(int(n)) for n in t) + ")"


def decoder_state(read: Callable[[str], torch.Tensor], keys: set[str], spec: MusicgenSpec,
                  expected: Mapping[str, torch.Size], where: str) -> dict[str, torch.Tensor]:
    """The TokenLM state dict from a MusicGen file's tensors.

    ``read(name)`` gives a tensor, ``keys`` are the file's names, ``expected`` the TokenLM's
    parameter shapes; each source is checked before it is used, so a missing or misshapen
    weight is named as the file names it.  Returns the state and marks nothing: the caller
    compares what was used with what is there."""
    c = spec.lm
    K, N, D = c.num_codebooks, c.codebook_size, c.dim
    layers = int(c.backbone_config["num_layers"])
    scale = math.sqrt(D) if spec.scale_embedding else 1.0  # folded into the tables: the same products
    state: dict[str, torch.Tensor] = {}
    for target_pattern, source_pattern, how in DECODER_TABLE:
        for i in range(layers if "{i}" in target_pattern else 1):
            target = target_pattern.replace("{i}", str(i))
            if target in NO_PROJECTION and not spec.projection:
                state[target] = torch.eye(D) if target.endswith("weight") else torch.zeros(D)
                continue
            sources = _expand(source_pattern.replace("{i}", str(i)), layers, K)
            want = expected[target]
            if how == "copy":
                shapes = [tuple(want)]
            elif how == "start":
                shapes = [(N + 1, D)] * len(sources)
            else:  # stack: equal blocks along the first axis
                shapes = [(want[0] // len(sources), *want[1:])] * len(sources)
            tensors = []
            for name, shape in zip(sources, shapes):
                if name not in keys:
                    raise CheckpointError(f"{where}: weight '{name}' is missing (a truncated or mismatched MusicGen checkpoint)")
                tensor = read(name)
                if tuple(tensor.shape) != shape:
                    raise CheckpointError(f"{where}: weight '{name}' has shape {_shape(tensor.shape)}, "
                                          f"expected {_shape(shape)} from config.json")
                tensors.append(tensor.float())
            if how == "copy":
                value = tensors[0]
            elif how == "start":
                value = torch.stack([t[spec.start_id] for t in tensors]).sum(0) * scale
            else:
                value = torch.cat(tensors, 0)
                if target == "embed.weight":
                    value = value * scale
            state[target] = value
    return state


def decoder_sources(spec: MusicgenSpec) -> set[str]:
    """Every file name the decoder table reads for this config."""
    c = spec.lm
    layers = int(c.backbone_config["num_layers"])
    names: set[str] = set()
    for target_pattern, source_pattern, _ in DECODER_TABLE:
        if target_pattern in NO_PROJECTION and not spec.projection:
            continue
        for i in range(layers if "{i}" in target_pattern else 1):
            names.update(_expand(source_pattern.replace("{i}", str(i)), layers, c.num_codebooks))
    return names


def submodel_state(read: Callable[[str], torch.Tensor], keys: set[str], prefix: str,
                   expected: Mapping[str, torch.Size], where: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A sub-model's state dict (its own names) from the file, and the file names used.

    Older names are renamed (:data:`SUBMODELS`); a tied T5 embedding may be stored under
    either name; EnCodec's training statistics may be absent."""
    what, renames = SUBMODELS[prefix]
    by_name: dict[str, str] = {}  # the sub-model's name -> the file's name
    for key in keys:
        if key.startswith(prefix):
            name = key[len(prefix):]
            for old, new in renames:
                if name.endswith(old):
                    name = name[: -len(old)] + new
            by_name[name] = key
    state: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        key = by_name.get(name) or by_name.get(TIED.get(name, ""))
        if key is None:
            if TRAINING_ONLY.search(name):
                continue
            raise CheckpointError(f"{where}: weight '{prefix}{name}' of the {what} is missing (a truncated or "
                                  "mismatched MusicGen checkpoint)")
        tensor = read(key)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{where}: weight '{key}' has shape {_shape(tensor.shape)}, expected "
                                  f"{_shape(shape)} for the {what} of config.json")
        state[name] = tensor
    used = {by_name[n] for n in by_name if n in expected or n in TIED}
    return state, used
