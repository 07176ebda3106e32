"""``refiner analyze``: attention analysis of one or more models, written as figures, tables and a bundle.

    refiner analyze --model checkpoints/vanilla --model checkpoints/refined --dataset cluttered-mnist --out out/
    refiner analyze --model vit_small_patch16_224 --model refined_vit_small_patch16_224 --images photos/ --out out/
    refiner analyze --manifest out/bundle.zip [--out out2/]        # the same figures again
    torchrun --nproc_per_node 4 -m refiner_cli analyze ... --dataset NAME ...   # images sharded, stats reduced

``--model`` takes any `refiner.load_model` source, optionally as ``LABEL=SOURCE``. This module only turns the
command line into an `analysis.analyze_run.AnalyzeRequest` (the outputs are listed there) and prints messages;
the work is `analysis.analyze_run.run_analysis`, and ``--manifest`` is `analysis.remake.remake_request`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.analyze_run import DEFAULT_FORMATS, AnalyzeRequest, run_analysis, split_formats
from analysis.attention_metrics import MetricSettings
from analysis.normalization import NORMALIZE_MODES

DEFAULTS = AnalyzeRequest()
FORMATS_TEXT = ",".join(DEFAULT_FORMATS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``refiner analyze`` options (defaults: `AnalyzeRequest`'s)."""
    source = parser.add_argument_group("what to analyse")
    source.add_argument("--model", action="append", default=[], metavar="[LABEL=]SOURCE",
                        help="a shipped checkpoint (vanilla, refined), a checkpoint or hub folder, a weights file "
                             "(ARCH@FILE), a timm name or hf-hub: id, random:NAME; repeat for several models")
    inputs = source.add_mutually_exclusive_group()
    inputs.add_argument("--images", type=Path, metavar="DIR", help="folder of images (jpg, png, webp, bmp, gif, tiff)")
    inputs.add_argument("--dataset", metavar="NAME", help="a refiner dataset, e.g. cluttered-mnist (test split)")
    inputs.add_argument("--manifest", type=Path, metavar="FILE",
                        help="manifest.json or bundle.zip of an earlier run: re-make the same outputs")
    source.add_argument("--out", type=Path, metavar="DIR", help="output folder (default for --manifest: "
                        "<manifest folder>/remade)")
    source.add_argument("--split", default=DEFAULTS.split, help="dataset split (default test)")
    source.add_argument("--data-root", type=Path, default=None, help="folder of folder-based datasets")
    source.add_argument("--max-images", type=int, default=DEFAULTS.max_images,
                        help=f"dataset images to analyse (default {DEFAULTS.max_images})")
    source.add_argument("--boxes", type=Path, default=None,
                        help="JSON {file name: [x0, y0, x1, y1]} object boxes in original image pixels (--images)")

    metric = parser.add_argument_group("metric settings (DESIGN section 5)")
    defaults = MetricSettings()
    metric.add_argument("--normalize", choices=NORMALIZE_MODES, default=defaults.normalize,
                        help="row normalisation of non-stochastic (refined effective) maps")
    metric.add_argument("--map-kind", choices=("effective", "softmax"), default=defaults.map_kind)
    metric.add_argument("--tau", type=float, default=defaults.tau, help="cross-layer cosine threshold")
    metric.add_argument("--block-threshold", type=float, default=defaults.block_threshold,
                        help="layer similarity from which blocks count as similar")
    metric.add_argument("--grid-radius", type=int, default=defaults.grid_radius)
    metric.add_argument("--band-width", type=int, default=defaults.band_width)
    metric.add_argument("--head-fusion", choices=("mean", "max", "min"), default=defaults.head_fusion)
    metric.add_argument("--discard-ratio", type=float, default=defaults.discard_ratio)

    output = parser.add_argument_group("outputs")
    output.add_argument("--formats", default=FORMATS_TEXT,
                        help=f"figure formats, some of png,svg,pdf,html,json (default {FORMATS_TEXT})")
    output.add_argument("--scale", type=float, default=DEFAULTS.scale, help="PNG scale (2 = twice the layout size)")
    output.add_argument("--per-image", type=int, default=DEFAULTS.per_image,
                        help="images that get per-image figures and maps")
    output.add_argument("--attributions", action="store_true",
                        help="per-image IntegratedGradients, Saliency and attention x gradient (slower)")
    output.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                        help="images per forward pass (dataset analysis)")
    output.add_argument("--map-budget-mb", type=float, default=DEFAULTS.map_budget_mb,
                        help="most captured maps held at once in dataset analysis; larger batches run in chunks "
                             f"(default {DEFAULTS.map_budget_mb:.0f} MB)")
    output.add_argument("--device", default=DEFAULTS.device,
                        help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps; GPUs run under bf16 autocast "
                             "with float32 maps")
    output.add_argument("--n-boot", type=int, default=DEFAULTS.n_boot, help="bootstrap replicates")
    output.add_argument("--seed", type=int, default=DEFAULTS.seed)
    output.add_argument("--no-bundle", action="store_true", help="skip bundle.zip")
    output.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that holds other files (same-named ones are replaced)")
    output.add_argument("--no-progress", action="store_true")


def request_from_args(args: argparse.Namespace) -> AnalyzeRequest:
    """The `AnalyzeRequest` of a command line without ``--manifest``.

    Raises:
        ValueError: a metric setting or option the analysis does not accept.
    """
    settings = MetricSettings(normalize=args.normalize, tau=args.tau, block_threshold=args.block_threshold,
                              grid_radius=args.grid_radius, band_width=args.band_width, head_fusion=args.head_fusion,
                              discard_ratio=args.discard_ratio, map_kind=args.map_kind)
    return AnalyzeRequest(models=tuple(args.model), out=args.out, images=args.images, dataset=args.dataset,
                          split=args.split, data_root=args.data_root, max_images=args.max_images, boxes=args.boxes,
                          settings=settings, formats=split_formats(args.formats), scale=args.scale,
                          per_image=args.per_image, attributions=args.attributions, batch_size=args.batch_size,
                          map_budget_mb=args.map_budget_mb, device=args.device, n_boot=args.n_boot, seed=args.seed,
                          bundle=not args.no_bundle, overwrite=args.overwrite, progress=not args.no_progress)


def _manifest_request(args: argparse.Namespace):
    """``--manifest``: output-only options given on this command line (not their defaults) win."""
    from analysis.remake import remake_request

    return remake_request(args.manifest, out=args.out, device=args.device, overwrite=args.overwrite,
                          progress=not args.no_progress,
                          formats=split_formats(args.formats) if args.formats != FORMATS_TEXT else None,
                          scale=args.scale if args.scale != DEFAULTS.scale else None,
                          bundle=False if args.no_bundle else None)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``refiner analyze``; returns the exit code (2 for bad input, 1 when writing fails)."""
    from analysis.inputs import check_images_folder

    try:
        if args.manifest is not None:
            request, inputs = _manifest_request(args)
        else:
            if not args.model:
                print("refiner analyze: give at least one --model (or --manifest)", file=sys.stderr)
                return 2
            if args.images is None and args.dataset is None:
                print("refiner analyze: give --images DIR or --dataset NAME (or --manifest FILE)", file=sys.stderr)
                return 2
            if args.out is None:
                print("refiner analyze: --out DIR is required", file=sys.stderr)
                return 2
            if args.images is not None:
                check_images_folder(args.images)  # named before any model loads
            request, inputs = request_from_args(args), None
        result = run_analysis(request, inputs)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"refiner analyze: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output that cannot be written mid-run (disk full, permissions changed)
        where = f"{error.filename}: " if error.filename else ""
        print(f"refiner analyze: cannot write {where}{error.strerror or error}", file=sys.stderr)
        return 1
    if result is not None:  # None: a distributed rank that does not write
        print(f"wrote {len(result.files)} files to {result.out}" +
              ("" if result.bundle is None else f" and {result.bundle}"))
    return 0
