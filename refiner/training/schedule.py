"""Learning-rate schedule: linear warmup then cosine decay, evaluated per optimizer step."""

from __future__ import annotations

import math


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float,
                     warmup_lr: float) -> float:
    """Learning rate at ``step`` (0-based).

    Rises linearly from ``warmup_lr`` to ``lr`` over ``warmup_steps`` steps, then follows half a cosine from
    ``lr`` down to ``min_lr`` at ``total_steps``. Per-step rather than per-epoch so short CPU runs with few
    epochs still get a smooth schedule.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
