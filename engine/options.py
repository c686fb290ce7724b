"""What several engine commands share on their command lines: progress and debugging, the
raster options, the device options, the weights cache."""
import argparse
import os
from typing import Optional, Sequence, Tuple

from ..core.modalities import MODALITIES
from ..core.options import declared
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


def add_config_options(group, config_class, names: Optional[Sequence[str]] = None) -> None:
    """One option per field of ``config_class`` declared with :func:`core.options.option`
    (``names`` in that order; None: every declared field the parser lacks so far, so that a
    new field reaches the command line without an edit here): its flag, type, choices,
    default and help, stored under the field's name."""
    # a group shares its parser's list of actions (argparse keeps no public view of it)
    present = {action.dest for action in group._actions}
    for declared_field in declared(config_class, names):
        if names is None and declared_field.name in present:
            continue
        facts = declared_field.option
        text = facts.help.replace("%", "%%")
        if facts.negate:
            text = f"Do not: {facts.label[0].lower()}{facts.label[1:]}. {text}"
        elif declared_field.kind is not bool and declared_field.default is not None:
            bounds = ""
            if facts.minimum is not None and facts.maximum is not None:
                bounds = f"{facts.minimum!r} to {facts.maximum!r}; "
            text += f" ({bounds}default: %(default)s)"
        settings = dict(dest=declared_field.name, default=declared_field.default, help=text)
        if facts.output:
            settings["metavar"] = "TIF"
        if declared_field.kind is bool:
            settings["action"] = "store_false" if facts.negate else "store_true"
        else:
            settings["type"] = declared_field.kind
            if facts.choices:
                settings["choices"] = facts.values
        group.add_argument(facts.flag, **settings)


def config_values(args, config_class, names: Optional[Sequence[str]] = None) -> dict:
    """The values of ``config_class``'s declared fields in an argument namespace, by field
    name (the keyword arguments of the config)."""
    return {item.name: getattr(args, item.name) for item in declared(config_class, names)}


#: The fields of the device group, in order (a config may lack ``compile_mode``).
COMPUTE_FIELDS = ("device", "precision", "compile_mode")


def compute_fields(config_class) -> Tuple[str, ...]:
    have = {item.name for item in declared(config_class)}
    return tuple(name for name in COMPUTE_FIELDS if name in have)


def add_compute(parser, config_class) -> None:
    """The device group: ``config_class``'s device, precision (and compile) options and the
    weights cache."""
    group = parser.add_argument_group("device")
    add_config_options(group, config_class, compute_fields(config_class))
    add_weights_cache(group)


def add_weights_cache(group) -> None:
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
