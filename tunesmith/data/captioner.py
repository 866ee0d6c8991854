"""Time-aware captions (FUTGA, Wu et al. 2024): what happens *when* in a recording, not one
sentence for the whole of it.

For any audio (the user's own, real recordings, or the corpus's renders) the captioner gives a
global caption plus time-stamped sections:

1. boundaries: novelty on the self-similarity of timbre (MFCC-like) frames and, apart, of
   loudness frames (Foote 2000, "Automatic audio segmentation using a measure of audio novelty":
   a checkerboard kernel slid along the diagonal of the self-similarity matrix peaks where the
   past and the future differ); a boundary is a peak of the larger of the two curves above a
   threshold (an instrument entering changes the timbre, a dynamic the level, and one curve
   must not drown the other), sections at least ``min_section`` long;
2. per section: tempo, key and mode (the evaluator's own estimators, as
   :class:`tunesmith.adapters.autocaption.AutoCaptioner` uses them), instrument families from
   the CLAP by CHiLS hierarchical zero-shot tagging, the loudness level and its change
   ("louder", "builds", "softer", "fades"), which families join or drop out, and the section's
   relation to earlier ones (A, B, return of A: the most similar earlier section by its mean
   timbre and harmony, when similar enough).

The output is a manifest record in the corpus's format (``caption`` with the section list at the
end, as the corpus writes it, and ``tags.segments`` with ``start``, ``end``, ``text``), so a
captioned folder trains directly; ``tags.timed_prompt`` holds the sections alone, in the
time-stamped prompt format ``tunesmith generate`` takes.  As in the autocaptioner, an estimated
tempo goes into the text and ``tempo_bpm_estimated``, never into ``tempo_bpm`` (the beat
clock's phase is unknown for audio the corpus did not render).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tunesmith.audio import AUDIO_SUFFIXES, load_audio
from tunesmith.conditioning.prompt import mmss
from tunesmith.errors import UserError
from tunesmith.music import tonic_name
from tunesmith.spectral import chromagram, mel_spectrogram

PLURAL_FAMILIES = {"strings", "woodwinds", "drums", "mallets"}  # "strings join", "brass joins"
# RMS dBFS edges of the level words (as tunesmith.control.features reads "soft", "loud")
LEVELS = ((-34.0, "very soft"), (-26.0, "soft"), (-18.0, "medium"), (-11.0, "loud"), (math.inf, "very loud"))


@dataclass
class CaptionerConfig:
    """How sections are found and described.  The boundary settings were chosen on 100 corpus
    clips of the train split (boundary F-measure at +-2 s: 0.44 there; one joint curve of
    timbre and level reached 0.49 but missed the timbre changes of generated audio, which the
    larger of two curves finds); the benchmark measures on the test and valid splits."""

    sample_rate: int = 24000  # the CLAP's rate: audio is read at it
    feature_rate: float = 4.0  # boundary-feature frames per second
    kernel_seconds: float = 5.0  # half-width of the checkerboard kernel (the context compared on each side)
    min_section: float = 3.0  # no section shorter (the corpus folds shorter stretches too)
    max_sections: int = 12  # at most this many (the strongest boundaries win)
    threshold: float = 0.3  # a boundary's novelty peak, relative to the curve's largest possible value
    level_novelty: float = 1.0  # the loudness curve's scale against the timbre curve's
    timbre_weight: float = 1.0  # section likeness (A, B, return of A): MFCC-like timbre
    chroma_weight: float = 0.25  # and harmony (chroma)
    same_label: float = 0.9  # cosine of section means above which a section repeats an earlier one
    min_tempo_seconds: float = 6.0  # a shorter section takes the whole recording's tempo
    change_db: float = 3.0  # a level step between sections at least this big is "louder"/"softer"
    trend_db: float = 6.0  # a rise (fall) within a section at least this big "builds" ("fades")
    family_share: float = 0.5  # families whose CHiLS probability is within this factor of the best are named
    max_families: int = 3
    max_seconds: float = 600.0  # longer recordings are captioned over their first max_seconds

    def __post_init__(self) -> None:
        for name in ("sample_rate", "feature_rate", "kernel_seconds", "min_section", "max_seconds", "max_sections"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.threshold < 1 or not 0 < self.family_share <= 1 or not -1 <= self.same_label <= 1:
            raise ValueError("threshold must be in (0, 1), family_share in (0, 1], same_label in [-1, 1]")


@dataclass
class Section:
    start: float
    end: float
    label: str  # "A", "B", ...: a repeated letter is a return of that section
    families: list[str]
    instruments: list[str]
    loudness_db: float
    level: str
    change: list[str] = field(default_factory=list)  # "louder", "builds", "strings join", ...
    tempo_bpm_estimated: float | None = None
    key: str | None = None
    mode: str | None = None
    text: str = ""

    def entry(self) -> dict[str, Any]:
        """The section as a corpus ``tags.segments`` entry (start, end, text, plus what it says)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["start"], out["end"], out["loudness_db"] = round(self.start, 2), round(self.end, 2), round(self.loudness_db, 1)
        return out


# ---------------------------------------------------------------------------
# boundaries (pure functions)


def boundary_features(wav: torch.Tensor, sample_rate: int, rate: float,
                      weights: tuple[float, float, float] = (1.0, 0.5, 1.0)) -> np.ndarray:
    """(D, F) frames at ``rate`` per second: MFCC-like timbre (DCT of the log mel, c1..c12),
    chroma (12) and RMS level (dB), each dimension standardised over time and each group scaled
    by its weight / sqrt(its size), so that a group counts by its weight, not its width."""
    mono = wav.reshape(-1, wav.shape[-1]).float().mean(0)
    hop = max(1, int(round(sample_rate / rate)))
    frames = mono.shape[-1] // hop
    if frames < 2:
        raise ValueError(f"audio of {mono.shape[-1] / sample_rate:.2f} s is too short to caption")
    mono = mono[: frames * hop]
    n_fft = 1 << int(math.ceil(math.log2(hop)))
    mel = mel_spectrogram(mono, sample_rate, n_fft=2 * n_fft, hop=hop, n_mels=40, power=2.0)[:, :frames]
    log_mel = torch.log(mel.clamp_min(1e-10))
    n = log_mel.shape[0]
    dct = torch.cos(math.pi / n * (torch.arange(n)[None] + 0.5) * torch.arange(13)[:, None])  # DCT-II rows
    mfcc = (dct @ log_mel)[1:]  # c0 is the level, kept apart below
    chroma = chromagram(mono, sample_rate, n_fft=2 * n_fft, hop=hop)[:, :frames]
    power = mono.view(frames, hop).pow(2).mean(-1)
    level = 10 * torch.log10(power.clamp_min(1e-10))[None]
    groups = []
    for group, weight in zip((mfcc, chroma, level), weights):
        g = group.double().numpy()
        g = (g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-6)
        groups.append(g * weight / math.sqrt(g.shape[0]))
    return np.concatenate(groups)


def novelty_curve(features: np.ndarray, half_width: int) -> np.ndarray:
    """(F,) Foote's novelty: a Gaussian-tapered checkerboard kernel of 2 * half_width frames
    correlated along the diagonal of the cosine self-similarity matrix, in [-1, 1] (the value a
    perfect change between two internally uniform, mutually opposite blocks would reach)."""
    x = features / (np.linalg.norm(features, axis=0, keepdims=True) + 1e-9)
    ssm = x.T @ x
    n = ssm.shape[0]
    w = max(1, int(half_width))
    offsets = np.arange(-w, w) + 0.5
    taper = np.exp(-0.5 * (offsets / (0.5 * w)) ** 2)
    sign = np.sign(offsets)
    kernel = np.outer(sign, sign) * np.outer(taper, taper)  # + within past and within future, - across
    kernel /= np.abs(kernel).sum()
    padded = np.pad(ssm, w, mode="edge")
    out = np.zeros(n)
    for i in range(n):  # the boundary between frames i - 1 and i
        out[i] = (padded[i : i + 2 * w, i : i + 2 * w] * kernel).sum()
    return out


def pick_boundaries(novelty: np.ndarray, rate: float, threshold: float, min_gap: float, duration: float,
                    max_count: int = 1 << 30) -> list[float]:
    """Seconds of the novelty peaks above ``threshold`` (strongest first, each at least ``min_gap``
    from the others and from both ends, at most ``max_count``), sorted."""
    gap = int(round(min_gap * rate))
    peaks = [i for i in range(1, len(novelty) - 1)
             if novelty[i] >= novelty[i - 1] and novelty[i] >= novelty[i + 1] and novelty[i] > threshold]
    chosen: list[int] = []
    for i in sorted(peaks, key=lambda i: -novelty[i]):
        t = i / rate
        if len(chosen) >= max_count:
            break
        if t < min_gap or duration - t < min_gap or any(abs(i - j) < gap for j in chosen):
            continue
        chosen.append(i)
    return sorted(round(i / rate, 2) for i in chosen)


def section_labels(means: Sequence[np.ndarray], same: float) -> list[str]:
    """A letter per section: an earlier section's letter when the cosine of their mean
    features is at least ``same`` (the most similar one), else the next new letter."""
    labels: list[str] = []
    units = [m / (np.linalg.norm(m) + 1e-9) for m in means]
    for k, u in enumerate(units):
        best, best_sim = None, same
        for j in range(k):
            sim = float(u @ units[j])
            if sim >= best_sim and labels[j] != (labels[k - 1] if k else None):
                best, best_sim = labels[j], sim
        labels.append(best if best is not None else chr(ord("A") + min(len(set(labels)), 25)))
    return labels


def boundary_scores(estimated: Sequence[float], reference: Sequence[float], tolerance: float = 2.0) -> tuple[int, int, int]:
    """(hits, estimated count, reference count): boundaries matched one to one within
    ``tolerance`` seconds (closest pairs first), the counts precision and recall are made of."""
    pairs = sorted((abs(e - r), i, j) for i, e in enumerate(estimated) for j, r in enumerate(reference)
                   if abs(e - r) <= tolerance)
    used_e, used_r, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_e and j not in used_r:
            used_e.add(i)
            used_r.add(j)
            hits += 1
    return hits, len(estimated), len(reference)


def f_measure(hits: int, estimated: int, reference: int) -> float:
    """F1 of boundary detection; 1.0 when neither side has a boundary."""
    if estimated == 0 and reference == 0:
        return 1.0
    precision = hits / estimated if estimated else 0.0
    recall = hits / reference if reference else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def level_word(db: float) -> str:
    return next(word for edge, word in LEVELS if db < edge)


# ---------------------------------------------------------------------------
# the captioner


class TimeCaptioner:
    """A global caption and time-stamped sections for a recording (any rate, any channels)."""

    def __init__(self, config: CaptionerConfig | None = None, clap: Any = None) -> None:
        from tunesmith.adapters.autocaption import AutoCaptioner

        self.config = config or CaptionerConfig()
        self.auto = AutoCaptioner(clap)  # the CLAP with CHiLS, tempo and key: one set of estimators

    def sections(self, wav: torch.Tensor, sample_rate: int) -> list[tuple[float, float]]:
        """The (start, end) seconds of the sections of a mono or multichannel recording."""
        c = self.config
        duration = wav.shape[-1] / sample_rate
        width = int(round(c.kernel_seconds * c.feature_rate))
        timbre = novelty_curve(boundary_features(wav, sample_rate, c.feature_rate, (1.0, 0.0, 0.0)), width)
        level = novelty_curve(boundary_features(wav, sample_rate, c.feature_rate, (0.0, 0.0, 1.0)), width)
        novelty = np.maximum(timbre, c.level_novelty * level)
        bounds = pick_boundaries(novelty, c.feature_rate, c.threshold, c.min_section, duration, c.max_sections - 1)
        edges = [0.0, *bounds, round(duration, 2)]
        return list(zip(edges[:-1], edges[1:]))

    def families(self, wav: torch.Tensor, sample_rate: int) -> tuple[list[str], list[str]]:
        """(families, instruments) CHiLS names for a stretch: the best family and those close to it."""
        from tunesmith.clap.zeroshot import chils

        with torch.inference_mode():
            embedding = self.auto.clap.embed_audio(wav[None, None], sample_rate)
        tagged = chils(self.auto.clap, embedding, self.auto.hierarchy)
        probs = tagged.parent_probs[0]
        order = np.argsort(-probs)
        keep = [tagged.parent_names[i] for i in order[: self.config.max_families]
                if probs[i] >= self.config.family_share * probs[order[0]]]
        return keep, [tagged.children[0]]

    def __call__(self, wav: torch.Tensor, sample_rate: int) -> tuple[str, dict[str, Any]]:
        """(caption, tags): the corpus's caption form and tags, with ``segments`` and ``timed_prompt``."""
        c = self.config
        mono = wav.reshape(-1, wav.shape[-1]).float().mean(0)[: int(c.max_seconds * sample_rate)]
        if mono.abs().max() < 1e-5:
            raise ValueError("the audio is silent")
        tags = self.auto.tags(mono, sample_rate)
        tags["families"], tags["instruments"] = self.families(mono, sample_rate)
        spans = self.sections(mono, sample_rate)
        features = boundary_features(mono, sample_rate, c.feature_rate, (c.timbre_weight, c.chroma_weight, 0.0))
        means = [features[:, int(a * c.feature_rate) : max(int(a * c.feature_rate) + 1, int(b * c.feature_rate))].mean(1)
                 for a, b in spans]
        labels = section_labels(means, c.same_label)
        sections = [self._describe(mono, sample_rate, a, b, label, tags) for (a, b), label in zip(spans, labels)]
        _relate(sections, c)
        for k, s in enumerate(sections):
            s.text = _section_text(s, sections[:k])
        tags["segments"] = [s.entry() for s in sections] if len(sections) > 1 else []
        tags["timed_prompt"] = "; ".join(f"{mmss(s.start)}-{mmss(s.end)} {s.text}" for s in sections)
        tags["captioner"] = "tunesmith time-aware captioner"
        caption = _global_caption(tags, sections)
        return caption, tags

    def _describe(self, mono: torch.Tensor, sr: int, start: float, end: float, label: str,
                  whole: dict[str, Any]) -> Section:
        from tunesmith.eval import metrics as M

        c = self.config
        part = mono[int(start * sr) : int(end * sr)]
        db = 10 * math.log10(max(float(part.pow(2).mean()), 1e-10))
        families, instruments = self.families(part, sr)
        section = Section(start, end, label, families, instruments, db, level_word(db),
                          tempo_bpm_estimated=whole.get("tempo_bpm_estimated"), key=whole.get("key"), mode=whole.get("mode"))
        signal = part.numpy().astype(np.float32)
        if end - start >= c.min_tempo_seconds:
            try:
                bpm = M.estimate_tempo(signal, sr)
                if np.isfinite(bpm) and bpm > 0:
                    section.tempo_bpm_estimated = round(float(bpm))
            except ValueError:
                pass
        try:
            key = M.estimate_key(signal, sr)
            section.key, section.mode = tonic_name(key.tonic, key.mode), key.mode
        except ValueError:
            pass
        # the level's trend within the section: first third against last third
        third = max(1, len(part) // 3)
        rise = 10 * math.log10(max(float(part[-third:].pow(2).mean()), 1e-10) / max(float(part[:third].pow(2).mean()), 1e-10))
        if rise >= c.trend_db:
            section.change.append("builds")
        elif rise <= -c.trend_db:
            section.change.append("fades")
        return section


def _relate(sections: list[Section], c: CaptionerConfig) -> None:
    """Each section's change from the one before: level steps, families joining or dropping out."""
    for prev, cur in zip(sections, sections[1:]):
        step = cur.loudness_db - prev.loudness_db
        words = []
        joined = [f for f in cur.families if f not in prev.families]
        left = [f for f in prev.families if f not in cur.families]
        words += [f"{f} join" if f in PLURAL_FAMILIES else f"{f} joins" for f in joined]
        words += [f"{f} drop out" if f in PLURAL_FAMILIES else f"{f} drops out" for f in left]
        if step >= c.change_db:
            words.append("louder")
        elif step <= -c.change_db:
            words.append("softer")
        cur.change = words + cur.change


def _section_text(s: Section, before: list[Section]) -> str:
    """A self-contained prompt for the section ("strings, piano, loud, louder, 96 BPM, D minor,
    return of A"), so that it conditions a generator on its own."""
    words = [*s.families, s.level, *s.change]
    if s.tempo_bpm_estimated:
        words.append(f"{s.tempo_bpm_estimated:g} BPM")
    if s.key and s.mode:
        words.append(f"{s.key} {s.mode}")
    if any(b.label == s.label for b in before):
        words.append(f"return of {s.label}")
    return ", ".join(words)


def _global_caption(tags: dict[str, Any], sections: list[Section]) -> str:
    """The corpus's form: the whole recording's facts, then the section list."""
    from tunesmith.adapters.autocaption import caption_of

    head = caption_of({k: v for k, v in tags.items() if k != "instruments"})
    if len(sections) > 1:
        form = "".join(s.label for s in sections)
        head += f"; form {form}. " + "; ".join(f"{mmss(s.start)}-{mmss(s.end)} {s.text}" for s in sections) + "."
    return head


# ---------------------------------------------------------------------------
# files -> manifest


def audio_files(target: str | Path) -> list[Path]:
    """The audio files of a folder (recursively, sorted), or the one file given."""
    path = Path(target)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"no such file or folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {path}")
    return files


def _relative(path: Path, root: Path | None) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix() if root is not None else None
    except ValueError:
        return None


def caption_record(captioner: TimeCaptioner, path: Path, root: Path | None = None, base: Path | None = None) -> dict[str, Any]:
    """A manifest record for one file: the corpus's fields, ``audio`` relative to ``root`` (the
    manifest's folder) when inside it, else absolute; the id from the path under ``base``."""
    audio = load_audio(path, captioner.config.sample_rate, channels=1, max_seconds=captioner.config.max_seconds)
    caption, tags = captioner(audio.samples, audio.sample_rate)
    name = _relative(path, base) or path.name
    return {"id": Path(name).with_suffix("").as_posix().replace("/", "-"),
            "audio": _relative(path, root) or str(path.resolve()), "caption": caption,
            "duration": round(audio.samples.shape[-1] / audio.sample_rate, 4), "sample_rate": audio.sample_rate,
            "channels": 1, "split": "train", "source": "caption", "tags": tags}


def caption_files(target: str | Path, out: str | Path | None = None, *, captioner: TimeCaptioner | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Caption every audio file under ``target`` into a manifest (``out``, default
    ``manifest.jsonl`` beside the audio); a file that cannot be read or captioned is skipped
    with its reason.  Returns ``{"manifest", "captioned", "skipped": [{"file", "reason"}]}``."""
    from tunesmith.data.manifest import write_manifest

    files = audio_files(target)
    base = Path(target) if Path(target).is_dir() else Path(target).parent
    out_path = Path(out) if out is not None else base / "manifest.jsonl"
    captioner = captioner or TimeCaptioner()
    records, skipped = [], []
    for path in tqdm(files, desc="caption", unit="file", disable=not progress):
        try:
            records.append(caption_record(captioner, path, out_path.parent, base))
        except (ValueError, OSError, RuntimeError) as err:  # unreadable, silent, too short
            skipped.append({"file": str(path), "reason": str(err).splitlines()[0][:200]})
    if records:
        write_manifest(out_path, records)
    return {"manifest": str(out_path) if records else None, "captioned": len(records), "skipped": skipped}

