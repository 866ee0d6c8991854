"""`tunesmith data index DIR`: a folder of the user's audio -> manifest.jsonl."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
