"""tunesmith's contrastive text-audio model (CLAP): embeddings, long-form fusion, zero-shot tags.

    from tunesmith.clap import load_clap
    clap = load_clap("clap-24k")                 # bundled name or model directory
    a = clap.embed_audio(wav, sample_rate)        # (B, D) unit vectors
    t = clap.embed_text(["a waltz for strings"])  # (B, D) unit vectors
    score = (a * t).sum(-1)                       # CLAP score
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CLAP = "clap-24k"


def load_clap(name_or_path: str | Path = DEFAULT_CLAP, device: str = "cpu"):
    """Load a trained :class:`~tunesmith.clap.model.ClapModel` (eval mode)."""
    from tunesmith.checkpoint import CheckpointError, load_model
    from tunesmith.clap.model import ClapModel

    model = load_model(name_or_path, map_location=device)
    if not isinstance(model, ClapModel):
        raise CheckpointError(f"{name_or_path} is a {type(model).__name__}, not a CLAP model")
    return model
