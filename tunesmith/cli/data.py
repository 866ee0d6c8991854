"""`tunesmith data ...`: build the open corpus, index user audio, write shards, inspect.

    tunesmith data build-corpus --out DIR --hours H [--seed N] ...
    tunesmith data index FOLDER [--out DIR] [--captions TABLE] ...
    tunesmith data shards MANIFEST --out DIR
    tunesmith data stats MANIFEST
    tunesmith data caption DIR|FILE [--out manifest.jsonl]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from types import ModuleType

from tunesmith.errors import UserError


def _needs_extra(module: str) -> ModuleType:
    """Import a data module whose packages come with the ``[data]`` extra; say how to get them."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = err.name or "a package"
        raise UserError(f"this command needs {missing}, part of the data extra: pip install 'tunesmith[data]'") from None


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
    b.add_argument("--soundfont", help="one General MIDI .sf2/.sf3 for every render (default: all installed, "
                   "one per render by the seed)")
    b.add_argument("--soundfonts", nargs="+", default=[], metavar="SF",
                   help="several SoundFonts, one per render drawn by the seed (default: every installed GM bank)")
    b.add_argument("--no-humanize", action="store_true",
                   help="render on the grid with the arranger's mix (default: humanised timing, velocity and mix)")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--format", dest="audio_format", default="flac", choices=("flac", "wav"))
    b.set_defaults(func=_build)

    s = sub.add_parser("stats", help="print a manifest's summary (hours, clips, histograms)")
    s.add_argument("manifest")
    s.set_defaults(func=_stats)

    _register_index(sub)
    _register_shards(sub)
    _register_caption(sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def _build(args: argparse.Namespace) -> int:
    corpus = _needs_extra("tunesmith.data.corpus")
    BuildOptions, build_corpus = corpus.BuildOptions, corpus.build_corpus
    if "music21" in args.sources:
        _needs_extra("music21")
    try:
        options = BuildOptions(out=args.out, hours=args.hours, seed=args.seed, sample_rate=args.sample_rate,
                               channels=args.channels, min_clip=args.min_clip, max_clip=args.max_clip,
                               max_clips_per_render=args.max_clips_per_render, sources=args.sources,
                               metadata=args.metadata, min_rating=args.min_rating, require_tags=args.require_tag,
                               soundfont=args.soundfont, soundfonts=args.soundfonts, humanize=not args.no_humanize,
                               workers=args.workers, audio_format=args.audio_format)
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


# `tunesmith data index FOLDER`: a folder of the user's audio -> manifest.jsonl


def _register_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a folder of audio files with captions into a manifest")
    p.add_argument("folder")
    p.add_argument("--out", help="where manifest.jsonl (and processed clips) go; default: the folder")
    p.add_argument("--captions", help="CSV/JSONL table with 'file' and 'caption' columns (other columns -> tags)")
    p.add_argument("--default-caption", help="caption for files without one (default: skip them)")
    p.add_argument("--sample-rate", type=int, help="resample clips to this rate")
    p.add_argument("--channels", type=int, choices=(1, 2), help="mix to mono or duplicate to stereo")
    p.add_argument("--segment", type=float, help="cut files into clips of at most this many seconds")
    p.add_argument("--min-seconds", type=float, default=1.0, help="skip files/clips shorter than this")
    p.add_argument("--loudness-db", type=float, help="normalise each clip to this RMS level, e.g. -20")
    p.set_defaults(func=_index)


def _index(args: argparse.Namespace) -> int:
    from tunesmith.data.index import IndexOptions, index_folder

    report = index_folder(IndexOptions(folder=args.folder, out=args.out, captions=args.captions,
                                       sample_rate=args.sample_rate, channels=args.channels,
                                       segment_seconds=args.segment, min_seconds=args.min_seconds,
                                       loudness_db=args.loudness_db, default_caption=args.default_caption))
    for s in report["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}")
    print(f"indexed {report['indexed_files']} of {report['files']} files into {report['clips']} clips "
          f"({report['hours']} h); {len(report['skipped'])} skipped")
    return 0


# `tunesmith data shards MANIFEST --out DIR`: a manifest's clips -> WebDataset tar shards


def _register_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write WebDataset tar shards from a manifest")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for <split>-000000.tar ...")
    p.add_argument("--split", action="append", help="only these splits (default: all)")
    p.add_argument("--max-count", type=int, default=1000, help="clips per shard")
    p.add_argument("--max-mb", type=float, default=256.0, help="megabytes per shard")
    p.set_defaults(func=_shards)


def _shards(args: argparse.Namespace) -> int:
    from tunesmith.data.shards import write_shards

    written = write_shards(args.manifest, args.out, splits=args.split, max_count=args.max_count,
                           max_bytes=int(args.max_mb * 2**20))
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shard(s)")
    return 0


# `tunesmith data caption DIR|FILE`: time-aware captions (sections with times) into a manifest


def _register_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption audio with time-stamped sections (tempo, key, families, "
                                       "loudness, form) into a manifest that trains directly")
    p.add_argument("target", metavar="DIR|FILE", help="an audio file, or a folder searched recursively")
    p.add_argument("--out", help="manifest to write (default: manifest.jsonl beside the audio)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="caption at most this much of each file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_caption)


def _caption(args: argparse.Namespace) -> int:
    from tunesmith.data.captioner import CaptionerConfig, TimeCaptioner, caption_files

    try:
        config = CaptionerConfig(max_seconds=args.max_seconds)
    except ValueError as err:
        raise UserError(f"--max-seconds: {err}") from None
    report = caption_files(args.target, args.out, captioner=TimeCaptioner(config), progress=not args.no_progress)
    for s in report["skipped"]:
        print(f"skipped {s['file']}: {s['reason']}")
    if not report["captioned"]:
        raise UserError(f"no file could be captioned ({len(report['skipped'])} skipped); nothing written")
    print(f"captioned {report['captioned']} file(s), {len(report['skipped'])} skipped -> {report['manifest']}")
    return 0
