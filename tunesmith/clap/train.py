"""`tunesmith train clap`: the CLAP as a Task of the shared training engine.

Each training item is a stretch of ``windows * window_seconds`` audio from a corpus clip
with the clip's caption.  The audio tower embeds every window; the CoLLAP fusion joins
them into one piece embedding.  The loss is the symmetric contrastive loss of the fused
embeddings against the captions (duplicate captions count as positives), plus the loss of
every single window picking its piece's caption, so that both short clips and long pieces
embed well.  Frozen sentence embeddings of the captions are computed once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.checkpoint import save
from tunesmith.clap.loss import duplicate_aware_targets, soft_contrastive_loss, window_to_text_loss
from tunesmith.clap.model import ClapConfig, ClapModel, sentence_embeddings
from tunesmith.config import register_preset
from tunesmith.train.engine import TrainConfig, unwrap


@dataclass
class ClapDataConfig:
    manifest: str = "data/corpus-v1/manifest.jsonl"
    windows: int = 2  # windows per training item (>1 trains the CoLLAP fusion)
    window_loss_weight: float = 0.5
    valid_split: str = "valid"
    valid_items: int = 256
    # A copy of the corpus through the generators' codec (`tunesmith codec roundtrip`):
    # each training item is read from it with probability augment_p, so the CLAP learns
    # to score generated audio by its music rather than by its codec artifacts.
    augment_manifest: str = ""
    augment_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.augment_p <= 1.0:
            raise ValueError(f"augment_p must be in [0, 1], got {self.augment_p}")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
        if self.window_loss_weight < 0:
            raise ValueError("window_loss_weight must be >= 0")


@dataclass
class RunConfig:
    model: ClapConfig = field(default_factory=ClapConfig)
    data: ClapDataConfig = field(default_factory=ClapDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@register_preset("run/clap", "tiny")
def _tiny() -> RunConfig:
    return RunConfig(
        model=ClapConfig(
            n_mels=32, window_seconds=1.0, channels=(8, 16), embed_dim=32, heads=2, text_hidden=64, max_windows=8
        ),
        data=ClapDataConfig(windows=2, valid_items=16),
        train=TrainConfig(steps=4, batch_size=4, warmup_steps=1, log_every=2, checkpoint_every=2, progress=False,
                          out_dir="runs/clap-tiny"),
    )


@register_preset("run/clap", "small")
def _small() -> RunConfig:
    return RunConfig(
        model=ClapConfig(),
        data=ClapDataConfig(windows=2, valid_items=256),
        train=TrainConfig(steps=1000, batch_size=32, lr=1e-3, warmup_steps=50, weight_decay=0.05, ema_decay=0.995,
                          log_every=10, valid_every=200, checkpoint_every=200, checkpoint_minutes=5.0,
                          out_dir="runs/clap-small"),
    )


class ClapTrainModule(nn.Module):
    """The trainable model with a forward() the engine (and DDP) can call."""

    def __init__(self, model: ClapModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor, valid: torch.Tensor, sentence: torch.Tensor):
        b, w, t = windows.shape
        per_window = self.model.encode_windows(windows.reshape(b * w, t)).reshape(b, w, -1)
        fused = per_window[:, 0] if w == 1 else self.model.fusion(per_window, valid)
        audio = torch.nn.functional.normalize(fused, dim=-1)
        windows_unit = torch.nn.functional.normalize(per_window, dim=-1)
        text = self.model.text_embedding(sentence)
        return audio, windows_unit, text, self.model.logit_scale.clamp(max=4.6052).exp()


class ClapTask:
    """Contrastive training of :class:`ClapModel` on a clip manifest."""

    def __init__(self, config: RunConfig) -> None:
        from tunesmith.data.datasets import AlternateAudioDataset, AudioClipDataset

        self.config = config
        cfg = config.model
        manifest = Path(config.data.manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"CLAP training manifest not found: {manifest} (set data.manifest=...)")
        self.segment_seconds = config.data.windows * cfg.window_seconds
        self.train_dataset = AudioClipDataset(manifest, "train", cfg.sample_rate, 1, self.segment_seconds)
        if config.data.augment_manifest:
            alternate = AudioClipDataset(config.data.augment_manifest, "train", cfg.sample_rate, 1, self.segment_seconds)
            self.train_dataset = AlternateAudioDataset(self.train_dataset, alternate, config.data.augment_p)
        self.net = ClapTrainModule(ClapModel(cfg))
        self._sentences: dict[str, torch.Tensor] = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"clap": self.net}

    def sentences(self, captions: list[str]) -> torch.Tensor:
        """Frozen sentence embeddings, computed once per distinct caption."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._sentences))
        if missing:
            for caption, vector in zip(missing, sentence_embeddings(missing, self.config.model.text_encoder)):
                self._sentences[caption] = vector.clone()
        return torch.stack([self._sentences[c] for c in captions])

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        windows, valid = self.windows_of(torch.stack([it["audio"][0] for it in items]))
        captions = [it["caption"] for it in items]
        return {"windows": windows, "valid": valid, "sentence": self.sentences(captions), "caption": captions}

    def windows_of(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) segments -> (B, W, window) windows and a (B, W) mask of the non-silent ones."""
        w, n = self.config.data.windows, self.config.model.window_samples
        windows = audio[:, : w * n].reshape(audio.shape[0], w, n)
        valid = windows.pow(2).mean(-1).sqrt() > 1e-4
        valid[:, 0] = True  # the first window always counts, even if quiet
        return windows, valid

    def training_step(self, modules: dict[str, nn.Module], batch: dict[str, Any], step: int):
        audio, windows_unit, text, scale = modules["clap"](batch["windows"], batch["valid"], batch["sentence"])
        targets = duplicate_aware_targets(batch["caption"])
        fused_loss = soft_contrastive_loss(scale * audio @ text.T, targets)
        loss = fused_loss
        metrics = {"fused_loss": fused_loss.detach(), "temperature": 1.0 / scale.detach()}
        if windows_unit.shape[1] > 1 and self.config.data.window_loss_weight > 0:
            valid = batch["valid"].reshape(-1)
            owner = torch.arange(audio.shape[0], device=audio.device).repeat_interleave(windows_unit.shape[1])
            flat = windows_unit.reshape(-1, windows_unit.shape[-1])[valid]
            window_loss = window_to_text_loss(scale * flat @ text.T, owner[valid])
            loss = loss + self.config.data.window_loss_weight * window_loss
            metrics["window_loss"] = window_loss.detach()
        with torch.no_grad():
            metrics["batch_R@1"] = (audio @ text.T).argmax(1).eq(torch.arange(len(text), device=text.device)).float().mean()
        return loss, metrics

    def validate(self, modules: dict[str, nn.Module], step: int) -> dict[str, float]:
        model = unwrap(modules["clap"]).model
        return evaluate_clap(model, self.config.data.manifest, self.config.data.valid_split,
                             max_items=self.config.data.valid_items, windows=self.config.data.windows, progress=False)


def evaluate_clap(
    model: ClapModel,
    manifest: str | Path,
    split: str = "test",
    *,
    max_items: int | None = 1000,
    windows: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Retrieval R@k and caption discrimination of a CLAP on one split of a manifest.

    Each clip contributes its first ``windows`` windows (as in training).  Reported:
    text->audio and audio->text R@1/5/10 (clips with identical captions count as one),
    the rate at which the own caption beats a caption of a clip with disjoint instrument
    families, the same against minimal pairs (instrument names swapped for another
    family's), and zero-shot instrument-family accuracy by CHiLS.
    """
    from tqdm.auto import tqdm

    from tunesmith.clap.retrieval import different_family_rate, retrieval_scores, swapped_instrument_rate
    from tunesmith.clap.zeroshot import chils, instrument_hierarchy
    from tunesmith.data.datasets import AudioClipDataset

    cfg = model.config
    dataset = AudioClipDataset(manifest, split, cfg.sample_rate, 1, windows * cfg.window_seconds)
    count = len(dataset) if max_items is None else min(max_items, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    was_training = model.training
    model.eval()
    audio_emb, captions, families, instruments = [], [], [], []
    with torch.no_grad():
        for start in tqdm(range(0, count, 16), desc=f"CLAP on {split}", disable=not progress):
            items = [dataset[i] for i in order[start : start + 16]]
            segment = torch.stack([it["audio"][0] for it in items])
            n = cfg.window_samples
            win = segment[:, : windows * n].reshape(len(items), windows, n)
            valid = win.pow(2).mean(-1).sqrt() > 1e-4
            valid[:, 0] = True
            audio_emb.append(model._fused_with_singles(win, valid) if windows > 1 else model.audio_embedding(win))
            for it in items:
                captions.append(it["caption"])
                families.append(list(it["tags"].get("families", [])))
                instruments.append(list(it["tags"].get("instruments", [])))
        audio = torch.cat(audio_emb)
        text = model.embed_text(captions)
        out = retrieval_scores(audio, text, captions)
        hierarchy = instrument_hierarchy()
        try:
            out["own_vs_other_family_caption"] = different_family_rate(audio, text, families, seed=seed)
        except ValueError:
            pass
        try:
            out["own_vs_swapped_instrument_caption"] = swapped_instrument_rate(
                model, audio, captions, instruments, hierarchy, seed=seed)
        except ValueError:
            pass
        single = [i for i, f in enumerate(families) if len(f) == 1 and f[0] in hierarchy]
        if single:
            pred = chils(model, audio[single], hierarchy)
            out["chils_family_accuracy_single_family_clips"] = float(
                sum(p == families[i][0] for p, i in zip(pred.parents, single)) / len(single))
            out["chils_family_chance"] = 1.0 / len(hierarchy)
    model.train(was_training)
    return out


def make_task(config: RunConfig) -> ClapTask:
    return ClapTask(config)


def export(trainer, config: RunConfig, out_dir: Path) -> Path:
    """Write the trained CLAP (EMA weights when enabled) as a model directory."""
    model = ClapModel(config.model)
    state = {k[len("model."):]: v for k, v in trainer.ema_state_dict("clap").items() if k.startswith("model.")}
    model.load_state_dict(state)
    return save(model, out_dir, extra={"trained_steps": trainer.step, "manifest": str(config.data.manifest),
                                        "train_windows": config.data.windows})
