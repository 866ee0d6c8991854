"""Token-LM decoding speed: tunesmith's TokenLM against transformers' MusicgenForCausalLM.

Both models are built from configs (no download) with random weights at the same
size, and decode the same number of delay-pattern steps with top-k 250 sampling
and classifier-free guidance 3 (the conditional and unconditional rows in one
batch), from the same text states.  Two sizes:

- ``bundled``: our ``small`` preset (dim 256, 6 layers, 4 heads, 4 x 1024 codes);
- ``musicgen-small``: dim 1024, 24 layers, 16 heads, FFN 4096, 4 x 2048 codes.

Reported per size and setting (batch 1 with CFG; batch 8 with CFG): decode steps per
second, seconds of audio per second, peak resident memory, and our step rate
against the memory-bandwidth bound (linear-weight bytes read per step / measured
bandwidth).  Int8 weights (tunesmith.lm.int8) are timed too, with their
quality cost: greedy-decoding token agreement with fp32 (free running, and teacher
forced on the fp32 sequence) and the mean KL divergence of the guided next-token
distributions (the expected rise in loss on data drawn from the fp32 model).

    nice -n 10 python bench/lm_decode.py --quick --json bench/lm_decode.json

Each timing is the best of a few runs (2-3 per size; one for the MusicGen checkpoint, whose
peer run takes minutes), ours and the peer's interleaved, so that load from other processes
hurts both sides alike.

``--musicgen small`` (default; ``none`` skips it) times a MusicGen *checkpoint*: a
``MusicgenForConditionalGeneration`` at musicgen-small's size (decoder dim 1024, 24 layers,
16 heads, 4 x 2048 codes; a T5-base text encoder; a 32 kHz EnCodec) with random weights,
saved with ``save_pretrained`` and loaded through ``tunesmith.load``, against the same
model run by transformers' ``generate``: text to audio end to end on both sides (T5,
decoding with CFG 3 and top-k 250 sampling, EnCodec), batch 1.  Its parity figures come
from a tiny checkpoint of the same layout (teacher-forced logits, greedy tokens, audio)
and from the real-size one (teacher-forced logits).  ``--update`` merges the results into
an existing ``--json`` file, keeping the sections not run.

    nice -n 10 python bench/lm_decode.py --sizes none --musicgen small --update --json docs/lm_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from tunesmith.lm.decode import generate_tokens
from tunesmith.conditioning.conditions import Conditioning
from tunesmith.lm.model import LMConfig, TokenLM
from tunesmith.lm.patterns import layout, to_sequence
from tunesmith.lm.int8 import linear_weight_bytes, quantize_int8
from tunesmith.lm.sampling import apply_cfg

SIZES: dict[str, dict[str, int]] = {
    "bundled": dict(dim=256, layers=6, heads=4, ffn=1024, codebooks=4, codes=1024),
    "musicgen-small": dict(dim=1024, layers=24, heads=16, ffn=4096, codebooks=4, codes=2048),
}
TEXT_TOKENS, TEXT_DIM, FRAME_RATE, CFG, TOP_K = 12, 384, 50.0, 3.0, 250


# ---------------------------------------------------------------------------
# models


def build_ours(size: dict[str, int]) -> TokenLM:
    torch.manual_seed(0)
    config = LMConfig(num_codebooks=size["codebooks"], codebook_size=size["codes"], dim=size["dim"],
                      backbone_config={"num_layers": size["layers"], "num_heads": size["heads"], "ffn_dim": size["ffn"]},
                      text_dim=TEXT_DIM, frame_rate=FRAME_RATE, max_frames=3000)
    return TokenLM(config).eval()


def build_peer(size: dict[str, int]) -> Any:
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    torch.manual_seed(0)
    special = size["codes"]
    config = MusicgenDecoderConfig(vocab_size=size["codes"], hidden_size=size["dim"], num_hidden_layers=size["layers"],
                                   num_attention_heads=size["heads"], ffn_dim=size["ffn"], num_codebooks=size["codebooks"],
                                   pad_token_id=special, bos_token_id=special, max_position_embeddings=4096, dropout=0.0)
    model = MusicgenForCausalLM(config).eval()
    for key in ("pad_token_id", "decoder_start_token_id", "bos_token_id"):
        setattr(model.generation_config, key, special)
    return model


def text_states(batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, TEXT_TOKENS, dim, generator=g), torch.ones(batch, TEXT_TOKENS, dtype=torch.bool)


# ---------------------------------------------------------------------------
# one timed decode each


def run_ours(model: TokenLM, steps: int, batch: int, greedy: bool = False,
             text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    frames = steps - model.config.num_codebooks + 1  # delay pattern: T + K - 1 steps
    states, mask = text if text is not None else text_states(batch, model.config.text_dim)
    return generate_tokens(model, frames, Conditioning(states, mask), cfg_scale=CFG, top_k=TOP_K,
                           temperature=0.0 if greedy else 1.0, seed=0)


def run_peer(model: Any, steps: int, batch: int) -> torch.Tensor:
    K, special, dim = model.config.num_codebooks, model.config.pad_token_id, model.config.hidden_size
    text, mask = text_states(batch, dim)
    # the unconditional rows attend to zeroed text, as MusicgenForConditionalGeneration does
    hidden = torch.cat([text, torch.zeros_like(text)])
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(torch.full((batch * K, 1), special), encoder_hidden_states=hidden,
                              encoder_attention_mask=torch.cat([mask, mask]).long(), max_length=steps + 1,
                              do_sample=True, top_k=TOP_K, guidance_scale=CFG, num_return_sequences=1)


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    reset_peak_rss()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, peak_rss_mb()


def measure_bandwidth(seconds: float = 1.0) -> float:
    """GB/s of a matrix-vector product over 256 MB of fp32 weights: what decoding sees."""
    w = torch.randn(8192, 8192)
    x = torch.randn(1, 8192)
    x @ w.t()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        x @ w.t()
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best / 1e9


# ---------------------------------------------------------------------------
# quality of int8


@torch.inference_mode()
def guided_logits(model: TokenLM, tokens: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Teacher-forced guided logits (B, K, S, N) of a token sequence, as decoding computes them."""
    c = model.config
    table = layout(c.pattern, c.num_codebooks, tokens.shape[-1])
    steps = to_sequence(tokens, table, fill=c.special_token)
    states, mask = text if text is not None else text_states(tokens.shape[0], c.text_dim)
    cond = Conditioning(states, mask)
    both = model(torch.cat([steps, steps]), cond.cat(cond.null()))
    B = tokens.shape[0]
    return apply_cfg(both[:B], both[B:], CFG), (table >= 0).t()


def quant_quality(fp32: TokenLM, int8: torch.nn.Module, steps: int,
                  text: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Greedy decoding with fp32 and int8 weights from the same text (random states unless given)."""
    batch = 1 if text is None else text[0].shape[0]
    reference = run_ours(fp32, steps, batch, greedy=True, text=text)
    free = run_ours(int8, steps, batch, greedy=True, text=text)  # type: ignore[arg-type]
    ref_logits, valid = guided_logits(fp32, reference, text)
    q_logits, _ = guided_logits(int8, reference, text)  # type: ignore[arg-type]
    agree_tf = (ref_logits.argmax(-1) == q_logits.argmax(-1))[:, valid].float().mean()
    p = ref_logits.float().log_softmax(-1)
    q = q_logits.float().log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)[:, valid].mean()
    first_diff = torch.nonzero((reference != free).any(1).any(0))
    return {
        "token_agreement_free_running": float((reference == free).float().mean()),
        "first_divergent_frame": int(first_diff[0]) if first_diff.numel() else reference.shape[-1],
        "token_agreement_teacher_forced": float(agree_tf),
        "kl_nats_per_token": float(kl),
        "steps": steps,
    }


@torch.inference_mode()
def validation_loss(model: TokenLM, data_dir: str, segment_frames: int = 500, batch_size: int = 8) -> float:
    """Mean teacher-forced cross-entropy (text-conditioned, no dropout) over a token cache's valid split.

    The same loss training validates with (``tunesmith.lm.train.window_loss``), over the first window of every
    validation clip, so fp32 and int8 weights are compared on identical batches.
    """
    from tunesmith.conditioning.encoders import get_text_encoder
    from tunesmith.data.cache import FrameCache
    from tunesmith.lm.data import TokenWindows, collate_windows, encode_captions
    from tunesmith.lm.train import window_loss

    c = model.config
    cache = FrameCache(data_dir, "valid")
    states = encode_captions([r["caption"] for r in cache.records], get_text_encoder(c.text_encoder), progress=False)
    windows = TokenWindows(cache, c.num_codebooks, segment_frames, states, None, c.max_text_tokens)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = collate_windows([windows[i] for i in range(start, min(len(windows), start + batch_size))])
        loss, _ = window_loss(model, c, batch)
        total, count = total + float(loss) * len(batch["length"]), count + len(batch["length"])
    return total / count


# ---------------------------------------------------------------------------


def bench_size(name: str, size: dict[str, int], steps: int, batch8_steps: int, repeats: int, bandwidth: float,
               agree_steps: int) -> dict[str, Any]:
    print(f"[{name}] building models", flush=True)
    ours = build_ours(size)
    peer = build_peer(size)
    int8 = quantize_int8(ours)
    K = size["codebooks"]
    result: dict[str, Any] = {
        "config": size,
        "params_ours_M": sum(p.numel() for p in ours.parameters()) / 1e6,
        "params_peer_M": sum(p.numel() for p in peer.parameters()) / 1e6,
        "weight_bytes_per_step_fp32_MB": linear_weight_bytes(ours, skip=("cross.kv",)) / 1e6,
        "weight_bytes_per_step_int8_MB": linear_weight_bytes(int8, skip=("cross.kv",)) / 1e6,
    }
    contenders = {"peer": lambda n, b: run_peer(peer, n, b), "ours_fp32": lambda n, b: run_ours(ours, n, b),
                  "ours_int8": lambda n, b: run_ours(int8, n, b)}  # type: ignore[arg-type]
    for label, batch, n in (("batch1_cfg", 1, steps), ("batch8_cfg", 8, batch8_steps)):
        for fn in contenders.values():  # warm-up (allocator, kernels, lazy tables)
            fn(K + 2, batch)
        best = {key: (float("inf"), 0.0) for key in contenders}
        for r in range(repeats):
            for key, fn in contenders.items():
                seconds, rss = timed(lambda: fn(n, batch))
                print(f"[{name}] {label} {key} run {r}: {n / seconds:.1f} steps/s", flush=True)
                if seconds < best[key][0]:
                    best[key] = (seconds, rss)
        row = {}
        for key, (seconds, rss) in best.items():
            frames = n - K + 1
            row[key] = {"steps_per_s": n / seconds, "audio_s_per_s": batch * frames / FRAME_RATE / seconds,
                        "peak_rss_MB": rss, "steps": n, "batch": batch}
        row["speedup_fp32"] = row["ours_fp32"]["steps_per_s"] / row["peer"]["steps_per_s"]
        row["speedup_int8"] = row["ours_int8"]["steps_per_s"] / row["peer"]["steps_per_s"]
        result[label] = row
    bound_fp32 = bandwidth * 1e9 / (result["weight_bytes_per_step_fp32_MB"] * 1e6)
    bound_int8 = bandwidth * 1e9 / (result["weight_bytes_per_step_int8_MB"] * 1e6)
    result["bandwidth_bound_steps_per_s_fp32"] = bound_fp32
    result["bandwidth_bound_steps_per_s_int8"] = bound_int8
    result["ours_fp32_fraction_of_bound"] = result["batch1_cfg"]["ours_fp32"]["steps_per_s"] / bound_fp32
    result["ours_int8_fraction_of_bound"] = result["batch1_cfg"]["ours_int8"]["steps_per_s"] / bound_int8
    result["peer_fraction_of_bound"] = result["batch1_cfg"]["peer"]["steps_per_s"] / bound_fp32
    if agree_steps:
        print(f"[{name}] int8 quality over {agree_steps} steps", flush=True)
        result["int8_quality"] = quant_quality(ours, int8, agree_steps)
    del peer, ours, int8
    return result


# ---------------------------------------------------------------------------
# a MusicGen checkpoint (transformers layout) through tunesmith.hub

MUSICGEN_CHECKPOINTS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # parity only
        "decoder": dict(vocab_size=16, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                        num_codebooks=4, max_position_embeddings=64),
        "text": dict(vocab_size=16, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3, relative_attention_num_buckets=8),
        "audio": dict(sampling_rate=3200, target_bandwidths=[2.0], hidden_size=16, num_filters=4, upsampling_ratios=[8, 8],
                      codebook_size=16, codebook_dim=16, num_lstm_layers=1),
    },
    "small": {  # facebook/musicgen-small's shapes: its decoder, T5-base, its 32 kHz EnCodec
        "decoder": dict(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
                        num_codebooks=4, max_position_embeddings=2048),
        "text": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
        "audio": dict(sampling_rate=32000, target_bandwidths=[2.2], hidden_size=128, num_filters=64,
                      upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128, num_lstm_layers=2,
                      use_causal_conv=False, use_conv_shortcut=False),
    },
}
MUSICGEN_WORDS = ["<pad>", "</s>", "<unk>", "a", "calm", "piano", "waltz", "for", "strings", "loud", "drums", "jazz"]
MUSICGEN_PROMPT = "a calm piano waltz for strings"


def save_musicgen_checkpoint(directory: Path, size: dict[str, dict[str, Any]]) -> Any:
    """A random MusicGen with a word-level tokenizer, as transformers writes one; returns the model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              PreTrainedTokenizerFast, T5Config)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    N = size["decoder"]["vocab_size"]
    config = MusicgenConfig(text_encoder=T5Config(**size["text"]), audio_encoder=EncodecConfig(**size["audio"]),
                            decoder=MusicgenDecoderConfig(**size["decoder"], pad_token_id=N, bos_token_id=N))
    model = MusicgenForConditionalGeneration(config).eval()
    g = model.generation_config
    g.pad_token_id = g.decoder_start_token_id = g.bos_token_id = N
    g.guidance_scale, g.top_k, g.do_sample, g.max_length = CFG, TOP_K, True, 1500
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(MUSICGEN_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    model.save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(directory)
    return model


@torch.inference_mode()
def musicgen_logits_gap(peer: Any, gen: Any, frames: int) -> float:
    """Max |ours - transformers| over teacher-forced decoder logits of random tokens, with
    the text and with the zeroed text of the unconditional rows."""
    from transformers import AutoTokenizer

    K, N = peer.decoder.num_codebooks, peer.decoder.config.vocab_size
    c = gen.lm.config
    batch = AutoTokenizer.from_pretrained(gen.source)([MUSICGEN_PROMPT, "loud drums"], padding=True, return_tensors="pt")
    tokens = torch.randint(0, N, (2, K, frames), generator=torch.Generator().manual_seed(1))
    steps = to_sequence(tokens, layout(c.pattern, K, frames), fill=N)
    decoder_input = torch.cat([torch.full((2, K, 1), N), steps[:, :, :-1]], 2).reshape(2 * K, -1)
    cond = Conditioning(*gen.text_encoder.encode([MUSICGEN_PROMPT, "loud drums"]))
    theirs = peer(**batch, decoder_input_ids=decoder_input).logits.reshape(2, K, -1, N)
    states = peer.text_encoder(**batch).last_hidden_state
    theirs_null = peer(encoder_outputs=(torch.zeros_like(states),), attention_mask=torch.zeros_like(batch.attention_mask),
                       decoder_input_ids=decoder_input).logits.reshape(2, K, -1, N)
    return max(float((gen.lm(steps, cond) - theirs).abs().max()), float((gen.lm(steps, cond.null()) - theirs_null).abs().max()))


@torch.inference_mode()
def musicgen_greedy(peer: Any, gen: Any, frames: int) -> tuple[bool, float]:
    """Whether greedy decoding with CFG gives transformers' tokens, and the max audio difference."""
    from transformers import AutoTokenizer

    K = peer.decoder.num_codebooks
    seen: list[torch.Tensor] = []
    decode = peer.audio_encoder.decode
    peer.audio_encoder.decode = lambda codes, *a, **k: (seen.append(codes[0].clone()), decode(codes, *a, **k))[1]
    try:
        batch = AutoTokenizer.from_pretrained(gen.source)([MUSICGEN_PROMPT], return_tensors="pt")
        audio = peer.generate(**batch, do_sample=False, guidance_scale=CFG, max_length=frames + K)
    finally:
        peer.audio_encoder.decode = decode
    ours = generate_tokens(gen.lm, frames, Conditioning(*gen.text_encoder.encode([MUSICGEN_PROMPT])), cfg_scale=CFG,
                           temperature=0.0)
    out = gen.generate(MUSICGEN_PROMPT, duration=frames / gen.frame_rate, seed=0, temperature=0.0)
    return bool(torch.equal(ours, seen[0])), float((out.samples - audio.clamp(-1, 1)).abs().max())


def bench_musicgen_checkpoint(name: str, seconds: float, repeats: int) -> dict[str, Any]:
    """Parity on the tiny checkpoint; speed (and logits parity) on the ``name`` one."""
    import tunesmith
    from tunesmith.hub.musicgen import MusicgenGenerator

    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="musicgen-bench-") as tmp:
        tiny_dir = Path(tmp) / "tiny"
        peer = save_musicgen_checkpoint(tiny_dir, MUSICGEN_CHECKPOINTS["tiny"])
        gen = tunesmith.load(str(tiny_dir))
        identical, audio_gap = musicgen_greedy(peer, gen, 40)
        result["parity_tiny"] = {"logits_max_abs": musicgen_logits_gap(peer, gen, 12), "greedy_tokens_identical": identical,
                                 "audio_max_abs": audio_gap, "frames": 40}
        if name == "tiny":
            return result
        result.update({"audio_seconds": seconds, "batch": 1, "cfg": CFG, "top_k": TOP_K, "repeats": repeats,
                       "timing": "end to end, text to audio (T5 + decoding + EnCodec) on both sides; best of repeats"})
        print(f"[musicgen-{name}] building and saving a random checkpoint", flush=True)
        directory = Path(tmp) / name
        peer = save_musicgen_checkpoint(directory, MUSICGEN_CHECKPOINTS[name])
        start = time.perf_counter()
        gen = tunesmith.load(str(directory))
        result["load_seconds_tunesmith"] = time.perf_counter() - start
        int8 = MusicgenGenerator(gen.lm, gen.codec, gen.text_encoder, source=directory, cfg=gen.cfg, int8=True)
        result["params_decoder_M"] = sum(p.numel() for p in gen.lm.parameters()) / 1e6
        result["logits_max_abs"] = musicgen_logits_gap(peer, gen, 8)
        K = gen.lm.config.num_codebooks
        frames = round(seconds * gen.frame_rate)
        steps = frames + K - 1
        from transformers import AutoTokenizer

        batch = AutoTokenizer.from_pretrained(directory)([MUSICGEN_PROMPT], return_tensors="pt")

        def run_peer(length: float) -> None:
            with torch.inference_mode():
                peer.generate(**batch, do_sample=True, top_k=TOP_K, guidance_scale=CFG,
                              max_length=round(length * gen.frame_rate) + K)

        def runner(g: Any) -> Callable[[float], None]:
            def run(length: float) -> None:
                g.text_encoder._cache.clear()  # encode the prompt every time, as transformers does
                g.generate(MUSICGEN_PROMPT, duration=length, seed=0, top_k=TOP_K, cfg=CFG)
            return run

        contenders = {"peer": run_peer, "ours_fp32": runner(gen), "ours_int8": runner(int8)}
        print(f"[musicgen-{name}] warm-up", flush=True)
        for fn in contenders.values():
            fn(0.2)
        best = {key: (float("inf"), 0.0) for key in contenders}
        for r in range(repeats):
            for key, fn in contenders.items():
                elapsed, rss = timed(lambda: fn(seconds))
                print(f"[musicgen-{name}] {key} run {r}: {steps / elapsed:.2f} steps/s ({elapsed:.1f} s)", flush=True)
                if elapsed < best[key][0]:
                    best[key] = (elapsed, rss)
        for key, (elapsed, rss) in best.items():
            result[key] = {"steps_per_s": steps / elapsed, "seconds_per_10s_audio": elapsed * 10 / seconds,
                           "seconds": elapsed, "steps": steps, "peak_rss_MB": rss}
        result["speedup_fp32"] = result["ours_fp32"]["steps_per_s"] / result["peer"]["steps_per_s"]
        result["speedup_int8"] = result["ours_int8"]["steps_per_s"] / result["peer"]["steps_per_s"]
        del peer, gen, int8
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (same ratios, under 5 minutes)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--sizes", default="bundled,musicgen-small", help="comma-separated subset of: " + ", ".join(SIZES) + " ('none': only the --model quality)")
    parser.add_argument("--musicgen", default="small", choices=["small", "tiny", "none"],
                        help="a MusicGen checkpoint through tunesmith.load vs transformers (tiny: parity only)")
    parser.add_argument("--update", action="store_true", help="merge into an existing --json file, keeping the sections not run")
    parser.add_argument("--model", default=None, help="a trained LM model directory: also measure int8 quality on it")
    parser.add_argument("--valid-data", default=None,
                        help="with --model: a token cache whose valid split gives the int8 change in validation loss")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bandwidth = measure_bandwidth()
    plan = {  # (steps at batch 1, steps at batch 8, repeats, int8 agreement steps)
        "bundled": (150, 40, 2, 200) if args.quick else (500, 100, 3, 500),
        "musicgen-small": (30, 10, 2, 60) if args.quick else (150, 40, 2, 500),
    }
    results: dict[str, Any] = {}
    for name in [n for n in args.sizes.split(",") if n and n != "none"]:
        if name not in plan:
            raise SystemExit(f"unknown size {name!r} (known: {', '.join(SIZES)}, none)")
        steps, steps8, repeats, agree = plan[name]
        results[name] = bench_size(name, SIZES[name], steps, steps8, repeats, bandwidth, agree)
    if args.musicgen != "none":  # seconds of audio, repeats (each run of the peer at this size takes minutes)
        seconds, repeats = (2.0, 1) if args.quick else (10.0, 1)
        results["musicgen-checkpoint"] = bench_musicgen_checkpoint(args.musicgen, seconds, repeats)
    if args.model:  # random weights give near-flat logits; a trained model shows the real cost
        from tunesmith.checkpoint import load_model

        from tunesmith.conditioning.encoders import get_text_encoder

        trained = load_model(args.model)
        trained_int8 = quantize_int8(trained)
        # Real prompts: random text states drive a trained model into a constant loop, where one
        # near-tie decides a whole codebook.  The 500-step greedy comparison, per prompt.
        prompts = ["Gentle solo piano in A minor, 72 BPM", "Bright brass fanfare in B-flat major, 120 BPM",
                   "A string quartet in D minor at 84 BPM", "Cheerful flute and clarinet duet, G major, 108 BPM"]
        text = get_text_encoder(trained.config.text_encoder).encode(prompts)
        quality = quant_quality(trained, trained_int8, 500, text)
        quality["prompts"] = prompts
        if args.valid_data:
            fp32_loss, int8_loss = validation_loss(trained, args.valid_data), validation_loss(trained_int8, args.valid_data)
            quality.update({"valid_loss_fp32": fp32_loss, "valid_loss_int8": int8_loss,
                            "valid_loss_change": int8_loss - fp32_loss})
        results["trained_model_int8_quality"] = quality
    out: dict[str, Any] = {}
    if "bundled" in results:
        out["speedup_bundled"] = results["bundled"]["batch1_cfg"]["speedup_fp32"]
    if "musicgen-small" in results:
        small = results["musicgen-small"]
        out["speedup_small_fp32"] = small["batch1_cfg"]["speedup_fp32"]
        out["speedup_small_quant"] = small["batch1_cfg"]["speedup_int8"]
        out["token_agreement_quant"] = small["int8_quality"]["token_agreement_free_running"]
        out["token_agreement_quant_teacher_forced"] = small["int8_quality"]["token_agreement_teacher_forced"]
        out["kl_quant_nats_per_token"] = small["int8_quality"]["kl_nats_per_token"]
    if "musicgen-checkpoint" in results:
        checkpoint = results["musicgen-checkpoint"]
        out["musicgen_logits_max_abs"] = checkpoint["parity_tiny"]["logits_max_abs"]
        out["musicgen_greedy_tokens_identical"] = checkpoint["parity_tiny"]["greedy_tokens_identical"]
        out["musicgen_audio_max_abs"] = checkpoint["parity_tiny"]["audio_max_abs"]
        if "speedup_int8" in checkpoint:
            out["musicgen_small_logits_max_abs"] = checkpoint["logits_max_abs"]
            out["speedup_musicgen_small_fp32"] = checkpoint["speedup_fp32"]
            out["speedup_musicgen_small_int8"] = checkpoint["speedup_int8"]
            out["musicgen_small_seconds_per_10s"] = {k: checkpoint[k]["seconds_per_10s_audio"]
                                                     for k in ("peer", "ours_fp32", "ours_int8")}
        checkpoint["run"] = {"quick": args.quick, "threads": args.threads, "load_average": os.getloadavg()}
    out.update({
        "quick": args.quick, "threads": args.threads, "bandwidth_GBps": bandwidth,
        "load_average": os.getloadavg(), "torch": torch.__version__, "machine": platform.machine(),
        "sizes": results,
        "notes": "random weights; int8 = dynamic int8 linear (int8 weights, per-call activation quantisation); "
                 "token agreement on random weights is a pessimistic proxy (near-flat logits flip easily)",
    })
    if args.json:
        if args.update and Path(args.json).is_file():  # keep the sections not run this time, and their run's
            previous = json.loads(Path(args.json).read_text())  # settings (each section keeps its own under "run")
            metadata = ("quick", "threads", "bandwidth_GBps", "load_average", "torch", "machine", "sizes", "notes")
            for result in results.values():
                result.setdefault("run", {"quick": args.quick, "threads": args.threads, "load_average": os.getloadavg()})
            out = {**previous, **{k: v for k, v in out.items() if k not in metadata},
                   "sizes": {**previous.get("sizes", {}), **results}}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    line = ", ".join(f"{k}={out[k]:.3g}" for k in ("speedup_bundled", "speedup_small_fp32", "speedup_small_quant",
                                                  "token_agreement_quant", "musicgen_logits_max_abs",
                                                  "speedup_musicgen_small_fp32", "speedup_musicgen_small_int8") if k in out)
    print(f"lm_decode: {line} (threads={args.threads}, bandwidth {bandwidth:.1f} GB/s)")


if __name__ == "__main__":
    main()
