"""``python -m mamol classify``: classify a scene with a trained model (the same as
mamol:classify)."""
import math
from pathlib import Path
from typing import Dict, List, Optional

from ..core.errors import MamolInputError
from ..core.modalities import NAMES
from ..core.options import declared
from .channel import Channel
from .options import (add_compute, add_config_options, add_rasters, apply_weights_cache,
                      config_values, rasters)

NAME = "classify"
SUMMARY = "classify a scene with a trained model"
HELP = (
    "Classify land cover with a trained model from whichever of its modalities you have: "
    "each pixel from the modalities valid there. Rasters may differ in CRS, pixel size and "
    "extent; everything is aligned onto the reference grid. Writes a class raster (GeoTIFF "
    "with colour table, class names and a .qml style) and, if asked, class probabilities, "
    "confidence, normalised entropy and the modalities used (the same as mamol:classify).")


#: The endings a GeoTIFF's name may have.
GEOTIFF_SUFFIXES = (".tif", ".tiff")


def add_arguments(parser) -> None:
    from ..core.inference import OPTIONAL_OUTPUT_FIELDS, ClassifyConfig
    parser.add_argument("--model", required=True, help="the .mamol model file")
    add_rasters(parser, "(at least one of the model's modalities)")
    written = parser.add_argument_group("outputs (GeoTIFF)")
    written.add_argument("--output", required=True, help="class raster (.tif)")
    add_config_options(written, ClassifyConfig, OPTIONAL_OUTPUT_FIELDS + ("cog",))
    area = parser.add_argument_group("area and grid")
    area.add_argument("--reference", choices=list(NAMES),
                      help="whose grid the outputs get (default: the first raster given)")
    add_config_options(area, ClassifyConfig, ("pixel_size",))
    area.add_argument("--extent", type=float, nargs=4,
                      metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                      help="classify only this area (reference CRS unless --extent-crs)")
    area.add_argument("--extent-crs", help="CRS of --extent (WKT or EPSG:N)")
    area.add_argument("--mask", help="polygons outside which nothing is classified")
    area.add_argument("--mask-layer", help="layer name inside the mask file")
    add_compute(parser, ClassifyConfig)
    options = parser.add_argument_group("options")
    add_config_options(options, ClassifyConfig)   # every declared field not given above


def _crs_wkt(text: Optional[str]) -> Optional[str]:
    if not text:
        return None
    from osgeo import osr
    reference = osr.SpatialReference()
    try:
        failed = reference.SetFromUserInput(text)
    except RuntimeError:
        failed = True
    if failed:
        raise MamolInputError(f"--extent-crs: cannot understand the CRS '{text}' (give WKT "
                              "or EPSG:N).")
    return reference.ExportToWkt()


def run(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..core.inference import ClassifyConfig, MaskSource, classify
    apply_weights_cache(args)
    config = ClassifyConfig(
        model_path=args.model, rasters=rasters(args), output_classes=args.output,
        reference=args.reference, extent=tuple(args.extent) if args.extent else None,
        extent_crs_wkt=_crs_wkt(args.extent_crs),
        mask=MaskSource(args.mask, args.mask_layer) if args.mask else None,
        **config_values(args, ClassifyConfig))
    result = classify(config, channel.progress, is_cancelled, log=channel.log,
                      warn=channel.warning, world=world)
    return {"outputs": {key: str(path) for key, path in result.outputs.items()},
            "class_counts": [{"value": int(value), "name": result.class_names[value],
                              "pixels": int(count)}
                             for value, count in result.class_counts.items()],
            "far_shares": {name: (None if share is None or math.isnan(share) else share)
                           for name, share in result.far_shares.items()},
            "pattern_counts": {str(code): int(n) for code, n in result.pattern_counts.items()},
            "seconds": result.seconds, "pixels_per_second": result.pixels_per_second}


def output_flags() -> Dict[str, str]:
    """The flag of each option that names an output raster, by its name in the arguments."""
    from ..core.inference import OPTIONAL_OUTPUT_FIELDS, ClassifyConfig
    return {"output": "--output", **{item.name: item.option.flag for item in
                                     declared(ClassifyConfig, OPTIONAL_OUTPUT_FIELDS)}}


def outputs(args) -> List[Path]:
    """The files the run writes (locked for the run)."""
    from ..core.class_style import qml_path
    given = [Path(getattr(args, name)) for name in output_flags() if getattr(args, name)]
    return given + [qml_path(Path(args.output))]


def check(args) -> None:
    """Refuse output names the command cannot honour, before any work."""
    for name, flag in output_flags().items():
        value = getattr(args, name)
        if value and not value.lower().endswith(GEOTIFF_SUFFIXES):
            raise MamolInputError(
                f"{flag}: '{value}' must end in .tif or .tiff: every classification output "
                "is a GeoTIFF.")
