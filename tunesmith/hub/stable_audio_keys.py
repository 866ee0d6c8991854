"""Stable Audio Open in diffusers' layout -> tunesmith's DiT and Oobleck VAE: the key table and configs.

Read a row as: tunesmith tensor  <-  diffusers tensor(s)  by  transform.  Diffusers names carry
their folder (``transformer/``, ``projection_model/``); ``{i}`` is a block index.  The
transforms (each exact up to float rounding):

- ``copy``: as it is;
- ``qkv``: self-attention's q, k and v stacked into our one projection, with the rows of q and
  k reordered in each head so that their "rotate-half" rotary layout (channel i turns with
  channel i + r/2) becomes our adjacent pairs (2i, 2i + 1): q.k is unchanged by a permutation
  applied to both, and the rotation then matches channel for channel;
- ``kv_pairs``: cross-attention's k and v interleaved per key/value head, [k_0 v_0 k_1 v_1 ...];
- ``fold_in`` / ``fold_out``: the residual 1x1 convolutions before proj_in and after proj_out
  (x + W x) multiplied into those projections: proj_in (I + W_pre) and (I + W_post) proj_out;
- ``weight_norm``: the VAE's weight-normalised convolutions, w = g v / |v| (norm over all but
  the first dimension), computed once.

Diffusers config -> our configs: :func:`dit_config`, :func:`vae_config`, :func:`sampling_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from tunesmith.codec.oobleck import OobleckConfig
from tunesmith.diffusion.dit import DiTConfig
from tunesmith.errors import CheckpointError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    name: str
    combine: Callable[[list[torch.Tensor], DiTConfig | None], torch.Tensor]
    sources: Callable[[Shape], list[Shape]]  # the diffusers shapes that make a tunesmith tensor of this shape


def _rotate_half_to_pairs(weight: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    """Rows of a q or k projection (heads * head_dim, in) reordered per head: rotary channel
    i + r/2 moves next to channel i; the channels past the rotary part stay where they are."""
    head_dim = config.width // config.heads
    half = (config.rotary_dim or head_dim) // 2
    order = torch.arange(head_dim)
    order[: 2 * half] = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return weight.view(config.heads, head_dim, -1)[:, order].reshape(weight.shape)


def _kv_pairs(k: torch.Tensor, v: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    heads = config.kv_heads
    return torch.cat([k.view(heads, -1, k.shape[-1]), v.view(heads, -1, v.shape[-1])], dim=1).reshape(-1, k.shape[-1])


def _weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm = v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))
    return v * (g / norm)


COPY = Transform("copy", lambda t, c: t[0], lambda s: [s])
QKV = Transform("qkv", lambda t, c: torch.cat([_rotate_half_to_pairs(t[0], c), _rotate_half_to_pairs(t[1], c), t[2]]),
                lambda s: [(s[0] // 3, s[1])] * 3)
KV_PAIRS = Transform("kv_pairs", lambda t, c: _kv_pairs(t[0], t[1], c), lambda s: [(s[0] // 2, s[1])] * 2)
FOLD_IN = Transform("fold_in", lambda t, c: t[0] @ (torch.eye(t[1].shape[0]) + t[1][:, :, 0]),
                    lambda s: [s, (s[1], s[1], 1)])
FOLD_OUT = Transform("fold_out", lambda t, c: (torch.eye(t[1].shape[0]) + t[1][:, :, 0]) @ t[0],
                     lambda s: [s, (s[0], s[0], 1)])
WEIGHT_NORM = Transform("weight_norm", lambda t, c: _weight_norm(t[0], t[1]), lambda s: [(s[0],) + (1,) * (len(s) - 1), s])

T, P = "transformer/", "projection_model/"
B = T + "transformer_blocks.{i}."

# tunesmith DiT                 <- diffusers                                                        transform
DIT_KEYS: list[tuple[str, tuple[str, ...], Transform]] = [
    ("noise_embed.freqs",          (T + "time_proj.weight",),                                          COPY),
    ("noise_embed.mlp.0.weight",   (T + "timestep_proj.0.weight",),                                    COPY),
    ("noise_embed.mlp.0.bias",     (T + "timestep_proj.0.bias",),                                      COPY),
    ("noise_embed.mlp.2.weight",   (T + "timestep_proj.2.weight",),                                    COPY),
    ("noise_embed.mlp.2.bias",     (T + "timestep_proj.2.bias",),                                      COPY),
    ("global_proj.0.weight",       (T + "global_proj.0.weight",),                                      COPY),
    ("global_proj.2.weight",       (T + "global_proj.2.weight",),                                      COPY),
    ("text_proj.0.weight",         (T + "cross_attention_proj.0.weight",),                             COPY),
    ("text_proj.2.weight",         (T + "cross_attention_proj.2.weight",),                             COPY),
    ("proj_in.weight",             (T + "proj_in.weight", T + "preprocess_conv.weight"),               FOLD_IN),
    ("proj_out.weight",            (T + "proj_out.weight", T + "postprocess_conv.weight"),             FOLD_OUT),
    ("text_in.weight",             (P + "text_projection.weight",),                                    COPY),  # when T5's width
    ("text_in.bias",               (P + "text_projection.bias",),                                      COPY),  # != cond_dim
    ("start_number.freqs",         (P + "start_number_conditioner.time_positional_embedding.0.weights",), COPY),
    ("start_number.proj.weight",   (P + "start_number_conditioner.time_positional_embedding.1.weight",),  COPY),
    ("start_number.proj.bias",     (P + "start_number_conditioner.time_positional_embedding.1.bias",),    COPY),
    ("total_number.freqs",         (P + "end_number_conditioner.time_positional_embedding.0.weights",),   COPY),
    ("total_number.proj.weight",   (P + "end_number_conditioner.time_positional_embedding.1.weight",),    COPY),
    ("total_number.proj.bias",     (P + "end_number_conditioner.time_positional_embedding.1.bias",),      COPY),
    ("blocks.{i}.norm1.weight",    (B + "norm1.weight",),                                              COPY),
    ("blocks.{i}.norm1.bias",      (B + "norm1.bias",),                                                COPY),
    ("blocks.{i}.qkv.weight",      (B + "attn1.to_q.weight", B + "attn1.to_k.weight", B + "attn1.to_v.weight"), QKV),
    ("blocks.{i}.out1.weight",     (B + "attn1.to_out.0.weight",),                                     COPY),
    ("blocks.{i}.norm2.weight",    (B + "norm2.weight",),                                              COPY),
    ("blocks.{i}.norm2.bias",      (B + "norm2.bias",),                                                COPY),
    ("blocks.{i}.q2.weight",       (B + "attn2.to_q.weight",),                                         COPY),
    ("blocks.{i}.kv2.weight",      (B + "attn2.to_k.weight", B + "attn2.to_v.weight"),                 KV_PAIRS),
    ("blocks.{i}.out2.weight",     (B + "attn2.to_out.0.weight",),                                     COPY),
    ("blocks.{i}.norm3.weight",    (B + "norm3.weight",),                                              COPY),
    ("blocks.{i}.norm3.bias",      (B + "norm3.bias",),                                                COPY),
    ("blocks.{i}.ff_in.weight",    (B + "ff.net.0.proj.weight",),                                      COPY),
    ("blocks.{i}.ff_in.bias",      (B + "ff.net.0.proj.bias",),                                        COPY),
    ("blocks.{i}.ff_out.weight",   (B + "ff.net.2.weight",),                                           COPY),
    ("blocks.{i}.ff_out.bias",     (B + "ff.net.2.bias",),                                             COPY),
]


def vae_keys(names: list[str]) -> list[tuple[str, tuple[str, ...], Transform]]:
    """The VAE's table: our module names are diffusers' (vae/ folder); a convolution's weight is
    their weight_g and weight_v, normalised; biases and Snake's alpha and beta are copied."""
    rows = []
    for name in names:
        if name.endswith(".weight"):
            stem = "vae/" + name[: -len(".weight")]
            rows.append((name, (stem + ".weight_g", stem + ".weight_v"), WEIGHT_NORM))
        else:
            rows.append((name, ("vae/" + name,), COPY))
    return rows


def expand(rows: list[tuple[str, tuple[str, ...], Transform]], depth: int) -> list[tuple[str, tuple[str, ...], Transform]]:
    """The table with every ``{i}`` row written out for blocks 0 .. depth-1."""
    out = []
    for target, sources, transform in rows:
        if "{i}" in target:
            out += [(target.format(i=i), tuple(s.format(i=i) for s in sources), transform) for i in range(depth)]
        else:
            out.append((target, sources, transform))
    return out


def map_weights(rows: list[tuple[str, tuple[str, ...], Transform]], tensors: dict[str, torch.Tensor],
                targets: dict[str, torch.Tensor], config: DiTConfig | None, where: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """Our state dict (the keys of ``targets``, with their shapes) made from diffusers ``tensors``.

    A diffusers tensor missing, of the wrong shape, or left over (a key the table does not
    read) is a :class:`CheckpointError` naming it; ``where(key)`` says which file holds it.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for target, sources, transform in rows:
        if target not in targets:  # a row for a part this configuration does not have (text_in)
            continue
        parts = []
        for source, shape in zip(sources, transform.sources(tuple(targets[target].shape))):
            if source not in tensors:
                raise CheckpointError(f"{where(source)}: missing key '{source.split('/', 1)[1]}'")
            found = tuple(tensors[source].shape)
            if found != tuple(shape):
                raise CheckpointError(f"{where(source)}: '{source.split('/', 1)[1]}' has shape {list(found)}, "
                                      f"expected {list(shape)}")
            parts.append(tensors[source].float())
        with torch.no_grad():
            out[target] = transform.combine(parts, config).contiguous()
        used.update(sources)
    left = sorted(set(tensors) - used)
    if left:
        raise CheckpointError(f"{where(left[0])}: unexpected key '{left[0].split('/', 1)[1]}' "
                              "(not part of the Stable Audio Open layout this configuration describes)")
    missing = sorted(set(targets) - set(out))
    if missing:  # a gap in the table itself
        raise CheckpointError(f"nothing in the checkpoint makes tunesmith's '{missing[0]}'")
    return out


# ---------------------------------------------------------------------------
# configs


def _need(config: dict[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise CheckpointError(f"{where}: missing config key '{key}'")
    return config[key]


def dit_config(transformer: dict[str, Any], projection: dict[str, Any], text_dim: int) -> DiTConfig:
    """Our DiT's config from transformer/config.json, projection_model/config.json and T5's width."""
    tw, pw = "transformer/config.json", "projection_model/config.json"
    heads, head_dim = _need(transformer, "num_attention_heads", tw), _need(transformer, "attention_head_dim", tw)
    width = heads * head_dim
    latent = _need(transformer, "in_channels", tw)
    cond_dim = _need(projection, "conditioning_dim", pw)
    if _need(transformer, "out_channels", tw) != latent:
        raise CheckpointError(f"{tw}: out_channels {transformer['out_channels']} != in_channels {latent}")
    if _need(transformer, "global_states_input_dim", tw) != 2 * cond_dim:
        raise CheckpointError(f"{tw}: global_states_input_dim {transformer['global_states_input_dim']} is not "
                              f"2 x the projection's conditioning_dim ({cond_dim})")
    if _need(transformer, "cross_attention_input_dim", tw) != cond_dim:
        raise CheckpointError(f"{tw}: cross_attention_input_dim {transformer['cross_attention_input_dim']} != "
                              f"the projection's conditioning_dim ({cond_dim})")
    if _need(projection, "text_encoder_dim", pw) != text_dim:
        raise CheckpointError(f"{pw}: text_encoder_dim {projection['text_encoder_dim']} != the text encoder's width {text_dim}")
    timing_min, timing_max = float(_need(projection, "min_value", pw)), float(_need(projection, "max_value", pw))
    try:
        return DiTConfig(
            latent_dim=latent, width=width, depth=_need(transformer, "num_layers", tw), heads=heads,
            ffn_dim=4 * width, text_dim=text_dim, fourier_dim=_need(transformer, "time_proj_dim", tw),
            max_seconds=timing_max, inpainting=False, parameterization="v", sigma_data=1.0,
            rotary_dim=head_dim // 2,  # the pipeline turns half of each head
            cross_dim=_need(transformer, "cross_attention_dim", tw),
            cross_kv_heads=_need(transformer, "num_key_value_attention_heads", tw),
            ffn_bias=True, io_bias=False, final_norm=False, conditioning="stable-audio", cond_dim=cond_dim,
            number_fourier_dim=256,  # diffusers' StableAudioNumberConditioner: internal_dim 256, not in the config
            timing_min=timing_min, timing_max=timing_max)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{tw}: not a Stable Audio DiT tunesmith can run ({err})") from None


def vae_config(vae: dict[str, Any]) -> OobleckConfig:
    """Our Oobleck config from vae/config.json (AutoencoderOobleck)."""
    where = "vae/config.json"
    try:
        return OobleckConfig(
            sample_rate=int(_need(vae, "sampling_rate", where)), channels=int(_need(vae, "audio_channels", where)),
            latent_dim=int(_need(vae, "decoder_input_channels", where)),
            encoder_dim=int(_need(vae, "encoder_hidden_size", where)),
            decoder_dim=int(_need(vae, "decoder_channels", where)),
            strides=tuple(int(s) for s in _need(vae, "downsampling_ratios", where)),
            multiples=tuple(int(m) for m in _need(vae, "channel_multiples", where)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: not an Oobleck VAE tunesmith can run ({err})") from None


@dataclass(frozen=True)
class SamplingConfig:
    """What scheduler/scheduler_config.json says about sampling, in tunesmith's terms."""

    sigma_min: float = 0.3
    sigma_max: float = 500.0
    schedule: str = "exponential"
    sampler: str = "dpmpp-2m-sde"  # CosineDPMSolverMultistepScheduler: DPM-Solver++(2M), SDE variant, midpoint


def sampling_config(scheduler: dict[str, Any] | None) -> SamplingConfig:
    """Stable Audio's scheduler (v-prediction on the cosine schedule, sigma_data 1: exactly our
    "v" denoiser) as our sampler, schedule and sigma range; anything else is refused by name."""
    if scheduler is None:
        return SamplingConfig()
    where = "scheduler/scheduler_config.json"
    if scheduler.get("prediction_type", "v_prediction") != "v_prediction":
        raise CheckpointError(f"{where}: prediction_type {scheduler['prediction_type']!r}; tunesmith runs "
                              "Stable Audio's v_prediction only")
    if float(scheduler.get("sigma_data", 1.0)) != 1.0:
        raise CheckpointError(f"{where}: sigma_data {scheduler['sigma_data']}; Stable Audio's v-objective needs 1.0")
    schedule = scheduler.get("sigma_schedule", "exponential")
    if schedule not in ("exponential", "karras"):
        raise CheckpointError(f"{where}: unknown sigma_schedule {schedule!r} (exponential, karras)")
    return SamplingConfig(float(scheduler.get("sigma_min", 0.3)), float(scheduler.get("sigma_max", 500.0)), schedule)
