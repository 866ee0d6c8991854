"""Prompt sets for evaluation: what to generate and what each result should be.

A prompt file is JSONL (one object per line) or plain text (one prompt per line; blank
lines and lines starting with ``#`` are skipped).  JSONL fields:

    prompt (required)      the text given to the generator ("caption" is accepted too)
    id                     a name for the result files (default: p0001, p0002, ...)
    duration, seed         per-prompt overrides of the command-line values
    tempo_bpm              the tempo the prompt asks for
    key, mode              the key ("B-flat", "F# minor") and mode ("major"/"minor")
    families               instrument families the prompt asks for (["brass", "strings"])
    instruments            instrument names (mapped to families when ``families`` is absent)
    reference, melody      audio files (relative to the prompt file): a real clip for this
                           prompt (FAD, KL, CLAP-score ceiling) and a melody to follow

For plain-text prompts the targets are read from the words: "112 BPM", "in E minor",
and instrument or family names the CLAP tagger knows.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.conditioning.prompt import parse_prompt
from tunesmith.music import Key, parse_key_name, tonic_name


class PromptFileError(ValueError):
    """A prompt file that is missing, empty or malformed (the message names file and line)."""


@dataclass
class PromptSpec:
    id: str
    prompt: str
    duration: float
    seed: int
    tempo_bpm: float | None = None
    key: str | None = None  # "C", "B-flat"... (None: not asked for)
    mode: str | None = None  # "major" / "minor"
    families: list[str] = field(default_factory=list)
    reference: str | None = None
    melody: str | None = None

    @property
    def target_key(self) -> Key | None:
        return parse_key_name(self.key, self.mode) if self.key else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attributes_from_text(text: str, hierarchy: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Tempo, key, mode and instrument families a free-text prompt names, read by the same
    parser the models condition on (:func:`tunesmith.conditioning.prompt.parse_prompt`).

    ``hierarchy`` (family -> instruments, the CLAP tagger's) keeps only the families the
    evaluator can score.
    """
    facts = parse_prompt(text)
    out: dict[str, Any] = {}
    if facts.tempo_bpm is not None:
        out["tempo_bpm"] = facts.tempo_bpm
    if facts.tonic is not None and facts.mode is not None:
        out["key"] = tonic_name(facts.tonic, facts.mode)
    if facts.mode is not None:
        out["mode"] = facts.mode
    families = sorted(f for f in facts.families if hierarchy is None or f in hierarchy)
    if families:
        out["families"] = families
    return out


def read_prompts(
    path: str | Path, *, duration: float = 10.0, seed: int = 0, hierarchy: dict[str, tuple[str, ...]] | None = None
) -> list[PromptSpec]:
    """Read and check a prompt file; every problem is a :class:`PromptFileError`."""
    if hierarchy is None:
        from tunesmith.clap.zeroshot import instrument_hierarchy

        hierarchy = instrument_hierarchy()
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PromptFileError(f"cannot read prompt file {path}: {err}") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise PromptFileError(f"prompt file {path} has no prompts")
    family_of = {name: fam for fam, names in hierarchy.items() for name in names}
    is_json = path.suffix in (".jsonl", ".json") or lines[0][1].startswith("{")
    specs: list[PromptSpec] = []
    for number, line in lines:
        where = f"{path}:{number}"
        if is_json:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise PromptFileError(f"{where}: expected a JSON object with a 'prompt'")
            spec = _spec_from_record(record, where, path.parent, len(specs), duration, seed, family_of)
        else:
            spec = PromptSpec(id=f"p{len(specs) + 1:04d}", prompt=line, duration=duration, seed=seed,
                              **attributes_from_text(line, hierarchy))
        _check_spec(spec, where)
        specs.append(spec)
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PromptFileError(f"{path}: prompt id '{dup}' appears twice")
    return specs


def _spec_from_record(
    record: dict[str, Any], where: str, base: Path, index: int, duration: float, seed: int, family_of: dict[str, str]
) -> PromptSpec:
    prompt = record.get("prompt", record.get("caption"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"{where}: missing or empty 'prompt'")
    families = record.get("families", record.get("instrument_families"))
    if families is None and isinstance(record.get("instruments"), list):
        families = sorted({family_of[n] for n in record["instruments"] if n in family_of})
    if families is not None and not (isinstance(families, list) and all(isinstance(f, str) for f in families)):
        raise PromptFileError(f"{where}: 'families' must be a list of strings")

    def path_field(name: str) -> str | None:
        value = record.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise PromptFileError(f"{where}: '{name}' must be a file path")
        p = Path(value)
        return str(p if p.is_absolute() else base / p)

    try:
        return PromptSpec(
            id=str(record.get("id", f"p{index + 1:04d}")),
            prompt=prompt.strip(),
            duration=float(record.get("duration", duration)),
            seed=int(record.get("seed", seed)),
            tempo_bpm=None if record.get("tempo_bpm") is None else float(record["tempo_bpm"]),
            key=record.get("key"),
            mode=record.get("mode"),
            families=list(families or []),
            reference=path_field("reference"),
            melody=path_field("melody"),
        )
    except (TypeError, ValueError) as err:
        raise PromptFileError(f"{where}: {err}") from None


def _check_spec(spec: PromptSpec, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", spec.id):
        raise PromptFileError(f"{where}: id {spec.id!r} must be 1-100 letters, digits, '.', '_' or '-'")
    if not spec.duration > 0:
        raise PromptFileError(f"{where}: duration must be positive, got {spec.duration}")
    if spec.tempo_bpm is not None and not 20 <= spec.tempo_bpm <= 400:
        raise PromptFileError(f"{where}: tempo_bpm {spec.tempo_bpm} is outside 20-400")
    if spec.mode is not None and spec.mode not in ("major", "minor"):
        raise PromptFileError(f"{where}: mode must be 'major' or 'minor', got {spec.mode!r}")
    if spec.key is not None:
        try:
            spec.target_key
        except ValueError as err:
            raise PromptFileError(f"{where}: {err}") from None
    for name in ("reference", "melody"):
        value = getattr(spec, name)
        if value is not None and not Path(value).is_file():
            raise PromptFileError(f"{where}: {name} audio not found: {value}")
