"""LM numerics: exact pattern layouts (hand-written tables) and token sampling on known logits."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.lm.patterns import (
    frames_for_steps,
    from_sequence,
    layout,
    num_steps,
    predicted_cells,
    step_frames,
    to_sequence,
    valid_mask,
)
from tunesmith.lm.sampling import apply_cfg, sample, top_k_filter, top_p_filter

_ = -1
# K = 4 codebooks, T = 3 frames: row = pattern step, column = codebook, entry = frame (or -1)
TABLES = {
    "parallel": [
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [2, 2, 2, 2],
    ],
    "delay": [
        [0, _, _, _],
        [1, 0, _, _],
        [2, 1, 0, _],
        [_, 2, 1, 0],
        [_, _, 2, 1],
        [_, _, _, 2],
    ],
    "flattening": [
        [0, _, _, _],
        [_, 0, _, _],
        [_, _, 0, _],
        [_, _, _, 0],
        [1, _, _, _],
        [_, 1, _, _],
        [_, _, 1, _],
        [_, _, _, 1],
        [2, _, _, _],
        [_, 2, _, _],
        [_, _, 2, _],
        [_, _, _, 2],
    ],
    "coarse_first": [
        [0, _, _, _],
        [1, _, _, _],
        [2, _, _, _],
        [_, 0, 0, 0],
        [_, 1, 1, 1],
        [_, 2, 2, 2],
    ],
}


@pytest.mark.parametrize("name", list(TABLES))
def test_layout_matches_the_hand_written_table(name):
    table = layout(name, 4, 3)
    assert table.dtype == torch.long
    assert table.tolist() == TABLES[name]
    assert num_steps(name, 4, 3) == len(TABLES[name])


@pytest.mark.parametrize("name", list(TABLES))
def test_to_sequence_lays_tokens_out_as_the_table_says(name):
    tokens = torch.tensor([[[10 * k + t for t in range(3)] for k in range(4)]])  # token = 10 k + t
    seq = to_sequence(tokens, layout(name, 4, 3), fill=-7)
    expected = [[(10 * k + t) if t >= 0 else -7 for t in (row[k] for row in TABLES[name])] for k in range(4)]
    assert seq[0].tolist() == expected
    assert torch.equal(from_sequence(seq, layout(name, 4, 3), 3), tokens)
    assert valid_mask(layout(name, 4, 3)).tolist() == [[row[k] >= 0 for row in TABLES[name]] for k in range(4)]


def test_step_counts_and_frames_for_steps_by_hand():
    assert [num_steps(n, 4, 5) for n in ("parallel", "delay", "flattening", "coarse_first")] == [5, 8, 20, 10]
    assert [num_steps(n, 1, 5) for n in ("parallel", "delay", "flattening", "coarse_first")] == [5, 5, 5, 5]
    assert num_steps("delay", 4, 0) == 0
    assert frames_for_steps("delay", 4, 10) == 7  # 7 + 3 = 10
    assert frames_for_steps("delay", 4, 3) == 0
    assert frames_for_steps("flattening", 4, 11) == 2
    assert frames_for_steps("coarse_first", 4, 9) == 4
    assert frames_for_steps("parallel", 4, 6) == 6
    assert layout("coarse_first", 1, 3).tolist() == [[0], [1], [2]]


def test_cells_and_step_frames_by_hand():
    table = layout("delay", 4, 3)
    assert predicted_cells(table, 0) == [(0, 0)]
    assert predicted_cells(table, 3) == [(2, 1), (1, 2), (0, 3)]
    assert predicted_cells(table, 5) == [(2, 3)]
    assert step_frames(table).tolist() == [0, 1, 2, 2, 2, 2]
    assert step_frames(layout("coarse_first", 4, 3)).tolist() == [0, 1, 2, 0, 1, 2]
    assert step_frames(layout("flattening", 2, 2)).tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------
# sampling

PROBS = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15], dtype=torch.float64)  # sorted: 1, 3, 4, 0, 2
LOGITS = PROBS.log().float()


def _kept(filtered):
    return torch.isfinite(filtered).nonzero().flatten().tolist()


def test_top_k_keeps_exactly_the_k_largest_and_renormalises():
    for k, kept in ((1, [1]), (2, [1, 3]), (3, [1, 3, 4]), (4, [0, 1, 3, 4])):
        f = top_k_filter(LOGITS, k)
        assert _kept(f) == kept
        p = f.softmax(-1).double()
        expected = torch.zeros(5, dtype=torch.float64)
        expected[kept] = PROBS[kept] / PROBS[kept].sum()
        assert torch.allclose(p, expected, atol=1e-6)
    assert torch.equal(top_k_filter(LOGITS, 5), LOGITS) and torch.equal(top_k_filter(LOGITS, 0), LOGITS)
    # ties at the k-th value are kept
    assert _kept(top_k_filter(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2)) == [1, 2]


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # cumulative mass in sorted order: .4, .7, .85, .95, 1
    for p, kept in ((0.35, [1]), (0.45, [1, 3]), (0.65, [1, 3]), (0.75, [1, 3, 4]), (0.9, [0, 1, 3, 4]), (0.99, [0, 1, 2, 3, 4])):
        f = top_p_filter(LOGITS, p)
        assert _kept(f) == kept, p
        probs = f.softmax(-1).double()
        assert torch.allclose(probs[kept], PROBS[kept] / PROBS[kept].sum(), atol=1e-6)
    assert torch.equal(top_p_filter(LOGITS, 1.0), LOGITS) and torch.equal(top_p_filter(LOGITS, 0.0), LOGITS)
    # rows are filtered independently
    two = torch.stack([LOGITS, LOGITS.flip(0)])
    f = top_p_filter(two, 0.65)
    assert _kept(f[0]) == [1, 3] and _kept(f[1]) == [1, 3]


def _frequencies(draws, n=5):
    return torch.bincount(draws.flatten(), minlength=n).double() / draws.numel()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    # (1.0, 2, 0.5): top-p sees the top-k survivors renormalised (.57, .43), so only one token is left
    [(1.0, 0, 0.0), (0.5, 0, 0.0), (2.0, 3, 0.0), (1.0, 0, 0.65), (2.0, 4, 0.5), (1.0, 2, 0.5)],
)
def test_sampling_frequencies_match_the_filtered_tempered_distribution(temperature, top_k, top_p):
    # expected: p^(1/T) renormalised, then top-k, then top-p on the tempered probabilities
    q = PROBS ** (1 / temperature)
    q = q / q.sum()
    order = q.argsort(descending=True)
    keep = torch.ones(5, dtype=torch.bool)
    if top_k:
        keep[order[top_k:]] = False
    if top_p:
        r = torch.where(keep, q, torch.zeros_like(q))
        r = r / r.sum()
        before = 0.0
        for i in order.tolist():
            if keep[i] and before >= top_p:
                keep[i] = False
            before += float(r[i]) if keep[i] else 0.0
    expected = torch.where(keep, q, torch.zeros_like(q))
    expected = expected / expected.sum()
    n = 200_000
    draws = sample(LOGITS.expand(n, 5), temperature=temperature, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0))
    freq = _frequencies(draws)
    se = (expected * (1 - expected) / n).sqrt()
    assert bool(((freq - expected).abs() <= 5 * se + 1e-12).all()), (freq, expected)
    again = sample(LOGITS.expand(n, 5), temperature=temperature, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_temperature_zero_is_argmax_per_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -1.0, 4.9]])
    assert sample(logits, temperature=0.0).tolist() == [1, 0]


def test_cfg_on_logits_by_hand():
    cond, uncond = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    assert apply_cfg(cond, uncond, 3.0).tolist() == [3.0, -8.0, 0.5]
    assert apply_cfg(cond, uncond, 0.5).tolist() == [0.5, -0.5, 0.5]
    p = apply_cfg(cond, uncond, 2.0).softmax(-1)
    e = torch.tensor([math.exp(2.0), math.exp(-5.0), math.exp(0.5)])
    assert torch.allclose(p, e / e.sum())
