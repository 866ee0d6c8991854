"""`tunesmith data ...`: build the open corpus, index user audio, write shards, inspect."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build the open corpus, index user audio, write shards")
    sub = parser.add_subparsers(dest="data_verb", metavar="SUBVERB")

    b = sub.add_parser("build-corpus", help="render public-domain scores into a captioned clip corpus")
    b.add_argument("--out", required=True, help="output folder (manifest.jsonl, audio/, midi/, CARD.md)")
    b.add_argument("--hours", type=float, required=True, help="hours of audio to build")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sample-rate", type=int, default=24000)
    b.add_argument("--channels", type=int, default=1, choices=(1, 2))
    b.add_argument("--min-clip", type=float, default=10.0, help="shortest clip, seconds")
    b.add_argument("--max-clip", type=float, default=30.0, help="longest clip, seconds")
    b.add_argument("--max-clips-per-render", type=int, default=4)
    b.add_argument("--sources", nargs="+", default=["music21"],
                   help="'music21' (its bundled corpus) and/or folders of MusicXML/MXL/ABC/Humdrum/MIDI files")
    b.add_argument("--metadata", help="CSV/JSONL with a 'path' column (relative to a source folder) used to filter")
    b.add_argument("--min-rating", type=float, help="keep metadata rows with rating >= this")
    b.add_argument("--require-tag", action="append", default=[], help="keep metadata rows having this tag")
    b.add_argument("--soundfont", help="General MIDI .sf2 (default: found automatically)")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--format", dest="audio_format", default="flac", choices=("flac", "wav"))
    b.set_defaults(func=_build)

    s = sub.add_parser("stats", help="print a manifest's summary (hours, clips, histograms)")
    s.add_argument("manifest")
    s.set_defaults(func=_stats)

    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    _register_optional(sub)


def _register_optional(sub: argparse._SubParsersAction) -> None:
    """Sub-verbs living in their own modules (user indexing, shards)."""
    from tunesmith.data import index_cli, shards_cli

    index_cli.register(sub)
    shards_cli.register(sub)


def _build(args: argparse.Namespace) -> int:
    from tunesmith.cli import UserError
    from tunesmith.data.corpus import BuildOptions, build_corpus

    try:
        options = BuildOptions(out=args.out, hours=args.hours, seed=args.seed, sample_rate=args.sample_rate,
                               channels=args.channels, min_clip=args.min_clip, max_clip=args.max_clip,
                               max_clips_per_render=args.max_clips_per_render, sources=args.sources,
                               metadata=args.metadata, min_rating=args.min_rating, require_tags=args.require_tag,
                               soundfont=args.soundfont, workers=args.workers, audio_format=args.audio_format)
    except ValueError as err:
        raise UserError(str(err)) from None
    summary = build_corpus(options)
    print(f"built {summary['hours']} h in {summary['clips']} clips from {summary['works']} works "
          f"({summary['skipped']['count']} skipped) -> {args.out}/manifest.jsonl")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from tunesmith.data.card import summarize
    from tunesmith.data.manifest import read_manifest

    json.dump(summarize(read_manifest(args.manifest)), sys.stdout, indent=2)
    print()
    return 0
