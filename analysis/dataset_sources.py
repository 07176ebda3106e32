"""Dataset statistics over the two kinds of image sets the front ends offer, through `analyze_dataset`:
a dataset split (``refiner analyze --dataset``, the Dataset page's test canvases) and a set of prepared
images (``refiner analyze --images``, the Dataset page's uploads). Both front ends call these, so the same
images give the same statistics, figures and tables in the app and from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from refiner import LoadedModel

from .attention_metrics import MetricSettings
from .dataset import DEFAULT_MAP_BUDGET_BYTES, DatasetAnalysis, analyze_dataset
from .inputs import PreparedImage, build_eval_dataset, dataset_item, dataset_preprocess, prepared_batches


@dataclass
class SplitAnalysis:
    """Statistics of models over the first images of a dataset split.

    Attributes:
        analysis: the statistics (of the whole split on every rank of a distributed run).
        info: the dataset's `refiner.data.DatasetInfo`.
        options: the dataset options used (cluttered-mnist canvas geometry).
        count: images analysed over all ranks.
        firsts: the first images prepared for each model (for per-image analysis).
    """

    analysis: DatasetAnalysis
    info: Any
    options: Dict[str, Any]
    count: int
    firsts: List[PreparedImage] = field(default_factory=list)


def analyze_split(models: Sequence[LoadedModel], name: str, split: str = "test", root: Optional[Path] = None,
                  max_images: int = 1000, batch_size: int = 32, settings: MetricSettings = MetricSettings(),
                  map_budget_bytes: int = DEFAULT_MAP_BUDGET_BYTES, progress: bool = False,
                  on_progress: Optional[Callable[[int], None]] = None, rank: int = 0, world_size: int = 1,
                  first_images: int = 0) -> SplitAnalysis:
    """Every model over the first ``max_images`` images of a dataset split, in batches of ``batch_size``.

    Args:
        models: the models (labels unique); the first one's input size draws cluttered-mnist canvases.
        name, split, root: the dataset (`analysis.inputs.build_eval_dataset`).
        max_images: images (fewer when the split is smaller).
        batch_size: images per forward pass (it also makes the minibatch CKA's minibatches).
        settings: metric settings.
        map_budget_bytes: most captured maps held at once (`analyze_dataset`).
        progress: a tqdm bar on stderr.
        on_progress: called with the images done so far (this rank's), after each batch.
        rank, world_size: this process's share under torchrun (every world_size-th image).
        first_images: how many of the first images to return prepared in ``firsts``.

    Raises:
        refiner.data.DatasetNotFoundError, ValueError: the dataset is missing or unknown.
    """
    dataset, info, options = build_eval_dataset(name, split, root, models)
    count = min(len(dataset), max_images)
    shard = list(range(rank, count, world_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=batch_size,
                                         shuffle=False)
    sample_shape = tuple(dataset[0][0].shape) if count else ()
    preprocess = {m.label: dataset_preprocess(m, sample_shape) for m in models}
    firsts = [dataset_item(dataset, info, index, split, preprocess) for index in range(min(first_images, count))]
    analysis = analyze_dataset({m.label: m.model for m in models}, loader, settings, preprocess=preprocess,
                               progress=progress, total=len(shard), map_budget_bytes=map_budget_bytes,
                               on_progress=on_progress)
    return SplitAnalysis(analysis=analysis, info=info, options=options, count=count, firsts=firsts)


def analyze_prepared(models: Sequence[LoadedModel], items: Sequence[PreparedImage],
                     settings: MetricSettings = MetricSettings(), map_budget_bytes: int = DEFAULT_MAP_BUDGET_BYTES,
                     progress: bool = False, on_progress: Optional[Callable[[int], None]] = None
                     ) -> DatasetAnalysis:
    """Every model over prepared images (each with its own input per model), one image per forward pass.

    Args:
        models: the models whose labels key ``items``' inputs.
        items: `analysis.inputs.prepare_image` outputs.
        settings, map_budget_bytes, progress, on_progress: as in `analyze_split`.
    """
    return analyze_dataset({m.label: m.model for m in models}, prepared_batches(items), settings,
                           progress=progress, total=len(items), map_budget_bytes=map_budget_bytes,
                           on_progress=on_progress)
