"""Manifest reader, clip dataset and frame cache: the APIs the trainers consume."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tunesmith.data.cache import CacheError, FrameCache, collate_frames, write_frame_cache
from tunesmith.data.datasets import AudioClipDataset, collate_clips
from tunesmith.data.manifest import ManifestError, read_manifest, write_manifest


def _manifest(tmp_path, durations=(1.0, 0.25), sr=8000):
    records = []
    for i, dur in enumerate(durations):
        n = int(dur * sr)
        ramp = (np.arange(n, dtype=np.float32) / n * 0.5)[:, None]
        sf.write(tmp_path / f"c{i}.wav", ramp, sr, subtype="FLOAT")
        records.append({"id": f"c{i}", "audio": f"c{i}.wav", "caption": f"clip {i}", "tags": {"i": i},
                        "duration": dur, "sample_rate": sr, "channels": 1, "split": "train", "source": "t"})
    return write_manifest(tmp_path / "manifest.jsonl", records)


def test_manifest_roundtrip_and_errors(tmp_path):
    path = _manifest(tmp_path)
    assert [r["id"] for r in read_manifest(path)] == ["c0", "c1"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ManifestError, match="missing field"):
        read_manifest(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ManifestError, match=":1: not valid JSON"):
        read_manifest(bad)


def test_clip_dataset_crops_pads_and_resamples(tmp_path):
    path = _manifest(tmp_path)
    ds = AudioClipDataset(path, split="train", sample_rate=8000, channels=2, segment_seconds=0.5)
    assert len(ds) == 2
    item = ds[0]
    assert item["audio"].shape == (2, 4000) and item["audio"].dtype == torch.float32
    assert item["audio"][0, 0] == 0.0  # deterministic crop starts at the clip's start
    late = ds.get_item(0, np.random.default_rng(3))
    assert late["audio"][0, 0] > 0.0 and torch.allclose(late["audio"][0], late["audio"][1])
    # ramp: a later crop continues the ramp exactly
    start = int(round(late["audio"][0, 0].item() / 0.5 * 8000))
    assert abs(late["audio"][0, 100].item() - (start + 100) / 8000 * 0.5) < 1e-4
    short = ds[1]["audio"]
    assert short.shape == (2, 4000) and (short[:, 2000:] == 0).all() and short[0, 1999] > 0
    batch = collate_clips([ds[0], ds[1]])
    assert batch["audio"].shape == (2, 2, 4000) and batch["id"] == ["c0", "c1"]
    resampled = AudioClipDataset(path, sample_rate=16000, segment_seconds=0.5)[0]["audio"]
    assert resampled.shape == (1, 8000)
    with pytest.raises(ValueError, match="no clips in split 'valid'"):
        AudioClipDataset(path, split="valid")


def test_frame_cache_tokens_and_latents(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 1024, size=(t, 4)) for t in (10, 3)]
    meta = {"kind": "tokens", "model": "test", "frame_rate": 50.0, "sample_rate": 24000, "channels": 1,
            "num_codebooks": 4}
    write_frame_cache(tmp_path / "c", "train", [(c, {"id": f"x{i}", "caption": "a"}) for i, c in enumerate(clips)], meta)
    cache = FrameCache(tmp_path / "c", "train", segment_frames=5)
    assert len(cache) == 2
    item = cache.get_item(0, np.random.default_rng(1))
    window = item["frames"].T.numpy()
    assert item["frames"].dtype == torch.int64 and item["length"] == 5
    assert any(np.array_equal(window, clips[0][s : s + 5]) for s in range(6))
    short = cache[1]
    assert short["length"] == 3 and np.array_equal(short["frames"][:, :3].T.numpy(), clips[1])
    assert (short["frames"][:, 3:] == 0).all()
    batch = collate_frames([cache[0], cache[1]])
    assert batch["frames"].shape == (2, 4, 5) and batch["length"].tolist() == [5, 3]
    with pytest.raises(CacheError, match="kind"):
        write_frame_cache(tmp_path / "c", "valid", [(clips[0].astype(np.float32), {"id": "y", "caption": "b"})],
                          {**meta, "kind": "latents", "latent_dim": 4})
    lat = rng.standard_normal((7, 3)).astype(np.float32)
    write_frame_cache(tmp_path / "l", "valid", [(lat, {"id": "z", "caption": "c"})],
                      {"kind": "latents", "model": "v", "frame_rate": 21.5, "sample_rate": 44100, "latent_dim": 3})
    full = FrameCache(tmp_path / "l", "valid")[0]
    assert full["frames"].dtype == torch.float32 and np.allclose(full["frames"].T.numpy(), lat, atol=1e-2)
