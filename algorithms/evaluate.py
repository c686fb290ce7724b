"""``mamol:evaluate`` — score a trained model against reference labels.

Adapter only: parameters -> the options of ``python -m mamol evaluate`` (the same core
call, ``training.evaluation.evaluate``), run in the model environment as a child process;
PyTorch never loads into QGIS's process.
"""
from typing import List

from qgis.core import (QgsProcessingOutputFile, QgsProcessingOutputNumber,
                       QgsProcessingParameterEnum, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFile,
                       QgsProcessingParameterFileDestination, QgsProcessingParameterNumber)

from ..core.errors import MamolInputError
from ..core.model_file import EXTENSION
from ..training.evaluation import EvaluationConfig
from ..training.labels import LabelRasterSource
from .common import (AVAILABILITY_PARAMETERS, MamolAlgorithm, NO_RASTER_MESSAGE, RASTER_INPUTS,
                     add_config_parameters, add_parameter, add_raster_inputs,
                     config_arguments, core_errors_as_processing_exceptions, has_raster_input, polygon_arguments,
                     polygon_source, FeedbackRelay, raster_arguments, RasterFileParameter,
                     raster_file, raster_inputs)
from .engine_runner import run_engine
from .qgis_compat import NUMBER_DOUBLE, SOURCE_VECTOR_POLYGON

#: Modalities that can be forced absent, in the enum's order.
MODALITY_CHOICES = tuple(name for _, name, _ in RASTER_INPUTS)
NO_LABELS_MESSAGE = ("Give the reference labels: a label raster, or polygons with a class "
                     "field.")


class EvaluateAlgorithm(MamolAlgorithm):
    """Adapter: model file + rasters + reference labels -> accuracy report."""

    HELP_PAGE = "docs/classify-evaluate.md"

    MODEL = "MODEL"
    LABEL_RASTER = "LABEL_RASTER"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    ABSENT = "ABSENT"
    FORCE_INDEPENDENTLY = "FORCE_INDEPENDENTLY"
    MAX_SAMPLES_PER_CLASS = "MAX_SAMPLES_PER_CLASS"
    MAX_MISSING_FRACTION = "MAX_MISSING_FRACTION"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    SEED = "SEED"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_REPORT_JSON = "OUTPUT_REPORT_JSON"
    OA = "OA"
    KAPPA = "KAPPA"

    def name(self) -> str:
        return "evaluate"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Evaluate model against reference labels")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Measures how good a MaMOL model is on reference labels it was not trained on, "
            "and what a missing sensor costs.\n\n"
            "<b>Reference labels</b>: a label raster (class values, 0 = unlabelled) or "
            "polygons with an integer class field; the class values must be the model's.\n"
            "<b>Rasters</b>: at least one of the model's modalities, as for classification. "
            "Each labelled pixel is classified from the modalities valid there.\n"
            "<b>Forced missingness</b>: evaluate as if some modalities were absent, or "
            "present at an availability rate (e.g. HS 0.5: HS is hidden from a seeded half "
            "of the samples — the test side of the paper's Table 1/3 protocol).\n"
            "<b>Results</b>: overall accuracy, Cohen's kappa, per-class producer's and "
            "user's accuracy and F1, and the confusion matrix — overall and for each "
            "missing pattern — in an HTML report (tables and a confusion-matrix picture) "
            "and a JSON file next to it. OA and kappa are also algorithm outputs.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_parameter(self, QgsProcessingParameterFile(
            self.MODEL, self.tr("Model file"), extension=EXTENSION.lstrip(".")),
            "A .mamol model file.")
        add_raster_inputs(self, "Optional; give at least one of the model's modalities.")
        add_parameter(self, RasterFileParameter(
            self.LABEL_RASTER, self.tr("Reference label raster"), optional=True),
            "Class values (0 and nodata = unlabelled). Give this or the polygons.")
        add_parameter(self, QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.tr("Reference polygons"), [SOURCE_VECTOR_POLYGON],
            optional=True), "Labelled polygons (any CRS). Give these or a label raster.")
        add_parameter(self, QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field"), parentLayerParameterName=self.POLYGONS,
            optional=True), "Integer class values of the polygons.")
        add_parameter(self, QgsProcessingParameterEnum(
            self.ABSENT, self.tr("Treat as absent"),
            options=[self.tr("Hyperspectral"), self.tr("SAR"), self.tr("LiDAR / DSM")],
            allowMultiple=True, optional=True, defaultValue=[]),
            "Evaluate as if these modalities were absent: their rasters are ignored even "
            "when given.")
        for key, label in AVAILABILITY_PARAMETERS.values():
            add_parameter(self, QgsProcessingParameterNumber(
                key, self.tr(label), NUMBER_DOUBLE, defaultValue=1.0,
                minValue=0.0, maxValue=1.0),
                "Share of samples that keep this modality (1 = no forcing). The others "
                "lose it, chosen with the seed; the shares lost must add up to at most 1.")
        add_config_parameters(self, EvaluationConfig)
        add_parameter(self, QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Evaluation report"), self.tr("HTML files (*.html)")),
            "HTML report; a JSON report with the same name is written next to it.")
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_REPORT_JSON,
                                               self.tr("Evaluation report (JSON)")))
        self.addOutput(QgsProcessingOutputNumber(self.OA, self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber(self.KAPPA, self.tr("Cohen's kappa")))

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        if not has_raster_input(parameters):
            return False, self.tr(NO_RASTER_MESSAGE)
        has_raster = bool(parameters.get(self.LABEL_RASTER))
        has_polygons = bool(parameters.get(self.POLYGONS))
        if has_raster == has_polygons:
            return False, self.tr(NO_LABELS_MESSAGE if not has_raster else
                                  "Give either a label raster or polygons, not both.")
        if has_polygons and not parameters.get(self.CLASS_FIELD):
            return False, self.tr("Choose the polygons' class field.")
        return super().checkParameterValues(parameters, context)

    def _labels(self, parameters, context, feedback):
        if parameters.get(self.LABEL_RASTER):
            return LabelRasterSource(raster_file(self, parameters, self.LABEL_RASTER, context,
                                                 "the reference label raster"))
        if parameters.get(self.POLYGONS):
            return polygon_source(self, parameters, context, feedback, self.POLYGONS,
                                  self.CLASS_FIELD)
        raise MamolInputError(NO_LABELS_MESSAGE)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        relay = FeedbackRelay(feedback)
        with core_errors_as_processing_exceptions():
            arguments = self.engine_arguments(parameters, context, feedback)
        result = run_engine("evaluate", arguments, relay)
        return {self.OUTPUT_REPORT: result["report_html"],
                self.OUTPUT_REPORT_JSON: result["report_json"],
                self.OA: result["oa"], self.KAPPA: result["kappa"]}

    def engine_arguments(self, parameters, context, feedback) -> List[str]:
        """The options of ``python -m mamol evaluate`` these parameters mean."""
        model_path = self.parameterAsFile(parameters, self.MODEL, context)
        if not model_path:
            raise MamolInputError("Give the model file (.mamol).")
        arguments = ["--model", model_path]
        arguments += raster_arguments(raster_inputs(self, parameters, context))
        labels = self._labels(parameters, context, feedback)
        if isinstance(labels, LabelRasterSource):
            arguments += ["--labels", labels.path]
        else:
            arguments += polygon_arguments(labels, with_names=False)
        rates = []
        for name, (key, _) in AVAILABILITY_PARAMETERS.items():
            rate = self.parameterAsDouble(parameters, key, context)
            if rate < 1.0:
                rates.append(f"{name}={rate!r}")
        if rates:
            arguments += ["--availability"] + rates
            arguments += config_arguments(self, parameters, context, EvaluationConfig,
                                          ("independent",))
        absent = [MODALITY_CHOICES[i] for i in
                  self.parameterAsEnums(parameters, self.ABSENT, context)]
        if absent:
            arguments += ["--absent"] + absent
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if not report:
            raise MamolInputError("Give the evaluation report file (.html).")
        arguments += config_arguments(self, parameters, context, EvaluationConfig,
                                      exclude=("independent",))
        return arguments + ["--report", report]
