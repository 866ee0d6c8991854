"""Neural audio codecs: RVQ tokens (for the token LM) and VAE latents (for diffusion).

    from tunesmith.codec import load_codec
    codec = load_codec("codec-24k")            # bundled RVQ codec, 50 frames/s, 6 x 1024 codes
    tokens = codec.encode_long(wav)            # (B, C, T) float -> (B, K, F) int64
    audio = codec.decode_long(tokens)          # -> (B, C, F * 480)
    vae = load_codec("vae-24k")                # latents (B, 32, F) at 25 frames/s
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.codec.model import RVQCodec, RVQCodecConfig, VAECodec, VAEConfig

__all__ = ["RVQCodec", "RVQCodecConfig", "VAECodec", "VAEConfig", "load_codec"]


def load_codec(name_or_path: str | Path = "codec-24k", device: str = "cpu") -> RVQCodec | VAECodec:
    """Load a codec directory or a bundled codec by name, in fp32 and eval mode.

    Raises :class:`tunesmith.checkpoint.CheckpointError` when the directory holds
    some other kind of model.
    """
    from tunesmith.checkpoint import CheckpointError, load_model

    model = load_model(name_or_path, map_location=device)
    if not isinstance(model, (RVQCodec, VAECodec)):
        raise CheckpointError(f"{name_or_path} is a '{getattr(model, 'model_type', '?')}' model, not a codec")
    return model.float().eval()
