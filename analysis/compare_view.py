"""The Compare view of two models on one image: its data, its settings, and all of its figures and tables.

`ModelView` holds one model's captured maps on one image (`capture_view` makes it, for the app and the tests; a view
bundle stores it in ``maps/maps.npz``, see `ModelView.from_arrays`). A large view holds its maps in float16 for
display only; its metrics come from a float32 capture of their own (`capture_metrics`, `view_metrics`). `compare_figures` and
`compare_tables`
build what the Compare page shows for a `CompareSettings`; the page draws them and ``refiner analyze
--manifest bundle.zip`` re-makes them from the bundle, so both write the same files (DESIGN section 6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go

from .attention_metrics import MetricSettings, compute_map_metrics
from .rollout import fuse_heads
from .view_figures import attention_overlay, color_range, heads_grid, symmetric_range, token_matrix, top_k_bars

if TYPE_CHECKING:  # annotations only: no import cost for the figure code
    import PIL.Image

    import refiner

HeadChoice = Union[int, str]  # a head index, or "mean" / "max" fusion over heads
SLOTS = ("A", "B")
# The parts of the view, in page order; `compare_figures` builds the ones asked for.
PARTS = ("overlay", "top5", "heads", "matrix", "softmax-vs-effective", "difference")

# Display precision (issue 10): a view whose float32 maps are larger than this holds them in float16. Below it a
# view costs at most 256 MB (ViT-B/16 at 224 px: 22 MB; the shipped pair: under 1 MB), so it keeps its exact maps:
# the raw-maps NPZ and bundles stay float32 and any metric setting is computed from the held maps. Above it (e.g.
# Refiner-ViT-L at 448 px: 2.5 GB, DINOv2-L at 518 px: 2.9 GB) the maps are what fills the map store, and half
# precision holds twice the views in the same budget. float16 keeps 11 significant bits: every drawn value is
# within 2^-11 (0.05%) of its float32 value relative to its magnitude (absolute 2^-25 below 2^-14), far under one
# step of a 256-colour scale, and its sign is kept. Its range is +-65504: a view with any larger magnitude stays
# float32 (never clipped). Metrics never read the float16 maps (`view_metrics`).
HALF_PRECISION_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ViewGeometry:
    """What the sidebar's layer, head and query pickers need of a model's view, known without running it.

    Attributes:
        depth: blocks L of the view (self-attention layers; CaiT's class-attention layers are not in a view).
        num_heads: heads per block H.
        num_prefix_tokens: K.
        grid: (Gh, Gw) at the model's input size.
        class_token_index: the CLS token's index, or None.
    """

    depth: int
    num_heads: int
    num_prefix_tokens: int
    grid: Tuple[int, int]
    class_token_index: Optional[int]

    @property
    def num_tokens(self) -> int:
        """N = K + Gh * Gw."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]


def model_geometry(loaded: "refiner.LoadedModel") -> ViewGeometry:
    """The `ViewGeometry` every view of ``loaded`` has (equal to `ModelView.geometry`), from the model's layers and
    token layout, so a page that draws no map (Analysis, Dataset, Models) never captures one to learn it."""
    from refiner.capture_adapters import attention_layers, layer_num_heads
    from refiner.model_geometry import grid_for_image, token_layout

    layers, class_layers = attention_layers(loaded.model)
    own = [attn for index, attn in enumerate(layers) if index not in set(class_layers)]
    layout = token_layout(loaded.model)
    _, height, width = loaded.info.input_size
    return ViewGeometry(depth=len(own), num_heads=min(layer_num_heads(attn) for attn in own),
                        num_prefix_tokens=int(layout.num_prefix_tokens),
                        grid=tuple(int(g) for g in grid_for_image(loaded.model, height, width)),
                        class_token_index=layout.class_token_index)


@dataclass(frozen=True)
class ModelView:
    """Everything the Compare view draws for one model on one image.

    Attributes:
        probs: (C,) class probabilities.
        softmax: (L, H, N, N) softmax maps; for blocks without one (official shared blocks) the effective map
            is repeated and ``has_softmax`` is False. float32, or float16 for display in a large view
            (`HALF_PRECISION_BYTES`).
        effective: (L, H, N, N) maps that multiply V, in the same precision.
        has_softmax: (L,) whether the block computes its own softmax map.
        refined: (L,) whether the block's effective map differs from its softmax by construction.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.
        picture: (H, W, 3) uint8, the image exactly as the model saw it (before normalisation).
        input_tensor: (C, H, W) float32, the normalised model input (for exports and the manifest).
        class_token_index: the CLS token's index, or None for a model without one (registers + pooling).
    """

    probs: np.ndarray
    softmax: np.ndarray
    effective: np.ndarray
    has_softmax: np.ndarray
    refined: np.ndarray
    num_prefix_tokens: int
    grid: Tuple[int, int]
    patch_size: Tuple[int, int]
    picture: np.ndarray
    input_tensor: np.ndarray
    class_token_index: Optional[int] = 0

    @property
    def exact(self) -> bool:
        """Whether the maps are the capture's float32 values (False: float16 display copies)."""
        return self.effective.dtype == np.float32

    @property
    def depth(self) -> int:
        """Number of blocks L."""
        return int(self.effective.shape[0])

    @property
    def num_heads(self) -> int:
        """Heads per block H."""
        return int(self.effective.shape[1])

    @property
    def geometry(self) -> ViewGeometry:
        """Depth, heads and token layout (`model_geometry` gives the same without a capture)."""
        return ViewGeometry(depth=self.depth, num_heads=self.num_heads, num_prefix_tokens=self.num_prefix_tokens,
                            grid=tuple(self.grid), class_token_index=self.class_token_index)

    def maps(self, kind: str) -> np.ndarray:
        """(L, H, N, N) maps of ``kind`` "softmax" or "effective"."""
        if kind not in ("softmax", "effective"):
            raise ValueError(f"kind must be softmax or effective, not {kind!r}")
        return self.softmax if kind == "softmax" else self.effective

    def kind_at(self, layer: int, kind: str) -> str:
        """The map kind drawn at 0-based ``layer`` when ``kind`` is asked for: a block without its own softmax
        map (official shared blocks) only has the effective one."""
        return kind if self.has_softmax[layer] else "effective"

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], label: str) -> "ModelView":
        """The view of model ``label`` from arrays named ``<label>/<array>`` (a bundle's ``maps/maps.npz``,
        written by `app.bundle.maps_arrays`; ``geometry`` = [K, Gh, Gw, ph, pw, H_img, W_img];
        ``class_token_index`` = [index], -1 for none; bundles written before it have their CLS at 0)."""
        def get(name: str) -> np.ndarray:
            key = f"{label}/{name}"
            if key not in arrays:
                raise ValueError(f"the bundle's raw maps have no {key!r}")
            return np.asarray(arrays[key])

        geometry = [int(v) for v in get("geometry")]
        cls_key = f"{label}/class_token_index"
        cls_index = int(np.asarray(arrays[cls_key]).ravel()[0]) if cls_key in arrays else 0
        return cls(probs=get("probs"), softmax=get("softmax"), effective=get("effective"),
                   has_softmax=get("has_softmax").astype(bool), refined=get("refined").astype(bool),
                   num_prefix_tokens=geometry[0], grid=(geometry[1], geometry[2]),
                   patch_size=(geometry[3], geometry[4]), picture=get("picture"), input_tensor=get("input"),
                   class_token_index=cls_index if cls_index >= 0 else None)


def model_picture(loaded: "refiner.LoadedModel", image: "PIL.Image.Image") -> np.ndarray:
    """(H, W, 3) uint8: ``image`` exactly as the model sees it (its own resize and crop, before normalisation)."""
    return np.asarray(loaded.info.view(image).convert("RGB"))


def capture_view(loaded: "refiner.LoadedModel", image: "PIL.Image.Image", precision: str = "auto") -> ModelView:
    """One model on one picture: a forward pass with capture (`analysis.per_image.run_with_capture`, the one
    capture path of the app and the CLI), as a `ModelView`, the maps that are drawn.

    The model's own transform makes the input (timm's eval transform or the checkpoint's recorded one; images
    smaller than the input are enlarged). A vanilla model's softmax and effective maps are one read-only array;
    a block without its own softmax map (official shared blocks) shows its effective map, ``has_softmax`` False.

    A float16 view (``precision`` "float16", or "auto" above `HALF_PRECISION_BYTES`) takes its maps straight from
    the capture's tensors, cast layer by layer (no float32 copy of them is made), when every value fits float16's
    range; otherwise it stays float32. Its metrics come from a float32 capture of their own (`capture_metrics`).

    Args:
        loaded: the model.
        image: the picture.
        precision: "auto", "float32" or "float16" (display maps; "float16" falls back to float32 when a map
            does not fit float16's range).
    """
    from .per_image import run_with_capture

    if precision not in ("auto", "float32", "float16"):
        raise ValueError(f"precision must be auto, float32 or float16, not {precision!r}")
    x = loaded.info.transform(image)
    captured = run_with_capture(loaded.model, x[None], float16_above_bytes=(
        None if precision == "float32" else 0 if precision == "float16" else HALF_PRECISION_BYTES))
    meta = captured.meta
    effective = captured.effective[0]
    has_softmax = captured.has_softmax
    # One object for both names when the capture has one array for both (a vanilla model).
    softmax = effective if captured.softmax is captured.effective else captured.softmax[0]
    if not has_softmax.all():  # in place: the capture's own array (a vanilla model, sharing it, has every map)
        softmax[~has_softmax] = effective[~has_softmax]
    logits = captured.logits[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    return ModelView(probs=(probs / probs.sum()).astype(np.float32), softmax=softmax, effective=effective,
                     has_softmax=has_softmax, refined=np.array(meta.refined),
                     num_prefix_tokens=int(meta.num_prefix_tokens), grid=tuple(meta.grid_size),
                     patch_size=tuple(meta.patch_size), picture=model_picture(loaded, image), input_tensor=x.numpy(),
                     class_token_index=meta.class_token_index)


def capture_metrics(loaded: "refiner.LoadedModel", image: "PIL.Image.Image", settings: MetricSettings,
                    box: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """Every section 5 metric of one model on one picture, from a float32 capture made for them and not kept.

    The metrics of a float16 view (`view_metrics`). The capture keeps only the maps of ``settings.map_kind``, as
    the tensors it recorded (`analysis.per_image.capture_layer_maps`: no stacked copy), so its memory is one
    kind's float32 maps and the forward's; the values equal those of a float32 `capture_view`'s maps exactly.

    Args:
        loaded: the model.
        image: the picture.
        settings: metric settings.
        box: the object box (x0, y0, x1, y1) in input pixels for the localisation metrics, or None.
    """
    from .per_image import capture_layer_maps

    captured = capture_layer_maps(loaded.model, loaded.info.transform(image), settings.map_kind)
    meta = captured.meta
    return compute_map_metrics(captured.maps, meta.num_prefix_tokens, meta.grid_size, meta.patch_size, settings,
                               None if box is None else tuple(box), class_token_index=meta.class_token_index)


def _map_metrics(view: ModelView, settings: MetricSettings, box: Optional[Sequence[float]]) -> Dict[str, np.ndarray]:
    """`compute_map_metrics` of a float32 view's maps of ``settings.map_kind`` (a block without its own softmax map
    holds its effective map in ``softmax``: `capture_view`)."""
    return compute_map_metrics(view.maps(settings.map_kind), view.num_prefix_tokens, view.grid, view.patch_size,
                               settings, None if box is None else tuple(box), class_token_index=view.class_token_index)


def view_metrics(view: ModelView, settings: MetricSettings, box: Optional[Sequence[float]],
                 exact_metrics: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """Every section 5 metric of a view, always from float32 maps.

    A float32 view computes them from its maps; a float16 view calls ``exact_metrics()`` (a float32 capture of the
    same model and image, e.g. ``capture_metrics(loaded, image, settings, box)``). Never from float16 maps.

    Args:
        view: the (possibly float16) view.
        settings: metric settings.
        box: object box in input pixels, or None.
        exact_metrics: computes them from a float32 capture when the view is float16.

    Returns:
        `analysis.attention_metrics.METRICS` key -> array.
    """
    return _map_metrics(view, settings, box) if view.exact else exact_metrics()


def head_matrix(view: ModelView, layer: int, head: HeadChoice, kind: str = "effective") -> np.ndarray:
    """(N, N) float32 map of one head, or of all heads fused by "mean" or "max", at 0-based ``layer``.

    float16 display maps are widened to float32 here (plotly has no float16 arrays); the head mean of a float16
    layer is summed in float32 (no float16 rounding of the sum)."""
    maps = view.maps(kind)[layer]
    if isinstance(head, str):
        if head == "mean" and maps.dtype == np.float16:
            return maps.mean(axis=0, dtype=np.float32)
        return fuse_heads(maps[None], head)[0].astype(np.float32, copy=False)
    if not 0 <= head < maps.shape[0]:
        raise IndexError(f"head {head} does not exist; this layer has {maps.shape[0]} heads")
    return maps[head].astype(np.float32, copy=False)


def query_grid(matrix: np.ndarray, query: int, num_prefix_tokens: int, grid: Tuple[int, int]) -> np.ndarray:
    """(Gh, Gw) attention of token ``query`` over the patches (its row of ``matrix``, prefix keys dropped)."""
    return matrix[query, num_prefix_tokens:].reshape(grid)


def all_heads_grids(view: ModelView, layer: int, query: int, kind: str = "effective") -> np.ndarray:
    """(H, Gh, Gw) float32 attention of token ``query`` over the patches for every head of ``layer``."""
    rows = view.maps(kind)[layer][:, query, view.num_prefix_tokens:].astype(np.float32, copy=False)
    return rows.reshape((rows.shape[0],) + tuple(view.grid))


def map_query(query: int, source: ModelView, target: ModelView) -> int:
    """The token of ``target`` that corresponds to ``query`` of ``source``.

    Prefix tokens map to the same prefix index (CLS to CLS); a patch maps to the patch of the target grid
    at the same relative position, so two models with different grids stay linked.
    """
    k_src, k_dst = source.num_prefix_tokens, target.num_prefix_tokens
    if query < k_src:
        return min(query, max(k_dst - 1, 0)) if k_dst else k_dst
    row, col = divmod(query - k_src, source.grid[1])
    t_row = min(int((row + 0.5) * target.grid[0] / source.grid[0]), target.grid[0] - 1)
    t_col = min(int((col + 0.5) * target.grid[1] / source.grid[1]), target.grid[1] - 1)
    return k_dst + t_row * target.grid[1] + t_col


def token_label(query: int, num_prefix_tokens: int, grid: Tuple[int, int],
                class_token_index: Optional[int] = 0) -> str:
    """"CLS", "prefix 2" or "patch (row, col)" for a token index (no "CLS" for a model without one)."""
    if query < num_prefix_tokens:
        return "CLS" if query == class_token_index else f"prefix {query}"
    row, col = divmod(query - num_prefix_tokens, grid[1])
    return f"patch ({row}, {col})"


def patch_token(row: int, col: int, num_prefix_tokens: int, grid: Tuple[int, int]) -> int:
    """Token index of the patch at grid position (row, col)."""
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        raise IndexError(f"patch ({row}, {col}) is outside the {grid[0]}x{grid[1]} grid")
    return num_prefix_tokens + row * grid[1] + col


def query_patch(query: int, view: ModelView) -> Optional[Tuple[int, int]]:
    """(row, col) of a patch query, None for a prefix token."""
    if query < view.num_prefix_tokens:
        return None
    return divmod(query - view.num_prefix_tokens, view.grid[1])


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> List[Tuple[str, float]]:
    """[(class name, probability)] of the k most probable classes, most probable first."""
    order = np.argsort(-probs)[:k]
    return [(names[i] if i < len(names) else str(i), float(probs[i])) for i in order]


@dataclass(frozen=True)
class CompareSettings:
    """What the Compare view shows (the bundle's ``settings``; the page URL carries the same).

    Attributes:
        layer_a, layer_b: 1-based layers of A and B (B's at the same relative depth).
        head: "mean", "max", or a head index as text.
        query_a, query_b: query token of A and the corresponding token of B (`map_query`).
        map_kind: "effective" or "softmax".
        opacity: overlay opacity in [0, 1].
        shared_scale: put both models' overlays on one colour scale (else each has its own).
    """

    layer_a: int
    layer_b: int
    head: str = "mean"
    query_a: int = 0
    query_b: int = 0
    map_kind: str = "effective"
    opacity: float = 0.6
    shared_scale: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """Plain values, for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CompareSettings":
        """From a manifest's settings (other keys, such as ``page``, are ignored).

        Raises:
            ValueError: a required setting (the layers) is missing.
        """
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("layer_a", "layer_b") if n not in values]
        if missing:
            raise ValueError(f"the view settings lack {', '.join(missing)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def head_choice(self) -> HeadChoice:
        """The head as `head_matrix` takes it."""
        return int(self.head) if str(self.head).isdigit() else str(self.head)

    @property
    def head_text(self) -> str:
        """"mean", "max" or "head 3", for titles."""
        return f"head {self.head}" if str(self.head).isdigit() else str(self.head)


def figure_stem(part: str, slot: int, layer: int) -> str:
    """File stem of a view figure: e.g. ``overlay-a-layer8``, ``top5-b``, ``difference-a-b``."""
    letter = SLOTS[slot].lower()
    if part == "top5":
        return f"top5-{letter}"
    if part == "difference":
        return "difference-a-b"
    return f"{part}-{letter}-layer{layer + 1}"


def _layers_queries(settings: CompareSettings) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    return (settings.layer_a - 1, settings.layer_b - 1), (settings.query_a, settings.query_b)


def query_grids(views: Sequence[ModelView], settings: CompareSettings) -> List[np.ndarray]:
    """(Gh, Gw) map of each model's query at its layer, head and map kind (what the overlays show)."""
    layers, queries = _layers_queries(settings)
    return [query_grid(head_matrix(v, layer, settings.head_choice, v.kind_at(layer, settings.map_kind)), query,
                       v.num_prefix_tokens, v.grid) for v, layer, query in zip(views, layers, queries)]


def overlay_ranges(grids: Sequence[np.ndarray], shared: bool) -> List[Tuple[Tuple[float, float], bool]]:
    """Colour range and diverging flag of each overlay: its own, or one range over both when ``shared``.

    A map with negative entries (effective maps of refined blocks can have them) gets a symmetric diverging
    scale; with a shared scale both use it as soon as either has negatives.
    """
    flags = [bool(np.nanmin(g) < 0) for g in grids]
    if not shared:
        return [(color_range(g, f), f) for g, f in zip(grids, flags)]
    both = np.concatenate([np.ravel(g) for g in grids])
    diverging = any(flags)
    return [(color_range(both, diverging), diverging)] * len(grids)


def compare_figures(views: Sequence[ModelView], labels: Sequence[str], settings: CompareSettings,
                    class_names: Sequence[Sequence[str]], box: Optional[Sequence[float]] = None,
                    truth: Optional[int] = None, parts: Sequence[str] = PARTS) -> Dict[str, go.Figure]:
    """The figures of the Compare view, keyed by `figure_stem`, in page order.

    Args:
        views: the two models' views (A, B).
        labels: their labels (in titles).
        settings: the view.
        class_names: each model's class names (top-5 bars).
        box: optional (x0, y0, x1, y1) ground-truth box in input pixels (dotted on the overlays).
        truth: the true class index, if known (its bar is green).
        parts: which parts of `PARTS` to build (the page builds only what it shows).

    Returns:
        stem -> figure. "softmax-vs-effective" exists only for refined layers, "difference" only when both
        models have the same patch grid.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown view parts {unknown}; known: {', '.join(PARTS)}")
    layers, queries = _layers_queries(settings)
    kinds = [v.kind_at(layer, settings.map_kind) for v, layer in zip(views, layers)]
    figs: Dict[str, go.Figure] = {}
    grids = query_grids(views, settings)
    ranges = overlay_ranges(grids, settings.shared_scale)
    for slot, (view, label, layer, query) in enumerate(zip(views, labels, layers, queries)):
        if "overlay" in parts:
            title = (f"{SLOTS[slot]}: {label}, layer {layer + 1}/{view.depth}, {settings.head_text}, {kinds[slot]}"
                     + (" (refined block)" if view.refined[layer] else ""))
            zrange, diverging = ranges[slot]
            figs[figure_stem("overlay", slot, layer)] = attention_overlay(
                view.picture, grids[slot], view.patch_size, settings.opacity, title,
                query_patch=query_patch(query, view), box=box, diverging=diverging, zrange=zrange,
                colorbar_title=f"{kinds[slot]} weight")
        if "top5" in parts:
            names = list(class_names[slot])
            truth_name = names[truth] if truth is not None and truth < len(names) else None
            figs[figure_stem("top5", slot, layer)] = top_k_bars(top_k(view.probs, names, 5),
                                                                f"{SLOTS[slot]}: {label}, top-5 predictions",
                                                                truth_name)
    if "heads" in parts:
        for slot, (view, label, layer, query) in enumerate(zip(views, labels, layers, queries)):
            maps = all_heads_grids(view, layer, query, kinds[slot])
            figs[figure_stem("heads", slot, layer)] = heads_grid(
                maps, [f"head {h}" for h in range(maps.shape[0])],
                f"{SLOTS[slot]}: {label}, layer {layer + 1}, every head ({kinds[slot]}, one shared scale)",
                diverging=bool(maps.min() < 0), colorbar_title=f"{kinds[slot]} weight")
    if "matrix" in parts:
        for slot, (view, label, layer) in enumerate(zip(views, labels, layers)):
            matrix = head_matrix(view, layer, settings.head_choice, kinds[slot])
            names = [token_label(t, view.num_prefix_tokens, view.grid, view.class_token_index)
                     for t in range(matrix.shape[0])]
            figs[figure_stem("matrix", slot, layer)] = token_matrix(
                matrix, names, f"{SLOTS[slot]}: {label}, layer {layer + 1}, {settings.head_text}, {kinds[slot]}",
                diverging=bool(matrix.min() < 0), num_prefix_tokens=view.num_prefix_tokens, grid=view.grid,
                colorbar_title=f"{kinds[slot]} weight")
    if "softmax-vs-effective" in parts:
        for slot, (view, label, layer, query) in enumerate(zip(views, labels, layers, queries)):
            if not view.refined[layer] or not view.has_softmax[layer]:
                continue
            soft, eff = (query_grid(head_matrix(view, layer, settings.head_choice, kind), query,
                                    view.num_prefix_tokens, view.grid) for kind in ("softmax", "effective"))
            # Each panel on its own scale: the softmax map is in [0, 1], the effective one can be negative and
            # above 1, and their difference is centred on 0 (one shared +-max scale left the softmax blank).
            figs[figure_stem("softmax-vs-effective", slot, layer)] = heads_grid(
                np.stack([soft, eff, eff - soft]), ["softmax", "effective", "effective - softmax"],
                f"{SLOTS[slot]}: {label}, layer {layer + 1}, {settings.head_text} (each panel its own scale)",
                diverging=[False, bool(eff.min() < 0), True], columns=3, shared_scale=False,
                colorbar_title=["softmax weight", "effective weight", "difference"])
    if "difference" in parts and grids[0].shape == grids[1].shape:
        kind_text = kinds[0] if kinds[0] == kinds[1] else f"{kinds[0]} - {kinds[1]}"
        difference = grids[0] - grids[1]
        figs[figure_stem("difference", 0, layers[0])] = attention_overlay(
            views[0].picture, difference, views[0].patch_size, settings.opacity,
            f"A - B ({kind_text} maps), layer {layers[0] + 1} vs {layers[1] + 1}, {settings.head_text}",
            query_patch=query_patch(queries[0], views[0]), diverging=True, zrange=symmetric_range(difference),
            colorbar_title=f"A - B ({kind_text})")
    return figs


def compare_tables(views: Sequence[ModelView], labels: Sequence[str], settings: CompareSettings,
                   class_names: Sequence[Sequence[str]]) -> Dict[str, List[Dict[str, Any]]]:
    """The view's tables as long-format rows: ``query-map-a``/``-b`` (model, row, col, attention) and
    ``top5`` (slot, model, rank, class_name, probability)."""
    tables: Dict[str, List[Dict[str, Any]]] = {}
    for slot, (label, grid_map) in enumerate(zip(labels, query_grids(views, settings))):
        tables[f"query-map-{SLOTS[slot].lower()}"] = [
            {"model": label, "row": int(r), "col": int(c), "attention": float(v)}
            for (r, c), v in np.ndenumerate(grid_map)]
    tables["top5"] = [{"slot": SLOTS[slot], "model": label, "rank": rank, "class_name": name, "probability": prob}
                      for slot, (view, label) in enumerate(zip(views, labels))
                      for rank, (name, prob) in enumerate(top_k(view.probs, list(class_names[slot]), 5), start=1)]
    return tables
