"""The clip manifest: one JSON object per line, the single format every dataset reader shares.

Fields of a line: ``id``, ``audio`` (path relative to the manifest's folder), ``caption``,
``tags`` (dict), ``duration`` (seconds), ``sample_rate``, ``channels``, ``split``
(train/valid/test) and ``source`` (the work or file it came from).  Extra fields are kept.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from tunesmith.errors import UserError
from tunesmith.files import atomic_path

REQUIRED_FIELDS = ("id", "audio", "caption", "tags", "duration", "sample_rate", "channels", "split", "source")
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (("train", 0.9), ("valid", 0.05), ("test", 0.05))


class ManifestError(UserError):
    """A manifest or side table that cannot be used: the message names the file and line."""


# Ids and splits live here, not in the corpus builder, so that indexing the user's own
# audio needs none of the score/MIDI packages of the ``[data]`` extra.


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def split_of(work_id: str) -> str:
    """train/valid/test by a hash of the work id: a work (all its renders) sits in one split only."""
    u = stable_hash("split:" + work_id) / 2**64
    total = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        total += fraction
        if u < total:
            return name
    return SPLIT_FRACTIONS[-1][0]


def slug(text: str) -> str:
    """``text`` as a file-name-safe id (runs of other characters become one ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a user's side table (captions, metadata): JSONL by suffix, otherwise CSV with a header.

    Every row is a dict of str keys; a malformed table raises :class:`ManifestError`
    naming the file (and line), never a bare parser error.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        return [row for _, row in jsonl_objects(path)]
    try:
        with path.open(encoding="utf-8", newline="") as f:
            # a row longer than the header puts its extra cells under None; drop them
            return [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise ManifestError(f"{path}: not a valid CSV table ({err})") from None


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL manifest, checked for the required fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    records = []
    for number, record in jsonl_objects(path):
        check_record(record, f"{path}:{number}")
        records.append(record)
    return records


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file; a line that is not a JSON
    object, or text that is not UTF-8, is a :class:`ManifestError` naming the file and line."""
    number = 0
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{path}:{number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ManifestError(f"{path}:{number}: expected a JSON object")
                yield number, row
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}:{number + 1}: not UTF-8 text (byte {err.start})") from None


def check_record(record: Any, where: str = "record") -> None:
    """Raise :class:`ManifestError` naming the first missing or malformed field."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(record["audio"], str) or not record["audio"]:
        raise ManifestError(f"{where}: 'audio' must be a path (a non-empty string)")
    if not isinstance(record["caption"], str):
        raise ManifestError(f"{where}: 'caption' must be a string")
    if not isinstance(record["tags"], dict):
        raise ManifestError(f"{where}: 'tags' must be an object")
    if not (isinstance(record["duration"], (int, float)) and record["duration"] > 0):
        raise ManifestError(f"{where}: 'duration' must be a positive number")


def manifest_line(record: dict[str, Any]) -> str:
    """One canonical JSON line (sorted keys, so equal records give equal bytes)."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_manifest(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSONL atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            check_record(record, f"record {i}")
            f.write(manifest_line(record) + "\n")
    return path


def resolve_audio(manifest_path: str | Path, record: dict[str, Any]) -> Path:
    """Absolute path of a record's audio file (relative paths are from the manifest's folder)."""
    audio = Path(record["audio"])
    return audio if audio.is_absolute() else Path(manifest_path).resolve().parent / audio
