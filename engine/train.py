"""``python -m mamol train``: train a model (the same call as mamol:trainmodel).

    python -m mamol train --hs hs.tif --sar sar.tif --lidar lidar.tif \\
        --polygons training.gpkg --class-field class_id --name-field class_name \\
        --arch mamol-tiny-vit --weights random --patch-size 7 --epochs 10 \\
        --output model.mamol --report report.html
"""
import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

from ..core.backbone import DEFAULT_ARCH, BackboneSpec, WeightsSource
from ..core.errors import MamolInputError
from ..core.modalities import NAMES
from ..training.labels import SplitConfig
from ..training.missing import MissingSimulation, SimulationMode, Table1Case, table1_availability
from .channel import Channel
from .options import (add_compute, add_config_options, add_labels, add_rasters,
                      apply_weights_cache, config_values, label_source, rasters)

NAME = "train"
SUMMARY = "train a model on labelled polygons or a label raster"
HELP = ("Train a MaMOL land-cover model on labelled polygons or a label raster (the same as "
        "mamol:trainmodel): rasters are aligned onto the first one's grid, pixels split into "
        "training and validation by polygon, and the model fine-tuned with the "
        "missing-modality simulation; writes the .mamol model file and, if asked, an HTML "
        "report with a JSON twin.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options of ``python -m mamol train``; the defaults are the config's (the
    paper's, §4.1), declared once in :class:`TrainingConfig` and :class:`SplitConfig`."""
    from ..training.trainer import TrainingConfig
    add_rasters(parser, group_name="rasters (at least one)")
    data = add_labels(parser, "labels (polygons with a class field, or a label raster)")
    data.add_argument("--name-field", help="class-name field (optional)")
    data.add_argument("--class-styles", type=_class_styles, metavar="JSON",
                      help='class names and colours by class value, e.g. '
                           '\'{"1": ["water", "#1f78b4"]}\' (as a QGIS categorised style '
                           'gives them); they override names from the data')
    # how the caller's user names the class-name field in errors (the Toolbox's wording)
    data.add_argument("--name-field-choice", default="--name-field", help=argparse.SUPPRESS)
    model = parser.add_argument_group("backbone and model")
    model.add_argument("--arch", default=DEFAULT_ARCH, help="open_clip ViT config name")
    model.add_argument("--weights", choices=[s.value for s in WeightsSource],
                       default=WeightsSource.PRETRAINED.value)
    model.add_argument("--pretrained-tag", default="openai")
    model.add_argument("--checkpoint", help="backbone checkpoint file (--weights checkpoint)")
    model.add_argument("--backbone-seed", type=int, default=0)
    add_config_options(model, TrainingConfig, ("patch_size",))
    model.add_argument("--experts", choices=["full", "no_dynamic", "no_static",
                                             "no_modality_specific", "none"], default="full")
    add_config_options(model, TrainingConfig, ("model_kind",))
    add_compute(parser, TrainingConfig)
    optimiser = parser.add_argument_group("optimiser and samples")
    add_config_options(optimiser, TrainingConfig)   # every declared field not given above
    add_config_options(optimiser, SplitConfig)
    mce = parser.add_argument_group(
        "MCE training mode (imbalanced missing rates, seed 001)")
    mce.add_argument("--mce", action="store_true",
                     help="train MaMOL + MCE: a fusion module before the head, auxiliary "
                          "heads weighted by each modality's availability and Shapley "
                          "contribution, subset prediction and cross-modal completion")
    mce.add_argument("--mce-factors", choices=["both", "a", "b"], default="both",
                     help="what weights the auxiliary losses: a_m·b_m, the availability "
                          "factor a_m only, or the under-learning factor b_m only")
    mce.add_argument("--lambda-aux", type=float, default=1.0,
                     help="weight of the auxiliary heads' loss (default 1)")
    mce.add_argument("--lambda-sub", type=float, default=1.0,
                     help="weight of the subset prediction loss (default 1)")
    mce.add_argument("--lambda-rec", type=float, default=1.0,
                     help="weight of the cross-modal completion loss (default 1)")
    missing = parser.add_argument_group("missing-modality simulation (paper §4.1)")
    missing.add_argument("--missing-rate", type=float,
                         help="η: share of incomplete samples, all incomplete patterns equally")
    missing.add_argument("--availability", type=float, nargs="+", metavar="A",
                         help="availability per given modality, in order "
                              + " ".join(NAMES))
    missing.add_argument("--independent", action="store_true",
                         help="with --availability: drop each modality on its own (patterns "
                              "combine; the missing shares may add up to more than 100 %%)")
    missing.add_argument("--table1", nargs=2, metavar=("ETA", "CASE"),
                         help="paper Table 1 row: η and missing_other | missing_hs | "
                              "missing_both (two modalities, HS first)")
    missing.add_argument("--simulate-validation", action="store_true",
                         help="apply the same simulation to the validation samples")
    output = parser.add_argument_group("output")
    output.add_argument("--output", required=True, help="model file to write (.mamol)")
    output.add_argument("--report", help="HTML report; a .json twin is written next to it")




def _class_styles(text: str):
    try:
        record = json.loads(text)
        return {int(value): (str(pair[0]), str(pair[1])) for value, pair in record.items()}
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(
            f'expected {{"value": ["name", "#rrggbb"], ...}}, got {text!r} ({exc})')


def _simulation(args, names: Sequence[str]) -> MissingSimulation:
    chosen = [o for o in ("missing_rate", "availability", "table1") if getattr(args, o)]
    if len(chosen) > 1:
        raise MamolInputError("Give only one of --missing-rate, --availability, --table1.")
    if args.missing_rate is not None:
        return MissingSimulation(SimulationMode.RATE, missing_rate=args.missing_rate,
                                 seed=args.seed)
    if args.independent and not args.availability:
        raise MamolInputError("--independent applies to --availability only.")
    if args.availability:
        return MissingSimulation(SimulationMode.INDEPENDENT if args.independent
                                 else SimulationMode.AVAILABILITY,
                                 availability=tuple(args.availability), seed=args.seed)
    if args.table1:
        if len(names) != 2 or names[0] != NAMES[0]:
            raise MamolInputError(f"--table1 needs exactly two rasters: --{NAMES[0]} and one "
                                  "other.")
        try:
            eta = float(args.table1[0])
            case = Table1Case(args.table1[1])
        except ValueError as exc:
            raise MamolInputError(f"--table1 expects ETA CASE, got {args.table1} ({exc}).") \
                from exc
        return MissingSimulation(SimulationMode.AVAILABILITY,
                                 availability=table1_availability(eta, case), seed=args.seed)
    return MissingSimulation()


def config_from_args(args):
    """The :class:`TrainingConfig` an argument namespace describes."""
    from ..training.trainer import TrainingConfig

    modalities = rasters(args)
    names = [name for name, _ in modalities]
    simulation = _simulation(args, names)
    report_json = str(Path(args.report).with_suffix(".json")) if args.report else None
    return TrainingConfig(
        modalities=modalities,
        polygons=label_source(args),
        output_model=args.output, report_html=args.report, report_json=report_json,
        backbone=BackboneSpec(arch=args.arch, source=WeightsSource(args.weights),
                              pretrained_tag=args.pretrained_tag
                              if args.weights == WeightsSource.PRETRAINED.value else None,
                              checkpoint_path=args.checkpoint
                              if args.weights == WeightsSource.CHECKPOINT.value else None,
                              seed=args.backbone_seed),
        adapter={"experts": args.experts},
        split=SplitConfig(**config_values(args, SplitConfig)),
        simulation=simulation,
        validation_simulation=simulation if args.simulate_validation else MissingSimulation(),
        mce=_mce(args), **config_values(args, TrainingConfig))


def _mce(args):
    """The MCE settings, or None for plain MaMOL (λ options without --mce are an error)."""
    changed = [option for option, value in (("--mce-factors", args.mce_factors != "both"),
                                            ("--lambda-aux", args.lambda_aux != 1.0),
                                            ("--lambda-sub", args.lambda_sub != 1.0),
                                            ("--lambda-rec", args.lambda_rec != 1.0))
               if value]
    if not args.mce:
        if changed:
            raise MamolInputError(f"{', '.join(changed)} only apply with --mce.")
        return None
    from ..training.mce import MceConfig
    return MceConfig(factors=args.mce_factors, auxiliary=args.lambda_aux,
                     subsets=args.lambda_sub, completion=args.lambda_rec)


def run(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..training.missing import SimulationMode
    from ..training.trainer import train_model
    apply_weights_cache(args)
    config = config_from_args(args)
    if len(config.modality_names) == 1 and config.simulation.mode is SimulationMode.NONE:
        channel.log("One modality given: there is nothing to hide, so no missing-modality "
                    "simulation.")
    result = train_model(config, channel.progress, is_cancelled, log=channel.log,
                         warn=channel.warning, world=world)
    return {"model": str(result.model_path),
            "report_html": str(result.report_html) if result.report_html else None,
            "report_json": str(result.report_json) if result.report_json else None}


def outputs(args) -> List[Path]:
    """The files locked from the start of the run: the model. The reports are locked when
    they are written: one that cannot be written is a warning after training, never a
    reason to lose the model."""
    return [Path(args.output)]
