"""``python -m mamol doctor``: a report of the engine's environment, the GPUs and whether a
run would use them, a short speed probe, and what to do (the same as mamol:checkenvironment,
which adds QGIS's side)."""
from pathlib import Path
from typing import Dict, List

from .channel import Channel
from .options import add_config_options, add_weights_cache, apply_weights_cache, config_values

NAME = "doctor"
SUMMARY = "check the environment, the GPU and the device's speed"
HELP = (
    "Report the engine's Python, PyTorch and its build (CPU, CUDA or MPS), NumPy, GDAL and "
    "open_clip, the NVIDIA GPUs nvidia-smi lists and whether PyTorch can use them, the "
    "weights cache, and the device a run would pick; measure that device for about 20 s "
    "with seeded, untrained networks (nothing is downloaded); end with what to do. The "
    "report goes to stdout; with --progress json (or --json FILE) the facts as JSON, for "
    "a bug report.")


def add_arguments(parser) -> None:
    from ..core.doctor import DoctorConfig
    add_config_options(parser, DoctorConfig)
    add_weights_cache(parser)
    parser.add_argument("--json", metavar="FILE",
                        help="also write the facts as JSON to FILE (for a bug report)")


def outputs(args) -> List[Path]:
    """The files the run writes (locked for the run)."""
    return [Path(args.json)] if args.json else []


def run(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..core import doctor, probe
    from ..core.devices import resolve_device
    from ..core.feedback import Reporter
    apply_weights_cache(args)
    config = doctor.DoctorConfig(**config_values(args, doctor.DoctorConfig))
    config.validate()
    facts = doctor.engine_facts(config.device)
    if config.probe_seconds > 0 and facts["device"]["chosen"]:
        facts["probe"] = probe.probe(resolve_device(facts["device"]["chosen"]),
                                     budget=config.probe_seconds, log=channel.log,
                                     reporter=Reporter(channel.progress, is_cancelled))
    facts["advice"] = doctor.advice(facts)
    facts["report"] = doctor.report_lines(facts)
    if facts["gpu"]["idle_gpu"]:
        channel.warning(facts["gpu"]["idle_gpu"])
    if args.json:
        doctor.write_json(Path(args.json), facts)
    return facts


def text(result: Dict[str, object]) -> List[str]:
    """The report, as the result on a terminal (the facts are the result in JSON)."""
    return list(result["report"])
