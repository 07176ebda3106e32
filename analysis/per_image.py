"""Everything about one image: run each model under `refiner.capture_attention` and compute every metric.

    result = analyze_image({"vanilla": m1, "refined": m2}, image, box=(x0, y0, x1, y1))
    result.models["refined"].metrics["head_diversity"]    # (L,)
    result.models["refined"].effective                    # (L, H, N, N) numpy
    result.cka["vanilla|refined"]                         # (La, Lb), tokens as examples

Models are used as given (they should be in eval mode; nothing about them is changed).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import refiner
from refiner.hashing import sha256_hex

from .attention_metrics import MetricSettings, compute_map_metrics
from .cka import cka_matrix
from .features import pool_block_outputs, record_block_outputs
from .head_diversity import HeadEmbedding, head_embedding
from .layer_maps import LayerMaps
from .similarity import cross_layer_similarity

PAIR_SEPARATOR = "|"


MAP_KINDS = ("effective", "softmax")
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class CapturedBatch:
    """One forward pass of a batch with its attention and block outputs, as numpy.

    Attributes:
        effective: (B, L, H, N, N) float32 maps that multiply V (None when not asked for); float16 when
            `run_with_capture` was asked for it (``float16_above_bytes``).
        softmax: (B, L, H, N, N) softmax maps in the same dtype; NaN for blocks that compute none (None when not
            asked for).
            For a model whose every block multiplies V by its softmax map this is the same (read-only) array
            as ``effective``, so a vanilla ViT's maps are held once.
        logits: (B, num_classes) float32.
        block_outputs: per block, (B, N, D) float32 token representations.
        meta: geometry of the pass.
        has_softmax: (L,) whether each block computes its own softmax map (known at capture, so nobody has to
            scan the maps for NaN).
    """

    effective: Optional[np.ndarray]
    softmax: Optional[np.ndarray]
    logits: np.ndarray
    block_outputs: List[torch.Tensor]
    meta: refiner.AttentionMeta
    has_softmax: np.ndarray

    @property
    def map_bytes(self) -> int:
        """Bytes of the maps held (an array shared by both kinds counted once)."""
        held = {id(m): m.nbytes for m in (self.effective, self.softmax) if m is not None}
        return sum(held.values())


def run_with_capture(model: nn.Module, images: torch.Tensor, kinds: Sequence[str] = MAP_KINDS,
                     float16_above_bytes: Optional[int] = None) -> CapturedBatch:
    """Forward a batch with attention capture and block-output recording, without gradients.

    The batch runs on the model's device; on a GPU under bf16 autocast (the maps stay float32: capture
    recomputes them in fp32 from the block's own q and k). Everything returned is on the CPU. Each layer's
    maps are moved into the returned arrays one at a time and released from the capture as they go, so the
    peak is one copy of the maps asked for (stacking them would hold two: 2.5 GB more per kind for one image
    of Refiner-ViT-L at 448 px).

    With ``float16_above_bytes``, maps whose float32 arrays would hold more than that many bytes are returned in
    float16 instead (for display: `analysis.compare_view.HALF_PRECISION_BYTES`), cast from the captured tensors
    layer by layer, so no float32 copy of them is ever made; that halves the memory written, which at N = 785 is
    where a capture spends its time beyond the forward (fresh pages: 2.5 GB of float32 copies took 2-6 s here,
    about 15-30 s for DINOv2-L at 518 px). Only when every value fits float16's range (`fits_float16`); otherwise
    they stay float32.

    Args:
        model: a ViT supported by `refiner.capture_attention` (every block with the same head count).
        images: (B, C, H, W) preprocessed inputs (any device).
        kinds: which maps to return ("effective", "softmax"); the others are None.
        float16_above_bytes: return the maps in float16 above this many float32 bytes (default: never).

    Returns:
        `CapturedBatch`.
    """
    unknown = set(kinds) - set(MAP_KINDS)
    if unknown:
        raise ValueError(f"kinds must be among {MAP_KINDS}, got {sorted(unknown)}")
    rec, logits, outputs, layers = _captured_forward(model, images, block_outputs=True)
    has_softmax = np.array([rec.softmax[i] is not None for i in layers])
    # A vanilla block's softmax map is its effective map (the capture records one tensor for both): one array.
    same = all(rec.softmax[i] is rec.effective[i] for i in layers)
    dtype = np.float32
    if float16_above_bytes is not None:
        asked = [maps for kind, maps in (("softmax", rec.softmax), ("effective", rec.effective)) if kind in kinds]
        if same and len(asked) == 2:
            asked = asked[:1]
        float32_bytes = len(asked) * len(layers) * rec.effective[layers[0]].numel() * 4
        if float32_bytes > float16_above_bytes and fits_float16(
                [maps[i] for maps in asked for i in layers if maps[i] is not None]):
            dtype = np.float16
    softmax = _release_into_array(rec.softmax, layers, rec.effective, dtype) if "softmax" in kinds else None
    if "effective" not in kinds:
        effective = None
    elif same and softmax is not None:
        softmax.setflags(write=False)  # shared by both names: an in-place change of one would change the other
        effective = softmax
    else:
        effective = _release_into_array(rec.effective, layers, dtype=dtype)
    return CapturedBatch(effective=effective, softmax=softmax, logits=logits.float().cpu().numpy(),
                         block_outputs=list(outputs), meta=rec.meta, has_softmax=has_softmax)


def _captured_forward(model: nn.Module, images: torch.Tensor, block_outputs: bool
                      ) -> Tuple["refiner.AttentionCapture", torch.Tensor, List[torch.Tensor], List[int]]:
    """The one forward under capture: (the capture, logits, block outputs (empty unless asked for), the indices of
    the self-attention layers whose maps are returned). On the model's device; on a GPU under bf16 autocast."""
    device = next(model.parameters()).device
    images = images.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    outputs_context = record_block_outputs(model) if block_outputs else nullcontext([])
    with torch.no_grad(), autocast, outputs_context as outputs, refiner.capture_attention(model) as rec:
        logits = model(images)
    skip = set(rec.meta.class_attention_layers)  # CaiT's CLS-only layers have another shape (see `stacked`)
    layers = [i for i, m in enumerate(rec.effective) if m is not None and i not in skip]
    return rec, logits, list(outputs), layers


@dataclass
class LayerCapture:
    """One image's maps of one kind as the capture recorded them, for the metrics (`capture_layer_maps`).

    Attributes:
        maps: (L, H, N, N) float32 `LayerMaps`: each layer is the captured tensor's own memory (on the CPU).
        meta: geometry of the pass.
        logits: (num_classes,) float32.
        has_softmax: (L,) whether each block computes its own softmax map.
    """

    maps: LayerMaps
    meta: refiner.AttentionMeta
    logits: np.ndarray
    has_softmax: np.ndarray


def capture_layer_maps(model: nn.Module, image: torch.Tensor, kind: str = "effective") -> LayerCapture:
    """One image's float32 maps of ``kind``, layer by layer as captured: what the metrics of a large model read.

    `run_with_capture` copies every layer into one stacked array; the metrics read the layers one at a time, so
    here they keep the captured tensors (`LayerMaps`). That writes no map a second time, which at research scale
    is most of a capture's cost beyond the forward (Refiner-ViT-L at 448 px: 1.3 GB per kind of fresh memory, as
    long as the forward itself on this machine). The other kind is released as soon as the forward ends and no
    block outputs are recorded. For ``kind`` "softmax", a block without its own softmax map (official shared
    blocks) gives its effective map, the rule of the Compare view (`analysis.compare_view.ModelView`).

    Args:
        model: a ViT supported by `refiner.capture_attention`, in eval mode.
        image: (C, H, W) preprocessed input (any device).
        kind: "effective" or "softmax".

    Returns:
        `LayerCapture`.
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    rec, logits, _, layers = _captured_forward(model, image.unsqueeze(0), block_outputs=False)
    has_softmax = np.array([rec.softmax[i] is not None for i in layers])
    chosen = [rec.softmax[i] if kind == "softmax" and rec.softmax[i] is not None else rec.effective[i]
              for i in layers]
    rec.softmax[:], rec.effective[:] = [None] * len(rec.softmax), [None] * len(rec.effective)  # the other kind goes
    maps = LayerMaps([tensor[0].detach().float().cpu().numpy() for tensor in chosen])
    return LayerCapture(maps=maps, meta=rec.meta, logits=logits[0].float().cpu().numpy(), has_softmax=has_softmax)


def fits_float16(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every value of ``tensors`` is within float16's range (+-`FLOAT16_MAX`), so a float16 copy is
    finite (values below float16's smallest subnormal become 0)."""
    for tensor in tensors:
        low, high = torch.aminmax(tensor)  # no temporary of the tensor's size
        if float(high) > FLOAT16_MAX or float(low) < -FLOAT16_MAX:
            return False
    return True


def _release_into_array(maps: List[Optional[torch.Tensor]], layers: Sequence[int],
                        shape_from: Optional[List[Optional[torch.Tensor]]] = None, dtype: type = np.float32
                        ) -> np.ndarray:
    """(B, L, H, Q, N) ``dtype`` copy of the captured ``maps`` at ``layers``, dropping each tensor once copied; a
    layer without a map (no softmax) is NaN, shaped like ``shape_from`` at that layer."""
    reference = (shape_from or maps)[layers[0]]
    batch, heads, queries, keys = reference.shape
    out = np.empty((batch, len(layers), heads, queries, keys), dtype=dtype)
    for column, layer in enumerate(layers):
        tensor = maps[layer]
        if tensor is None:
            out[:, column] = np.nan
            continue
        out[:, column] = tensor.detach().float().cpu().numpy()
        maps[layer] = None
    return out


def metric_maps(batch: CapturedBatch, settings: MetricSettings) -> np.ndarray:
    """The maps the metrics read, (B, L, H, N, N), according to ``settings.map_kind``."""
    maps = batch.effective if settings.map_kind == "effective" else batch.softmax
    if maps is None:
        raise ValueError(f"map_kind={settings.map_kind!r} but this batch was captured without those maps")
    if settings.map_kind == "softmax" and not batch.has_softmax.all():
        raise ValueError("map_kind='softmax' but some blocks compute no softmax map (official Refiner-ViT "
                         "shared blocks); use map_kind='effective'")
    return maps


def top_k(logits: np.ndarray, k: int = 5, class_names: Optional[Sequence[str]] = None
          ) -> List[Tuple[int, str, float]]:
    """The k most probable classes of one image.

    Args:
        logits: (num_classes,).
        k: how many.
        class_names: optional labels (default: the index as text).

    Returns:
        [(class index, label, probability)], most probable first.
    """
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    order = np.argsort(-probs)[: min(k, len(probs))]
    return [(int(i), class_names[i] if class_names is not None else str(int(i)), float(probs[i])) for i in order]


def image_sha256(image: torch.Tensor) -> str:
    """SHA-256 of a preprocessed image tensor's float32 bytes (identifies the exact model input)."""
    return sha256_hex(image.detach().float())


@dataclass
class ModelImageResult:
    """One model on one image.

    Attributes:
        name: the model's label in the analysis.
        effective: (L, H, N, N) float32 effective maps.
        softmax: (L, H, N, N) float32 softmax maps (NaN for blocks without one).
        meta: capture geometry (K, grid, patch size, image size, refined flags).
        metrics: `analysis.attention_metrics.METRICS` key -> array.
        top5: [(class index, label, probability)].
        block_features: per layer, (N, D) token representations (CKA with tokens as examples).
        attributions: when requested: "integrated_gradients", "saliency" (H, W) in [0, 1] and
            "attention_x_gradient" (Gh, Gw) relevance of the patches for the CLS query.
    """

    name: str
    effective: np.ndarray
    softmax: np.ndarray
    meta: refiner.AttentionMeta
    metrics: Dict[str, np.ndarray]
    top5: List[Tuple[int, str, float]]
    block_features: List[np.ndarray]
    attributions: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ImageAnalysis:
    """All models on one image, plus the comparisons between them.

    Attributes:
        models: model label -> `ModelImageResult`, in the given order.
        settings: the metric settings used.
        box: the object box in input pixels, or None.
        image_sha256: hash of the preprocessed input.
        cka: "A" -> (La, La) within-model CKA, "A|B" -> (La, Lb) across models (tokens as examples; only
            when the token counts agree).
        cross_similarity: "A|B" -> (La, Lb) DeepViT column cosine between the two models' layers (only when
            heads and tokens agree).
        head_embedding: all heads of all models (None when token counts differ).
    """

    models: Dict[str, ModelImageResult]
    settings: MetricSettings
    box: Optional[Tuple[float, float, float, float]]
    image_sha256: str
    cka: Dict[str, np.ndarray]
    cross_similarity: Dict[str, np.ndarray]
    head_embedding: Optional[HeadEmbedding]


def pair_key(first: str, second: str) -> str:
    """Key of a model pair in `ImageAnalysis.cka` / ``cross_similarity``."""
    return f"{first}{PAIR_SEPARATOR}{second}"


def _attributions(model: nn.Module, image: torch.Tensor, meta: refiner.AttentionMeta, ig_steps: int
                  ) -> Dict[str, np.ndarray]:
    from .attribution import attention_gradients, attention_x_gradient, integrated_gradients, pixel_heatmap, saliency

    grads = attention_gradients(model, image)
    _, relevance = attention_x_gradient(grads.maps, grads.grads)
    k = meta.num_prefix_tokens
    # The CLS row where there is one; otherwise the mean patch query, under a name that says so.
    if meta.has_class_token and k > 0:
        relevance_name, query_relevance = "attention_x_gradient", relevance[meta.class_token_index, k:]
    else:
        relevance_name, query_relevance = "attention_x_gradient_patch_mean", relevance[k:, k:].mean(axis=0)
    return {
        "integrated_gradients": pixel_heatmap(integrated_gradients(model, image, grads.target, n_steps=ig_steps)),
        "saliency": pixel_heatmap(saliency(model, image, grads.target), reduce="max"),
        relevance_name: query_relevance.reshape(meta.grid_size),
    }


def analyze_image(models: Mapping[str, nn.Module], image: torch.Tensor, settings: MetricSettings = MetricSettings(),
                  box: Optional[Sequence[float]] = None, top: int = 5, class_names: Optional[Sequence[str]] = None,
                  attributions: bool = False, ig_steps: int = 32, embedding_method: str = "pca") -> ImageAnalysis:
    """Run every model on one image and compute every per-image metric and comparison.

    Args:
        models: label -> model (eval mode), e.g. {"vanilla": ..., "refined": ...}.
        image: (C, H, W) preprocessed input (what the models take).
        settings: metric settings (normalisation, thresholds, rollout options, which map).
        box: optional (x0, y0, x1, y1) object box in input pixels (localisation metrics).
        top: number of predictions to keep.
        class_names: optional class labels for the predictions.
        attributions: also compute IntegratedGradients, Saliency and attention x gradient (slower: one
            backward pass per IG step).
        ig_steps: IntegratedGradients steps.
        embedding_method: "pca" or "mds" for the head embedding.

    Returns:
        `ImageAnalysis`.
    """
    if image.dim() != 3:
        raise ValueError(f"analyze_image takes one (C, H, W) image, got shape {tuple(image.shape)}")
    box_tuple = None if box is None else tuple(float(v) for v in box)
    results: Dict[str, ModelImageResult] = {}
    for name, model in models.items():
        batch = run_with_capture(model, image.unsqueeze(0))
        meta = batch.meta
        maps = metric_maps(batch, settings)[0]
        metrics = compute_map_metrics(maps, meta.num_prefix_tokens, meta.grid_size, meta.patch_size, settings,
                                      box_tuple, class_token_index=meta.class_token_index)
        results[name] = ModelImageResult(
            name=name, effective=batch.effective[0], softmax=batch.softmax[0], meta=meta, metrics=metrics,
            top5=top_k(batch.logits[0], top, class_names),
            block_features=pool_block_outputs(batch.block_outputs, "tokens", meta.num_prefix_tokens),
            attributions=_attributions(model, image, meta, ig_steps) if attributions else {})
    return ImageAnalysis(models=results, settings=settings, box=box_tuple, image_sha256=image_sha256(image),
                         **_comparisons(results, settings, embedding_method))


def _comparisons(results: Dict[str, ModelImageResult], settings: MetricSettings, embedding_method: str) -> dict:
    """Within- and across-model CKA, cross-model similarity and the joint head embedding."""
    names = list(results)
    cka: Dict[str, np.ndarray] = {n: cka_matrix(results[n].block_features) for n in names}
    cross: Dict[str, np.ndarray] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = results[a], results[b]
            if ra.block_features[0].shape[0] == rb.block_features[0].shape[0]:
                cka[pair_key(a, b)] = cka_matrix(ra.block_features, rb.block_features)
            maps_a, maps_b = _maps(ra, settings), _maps(rb, settings)
            if maps_a.shape[1:] == maps_b.shape[1:]:
                cross[pair_key(a, b)] = cross_layer_similarity(maps_a, settings.normalize, settings.tau,
                                                               other=maps_b).matrix
    token_counts = {r.effective.shape[-1] for r in results.values()}
    embedding = head_embedding({n: _maps(r, settings) for n, r in results.items()}, method=embedding_method,
                               normalize=settings.normalize) if len(token_counts) == 1 else None
    return {"cka": cka, "cross_similarity": cross, "head_embedding": embedding}


def _maps(result: ModelImageResult, settings: MetricSettings) -> np.ndarray:
    return result.effective if settings.map_kind == "effective" else result.softmax
