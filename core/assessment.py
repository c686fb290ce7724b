"""Accuracy of a classified raster against a reference label raster, overall and per
missing pattern (read from the modalities-used raster), plus a PNG quick-look.

Both rasters must share one grid (the class raster is written on the reference grid; the
sample scene's reference labels are on the HS grid). Rasters are read block by block.

Command line (used by ``make demo``)::

    python -m mamol.core.assessment --classes land_cover.tif --reference reference.tif \\
        [--modalities modalities_used.tif] [--quicklook land_cover.png] [--json out.json]
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from osgeo import gdal

from . import metrics
from .errors import MamolInputError
from .windows import pattern_name

gdal.UseExceptions()

BLOCK = 512


def class_legend(dataset: gdal.Dataset) -> List[Tuple[int, str, Tuple[int, int, int]]]:
    """(value, name, rgb) of each class written by :mod:`core.inference` (from the band's
    ``CLASS_<value>`` metadata and colour table)."""
    band = dataset.GetRasterBand(1)
    table = band.GetRasterColorTable()
    legend = []
    for key, name in (band.GetMetadata() or {}).items():
        if key.startswith("CLASS_"):
            value = int(key[len("CLASS_"):])
            rgb = table.GetColorEntry(value)[:3] if table is not None else (128, 128, 128)
            legend.append((value, name, tuple(rgb)))
    return sorted(legend)


def _modality_names(dataset: gdal.Dataset) -> List[str]:
    metadata = dataset.GetRasterBand(1).GetMetadata() or {}
    bits = sorted((int(k[4:]), v) for k, v in metadata.items() if k.startswith("BIT_"))
    return [name for _, name in bits]


def _same_grid(a: gdal.Dataset, b: gdal.Dataset, what: str) -> None:
    if (a.RasterXSize, a.RasterYSize) != (b.RasterXSize, b.RasterYSize) or not np.allclose(
            a.GetGeoTransform(), b.GetGeoTransform()):
        raise MamolInputError(
            f"The {what} is not on the class raster's grid ({b.RasterXSize} × "
            f"{b.RasterYSize} vs {a.RasterXSize} × {a.RasterYSize}). Classify on the "
            "reference raster's grid.")


def assess(classes_path, reference_path, modalities_path=None) -> Dict[str, object]:
    """OA, kappa, per-class accuracy and confusion matrix over the pixels that have a
    reference label and a classification; the same per modalities-used pattern."""
    classes = gdal.Open(str(classes_path))
    reference = gdal.Open(str(reference_path))
    _same_grid(classes, reference, "reference raster")
    used = gdal.Open(str(modalities_path)) if modalities_path else None
    if used is not None:
        _same_grid(classes, used, "modalities-used raster")
    legend = class_legend(classes)
    if not legend:
        raise MamolInputError(f"'{classes_path}' is not a MaMOL class raster (no class list).")
    index_of = {value: i for i, (value, _, _) in enumerate(legend)}
    lookup = np.full(65536, -1, dtype=np.int64)
    for value, i in index_of.items():
        lookup[value] = i
    class_nodata = classes.GetRasterBand(1).GetNoDataValue()
    reference_nodata = reference.GetRasterBand(1).GetNoDataValue()
    count = len(legend)
    overall = np.zeros((count, count), dtype=np.int64)
    per_pattern: Dict[int, np.ndarray] = {}
    unknown_reference = 0
    for row0 in range(0, classes.RasterYSize, BLOCK):
        for col0 in range(0, classes.RasterXSize, BLOCK):
            width = min(BLOCK, classes.RasterXSize - col0)
            height = min(BLOCK, classes.RasterYSize - row0)
            predicted = classes.ReadAsArray(col0, row0, width, height).astype(np.int64)
            truth = reference.ReadAsArray(col0, row0, width, height).astype(np.int64)
            labelled = truth != reference_nodata if reference_nodata is not None else \
                np.ones_like(truth, dtype=bool)
            labelled &= predicted != class_nodata
            truth_index = lookup[np.clip(truth, 0, 65535)]
            unknown_reference += int((labelled & (truth_index < 0)).sum())
            labelled &= truth_index >= 0
            t = truth_index[labelled]
            p = lookup[predicted[labelled]]
            overall += metrics.confusion_matrix(t, p, count)
            if used is not None:
                codes = used.ReadAsArray(col0, row0, width, height)[labelled]
                for code in np.unique(codes):
                    members = codes == code
                    matrix = per_pattern.setdefault(int(code), np.zeros_like(overall))
                    matrix += metrics.confusion_matrix(t[members], p[members], count)
    names = [name for _, name, _ in legend]
    result = metrics.summarise(overall, names)
    result["unlabelled_reference_values"] = unknown_reference
    if used is not None:
        modality_names = _modality_names(used)
        result["per_pattern"] = [
            dict(pattern=pattern_name(code, modality_names), code=code,
                 **{k: v for k, v in metrics.summarise(matrix, names).items()
                    if k in ("samples", "oa", "kappa", "reference_classes")})
            for code, matrix in sorted(per_pattern.items(), reverse=True)]
    return result


def write_quicklook(classes_path, png_path, title: str = "Land cover",
                    max_side: int = 1024) -> Path:
    """A PNG of the class raster (nodata white) with its legend, by matplotlib (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dataset = gdal.Open(str(classes_path))
    step = max(1, int(np.ceil(max(dataset.RasterXSize, dataset.RasterYSize) / max_side)))
    values = dataset.ReadAsArray()[::step, ::step]
    legend = class_legend(dataset)
    image = np.full(values.shape + (3,), 255, dtype=np.uint8)
    for value, _, rgb in legend:
        image[values == value] = rgb
    figure = Figure(figsize=(8, 5.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes([0.02, 0.05, 0.62, 0.88])
    axes.imshow(image, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title)
    handles = [Patch(facecolor=np.array(rgb) / 255, edgecolor="black", label=f"{v} {name}")
               for v, name, rgb in legend]
    handles.append(Patch(facecolor="white", edgecolor="black", label="no valid modality"))
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(0.66, 0.5),
                  frameon=False, title="Classes")
    png_path = Path(png_path)
    figure.savefig(png_path)
    return png_path


def _percent(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def format_report(result: Dict[str, object]) -> str:
    lines = [f"Overall: OA {_percent(result['oa'])}, kappa "
             f"{'—' if result['kappa'] is None else format(result['kappa'], '.4f')} "
             f"({result['samples']} reference pixels)"]
    for row in result.get("per_pattern", []):
        kappa = "—" if row["kappa"] is None else format(row["kappa"], ".4f")
        lines.append(f"  {row['pattern']:<14} OA {_percent(row['oa']):>9}, kappa {kappa:>7} "
                     f"({row['samples']} px){metrics.one_class_flag(row)}")
    lines.append("Per class (producer's / user's accuracy):")
    for row in result["per_class"]:
        lines.append(f"  {row['name']:<12} {_percent(row['producers_accuracy']):>9} / "
                     f"{_percent(row['users_accuracy']):>9}")
    return "\n".join(lines)


def _console() -> logging.Logger:
    """The command line's output channel: this module's logger, on the current stdout."""
    logger = logging.getLogger("mamol.assessment")
    logger.handlers = [logging.StreamHandler(sys.stdout)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def main(argv=None) -> int:
    console = _console()
    parser = argparse.ArgumentParser(prog="python -m mamol.core.assessment",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--classes", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--modalities")
    parser.add_argument("--quicklook", help="PNG to write")
    parser.add_argument("--json", help="JSON to write")
    args = parser.parse_args(argv)
    try:
        result = assess(args.classes, args.reference, args.modalities)
    except (MamolInputError, RuntimeError) as exc:
        console.error("error: %s", exc)
        return 2
    console.info(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.quicklook:
        console.info("Quick-look: %s", write_quicklook(args.classes, args.quicklook))
    return 0


if __name__ == "__main__":
    sys.exit(main())
