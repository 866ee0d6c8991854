"""The clip manifest: one JSON object per line, the single format every dataset reader shares.

Fields of a line: ``id``, ``audio`` (path relative to the manifest's folder), ``caption``,
``tags`` (dict), ``duration`` (seconds), ``sample_rate``, ``channels``, ``split``
(train/valid/test) and ``source`` (the work or file it came from).  Extra fields are kept.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tunesmith.files import atomic_path
from typing import Any, Iterable

REQUIRED_FIELDS = ("id", "audio", "caption", "tags", "duration", "sample_rate", "channels", "split", "source")
SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A manifest line that is not valid JSON or lacks a required field."""


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a user's side table (captions, metadata): JSONL by suffix, otherwise CSV with a header."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL manifest, checked for the required fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            check_record(record, f"{path}:{number}")
            records.append(record)
    return records


def check_record(record: Any, where: str = "record") -> None:
    """Raise :class:`ManifestError` naming the first missing or malformed field."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
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
