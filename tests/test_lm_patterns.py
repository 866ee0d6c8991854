"""Codebook patterns: exact round trips, step counts and which cells each step predicts."""

import pytest
import torch

from tunesmith.lm.patterns import (
    PATTERNS,
    frames_for_steps,
    from_sequence,
    layout,
    num_steps,
    predicted_cells,
    to_sequence,
    valid_mask,
)

SPECIAL = 99


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("K", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("T", [1, 2, 5, 17])
def test_round_trip_is_exact(name, K, T):
    g = torch.Generator().manual_seed(K * 100 + T)
    tokens = torch.randint(0, 50, (3, K, T), generator=g)
    table = layout(name, K, T)
    seq = to_sequence(tokens, table, fill=SPECIAL)
    assert seq.shape == (3, K, num_steps(name, K, T))
    assert torch.equal(from_sequence(seq, table, T), tokens)
    # every real token appears exactly once; every other cell is the fill token
    assert int(valid_mask(table).sum()) == K * T
    assert torch.all(seq[:, ~valid_mask(table)] == SPECIAL)


def test_step_counts():
    assert [num_steps(n, 4, 10) for n in ("parallel", "delay", "flattening", "coarse_first")] == [10, 13, 40, 20]
    assert frames_for_steps("delay", 4, 13) == 10 and frames_for_steps("delay", 4, 12) == 9
    assert frames_for_steps("flattening", 4, 41) == 10


def test_delay_predicts_codebook_k_of_frame_t_at_step_t_plus_k():
    K, T = 4, 7
    table = layout("delay", K, T)
    for t in range(T):
        for k in range(K):
            assert (t, k) in predicted_cells(table, t + k)
    assert predicted_cells(table, 0) == [(0, 0)]
    assert predicted_cells(table, T + K - 2) == [(T - 1, K - 1)]


def test_other_patterns_cells():
    assert predicted_cells(layout("parallel", 3, 5), 2) == [(2, 0), (2, 1), (2, 2)]
    flat = layout("flattening", 3, 5)
    assert [predicted_cells(flat, s) for s in range(4)] == [[(0, 0)], [(0, 1)], [(0, 2)], [(1, 0)]]
    coarse = layout("coarse_first", 3, 5)
    assert predicted_cells(coarse, 4) == [(4, 0)]
    assert predicted_cells(coarse, 5) == [(0, 1), (0, 2)]


def test_causality_of_every_pattern():
    """A cell's own codebook must never be predicted before an earlier frame of it."""
    for name in PATTERNS:
        table = layout(name, 4, 6)
        for k in range(4):
            frames = table[:, k][table[:, k] >= 0]
            assert torch.equal(frames, torch.arange(6)), name


def test_bad_input():
    with pytest.raises(ValueError, match="unknown pattern"):
        layout("zigzag", 4, 3)
    with pytest.raises(ValueError, match="codebooks"):
        to_sequence(torch.zeros(1, 3, 5, dtype=torch.long), layout("delay", 4, 5), 0)
    with pytest.raises(ValueError, match=r"\(B, K, T\)"):
        to_sequence(torch.zeros(3, 5, dtype=torch.long), layout("delay", 3, 5), 0)
