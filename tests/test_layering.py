"""The package's layers: data flows one way, and a lower layer never imports a higher one.

Checked on the source (every import statement, including the lazy ones inside functions)
so that a violation fails here before it becomes a cycle or a slow start; and at run time
for the one path users hit most: loading the default generator must not load training.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tunesmith

PACKAGE = Path(tunesmith.__file__).parent

# the layers, lowest first
ORDER = ["foundation", "data", "checkpoint", "conditioning", "models", "generator", "generators", "eval",
         "training", "serve", "cli"]
# a module belongs to the layer of its longest matching prefix
PREFIXES: dict[str, tuple[str, ...]] = {
    "foundation": ("tunesmith.errors", "tunesmith.files", "tunesmith.config", "tunesmith.music",
                   "tunesmith.audio", "tunesmith.spectral", "tunesmith.loudness"),
    "data": ("tunesmith.data",),
    "checkpoint": ("tunesmith.checkpoint",),
    "conditioning": ("tunesmith.conditioning",),
    "models": ("tunesmith.codec", "tunesmith.clap", "tunesmith.lm", "tunesmith.diffusion", "tunesmith.distill",
               "tunesmith.control", "tunesmith.adapters", "tunesmith.hybrid"),
    "generator": ("tunesmith.generator",),
    "generators": ("tunesmith.lm.generator", "tunesmith.diffusion.generator", "tunesmith.hub",
                   "tunesmith.adapters.generator", "tunesmith.hybrid.generator",
                   "tunesmith.hybrid.tiny"),
    "eval": ("tunesmith.eval",),
    "training": ("tunesmith.train", "tunesmith.lm.train", "tunesmith.lm.data", "tunesmith.diffusion.train",
                 "tunesmith.codec.task", "tunesmith.codec.train", "tunesmith.codec.train_vae",
                 "tunesmith.codec.export", "tunesmith.codec.curves",
                 "tunesmith.clap.train", "tunesmith.clap.report",
                 "tunesmith.adapters.finetune", "tunesmith.adapters.data", "tunesmith.adapters.autocaption",
                 "tunesmith.adapters.prior",
                 "tunesmith.data.captioner",
                 "tunesmith.distill.train", "tunesmith.hybrid.train"),
    "serve": ("tunesmith.serve",),
    "cli": ("tunesmith.cli",),
}


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, prefixes in PREFIXES.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name)
    return best[1] if best else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tunesmith_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tunesmith."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesmith"):
            if node.module == "tunesmith":  # `from tunesmith import x`: x may be a module
                found.update(f"tunesmith.{a.name}" for a in node.names if (PACKAGE / a.name).exists()
                             or (PACKAGE / f"{a.name}.py").exists())
            else:
                found.add(node.module)
    return found


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in PACKAGE.rglob("*.py") if module_name(p) != "tunesmith"
                and layer_of(module_name(p)) is None]
    assert not unplaced, f"modules in no layer (add them to PREFIXES): {unplaced}"


def test_no_layer_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        if importer == "tunesmith":  # the public façade: load() reaches every layer, lazily
            continue
        rank = ORDER.index(layer_of(importer))
        for imported in tunesmith_imports(path):
            target = layer_of(imported)
            if target is not None and ORDER.index(target) > rank:
                violations.append(f"{importer} ({layer_of(importer)}) imports {imported} ({target})")
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_violation():
    """The checker itself: a model importing the training engine is caught."""
    assert ORDER.index(layer_of("tunesmith.train.engine")) > ORDER.index(layer_of("tunesmith.diffusion.dit"))
    assert layer_of("tunesmith.diffusion.train") == "training" and layer_of("tunesmith.diffusion.dit") == "models"
    assert layer_of("tunesmith.lm.backbones.mamba2") == "models" and layer_of("tunesmith.cli.generate") == "cli"


def test_loading_the_default_generator_imports_only_its_family():
    code = (
        "import sys, tunesmith\n"
        "tunesmith.load()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('tunesmith'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = set(out.stdout.split())
    assert "tunesmith.diffusion.generator" in loaded
    unwanted = [m for m in loaded if layer_of(m) in ("training", "eval", "cli")
                or m.startswith(("tunesmith.lm", "tunesmith.clap"))]
    assert not unwanted, f"loading the default generator imported {unwanted}"


def test_load_with_no_name_is_the_default_generator():
    code = (
        "import tunesmith\n"
        "from tunesmith.generator import load_generator\n"
        "a, b = tunesmith.load(), tunesmith.load('default')\n"
        "print(type(a).__name__, type(b).__name__, type(load_generator()).__name__, tunesmith.DEFAULT_GENERATOR)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["LatentDiffusionGenerator"] * 3 + ["tunesmith-small-dit"]


def test_the_networks_import_no_text_encoder_and_no_corpus_tables():
    """dit.py and lm/model.py need two widths (the clock's, the key's), not the text encoders,
    transformers or the corpus's instrument and style tables behind the prompt parser."""
    code = (
        "import sys, tunesmith.diffusion.dit, tunesmith.lm.model\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('tunesmith', 'transformers')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = set(out.stdout.split())
    unwanted = [m for m in loaded if m.startswith(("transformers", "tunesmith.data", "tunesmith.conditioning.text",
                                                   "tunesmith.conditioning.encoders",
                                                   "tunesmith.conditioning.instruments"))]
    assert not unwanted, f"the networks imported {unwanted}"


def test_loading_an_adapter_imports_no_training_code_and_no_peft(tmp_path):
    """An adapter directory loads as its base generator with the update merged by our own
    code: neither the training layer nor peft (5 s of imports) is loaded to generate."""
    import torch

    from tunesmith.adapters.directory import write_adapter
    from tunesmith.adapters.lora import PEFT_PREFIX
    from tunesmith.serve.testing import tiny_generator

    base = tiny_generator(tmp_path / "base")
    tensors = {f"{PEFT_PREFIX}blocks.0.qkv.lora_A.weight": torch.randn(2, 32),
               f"{PEFT_PREFIX}blocks.0.qkv.lora_B.weight": torch.randn(96, 2)}
    write_adapter(tmp_path / "adapter", tensors, base=str(base), base_dir=base, rank=2, alpha=2.0, targets=[],
                  modules=["blocks.0.qkv"], peft_config={"peft_type": "LORA", "r": 2})
    code = (
        "import sys, tunesmith\n"
        f"tunesmith.load({str(tmp_path / 'adapter')!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('tunesmith', 'peft')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = set(out.stdout.split())
    assert "tunesmith.adapters.generator" in loaded
    unwanted = [m for m in loaded if layer_of(m) in ("training", "eval", "cli") or m.startswith("peft")
                or m.startswith(("tunesmith.lm", "tunesmith.clap"))]
    assert not unwanted, f"loading an adapter imported {unwanted}"
