"""Accuracy, per-class accuracy and the confusion matrix of a classifier on a dataset split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .distributed import DistContext, all_reduce_sum


@dataclass
class EvalResult:
    """What `evaluate` measured.

    Attributes:
        accuracy: top-1 accuracy over all images.
        loss: mean cross-entropy (no label smoothing).
        confusion: int64 (C, C), rows = true class, columns = predicted class.
        count: number of images.
    """

    accuracy: float
    loss: float
    confusion: torch.Tensor
    count: int

    @property
    def per_class_accuracy(self) -> List[float]:
        """Recall of each class (NaN for a class without images)."""
        totals = self.confusion.sum(dim=1).double()
        return (self.confusion.diag().double() / totals).tolist()

    def to_dict(self, class_names: Sequence[str] = ()) -> Dict[str, object]:
        names = list(class_names) or [str(i) for i in range(self.confusion.shape[0])]
        return {"accuracy": self.accuracy, "loss": self.loss, "count": self.count,
                "per_class_accuracy": {name: (None if acc != acc else acc)  # NaN is not JSON
                                       for name, acc in zip(names, self.per_class_accuracy)},
                "confusion": self.confusion.tolist()}


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a (B, C, H, W) batch in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 250, device: torch.device = torch.device("cpu"),
             context: DistContext | None = None, workers: int = 0, amp: bool = False) -> EvalResult:
    """Top-1 accuracy, loss and confusion matrix of ``model`` on every item of ``dataset``.

    Under DDP each process evaluates the indices ``rank::world_size`` (no padding, so no image counts twice)
    and the counts are summed.

    Args:
        model: classifier mapping (B, C, H, W) normalised images to (B, num_classes) logits.
        dataset: items ``(image, label, ...)`` with images float (C, H, W) in [0, 1].
        num_classes: size of the confusion matrix.
        mean, std: input normalisation.
        batch_size: images per forward pass.
        device: where to run.
        context: the distributed context (None = one process).
        workers: DataLoader workers.
        amp: bf16 autocast (CUDA only).
    """
    was_training = model.training
    model.eval()
    indices = range(len(dataset))
    if context is not None and context.distributed:
        indices = range(context.rank, len(dataset), context.world_size)
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=workers)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in loader:
        images, labels = batch[0].to(device), batch[1].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(normalize_batch(images, mean, std))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        predictions = logits.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + predictions,
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
    if context is not None:
        all_reduce_sum(confusion, context)
        all_reduce_sum(loss_sum, context)
    model.train(was_training)
    count = int(confusion.sum())
    return EvalResult(accuracy=float(confusion.diag().sum()) / max(count, 1), loss=float(loss_sum) / max(count, 1),
                      confusion=confusion.cpu(), count=count)


def plot_confusion(result: EvalResult, path: Path, class_names: Sequence[str] = (), title: str = "") -> Path:
    """Save the row-normalised confusion matrix (counts annotated when it is small enough to read) as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    matrix = result.confusion.double()
    rates = matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    size = matrix.shape[0]
    names = list(class_names) or [str(i) for i in range(size)]
    side = min(16.0, 3.0 + 0.45 * size)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if size <= 20:
        ax.set_xticks(range(size), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(size), names)
        for row in range(size):
            for col in range(size):
                count = int(matrix[row, col])
                if count:
                    ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                            color="white" if rates[row, col] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"accuracy {result.accuracy:.2%} on {result.count} images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
