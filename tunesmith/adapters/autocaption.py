"""Captions for a folder that came without any: tempo, key and instrument tags from the audio.

A stop-gap until a time-aware captioner exists.  Each clip gets what the evaluator's own
estimators say of it (tempo from the onset envelope, key from the chroma profile, the
instrument and its family from the CLAP by CHiLS zero-shot tagging), written the way
prompts say it ("cello, strings, D minor, 96 BPM"), so the facts reach the model through
the same prompt parser that reads a user's prompt.

The tempo goes into the text only, not into the ``tempo_bpm`` tag that drives the beat
clock in training: the clock puts a beat on a clip's first frame, which holds for the
corpus (cut at bar lines) but not for a user's recordings cut every N seconds, and a
clock with the wrong phase would teach the model the wrong thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunesmith.music import tonic_name


class AutoCaptioner:
    """Tags and a caption for a clip (mono audio at any rate), from the CLAP and the signal."""

    def __init__(self, clap: Any = None) -> None:
        from tunesmith.clap import load_clap
        from tunesmith.clap.zeroshot import instrument_hierarchy

        self.clap = clap if clap is not None else load_clap()
        self.hierarchy = instrument_hierarchy()

    def tags(self, wav: torch.Tensor, sample_rate: int) -> dict[str, Any]:
        """``{"instruments", "families", "key", "mode", "tempo_bpm_estimated"}``; a fact the
        estimators cannot give (no pulse, say) is left out."""
        from tunesmith.clap.zeroshot import chils
        from tunesmith.eval import metrics as M

        mono = wav.reshape(-1, wav.shape[-1]).float().mean(0)
        tags: dict[str, Any] = {}
        with torch.inference_mode():
            embedding = self.clap.embed_audio(mono[None, None], sample_rate)
        tagged = chils(self.clap, embedding, self.hierarchy)
        tags["instruments"], tags["families"] = [tagged.children[0]], [tagged.parents[0]]
        signal = mono.numpy().astype(np.float32)
        try:
            key = M.estimate_key(signal, sample_rate)
            tags["key"], tags["mode"] = tonic_name(key.tonic, key.mode), key.mode
        except ValueError:  # silent or pitchless
            pass
        try:
            bpm = M.estimate_tempo(signal, sample_rate)
            if np.isfinite(bpm) and bpm > 0:
                tags["tempo_bpm_estimated"] = round(float(bpm))
        except ValueError:  # no pulse
            pass
        return tags

    def __call__(self, wav: torch.Tensor, sample_rate: int) -> tuple[str, dict[str, Any]]:
        tags = self.tags(wav, sample_rate)
        return caption_of(tags), tags


def caption_of(tags: dict[str, Any]) -> str:
    """"cello, strings, D minor, 96 BPM": the tags in the words a prompt uses."""
    words = [*tags.get("instruments", ())]
    words += [f for f in tags.get("families", ()) if f not in words]
    if tags.get("key") and tags.get("mode"):
        words.append(f"{tags['key']} {tags['mode']}")
    if tags.get("tempo_bpm_estimated"):
        words.append(f"{tags['tempo_bpm_estimated']} BPM")
    return ", ".join(words) or "music"
