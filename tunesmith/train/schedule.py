"""Learning-rate schedules as pure functions of the step (no scheduler state to pickle)."""

from __future__ import annotations

import math


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    min_ratio: float = 0.1,
    warmup: str = "linear",
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up is linear, or exponential as in Stable Audio (1 - exp(-step / warmup)).
    After warm-up: ``cosine`` decays to ``min_ratio`` at ``total_steps``;
    ``inverse_sqrt`` decays as sqrt(warmup / step); ``constant`` stays at 1.
    """
    if warmup == "exponential":
        ramp = 1.0 - math.exp(-(step + 1) / max(warmup_steps, 1)) if warmup_steps > 0 else 1.0
    else:
        ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return ramp
    if schedule == "inverse_sqrt":
        return ramp * min(1.0, math.sqrt(max(warmup_steps, 1) / max(step + 1, 1)))
    if schedule == "cosine":
        if step < warmup_steps and warmup == "linear":
            return ramp
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        decay = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return ramp * decay
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (cosine, inverse_sqrt, constant)")
