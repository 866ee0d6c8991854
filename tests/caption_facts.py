"""What a caption says, read back with the captions' own vocabulary (shared by caption tests)."""

import re

from tunesmith.data.captions import SYNONYMS
from tunesmith.data.instruments import BY_NAME


def named_instruments(caption: str, ensemble: str = "\0") -> set[str]:
    """Instruments a caption names: longest phrases first, the ensemble's own name masked."""
    text = caption.lower().replace(ensemble.lower(), " ")
    names = [*BY_NAME, "drum kit"]
    phrases = sorted(((p.lower(), name) for name in names for p in (name, *SYNONYMS.get(name, ()))),
                     key=lambda x: -len(x[0]))
    found = set()
    for phrase, name in phrases:
        pattern = r"\b" + re.escape(phrase) + r"\b"
        if re.search(pattern, text):
            found.add(name)
            text = re.sub(pattern, " ", text)
    return found
