"""The per-epoch metrics log (``metrics.jsonl``) and its training-curve plot (``training_curve.png``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"


class MetricsLog:
    """Append-only JSON-lines log of epoch records beside the checkpoints.

    Args:
        directory: the run's output directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / METRICS_FILE

    def read(self) -> List[Dict[str, Any]]:
        """All records; a torn last line (a kill mid-write) is skipped."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_after(self, epoch: int) -> None:
        """Keep only records of epochs <= ``epoch`` (a resumed run rewrites the ones after)."""
        records = [r for r in self.read() if int(r.get("epoch", 0)) <= epoch]
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".jsonl.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        os.replace(temporary, self.path)

    def append(self, record: Dict[str, Any]) -> None:
        """Add one record (flushed at once so a crash loses at most the line being written)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def plot(self, eval_split: str = "test") -> Path:
        """Draw loss and accuracy per epoch (train and ``eval_split``) into ``training_curve.png``."""
        import matplotlib

        matplotlib.use("Agg")  # headless
        import matplotlib.pyplot as plt

        records = self.read()
        epochs = [r["epoch"] for r in records]
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train"), (f"{eval_split}_loss", eval_split)):
            loss_ax.plot(epochs, [r.get(key) for r in records], marker="o", label=label)
        for key, label in (("train_accuracy", "train"), (f"{eval_split}_accuracy", eval_split)):
            acc_ax.plot(epochs, [r.get(key) for r in records], marker="o", label=label)
        loss_ax.set(xlabel="epoch", ylabel="loss (train: with label smoothing / mixup)", title="loss")
        acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1))
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = self.directory / CURVE_FILE
        temporary = self.directory / f".{CURVE_FILE}.tmp.png"
        fig.savefig(temporary, dpi=100)
        plt.close(fig)
        os.replace(temporary, path)
        return path
