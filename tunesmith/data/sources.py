"""Which works the corpus draws from: music21's bundled corpus and user folders of scores.

Listing is cheap (file names and the ``X:`` numbers of ABC collections, no parsing), so a
build can plan the whole work order before rendering anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.manifest import read_table

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
                 only_listed: bool = True) -> list[WorkRef]:
    """Score files (MusicXML, MXL, Humdrum, ABC, MIDI) under ``folder``.

    ``metadata`` (keys: paths relative to the folder) supplies title, composer and era; with
    ``only_listed`` it also selects the works (files it does not list are left out).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder not found: {folder}")
    works = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in SCORE_SUFFIXES or not path.is_file():
            continue
        rel = str(path.relative_to(folder))
        info = (metadata or {}).get(rel, {})
        if metadata is not None and only_listed and not info:
            continue  # the (filtered) metadata selects the works
        stem = f"{folder.name}/{Path(rel).with_suffix('')}"
        numbers = abc_numbers(path) if path.suffix.lower() == ".abc" else []
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
            raise ValueError(f"{path}: row {i + 1} has no 'path' column")
        if min_rating is not None:
            try:
                if float(row.get("rating", "nan")) < min_rating:
                    continue
            except ValueError:
                continue
        row_tags = {t.strip().lower() for t in re.split(r"[,;]", str(row.get("tags", ""))) if t.strip()}
        if any(t.lower() not in row_tags for t in tags):
            continue
        selected[str(row["path"])] = row
    return selected
