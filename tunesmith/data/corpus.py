"""Build the open training corpus: works -> arrangements -> FluidSynth renders -> captioned clips.

The plan (which work, which render, in what order) is fixed by the seed before anything is
rendered; workers render units in parallel and results are consumed in plan order, so the
manifest is the same bytes whatever the number of processes or interruptions.  Each unit's
result is saved as it finishes; a rerun skips finished units (resume).  A ``READY`` file
marks a complete build.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from tunesmith.audio import normalize_loudness, rms_db, save_audio
from tunesmith.errors import UserError
from tunesmith.files import atomic_write_text
from tunesmith.data.arrange import arrange
from tunesmith.data.captions import caption
from tunesmith.data.card import write_card
from tunesmith.data.clips import clip_tags, plan_clips
from tunesmith.data.manifest import slug, split_of, stable_hash, write_manifest
from tunesmith.data.midi import clip_midi
from tunesmith.data.render import RenderError, render
from tunesmith.data.score import Piece, ScoreError, parse_work
from tunesmith.data.humanize import humanize
from tunesmith.data.soundfont import find_soundfonts, pick_soundfont, soundfont_name
from tunesmith.data.sources import (COLLECTION_LABELS, WorkRef, folder_metadata, folder_works, music21_works,
                                    read_metadata)

MAX_RENDERS_PER_WORK = 50  # a build stops after this many passes over the sources
TARGET_DB = -20.0


@dataclass
class BuildOptions:
    out: str
    hours: float
    seed: int = 0
    sample_rate: int = 24000
    channels: int = 1
    min_clip: float = 10.0
    max_clip: float = 30.0
    max_clips_per_render: int = 4
    max_render_seconds: float = 120.0
    sources: list[str] = field(default_factory=lambda: ["music21"])
    metadata: str | None = None
    min_rating: float | None = None
    require_tags: list[str] = field(default_factory=list)
    soundfont: str | None = None  # one SoundFont for every render
    soundfonts: list[str] = field(default_factory=list)  # several, one per render by the seed (default: all installed)
    humanize: bool = True  # humanised timing and velocity, a wider mix (tunesmith.data.humanize)
    workers: int = 2
    audio_format: str = "flac"

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"--hours must be positive, got {self.hours}")
        if self.channels not in (1, 2):
            raise ValueError(f"--channels must be 1 or 2, got {self.channels}")
        if not 8000 <= self.sample_rate <= 96000:
            raise ValueError(f"--sample-rate must be within 8000..96000, got {self.sample_rate}")
        if not 1.0 <= self.min_clip <= self.max_clip:
            raise ValueError(f"need 1 <= --min-clip <= --max-clip, got {self.min_clip}, {self.max_clip}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"--format must be flac or wav, got {self.audio_format}")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.soundfont and self.soundfonts:
            raise ValueError("give --soundfont (one) or --soundfonts (several), not both")


def list_works(options: BuildOptions, skipped: list[dict[str, str]] | None = None) -> list[WorkRef]:
    """All works of the requested sources, sorted by id; every work has its own id.

    A folder's metadata table (``--metadata``, or a ``metadata.csv``/``.jsonl`` inside it)
    names titles and composers; an explicit table, ``--min-rating`` or ``--require-tag``
    also select which works are used.  Files left out while listing go to ``skipped``.
    """
    filtering = options.min_rating is not None or bool(options.require_tags)
    works: list[WorkRef] = []
    for source in options.sources:
        if source == "music21":
            works += music21_works()
            continue
        table = options.metadata or folder_metadata(source)
        metadata = read_metadata(table, options.min_rating, tuple(options.require_tags)) if table else None
        works += folder_works(source, metadata, only_listed=bool(options.metadata) or filtering, skipped=skipped)
    if not works:
        raise FileNotFoundError(f"no score files found in sources {options.sources}")
    return sorted(_distinct_ids(works), key=lambda w: w.id)


def _distinct_ids(works: list[WorkRef]) -> list[WorkRef]:
    """One ref per (file, tune); ids that would name the same clip files get a hash of their file.

    Two source folders of the same name, or ``a b.mid`` beside ``a-b.mid``, would otherwise
    share an id, and all but one of them would silently vanish from the build.
    """
    unique: dict[tuple[str, int | None], WorkRef] = {}
    for w in works:
        unique.setdefault((os.path.realpath(w.path), w.number), w)  # a source listed twice
    counts = Counter(slug(w.id).casefold() for w in unique.values())
    return [w if counts[slug(w.id).casefold()] == 1 else replace(w, id=f"{w.id}~{stable_hash(path) % 16**8:08x}")
            for (path, _), w in unique.items()]


def plan_units(works: list[WorkRef], seed: int) -> Iterator[tuple[WorkRef, int]]:
    """(work, render index) in build order: groups interleaved, each group shuffled by the seed.

    After every work has been rendered once, the cycle repeats with new render indices,
    so a build can grow past the number of works.
    """
    groups: dict[str, list[WorkRef]] = {}
    for w in works:
        groups.setdefault(w.group, []).append(w)
    rng = np.random.default_rng([seed, 1])
    order = {g: [ws[i] for i in rng.permutation(len(ws))] for g, ws in sorted(groups.items())}
    render_index = 0
    while True:
        queues = {g: deque(ws) for g, ws in order.items()}
        while any(queues.values()):
            for g in sorted(queues):
                if queues[g]:
                    yield queues[g].popleft(), render_index
        render_index += 1


# ---------------------------------------------------------------------------
# one unit = one render of one work, done in a worker process

_OPTIONS: BuildOptions | None = None
_SOUNDFONT: str | list[str] = ""


def _init_worker(options: BuildOptions, soundfont: str | list[str]) -> None:
    global _OPTIONS, _SOUNDFONT
    _OPTIONS, _SOUNDFONT = options, soundfont
    torch.set_num_threads(1)


def _fingerprint(options: BuildOptions) -> str:
    """The options that change a unit's output (not hours, workers or the output folder)."""
    keep = ("seed", "sample_rate", "channels", "min_clip", "max_clip", "max_clips_per_render", "max_render_seconds",
            "audio_format", "humanize")
    fonts = sorted(soundfont_name(f) for f in options.soundfonts)  # the resolved list build_corpus sets
    return json.dumps({**{k: getattr(options, k) for k in keep}, "soundfonts": fonts}, sort_keys=True)


def _unit_path(out: Path, work: WorkRef, render_index: int, options: BuildOptions) -> Path:
    return out / "units" / f"{stable_hash(f'{work.id}|{render_index}|{_fingerprint(options)}'):016x}.json"


def load_piece(out: Path, work: WorkRef) -> Piece:
    """Parse a work once; later renders read the cached JSON reduction."""
    path = out / "cache" / "pieces" / f"{stable_hash(work.id):016x}.json"
    if path.is_file():
        return Piece.from_dict(json.loads(path.read_text()))
    piece = parse_work(work.path, work.number, **work.parse_meta())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(piece.to_dict()))
    return piece


def process_unit(work: WorkRef, render_index: int, options: BuildOptions,
                 soundfont: str | list[str]) -> dict[str, Any]:
    """Arrange, render and cut one work; returns {"records": [...]} or {"skipped": reason}.

    ``soundfont``: one, or several of which the seed picks one for this render (recorded per clip)."""
    out = Path(options.out)
    unit_file = _unit_path(out, work, render_index, options)
    if unit_file.is_file():
        result = json.loads(unit_file.read_text())
        if all((out / r["audio"]).is_file() for r in result.get("records", [])):
            return result
    try:
        piece = load_piece(out, work)
    except ScoreError as err:  # the same for every render: the driver lists it once and renders it no more
        result = {"work": work.id, "render": render_index, "skipped": str(err), "unusable": True}
        atomic_write_text(unit_file, json.dumps(result))
        return result
    rng = np.random.default_rng([options.seed, stable_hash(work.id) % 2**63, render_index])
    arr = arrange(piece, rng, render_index, group=work.group, max_seconds=options.max_render_seconds,
                  min_seconds=max(options.max_clip, 20.0))
    fonts = [soundfont] if isinstance(soundfont, str) else list(soundfont)
    font = pick_soundfont(fonts, options.seed, stable_hash(work.id), render_index)
    played = arr  # the render strays from the grid; the tags, captions and MIDI keep the score's exact facts
    if options.humanize:
        played = humanize(arr, np.random.default_rng([options.seed, stable_hash(work.id) % 2**63, render_index, 0x48]))
    audio = torch.from_numpy(render(played, font, options.sample_rate, options.channels))
    audio = normalize_loudness(audio, TARGET_DB, peak=0.95)
    clips = plan_clips(arr, rng, options.min_clip, options.max_clip, options.max_clips_per_render)
    info = {"title": piece.title, "composer": piece.composer, "era": piece.era, "collection": piece.collection,
            "collection_label": COLLECTION_LABELS.get(piece.collection, "")}
    split = split_of(work.id)
    records = []
    for k, clip in enumerate(clips):
        clip_id = f"{slug(work.id)}-r{render_index}-c{k}"
        a, b = int(round(clip.start * options.sample_rate)), int(round(clip.end * options.sample_rate))
        wav = audio[:, a:b]
        if wav.shape[-1] == 0 or rms_db(wav) < -60:
            continue
        tags = clip_tags(arr, clip, info, rng)
        text = caption(tags, rng)
        tags.pop("adjectives")
        rel_audio = Path("audio") / work.group / f"{clip_id}.{options.audio_format}"
        rel_midi = Path("midi") / work.group / f"{clip_id}.mid"
        (out / rel_audio).parent.mkdir(parents=True, exist_ok=True)
        (out / rel_midi).parent.mkdir(parents=True, exist_ok=True)
        save_audio(out / rel_audio, wav, options.sample_rate)
        clip_midi(arr, clip.start_tick, clip.end_tick).save(str(out / rel_midi))
        records.append({
            "id": clip_id, "audio": str(rel_audio), "midi": str(rel_midi), "caption": text, "tags": tags,
            "duration": round(wav.shape[-1] / options.sample_rate, 4), "sample_rate": options.sample_rate,
            "channels": options.channels, "split": split, "source": work.id, "offset": round(clip.start, 4),
            "soundfont": soundfont_name(font),
        })
    result = {"work": work.id, "render": render_index, "records": records}
    if not records:
        result["skipped"] = "no clip fits the clip length limits"
    atomic_write_text(unit_file, json.dumps(result))
    return result


def _run_unit(job: tuple[WorkRef, int]) -> dict[str, Any]:
    assert _OPTIONS is not None
    try:
        return process_unit(job[0], job[1], _OPTIONS, _SOUNDFONT)
    except (RenderError, OSError) as err:  # no FluidSynth, a bad SoundFont, a full disk: every unit would fail
        return {"work": job[0].id, "render": job[1], "fatal": str(err)}
    except Exception as err:  # a bad work must not stop the build; it is logged and counted
        return {"work": job[0].id, "render": job[1], "skipped": f"{type(err).__name__}: {err}"}


# ---------------------------------------------------------------------------
# the driver


def ordered_results(units: Iterable[tuple[WorkRef, int]], options: BuildOptions,
                    soundfont: str | list[str]) -> Iterator[dict[str, Any]]:
    """Unit results in plan order; a pool of ``options.workers`` processes works a few units ahead.

    Stopping the iteration (closing the generator) terminates the pool.
    """
    if options.workers == 1:
        _init_worker(options, soundfont)
        for job in units:
            yield _run_unit(job)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(options.workers, initializer=_init_worker, initargs=(options, soundfont)) as pool:
        in_flight: deque = deque()
        for job in units:
            in_flight.append(pool.apply_async(_run_unit, (job,)))
            if len(in_flight) >= 2 * options.workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def build_corpus(options: BuildOptions, progress: bool = True) -> dict[str, Any]:
    """Build (or resume) a corpus of ``options.hours`` hours; returns the card's summary."""
    out = Path(options.out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    fonts = [str(f) for f in find_soundfonts([options.soundfont] if options.soundfont else options.soundfonts)]
    options = replace(options, soundfont=None, soundfonts=fonts)  # what the units' fingerprint names
    (out / "READY").unlink(missing_ok=True)
    listing_skips: list[dict[str, str]] = []
    works = list_works(options, listing_skips)
    target = options.hours * 3600.0
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = [{"work": s["file"], "render": None, "reason": s["reason"]} for s in listing_skips]
    total = 0.0
    unusable: set[str] = set()  # works that cannot be parsed
    planned = itertools.islice(plan_units(works, options.seed), MAX_RENDERS_PER_WORK * len(works))
    units = (unit for unit in planned if unit[0].id not in unusable)
    results = ordered_results(units, options, fonts)
    with tqdm(total=round(target), unit="s", desc="corpus", disable=not progress, smoothing=0.05) as bar:
        for entry in skipped:
            bar.write(f"skipped {entry['work']}: {entry['reason']}")
        try:
            for result in results:
                if result.get("fatal"):
                    raise UserError(f"building {result['work']} failed: {result['fatal']}")
                if result["work"] in unusable:
                    continue  # a render already in flight when its work was found unusable
                if result.get("unusable"):
                    unusable.add(result["work"])
                if result.get("skipped"):
                    skipped.append({"work": result["work"], "render": result["render"], "reason": result["skipped"]})
                    bar.write(f"skipped {result['work']} (render {result['render']}): {result['skipped']}")
                for record in result.get("records", []):
                    if total >= target:
                        break
                    records.append(record)
                    total += record["duration"]
                    bar.update(round(total) - bar.n)
                if total >= target:
                    break
        finally:
            results.close()
    write_manifest(out / "manifest.jsonl", records)
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped))
    summary = write_card(out, records, skipped, asdict(options))
    (out / "READY").write_text("complete\n")
    return summary
