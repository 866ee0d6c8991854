"""The CLAP model, its losses, retrieval measures and CHiLS zero-shot decision."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.checkpoint import save
from tunesmith.clap import load_clap
from tunesmith.clap.loss import duplicate_aware_targets, soft_contrastive_loss, symmetric_contrastive_loss
from tunesmith.clap.model import ClapConfig, ClapModel, split_windows
from tunesmith.clap.retrieval import different_family_rate, recall_at_k
from tunesmith.clap.zeroshot import chils_combine, instrument_hierarchy

TINY = dict(n_mels=32, window_seconds=1.0, channels=(16, 16), embed_dim=32, heads=2, text_hidden=64, max_windows=8)


def test_contrastive_loss_limits():
    b = 8
    assert symmetric_contrastive_loss(torch.zeros(b, b)).item() == pytest.approx(math.log(b))
    perfect = 50.0 * torch.eye(b)
    assert symmetric_contrastive_loss(perfect).item() < 1e-6
    logits = torch.randn(b, b)
    soft = soft_contrastive_loss(logits, torch.eye(b))
    assert soft.item() == pytest.approx(symmetric_contrastive_loss(logits).item(), rel=1e-6)
    with pytest.raises(ValueError, match="square"):
        symmetric_contrastive_loss(torch.zeros(3, 4))


def test_duplicate_captions_are_shared_positives():
    targets = duplicate_aware_targets(["a", "b", "a"])
    assert targets[0].tolist() == [0.5, 0.0, 0.5]
    assert targets[1].tolist() == [0.0, 1.0, 0.0]
    # Two identical captions matching either of their two clips equally well is optimal for the
    # duplicate-aware loss (zero gradient), while the plain loss still pushes the twins apart.
    logits = torch.tensor([[10.0, -10.0, 10.0], [-10.0, 10.0, -10.0], [10.0, -10.0, 10.0]], requires_grad=True)
    (soft_grad,) = torch.autograd.grad(soft_contrastive_loss(logits, targets), logits)
    (hard_grad,) = torch.autograd.grad(symmetric_contrastive_loss(logits), logits)
    assert soft_grad.abs().max() < 1e-6
    assert hard_grad.abs().max() > 0.1


def test_audio_embeddings_are_unit_vectors_and_long_clips_are_fused():
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(**TINY)).eval()
    with torch.no_grad():
        model.fusion.gate.fill_(1.0)  # make the attention path count
    sr = model.config.sample_rate
    short = torch.randn(2, 1, sr) * 0.1
    emb = model.embed_audio(short, sr)
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    # A 3-window piece is fused: its embedding differs from its first window's.
    long = torch.randn(1, 1, 3 * sr) * 0.1
    fused = model.embed_audio(long, sr)
    first = model.embed_audio(long[..., :sr], sr)
    assert (fused - first).abs().max() > 1e-3
    # Mixed batch: the 1-window item equals its embedding computed alone.
    mixed = model.embed_audio(torch.cat([torch.nn.functional.pad(short[:1], (0, 2 * sr)), long]), sr)
    assert mixed.shape == (2, 32)
    # Loudness does not matter (windows are normalised before the tower).
    torch.testing.assert_close(model.embed_audio(short * 0.3, sr), emb, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        model.embed_audio(torch.full((1, sr), float("nan")), sr)
    with pytest.raises(ValueError, match="longer than"):
        model.embed_audio(torch.randn(1, 1, 10 * sr), sr)


def test_split_windows_drops_short_tails():
    assert split_windows(torch.ones(250), 100).shape == (3, 100)  # tail of 50 kept (half a window)
    assert split_windows(torch.ones(240), 100).shape == (2, 100)  # tail of 40 dropped
    assert split_windows(torch.ones(30), 100).shape == (1, 100)  # shorter than a window: padded


def test_text_embeddings_and_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = ClapModel(ClapConfig(**TINY)).eval()
    text = model.embed_text(["a waltz for strings", "a march for brass band"])
    assert text.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    save(model, tmp_path / "clap")
    loaded = load_clap(tmp_path / "clap")
    torch.testing.assert_close(loaded.embed_text(["a waltz for strings", "a march for brass band"]), text)
    wav = torch.randn(1, 1, 24000) * 0.1
    torch.testing.assert_close(loaded.embed_audio(wav, 24000), model.embed_audio(wav, 24000))
    with pytest.raises(ValueError, match="empty"):
        model.embed_text([""])


def test_recall_at_k_and_family_rate():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.5]])
    assert recall_at_k(sim, 1) == pytest.approx(2 / 3)
    assert recall_at_k(sim, 2) == pytest.approx(1.0)
    # Rows 0 and 1 share a caption: row 1's top hit (column 0) counts.
    assert recall_at_k(sim, 1, groups=["x", "x", "y"]) == pytest.approx(1.0)
    audio = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    # Caption 2 is a copy of caption 0: audio 0 ties with it (a tie is a loss) and beats
    # caption 1; audio 1 beats both; audio 2 matches no caption and loses both: 3 of 6.
    rate = different_family_rate(audio, text, [["a"], ["b"], ["c"]], trials=2)
    assert rate == pytest.approx(3 / 6)
    assert different_family_rate(audio, torch.eye(3), [["a"], ["b"], ["c"]], trials=2) == 1.0


def test_chils_maps_the_best_subclass_to_its_parent():
    # Parents: brass (children 0, 1), strings (children 2, 3).  The flat parent prompt favours
    # strings a little, but one brass subclass is clearly the best match: CHiLS says brass.
    owner = [0, 0, 1, 1]
    child = torch.tensor([[0.55, 0.05, 0.2, 0.2]])
    parent = torch.tensor([[0.45, 0.55]])
    best, per_parent = chils_combine(child, owner, parent)
    assert best.tolist() == [0]
    assert per_parent[0, 0] > per_parent[0, 1]
    torch.testing.assert_close(per_parent.sum(1), torch.ones(1))
    # Without reweighting the same decision follows from the children alone.
    best_plain, _ = chils_combine(child, owner)
    assert best_plain.tolist() == [0]
    with pytest.raises(ValueError):
        chils_combine(torch.ones(1, 3), owner)


def test_instrument_hierarchy_covers_the_corpus_families():
    hierarchy = instrument_hierarchy()
    assert {"brass", "strings", "piano"} <= set(hierarchy)
    assert "trumpet" in hierarchy["brass"]
