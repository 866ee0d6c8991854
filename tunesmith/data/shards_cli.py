"""`tunesmith data shards MANIFEST --out DIR`: pack a manifest's clips into WebDataset tar shards."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write WebDataset tar shards from a manifest")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for <split>-000000.tar ...")
    p.add_argument("--split", action="append", help="only these splits (default: all)")
    p.add_argument("--max-count", type=int, default=1000, help="clips per shard")
    p.add_argument("--max-mb", type=float, default=256.0, help="megabytes per shard")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tunesmith.data.shards import write_shards

    written = write_shards(args.manifest, args.out, splits=args.split, max_count=args.max_count,
                           max_bytes=int(args.max_mb * 2**20))
    for split, paths in written.items():
        print(f"{split}: {len(paths)} shard(s)")
    return 0
