"""tunesmith's own contrastive text-audio model (CLAP), trained on our corpus.

No pretrained audio embedding model can be downloaded here, so we train one: the
recipe of CLIP (Radford et al. 2021) and CLAP (Elizalde et al. 2023; Wu et al. 2023)
at a size a 2-core CPU can train in an hour:

- audio tower: a small convolutional network on log-mel spectrograms (tunesmith.spectral),
  then a Transformer layer over time and attention pooling, projected to ``embed_dim``;
- text tower: the frozen all-MiniLM-L6-v2 sentence embedding (tunesmith.conditioning.text)
  and a trainable projection (the only text weights we store);
- a learned temperature for the contrastive logits;
- a long-form head (CoLLAP, Wu et al. 2024): a piece is cut into windows, each window is
  embedded by the audio tower, and an attention layer fuses the window embeddings into one.

Audio and text embeddings are unit vectors; their dot product is the CLAP score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.audio import resample
from tunesmith.checkpoint import register_model
from tunesmith.spectral import log_mel


@dataclass
class ClapConfig:
    """Sizes of the CLAP towers and the audio front end."""

    sample_rate: int = 24000
    n_mels: int = 64
    n_fft: int = 1024
    hop: int = 800  # 30 frames per second at 24 kHz
    window_seconds: float = 4.0  # the audio tower's input length
    channels: tuple[int, ...] = (64, 96, 128, 128)  # conv widths; each stage halves time
    temporal_layers: int = 1
    heads: int = 4
    embed_dim: int = 256
    text_dim: int = 384  # the frozen sentence encoder's output size
    text_encoder: str = "minilm"
    text_hidden: int = 512
    max_windows: int = 64  # longest piece the CoLLAP fusion accepts, in windows
    fusion_layers: int = 1
    target_db: float = -20.0  # each window is loudness-normalised to this RMS before the tower
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_mels < 8 or self.hop < 1:
            raise ValueError("sample_rate, n_mels (>= 8) and hop must be positive")
        if self.window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {self.window_seconds}")
        if not self.channels:
            raise ValueError("channels must list at least one conv stage")
        if self.embed_dim % self.heads or self.channels[-1] % self.heads:
            raise ValueError("embed_dim and the last conv width must be divisible by heads")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))


class ConvStage(nn.Module):
    """A residual block of two kernel-3 convolutions over time (mel bands as channels), group
    norm and GELU, then 2x average pooling in time.

    Treating the mel bands as channels (a 1-D, "time-delay" network) costs a tenth of the
    2-D convolutions of PANN-style taggers at the same width, which is what lets the CLAP
    train on a shared 2-core CPU.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        groups = math.gcd(8, c_out)
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(groups, c_out),
            nn.GELU(),
            nn.Conv1d(c_out, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(groups, c_out),
        )
        self.skip = nn.Conv1d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.pool = nn.AvgPool1d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.nn.functional.gelu(self.body(x) + self.skip(x)))


class AttentionPool(nn.Module):
    """One learned query attends over a sequence (B, N, D) -> (B, D), padded positions masked."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, key_padding_mask=padding, need_weights=False)
        return out[:, 0]


class AudioEncoder(nn.Module):
    """Log-mel (B, n_mels, frames) -> (B, embed_dim) unnormalised embedding: 1-D conv stages,
    a Transformer layer over time, attention pooling and mean pooling, a linear projection."""

    def __init__(self, config: ClapConfig) -> None:
        super().__init__()
        widths = (config.n_mels, *config.channels)
        self.stages = nn.Sequential(*[ConvStage(a, b) for a, b in zip(widths[:-1], widths[1:])])
        dim = config.channels[-1]
        max_frames = math.ceil(config.window_samples / config.hop) + 1
        self.positions = nn.Parameter(torch.zeros(1, math.ceil(max_frames / 2 ** len(config.channels)) + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, config.heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False) if config.temporal_layers else None
        self.pool = AttentionPool(dim, config.heads)
        self.out = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, config.embed_dim))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.stages(mel).transpose(1, 2)  # (B, T', C)
        x = x + self.positions[:, : x.shape[1]]
        if self.temporal is not None:
            x = self.temporal(x)
        return self.out(torch.cat([self.pool(x), x.mean(dim=1)], dim=-1))


class TextProjection(nn.Module):
    """Frozen sentence embedding (B, text_dim) -> (B, embed_dim): a residual two-layer MLP."""

    def __init__(self, config: ClapConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.text_dim, config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.text_dim, config.text_hidden), nn.GELU(), nn.Linear(config.text_hidden, config.embed_dim)
        )

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.linear(sentence) + self.mlp(sentence)


class WindowFusion(nn.Module):
    """CoLLAP fusion: window embeddings (B, W, D) of one piece -> (B, D).

    Window positions are learned; a Transformer layer lets windows exchange context and
    an attention pool weighs them (a loud chorus can count more than a quiet intro).
    The mean of the windows is added back, so an untrained fusion starts as mean pooling.
    """

    def __init__(self, config: ClapConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.positions = nn.Parameter(torch.zeros(1, config.max_windows, dim))
        layer = nn.TransformerEncoderLayer(dim, config.heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.pool = AttentionPool(dim, config.heads)
        self.gate = nn.Parameter(torch.zeros(1))
        self.max_windows = config.max_windows

    def forward(self, windows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if windows.shape[1] > self.max_windows:
            raise ValueError(f"piece has {windows.shape[1]} windows; this model fuses at most {self.max_windows}")
        if valid is None:
            valid = torch.ones(windows.shape[:2], dtype=torch.bool, device=windows.device)
        padding = ~valid
        x = self.layers(windows + self.positions[:, : windows.shape[1]], src_key_padding_mask=padding)
        weights = valid.unsqueeze(-1).to(windows.dtype)
        mean = (windows * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return mean + torch.tanh(self.gate) * self.pool(x, padding)


@register_model("clap", ClapConfig)
class ClapModel(nn.Module):
    """Audio tower + text projection + temperature + CoLLAP fusion.

    The frozen sentence encoder is not part of the weights: it comes from
    ``tunesmith.conditioning.encoders.get_text_encoder(config.text_encoder)``.
    """

    def __init__(self, config: ClapConfig) -> None:
        super().__init__()
        self.config = config
        self.audio = AudioEncoder(config)
        self.text = TextProjection(config)
        self.fusion = WindowFusion(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    # -- audio ---------------------------------------------------------------

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, T) mono windows at ``config.sample_rate`` -> (B, n_mels, frames) log-mel, each
        window first scaled to ``target_db`` RMS (silent windows stay silent)."""
        cfg = self.config
        rms = wav.pow(2).mean(dim=-1, keepdim=True).sqrt()
        gain = torch.where(rms > 1e-4, 10 ** (cfg.target_db / 20) / rms.clamp_min(1e-4), torch.ones_like(rms))
        mel = log_mel(wav * gain, cfg.sample_rate, n_fft=cfg.n_fft, hop=cfg.hop, n_mels=cfg.n_mels)
        return (mel + 4.0) / 4.0  # roughly zero-mean, unit-scale for speech-level music

    def encode_windows(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, T) mono windows -> (B, embed_dim) unnormalised window embeddings."""
        return self.audio(self.features(wav))

    def audio_embedding(self, windows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W, T) windows of B pieces -> (B, embed_dim) unit vectors (fused when W > 1)."""
        b, w, t = windows.shape
        emb = self.encode_windows(windows.reshape(b * w, t)).reshape(b, w, -1)
        fused = emb[:, 0] if w == 1 else self.fusion(emb, valid)
        return F.normalize(fused, dim=-1)

    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor, sample_rate: int, *, batch_size: int = 16) -> torch.Tensor:
        """Unit audio embeddings of clips: (B, C, T), (C, T) or (T,) audio at any rate -> (B, embed_dim).

        A clip up to one window long is embedded directly (zero-padded); a longer one is cut
        into consecutive windows (a last piece shorter than half a window is dropped) that
        are fused with CoLLAP attention.
        """
        clips = prepare_clips(wav, sample_rate, self.config.sample_rate)
        out = []
        for clip in clips:
            windows = split_windows(clip, self.config.window_samples)
            if windows.shape[0] > self.config.max_windows:
                raise ValueError(
                    f"clip of {clip.shape[-1] / self.config.sample_rate:.0f} s is longer than this CLAP handles "
                    f"({self.config.max_windows * self.config.window_seconds:.0f} s)"
                )
            out.append(windows)
        device = self.logit_scale.device
        embeddings = []
        for start in range(0, len(out), batch_size):
            group = out[start : start + batch_size]
            width = max(w.shape[0] for w in group)
            batch = torch.zeros(len(group), width, self.config.window_samples, device=device)
            valid = torch.zeros(len(group), width, dtype=torch.bool, device=device)
            for i, w in enumerate(group):
                batch[i, : w.shape[0]] = w.to(device)
                valid[i, : w.shape[0]] = True
            if width == 1:
                embeddings.append(self.audio_embedding(batch))
            else:
                embeddings.append(self._fused_with_singles(batch, valid))
        return torch.cat(embeddings).cpu()

    def _fused_with_singles(self, batch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Embeddings of a padded batch where some pieces have one window (no fusion for those)."""
        b, w, t = batch.shape
        emb = self.encode_windows(batch.reshape(b * w, t)).reshape(b, w, -1)
        fused = self.fusion(emb, valid)
        single = valid.sum(1) == 1
        fused = torch.where(single.unsqueeze(-1), emb[:, 0], fused)
        return F.normalize(fused, dim=-1)

    # -- text ----------------------------------------------------------------

    def text_embedding(self, sentence: torch.Tensor) -> torch.Tensor:
        """Frozen sentence embeddings (B, text_dim) -> (B, embed_dim) unit vectors."""
        return F.normalize(self.text(sentence), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str] | str) -> torch.Tensor:
        """Unit text embeddings (B, embed_dim) of captions or prompts."""
        sentence = sentence_embeddings([texts] if isinstance(texts, str) else list(texts), self.config.text_encoder)
        return self.text_embedding(sentence.to(self.logit_scale.device)).cpu()

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Scaled similarity matrix (B_audio, B_text); the temperature is capped at 1/100."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp() * audio @ text.T


def sentence_embeddings(texts: list[str], encoder: str = "minilm") -> torch.Tensor:
    """(B, text_dim) frozen sentence embeddings from the shared text encoder."""
    from tunesmith.conditioning.encoders import get_text_encoder

    if not texts:
        raise ValueError("no texts given")
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a text to embed is empty")
    return get_text_encoder(encoder).embed(texts).float()


def prepare_clips(wav: torch.Tensor, sample_rate: int, target_rate: int) -> list[torch.Tensor]:
    """(B, C, T) / (C, T) / (T,) audio -> list of B mono (T',) tensors at ``target_rate``."""
    if not isinstance(wav, torch.Tensor):
        wav = torch.as_tensor(wav)
    wav = wav.float()
    if wav.dim() == 1:
        wav = wav[None, None]
    elif wav.dim() == 2:
        wav = wav[None]
    if wav.dim() != 3:
        raise ValueError(f"audio must be (T,), (C, T) or (B, C, T), got shape {tuple(wav.shape)}")
    if wav.shape[-1] == 0:
        raise ValueError("audio is empty")
    if not torch.isfinite(wav).all():
        raise ValueError("audio contains NaN or infinite samples")
    mono = wav.mean(dim=1)
    if sample_rate != target_rate:
        mono = resample(mono, sample_rate, target_rate)
    return list(mono)


def split_windows(clip: torch.Tensor, window: int) -> torch.Tensor:
    """(T,) -> (W, window): consecutive windows; a tail shorter than half a window is dropped
    unless it is all there is; the last window is zero-padded."""
    count = max(1, clip.shape[-1] // window + (1 if clip.shape[-1] % window >= window // 2 else 0))
    padded = F.pad(clip, (0, max(0, count * window - clip.shape[-1])))
    return padded[: count * window].reshape(count, window)
