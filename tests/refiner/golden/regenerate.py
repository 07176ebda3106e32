"""Write the golden tensors of the shipped checkpoints (run after re-training `checkpoints/`):

    .venv/bin/python tests/refiner/golden/regenerate.py

Stores, for the first `CANVASES` canvases of each model's own fixed test set: the logits, and the CLS rows of the
softmax and effective maps of the first and last block. `tests/refiner/test_shipped_checkpoints.py` checks
that loading the shipped weights today reproduces them, so a change in the model code, the checkpoint loader,
the canvas generator or the capture that alters what users see is caught.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).resolve().parent / "shipped_checkpoints.npz"
CANVASES = 8


def golden_tensors(directory: Path) -> Dict[str, np.ndarray]:
    """Logits (CANVASES, 10) and CLS rows (CANVASES, heads, N) of blocks 0 and -1 for one shipped checkpoint."""
    import refiner
    from refiner.capture import capture_attention
    from refiner.data import canvas_options_for
    from refiner.data.cluttered_mnist import fixed_test_set
    from refiner.training.evaluation import normalize_batch

    checkpoint = refiner.load_checkpoint(directory)
    data = refiner.load_model(str(directory)).info.data
    options = canvas_options_for(data)
    images, labels, _ = fixed_test_set(**options)
    batch = normalize_batch(images[:CANVASES], data["mean"], data["std"])
    with torch.no_grad(), capture_attention(checkpoint.model, blocks=[0, -1], query_rows=[0]) as rec:
        logits = checkpoint.model(batch)
    depth = len(checkpoint.model.blocks)
    return {"logits": logits.numpy(), "labels": labels[:CANVASES].numpy(),
            "softmax_first": rec.softmax[0][:, :, 0].numpy(), "softmax_last": rec.softmax[depth - 1][:, :, 0].numpy(),
            "effective_first": rec.effective[0][:, :, 0].numpy(),
            "effective_last": rec.effective[depth - 1][:, :, 0].numpy()}


def main() -> int:
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    arrays = {f"{name}/{key}": value for name in ("vanilla", "refined")
              for key, value in golden_tensors(ROOT / "checkpoints" / name).items()}
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN} ({', '.join(f'{k} {v.shape}' for k, v in arrays.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
