"""``python -m mamol evaluate``: score a model against reference labels (the same as
mamol:evaluate)."""
import argparse
from pathlib import Path
from typing import Dict, List

from ..core.modalities import NAMES
from .channel import Channel
from .options import (add_compute, add_config_options, add_labels, add_rasters,
                      apply_weights_cache, config_values, label_source, rasters)

NAME = "evaluate"
SUMMARY = "score a model against reference labels"
HELP = (
    "Score a model against reference labels it was not trained on: OA, Cohen's kappa, "
    "per-class accuracy, F1 and the confusion matrix, overall and per missing pattern, "
    "optionally with modalities forced absent or present at an availability rate; an HTML "
    "report and a JSON twin (the same as mamol:evaluate).")


def _availability(text: str):
    name, _, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RATE (e.g. hs=0.5), got '{text}'")
    if name not in NAMES:
        raise argparse.ArgumentTypeError(f"unknown modality '{name}' ({', '.join(NAMES)})")
    return name, value


def add_arguments(parser) -> None:
    from ..training.evaluation import EvaluationConfig
    parser.add_argument("--model", required=True, help="the .mamol model file")
    add_rasters(parser, "(at least one of the model's modalities)")
    add_labels(parser, "reference labels (a label raster or polygons)")
    forced = parser.add_argument_group("forced missingness")
    forced.add_argument("--absent", nargs="+", choices=list(NAMES), default=[],
                        help="evaluate as if these modalities were absent")
    forced.add_argument("--availability", nargs="+", type=_availability, default=[],
                        metavar="NAME=RATE", help="share of samples that keep a modality, "
                        "e.g. hs=0.5 (the others lose it, chosen with the seed)")
    add_config_options(forced, EvaluationConfig, ("independent",))
    add_compute(parser, EvaluationConfig)
    options = parser.add_argument_group("options")
    add_config_options(options, EvaluationConfig)   # every declared field not given above
    parser.add_argument("--report", required=True,
                        help="HTML report; a JSON twin is written next to it")


def outputs(args) -> List[Path]:
    """The files the run writes (locked for the run)."""
    return [Path(args.report), Path(args.report).with_suffix(".json")]


def run(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..training.evaluation import EvaluationConfig, evaluate
    apply_weights_cache(args)
    report = Path(args.report)
    config = EvaluationConfig(
        model_path=args.model, rasters=rasters(args), labels=label_source(args),
        report_html=str(report), report_json=str(report.with_suffix(".json")),
        absent=tuple(args.absent), availability=dict(args.availability),
        simulation_seed=args.seed, **config_values(args, EvaluationConfig))
    result = evaluate(config, channel.progress, is_cancelled, log=channel.log,
                      warn=channel.warning)
    return {"oa": result.oa, "kappa": result.kappa,
            "report_html": str(result.report_html) if result.report_html else None,
            "report_json": str(result.report_json) if result.report_json else None}
