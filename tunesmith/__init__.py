"""tunesmith: open, fast text-to-music.

The public API:

    import tunesmith
    model = tunesmith.load("NAME_OR_PATH")
"""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while they wait for work make PyTorch's many small CPU ops
# crawl whenever the cores are shared: decoding 10 s of audio took 101 s beside a training
# run with the default policy and 2.3 s with passive waiting.  It only takes effect if set
# before torch starts its thread pool, so it is set here, unless the user chose a policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


DEFAULT_GENERATOR = "tunesmith-small-dit"  # what `tunesmith generate` and `tunesmith.load()` use


def load(name_or_path: str | None = None, device: str = "cpu", *, adapter_scale: float | None = None):
    """Load a bundled model by name, a model directory, or a Hugging Face repo id; with no
    name (or ``"default"``), the default generator the CLI uses.

    A generator directory (its config names a ``generator_type``) gives a
    :class:`tunesmith.generator.Generator` (``.generate(prompts, duration=..., seed=...)``);
    any other model directory gives the ``nn.Module``.  A LoRA adapter directory (from
    ``tunesmith finetune``) gives its base generator with the update merged in, at
    ``adapter_scale`` (0: the base; default: the adapter's own strength, 1).
    """
    from tunesmith.checkpoint import detect_format, load_model, read_directory_meta, resolve

    if name_or_path is None or str(name_or_path) == "default":
        name_or_path = DEFAULT_GENERATOR
    directory = resolve(name_or_path)
    public = detect_format(directory) is not None or not (directory / "config.json").is_file()
    if public or "generator_type" in read_directory_meta(directory):
        from tunesmith.generator import load_generator

        return load_generator(directory, device=device, adapter_scale=adapter_scale)
    if adapter_scale is not None:
        from tunesmith.errors import CheckpointError

        raise CheckpointError(f"an adapter scale applies to a LoRA adapter; {name_or_path} is not a generator")
    return load_model(directory, map_location=device)


def save(model, directory):
    """Write a model directory: config.json + model.safetensors."""
    from tunesmith.checkpoint import save as _save

    return _save(model, directory)
