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

- Stable Audio Open 1.0 at its real size (random weights: diffusers' StableAudioDiTModel
  defaults are SAO 1.0's transformer config, with its projection model, Oobleck VAE and a
  t5-base-shaped T5): the same tensors run by diffusers and, mapped by tunesmith's key table
  (tunesmith/hub/stable_audio_keys.py), by tunesmith's DiT.  One CFG DiT step on 10 s of
  latents (216 frames; also without tunesmith's oneDNN matmuls, to show what the structure
  alone gives), and seconds per 10 s of audio: text encoding + 100 steps (the pipeline's
  default) + VAE decode, from parts measured here (the decode on 216 frames, scaled to the
  window: it is convolutional), over the full 1024-frame window the pipeline always generates
  (ours by default too), and for ours cropped to the 216 frames 10 s need.  Parity: the DiT's max |ours - diffusers| on a tiny checkpoint saved in diffusers'
  layout and read by tunesmith's loader (``sao_dit_max_abs``), and at the real size.

    nice -n 10 python bench/diffusion.py --json out.json [--quick] [--threads N] [--sao-only]

JSON top level: ``step_speedup_10s``, ``step_speedup_47s``, ``step_speedup_190s`` (peer time / ours),
``sao_dit_max_abs`` and ``speedup_sao_step`` (diffusers' time / ours, one DiT step).
``--sao-only`` runs only the Stable Audio section and merges it into an existing JSON.
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


# ---------------------------------------------------------------------------
# Stable Audio Open: the same random weights through tunesmith and through diffusers

SAO_SECONDS = 10.0
SAO_TEXT_TOKENS, SAO_PROMPT_TOKENS = 128, 24  # T5 padded to 128; a prompt of 24 tokens
SAO_STEPS = 100  # StableAudioPipeline's default
TINY_SAO = dict(sample_size=24, in_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=4,
                num_key_value_attention_heads=2, out_channels=8, cross_attention_dim=24, time_proj_dim=32,
                global_states_input_dim=40, cross_attention_input_dim=20)
TINY_PROJECTION = dict(text_encoder_dim=16, conditioning_dim=20, min_value=0, max_value=64)


def sao_peer_inputs(projection, text: torch.Tensor, mask: torch.Tensor, seconds: float, frames: int, width_head: int):
    """diffusers' transformer inputs for a CFG batch [cond, uncond], built as StableAudioPipeline
    builds them (padding zeroed, the unconditional row all zeros, timing in the global state)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    with torch.no_grad():
        out = projection(text_hidden_states=text[:1], start_seconds=torch.zeros(1), end_seconds=torch.full((1,), seconds))
        sequence = torch.cat([out.text_hidden_states * mask[:1, :, None], out.seconds_start_hidden_states,
                              out.seconds_end_hidden_states], dim=1)
        sequence = torch.cat([sequence, torch.zeros_like(sequence)])
        glob = torch.cat([out.seconds_start_hidden_states, out.seconds_end_hidden_states], dim=2).repeat(2, 1, 1)
    rotary = get_1d_rotary_pos_embed(width_head // 2, frames + 1, use_real=True, repeat_interleave_real=False)
    return sequence, glob, rotary


def sao_dit_pair(ours, transformer, projection, frames: int, seconds: float, tokens: int = SAO_TEXT_TOKENS,
                 prompt_tokens: int = SAO_PROMPT_TOKENS):
    """Zero-argument step functions (ours, peer) on the same CFG batch [cond, uncond]."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, transformer.config.in_channels, frames, generator=g)
    text = torch.randn(2, tokens, projection.config.text_encoder_dim, generator=g)
    mask = torch.zeros(2, tokens, dtype=torch.bool)
    mask[0, :prompt_tokens] = True  # row 1: the unconditional half (no text)
    start, total = torch.zeros(2), torch.full((2,), seconds)
    t = torch.tensor([0.6])
    sequence, glob, rotary = sao_peer_inputs(projection, text, mask, seconds, frames, transformer.config.attention_head_dim)
    return ((lambda: ours(x, t.expand(2), text, mask, start, total)),
            (lambda: transformer(x, t, encoder_hidden_states=sequence, global_hidden_states=glob,
                                 rotary_embedding=rotary, return_dict=False)[0]))


def sao_map(transformer, projection):
    """tunesmith's DiT made from the diffusers tensors by the loader's key table (sharing the
    tensors it copies as they are), set up as tunesmith's loader sets it up on CPU."""
    from tunesmith.diffusion.dit import DiT
    from tunesmith.hub.stable_audio_keys import DIT_KEYS, dit_config, expand, map_weights

    config = dit_config(dict(transformer.config), dict(projection.config), projection.config.text_encoder_dim)
    tensors = {f"transformer/{k}": v for k, v in transformer.state_dict().items()}
    tensors.update({f"projection_model/{k}": v for k, v in projection.state_dict().items()})
    with torch.device("meta"):
        ours = DiT(config)
    ours.load_state_dict(map_weights(expand(DIT_KEYS, config.depth), tensors, ours.state_dict(), config, str), assign=True)
    return ours.eval().use_onednn()


def sao_tiny_parity() -> float:
    """Max |ours - diffusers| of the DiT output on a tiny random checkpoint that diffusers saves and
    tunesmith's loader (load_dit) reads: CFG batch with timing, partial rotary, grouped heads."""
    import tempfile

    from diffusers import StableAudioDiTModel
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    from tunesmith.hub.stable_audio import load_dit

    torch.manual_seed(0)
    transformer, projection = StableAudioDiTModel(**TINY_SAO).eval(), StableAudioProjectionModel(**TINY_PROJECTION).eval()
    with tempfile.TemporaryDirectory() as tmp:
        transformer.save_pretrained(Path(tmp) / "transformer")
        projection.save_pretrained(Path(tmp) / "projection_model")
        loaded = load_dit(Path(tmp), TINY_PROJECTION["text_encoder_dim"])
    ours, peer = sao_dit_pair(loaded, transformer, projection, TINY_SAO["sample_size"], 0.003, tokens=8, prompt_tokens=5)
    with torch.inference_mode():
        return float((ours() - peer()).abs().max())


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each zero-argument function over ``repeats`` alternating rounds (after one warm-up)."""
    best = {name: float("inf") for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def once(fns: dict) -> dict[str, float]:
    """One timed call of each (minutes-long calls: a warm-up would not change them)."""
    out = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name] = time.perf_counter() - t0
    return out


def sao_section(quick: bool) -> dict:
    """Stable Audio Open 1.0's size: DiT step, parity, and seconds per 10 s of audio (see the docstring)."""
    from diffusers import AutoencoderOobleck, StableAudioDiTModel
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    from tunesmith.codec.oobleck import OobleckVAE
    from tunesmith.hub.stable_audio_keys import map_weights, vae_config, vae_keys

    report: dict = {"sao_dit_max_abs": sao_tiny_parity()}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    transformer = StableAudioDiTModel().eval()  # diffusers' defaults: SAO 1.0's transformer config
    projection = StableAudioProjectionModel(text_encoder_dim=768, conditioning_dim=768, min_value=0, max_value=512).eval()
    ours_dit = sao_map(transformer, projection)
    build_s = time.perf_counter() - t0
    hop, rate = 2048, 44100
    frames = -(-int(SAO_SECONDS * rate) // hop)  # 216: what tunesmith generates for 10 s when cropped
    window = transformer.config.sample_size  # 1024: what the pipeline generates for any duration
    ours, peer = sao_dit_pair(ours_dit, transformer, projection, frames, SAO_SECONDS)

    def ours_mkl():
        ours_dit.use_onednn(False)
        try:
            return ours()
        finally:
            ours_dit.use_onednn(True)

    with torch.inference_mode():
        max_abs_real = float((ours() - peer()).abs().max())
    times = best_of({"ours": ours, "peer": peer, "ours_without_onednn": ours_mkl}, 1 if quick else 3)
    step = {"frames": frames, "batch": 2, "params": sum(p.numel() for p in transformer.parameters()),
            "model_build_s": build_s, **{f"{k}_s": v for k, v in times.items()},
            "speedup": times["peer"] / times["ours"],
            "speedup_without_onednn": times["peer"] / times["ours_without_onednn"], "max_abs_real_size": max_abs_real}
    report["sao"] = {"step_10s": step}
    report["speedup_sao_step"] = step["speedup"]

    # seconds per 10 s of audio = text + SAO_STEPS x step + decode, each part measured here
    vae = AutoencoderOobleck().eval()  # diffusers' defaults: SAO 1.0's VAE
    with torch.device("meta"):
        our_vae = OobleckVAE(vae_config(dict(vae.config)))
    vae_tensors = {f"vae/{k}": v for k, v in vae.state_dict().items()}
    our_vae.load_state_dict(map_weights(vae_keys(list(our_vae.state_dict())), vae_tensors, our_vae.state_dict(), None, str),
                            assign=True)
    our_vae.eval()
    text_s = sao_text_seconds()
    parts: dict = {"text_s": text_s}
    # The VAE is convolutional, its time linear in length: measured on the 216 frames (alternating,
    # best of 2), scaled to the window.
    z = torch.randn(1, 64, frames, generator=torch.Generator().manual_seed(1))
    dec = best_of({"ours": lambda: our_vae.decode(z), "peer": lambda: vae.decode(z).sample}, 1 if quick else 2)
    parts["decode_cropped_ours_s"], parts["decode_cropped_peer_s"] = dec["ours"], dec["peer"]
    if not quick:  # the DiT over the full window: minutes per call at this size on 2 cores
        ours_w, peer_w = sao_dit_pair(ours_dit, transformer, projection, window, SAO_SECONDS)
        first = once({"peer": peer_w, "ours": ours_w})
        second = once({"ours": ours_w, "peer": peer_w})  # the other order: load from other jobs hits both alike
        parts.update({f"step_window_{k}_s": min(first[k], second[k]) for k in first})
        for side in ("ours", "peer"):
            parts[f"decode_window_{side}_s"] = parts[f"decode_cropped_{side}_s"] * window / frames
    gen10: dict = {"steps": SAO_STEPS, "window_frames": window, "cropped_frames": frames, "parts": parts,
                   "ours_cropped_s": text_s["ours"] + SAO_STEPS * times["ours"] + parts["decode_cropped_ours_s"]}
    if not quick:
        for side in ("ours", "peer"):
            gen10[f"{side}_s"] = (text_s[side] + SAO_STEPS * parts[f"step_window_{side}_s"]
                                  + parts[f"decode_window_{side}_s"])
        gen10["speedup"] = gen10["peer_s"] / gen10["ours_s"]
        gen10["speedup_cropped"] = gen10["peer_s"] / gen10["ours_cropped_s"]
    report["sao"]["generate_10s"] = gen10
    return report


def sao_text_seconds() -> dict[str, float]:
    """T5 (t5-base's shape, random) on one prompt padded to 128 tokens: diffusers' way and ours."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    from tunesmith.hub.stable_audio import StableAudioTextEncoder

    words = ["techno", "drum", "loop", "with", "deep", "bass", "and", "bright", "synth", "pads"]
    tok = Tokenizer(models.Unigram([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in words], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                model_max_length=SAO_TEXT_TOKENS, extra_ids=0)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)).eval()
    prompt = " ".join(words * 2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        t5.save_pretrained(Path(tmp) / "text_encoder")
        ours = StableAudioTextEncoder(Path(tmp))

        def peer():
            batch = tokenizer([prompt], padding="max_length", max_length=SAO_TEXT_TOKENS, truncation=True, return_tensors="pt")
            return t5(batch.input_ids, attention_mask=batch.attention_mask)[0]

        times = best_of({"ours": lambda: ours._encode_uncached([prompt]), "peer": peer}, 2)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (same ratios)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--steps", type=int, default=12, help="sampler steps for the 30 s generation")
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sao-only", action="store_true",
                    help="only the Stable Audio Open section, merged into the JSON at --json if it exists")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]))))
        return 0
    if args.sao_only:
        report = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
        report.update(sao_section(args.quick))
        report["summary"] = "; ".join([*report.get("summary", "").split("; SAO")[:1], sao_summary(report)]).lstrip("; ")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(sao_summary(report))
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
    report.update(sao_section(args.quick))
    g = report["generate_30s"]
    summary = (
        f"diffusion: step speedup vs StableAudioDiT 10s {report['step_speedup_10s']:.2f}x, "
        f"47s {report['step_speedup_47s']:.2f}x, 190s {report['step_speedup_190s']:.2f}x "
        f"(all-global layers: 190s {report['steps']['190s'].get('speedup_all_global', float('nan')):.2f}x); "
        f"30 s generation ours {g['generate_ours_s']:.1f}s vs peer {g['generate_peer_s']:.1f}s ({g['nfe']} NFE); "
        f"peak memory 190s ours {report['steps']['190s']['ours']['peak_bytes'] / GIB:.2f} GiB vs peer "
        f"{report['steps']['190s']['peer']['peak_bytes'] / GIB:.2f} GiB; "
        f"longest in 24 GiB ~{report['longest_seconds_in_24gib'] / 60:.0f} min; {sao_summary(report)}"
    )
    report["summary"] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(summary)
    return 0


def sao_summary(report: dict) -> str:
    step, gen = report["sao"]["step_10s"], report["sao"]["generate_10s"]
    per10 = (f"10 s of audio ({gen['steps']} steps) ours {gen['ours_s']:.0f}s vs diffusers {gen['peer_s']:.0f}s, "
             f"cropped {gen['ours_cropped_s']:.0f}s" if "ours_s" in gen else f"10 s cropped ours {gen['ours_cropped_s']:.0f}s")
    return (f"SAO 1.0 DiT step (10 s, CFG 2) ours {step['ours_s']:.2f}s vs diffusers {step['peer_s']:.2f}s: "
            f"{report['speedup_sao_step']:.2f}x ({step['speedup_without_onednn']:.2f}x without oneDNN); {per10}; "
            f"parity tiny {report['sao_dit_max_abs']:.1e}, real {step['max_abs_real_size']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
