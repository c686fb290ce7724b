"""``mamol:checkenvironment`` — "Is my GPU used?": QGIS's side of the machine, then the
engine's ``doctor`` command run in the model environment (:mod:`core.doctor`), as one
copyable report that ends with what to do, and as JSON for a bug report."""
import platform
from pathlib import Path
from typing import Dict, List

from qgis.core import (Qgis, QgsProcessingContext, QgsProcessingOutputString,
                       QgsProcessingParameterFileDestination)

from ..core.doctor import DoctorConfig, write_json
from ..core.errors import MamolInputError
from ..core.system import CUDA_SETUP_TOOLBOX, describe_gpus, detect_nvidia
from .common import (FeedbackRelay, MamolAlgorithm, add_config_parameters, config_arguments,
                     core_errors_as_processing_exceptions, plugin_metadata)
from .engine_runner import engine_python_choice, run_engine
from .model_env import SETUP_HINT


class CheckEnvironmentAlgorithm(MamolAlgorithm):
    """Adapter: DEVICE, PROBE_SECONDS, OUTPUT_JSON -> QGIS's facts + ``mamol doctor``."""

    GROUP = "Setup"
    GROUP_ID = "setup"
    HELP_PAGE = "docs/install.md"

    OUTPUT_JSON = "OUTPUT_JSON"
    REPORT = "REPORT"

    def name(self) -> str:
        return "checkenvironment"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Check environment")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Is my GPU used? Reports the plugin and QGIS versions, which Python runs MaMOL's "
            "engine and why, PyTorch and its build (CPU, CUDA or Apple's MPS), NumPy and "
            "GDAL on both sides, the NVIDIA GPUs the driver lists and whether PyTorch can "
            "use them, the weights cache, and the device a run would pick. A speed probe "
            "of about 20 s (seeded networks, nothing downloaded) turns into how long a "
            "1,000 × 1,000 scene and a training epoch would take. The report ends with "
            "what to do; copy it into a bug report, or attach the JSON file.\n\n"
            "<b>Device</b>: the device to probe, as for a run (Automatic: the one a run "
            "picks).\n<b>Speed probe</b>: about how many seconds to measure; 0 = none.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_config_parameters(self, DoctorConfig)
        report = QgsProcessingParameterFileDestination(
            self.OUTPUT_JSON, self.tr("Report as JSON (for a bug report)"),
            fileFilter="JSON (*.json)", optional=True, createByDefault=False)
        report.setHelp(self.tr("Every fact of the report, for a bug report."))
        self.addParameter(report)
        self.addOutput(QgsProcessingOutputString(self.REPORT, self.tr("Report")))

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback):  # noqa: N802
        relay = FeedbackRelay(feedback)
        facts = {"qgis": qgis_facts()}
        lines = qgis_lines(facts["qgis"])
        for line in lines:
            relay.info(line)
        if facts["qgis"]["engine_python"] is None:
            facts["advice"] = [no_engine_advice(facts["qgis"])]
            lines += ["What to do:", f"  - {facts['advice'][0]}"]
            relay.warning(facts["advice"][0])
        else:
            engine = run_engine("doctor", config_arguments(
                self, parameters, context, DoctorConfig), relay,
                python=facts["qgis"]["engine_python"])
            facts.update(engine)
            for line in engine["report"]:
                relay.info(line)
            lines += list(engine["report"])
        path = self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context)
        if path:
            with core_errors_as_processing_exceptions():
                write_json(Path(path), dict(facts, report=lines))
        return {self.REPORT: "\n".join(lines), self.OUTPUT_JSON: path or None}


def qgis_facts() -> Dict[str, object]:
    """QGIS's side: plugin, QGIS, its Python, NumPy and GDAL, and the engine's Python."""
    import numpy
    from osgeo import gdal
    try:
        python, origin = engine_python_choice()
        problem = None
    except MamolInputError as exc:
        python, origin, problem = None, None, str(exc)
    return {"plugin_version": plugin_metadata()["version"], "qgis_version": Qgis.version(),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "gdal": gdal.__version__,
            "engine_python": python, "engine_python_origin": origin,
            "engine_python_problem": problem}


def qgis_lines(qgis: Dict[str, object]) -> List[str]:
    engine = (f"{qgis['engine_python']}, chosen by {qgis['engine_python_origin']}"
              if qgis["engine_python"] else f"none ({qgis['engine_python_problem']})")
    return [f"MaMOL {qgis['plugin_version']} on QGIS {qgis['qgis_version']} "
            f"({qgis['platform']})",
            f"QGIS's Python {qgis['python']}: NumPy {qgis['numpy']}, GDAL {qgis['gdal']}",
            f"Engine Python: {engine}"]


def no_engine_advice(qgis: Dict[str, object]) -> str:
    """What to do when no Python runs the engine: set it up, with the build the GPUs ask."""
    problem = qgis["engine_python_problem"]
    if "not set up" not in problem:
        return problem
    gpus = detect_nvidia()
    if gpus:
        return (f"PyTorch is not set up yet, and an NVIDIA GPU is present "
                f"({describe_gpus(gpus)}): {CUDA_SETUP_TOOLBOX}.")
    return f"PyTorch is not set up yet: {SETUP_HINT}."
