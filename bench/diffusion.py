"""Benchmark: our DiT against diffusers' StableAudioDiTModel at the same width, depth and heads.

Both networks get random weights (nothing is downloaded) and the same inputs: a
CFG batch of 2, latents at the VAE's 25 frames/s x 32 channels, 64 text tokens of
width 384 (MiniLM).  Measured, in this one run:

- one denoiser step (one network forward) at the latent lengths of 10 s, 47 s and
  190 s of audio: time (best of repeats, the two networks alternating so that load
  from other processes on a shared machine hits both alike) and peak memory (growth
  of the resident set during one forward, each in a fresh subprocess so freed
  memory from an earlier run cannot hide it);
- the same step for our DiT with global attention in every layer (``all_global``),
  to show what the bundled block-local layers contribute at long lengths;
- full generation of 30 s: our sampler (DPM-Solver++(2M), 12 steps, CFG) over each
  network, plus the VAE decode (the small VAE's architecture, random weights);
- the longest duration that fits 24 GiB for our bundled size: a line through the
  measured peak memories (memory is linear in length: fused attention never
  materializes the T x T matrix), solved for 24 GiB minus the process baseline.

    nice -n 10 python bench/diffusion.py --json out.json [--quick] [--threads N]

JSON top level: ``step_speedup_10s``, ``step_speedup_47s``, ``step_speedup_190s`` (peer time / ours).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

FRAME_RATE = 25.0  # the small VAE: 24 kHz / 960
LATENT_DIM = 32
TEXT_TOKENS, TEXT_DIM = 64, 384
BATCH = 2  # cond + uncond in one forward
LENGTHS = (10.0, 47.0, 190.0)
GIB = 1024**3


def our_model(all_global: bool = False):
    """Our DiT at the size the figures were measured at (the ``medium`` preset of ``tunesmith train diffusion``)."""
    import dataclasses

    from tunesmith.diffusion.dit import DiT
    from tunesmith.diffusion.train import _medium

    config = _medium().model
    if all_global:
        config = dataclasses.replace(config, local_window=0)
    return DiT(config).eval()


def peer_model(width: int, depth: int, heads: int):
    from diffusers import StableAudioDiTModel

    return StableAudioDiTModel(
        in_channels=LATENT_DIM, out_channels=LATENT_DIM, num_layers=depth, attention_head_dim=width // heads,
        num_attention_heads=heads, num_key_value_attention_heads=heads, cross_attention_dim=width,
        time_proj_dim=256, global_states_input_dim=width, cross_attention_input_dim=TEXT_DIM,
    ).eval()


def step_function(which: str, frames: int):
    """A zero-argument function running one network forward on fixed random inputs."""
    torch.manual_seed(0)
    ours = our_model(all_global=which == "ours_all_global")
    cfg = ours.config
    x = torch.randn(BATCH, LATENT_DIM, frames)
    text = torch.randn(BATCH, TEXT_TOKENS, TEXT_DIM)
    if which in ("ours", "ours_all_global"):
        mask = torch.ones(BATCH, TEXT_TOKENS, dtype=torch.bool)
        timing = torch.full((BATCH,), frames / FRAME_RATE)
        return lambda: ours(x, torch.full((BATCH,), 0.5), text, mask, torch.zeros(BATCH), timing)
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    peer = peer_model(cfg.width, cfg.depth, cfg.heads)
    del ours
    # As diffusers' StableAudioPipeline does: rotary over half the head, one global token prepended.
    rotary = get_1d_rotary_pos_embed(cfg.width // cfg.heads // 2, frames + 1, use_real=True, repeat_interleave_real=False)
    glob = torch.randn(BATCH, 1, cfg.width)
    return lambda: peer(x, torch.full((BATCH,), 0.5), encoder_hidden_states=text, global_hidden_states=glob,
                        rotary_embedding=rotary, return_dict=False)[0]


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(which: str, frames: int) -> dict:
    """Runs in a fresh process: growth of the resident set during one forward."""
    fn = step_function(which, frames)
    with torch.inference_mode():
        base = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux)
        fn()
        peak = _rss("VmHWM") - base
    return {"peak_bytes": peak, "baseline_bytes": base}


def measure_memory(which: str, frames: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, str(frames), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {which} {frames} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_times(names: list[str], frames: int, repeats: int) -> dict[str, float]:
    """Best time per network over ``repeats`` rounds, the networks alternating within each round."""
    fns = {name: step_function(name, frames) for name in names}
    best = {name: float("inf") for name in names}
    with torch.inference_mode():
        for name, fn in fns.items():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def generation(seconds: float, steps: int) -> dict:
    """Full generation time of ``seconds`` of audio: sampler over each network, and the VAE decode."""
    import tunesmith.codec.train_vae  # noqa: F401  (registers the run/vae presets)
    from tunesmith.codec.model import VAECodec
    from tunesmith.config import preset
    from tunesmith.diffusion.denoiser import Denoiser
    from tunesmith.diffusion.guidance import cfg_denoiser
    from tunesmith.diffusion.samplers import get_sigmas, sample

    frames = round(seconds * FRAME_RATE)
    torch.manual_seed(0)
    ours = our_model()
    cfg = ours.config
    peer = peer_model(cfg.width, cfg.depth, cfg.heads)
    text = torch.randn(1, TEXT_TOKENS, TEXT_DIM)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool)
    timing = {"seconds_start": torch.zeros(1), "seconds_total": torch.full((1,), seconds)}
    cond = {"text": text, "text_mask": mask, **timing}
    uncond = {"text": text, "text_mask": torch.zeros_like(mask), **timing}

    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rotary = get_1d_rotary_pos_embed(cfg.width // cfg.heads // 2, frames + 1, use_real=True, repeat_interleave_real=False)

    def peer_net(x, t, text, text_mask, seconds_start, seconds_total):
        b = x.shape[0]
        glob = torch.zeros(b, 1, cfg.width)
        return peer(x, t, encoder_hidden_states=text * text_mask[..., None], global_hidden_states=glob,
                    rotary_embedding=rotary, return_dict=False)[0]

    sigmas = get_sigmas("exponential", steps, 0.01, 80.0)
    noise = torch.randn(1, LATENT_DIM, frames, generator=torch.Generator().manual_seed(0))
    result = {}
    with torch.inference_mode():
        for name, net in (("ours", ours), ("peer", peer_net)):
            den = cfg_denoiser(Denoiser(net, "v"), cond, uncond, 4.0)
            t0 = time.perf_counter()
            out = sample(den, noise, sigmas, "dpmpp-2m")
            result[f"sampling_{name}_s"] = time.perf_counter() - t0
            result["nfe"] = out.nfe
        vae = VAECodec(preset("run/vae", "small").model).eval()
        t0 = time.perf_counter()
        wav = vae.decode_long(out.x)
        result["vae_decode_s"] = time.perf_counter() - t0
        result["audio_seconds"] = wav.shape[-1] / vae.sample_rate
    for name in ("ours", "peer"):
        result[f"generate_{name}_s"] = result[f"sampling_{name}_s"] + result["vae_decode_s"]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (same ratios)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--steps", type=int, default=12, help="sampler steps for the 30 s generation")
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]))))
        return 0

    from tqdm.auto import tqdm

    ours = our_model()
    cfg = ours.config
    params = sum(p.numel() for p in ours.parameters())
    peer_params = sum(p.numel() for p in peer_model(cfg.width, cfg.depth, cfg.heads).parameters())
    del ours
    report: dict = {
        "config": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads, "latent_dim": LATENT_DIM,
                   "frame_rate": FRAME_RATE, "batch": BATCH, "text_tokens": TEXT_TOKENS, "threads": args.threads,
                   "ours_params": params, "peer_params": peer_params, "quick": args.quick,
                   "torch": torch.__version__, "cpu_count": os.cpu_count()},
        "steps": {},
    }
    for seconds in tqdm(LENGTHS, desc="denoiser steps"):
        frames = round(seconds * FRAME_RATE)
        names = ["ours", "peer"] + (["ours_all_global"] if frames > 4 * 128 else [])
        # Many alternating rounds where a step is cheap: the best of each side is robust to load spikes.
        repeats = {10.0: 15, 47.0: 8, 190.0: 2}[seconds] if not args.quick else {10.0: 6, 47.0: 3, 190.0: 1}[seconds]
        times = measure_times(names, frames, repeats)
        entry = report["steps"][f"{seconds:g}s"] = {"frames": frames}
        for name in names:
            entry[name] = {"step_s": times[name]}
            if name != "ours_all_global":
                entry[name].update(measure_memory(name, frames, args.threads))
        entry["speedup"] = entry["peer"]["step_s"] / entry["ours"]["step_s"]
        if "ours_all_global" in entry:
            entry["speedup_all_global"] = entry["peer"]["step_s"] / entry["ours_all_global"]["step_s"]
        entry["memory_ratio"] = entry["peer"]["peak_bytes"] / max(entry["ours"]["peak_bytes"], 1)
        report[f"step_speedup_{seconds:g}s"] = entry["speedup"]

    # Longest duration in 24 GiB: a line through (frames, peak) of the two longest measurements.
    (f1, m1), (f2, m2) = [(report["steps"][f"{s:g}s"]["frames"], report["steps"][f"{s:g}s"]["ours"]["peak_bytes"]) for s in LENGTHS[1:]]
    per_frame = (m2 - m1) / (f2 - f1)
    baseline = report["steps"]["190s"]["ours"]["baseline_bytes"]
    budget = 24 * GIB - baseline - (m2 - per_frame * f2)
    report["memory"] = {
        "ours_bytes_per_frame": per_frame,
        "ours_bytes_per_frame_by_length": {k: v["ours"]["peak_bytes"] / v["frames"] for k, v in report["steps"].items()},
        "peer_bytes_per_frame_by_length": {k: v["peer"]["peak_bytes"] / v["frames"] for k, v in report["steps"].items()},
        "process_baseline_bytes": baseline,
    }
    report["longest_seconds_in_24gib"] = budget / per_frame / FRAME_RATE if per_frame > 0 else None

    report["generate_30s"] = generation(30.0, args.steps)
    g = report["generate_30s"]
    summary = (
        f"diffusion: step speedup vs StableAudioDiT 10s {report['step_speedup_10s']:.2f}x, "
        f"47s {report['step_speedup_47s']:.2f}x, 190s {report['step_speedup_190s']:.2f}x "
        f"(all-global layers: 190s {report['steps']['190s'].get('speedup_all_global', float('nan')):.2f}x); "
        f"30 s generation ours {g['generate_ours_s']:.1f}s vs peer {g['generate_peer_s']:.1f}s ({g['nfe']} NFE); "
        f"peak memory 190s ours {report['steps']['190s']['ours']['peak_bytes'] / GIB:.2f} GiB vs peer "
        f"{report['steps']['190s']['peer']['peak_bytes'] / GIB:.2f} GiB; "
        f"longest in 24 GiB ~{report['longest_seconds_in_24gib'] / 60:.0f} min"
    )
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
