"""The LoRA math on tiny networks: exact before training, merge/unmerge, gradients, peft's own reading.

peft wraps the layers in training; our own few lines merge at load time.  These tests hold
both to the definition W' = W + (alpha / r) * B @ A and to each other.
"""

import json

import pytest
import torch

from tunesmith.adapters import lora
from tunesmith.adapters.directory import read_adapter
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.diffusion.dit import DiT, DiTConfig
from tunesmith.errors import CheckpointError, ConfigError, UserError
from tunesmith.lm.model import LMConfig, TokenLM

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_dit() -> DiT:
    torch.manual_seed(0)
    net = DiT(DiTConfig(latent_dim=4, width=32, depth=2, heads=2, text_dim=16, fourier_dim=16, max_seconds=4.0))
    with torch.no_grad():
        net.proj_out.weight.normal_(0, 0.1)  # an untrained output layer is zero: give the test something to see
    return net.eval()


def tiny_lm() -> TokenLM:
    torch.manual_seed(0)
    return TokenLM(LMConfig(num_codebooks=2, codebook_size=16, dim=32, text_dim=16,
                            backbone_config={"num_layers": 2, "num_heads": 4}, max_frames=40)).eval()


def dit_inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 12, generator=g), torch.tensor([0.3, 0.8])), {"text": torch.randn(2, 3, 16, generator=g)}


def lm_inputs():
    g = torch.Generator().manual_seed(1)
    steps = torch.randint(0, 16, (2, 2, 9), generator=g)
    return (steps, Conditioning(torch.randn(2, 3, 16, generator=g), torch.ones(2, 3, dtype=torch.bool))), {}


CASES = [("dit", tiny_dit, dit_inputs), ("lm", tiny_lm, lm_inputs)]


def randomize_b(net: torch.nn.Module) -> None:
    """B starts at zero; as if trained, give it values."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("model_type,make,inputs", CASES)
def test_adapted_network_equals_the_base_exactly_before_training(model_type, make, inputs):
    base = make()
    args, kwargs = inputs()
    with torch.no_grad():
        expected = base(*args, **kwargs)
    layers = lora.inject(base, lora.LoraSettings(rank=4), model_type)
    assert len(layers) == 14  # 7 attention and feed-forward projections in each of 2 blocks
    with torch.no_grad():
        got = base(*args, **kwargs)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("model_type,make,inputs", CASES)
def test_only_the_adapter_weights_get_gradients(model_type, make, inputs):
    net = make()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lora.inject(net, lora.LoraSettings(rank=2), model_type)
    randomize_b(net)  # with B = 0, A's gradient is zero too: make both non-trivial
    args, kwargs = inputs()
    net.train()
    net(*args, **kwargs).float().pow(2).mean().backward()
    graded = {n for n, p in net.named_parameters() if p.grad is not None}
    assert graded and all(".lora_A." in n or ".lora_B." in n for n in graded)
    assert all(p.grad.abs().sum() > 0 for n, p in net.named_parameters() if ".lora_A." in n)
    trainable = [p for p in net.parameters() if p.requires_grad]
    torch.optim.AdamW(trainable, lr=0.1).step()
    for key, value in net.state_dict().items():  # every base weight is untouched after an update
        if ".lora_" not in key:
            assert torch.equal(value, before[key.replace(".base_layer", "")]), key


@pytest.mark.parametrize("model_type,make,inputs", CASES)
def test_merge_then_unmerge_returns_the_base_weights(model_type, make, inputs):
    base = make()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    trained = make()
    layers = lora.inject(trained, lora.LoraSettings(rank=4, alpha=8.0), model_type)
    randomize_b(trained)
    pairs = lora.lora_pairs(lora.adapter_tensors(trained, layers))
    lora.merge(base, pairs, 2.0)
    changed = [k for k in original if not torch.equal(base.state_dict()[k], original[k])]
    assert sorted(changed) == sorted(f"{name}.weight" for name in layers)
    for name, (a, b) in pairs.items():  # the definition: W + (alpha / r) * B @ A
        want = original[f"{name}.weight"] + 2.0 * (b @ a)
        assert torch.allclose(base.get_submodule(name).weight, want, atol=1e-6)
    lora.unmerge(base, pairs, 2.0)
    for key, value in base.state_dict().items():
        assert torch.allclose(value, original[key], atol=1e-6), key


@pytest.mark.parametrize("model_type,make,inputs", CASES)
def test_our_merge_is_peft_s_merge_and_equals_the_unmerged_forward(model_type, make, inputs):
    trained = make()
    settings = lora.LoraSettings(rank=4, alpha=8.0)
    layers = lora.inject(trained, settings, model_type)
    randomize_b(trained)
    args, kwargs = inputs()
    with torch.no_grad():
        unmerged = trained(*args, **kwargs)  # peft's LoRA forward: W x + s * B (A x)
    ours = make()
    lora.merge(ours, lora.lora_pairs(lora.adapter_tensors(trained, layers)), settings.scaling)
    for name in layers:
        trained.get_submodule(name).merge()  # peft's own merge
        assert torch.equal(trained.get_submodule(name).base_layer.weight, ours.get_submodule(name).weight), name
    with torch.no_grad():
        merged = ours(*args, **kwargs)
    assert torch.allclose(merged, unmerged, atol=1e-5)


def test_peft_reads_the_adapter_files_we_write(tmp_path):
    """The adapter directory is peft's format: PeftModel.from_pretrained on the base network
    computes what our merged network computes."""
    from peft import PeftModel

    from tunesmith.adapters.directory import write_adapter
    from tunesmith.checkpoint import save

    base_dir = save(tiny_dit(), tmp_path / "base", extra={"generator_type": "latent-diffusion"})
    trained = tiny_dit()
    settings = lora.LoraSettings(rank=4)
    layers = lora.inject(trained, settings, "dit")
    randomize_b(trained)
    adapter = write_adapter(tmp_path / "adapter", lora.adapter_tensors(trained, layers), base=str(base_dir),
                            base_dir=base_dir, rank=4, alpha=settings.lora_alpha, targets=[], modules=layers,
                            peft_config=lora.peft_config(settings, layers, str(base_dir)).to_dict())
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    args, kwargs = dit_inputs()
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(tiny_dit(), str(adapter)).eval()(*args, **kwargs)
        ours = tiny_dit()
        lora.merge(ours, read_adapter(adapter).pairs, settings.scaling)
        assert torch.allclose(ours(*args, **kwargs), theirs, atol=1e-5)
        assert not torch.allclose(tiny_dit()(*args, **kwargs), theirs, atol=1e-3)  # the update is really there


def test_targets_and_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match="rank"):
        lora.LoraSettings(rank=0)
    with pytest.raises(UserError, match="'nope' names no linear layer"):
        lora.target_modules(tiny_dit(), "dit", ("nope",))
    assert lora.target_modules(tiny_dit(), "dit", ("qkv",)) == ["blocks.0.qkv", "blocks.1.qkv"]
    with pytest.raises(UserError, match="no default LoRA targets"):
        lora.target_modules(tiny_dit(), "codec-vae")


def test_malformed_adapter_tensors_are_refused():
    a = torch.zeros(2, 8)
    key = lora.PEFT_PREFIX + "blocks.0.qkv.lora_{}.weight"
    with pytest.raises(CheckpointError, match="without its partner"):
        lora.lora_pairs({key.format("A"): a})
    with pytest.raises(CheckpointError, match="do not multiply"):
        lora.lora_pairs({key.format("A"): a, key.format("B"): torch.zeros(6, 3)})
    with pytest.raises(CheckpointError, match="not a LoRA weight"):
        lora.lora_pairs({"blocks.0.qkv.weight": a})
    with pytest.raises(CheckpointError, match="base layer is"):  # trained on another base: nothing is changed
        net = tiny_dit()
        before = net.blocks[0].qkv.weight.clone()
        lora.merge(net, {"blocks.0.qkv": (torch.ones(2, 32), torch.ones(96, 2)), "blocks.0.out1": (a, torch.ones(6, 2))}, 1.0)
    assert torch.equal(net.blocks[0].qkv.weight, before)
