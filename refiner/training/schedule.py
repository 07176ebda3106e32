"""Learning-rate schedule: timm's `CosineLRScheduler`, linear warmup then cosine decay, per optimizer step."""

from __future__ import annotations

from timm.scheduler import CosineLRScheduler
from torch.optim import Optimizer


def warmup_cosine_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int, min_lr: float,
                            warmup_lr: float) -> CosineLRScheduler:
    """timm's cosine schedule, stepped per optimizer update (``scheduler.step_update(step)``).

    The learning rate rises linearly from ``warmup_lr`` to the optimizer's lr over ``warmup_steps`` steps, then
    follows half a cosine down to ``min_lr`` at ``total_steps`` and stays there. Per step rather than per
    epoch, so short CPU runs with few epochs still get a smooth schedule. timm multiplies each param group's
    ``lr_scale`` in (layer-wise decay).

    Args:
        optimizer: its param groups' lr is the peak (timm keeps it as ``initial_lr``).
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup (0: none), counted inside ``total_steps``.
        min_lr: final learning rate.
        warmup_lr: learning rate at step 0.
    """
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=warmup_lr, warmup_prefix=True,
                             cycle_limit=1, t_in_epochs=False)
