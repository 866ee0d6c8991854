"""Which works the corpus draws from: music21's bundled corpus and user folders of scores.

Listing is cheap (file names and the ``X:`` numbers of ABC collections, no parsing), so a
build can plan the whole work order before rendering anything.  :func:`scan_folder` is
also how ``tunesmith data index`` lists audio, so both report what they leave out.
This module imports nothing of the ``[data]`` extra (music21 only inside a function).
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.manifest import ManifestError, read_table, slug, stable_hash

SCORE_SUFFIXES = (".mxl", ".musicxml", ".xml", ".krn", ".abc", ".mid", ".midi")

# music21 corpus folder -> (composer, era, group).  Folders of modern (possibly copyrighted)
# composers, analyses (.rntxt) and teaching snippets are left out on purpose.
M21_COLLECTIONS: dict[str, tuple[str, str, str]] = {
    "airdsAirs": ("traditional", "traditional", "folk"),
    "essenFolksong": ("traditional", "traditional", "folk"),
    "miscFolk": ("traditional", "traditional", "folk"),
    "nottingham-dataset": ("traditional", "traditional", "folk"),
    "oneills1850": ("traditional", "traditional", "folk"),
    "ryansMammoth": ("traditional", "traditional", "folk"),
    "bach": ("J. S. Bach", "baroque", "bach"),
    "cpebach": ("C. P. E. Bach", "classical", "classical"),
    "corelli": ("Arcangelo Corelli", "baroque", "classical"),
    "handel": ("George Frideric Handel", "baroque", "classical"),
    "beethoven": ("Ludwig van Beethoven", "classical", "classical"),
    "haydn": ("Joseph Haydn", "classical", "classical"),
    "mozart": ("Wolfgang Amadeus Mozart", "classical", "classical"),
    "chopin": ("Frédéric Chopin", "romantic", "classical"),
    "schubert": ("Franz Schubert", "romantic", "classical"),
    "schumann_clara": ("Clara Schumann", "romantic", "classical"),
    "schumann_robert": ("Robert Schumann", "romantic", "classical"),
    "verdi": ("Giuseppe Verdi", "romantic", "classical"),
    "weber": ("Carl Maria von Weber", "romantic", "classical"),
    "joplin": ("Scott Joplin", "romantic", "classical"),
    "liliuokalani": ("Liliʻuokalani", "romantic", "classical"),
    "palestrina": ("Giovanni Pierluigi da Palestrina", "renaissance", "early"),
    "josquin": ("Josquin des Prez", "renaissance", "early"),
    "lusitano": ("Vicente Lusitano", "renaissance", "early"),
    "monteverdi": ("Claudio Monteverdi", "renaissance", "early"),
    "ciconia": ("Johannes Ciconia", "medieval", "early"),
    "luca": ("Gregorio Luca", "medieval", "early"),
    "trecento": ("anonymous", "medieval", "early"),
}

COLLECTION_LABELS = {
    "airdsAirs": "Aird's Selection of Scotch, English, Irish and Foreign Airs",
    "essenFolksong": "the Essen folksong collection",
    "miscFolk": "a folk song collection",
    "nottingham-dataset": "the Nottingham folk tune collection",
    "oneills1850": "O'Neill's Music of Ireland",
    "ryansMammoth": "Ryan's Mammoth Collection",
}


@dataclass(frozen=True)
class WorkRef:
    """Where one work lives: a file, and for ABC collections the tune number inside it."""

    id: str
    path: str
    number: int | None
    composer: str
    era: str
    collection: str
    group: str  # sampling stratum: folk, bach, classical, early, user
    title: str = ""

    def parse_meta(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "composer": self.composer, "era": self.era,
                "collection": self.collection}


_KINDS = ((stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def scan_folder(folder: str | Path, suffixes: tuple[str, ...],
                exclude: str | Path | None = None) -> tuple[list[Path], list[dict[str, str]]]:
    """(regular files under ``folder`` with one of ``suffixes``, sorted; what was left out, with why).

    Nothing is opened here, so a fifo or a link to ``/dev/zero`` cannot block or flood a
    build: such entries (and broken links) are reported, as are folders that cannot be
    listed.  Folder links are followed once each; a loop is reported, not followed.
    ``exclude`` (a folder, e.g. the indexer's own output) is left out silently.
    """
    folder = Path(folder)
    skip_key = _dir_key(Path(exclude)) if exclude is not None else None
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        here = stack.pop()
        rel = str(here.relative_to(folder))
        try:
            key = _dir_key(here)
            if key in seen:
                skipped.append({"file": rel, "reason": "folder already listed (a link loop or a second link to it)"})
                continue
            seen.add(key)
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if here == folder:
                raise  # the folder itself: the user's error, with the path in the message
            skipped.append({"file": rel, "reason": f"folder not readable ({err.strerror or err})"})
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = str(path.relative_to(folder))
            try:
                info = os.stat(path)  # follows links: what the path would open
            except OSError as err:
                if path.suffix.lower() in suffixes:
                    reason = "broken link" if entry.is_symlink() else f"not readable ({err.strerror or err})"
                    skipped.append({"file": rel, "reason": reason})
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) != skip_key:
                    stack.append(path)
            elif path.suffix.lower() not in suffixes:
                continue
            elif stat.S_ISREG(info.st_mode):
                files.append(path)
            else:
                kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
                skipped.append({"file": rel, "reason": f"not a regular file ({kind})"})
    return sorted(files), sorted(skipped, key=lambda s: s["file"])


def _dir_key(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def unique_stems(rels: list[str]) -> dict[str, str]:
    """An id stem per relative path: the path without its suffix, or with it where stems clash.

    ``broken.abc`` and ``broken.mid`` would otherwise share one id, and one of them would
    vanish from the build and from its skip list.  Ids are compared as the file names
    they become (slugged, case-folded); what still clashes gets a hash of its path.
    """
    def key(stem: str) -> str:
        return slug(stem).casefold()

    bare = {r: str(Path(r).with_suffix("")) for r in rels}
    counts = Counter(key(s) for s in bare.values())
    stems = {r: s if counts[key(s)] == 1 else r for r, s in bare.items()}
    counts = Counter(key(s) for s in stems.values())
    return {r: s if counts[key(s)] == 1 else f"{s}~{stable_hash(r) % 16**8:08x}" for r, s in stems.items()}


def abc_numbers(path: Path) -> list[int]:
    """The ``X:`` reference numbers of an ABC file, in file order, without duplicates."""
    text = path.read_text(encoding="utf-8", errors="replace")
    seen: list[int] = []
    for match in re.finditer(r"^X:\s*(\d+)", text, re.M):
        n = int(match.group(1))
        if n not in seen:
            seen.append(n)
    return seen


def music21_works() -> list[WorkRef]:
    """Every usable work of music21's bundled corpus, sorted by id."""
    from music21 import corpus

    root = Path(corpus.__file__).parent
    works = []
    for path in sorted(Path(p) for p in corpus.getPaths()):
        rel = path.relative_to(root)
        folder = rel.parts[0]
        if folder not in M21_COLLECTIONS or path.suffix not in SCORE_SUFFIXES:
            continue
        composer, era, group = M21_COLLECTIONS[folder]
        stem = str(rel.with_suffix(""))
        if path.suffix == ".abc":
            numbers = abc_numbers(path)
            many = len(numbers) > 1
            for n in numbers:
                works.append(WorkRef(f"m21/{stem}#{n}" if many else f"m21/{stem}", str(path), n if many else None,
                                     composer, era, folder, group))
        else:
            works.append(WorkRef(f"m21/{stem}", str(path), None, composer, era, folder, group))
    return sorted(works, key=lambda w: w.id)


METADATA_NAMES = ("metadata.csv", "metadata.jsonl")


def folder_metadata(folder: str | Path) -> Path | None:
    """A metadata table shipped inside a score folder (PDMX style), if there is one."""
    for name in METADATA_NAMES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def folder_works(folder: str | Path, metadata: dict[str, dict[str, Any]] | None = None,
                 only_listed: bool = True, skipped: list[dict[str, str]] | None = None) -> list[WorkRef]:
    """Score files (MusicXML, MXL, Humdrum, ABC, MIDI) under ``folder``.

    ``metadata`` (keys: paths relative to the folder) supplies title, composer and era; with
    ``only_listed`` it also selects the works (files it does not list are left out).
    Entries that cannot be used (fifos, devices, unreadable folders) are appended to
    ``skipped`` as ``{"file", "reason"}``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder not found: {folder}")
    paths, left_out = scan_folder(folder, SCORE_SUFFIXES)
    if skipped is not None:
        skipped += [{"file": f"{folder.name}/{s['file']}", "reason": s["reason"]} for s in left_out]
    stems = unique_stems([str(p.relative_to(folder)) for p in paths])
    works = []
    for path in paths:
        rel = str(path.relative_to(folder))
        info = (metadata or {}).get(rel, {})
        if metadata is not None and only_listed and not info:
            continue  # the (filtered) metadata selects the works
        stem = f"{folder.name}/{stems[rel]}"
        try:
            numbers = abc_numbers(path) if path.suffix.lower() == ".abc" else []
        except OSError:
            numbers = []  # unreadable: parsing it fails later and the build lists it as skipped
        for n in numbers if len(numbers) > 1 else [None]:
            composer = info.get("composer") or info.get("composer_name") or ""
            works.append(WorkRef(stem if n is None else f"{stem}#{n}", str(path), n, str(composer),
                                 str(info.get("era", "")), folder.name, "user", str(info.get("title", ""))))
    return works


def read_metadata(path: str | Path, min_rating: float | None = None, tags: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """A CSV/JSONL of per-file metadata (a ``path`` column plus e.g. rating, tags, composer), filtered.

    Rows below ``min_rating`` or lacking any of ``tags`` (comma/semicolon separated) are dropped.
    """
    path = Path(path)
    rows = read_table(path)
    selected = {}
    for i, row in enumerate(rows):
        if "path" not in row:
            raise ManifestError(f"{path}: row {i + 1} has no 'path' column")
        if min_rating is not None:
            try:
                if float(row.get("rating", "nan")) < min_rating:
                    continue
            except (TypeError, ValueError):
                continue
        row_tags = {t.strip().lower() for t in re.split(r"[,;]", str(row.get("tags", ""))) if t.strip()}
        if any(t.lower() not in row_tags for t in tags):
            continue
        selected[str(row["path"])] = row
    return selected
