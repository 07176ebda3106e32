"""The training schedule is timm's CosineLRScheduler, stepped per update: linear warmup, half a cosine, then
the floor; equal to the closed form this project used before timm's."""

import math

import pytest
import torch

from refiner.training.schedule import warmup_cosine_scheduler


def _closed_form(step: int, total: int, warmup: int, lr: float, min_lr: float, warmup_lr: float) -> float:
    if warmup > 0 and step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("total, warmup", [(100, 10), (37, 0), (5, 5)])
def test_rates_per_step(total: int, warmup: int) -> None:
    lr, min_lr, warmup_lr = 1e-3, 1e-5, 1e-6
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr_scale": 0.5}], lr=lr)
    scheduler = warmup_cosine_scheduler(optimizer, total, warmup, min_lr, warmup_lr)
    for step in range(total + 3):
        scheduler.step_update(step)
        expected = _closed_form(step, total, warmup, lr, min_lr, warmup_lr)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-18), step
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5 * expected, rel=1e-12, abs=1e-18)
    if warmup:
        scheduler.step_update(0)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(warmup_lr)
        scheduler.step_update(warmup)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr)  # the peak, where warmup ends
    scheduler.step_update(total + 1 if total == warmup else total)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(min_lr)
