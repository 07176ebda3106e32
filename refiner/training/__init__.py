"""Training and evaluation: `refiner train` (one process or torchrun/DDP) and `refiner eval`.

    TrainConfig, load_config   the recipe (frozen dataclass, YAML + key=value overrides)
    Trainer                    the loop: AdamW + warmup/cosine, mixup/cutmix, EMA, atomic last/best checkpoints
    evaluate, plot_confusion   accuracy, per-class accuracy, confusion matrix
"""

from .config import ConfigError, TrainConfig, build_config, load_config
from .evaluation import EvalResult, evaluate, plot_confusion
from .trainer import Trainer

__all__ = ["ConfigError", "EvalResult", "TrainConfig", "Trainer", "build_config", "evaluate", "load_config",
           "plot_confusion"]
