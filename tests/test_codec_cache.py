"""`tunesmith codec cache`: a manifest becomes a frame cache the LM / diffusion datasets read back."""

import json

import numpy as np
import torch

from tunesmith.audio import load_audio, save_audio
from tunesmith.checkpoint import save
from tunesmith.cli import main
from tunesmith.codec import RVQCodec, RVQCodecConfig, VAECodec, VAEConfig, load_codec
from tunesmith.codec.synthetic import render_clip
from tunesmith.data.cache import FrameCache, read_cache_meta


def write_manifest(root, seconds=(1.0, 2.5, 1.7)):
    (root / "audio").mkdir()
    lines = []
    for i, sec in enumerate(seconds):
        wav = render_clip(np.random.default_rng(i), int(sec * 24000), 24000)
        save_audio(root / "audio" / f"c{i}.wav", wav, 24000)
        lines.append({"id": f"c{i}", "audio": f"audio/c{i}.wav", "caption": f"clip {i}", "tags": {"n": i},
                      "duration": sec, "sample_rate": 24000, "channels": 1, "split": "test" if i == 2 else "train",
                      "source": f"w{i}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "manifest.jsonl"


def test_token_and_latent_caches(tmp_path):
    manifest = write_manifest(tmp_path)
    torch.manual_seed(0)
    save(RVQCodec(RVQCodecConfig(dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16, num_codebooks=3,
                                 codebook_size=64, codebook_dim=4)), tmp_path / "rvq")
    save(VAECodec(VAEConfig(dim=32, encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8)), tmp_path / "vae")

    assert main(["codec", "cache", "--manifest", str(manifest), "--out", str(tmp_path / "tok"), "--model",
                 str(tmp_path / "rvq"), "--splits", "train", "test", "--num-codebooks", "2"]) == 0
    meta = read_cache_meta(tmp_path / "tok")
    assert meta["kind"] == "tokens" and meta["num_codebooks"] == 2 and meta["frame_rate"] == 50.0
    train = FrameCache(tmp_path / "tok", "train")
    assert [r["id"] for r in train.records] == ["c0", "c1"]
    assert train.clip_frames(0).shape == (50, 2) and train.clip_frames(1).shape == (125, 2)
    codec = load_codec(tmp_path / "rvq")
    wav = load_audio(tmp_path / "audio" / "c1.wav").samples[None]
    expected = codec.encode(wav, 2)[0].T
    assert (train.clip_frames(1).long() == expected).float().mean() > 0.99  # the cache holds the codec's tokens
    assert len(FrameCache(tmp_path / "tok", "test")) == 1

    assert main(["codec", "cache", "--manifest", str(manifest), "--out", str(tmp_path / "lat"), "--model",
                 str(tmp_path / "vae"), "--splits", "train"]) == 0
    lat = FrameCache(tmp_path / "lat", "train")
    assert lat.meta["kind"] == "latents" and lat.meta["latent_dim"] == 8
    assert lat.clip_frames(1).shape == (63, 8) and lat.clip_frames(1).dtype == torch.float16
