"""`tunesmith train lm`: the token LM on cached codec tokens, through the shared engine.

    tunesmith train lm --preset tiny --set data=/work/data/tokens --out runs/lm-tiny
    tunesmith train lm --preset small --set data=... --set codec=/path/to/codec --export models/lm

Each step cuts random windows from the frame cache, lays them out through the
codebook pattern, drops text and melody independently (for classifier-free
guidance) and minimises the cross-entropy of every real cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tunesmith.config import register_preset
from tunesmith.data.cache import FrameCache, read_cache_meta
from tunesmith.lm.data import TokenWindows, collate_windows, encode_captions
from tunesmith.conditioning.conditions import ConditionDropout, Conditioning, drop_conditions
from tunesmith.lm.model import LMConfig, TokenLM, token_loss
from tunesmith.lm.patterns import layout, to_sequence
from tunesmith.train.engine import TrainConfig


@dataclass
class RunConfig:
    model: LMConfig = field(default_factory=LMConfig)
    data: str = "/work/data/tokens"  # a frame-cache directory of codec tokens
    train_split: str = "train"
    valid_split: str = "valid"  # "" or a missing split: no validation
    segment_frames: int = 500  # training window, in frames (10 s at 50 Hz)
    valid_batches: int = 8
    codec: str = ""  # codec model dir: export writes a full generator; a melody model needs it
    # An LM (or token-LM generator) directory to start from (tunesmith.checkpoint.init_from): it may
    # lack parts this model adds, e.g. a beat clock, which then start at zero.
    init_from: str = ""
    # probability that a training window gets a caption freshly drawn from its clip's tags
    # instead of the corpus caption (tunesmith.data.captions.resample_caption)
    caption_resample: float = 0.0
    dropout: ConditionDropout = field(default_factory=ConditionDropout)  # per condition, for guidance
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.segment_frames < 2:
            raise ValueError(f"segment_frames must be >= 2, got {self.segment_frames}")
        if self.segment_frames > self.model.max_frames:
            raise ValueError(f"segment_frames {self.segment_frames} exceeds the model context max_frames {self.model.max_frames}")
        if not 0.0 <= self.caption_resample <= 1.0:
            raise ValueError(f"caption_resample must be in [0, 1], got {self.caption_resample}")


def _transformer(layers: int, heads: int, ffn: int = 0) -> dict[str, Any]:
    return {"num_layers": layers, "num_heads": heads, "ffn_dim": ffn}


@register_preset("run/lm", "tiny")
def tiny() -> RunConfig:
    model = LMConfig(num_codebooks=4, codebook_size=1024, dim=64, backbone_config=_transformer(2, 4), max_frames=500)
    train = TrainConfig(out_dir="runs/lm-tiny", steps=50, batch_size=4, lr=1e-3, warmup_steps=5, log_every=10,
                        checkpoint_every=25, progress=False)
    return RunConfig(model=model, segment_frames=100, train=train)


@register_preset("run/lm", "small")
def small() -> RunConfig:
    """The bundled size: 8.5M parameters (17 MB in fp16), sized for an hour or two of CPU training.

    With a budget this small a smaller model reaches a lower loss (forward+backward of
    8 x 10 s windows: about 7 s at dim 256 against 8.4 s at 384 and 13 s at 512, measured
    on the 2 shared cores) and decodes faster."""
    model = LMConfig(num_codebooks=4, codebook_size=1024, dim=256, backbone_config=_transformer(6, 4), max_frames=1500)
    train = TrainConfig(out_dir="runs/lm-small", steps=20000, batch_size=8, lr=1e-3, warmup_steps=200, ema_decay=0.995,
                        valid_every=250, checkpoint_minutes=5.0)
    return RunConfig(model=model, segment_frames=500, train=train)


@register_preset("run/lm", "musicgen-small")
def musicgen_small() -> RunConfig:
    """MusicGen-small's decoder (about 300M parameters: dim 1024, 24 layers, 16 heads, FFN 4096), for GPUs."""
    model = LMConfig(num_codebooks=4, codebook_size=2048, dim=1024, backbone_config=_transformer(24, 16, 4096), max_frames=1500)
    train = TrainConfig(out_dir="runs/lm-musicgen-small", steps=100000, batch_size=32, lr=1e-4, warmup_steps=4000,
                        ema_decay=0.999, valid_every=2000)
    return RunConfig(model=model, segment_frames=1500, train=train)


def valid_cells(table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, K, S): cells that exist in the pattern and fall on a real (not padded) frame."""
    frame = table.t().to(lengths.device)  # (K, S)
    return (frame >= 0) & (frame < lengths[:, None, None])


def window_loss(
    lm: torch.nn.Module, c: LMConfig, batch: dict[str, torch.Tensor], dropout: ConditionDropout | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of a batch of token windows (``collate_windows``) through the codebook
    pattern; with ``dropout``, the conditions are dropped as in training (for guidance)."""
    tokens = batch["tokens"]
    table = layout(c.pattern, c.num_codebooks, tokens.shape[-1])
    steps = to_sequence(tokens, table, fill=c.special_token)
    cond = Conditioning(batch["text"], batch["text_mask"], batch.get("melody"), batch.get("beat"), batch.get("key"))
    if dropout is not None:
        cond = drop_conditions(cond, dropout)
    return token_loss(lm(steps, cond), steps, valid_cells(table, batch["length"]))


def melody_tracks(cache: FrameCache, codec_dir: str, cache_path: Path, num_codebooks: int) -> list[torch.Tensor]:
    """One-hot chroma (12, T) per clip, from the codec's decoding of its tokens; stored once per run."""
    if cache_path.is_file():
        stored = load_file(str(cache_path))
        if len(stored) == len(cache):
            return [stored[str(i)] for i in range(len(cache))]
    from tunesmith.checkpoint import load_model
    from tunesmith.conditioning.melody import dominant_chroma
    from tunesmith.generator import codec_sample_rate

    if not codec_dir:
        raise ValueError("a melody model trains on chroma of the decoded tokens: set 'codec' to the codec model")
    codec = load_model(codec_dir)
    rate, sr = float(cache.meta["frame_rate"]), codec_sample_rate(codec)
    tracks = []
    with torch.inference_mode():
        for i in tqdm(range(len(cache)), desc="melody chroma", leave=False):
            tokens = cache.clip_frames(i)[:, :num_codebooks].T[None].long()
            wav = getattr(codec, "decode_long", codec.decode)(tokens)
            tracks.append(dominant_chroma(wav, sr, rate, tokens.shape[-1])[0].to(torch.uint8))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({str(i): t for i, t in enumerate(tracks)}, str(cache_path))
    return tracks


class LMTask:
    """The token LM as a :class:`tunesmith.train.engine.Task`."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        c = config.model
        meta = read_cache_meta(config.data)
        if abs(float(meta["frame_rate"]) - c.frame_rate) > 1e-6:
            raise ValueError(f"cache frame rate {meta['frame_rate']} differs from model.frame_rate {c.frame_rate}")
        from tunesmith.conditioning.encoders import get_text_encoder

        encoder = get_text_encoder(c.text_encoder)
        if encoder.dim != c.text_dim:
            raise ValueError(f"text encoder '{c.text_encoder}' is {encoder.dim}-dim, model.text_dim is {c.text_dim}")
        out = Path(config.train.out_dir)
        self.train_dataset = self._windows(config.train_split, encoder, out)
        self.valid_dataset = None
        if config.valid_split and (Path(config.data) / f"{config.valid_split}.safetensors").is_file():
            self.valid_dataset = self._windows(config.valid_split, encoder, out)
        self.model = TokenLM(c)
        if config.init_from:
            from tunesmith.checkpoint import init_from

            self.new_parameters = init_from(self.model, config.init_from)

    def _windows(self, split: str, encoder: Any, out: Path) -> TokenWindows:
        c = self.config.model
        cache = FrameCache(self.config.data, split)
        captions = [r["caption"] for r in cache.records]
        states = encode_captions(captions, encoder, out / f"text_states_{split}_{c.text_encoder}.safetensors")
        top = int(cache.data[:, : c.num_codebooks].max()) if cache.data.numel() else 0
        if top >= c.codebook_size:
            raise ValueError(f"cache has token id {top}, model.codebook_size is {c.codebook_size}")
        melody = melody_tracks(cache, self.config.codec, out / f"melody_{split}.safetensors", c.num_codebooks) if c.melody else None
        return TokenWindows(cache, c.num_codebooks, self.config.segment_frames, states, melody, c.max_text_tokens, c.beat_clock,
                            encoder=encoder, caption_resample=self.config.caption_resample, key_input=c.key_input)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"lm": self.model}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_windows(items)

    def _loss(self, lm: torch.nn.Module, batch: dict[str, torch.Tensor], dropout: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return window_loss(lm, self.config.model, batch, self.config.dropout if dropout else None)

    def training_step(self, modules: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor], step: int):
        loss, per_k = self._loss(modules["lm"], batch, dropout=True)
        return loss, {f"ce/k{k}": float(v) for k, v in enumerate(per_k)}

    def validate(self, modules: dict[str, torch.nn.Module], step: int) -> dict[str, float]:
        if self.valid_dataset is None:
            return {}
        lm = modules["lm"]
        device = next(lm.parameters()).device
        bs, n = self.config.train.batch_size, len(self.valid_dataset)
        losses = []
        for start in range(0, min(n, bs * self.config.valid_batches), bs):
            items = [self.valid_dataset[i] for i in range(start, min(n, start + bs))]
            batch = {k: v.to(device) for k, v in collate_windows(items).items()}
            losses.append(float(self._loss(lm, batch, dropout=False)[0]))
        return {"loss": sum(losses) / len(losses)}


def make_task(config: RunConfig) -> LMTask:
    return LMTask(config)


def export(trainer: Any, config: RunConfig, out_dir: Path) -> Path:
    """Write the trained LM (EMA weights when enabled); with ``codec`` set, a whole generator."""
    from tunesmith.checkpoint import load_model, save

    lm = TokenLM(config.model)
    lm.load_state_dict(trainer.ema_state_dict("lm"))
    lm.eval()
    training = {"training": {"step": trainer.step, "run_dir": str(trainer.out_dir)}}
    if not config.codec:
        return save(lm, out_dir, extra=training)
    from tunesmith.lm.generator import TokenLMGenerator
    from tunesmith.checkpoint import bundled_models

    # A bundled codec is referenced by name (no second copy); weights are stored in fp16.
    codec_name = config.codec if config.codec in bundled_models() else None
    generator = TokenLMGenerator(lm, load_model(config.codec))  # type: ignore[arg-type]
    return generator.save(out_dir, codec_name=codec_name, fp16=True, extra=training)


__all__ = ["RunConfig", "LMTask", "make_task", "export", "valid_cells"]

# The matched state-space presets (run/lm "<size>-mamba2") are defined with the SSM backbone;
# importing it here, after the Transformer presets exist, makes them selectable by name.
import tunesmith.lm.backbones.mamba2  # noqa: E402,F401
