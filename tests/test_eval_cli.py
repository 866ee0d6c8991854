"""`tunesmith eval` end to end: benchmark set -> generator -> metrics.json + HTML report.

The generator under test is a small real one written here: it reads the tempo, key and
instrument from the prompt and plays a tune accordingly (tunesmith.eval.probes), so the
signal metrics have known right answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.audio import Audio
from tunesmith.checkpoint import save
from tunesmith.cli import main
from tunesmith.clap.model import ClapConfig, ClapModel
from tunesmith.eval import probes as P
from tunesmith.music import Key, parse_key_name as parse_key
from tunesmith.eval.prompts import attributes_from_text, read_prompts, PromptFileError
from tunesmith.eval.report import find_chromium, render_dom
from tunesmith.generator import check_request, register_generator

SR = 24000


class PromptFollowingSynth:
    """Plays a tune at the prompt's tempo, in its key, on a timbre for its instrument family."""

    sample_rate = SR
    max_duration = 30.0

    def __init__(self) -> None:
        from tunesmith.clap.zeroshot import instrument_hierarchy

        self.hierarchy = instrument_hierarchy()

    def generate(self, prompts, duration, seed=0, *, progress=False, **controls):
        items = check_request(prompts, duration, self.max_duration)
        out = []
        unconditional = controls.pop("unconditional", False)
        if controls:
            raise ValueError(f"unknown controls: {sorted(controls)}")
        for i, prompt in enumerate(items):
            facts = {} if unconditional else attributes_from_text(prompt, self.hierarchy)
            key = parse_key(facts["key"], facts.get("mode")) if "key" in facts else Key(0, facts.get("mode", "major"))
            bpm = facts.get("tempo_bpm", 100.0)
            partials, shift = (2, -1) if "bass" in facts.get("families", []) else (8, 1)
            bars = int(np.ceil(duration * bpm / 240))
            notes = [(s, d, p + 12 * shift, v) for s, d, p, v in P.tune_notes(key, bpm, bars, seed=seed + i)]
            out.append(torch.from_numpy(P.synthesize(notes, SR, duration, partials=partials, seed=seed + i))[None])
        return Audio(torch.stack(out), SR)


@register_generator("prompt-following-synth-test")
def _load(directory: Path, device: str) -> PromptFollowingSynth:
    return PromptFollowingSynth()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    manifest = P.write_probe_corpus(root / "corpus", {"train": 6, "valid": 2, "test": 8}, seconds=6.0, seed=3)
    generator_dir = root / "synth"
    generator_dir.mkdir()
    (generator_dir / "config.json").write_text(json.dumps({"generator_type": "prompt-following-synth-test"}))
    torch.manual_seed(0)
    clap_dir = save(ClapModel(ClapConfig(n_mels=32, window_seconds=2.0, channels=(16, 16), embed_dim=32, heads=2,
                                         text_hidden=64)), root / "clap")
    return root, manifest, generator_dir, clap_dir


@pytest.mark.slow
def test_benchmark_eval_and_report(setup, capsys):
    root, manifest, generator_dir, clap_dir = setup
    bench = root / "bench"
    assert main(["eval", "--build-benchmark", str(manifest), "--out", str(bench), "--count", "6", "--duration", "6",
                 "--no-progress"]) == 0
    prompts = [json.loads(line) for line in (bench / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 6
    assert {tuple(p["families"]) for p in prompts} == {("bass",), ("mallets",)}  # balanced over families
    assert all((bench / p["reference"]).is_file() for p in prompts)

    out = root / "report"
    code = main(["eval", "--model", str(generator_dir), "--prompts", str(bench / "prompts.jsonl"),
                 "--reference", str(bench / "reference"), "--out", str(out), "--clap", str(clap_dir),
                 "--train-manifest", str(manifest), "--memorization-clips", "4", "--no-progress"])
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    summary = results["summary"]
    # The synth plays exactly what was asked: the signal metrics must see it.
    # (Beat trackers may pick the eighth-note level: Acc2 forgives that, "within 10%" does not.)
    assert summary["tempo_acc2_4pct_octave"]["rate"] == 1.0 and summary["tempo_acc2_4pct_octave"]["count"] == 6
    assert summary["tempo_within_10pct"]["rate"] >= 5 / 6
    assert summary["mode_accuracy"]["rate"] >= 5 / 6
    assert summary["key_accuracy"]["rate"] >= 5 / 6
    assert summary["speed"]["median_rtf"] > 0
    fad = results["fad_mel_stats"]
    assert fad["fad"] > 0 and fad["ci_low"] < fad["ci_high"]
    assert "fad_clap" in results and "kl_family_tags" in results
    assert all(-1.0 <= r["clap_score"] <= 1.0 for r in results["items"])
    assert results["memorization"]["train_clips_compared"] == 4
    ceiling = results["reference_ceiling"]
    assert ceiling["clips"] == 6 and ceiling["tempo_acc2_4pct_octave"]["count"] == 6
    assert all(len(list((out / "img").glob("*.png"))) == 6 for _ in [0])
    assert (out / "tempo.png").is_file()
    page = (out / "index.html").read_text()
    assert "id='metrics'" in page and "<audio" in page
    # The references themselves, scored as if generated: the ceiling of the signal metrics.
    ceiling_dir = root / "ceiling"
    assert main(["eval", "--score-references", "--prompts", str(bench / "prompts.jsonl"), "--reference",
                 str(bench / "reference"), "--out", str(ceiling_dir), "--no-progress"]) == 0
    ceiling = json.loads((ceiling_dir / "metrics.json").read_text())
    assert ceiling["model"] == "references" and ceiling["summary"]["speed"]["median_rtf"] is None
    assert ceiling["summary"]["tempo_acc2_4pct_octave"]["count"] == 6
    if find_chromium() is None:
        pytest.skip("Chromium not installed: the rendered-DOM check needs `apt-get install chromium`")
    dom = render_dom(out / "index.html")
    assert "Tempo within 10% of prompt" in dom
    assert "Frechet audio distance" in dom


def _eval_error(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_eval_rejects_empty_and_malformed_prompt_files(setup, tmp_path, capsys):
    _, _, generator_dir, _ = setup
    base = ["eval", "--model", str(generator_dir), "--out", str(tmp_path / "out"), "--prompts"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n\n")
    assert "has no prompts" in _eval_error([*base, str(empty)], capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a waltz"}\n{"prompt": "a march",\n')
    assert "broken.jsonl:2: not valid JSON" in _eval_error([*base, str(broken)], capsys)
    no_prompt = tmp_path / "noprompt.jsonl"
    no_prompt.write_text('{"id": "x", "tempo_bpm": 100}\n')
    assert "missing or empty 'prompt'" in _eval_error([*base, str(no_prompt)], capsys)
    assert "prompt file not found" in _eval_error([*base, str(tmp_path / "absent.txt")], capsys)
    too_long = tmp_path / "long.txt"
    too_long.write_text("a calm piano piece\n")
    assert "beyond this model's limit" in _eval_error([*base, str(too_long), "--duration", "99"], capsys)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_plain_text_prompts_carry_their_targets(tmp_path):
    path = tmp_path / "free.txt"
    path.write_text("A lively jig for fiddle and banjo at 132 BPM in D major\nslow brass chorale in E-flat minor\n")
    specs = read_prompts(path)
    assert specs[0].tempo_bpm == 132 and specs[0].target_key == Key(2, "major")
    assert set(specs[0].families) == {"strings", "plucked"}
    assert specs[1].target_key == Key(3, "minor") and specs[1].families == ["brass"] and specs[1].tempo_bpm is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "mode": "lydian"}\n')
    with pytest.raises(PromptFileError, match="mode must be"):
        read_prompts(bad)


def test_free_wording_prompt_set_is_valid():
    from importlib.resources import files

    from tunesmith.clap.zeroshot import instrument_hierarchy

    path = Path(str(files("tunesmith.eval") / "free_prompts.jsonl"))
    specs = read_prompts(path)
    assert len(specs) >= 20
    families = set(instrument_hierarchy())
    for spec in specs:
        assert spec.tempo_bpm and spec.target_key is not None and spec.families
        assert set(spec.families) <= families, spec


def test_unconditional_generation_drops_the_prompts(tmp_path, capsys):
    from tunesmith.eval.evaluate import generate_all
    from tunesmith.eval.prompts import PromptSpec

    specs = [PromptSpec(id=f"p{i}", prompt=p, duration=2.0, seed=0)
             for i, p in enumerate(["a march in G minor, 140 BPM", "a slow waltz in E major"])]
    synth = PromptFollowingSynth()
    cond = generate_all(synth, specs, tmp_path / "c", progress=False)
    uncond = generate_all(synth, specs, tmp_path / "u", progress=False, unconditional=True)
    assert not torch.equal(cond[0]["wav"], cond[1]["wav"])
    assert torch.equal(uncond[0]["wav"], uncond[1]["wav"])  # same seed, no prompt: the same music
    err = _eval_error(["eval", "--score-references", "--unconditional", "--prompts", "x.jsonl",
                       "--out", str(tmp_path / "o")], capsys)
    assert "--unconditional needs a model" in err


def test_references_through_a_codec_are_its_round_trip(tmp_path, capsys):
    from tunesmith.audio import save_audio
    from tunesmith.codec import RVQCodec, RVQCodecConfig
    from tunesmith.eval.evaluate import reference_items
    from tunesmith.eval.prompts import PromptSpec

    torch.manual_seed(0)
    codec = RVQCodec(RVQCodecConfig(dim=32, encoder_depths=(1, 1), decoder_depths=(1, 1), latent_dim=16,
                                    num_codebooks=3, codebook_size=32, codebook_dim=4)).eval()
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    wav = torch.from_numpy(P.synthesize(P.tune_notes(Key(0, "major"), 100), SR, 2.0)).float()[None]
    save_audio(ref_dir / "a.wav", wav, SR)
    spec = PromptSpec(id="a", prompt="a tune", duration=2.0, seed=0)  # paired by id: ref/a.wav
    plain = reference_items([spec], ref_dir, tmp_path / "plain")[0]["wav"]
    through = reference_items([spec], ref_dir, tmp_path / "codec", codec, num_codebooks=2)[0]["wav"]
    with torch.inference_mode():
        expected = codec.decode(codec.encode(plain[None], 2))[0, :, : plain.shape[-1]].clamp(-1, 1)
    assert through.shape == plain.shape and not torch.allclose(through, plain)
    assert torch.allclose(through, expected, atol=1e-3)
    err = _eval_error(["eval", "--model", "x", "--through-codec", "codec-24k", "--prompts", "p.jsonl",
                       "--out", str(tmp_path / "o")], capsys)
    assert "--through-codec goes with --score-references" in err


def test_draws_repeat_each_prompt_with_the_next_seeds_and_its_reference(tmp_path, capsys):
    from tunesmith.eval.evaluate import with_draws
    from tunesmith.eval.prompts import PromptSpec

    (tmp_path / "p1.wav").write_bytes(b"")  # a reference paired by id
    specs = [PromptSpec(id="p1", prompt="a march", duration=2.0, seed=5), PromptSpec(id="p2", prompt="a reel", duration=2.0, seed=0)]
    drawn = with_draws(specs, 3, tmp_path)
    assert [(s.id, s.seed) for s in drawn] == [("p1-d0", 5), ("p1-d1", 6), ("p1-d2", 7), ("p2-d0", 0), ("p2-d1", 1), ("p2-d2", 2)]
    assert {s.reference for s in drawn[:3]} == {str(tmp_path / "p1.wav")} and drawn[3].reference is None
    assert with_draws(specs, 1) == specs
    (tmp_path / "prompts.txt").write_text("a march at 120 BPM\n")
    err = _eval_error(["eval", "--model", "x", "--prompts", str(tmp_path / "prompts.txt"), "--draws", "0",
                       "--out", str(tmp_path / "o")], capsys)
    assert "draws must be >= 1" in err
