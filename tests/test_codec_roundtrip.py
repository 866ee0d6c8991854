"""A corpus through a codec and back, and training that mixes the round trips in."""

import numpy as np
import pytest
import soundfile as sf
import torch

from tunesmith.codec import RVQCodec, RVQCodecConfig
from tunesmith.codec.roundtrip import round_trip, round_trip_manifest
from tunesmith.data.datasets import AlternateAudioDataset, AudioClipDataset
from tunesmith.data.manifest import read_manifest, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def _codec() -> RVQCodec:
    torch.manual_seed(0)
    return RVQCodec(RVQCodecConfig(sample_rate=8000, dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16,
                                   num_codebooks=3, codebook_size=32, codebook_dim=4)).eval()


def _corpus(tmp_path, n=3, seconds=0.5, sr=8000):
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        sf.write(tmp_path / f"c{i}.wav", (0.3 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
        records.append({"id": f"c{i}", "audio": f"c{i}.wav", "caption": f"clip {i}", "tags": {}, "duration": seconds,
                        "sample_rate": sr, "channels": 1, "split": "train", "source": "t"})
    return write_manifest(tmp_path / "manifest.jsonl", records)


def test_round_trip_is_the_codecs_decoding_of_its_encoding():
    codec = _codec()
    wav = 0.3 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(1))
    out = round_trip(codec, wav, 8000, num_codebooks=2)
    with torch.inference_mode():
        expected = codec.decode(codec.encode(wav[None], 2))[0, :, :4000].clamp(-1, 1)
    assert out.shape == wav.shape
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


def test_round_trip_manifest_copies_every_record_and_resumes(tmp_path):
    source = _corpus(tmp_path)
    out = tmp_path / "codec"
    path = round_trip_manifest(_codec(), source, out, 2, progress=False)
    copies = read_manifest(path)
    assert [r["id"] for r in copies] == ["c0", "c1", "c2"] and copies[0]["caption"] == "clip 0"
    first = out / copies[0]["audio"]
    stamp = first.stat().st_mtime_ns
    round_trip_manifest(_codec(), source, out, 2, progress=False)
    assert first.stat().st_mtime_ns == stamp  # done clips are kept, not redone
    original = AudioClipDataset(source, "train", 8000, 1, 0.5)[0]["audio"]
    copied = AudioClipDataset(path, "train", 8000, 1, 0.5)[0]["audio"]
    assert copied.shape == original.shape and not torch.allclose(copied, original)


def test_alternate_dataset_mixes_at_the_asked_rate_and_validates_on_the_originals(tmp_path):
    source = _corpus(tmp_path)
    silent_dir = tmp_path / "silent"
    silent_dir.mkdir()
    for r in read_manifest(source):  # the "other versions": the same ids, silent audio
        sf.write(silent_dir / r["audio"], np.zeros(4000, dtype=np.float32), 8000)
    silent = write_manifest(silent_dir / "manifest.jsonl", read_manifest(source))
    primary = AudioClipDataset(source, "train", 8000, 1, 0.25)
    mixed = AlternateAudioDataset(primary, AudioClipDataset(silent, "train", 8000, 1, 0.25), p=0.3)
    rng = np.random.default_rng(0)
    alternates = sum(bool((mixed.get_item(i % 3, rng)["audio"] == 0).all()) for i in range(600))
    assert 0.24 < alternates / 600 < 0.36
    assert torch.equal(mixed[1]["audio"], primary[1]["audio"])  # validation reads the originals
    renamed = write_manifest(silent_dir / "renamed.jsonl", [{**r, "id": "x" + r["id"]} for r in read_manifest(silent)])
    with pytest.raises(ValueError, match="lacks 3 clips"):
        AlternateAudioDataset(primary, AudioClipDataset(renamed, "train", 8000, 1, 0.25))
