"""tunesmith: open, fast text-to-music.

The public API:

    import tunesmith
    model = tunesmith.load("NAME_OR_PATH")
"""

__version__ = "0.1.0"


def load(name_or_path: str, device: str = "cpu"):
    """Load a bundled model by name, a model directory, or a Hugging Face repo id."""
    from tunesmith.checkpoint import load_model

    return load_model(name_or_path, map_location=device)


def save(model, directory):
    """Write a model directory: config.json + model.safetensors."""
    from tunesmith.checkpoint import save as _save

    return _save(model, directory)
