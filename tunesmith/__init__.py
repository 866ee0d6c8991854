"""tunesmith: open, fast text-to-music.

The public API:

    import tunesmith
    model = tunesmith.load("NAME_OR_PATH")
"""

__version__ = "0.1.0"


def load(name_or_path: str, device: str = "cpu"):
    """Load a bundled model by name, a model directory, or a Hugging Face repo id.

    A generator directory (its config names a ``generator_type``) gives an object with
    ``.generate(prompts, duration=..., seed=...)``; any other model directory gives the
    ``nn.Module``.
    """
    from tunesmith.checkpoint import load_model, read_model_config, resolve

    directory = resolve(name_or_path)
    if "generator_type" in read_model_config(directory):
        from tunesmith.generator import load_generator

        return load_generator(directory, device=device)
    return load_model(directory, map_location=device)


def save(model, directory):
    """Write a model directory: config.json + model.safetensors."""
    from tunesmith.checkpoint import save as _save

    return _save(model, directory)
