"""Text encoders by name: ``get_text_encoder("minilm+attributes")``, one shared instance per name.

A name is a base encoder (:mod:`.text`) with optional suffixes that add the attribute
tokens of :mod:`.attributes`; a model stores the name it was trained with.
"""

from __future__ import annotations

import threading

from tunesmith.conditioning.attributes import AttributeTextEncoder
from tunesmith.conditioning.text import MiniLMTextEncoder, T5TextEncoder, TextEncoder

_ENCODERS: dict[tuple[str, str], TextEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_text_encoder(name: str = "minilm", device: str = "cpu") -> TextEncoder:
    """A shared encoder by name: ``minilm`` (default, offline) or ``t5:<name-or-path>``.

    A ``+attributes`` suffix (``minilm+attributes``) adds the tempo and key tokens of
    :mod:`tunesmith.conditioning.attributes` in front of the base encoder's states;
    ``+attributes+instruments`` adds the instrument token as well.
    """
    for suffix, instruments in (("+attributes", False), ("+attributes+instruments", True)):
        if name.endswith(suffix):
            base = get_text_encoder(name[: -len(suffix)], device)
            key = (name, str(device))
            with _ENCODERS_LOCK:
                if key not in _ENCODERS:
                    _ENCODERS[key] = AttributeTextEncoder(base, instruments=instruments)
                return _ENCODERS[key]
    key = (name, str(device))
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:
            if name == "minilm":
                _ENCODERS[key] = MiniLMTextEncoder(device)
            elif name.startswith("t5:"):
                _ENCODERS[key] = T5TextEncoder(name[3:], device)
            elif name == "t5":
                _ENCODERS[key] = T5TextEncoder("t5-base", device)
            else:
                raise ValueError(f"unknown text encoder '{name}' (known: minilm, t5, t5:<name-or-path>, each optionally +attributes or +attributes+instruments)")
        return _ENCODERS[key]
