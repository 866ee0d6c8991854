"""The controls a user asks for, as one loss over decoded audio: what DITTO optimises.

    intensity="0:-30,5:-10,10:-30"   loudness curve (dBFS or words) over time, or a dB curve
    structure="AABA"                 sections that repeat ("A:4,B:8,A:4" with seconds)
    loop=2.0                         a seamless loop: the clip is rendered 2 s longer, the extra
                                     tail is optimised to repeat the head and crossfaded into it
    melody=<one-hot chroma>          follow a reference's melody (its dominant pitch class per frame)
    clap="a solo cello"              sound like a text, by tunesmith's CLAP (text control of a model
                                     that was not given the text, e.g. the unconditional one)

Each control's loss is divided by its value at the starting noise, so that controls of
different units weigh the same, times its weight (default 1), and summed.  The report
gives each control's raw loss and its own measure (correlation, accuracy, seam ratio)
before and after, for the sidecar.
"""

from __future__ import annotations

from typing import Any

import torch

from tunesmith.control.features import (
    fold_loop,
    intensity_loss,
    intensity_target,
    loop_seam_loss,
    loop_seam_ratio,
    loudness_curve,
    melody_loss,
    pitch_class_accuracy,
    pitch_class_distribution,
    self_similarity,
    spectral_frames,
    structure_correlation,
    structure_loss,
    structure_target,
)

FEATURE_RATE = 20.0  # frames per second of every control feature
CONTROL_NAMES = ("intensity", "structure", "loop", "melody", "clap")
CLAP_MODEL = "clap-24k"  # the bundled CLAP the text control scores with


def clap_audio_embedding(clap: Any, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(B, C, T) audio -> (B, E) unit CLAP embeddings, differentiable in the audio (consecutive
    windows fused as the CLAP model fuses them; a rate change by linear interpolation, which is
    enough for an embedding and keeps the gradient)."""
    mono = wav.mean(dim=1) if wav.dim() == 3 else wav
    rate = clap.config.sample_rate
    if sample_rate != rate:
        size = max(1, round(mono.shape[-1] * rate / sample_rate))
        mono = torch.nn.functional.interpolate(mono[:, None], size=size, mode="linear", align_corners=False)[:, 0]
    window = clap.config.window_samples
    count = max(1, mono.shape[-1] // window + (1 if mono.shape[-1] % window >= window // 2 else 0))
    mono = torch.nn.functional.pad(mono, (0, max(0, count * window - mono.shape[-1])))[:, : count * window]
    return clap.audio_embedding(mono.reshape(mono.shape[0], count, window))


def rendered_seconds(controls: dict[str, Any], duration: float) -> float:
    """Seconds a request renders before its controls' post-processing: a loop's overlap more,
    whose tail is then folded into the head (:meth:`ControlLoss.loop`)."""
    return duration + float(controls["loop"]) if controls.get("loop") is not None else duration


class ControlLoss:
    """Build once per request; call on decoded audio (B, C, T) for the weighted, normalised sum."""

    def __init__(self, controls: dict[str, Any], sample_rate: int, duration: float,
                 weights: dict[str, float] | None = None, clap: Any = None) -> None:
        unknown = set(controls) - set(CONTROL_NAMES)
        if unknown:
            raise ValueError(f"unknown noise-optimisation controls: {', '.join(sorted(unknown))}")
        if not controls:
            raise ValueError("no control to optimise for")
        self.sample_rate, self.frames = sample_rate, int(duration * FEATURE_RATE)
        self.output_samples = round(duration * sample_rate)
        self.render_seconds = rendered_seconds(controls, duration)  # the clip the loss reads
        if self.frames < 4:
            raise ValueError(f"{duration:g} s is too short to control (at least {4 / FEATURE_RATE:g} s)")
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in controls}
        self.targets: dict[str, Any] = {}
        if "intensity" in controls:
            intensity = controls["intensity"]
            if torch.is_tensor(intensity):  # a curve in dB at FEATURE_RATE (a reference's): held past its end
                if intensity.dim() != 1 or intensity.numel() == 0 or not torch.isfinite(intensity).all():
                    raise ValueError("an intensity curve must be a finite 1-D tensor of dB values")
                curve = intensity.float()[: self.frames]
                self.targets["intensity"] = torch.cat([curve, curve[-1:].expand(self.frames - curve.numel())])
            else:
                self.targets["intensity"] = intensity_target(str(intensity), self.frames, FEATURE_RATE)
        if "structure" in controls:
            self.targets["structure"] = structure_target(str(controls["structure"]), self.frames, FEATURE_RATE)
        if "loop" in controls:
            seconds = float(controls["loop"])
            overlap = int(round(seconds * FEATURE_RATE))
            if not 1 <= overlap <= self.frames // 2:
                raise ValueError(f"loop {seconds:g} s must be between {1 / FEATURE_RATE:g} s and half the clip")
            self.targets["loop"] = overlap
        if "melody" in controls:
            melody = controls["melody"]
            if not (torch.is_tensor(melody) and melody.dim() == 3 and melody.shape[1] == 12):
                raise ValueError("the melody target must be a (B, 12, F) one-hot chroma")
            self.targets["melody"] = melody.float()
        if "clap" in controls:
            text = controls["clap"]
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the clap control is a text to sound like, e.g. 'a solo cello'")
            if clap is None:
                from tunesmith.checkpoint import load_model

                clap = load_model(CLAP_MODEL)
            self.clap = clap.eval().requires_grad_(False)
            self.targets["clap"] = self.clap.embed_text([text])
        self.scale: dict[str, float] | None = None

    def features(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the requested controls measure, each computed once: the loudness curve, the
        per-frame pitch-class distribution (structure and melody both read it), the log-mel
        frames (loop) and the CLAP embedding."""
        out: dict[str, torch.Tensor] = {}
        if "intensity" in self.targets:
            out["curve"] = loudness_curve(wav, self.sample_rate, FEATURE_RATE)[..., : self.frames]
        if self.targets.keys() & {"structure", "melody"}:
            out["chroma"] = pitch_class_distribution(wav, self.sample_rate, FEATURE_RATE)[..., : self.frames]
        if "loop" in self.targets:
            out["spectrum"] = spectral_frames(wav, self.sample_rate, FEATURE_RATE)[..., : self.frames + self.targets["loop"]]
        if "clap" in self.targets:
            out["clap"] = clap_audio_embedding(self.clap, wav, self.sample_rate)
        return out

    def parts(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if "intensity" in self.targets:
            curve = features["curve"]
            out["intensity"] = intensity_loss(curve, self.targets["intensity"][: curve.shape[-1]])
        if "structure" in self.targets:
            out["structure"] = structure_loss(self_similarity(features["chroma"]), self.targets["structure"])
        if "melody" in self.targets:
            out["melody"] = melody_loss(features["chroma"], self.targets["melody"])
        if "loop" in self.targets:
            out["loop"] = loop_seam_loss(features["spectrum"], self.targets["loop"])
        if "clap" in self.targets:  # 1 - cosine of unit vectors
            out["clap"] = 1 - (features["clap"] * self.targets["clap"].to(features["clap"])).sum(dim=-1).mean()
        return out

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        parts = self.parts(self.features(wav))
        if self.scale is None:  # the first call is at the starting noise
            self.scale = {name: max(float(value.detach()), 1e-8) for name, value in parts.items()}
        return sum(self.weights[name] * value / self.scale[name] for name, value in parts.items())

    def loop(self, wav: torch.Tensor) -> torch.Tensor:
        """The rendered clip (..., T) as what the user gets: a loop's tail folded into its head."""
        if "loop" not in self.targets:
            return wav
        return fold_loop(wav, wav.shape[-1] - self.output_samples)

    @torch.no_grad()
    def report(self, wav: torch.Tensor) -> dict[str, dict[str, float]]:
        """Each control's raw loss and its own measure of adherence, on the rendered clip (for a
        loop: before its fold; the seam is measured on the folded loop, from its end to its start)."""
        needed = round(self.render_seconds * self.sample_rate) - 1
        if wav.shape[-1] < needed:
            raise ValueError(f"the controls read {self.render_seconds:g} s of audio, got {wav.shape[-1] / self.sample_rate:g} s")
        features = self.features(wav)
        out: dict[str, dict[str, float]] = {name: {"loss": round(float(v), 6)} for name, v in self.parts(features).items()}
        if "intensity" in out:
            curve = features["curve"][0]
            target = self.targets["intensity"][: curve.shape[-1]]
            out["intensity"]["correlation"] = round(float(torch.corrcoef(torch.stack([curve, target]))[0, 1]), 4)
        if "structure" in out:
            out["structure"]["correlation"] = round(structure_correlation(self_similarity(features["chroma"]),
                                                                          self.targets["structure"]), 4)
        if "melody" in out:
            out["melody"]["accuracy"] = round(pitch_class_accuracy(features["chroma"], self.targets["melody"]), 4)
        if "clap" in out:
            out["clap"]["score"] = round(1 - out["clap"]["loss"], 4)
        if "loop" in out:
            out["loop"]["seam_ratio"] = round(loop_seam_ratio(self.loop(wav), self.sample_rate, FEATURE_RATE), 4)
        return out
