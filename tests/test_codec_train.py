"""Training: a tiny codec's loss drops on a tiny dataset; the engine plug-ins, export and CLI work end to end."""

import json

import numpy as np
import pytest
import torch

from tunesmith.audio import load_audio, save_audio
from tunesmith.cli import main
from tunesmith.codec import load_codec
from tunesmith.codec.synthetic import SyntheticClips
from tunesmith.config import preset


@pytest.mark.parametrize("kind,phase", [("codec", "griffin-lim"), ("vae", "griffin-lim"), ("codec", "direct")])
def test_tiny_codec_loss_drops_on_a_fixed_batch(kind, phase):
    import dataclasses
    import importlib

    module = importlib.import_module("tunesmith.codec.train" if kind == "codec" else "tunesmith.codec.train_vae")
    torch.manual_seed(0)
    config = preset(f"run/{kind}", "tiny")
    task = module.make_task(dataclasses.replace(config, model=dataclasses.replace(config.model, phase=phase)))
    data = SyntheticClips(4, 0.5, 24000, seed=3)
    batch = task.collate([data[i] for i in range(4)])
    codec = task.modules()["codec"]
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    mels = []
    # 60 steps: the first ones spike (griffin-lim: 3.3 -> 5.2 at step 5 on this machine's AMD EPYC), and at 40
    # the drop was 0.86x here against 0.85x asked, while by 60 it is about 0.6x
    for _ in range(60):
        parts = list(task.training_step(task.modules(), batch, step=0))  # before the GAN starts
        assert [p[0] for p in parts] == ["codec"]
        _, loss, metrics = parts[-1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        mels.append(metrics["magnitude_mel" if phase == "griffin-lim" else "mel"])
    assert np.mean(mels[-5:]) < 0.85 * np.mean(mels[:3])


def test_gan_phase_updates_discriminator_first():
    task = __import__("tunesmith.codec.train", fromlist=["make_task"]).make_task(preset("run/codec", "tiny"))
    data = SyntheticClips(2, 0.5, 24000)
    batch = task.collate([data[0], data[1]])
    names = [name for name, loss, _ in task.training_step(task.modules(), batch, step=10)]
    assert names == ["discriminator", "codec"]


def test_train_export_encode_decode_eval_cli(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "codec", "--preset", "tiny", "--out", str(run), "--set", "train.steps=12"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("loss/discriminator" in r for r in log)  # the GAN switched on at step 10
    model_dir = tmp_path / "codec"
    assert main(["codec", "export", "--run", str(run), "--out", str(model_dir)]) == 0
    codec = load_codec(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["training"]["step"] == 12

    wav = SyntheticClips(1, 3.3, 24000, seed=5)[0]["audio"]
    save_audio(tmp_path / "in.wav", wav, 24000)
    assert main(["codec", "encode", str(tmp_path / "in.wav"), str(tmp_path / "x.npz"), "--model", str(model_dir),
                 "--num-codebooks", "2"]) == 0
    with np.load(tmp_path / "x.npz", allow_pickle=False) as npz:
        assert npz["tokens"].shape == (2, codec.num_frames(wav.shape[-1]))
        assert int(npz["num_samples"]) == wav.shape[-1]
    assert main(["codec", "decode", str(tmp_path / "x.npz"), str(tmp_path / "out.wav")]) == 0
    out = load_audio(tmp_path / "out.wav", allow_silent=True)
    assert out.sample_rate == 24000 and out.samples.shape == wav.shape

    folder = tmp_path / "folder"
    folder.mkdir()
    save_audio(folder / "a.wav", wav, 24000)
    assert main(["codec", "eval", "--model", str(model_dir), "--folder", str(folder), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result["metrics"]) == {"1q", "2q", "3q"}
    assert len(result["codebooks"]["perplexity"]) == 3

    # bad input: a missing file and a non-codec npz give one-line errors (exit 2)
    assert main(["codec", "encode", str(tmp_path / "nope.wav"), str(tmp_path / "y.npz"), "--model", str(model_dir)]) == 2
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    assert main(["codec", "decode", str(tmp_path / "bad.npz"), str(tmp_path / "y.wav"), "--model", str(model_dir)]) == 2


def test_vae_plugin_trains_and_exports(tmp_path):
    run = tmp_path / "vae"
    assert main(["train", "vae", "--preset", "tiny", "--out", str(run), "--set", "train.steps=4"]) == 0
    assert main(["codec", "export", "--run", str(run), "--out", str(tmp_path / "m")]) == 0
    vae = load_codec(tmp_path / "m")
    assert vae.latent_dim == 8 and vae.frame_rate == 25.0


def test_vae_eval_reports_latent_statistics(tmp_path):
    from tunesmith.checkpoint import save
    from tunesmith.codec import VAECodec, VAEConfig

    torch.manual_seed(0)
    save(VAECodec(VAEConfig(dim=32, encoder_depths=(1, 1, 1), decoder_depths=(1, 1, 1), latent_dim=8)), tmp_path / "m")
    folder = tmp_path / "f"
    folder.mkdir()
    save_audio(folder / "a.wav", SyntheticClips(1, 2.0, 24000)[0]["audio"], 24000)
    assert main(["codec", "eval", "--model", str(tmp_path / "m"), "--folder", str(folder), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["kind"] == "latents" and len(result["latents"]["channel_std"]) == 8
    assert result["latents"]["std"] > 0 and -1 <= result["metrics"]["chroma_similarity"] <= 1


def test_phase_loss_option_reaches_the_training_step():
    import dataclasses

    import tunesmith.codec.train as codec_train

    config = preset("run/codec", "tiny")
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, phase=1.0))
    with pytest.raises(ValueError, match="predicts the phase"):
        codec_train.make_task(config)  # a Griffin-Lim decoder has no phase to supervise
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, phase="integrated"))
    task = codec_train.make_task(config)
    data = SyntheticClips(2, 0.5, 24000)
    (_, loss, metrics), = list(task.training_step(task.modules(), task.collate([data[0], data[1]]), step=0))
    assert metrics["phase_frequency"] > 0 and torch.isfinite(loss)
    loss.backward()
