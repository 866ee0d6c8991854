"""The SSM backbones inside the token LM: matched sizes, and cached decoding equal to the forward."""

from __future__ import annotations


import pytest
import torch

from tunesmith.config import preset
from tunesmith.lm.backbones.mamba2 import PRESETS, count_backbone_parameters, matched_options
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.lm.model import LMConfig, TokenLM
from tunesmith.lm.patterns import layout, to_sequence


def lm_parameters(config: LMConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in TokenLM(config).parameters())


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_presets_match_the_transformer_within_3_percent(size):
    import tunesmith.lm.train  # noqa: F401  (registers the Transformer run presets)

    transformer = preset("run/lm", size).model
    ssm = preset("run/lm", f"{size}-mamba2").model
    assert transformer.backbone == "transformer" and ssm.backbone == "mamba2"
    assert (ssm.dim, ssm.num_codebooks, ssm.codebook_size) == (transformer.dim, transformer.num_codebooks, transformer.codebook_size)
    ratio = lm_parameters(ssm) / lm_parameters(transformer)
    assert abs(ratio - 1) < 0.03, ratio


def test_matched_options_hits_the_target():
    target = count_backbone_parameters("transformer", 128, {"num_layers": 4, "num_heads": 4})
    opts = matched_options(128, target, d_state=32, head_dim=32)
    got = count_backbone_parameters("mamba2", 128, opts)
    assert abs(got / target - 1) < 0.01
    assert opts["n_layers"] >= 2 and 2 * 128 <= opts["mlp_hidden"] <= 6 * 128


@pytest.mark.parametrize("backbone", ["mamba2", "mamba1"])
@pytest.mark.parametrize("with_text", [False, True])
def test_lm_cached_decoding_equals_forward(backbone, with_text):
    """Prefill [text prefix | start | known steps] then one step at a time: the logits of the full forward."""
    torch.manual_seed(0)
    options = {"n_layers": 2, "d_state": 8, "chunk_size": 8}
    if backbone == "mamba2":
        options["head_dim"] = 16
    config = LMConfig(num_codebooks=3, codebook_size=17, dim=32, backbone=backbone, backbone_config=options,
                      conditioning="prefix", text_dim=12, max_text_tokens=5, max_frames=40)
    model = TokenLM(config).eval()
    tokens = torch.randint(0, 17, (2, 3, 14))
    table = layout("delay", 3, 14)
    steps = to_sequence(tokens, table, fill=config.special_token)
    cond = None
    if with_text:
        mask = torch.tensor([[True] * 4 + [False], [True] * 2 + [False] * 3])
        cond = Conditioning(text=torch.randn(2, 5, 12), text_mask=mask)
    with torch.no_grad():
        full = model(steps, cond)  # (B, K, S, N)
        prefix, _, _ = model.condition(cond, 2)
        P = 0 if prefix is None else prefix.shape[1]
        state = model.backbone.allocate_state(2, P + steps.shape[2], "cpu", torch.float32)
        known = 6
        hidden = model.backbone.step(model.sequence_input(steps[:, :, :known], prefix), state)
        outs = [model.logits(hidden[:, P:])]
        for s in range(known, steps.shape[2] - 1):
            outs.append(model.logits(model.backbone.step(model.embed_steps(steps[:, :, s : s + 1]), state)))
    stepped = torch.cat(outs, dim=2)
    assert stepped.shape == full.shape
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=0)
