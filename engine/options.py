"""What several engine commands share on their command lines: progress and debugging, the
raster options, the device options, the weights cache."""
import argparse
import os

from ..core.modalities import MODALITIES
from .channel import PROGRESS_MODES


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="how progress is shown on stderr: a bar on a terminal, log "
                             "lines only, JSON lines for a calling program, or nothing "
                             "(default: a bar on a terminal, else plain)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="the same as --progress none")


def add_rasters(parser: argparse.ArgumentParser, what: str = "",
                group_name: str = "rasters (at least one)") -> None:
    """``--hs``, ``--sar``, ``--lidar``: one option per modality, in model order."""
    group = parser.add_argument_group(group_name)
    for modality in MODALITIES:
        group.add_argument(modality.flag, help=f"{modality.description} {what}".strip())


def rasters(args) -> tuple:
    """(modality name, path) of each raster given, in model order."""
    return tuple((m.name, getattr(args, m.name)) for m in MODALITIES if getattr(args, m.name))


def add_compute(parser, with_compile: bool = True) -> None:
    group = parser.add_argument_group("device")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N "
                       "(auto: a CUDA GPU when there is one)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="number format of the frozen backbone: auto = bf16 on a GPU, "
                            "fp32 on the CPU (trainable weights stay fp32)")
    if with_compile:
        group.add_argument("--compile", choices=["off", "default", "max-autotune"],
                           default="off", help="torch.compile the encoder once per run "
                                               "(pays off on a GPU for long runs only)")
    group.add_argument("--weights-cache", metavar="FOLDER",
                       help="where downloaded backbone weights are kept (default: "
                            "MAMOL_WEIGHTS_CACHE, else the Hugging Face cache)")


def apply_weights_cache(args) -> None:
    if getattr(args, "weights_cache", None):
        os.environ["MAMOL_WEIGHTS_CACHE"] = args.weights_cache


def add_labels(parser, title: str) -> argparse._ArgumentGroup:
    """``--labels`` (a label raster) or ``--polygons`` with their layer and class field."""
    group = parser.add_argument_group(title)
    group.add_argument("--polygons", help="labelled polygons (any OGR format, any CRS)")
    group.add_argument("--labels", help="label raster (class values, 0 = unlabelled)")
    group.add_argument("--layer", help="layer name inside the polygon file (default: first)")
    group.add_argument("--class-field", help="integer class field of the polygons")
    return group


def label_source(args):
    """The labels the arguments give: a label raster or polygons with a class field (and,
    for training, a class-name field and styled class names)."""
    from ..core.errors import MamolInputError
    from ..training.labels import LabelRasterSource, PolygonSource
    if bool(args.labels) == bool(args.polygons):
        raise MamolInputError("Give either --labels (a label raster) or --polygons (with "
                              "--class-field).")
    if args.labels:
        return LabelRasterSource(args.labels)
    if not args.class_field:
        raise MamolInputError("--polygons needs --class-field.")
    extra = {}
    if hasattr(args, "name_field"):
        extra = dict(name_field=args.name_field, styled_classes=args.class_styles,
                     name_field_choice=args.name_field_choice)
    return PolygonSource(path=args.polygons, class_field=args.class_field, layer=args.layer,
                         **extra)
