"""`tunesmith finetune` end to end on tiny generators and a generated folder: train, load, generate, merge.

The folder holds a few seconds of tones (captioned by sidecars, one file left for the
automatic captioner) and one broken file, which must be skipped with its reason.
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import tunesmith
from tunesmith.adapters import lora
from tunesmith.adapters.data import held_out_files
from tunesmith.adapters.directory import read_adapter
from tunesmith.adapters.finetune import FinetuneConfig, run_finetune
from tunesmith.adapters.prior import MixedWindows, median_loudness, prepare_prior, prior_count, prior_prompts
from tunesmith.checkpoint import load_tensors
from tunesmith.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 24000


def write_songs(folder, count=4, captioned=3, broken=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    for i in range(count):
        wav = 0.3 * np.sin(2 * np.pi * (220 + 55 * i) * t) * (1 + 0.5 * np.sin(4 * np.pi * t))
        sf.write(folder / f"song{i}.wav", (wav + 0.02 * rng.standard_normal(t.size)).astype(np.float32), SR)
        if i < captioned:
            (folder / f"song{i}.txt").write_text(f"a slow drone for cello, take {i}")
    if broken:
        (folder / "broken.wav").write_bytes(b"this is not audio")
    return folder


def config(folder, model, out, **changes):
    settings = dict(folder=str(folder), model=str(model), out=str(out), lora=lora.LoraSettings(rank=4), steps=8,
                    batch_size=2, warmup_steps=2, window_seconds=1.0, valid_every=4, progress=False)
    return FinetuneConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from tunesmith.serve.testing import tiny_generator

    root = tmp_path_factory.mktemp("finetune")
    return {"root": root, "dit": tiny_generator(root / "tiny-dit"), "songs": write_songs(root / "songs"),
            "captioned": write_songs(root / "captioned", count=3, broken=False)}


@pytest.fixture(scope="module")
def trained(work):
    notes = []
    result = run_finetune(config(work["songs"], work["dit"], work["root"] / "my-style", prior_share=0.3), log=notes.append)
    return {**work, "adapter": result.adapter, "result": result, "notes": notes}


def test_finetune_writes_a_small_adapter_that_names_its_base(trained):
    adapter, result = trained["adapter"], trained["result"]
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "config.json"]
    assert sum(p.stat().st_size for p in adapter.iterdir()) < 100_000  # the tiny DiT's: rank 4 on 14 layers
    meta = json.loads((adapter / "config.json").read_text())
    assert meta["generator_type"] == "lora-adapter" and meta["base"] == str(trained["dit"].resolve())
    assert meta["rank"] == 4 and len(meta["modules"]) == 14 and meta["base_fingerprint"].startswith("sha256:")
    assert result.steps == 8 and not result.interrupted and result.valid_loss_base is not None
    assert any(n.startswith("skipped broken.wav: unreadable") for n in trained["notes"])
    records = [json.loads(line) for line in (adapter.parent / "my-style.run" / "manifest.jsonl").read_text().splitlines()]
    auto = [r for r in records if r.get("caption_source") == "auto"]
    assert [r["source"] for r in auto] == ["song3.wav"]  # the one file without a caption
    from tunesmith.audio import load_audio
    from tunesmith.adapters.autocaption import caption_of
    from tunesmith.data.captioner import TimeCaptioner

    clip = load_audio(adapter.parent / "my-style.run" / "index" / auto[0]["audio"])
    caption, tags = TimeCaptioner()(clip.samples, clip.sample_rate)  # the time-aware captioner's: its summary
    assert auto[0]["caption"] == (caption_of(tags) if tags["segments"] else caption)
    assert auto[0]["tags"]["timed_prompt"] == tags["timed_prompt"]
    assert auto[0]["tags"]["captioner"] == "tunesmith time-aware captioner" and auto[0]["tags"]["families"]
    meta_training = meta["training"]
    assert meta_training["prior_clips"] == prior_count(meta_training["data"]["train_clips"], 0.3) > 0
    assert {r["split"] for r in records} == {"train", "valid"}
    held_out = {r["source"] for r in records if r["split"] == "valid"}
    assert held_out and not held_out & {r["source"] for r in records if r["split"] == "train"}  # split by file
    pairs = read_adapter(adapter).pairs
    assert any(b.abs().sum() > 0 for _, b in pairs.values())  # trained: B moved off zero


def test_adapter_loads_generates_and_merges_to_the_same_output(trained, tmp_path):
    prompt = dict(prompts="a slow drone for cello", duration=1.0, seed=3, steps=3)
    gen = tunesmith.load(str(trained["adapter"]))
    assert type(gen).__name__ == "LatentDiffusionGenerator" and gen.adapter["scale"] == 1.0
    adapted = gen.generate(**prompt).samples
    base = tunesmith.load(str(trained["dit"])).generate(**prompt).samples
    assert (adapted - base).abs().max() > 1e-4  # the adapter changes the output
    assert torch.equal(tunesmith.load(str(trained["adapter"]), adapter_scale=0.0).generate(**prompt).samples, base)
    assert main(["finetune", "merge", str(trained["adapter"]), "--out", str(tmp_path / "merged")]) == 0
    merged = tunesmith.load(str(tmp_path / "merged"))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["generator_type"] == "latent-diffusion"
    assert torch.equal(merged.generate(**prompt).samples, adapted)  # same seed, same audio
    half = tunesmith.load(str(trained["adapter"]), adapter_scale=0.5).generate(**prompt).samples
    assert 0 < (half - base).abs().max() and not torch.equal(half, adapted)


def test_generate_cli_takes_the_adapter_and_its_scale(trained, tmp_path):
    out = tmp_path / "x.wav"
    argv = ["generate", "a slow drone for cello", "--model", str(trained["adapter"]), "--adapter-scale", "0.5",
            "--duration", "1", "--steps", "2", "--seed", "4", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    sidecar = json.loads((tmp_path / "x.wav.json").read_text())
    assert sidecar["adapter"]["scale"] == 0.5 and sidecar["adapter"]["base"] == str(trained["dit"].resolve())
    want = tunesmith.load(str(trained["adapter"]), adapter_scale=0.5).generate("a slow drone for cello", 1.0, 4, steps=2)
    got, _ = sf.read(out, dtype="float32")
    assert np.abs(got - want.samples[0, 0].numpy()).max() < 1e-4  # 16-bit wav


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    def error(argv):
        assert main([*argv, "--no-progress"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    dit, out = str(trained["dit"]), str(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    assert "no audio files" in error(["finetune", str(tmp_path / "empty"), "--model", dit, "--out", out])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.wav").write_bytes(b"nope")
    (tmp_path / "junk" / "quiet.wav").write_bytes(b"")
    assert "no usable audio" in error(["finetune", str(tmp_path / "junk"), "--model", dit, "--out", out])
    assert "unknown model 'no-such-model'" in error(["finetune", str(trained["songs"]), "--model", "no-such-model", "--out", out])
    assert "--rank must be at least 1" in error(["finetune", str(trained["songs"]), "--model", dit, "--out", out, "--rank", "0"])
    assert "no such folder" in error(["finetune", str(tmp_path / "nothing"), "--model", dit, "--out", out])

    moved = shutil.copytree(trained["adapter"], tmp_path / "orphan")
    meta = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**meta, "base": str(tmp_path / "gone")}))
    assert "its base model" in error(["generate", "x", "--model", str(moved), "-o", str(tmp_path / "o.wav")])
    from tunesmith.serve.testing import tiny_generator

    other = tiny_generator(tmp_path / "other-dit", seed=1)  # same shapes, other weights
    (moved / "config.json").write_text(json.dumps({**meta, "base": str(other)}))
    assert "trained on other weights" in error(["generate", "x", "--model", str(moved), "-o", str(tmp_path / "o.wav")])
    assert "adapter scale applies to a LoRA adapter" in error(
        ["generate", "x", "--model", dit, "--adapter-scale", "0.5", "-o", str(tmp_path / "o.wav")])


def test_early_stopping_keeps_the_best_adapter(work, tmp_path, monkeypatch):
    """Held-out losses that stop improving after step 2 end the run `patience` validations
    later (step 6 of 20), and the adapter written is the one of step 2, not the last."""
    import tunesmith.adapters.finetune as finetune

    losses = iter([1.0, 0.9, 0.95, 0.97, 0.99])  # the base's, then steps 2, 4, 6, ...
    monkeypatch.setattr(finetune, "_diffusion_valid_loss", lambda *args: next(losses))
    result = run_finetune(config(work["captioned"], work["dit"], tmp_path / "stop", valid_every=2, patience=2, steps=20),
                          log=lambda _: None)
    assert result.stopped_early and result.steps == 6 and result.best_step == 2 and not result.interrupted
    kept = read_adapter(result.adapter).pairs
    best = load_tensors(tmp_path / "stop.run" / "best_adapter.safetensors")
    assert all(torch.equal(best[f"{lora.PEFT_PREFIX}{name}.lora_B.weight"], b) for name, (_, b) in kept.items())
    last = load_tensors(next((tmp_path / "stop.run" / "checkpoints").glob("step_*")) / "weights.safetensors")
    last_b = {k: v for k, v in last.items() if k.startswith("model/dit/") and ".lora_B." in k}
    assert last_b and not all(torch.equal(v, kept[k.split("model/dit/")[1].split(".lora_B.")[0]][1]) for k, v in last_b.items())


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(work, tmp_path):
    whole = run_finetune(config(work["captioned"], work["dit"], tmp_path / "whole", steps=6, valid_every=3),
                         log=lambda _: None)
    part = config(work["captioned"], work["dit"], tmp_path / "part", steps=3, valid_every=3)
    run_finetune(part, log=lambda _: None)
    resumed = run_finetune(config(work["captioned"], work["dit"], tmp_path / "part", steps=6, valid_every=3),
                           resume=True, log=lambda _: None)
    assert resumed.steps == 6
    a = load_tensors(whole.adapter / "adapter_model.safetensors")
    b = load_tensors(resumed.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_token_lm_fine_tunes_and_merges_alike(work, tmp_path):
    from tunesmith.codec.model import RVQCodec, RVQCodecConfig
    from tunesmith.lm.generator import TokenLMGenerator
    from tunesmith.lm.model import LMConfig, TokenLM

    torch.manual_seed(0)
    codec = RVQCodec(RVQCodecConfig(dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16,
                                    num_codebooks=2, codebook_size=32)).eval()
    lm = TokenLM(LMConfig(num_codebooks=2, codebook_size=32, dim=32, backbone_config={"num_layers": 2, "num_heads": 4},
                          frame_rate=codec.frame_rate, max_frames=200))
    base = TokenLMGenerator(lm, codec).save(tmp_path / "tiny-lm")
    result = run_finetune(config(work["captioned"], base, tmp_path / "lm-style", steps=4, valid_every=2, prior_share=0.3),
                          log=lambda _: None)
    assert json.loads((result.adapter / "config.json").read_text())["training"]["prior_clips"] == 1  # tokens too
    assert result.valid_loss_best <= result.valid_loss_base
    prompt = dict(prompts="a slow drone for cello", duration=0.5, seed=2)
    adapted = tunesmith.load(str(result.adapter)).generate(**prompt).samples
    assert main(["finetune", "merge", str(result.adapter), "--out", str(tmp_path / "lm-merged")]) == 0
    assert torch.equal(tunesmith.load(str(tmp_path / "lm-merged")).generate(**prompt).samples, adapted)
    plain = tunesmith.load(str(base)).generate(**prompt).samples
    assert torch.equal(tunesmith.load(str(result.adapter), adapter_scale=0).generate(**prompt).samples, plain)


def test_held_out_files_are_a_seeded_choice_of_whole_files():
    durations = {f"f{i}.wav": 60.0 for i in range(20)}
    chosen = held_out_files(durations, 0.1, seed=0)
    assert len(chosen) == 2 and chosen == held_out_files(dict(reversed(list(durations.items()))), 0.1, seed=0)
    assert chosen != held_out_files(durations, 0.1, seed=1)
    assert held_out_files({"one.wav": 60.0}, 0.1, 0) == [] and len(held_out_files({"a": 1.0, "b": 1.0, "c": 1.0}, 0.1, 0)) == 1
    stinger = {"long.wav": 600.0, "short.wav": 5.0, "other.wav": 600.0}  # 5 s alone is not 10% of the audio
    picks = [held_out_files(stinger, 0.1, seed) for seed in range(20)]
    assert all(sum(stinger[f] for f in c) >= 0.1 * sum(stinger.values()) and len(c) <= 2 for c in picks)
    assert ["long.wav", "short.wav"] in picks or ["other.wav", "short.wav"] in picks


def test_prior_prompts_say_their_tags_in_words_the_prompt_parser_reads():
    from tunesmith.conditioning.prompt import parse_prompt
    from tunesmith.music import parse_key_name

    pairs = prior_prompts(40, seed=3)
    assert pairs == prior_prompts(40, seed=3) and pairs != prior_prompts(40, seed=4)
    assert len({t["style"] for _, t in pairs}) >= 8  # the whole vocabulary, not one corner of it
    read_tempo = read_key = 0
    for text, tags in pairs:
        facts = parse_prompt(text)
        if facts.tempo_bpm is not None:
            assert facts.tempo_bpm == tags["tempo_bpm"], text
            read_tempo += 1
        if facts.tonic is not None:
            key = parse_key_name(tags["key"], tags["mode"])
            assert (facts.tonic, facts.mode) == (key.tonic, key.mode), text
            read_key += 1
    assert read_tempo >= 30 and read_key >= 30
    assert prior_count(50, 0.3) == 21 and prior_count(50, 0.0) == 0 and prior_count(1000, 0.5) == 64


def test_prior_clips_are_the_bases_own_generations_cached_once(trained, tmp_path, monkeypatch):
    import tunesmith.generator as generator_module
    from tunesmith.data.cache import FrameCache

    cache = tmp_path / "cache"
    shutil.copytree(trained["adapter"].parent / "my-style.run" / "cache", cache)
    base = tunesmith.load(str(trained["dit"]))
    notes = []
    assert prepare_prior(trained["dit"], tmp_path, cache, base.codec, "latents", 3, 1.0, seed=5, lufs=-30.0,
                         progress=False, log=notes.append) == 3
    prior = FrameCache(cache, "prior")
    prompts = prior_prompts(3, 5)
    assert [r["caption"] for r in prior.records] == [p for p, _ in prompts]
    assert all(r["tags"]["prior"] and r["tags"]["tempo_bpm"] == t["tempo_bpm"] for r, (_, t) in zip(prior.records, prompts))
    alone = base.generate([prompts[1][0]], 1.0, seed=5 * 100_003 + 1, loudness=-30.0).samples  # at the folder's loudness
    expected = base.codec.encode_long(alone)[0].T
    assert torch.allclose(prior.clip_frames(1).float(), expected, atol=2e-2, rtol=1e-2)  # the cache keeps float16
    for other_audio in (base.generate([prompts[1][0]], 1.0, seed=6, loudness=-30.0).samples,
                        base.generate([prompts[1][0]], 1.0, seed=5 * 100_003 + 1, loudness=None).samples):
        other = base.codec.encode_long(other_audio)[0].T
        assert not torch.allclose(prior.clip_frames(1).float(), other, atol=2e-2, rtol=1e-2)

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated an unchanged prior")

    monkeypatch.setattr(generator_module, "load_generator", no_generation)
    assert prepare_prior(trained["dit"], tmp_path, cache, base.codec, "latents", 3, 1.0, seed=5, lufs=-30.0,
                         progress=False, log=notes.append) == 3 and "reusing" in notes[-1]
    with pytest.raises(AssertionError, match="regenerated"):  # another count is another prior
        prepare_prior(trained["dit"], tmp_path, cache, base.codec, "latents", 4, 1.0, seed=5, lufs=-30.0, progress=False,
                      log=notes.append)
    assert prepare_prior(trained["dit"], tmp_path, cache, base.codec, "latents", 0, 1.0, seed=5, log=notes.append) == 0
    assert not (cache / "prior.safetensors").exists()


def test_mixed_windows_put_the_prior_after_the_users_clips():
    class Windows:
        def __init__(self, name, n):
            self.name, self.n = name, n

        def __len__(self):
            return self.n

        def get_item(self, index, rng):
            return (self.name, index)

        def __getitem__(self, index):
            return (self.name, index)

    mixed = MixedWindows(Windows("user", 3), Windows("empty", 0), Windows("prior", 2))
    rng = np.random.default_rng(0)
    assert len(mixed) == 5 and [mixed.get_item(i, rng) for i in range(5)] == [
        ("user", 0), ("user", 1), ("user", 2), ("prior", 0), ("prior", 1)]
    with pytest.raises(IndexError):
        mixed[5]


def test_the_prior_is_brought_to_the_median_loudness_of_the_users_clips(tmp_path):
    from tunesmith.loudness import integrated_loudness

    t = np.arange(2 * SR) / SR
    tone = np.sin(2 * np.pi * 330 * t).astype(np.float32)
    paths = []
    for i, gain in enumerate((0.05, 0.1, 0.4)):
        sf.write(tmp_path / f"{i}.wav", gain * tone, SR, subtype="FLOAT")
        paths.append(tmp_path / f"{i}.wav")
    middle = integrated_loudness((0.1 * tone)[None], SR)
    assert abs(median_loudness(paths) - middle) < 1e-3 and abs(middle - (20 * np.log10(0.1) - 3.01 - 0.691 + 0.5)) < 1.0
