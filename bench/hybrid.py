"""Two-stage generation (coarse-token LM + dual-path diffusion) against the single-stage models.

    python bench/hybrid.py --quick --json runs/bench-hybrid.json     # tiny models, about a minute
    python bench/hybrid.py --json runs/bench-hybrid.json              # bundled sizes
    python bench/hybrid.py --hybrid DIR --json ...                    # a trained two-stage generator
    python bench/hybrid.py --token-check DPD_DIR                      # does a trained DPD use its tokens?

One table, one row per system: the single-stage token LM with a Transformer and with a Mamba-2
backbone (4 codebooks of codec-24k, delay pattern), the hybrid with each backbone in stage 1
(first codebook, 5 frames stacked per step), and the DiT.  Columns:

- ``lm_passes_per_10s`` (token-LM forward passes: decoding steps, plus one prefill per window
  for the hybrid), ``nfe_per_10s`` (diffusion network evaluations) and ``seconds_per_10s``
  (wall-clock of a 10-s generation, CPU, one thread);
- ``peak_rss_mb_30s`` / ``peak_rss_mb_180s``: peak resident memory of a fresh process that
  generates 30 s and 3 min (the hybrid streams to a file; the others return the audio);
- ``seam_ratio`` (hybrid): mean latent jump across window seams / mean jump between the frames
  inside windows, on a 60-s continuation (1 = seams like any other frame);
- quality (FAD on mel statistics, CLAP score, tempo / mode / family adherence) only for a
  *trained* hybrid given with ``--hybrid`` (through tunesmith.eval); otherwise null, with the
  reason in ``notes``.

Untrained networks (``--quick``, and the hybrid without ``--hybrid``) are labelled
``untrained`` in the JSON: their passes, time and memory are what the architecture costs, not
what a trained model sounds like.  The JSON's top level holds ``lm_forward_ratio`` (token-LM
passes per 10 s / the hybrid's stage-1 passes), ``fad_mel_hybrid``, ``fad_mel_best_single`` and
``memory_ratio_3min_30s`` (the hybrid's peak memory for 3 min / for 30 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("token-lm-transformer", "token-lm-mamba2", "hybrid-transformer", "hybrid-mamba2", "dit")


def build(system: str, quick: bool, hybrid_dir: str | None = None) -> tuple[Any, bool]:
    """(generator, untrained) for a system name; quick: tiny shapes, else bundled sizes."""
    from tunesmith.generator import load_generator

    if system.startswith("hybrid"):
        backbone = system.split("-", 1)[1]
        if hybrid_dir:
            gen = load_generator(hybrid_dir)
            trained = json.loads((Path(hybrid_dir) / "config.json").read_text()).get("trained", {})
            both = bool(trained.get("stage1")) and bool(trained.get("stage2"))  # say so when one stage is not
            if gen.lm.config.backbone == backbone:
                return gen, not both
            return _hybrid_with(gen, backbone), True
        if quick:
            from tunesmith.hybrid.tiny import tiny_two_stage

            return tiny_two_stage(backbone=backbone, stack=5, chunk_seconds=10.0, context_seconds=2.0, lm_window=150), True
        return _bundled_hybrid(backbone), True
    if system == "dit":
        if quick:
            from tunesmith.serve.testing import tiny_generator

            return load_generator(tiny_generator(Path("/tmp/bench-hybrid/dit"), max_seconds=200.0)), True
        return load_generator("tunesmith-small-dit"), False
    backbone = system.rsplit("-", 1)[1]
    if quick:
        return _tiny_lm(backbone), True
    gen = load_generator("tunesmith-small")
    if backbone == "transformer":
        return gen, False
    return _lm_with_ssm(gen), True


def _ssm_options(dim: int, target: int) -> dict[str, Any]:
    from tunesmith.lm.backbones.mamba2 import matched_options

    return matched_options(dim, target, d_state=64, head_dim=64 if dim >= 128 else 16, cross_attention_every=2,
                           cross_heads=max(1, dim // 64))


def _lm_with_ssm(gen: Any) -> Any:
    """The bundled LM's shape with a Mamba-2 backbone of matched size (untrained)."""
    from dataclasses import replace

    from tunesmith.lm.backbones.mamba2 import count_backbone_parameters
    from tunesmith.lm.generator import TokenLMGenerator
    from tunesmith.lm.model import TokenLM

    c = gen.lm.config
    target = count_backbone_parameters(c.backbone, c.dim, c.backbone_config, cross_attention=True)
    lm = TokenLM(replace(c, backbone="mamba2", backbone_config=_ssm_options(c.dim, target)))
    return TokenLMGenerator(lm.eval(), gen.codec, gen.text_encoder, cfg=gen.cfg)


def _tiny_lm(backbone: str) -> Any:
    from tunesmith.checkpoint import load_model
    from tunesmith.hybrid.tiny import TEXT_DIM, HashTextEncoder
    from tunesmith.lm.generator import TokenLMGenerator
    from tunesmith.lm.model import LMConfig, TokenLM

    codec = load_model("codec-24k")
    options = ({"num_layers": 2, "num_heads": 2, "ffn_dim": 0} if backbone == "transformer" else
               {"n_layers": 2, "d_state": 16, "head_dim": 16, "chunk_size": 16, "cross_attention_every": 2, "cross_heads": 2})
    lm = TokenLM(LMConfig(num_codebooks=4, codebook_size=1024, dim=32, backbone=backbone, backbone_config=options,
                          text_dim=TEXT_DIM, max_text_tokens=16, max_frames=750))
    return TokenLMGenerator(lm.eval(), codec, HashTextEncoder(), cfg=1.0)


def _bundled_hybrid(backbone: str) -> Any:
    """Stage 1 from the bundled LM (coarse_lm_from; Mamba-2: matched size, untrained), stage 2 the
    'small' preset's DPD (untrained), the bundled VAE."""
    from dataclasses import replace

    from tunesmith.checkpoint import load_model
    from tunesmith.config import preset
    from tunesmith.hybrid.dpd import DualPathDiffusion
    from tunesmith.hybrid.generator import TwoStageGenerator
    from tunesmith.hybrid.stage1 import coarse_lm_from
    from tunesmith.lm.backbones.mamba2 import count_backbone_parameters
    from tunesmith.lm.model import TokenLM

    lm, _ = coarse_lm_from("tunesmith-small", codebooks=1, stack=5)
    if backbone != "transformer":
        c = lm.config
        target = count_backbone_parameters(c.backbone, c.dim, c.backbone_config, cross_attention=True)
        lm = TokenLM(replace(c, backbone="mamba2", backbone_config=_ssm_options(c.dim, target)))
    run = preset("run/hybrid", "small")
    dpd = DualPathDiffusion(run.model)
    return TwoStageGenerator(lm.eval(), dpd.eval(), load_model("vae-24k"), codebooks=1, stack=5,
                             latent_scale=run.data.latent_scale, steps=20)


def _hybrid_with(gen: Any, backbone: str) -> Any:
    from dataclasses import replace

    from tunesmith.hybrid.generator import TwoStageGenerator
    from tunesmith.lm.backbones.mamba2 import count_backbone_parameters
    from tunesmith.lm.model import TokenLM

    c = gen.lm.config
    target = count_backbone_parameters(c.backbone, c.dim, c.backbone_config, cross_attention=True)
    lm = TokenLM(replace(c, backbone="mamba2", backbone_config=_ssm_options(c.dim, target)))
    return TwoStageGenerator(lm.eval(), gen.dpd, gen.codec, codebooks=gen.codebooks, stack=gen.stack,
                             latent_scale=gen.latent_scale, steps=gen.steps)


def speed(system: str, quick: bool, hybrid_dir: str | None) -> dict[str, Any]:
    """Passes and seconds for 10 s of audio."""
    gen, untrained = build(system, quick, hybrid_dir)
    steps = [0]
    prompt = "a calm waltz for strings in D major at 90 BPM"
    start = time.perf_counter()
    audio = gen.generate(prompt, 10.0, seed=0, callback=lambda done, total: steps.__setitem__(0, done), loudness=None)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"untrained": untrained, "seconds_per_10s": round(seconds, 3)}
    if system.startswith("hybrid"):
        stats = audio.info["two_stage"]
        row.update(lm_passes_per_10s=stats["lm_passes"], lm_steps_per_10s=stats["lm_passes"] - stats["lm_windows"],
                   nfe_per_10s=stats["nfe"], lm_windows=stats["lm_windows"])
    elif system == "dit":
        row.update(lm_passes_per_10s=0, nfe_per_10s=steps[0])
    else:  # its decoding steps, plus the one prefill of its one window (10 s is within its context)
        row.update(lm_passes_per_10s=steps[0] + 1, lm_steps_per_10s=steps[0], nfe_per_10s=0)
    return row


MEMORY_CODE = """
import resource, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from bench.hybrid import build
gen, _ = build({system!r}, {quick!r}, {hybrid!r})
start = time.perf_counter()
if {system!r}.startswith("hybrid"):
    gen.stream("a calm waltz for strings", {seconds!r}, {path!r}, seed=0)
else:
    gen.generate("a calm waltz for strings", {seconds!r}, seed=0, loudness=None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - start)
"""


def peak_memory(system: str, seconds: float, quick: bool, hybrid_dir: str | None) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of a fresh process generating ``seconds`` of audio."""
    code = MEMORY_CODE.format(root=str(ROOT), system=system, quick=quick, hybrid=hybrid_dir, seconds=seconds,
                              path=f"/tmp/bench-hybrid/{system}-{seconds:g}.wav")
    Path("/tmp/bench-hybrid").mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, check=True, cwd=ROOT)
    rss, took = out.stdout.strip().splitlines()[-1].split()
    return round(float(rss), 1), round(float(took), 2)


def seam_ratio(system: str, quick: bool, hybrid_dir: str | None, seconds: float = 60.0) -> dict[str, float]:
    """Mean latent jump across window seams / inside windows, on one continuation."""
    from tunesmith.hybrid.generator import RunStats

    gen, _ = build(system, quick, hybrid_dir)
    chunks = list(gen.latent_chunks(["a calm waltz for strings"], seconds, 0, RunStats()))
    x = torch.cat(chunks, dim=-1)[0]
    jumps = (x[:, 1:] - x[:, :-1]).norm(dim=0)
    edges = torch.tensor([c.shape[-1] for c in chunks]).cumsum(0)[:-1] - 1
    inside = torch.ones(len(jumps), dtype=torch.bool)
    inside[edges] = False
    seam, rest = float(jumps[edges].mean()), float(jumps[inside].mean())
    return {"seam_jump": round(seam, 4), "inside_jump": round(rest, 4), "seam_ratio": round(seam / max(rest, 1e-9), 3),
            "seams": len(edges)}


def token_check(dpd_dir: str, clips: int = 24, frames: int = 125, latent_scale: float = 0.146,
                manifest: str = "/work/data/corpus-v3/manifest.jsonl",
                latent_cache: str = "/work/data/cache/vae-24k-v3") -> dict[str, Any]:
    """Does a trained DPD use its tokens?  Its velocity loss on held-out (valid) clips, at fixed
    angles, with each clip's own coarse tokens (encoded here by codec-24k), none, and another's."""
    from tunesmith.checkpoint import load_model
    from tunesmith.data.cache import FrameCache
    from tunesmith.data.datasets import AudioClipDataset
    from tunesmith.hybrid import angle

    dpd, codec = load_model(dpd_dir).eval(), load_model("codec-24k").eval()
    c = dpd.config
    lat = FrameCache(latent_cache, "valid")
    audio = AudioClipDataset(manifest, "valid", codec.sample_rate, 1, segment_seconds=None)
    by_id = {r["id"]: i for i, r in enumerate(audio.records)}
    spf = round(codec.sample_rate / c.frame_rate)
    xs, toks = [], []
    for j in range(len(lat)):
        if lat.records[j]["id"] not in by_id or lat.clip_frames(j).shape[0] < frames:
            continue
        wav = audio[by_id[lat.records[j]["id"]]]["audio"][None, :, : frames * spf]
        with torch.inference_mode():
            tok = codec.encode_long(wav, c.num_codebooks)[:, :, : frames * c.tokens_per_frame]
        if tok.shape[-1] == frames * c.tokens_per_frame:
            xs.append(lat.clip_frames(j)[:frames].T.float() * latent_scale)
            toks.append(tok[0])
        if len(xs) == clips:
            break
    x0, tokens = torch.stack(xs), torch.stack(toks)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"clips": len(xs), "frames": frames}
    with torch.no_grad():
        for name, tk in (("own", tokens), ("none", torch.full_like(tokens, c.codebook_size)), ("other", tokens.roll(1, 0))):
            losses = []
            for t in (0.2, 0.4, 0.6, 0.8):
                tt = torch.full((len(xs), frames), t)
                losses.append(round(float(angle.loss(dpd(angle.noisy(x0, noise, tt), tt, tk), x0, noise, tt)), 4))
            out[name] = {"mean": round(sum(losses) / len(losses), 4), "by_t": losses}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny untrained models (the machinery, in about a minute)")
    p.add_argument("--hybrid", default=None, help="a trained two-stage generator directory")
    p.add_argument("--memory", choices=("hybrid", "all", "none"), default="hybrid",
                   help="which systems' 30-s and 3-min peak memory to measure (a fresh process each)")
    p.add_argument("--token-check", default=None, metavar="DPD_DIR",
                   help="only: a trained DPD's held-out loss with own / no / another clip's tokens")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.token_check:
        print(json.dumps(token_check(args.token_check)))
        return 0
    table: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        table[system] = speed(system, args.quick, args.hybrid)
        print(system, table[system], flush=True)
    for system in SYSTEMS:
        if args.memory == "all" or (args.memory == "hybrid" and system == "hybrid-transformer"):
            (m30, t30), (m180, t180) = (peak_memory(system, s, args.quick, args.hybrid) for s in (30.0, 180.0))
            table[system].update(peak_rss_mb_30s=m30, peak_rss_mb_180s=m180, seconds_30s=t30, seconds_180s=t180)
            print(system, "memory", m30, m180, flush=True)
    table["hybrid-transformer"].update(seam_ratio("hybrid-transformer", args.quick, args.hybrid))
    hybrid, lm = table["hybrid-transformer"], table["token-lm-transformer"]
    trained = args.hybrid is not None and not hybrid["untrained"]
    result = {
        "lm_forward_ratio": round(lm["lm_passes_per_10s"] / hybrid["lm_passes_per_10s"], 3),
        "lm_step_ratio": round(lm["lm_steps_per_10s"] / hybrid["lm_steps_per_10s"], 3),  # without the prefills
        "fad_mel_hybrid": None,
        "fad_mel_best_single": None,
        "memory_ratio_3min_30s": (round(hybrid["peak_rss_mb_180s"] / hybrid["peak_rss_mb_30s"], 3)
                                  if "peak_rss_mb_180s" in hybrid else None),
        "quick": args.quick,
        "untrained": {name: row["untrained"] for name, row in table.items()},
        "systems": table,
        "notes": [
            ("lm_passes count decoding steps plus one prefill pass per LM window (both families); "
             "lm_step_ratio leaves the prefills out"),
            "fad/clap/adherence columns need a trained two-stage generator (--hybrid DIR) and the eval suite; "
            + ("not run in this benchmark yet" if trained else "none fully trained was given, so they are null"),
            "peak memory is the process's peak RSS (MB), including the Python runtime and torch",
        ],
    }
    line = (f"lm_forward_ratio {result['lm_forward_ratio']}, memory_ratio_3min_30s {result['memory_ratio_3min_30s']}, "
            f"seam_ratio {hybrid['seam_ratio']}, hybrid {hybrid['seconds_per_10s']} s / 10 s vs token LM "
            f"{lm['seconds_per_10s']} s")
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
