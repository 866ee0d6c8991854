"""WebDataset shards: deterministic writing, streaming reads equal to the manifest dataset."""

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from tunesmith.data.datasets import collate_clips
from tunesmith.data.manifest import write_manifest
from tunesmith.data.shards import ShardClipDataset, iter_shard, open_clip_dataset, write_shards


def _corpus(tmp_path, n=7, sr=8000):
    records = []
    for i in range(n):
        wav = np.full((sr, 1), (i + 1) / 10, dtype=np.float32)
        sf.write(tmp_path / f"clip.{i}.flac", wav, sr)
        records.append({"id": f"clip.{i}", "audio": f"clip.{i}.flac", "caption": f"caption {i}", "tags": {"i": i},
                        "duration": 1.0, "sample_rate": sr, "channels": 1, "split": "train" if i < 5 else "valid",
                        "source": f"w{i}"})
    return write_manifest(tmp_path / "manifest.jsonl", records)


def test_write_is_deterministic_and_webdataset_compatible(tmp_path):
    manifest = _corpus(tmp_path)
    a = write_shards(manifest, tmp_path / "a", max_count=2)
    b = write_shards(manifest, tmp_path / "b", max_count=2)
    assert [p.name for p in a["train"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert len(a["valid"]) == 1
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a["train"], b["train"]))
    keys = [k for p in a["train"] for k, _ in iter_shard(p)]
    assert keys == [f"clip_{i}" for i in range(5)]
    import webdataset as wds

    samples = list(wds.WebDataset([str(p) for p in a["train"]], shardshuffle=False))
    assert [s["__key__"] for s in samples] == keys and set(samples[0]) >= {"flac", "json"}


def test_stream_matches_manifest_and_splits_across_workers(tmp_path):
    manifest = _corpus(tmp_path)
    write_shards(manifest, tmp_path / "s", max_count=2)
    ds = ShardClipDataset(tmp_path / "s", "train", sample_rate=8000, segment_seconds=0.5, seed=1, shuffle_buffer=3)
    items = list(ds)
    assert sorted(it["id"] for it in items) == [f"clip.{i}" for i in range(5)]
    for it in items:
        i = it["tags"]["i"]
        assert it["audio"].shape == (1, 4000) and torch.allclose(it["audio"], torch.full((1, 4000), (i + 1) / 10), atol=1e-3)
        assert it["caption"] == f"caption {i}"
    assert [it["id"] for it in ds] == [it["id"] for it in items]  # same epoch, same order
    ds.set_epoch(1)
    assert sorted(it["id"] for it in ds) == sorted(it["id"] for it in items)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clips)
    ids = [i for batch in loader for i in batch["id"]]
    assert sorted(ids) == [f"clip.{i}" for i in range(5)]
    manifest_ds = open_clip_dataset(manifest, "valid", sample_rate=8000, segment_seconds=0.5)
    shard_ds = open_clip_dataset(tmp_path / "s", "valid", sample_rate=8000, segment_seconds=0.5)
    assert len(manifest_ds) == 2 and sorted(it["id"] for it in shard_ds) == ["clip.5", "clip.6"]


def test_shards_and_stats_cli(tmp_path, capsys):
    from tunesmith.cli import main

    manifest = _corpus(tmp_path)
    assert main(["data", "shards", str(manifest), "--out", str(tmp_path / "cli"), "--max-count", "3"]) == 0
    assert "train: 2 shard(s)" in capsys.readouterr().out
    assert main(["data", "stats", str(manifest)]) == 0
    assert '"clips": 7' in capsys.readouterr().out
    assert main(["data", "shards", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]) == 2
