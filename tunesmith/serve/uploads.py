"""Reference audio sent with a request (``init_audio``, ``melody``, ``prompt_audio``, ``intensity``).

An upload is checked before any work is queued: its size, that it is audio in a format we
read (WAV, FLAC, OGG, MP3: what libsndfile says, never the client's file name or type), its
length, and that it decodes to finite, non-silent samples.  Only then is it stored, under a
name the server chooses (``<random hex>.<format>`` in DATA_DIR/uploads/), so no part of a
path ever comes from a request.  A job refers to its uploads by those names.

A ``melody`` may also be a MIDI file (known by its ``MThd`` header, as ``tunesmith generate
--melody tune.mid`` takes one): at most 1 MB, read whole with mido, no longer than the audio
limit, with at least one pitched note; it is stored as ``<random hex>.mid``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

import soundfile as sf

from tunesmith.audio import load_audio
from tunesmith.conditioning.melody import midi_melody
from tunesmith.errors import AudioError
from tunesmith.files import atomic_path
from tunesmith.serve.settings import UPLOAD_FORMATS

STORED_NAME = re.compile(r"^[0-9a-f]{32}\.(wav|flac|ogg|mp3|mid)$")
MIDI_FIELDS = ("melody",)  # the inputs a MIDI file may be (the generators read a .mid melody's top line)
MIDI_MAGIC = b"MThd"
MAX_MIDI_BYTES = 1_000_000  # a melody's MIDI is kilobytes; mido reads in pure Python, so keep it small


class UploadRejected(Exception):
    """An upload we will not use; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.3g} MB"


def file_size(file: BinaryIO) -> int:
    position = file.tell()
    file.seek(0, os.SEEK_END)
    size = file.tell()
    file.seek(position)
    return size


def check_upload(name: str, file: BinaryIO, *, max_bytes: int, max_seconds: float) -> str:
    """Check an uploaded file; returns its format's file suffix.  Reads the header first (cheap),
    then decodes the whole file (bounded by ``max_bytes`` and ``max_seconds``)."""
    size = file_size(file)
    if size > max_bytes:
        raise UploadRejected(413, f"{name}: the file is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}")
    if size == 0:
        raise UploadRejected(400, f"{name}: the file is empty")
    file.seek(0)
    if file.read(len(MIDI_MAGIC)) == MIDI_MAGIC:
        file.seek(0)
        return check_midi(name, file, size, max_seconds=max_seconds)
    file.seek(0)
    try:
        with sf.SoundFile(file) as f:
            kind, frames, rate = f.format, f.frames, f.samplerate
    except Exception:  # soundfile raises several types for what is not audio
        raise UploadRejected(400, f"{name}: not an audio file we can read (send WAV, FLAC, OGG or MP3)") from None
    if kind not in UPLOAD_FORMATS:
        raise UploadRejected(400, f"{name}: {kind} audio is not taken (send WAV, FLAC, OGG or MP3)")
    seconds = frames / rate if rate else 0.0
    if frames <= 0 or rate <= 0:
        raise UploadRejected(400, f"{name}: the audio is empty")
    if seconds > max_seconds:
        raise UploadRejected(413, f"{name}: the audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    file.seek(0)
    return kind.lower()


def check_midi(name: str, file: BinaryIO, size: int, *, max_seconds: float) -> str:
    """A MIDI upload: only where a MIDI file is taken, small, readable, and not too long."""
    if name not in MIDI_FIELDS:
        raise UploadRejected(400, f"{name}: a MIDI file is taken only as the melody (send WAV, FLAC, OGG or MP3)")
    if size > MAX_MIDI_BYTES:
        raise UploadRejected(413, f"{name}: the MIDI file is {_megabytes(size)}; the limit is "
                                  f"{_megabytes(MAX_MIDI_BYTES)}")
    try:
        import mido
    except ImportError:
        raise UploadRejected(400, f"{name}: this server cannot read MIDI (it needs mido: pip install mido); "
                                  "send WAV, FLAC, OGG or MP3") from None
    try:
        seconds = float(mido.MidiFile(file=io.BytesIO(file.read())).length)
    except Exception as err:  # mido raises several types for what is not a MIDI file it can play
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise UploadRejected(400, f"{name}: not a MIDI file we can read ({reason})") from None
    if seconds > max_seconds:
        raise UploadRejected(413, f"{name}: the MIDI file plays {seconds:.1f} s; the limit is {max_seconds:g} s")
    file.seek(0)
    return "mid"


def store_upload(name: str, file: BinaryIO, directory: Path, *, max_bytes: int, max_seconds: float) -> str:
    """Check ``file`` and keep it under a server-chosen name in ``directory``; returns the name."""
    suffix = check_upload(name, file, max_bytes=max_bytes, max_seconds=max_seconds)
    directory.mkdir(parents=True, exist_ok=True)
    stored = f"{uuid.uuid4().hex}.{suffix}"
    with atomic_path(directory / stored, fsync=False) as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(file, out, 1 << 20)
    try:  # the samples themselves: finite, not silent, decodable to the end; a MIDI file's notes
        if suffix == "mid":
            midi_melody(directory / stored, 20.0, num_frames=1)
        else:
            load_audio(directory / stored)
    except (AudioError, ValueError) as err:
        (directory / stored).unlink(missing_ok=True)
        message = str(err).replace(str(directory / stored), "the file").replace(stored, "the file")
        raise UploadRejected(400, f"{name}: {message}") from None
    return stored


def upload_path(directory: Path, stored: str) -> Path:
    """The file of a stored upload; refuses any name the server could not have chosen."""
    if not STORED_NAME.match(stored):
        raise ValueError(f"not a stored upload name: {stored!r}")
    return directory / stored


def delete_uploads(directory: Path, names: list[str]) -> None:
    for stored in names:
        if STORED_NAME.match(stored):
            (directory / stored).unlink(missing_ok=True)
