"""The one training engine (see engine.py)."""

from tunesmith.train.engine import FitResult, Task, TrainConfig, Trainer, seeded_item_rng, unwrap

__all__ = ["FitResult", "Task", "TrainConfig", "Trainer", "seeded_item_rng", "unwrap"]
