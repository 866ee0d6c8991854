"""`tunesmith codec`: encode, decode, eval, cache and export the neural codecs (train them with
`tunesmith train codec` / `tunesmith train vae`).

    tunesmith codec encode song.wav song.npz [--model codec-24k] [--num-codebooks 4]
    tunesmith codec decode song.npz song.wav
    tunesmith codec eval --model codec-24k --manifest corpus/manifest.jsonl --split test
    tunesmith codec cache --manifest corpus/manifest.jsonl --out caches/tokens [--model vae-24k]
    tunesmith codec roundtrip --manifest corpus/manifest.jsonl --out corpus-codec [--num-codebooks 4]
    tunesmith codec export --run runs/codec-v1 --out models/codec-24k
    tunesmith codec curves rvq=runs/codec-v1 vae=runs/vae-v1 --out docs/codec_curves.png

An .npz holds ``tokens`` (K, F) int16 or ``latents`` (D, F) float32 plus ``sample_rate``,
``channels``, ``num_samples`` and ``model``; it contains no object arrays and is read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

DEFAULT_MODEL = "codec-24k"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codec", help="encode/decode audio with the neural codec, evaluate, cache or export it")
    verbs = p.add_subparsers(dest="codec_verb", metavar="ACTION", required=True)

    e = verbs.add_parser("encode", help="audio file -> .npz of tokens (RVQ) or latents (VAE)")
    e.add_argument("input")
    e.add_argument("output")
    e.add_argument("--model", default=DEFAULT_MODEL, help="codec name or directory (default: codec-24k)")
    e.add_argument("--num-codebooks", type=int, default=None, help="RVQ: use the first K codebooks (lower bitrate)")
    e.add_argument("--chunk-seconds", type=float, default=30.0)
    e.set_defaults(func=_encode)

    d = verbs.add_parser("decode", help=".npz from 'encode' -> audio file")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--model", default=None, help="codec to decode with (default: the one named in the .npz)")
    d.add_argument("--chunk-seconds", type=float, default=30.0)
    d.set_defaults(func=_decode)

    v = verbs.add_parser("eval", help="reconstruction metrics (mel, STFT, SI-SDR, speed, code usage) on clips")
    v.add_argument("--model", default=DEFAULT_MODEL)
    source = v.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="corpus manifest (JSONL)")
    source.add_argument("--folder", help="a folder of audio files")
    v.add_argument("--split", default="test")
    v.add_argument("--max-clips", type=int, default=32)
    v.add_argument("--max-seconds", type=float, default=10.0)
    v.add_argument("--json", default=None, help="also write the results here")
    v.set_defaults(func=_eval)

    c = verbs.add_parser("cache", help="encode a manifest's splits into a frame cache for the LM / diffusion")
    c.add_argument("--manifest", required=True)
    c.add_argument("--out", required=True, help="cache directory")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    c.add_argument("--num-codebooks", type=int, default=None)
    c.add_argument("--max-clips", type=int, default=None, help="per split (for quick trials)")
    c.set_defaults(func=_cache)

    r = verbs.add_parser("roundtrip", help="a copy of a corpus with every clip through the codec (training augmentation)")
    r.add_argument("--manifest", required=True, help="the corpus manifest (JSONL)")
    r.add_argument("--out", required=True, help="folder for manifest.jsonl and audio/ of the round trips")
    r.add_argument("--model", default=DEFAULT_MODEL, help="codec name or directory")
    r.add_argument("--num-codebooks", type=int, default=None, help="RVQ codebooks to keep (default all)")
    r.set_defaults(func=_roundtrip)

    x = verbs.add_parser("export", help="write a model directory (+ eval JSON) from a run's latest checkpoint")
    x.add_argument("--run", required=True, help="run directory of 'tunesmith train codec|vae'")
    x.add_argument("--out", required=True)
    x.add_argument("--eval-manifest", default=None, help="also evaluate on this manifest's test split")
    x.add_argument("--eval-clips", type=int, default=32)
    x.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    x.set_defaults(func=_export)

    g = verbs.add_parser("curves", help="plot training curves of runs to a PNG")
    g.add_argument("runs", nargs="+", help="run directories (label=DIR to name them)")
    g.add_argument("--out", required=True, help="PNG path")
    g.set_defaults(func=_curves)


# ---------------------------------------------------------------------------


def _load(name: str):
    from tunesmith.codec import load_codec

    return load_codec(name)


def _encode(args: argparse.Namespace) -> int:
    from tunesmith.audio import load_audio
    from tunesmith.codec.model import RVQCodec
    from tunesmith.errors import UserError

    codec = _load(args.model)
    audio = load_audio(args.input, codec.sample_rate, codec.channels)
    wav = audio.samples[None]
    fields: dict[str, np.ndarray] = {
        "sample_rate": np.int64(codec.sample_rate),
        "channels": np.int64(codec.channels),
        "num_samples": np.int64(wav.shape[-1]),
        "frame_rate": np.float64(codec.frame_rate),
        "model": np.array(str(args.model)),
    }
    if isinstance(codec, RVQCodec):
        try:
            tokens = codec.encode_long(wav, args.num_codebooks, chunk_seconds=args.chunk_seconds)
        except ValueError as err:
            raise UserError(str(err)) from None
        fields["tokens"] = tokens[0].numpy().astype(np.int16)
    else:
        if args.num_codebooks is not None:
            raise UserError("--num-codebooks applies to RVQ codecs only")
        fields["latents"] = codec.encode_long(wav, chunk_seconds=args.chunk_seconds)[0].numpy().astype(np.float32)
    np.savez(args.output, **fields)
    shape = fields.get("tokens", fields.get("latents")).shape  # type: ignore[union-attr]
    print(f"{args.input}: {audio.duration:.2f} s -> {args.output} {shape} at {codec.frame_rate:g} frames/s")
    return 0


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read an .npz written by ``codec encode`` (never unpickling anything)."""
    from tunesmith.errors import UserError

    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if ("tokens" in fields) == ("latents" in fields) or "num_samples" not in fields:
        raise UserError(f"{path} is not a codec .npz (needs 'tokens' or 'latents', and 'num_samples')")
    return fields


def _decode(args: argparse.Namespace) -> int:
    from tunesmith.audio import save_audio
    from tunesmith.codec.model import RVQCodec
    from tunesmith.errors import UserError

    fields = read_npz(args.input)
    if args.model:
        codec = _load(args.model)
    else:  # a name read from the file is never fetched from the network: it may come from anyone
        from tunesmith.checkpoint import resolve

        codec = _load(str(resolve(str(fields["model"]) if "model" in fields else DEFAULT_MODEL, allow_download=False)))
    if int(fields.get("sample_rate", codec.sample_rate)) != codec.sample_rate:
        raise UserError(f"{args.input} was encoded at {int(fields['sample_rate'])} Hz, the codec runs at {codec.sample_rate} Hz")
    try:
        if "tokens" in fields:
            if not isinstance(codec, RVQCodec):
                raise UserError(f"{args.input} holds tokens but the model is a VAE")
            wav = codec.decode_long(torch.from_numpy(fields["tokens"].astype(np.int64))[None], args.chunk_seconds)
        else:
            if isinstance(codec, RVQCodec):
                raise UserError(f"{args.input} holds latents but the model is an RVQ codec")
            wav = codec.decode_long(torch.from_numpy(fields["latents"].astype(np.float32))[None], args.chunk_seconds)
    except ValueError as err:
        raise UserError(str(err)) from None
    wav = wav[0, :, : int(fields["num_samples"])]
    save_audio(args.output, wav, codec.sample_rate)
    print(f"{args.input} -> {args.output} ({wav.shape[-1] / codec.sample_rate:.2f} s)")
    return 0


def _clips(args: argparse.Namespace, codec) -> list:
    from tunesmith.codec.evaluate import folder_clips, manifest_clips

    if args.manifest:
        return list(manifest_clips(args.manifest, args.split, codec.sample_rate, codec.channels, args.max_clips,
                                   args.max_seconds))
    return list(folder_clips(args.folder, codec.sample_rate, codec.channels, args.max_clips, args.max_seconds))


def _eval(args: argparse.Namespace) -> int:
    from tunesmith.codec.evaluate import evaluate_codec

    codec = _load(args.model)
    result = {"model": args.model, "set": args.manifest or args.folder, **evaluate_codec(codec, _clips(args, codec))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from tunesmith.codec.model import RVQCodec
    from tunesmith.data.cache import write_frame_cache
    from tunesmith.data.datasets import AudioClipDataset
    from tunesmith.errors import UserError

    codec = _load(args.model)
    rvq = isinstance(codec, RVQCodec)
    if not rvq and args.num_codebooks is not None:
        raise UserError("--num-codebooks applies to RVQ codecs only")
    meta = {"kind": "tokens" if rvq else "latents", "model": str(args.model), "frame_rate": codec.frame_rate,
            "sample_rate": codec.sample_rate, "channels": codec.channels}
    if rvq:
        meta["num_codebooks"] = args.num_codebooks or codec.num_codebooks
    else:
        meta["latent_dim"] = codec.latent_dim

    for split in args.splits:
        data = AudioClipDataset(args.manifest, split, codec.sample_rate, codec.channels, segment_seconds=None)
        n = min(len(data), args.max_clips or len(data))

        def items(data=data, n=n, split=split):
            for i in tqdm(range(n), desc=f"cache {split}"):
                item, record = data[i], data.records[i]
                wav = item["audio"][None]
                frames = codec.encode_long(wav, args.num_codebooks) if rvq else codec.encode_long(wav)
                yield np.ascontiguousarray(frames[0].T.numpy()), {"id": record["id"], "caption": record["caption"],
                                            "tags": record["tags"], "duration": record["duration"]}

        write_frame_cache(args.out, split, items(), meta)
        print(f"{split}: {n} clips -> {args.out}")
    return 0


def _roundtrip(args: argparse.Namespace) -> int:
    from tunesmith.codec.roundtrip import round_trip_manifest

    path = round_trip_manifest(_load(args.model), args.manifest, args.out, args.num_codebooks)
    print(f"round trips of {args.manifest} -> {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tunesmith.codec.evaluate import evaluate_codec, manifest_clips
    from tunesmith.codec.export import export_run
    from tunesmith.codec import load_codec

    path = export_run(args.run, args.out, fp16=not args.fp32)
    print(f"model written to {path}")
    if args.eval_manifest:
        codec = load_codec(path)
        clips = list(manifest_clips(args.eval_manifest, "test", codec.sample_rate, codec.channels, args.eval_clips))
        result = {"model": path.name, "set": f"{args.eval_manifest} (test split, {len(clips)} clips, <= 10 s each)",
                  **evaluate_codec(codec, clips)}
        (path / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["metrics"], indent=2))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from tunesmith.codec.curves import plot_runs

    runs = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in args.runs)
    print(f"wrote {plot_runs(runs, args.out)}")
    return 0
