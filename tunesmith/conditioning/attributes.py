"""Tempo and key named in a prompt, parsed and handed to the model as extra text tokens.

A sentence encoder reads "87 BPM" as word pieces: nothing in its states says that
87 is near 90 and far from 140, and a corpus of a few thousand captions is too
small for a language model to learn the number line from them (the first bundled
LM hit the prompted tempo for 24% of the benchmark prompts, the codec's own
reconstruction of the references for 83%).  Music-aware text-to-music models
parse such attributes and condition on them directly (Mustango, Melechovsky et
al. 2024, conditions on beats and chords predicted from the text).  Here the
attributes become tokens in the text encoder's own space, placed before the
caption's tokens, so every model that attends to text states uses them with no
change to its architecture:

- tempo: sinusoids of log2(BPM) at frequencies from 1/4 to 4 cycles per octave:
  nearby tempi get nearby vectors, with a resolution of a few percent;
- key: a one-hot tonic (pitch class) and a one-hot mode; a mode named without a
  tonic ("a minor-key waltz") sets the mode only.

- instruments (only for encoders built with ``instruments=True``): the multi-hot
  vector of :mod:`tunesmith.conditioning.instruments`, families and instruments.

Prompts that name none of these get no attribute tokens, so the model also learns to
work from the words alone.  ``get_text_encoder("minilm+attributes")`` is the
encoder with tempo and key tokens added, ``"minilm+attributes+instruments"`` the one
with instrument tokens too (the instrument token is opt-in because a model trained
without it would read it as noise).
"""

from __future__ import annotations

import math

import torch

from tunesmith.conditioning.instruments import INSTRUMENT_DIM, instrument_vector, parse_instruments
from tunesmith.conditioning.prompt import parse_key, parse_tempo
from tunesmith.conditioning.text import TextEncoder, check_texts, pad_states

TEMPO_FREQUENCIES = 64  # sinusoid pairs of the tempo token
TOKEN_NORM = 8.0  # about the median norm of MiniLM's token states, so neither kind dominates
# layout of an attribute token: [type (2) | tonic (12) | mode (2) | tempo sinusoids (2 * TEMPO_FREQUENCIES)
#                                  | instrument type (1) | families and instruments (INSTRUMENT_DIM)]
# the instrument part came later: it sits after the first layout so older models read theirs unchanged
_TYPE, _TONIC, _MODE, _TEMPO = 0, 2, 14, 16
MIN_DIM = _TEMPO + 2 * TEMPO_FREQUENCIES
_INSTRUMENT_TYPE = MIN_DIM
_INSTRUMENTS = _INSTRUMENT_TYPE + 1
MIN_DIM_WITH_INSTRUMENTS = _INSTRUMENTS + INSTRUMENT_DIM

def tempo_features(bpm: float, frequencies: int = TEMPO_FREQUENCIES) -> torch.Tensor:
    """(2 * frequencies,) sinusoids of log2(bpm / 60), from 1/4 to 4 cycles per octave."""
    octaves = math.log2(bpm / 60.0)
    rates = torch.logspace(math.log10(0.25), math.log10(4.0), frequencies, dtype=torch.float64)
    angles = 2 * math.pi * rates * octaves
    return torch.cat([angles.sin(), angles.cos()]).float()


def _check_width(dim: int, instruments: bool, what: str) -> None:
    needed = MIN_DIM_WITH_INSTRUMENTS if instruments else MIN_DIM
    if dim < needed:
        raise ValueError(f"attribute tokens need a text width of at least {needed}, {what} {dim}")


def attribute_tokens(text: str, dim: int, instruments: bool = False) -> torch.Tensor:
    """(n, dim) tokens for the tempo, key (and instruments) ``text`` names, each of norm TOKEN_NORM."""
    _check_width(dim, instruments, "got")
    tokens = []
    bpm = parse_tempo(text)
    if bpm is not None:
        token = torch.zeros(dim)
        token[_TYPE] = 1.0
        token[_TEMPO : _TEMPO + 2 * TEMPO_FREQUENCIES] = tempo_features(bpm)
        tokens.append(token)
    tonic, mode = parse_key(text)
    if tonic is not None or mode is not None:
        token = torch.zeros(dim)
        token[_TYPE + 1] = 1.0
        if tonic is not None:
            token[_TONIC + tonic] = 1.0
        if mode is not None:
            token[_MODE + (0 if mode == "major" else 1)] = 1.0
        tokens.append(token)
    if instruments:
        names, families = parse_instruments(text)
        if names or families:
            token = torch.zeros(dim)
            token[_INSTRUMENT_TYPE] = 1.0
            token[_INSTRUMENTS : _INSTRUMENTS + INSTRUMENT_DIM] = instrument_vector(names, families)
            tokens.append(token)
    if not tokens:
        return torch.zeros(0, dim)
    stacked = torch.stack(tokens)
    return stacked * (TOKEN_NORM / stacked.norm(dim=-1, keepdim=True))


class AttributeTextEncoder:
    """A text encoder whose token states start with the prompt's attribute tokens.

    The attribute tokens come first, so truncating long captions to a model's text
    length cuts words, never attributes.  ``embed`` (pooled sentence vectors) is the
    base encoder's, unchanged.
    """

    def __init__(self, base: TextEncoder, instruments: bool = False) -> None:
        self.base = base
        self.dim = base.dim
        self.instruments = instruments
        _check_width(self.dim, instruments, "the base encoder has")

    def encode(self, texts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        items = check_texts(texts)
        states, mask = self.base.encode(items)
        rows = [torch.cat([attribute_tokens(text, self.dim, self.instruments), states[i, mask[i]]]) for i, text in enumerate(items)]
        return pad_states(rows)

    def embed(self, texts: list[str] | str) -> torch.Tensor:
        return self.base.embed(texts)
