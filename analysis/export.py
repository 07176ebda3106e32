"""Files from analyses: static images, standalone HTML, tables, raw maps and a ZIP bundle (DESIGN section 6).

- Figures: PNG (at a chosen scale), SVG and PDF through kaleido >= 1, which drives a Chromium-family
  browser (the system one at ``/usr/bin/chromium`` here; ``BROWSER_PATH`` overrides). `ExportError` says
  how to get one when none is found. Many figures are written in one browser session (`write_figures`),
  since starting the browser costs seconds. Standalone HTML embeds plotly.js, so it opens offline.
- Tables: long-format rows (one value per row) as CSV or JSON.
- Raw maps: NPZ with ``<model>/effective`` etc. arrays.
- Bundle: a ZIP of all of it with ``manifest.json``: model names and weight hashes, image hashes,
  preprocessing, settings and library versions, enough for ``refiner analyze --manifest`` to re-make it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
import torch

from refiner.hashing import state_dict_sha256  # noqa: F401  (re-exported: manifests name weights by it)

from .attention_metrics import METRICS, rollout_map
from .dataset import DatasetAnalysis, DatasetStatistics
from .per_image import ImageAnalysis, PAIR_SEPARATOR
from .similarity import relative_depth

PathLike = Union[str, os.PathLike]
STATIC_FORMATS = ("png", "svg", "pdf")
# "json" is the plotly figure spec (`plotly.io.read_json` reads it back): the figure itself, not a picture of it.
FIGURE_FORMATS = STATIC_FORMATS + ("html", "json")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class ExportError(RuntimeError):
    """An export could not be written (e.g. no browser for static images)."""


def browser_path() -> Optional[str]:
    """The Chromium-family browser kaleido will use, or None.

    Same search as kaleido's own (choreographer's ``Chromium.find_browser``): a Chrome kaleido downloaded,
    then ``BROWSER_PATH``, then the usual names on PATH and install locations.
    """
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:  # a kaleido without choreographer: fall back to a plain PATH search
        import shutil

        found = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")]
        return os.environ.get("BROWSER_PATH") or next((p for p in found if p), None)
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - a broken search is reported as "no browser" with the fix
        return None
    return path if path and Path(path).is_file() else None


NO_BROWSER_MESSAGE = ("static image export (PNG/SVG/PDF) needs a Chromium-family browser for kaleido, and none was "
                      "found. Install one (Debian/Ubuntu: `apt-get install -y chromium`), point BROWSER_PATH at an "
                      "existing Chrome/Chromium binary, or run `plotly_get_chrome` / "
                      "`python -c 'import kaleido; kaleido.get_chrome_sync()'` where a network is available. "
                      "HTML, CSV/JSON, NPZ and the bundle work without a browser.")


def _check_format(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose from {FIGURE_FORMATS}")
    return fmt


def figure_bytes(fig: go.Figure, fmt: str = "png", scale: float = 2.0) -> bytes:
    """One figure as file contents.

    Args:
        fig: a plotly figure.
        fmt: "png", "svg", "pdf", "html" (standalone, plotly.js embedded) or "json" (the plotly figure spec).
        scale: pixel-density multiplier for PNG (2 = twice the layout's width and height in pixels).

    Returns:
        The bytes of the file.

    Raises:
        ExportError: no browser for a static format.
    """
    fmt = _check_format(fmt)
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if fmt == "json":
        return figure_json(fig)
    if browser_path() is None:
        raise ExportError(NO_BROWSER_MESSAGE)
    try:
        return fig.to_image(format=fmt, scale=scale if fmt == "png" else 1, width=fig.layout.width,
                            height=fig.layout.height)
    except Exception as error:  # kaleido/choreographer raise several types when the browser cannot start
        raise ExportError(f"kaleido could not render {fmt.upper()}: {error}. {NO_BROWSER_MESSAGE}") from error


def figure_json(fig: go.Figure) -> bytes:
    """The plotly figure spec as JSON bytes (keys sorted, so equal figures give equal files)."""
    return (json.dumps(json.loads(fig.to_json()), sort_keys=True) + "\n").encode("utf-8")


STATIC_RENDER_ATTEMPTS = 3  # kaleido renders of the still missing static files (see write_figures)

def write_figures(figures: Mapping[str, go.Figure], directory: PathLike, formats: Sequence[str] = ("png", "svg",
                  "pdf", "html"), scale: float = 2.0, shared_plotlyjs: bool = False) -> List[Path]:
    """Write every figure in every format, static images in one kaleido browser session.

    Args:
        figures: file stem -> figure; a stem may contain "/" to write into sub-folders (all figures of a run
            then share one browser session).
        directory: output folder (created).
        formats: subset of "png", "svg", "pdf", "html", "json".
        scale: PNG scale.
        shared_plotlyjs: write plotly.js once as ``<directory>/plotly.min.js`` and let every HTML file load it
            by relative path (still offline; about 4.5 MB saved per figure). False embeds it in every file.

    Returns:
        The written paths.

    Raises:
        ExportError: a static format was asked for and no browser is available.
    """
    import plotly.io as pio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    formats = [_check_format(f) for f in formats]
    written: List[Path] = []
    for stem in figures:
        (directory / stem).parent.mkdir(parents=True, exist_ok=True)
    if "html" in formats and figures:
        script = directory / "plotly.min.js"
        if shared_plotlyjs:
            from plotly.offline import get_plotlyjs

            script.write_text(get_plotlyjs(), encoding="utf-8")
            written.append(script)
        for stem, fig in figures.items():
            path = directory / f"{stem}.html"
            include = Path(os.path.relpath(script, path.parent)).as_posix() if shared_plotlyjs else True
            fig.write_html(path, include_plotlyjs=include, full_html=True)
            written.append(path)
    if "json" in formats:
        for stem, fig in figures.items():
            path = directory / f"{stem}.json"
            path.write_bytes(figure_json(fig))
            written.append(path)
    static = [(stem, fig, fmt) for fmt in formats if fmt in STATIC_FORMATS for stem, fig in figures.items()]
    if static:
        if browser_path() is None:
            raise ExportError(NO_BROWSER_MESSAGE)
        paths = [directory / f"{stem}.{fmt}" for stem, _fig, fmt in static]
        pending = list(range(len(static)))
        # kaleido has been seen to return without error yet without one of the files on a heavily loaded machine
        # (twice in a row in one CI run here): what is missing is rendered again, up to `STATIC_RENDER_ATTEMPTS`
        # in all, and still missing is an error, never a silently absent file.
        for _attempt in range(STATIC_RENDER_ATTEMPTS):
            _render_static(pio, [static[i] for i in pending], [paths[i] for i in pending], scale)
            pending = [i for i in pending if not (paths[i].is_file() and paths[i].stat().st_size > 0)]
            if not pending:
                break
        if pending:
            raise ExportError("kaleido did not write " + ", ".join(str(paths[i]) for i in pending))
        written += paths
    return written


def _render_static(pio: Any, static: Sequence[Tuple[str, go.Figure, str]], paths: Sequence[Path], scale: float
                   ) -> None:
    """One kaleido session for (stem, figure, format) triples."""
    try:
        # Sizes passed explicitly: kaleido otherwise renders at its 700 x 500 default, not the layout's.
        pio.write_images(fig=[fig for _s, fig, _f in static], file=list(paths), format=[f for _s, _g, f in static],
                         scale=[scale if f == "png" else 1 for _s, _g, f in static],
                         width=[fig.layout.width for _s, fig, _f in static],
                         height=[fig.layout.height for _s, fig, _f in static])
    except Exception as error:
        raise ExportError(f"kaleido could not render the figures: {error}. {NO_BROWSER_MESSAGE}") from error


# ------------------------------------------------------------------------------------------------- tables
def _rows_of_array(base: Dict[str, Any], key: str, value: np.ndarray) -> Iterable[Dict[str, Any]]:
    axes = METRICS[key].axes if key in METRICS else tuple(f"axis{i}" for i in range(np.ndim(value)))
    value = np.asarray(value, dtype=np.float64)
    for index in np.ndindex(value.shape):
        row = dict(base, metric=key)
        for axis, i in zip(axes, index):
            # Layers and heads are 1-based in tables, as in the figures and the papers.
            row[axis] = int(i) + 1 if axis in ("layer", "layer2", "head", "head2") else int(i)
        v = float(value[index])
        row["value"] = v if np.isfinite(v) else None
        yield row


def image_metrics_rows(result: ImageAnalysis, include_maps: bool = False) -> List[Dict[str, Any]]:
    """Long-format rows of every metric of every model on one image (plus CKA and cross-model similarity).

    Args:
        result: an `ImageAnalysis`.
        include_maps: also list the (N, N) rollout and the rollout grid (large; they are in the NPZ anyway).

    Returns:
        Rows with keys model, metric, the metric's axes (layer/head 1-based), value.
    """
    rows: List[Dict[str, Any]] = []
    for name, model_result in result.models.items():
        for key, value in model_result.metrics.items():
            if include_maps or METRICS.get(key, None) is None or METRICS[key].summary:
                rows += _rows_of_array({"model": name, "image_sha256": result.image_sha256}, key, value)
        for rank, (index, label, prob) in enumerate(model_result.top5, start=1):
            rows.append({"model": name, "image_sha256": result.image_sha256, "metric": "top5", "rank": rank,
                         "class_index": index, "class_name": label, "value": prob})
    for pair, matrix in list(result.cka.items()) + [(f"similarity:{k}", v) for k, v in result.cross_similarity.items()]:
        metric = "cross_similarity" if pair.startswith("similarity:") else "cka"
        pair = pair.split(":", 1)[-1]
        for (i, j), v in np.ndenumerate(matrix):
            rows.append({"model": pair, "image_sha256": result.image_sha256, "metric": metric, "layer": i + 1,
                         "layer2": j + 1, "value": float(v)})
    return rows


def dataset_rows(analysis: DatasetAnalysis, statistics: DatasetStatistics) -> List[Dict[str, Any]]:
    """Per model, metric and layer: dataset mean with bootstrap interval; for two models also the paired
    difference (b - a) with its interval and permutation p-value, per layer and overall.

    Args:
        analysis: from `analysis.dataset.analyze_dataset`.
        statistics: its intervals (`analysis.dataset.dataset_statistics`, shared with the figures).

    Returns:
        Long-format rows (model, metric, layer, relative_depth, mean, ci_low, ci_high, n, and for paired rows
        p_value).
    """
    rows: List[Dict[str, Any]] = []
    names = list(analysis.accumulators)
    level = statistics.level
    for name in names:
        for key in statistics.keys:
            interval = statistics.intervals[(name, key)]
            depth = relative_depth(len(interval.mean)) if METRICS[key].axes else np.ones(1)
            for i in range(len(interval.mean)):
                rows.append({"model": name, "metric": key, "layer": i + 1 if METRICS[key].axes else None,
                             "relative_depth": float(depth[i]), "mean": _f(interval.mean[i]),
                             "ci_low": _f(interval.low[i]), "ci_high": _f(interval.high[i]), "n": interval.n,
                             "level": level})
        if name in analysis.correct:
            rows.append({"model": name, "metric": "accuracy", "layer": None, "relative_depth": None,
                         "mean": analysis.accuracy(name), "ci_low": None, "ci_high": None, "n": analysis.images,
                         "level": None})
    if statistics.comparisons:
        a, b = names
        for key in statistics.keys:
            for overall in (False, True):
                comparison = statistics.comparisons[(key, overall)]
                diff = comparison.difference
                depth = relative_depth(len(diff.mean))
                for i in range(len(diff.mean)):
                    rows.append({"model": f"{b} - {a}", "metric": key,
                                 "layer": None if overall or not METRICS[key].axes else i + 1,
                                 "relative_depth": None if overall else float(depth[i]), "mean": _f(diff.mean[i]),
                                 "ci_low": _f(diff.low[i]), "ci_high": _f(diff.high[i]), "n": diff.n, "level": level,
                                 "p_value": _f(comparison.p_value.reshape(-1)[i]),
                                 "scope": "overall" if overall else "per layer"})
    return rows


def _f(value: Any) -> Optional[float]:
    value = float(value)
    return value if np.isfinite(value) else None


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV text (columns: the union of all keys, in first-seen order)."""
    columns: List[str] = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


def table_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a JSON array (NaN written as null)."""
    return json.dumps(list(rows), indent=1, allow_nan=False, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ----------------------------------------------------------------------------------------------- raw maps
def maps_npz_bytes(result: ImageAnalysis) -> bytes:
    """Raw arrays of one image as a compressed NPZ.

    Keys: ``<model>/effective`` and ``<model>/softmax`` (L, H, N, N) float32, ``<model>/rollout`` (N, N),
    ``<model>/rollout_cls`` (Gh, Gw) (``rollout_patch_mean`` for models without a CLS token),
    ``<model>/attr_<name>`` attribution maps, ``<model>/geometry`` = [K, Gh, Gw, ph, pw, H_img, W_img].
    """
    arrays: Dict[str, np.ndarray] = {}
    for name, r in result.models.items():
        meta = r.meta
        arrays[f"{name}/effective"] = r.effective.astype(np.float32)
        arrays[f"{name}/softmax"] = r.softmax.astype(np.float32)
        arrays[f"{name}/rollout"] = r.metrics["rollout"].astype(np.float32)
        rollout_key, rollout = rollout_map(r.metrics)  # rollout_cls, or rollout_patch_mean without a CLS token
        arrays[f"{name}/{rollout_key}"] = rollout.astype(np.float32)
        for key, heat in r.attributions.items():
            arrays[f"{name}/attr_{key}"] = np.asarray(heat, dtype=np.float32)
        arrays[f"{name}/geometry"] = np.array([meta.num_prefix_tokens, *meta.grid_size, *meta.patch_size,
                                               *meta.img_size], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ manifest
def library_versions() -> Dict[str, str]:
    """Versions of everything that shapes the numbers and figures."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "timm", "numpy", "scipy", "scikit-learn", "captum", "plotly", "kaleido",
                    "refiner-attention"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    out["torch"] = torch.__version__  # includes the build tag (e.g. +cpu / +cu130), which metadata may omit
    return out


def build_manifest(models: Sequence[Mapping[str, Any]], images: Sequence[Mapping[str, Any]],
                   preprocessing: Mapping[str, Any], settings: Mapping[str, Any],
                   files: Sequence[str] = (), extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The bundle manifest.

    Args:
        models: per model: {"label", "source" (checkpoint dir or model name), "kind" ("checkpoint"|"name"),
            "model_spec", "weights_sha256" (checkpoint file hash, if any), "state_sha256"}.
        images: per image: {"path" or "dataset"/"index", "sha256" (file or tensor hash), "box"}.
        preprocessing: how images became model inputs (size, mean, std, channels).
        settings: the metric settings and analysis options.
        files: paths inside the bundle.
        extra: anything else to record.

    Returns:
        A JSON-ready dict.
    """
    return {"format": MANIFEST_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": list(models), "images": list(images), "preprocessing": dict(preprocessing),
            "settings": dict(settings), "versions": library_versions(), "files": sorted(files),
            "extra": dict(extra or {})}


def write_bundle(path: PathLike, files: Mapping[str, Union[bytes, str, Path]], manifest: Mapping[str, Any]) -> Path:
    """A ZIP with the given files and ``manifest.json`` (its "files" set to the bundle's contents).

    Args:
        path: the .zip to write (written to a temporary name, then renamed, so a partial bundle never exists).
        files: name inside the zip -> bytes, text, or a path on disk.
        manifest: from `build_manifest`.

    Returns:
        The path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest, files=sorted(set(files) | {MANIFEST_NAME}))
    temporary = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, default=_json_default) + "\n")
            for name, content in files.items():
                if isinstance(content, Path):
                    archive.write(content, name)
                else:
                    archive.writestr(name, content)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()  # a failed write leaves nothing behind
    return path


def read_manifest(path: PathLike) -> Dict[str, Any]:
    """Read a manifest from ``manifest.json`` or from a bundle ZIP.

    Raises:
        ValueError: not a manifest (clear message).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"manifest {path} does not exist")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if MANIFEST_NAME not in archive.namelist():
                raise ValueError(f"{path} is a ZIP without {MANIFEST_NAME}")
            manifest = json.loads(archive.read(MANIFEST_NAME))
    else:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a JSON manifest: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "models" not in manifest:
        raise ValueError(f"{path} is not a format-{MANIFEST_FORMAT} analysis manifest")
    return manifest


def pair_label(key: str) -> str:
    """Human label of a "A|B" pair key."""
    return key.replace(PAIR_SEPARATOR, " vs ")
