"""Training through the shared engine: a tiny LM overfits a tiny token set and reproduces it."""

import numpy as np
import pytest
import torch

from tunesmith.checkpoint import init_from, load_model, save
from tunesmith.conditioning.beat import beat_clock
from tunesmith.config import apply_overrides, preset
from tunesmith.data.cache import write_frame_cache
from tunesmith.lm.decode import generate_tokens
from tunesmith.data.cache import FrameCache
from tunesmith.lm.data import TokenWindows, collate_windows
from tunesmith.conditioning.key import KEY_DIM, key_vector
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.lm.model import LMConfig, TokenLM
from tunesmith.lm.train import export, make_task, valid_cells
from tunesmith.lm.patterns import layout
from tunesmith.train.engine import Trainer

K, N, T = 2, 8, 12
CAPTIONS = ["a slow waltz", "a fast reel", "a sad hymn", "a bright march"]



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def token_set(tmp_path_factory):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, N, size=(T, K)) for _ in CAPTIONS]
    out = tmp_path_factory.mktemp("cache")
    meta = {"kind": "tokens", "model": "test", "frame_rate": 50.0, "sample_rate": 32000, "num_codebooks": K}
    items = [(c, {"id": f"clip{i}", "caption": cap}) for i, (c, cap) in enumerate(zip(clips, CAPTIONS))]
    write_frame_cache(out, "train", items, meta)
    write_frame_cache(out, "valid", items[:2], meta)
    return out, [torch.from_numpy(c.T.copy()) for c in clips]


def test_valid_cells_respect_pattern_and_length():
    table = layout("delay", 2, 4)  # 5 steps
    valid = valid_cells(table, torch.tensor([4, 2]))
    assert valid.shape == (2, 2, 5)
    assert valid[0].sum() == 8 and valid[1].sum() == 4
    assert valid[1, 1].tolist() == [False, True, True, False, False]  # codebook 1 of frames 0, 1


@pytest.mark.slow
def test_tiny_lm_overfits_and_greedy_decoding_reproduces(token_set, tmp_path):
    cache_dir, clips = token_set
    config = apply_overrides(preset("run/lm", "tiny"), [
        f"data={cache_dir}", f"segment_frames={T}", f"train.out_dir={tmp_path / 'run'}",
        f"model.num_codebooks={K}", f"model.codebook_size={N}", "model.dim=48", "model.max_frames=16",
        "dropout.text=0.0", "train.steps=120", "train.batch_size=4", "train.lr=0.003",
        "train.warmup_steps=10", "train.valid_every=60", "train.checkpoint_every=0", "train.checkpoint_minutes=0",
    ])
    task = make_task(config)
    trainer = Trainer(task, config.train)
    result = trainer.fit()
    assert result.step == 120
    assert result.last_metrics["loss/lm"] < 0.05, result.last_metrics
    assert (tmp_path / "run" / "text_states_train_minilm.safetensors").is_file()  # captions encoded once

    model = load_model(export(trainer, config, tmp_path / "model"))
    batch = task.collate([task.train_dataset[i] for i in range(len(CAPTIONS))])
    cond = Conditioning(batch["text"], batch["text_mask"])
    out = generate_tokens(model, T, cond, temperature=0.0, cfg_scale=1.0)
    assert torch.equal(out, torch.stack(clips))


def test_cli_resolves_the_presets():
    from tunesmith.cli.train import resolve_config

    _, config = resolve_config("lm", "small", None, ["train.steps=5"], "runs/x")
    assert config.train.steps == 5 and config.train.out_dir == "runs/x" and config.model.dim == 256
    _, big = resolve_config("lm", "musicgen-small", None, [], None)
    assert big.model.dim == 1024 and big.model.backbone_config["num_layers"] == 24


def test_bad_config(token_set):
    cache_dir, _ = token_set
    with pytest.raises(Exception, match="segment_frames"):
        apply_overrides(preset("run/lm", "tiny"), ["segment_frames=100000"])
    config = apply_overrides(preset("run/lm", "tiny"), [f"data={cache_dir}", "model.frame_rate=75.0"])
    with pytest.raises(ValueError, match="frame rate"):
        make_task(config)


def test_windows_carry_the_clips_beat_grid_from_where_they_start(tmp_path):
    meta = {"kind": "tokens", "model": "test", "frame_rate": 50.0, "sample_rate": 32000, "num_codebooks": K}
    items = [(np.zeros((60, K), dtype=np.int64), {"id": "a", "caption": "x", "tags": {"tempo_bpm": 90}}),
             (np.zeros((60, K), dtype=np.int64), {"id": "b", "caption": "y", "tags": {}})]
    write_frame_cache(tmp_path, "train", items, meta)
    states = {"x": torch.zeros(2, 4), "y": torch.zeros(2, 4)}
    windows = TokenWindows(FrameCache(tmp_path, "train"), K, 20, states, beat_clock=True)
    item = windows.get_item(0, np.random.default_rng(0))
    start = int(np.random.default_rng(0).random() * 40)
    assert start > 0  # the window is cut from inside the clip, so the grid is shifted
    torch.testing.assert_close(item["beat"], beat_clock(90.0, 20, 50.0, start_frame=start))
    assert windows[1]["beat"].abs().sum() == 0  # no tempo: no clock
    assert "beat" not in TokenWindows(FrameCache(tmp_path, "train"), K, 20, states)[0]


def test_init_from_a_model_without_the_clock(tmp_path):
    def lm(**kw):
        return TokenLM(LMConfig(num_codebooks=K, codebook_size=N, dim=32, text_dim=8,
                                backbone_config={"num_layers": 1, "num_heads": 2}, max_frames=16, **kw))

    trained = lm()
    save(trained, tmp_path / "trained")
    model = lm(beat_clock=True)
    assert init_from(model, str(tmp_path / "trained")) == ["beat_proj.weight"]
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    assert model.beat_proj.weight.abs().sum() == 0
    save(lm(beat_clock=True), tmp_path / "clocked")
    with pytest.raises(ValueError, match="beat_proj"):  # the other way round drops a part: refused
        init_from(lm(), str(tmp_path / "clocked"))


class WordLengthEncoder:
    """A stand-in text encoder for data tests: one state per word, holding the word's length."""

    dim = 4

    def encode(self, texts):
        states = [torch.tensor([[float(len(w))] * self.dim for w in t.split()]) for t in texts]
        from tunesmith.conditioning.text import pad_states

        return pad_states(states)

    def embed(self, texts):
        return torch.nn.functional.normalize(self.encode(texts)[0].sum(1), dim=-1)


def test_windows_draw_fresh_captions_for_training_only(tmp_path):
    meta = {"kind": "tokens", "model": "test", "frame_rate": 50.0, "sample_rate": 32000, "num_codebooks": K}
    tags = {"instruments": ["harp"], "families": ["plucked"], "tempo_bpm": 76, "key": "E-flat", "mode": "major",
            "style": "ambient", "dynamics_range": ["p", "p"], "meter": "4/4", "ensemble": "harp",
            "ensemble_complete": False, "segments": []}
    write_frame_cache(tmp_path, "train", [(np.zeros((60, K), dtype=np.int64), {"id": "a", "caption": "x", "tags": tags})], meta)
    states = {"x": torch.zeros(1, 4)}
    with pytest.raises(ValueError, match="encoder"):
        TokenWindows(FrameCache(tmp_path, "train"), K, 20, states, caption_resample=0.5)
    windows = TokenWindows(FrameCache(tmp_path, "train"), K, 20, states, encoder=WordLengthEncoder(), caption_resample=1.0)
    texts = [windows.get_item(0, np.random.default_rng(seed))["text"] for seed in range(8)]
    assert all(t.shape[0] > 1 and t.abs().sum() > 0 for t in texts)  # fresh captions, encoded on the fly
    assert len({tuple(t[:, 0].tolist()) for t in texts}) > 4
    torch.testing.assert_close(windows.get_item(0, np.random.default_rng(3))["text"], texts[3])  # seeded
    assert windows[0]["text"].abs().sum() == 0  # validation keeps the corpus caption
    keyed = TokenWindows(FrameCache(tmp_path, "train"), K, 20, states, key_input=True)
    torch.testing.assert_close(keyed[0]["key"], key_vector(3, "major"))  # E-flat major, from the tags
    assert collate_windows([keyed[0], keyed[0]])["key"].shape == (2, KEY_DIM)
