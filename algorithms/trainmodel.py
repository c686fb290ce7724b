"""``mamol:trainmodel`` — fine-tune MaMOL experts on labelled polygons.

Adapter only: parameters -> the options of ``python -m mamol train`` (the same core call,
``train_model``), run in the model environment as a child process; PyTorch never loads into
QGIS's process.
"""
from typing import List

from qgis.core import (
    QgsProcessingOutputFile,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.backbone import ARCH_CHOICES, DEFAULT_ARCH, BackboneSpec, WeightsSource
from ..core.errors import MamolInputError
from ..core.model_file import EXTENSION
from ..training.labels import SplitConfig
from ..training.missing import SimulationMode
from ..training.trainer import TrainingConfig
from ..core.model_kinds import ModelKind
from .common import (AVAILABILITY_PARAMETERS, ChoiceParameter, MamolAlgorithm,
                     NO_RASTER_MESSAGE, FeedbackRelay, RasterFileParameter,
                     add_config_parameters, add_parameter, add_raster_inputs,
                     choice_value, config_arguments, field_value,
                     core_errors_as_processing_exceptions, has_raster_input,
                     in_qgis_temporary_folder, new_model_path, polygon_arguments,
                     polygon_source, raster_arguments, raster_file, raster_inputs)
from .engine_runner import run_engine
from .qgis_compat import NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_VECTOR_POLYGON

WEIGHT_SOURCES = (WeightsSource.PRETRAINED, WeightsSource.CHECKPOINT, WeightsSource.RANDOM)
NO_LABELS_MESSAGE = ("Give the training labels: labelled polygons with a class field, or a "
                     "label raster.")
TILE_MCE_MESSAGE = ("The training mode for unevenly missing rasters (MaMOL + MCE) needs the "
                    "per-pixel model kind: choose 'Per pixel' as the model kind or "
                    "'Standard' as the training mode.")
MISSING_MODES = (SimulationMode.NONE, SimulationMode.RATE, SimulationMode.AVAILABILITY,
                 SimulationMode.INDEPENDENT)


class TrainModelAlgorithm(MamolAlgorithm):
    """Adapter: rasters + labelled polygons + settings -> a ``.mamol`` model file."""

    HELP_PAGE = "docs/training.md"

    HS = "HS"
    SAR = "SAR"
    LIDAR = "LIDAR"
    POLYGONS = "POLYGONS"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_NAME_FIELD = "CLASS_NAME_FIELD"
    LABEL_RASTER = "LABEL_RASTER"
    WARMUP_FRACTION = "WARMUP_FRACTION"
    MAX_VALIDATION_PER_CLASS = "MAX_VALIDATION_PER_CLASS"
    BALANCE_CLASSES = "BALANCE_CLASSES"
    BACKBONE = "BACKBONE"
    WEIGHTS = "WEIGHTS"
    PRETRAINED_TAG = "PRETRAINED_TAG"
    CHECKPOINT = "CHECKPOINT"
    BACKBONE_SEED = "BACKBONE_SEED"
    PATCH_SIZE = "PATCH_SIZE"
    MODEL_KIND = "MODEL_KIND"
    EPOCHS = "EPOCHS"
    BATCH_SIZE = "BATCH_SIZE"
    MICRO_BATCH_SIZE = "MICRO_BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    WEIGHT_DECAY = "WEIGHT_DECAY"
    VALIDATION_FRACTION = "VALIDATION_FRACTION"
    MAX_SAMPLES_PER_CLASS = "MAX_SAMPLES_PER_CLASS"
    MISSING_MODE = "MISSING_MODE"
    MISSING_RATE = "MISSING_RATE"
    SIMULATE_VALIDATION = "SIMULATE_VALIDATION"
    DEVICE = "DEVICE"
    SEED = "SEED"
    TRAINING_MODE = "TRAINING_MODE"
    MCE_FACTORS = "MCE_FACTORS"
    LAMBDA_AUX = "LAMBDA_AUX"
    LAMBDA_SUB = "LAMBDA_SUB"
    LAMBDA_REC = "LAMBDA_REC"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    OUTPUT_REPORT_JSON = "OUTPUT_REPORT_JSON"

    def name(self) -> str:
        return "trainmodel"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Train model from labelled polygons")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Fine-tunes a MaMOL model (Missing-aware Mixture-of-LoRAs on a frozen CLIP ViT) on "
            "your labelled polygons, so that it classifies land cover from whichever of the "
            "rasters are present, per pixel.\n\n"
            "<b>Time</b>: the defaults are sized for a GPU. With ViT-B-16, a GPU trains some "
            "hundreds of samples per second, a 2-core CPU about one: the default 20 epochs "
            "of up to 2,000 samples per class take minutes on a GPU and days on such a CPU. "
            "To try the workflow on a CPU (e.g. on the sample scene), the demo's settings "
            "take minutes: backbone mamol-tiny-vit with random weights, window size 7, "
            "8 epochs, 300 training samples per class (Advanced). For real results on a "
            "CPU, cap the samples per class and choose the 'Tile' model kind (about 100× "
            "faster to classify).\n\n"
            "<b>Rasters</b>: give at least one of hyperspectral, SAR and LiDAR/DSM. They may "
            "differ in CRS, pixel size and extent: everything is aligned onto the grid of the "
            "first one given (HS, then SAR, then LiDAR). Outside a raster's coverage and at "
            "its nodata pixels that modality counts as missing.\n"
            "<b>Labelled polygons / class field</b>: polygons in any CRS with an integer "
            "class field. Class names come from the class-name field or from the layer's "
            "categorised style. A text class field needs a class-name field; its classes are "
            "numbered 1..K alphabetically. Or give a label raster instead of polygons.\n"
            "<b>Base image model (backbone)</b>: an open_clip ViT (ViT-B-16 by default, as in "
            "the paper) and its weights: an open_clip pretrained tag (downloaded once), a "
            "local checkpoint file, or a seeded random initialisation (offline tests and "
            "demos only).\n"
            "<b>Model kind</b>: 'Per pixel' is the paper's method: one window of P × P pixels "
            "around each pixel, one encoder pass per pixel and raster. 'Tile' labels every "
            "pixel of a P × P tile in one pass; overlapping tiles start every P − 2·(P // 7) "
            "pixels, so classifying needs about that number squared times fewer passes "
            "(some 100× at P = 14: usable on a CPU and on large scenes), usually at some cost "
            "in accuracy. Classify and Evaluate take either kind without further settings.\n"
            "<b>Advanced: simulate missing rasters</b>: hides modalities from training "
            "samples so the model learns to cope (paper §4.1). 'Missing rate' makes a share "
            "η of the samples incomplete, each incomplete pattern equally often; "
            "'per-raster availability' drops modality m from a share 1 − a_m of the samples "
            "(paper Tables 1 and 3).\n"
            "<b>Advanced: training mode</b>: 'Rasters missing unevenly' is MaMOL + MCE: a "
            "fusion module and per-modality auxiliary heads weighted by availability and "
            "under-learning (λ weights), for the per-pixel kind only.\n"
            "The split into training and validation pixels is by polygon. Training uses AdamW "
            "(lr 2e-3, weight decay 2e-2, 10 % linear warm-up then linear decay, batch 128) "
            "and keeps the epoch with the best validation accuracy.\n\n"
            "<b>Outputs</b>: the model file (.mamol) and an optional HTML report with its JSON "
            "twin (curves, confusion matrix, accuracy per missing pattern). Nothing is "
            "written if the run fails or is cancelled.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_raster_inputs(self, "Optional; give at least one raster.")
        self._add_labels()
        self._add_backbone()
        add_config_parameters(self, TrainingConfig, ("patch_size", "model_kind", "epochs",
                                                     "batch_size", "micro_batch_size",
                                                     "learning_rate", "weight_decay"))
        add_config_parameters(self, SplitConfig)
        add_config_parameters(self, TrainingConfig, ("balance_classes", "warmup_fraction"))
        self._add_simulation()
        self._add_training_mode()
        add_config_parameters(self, TrainingConfig, ("device", "precision", "compile_mode",
                                                     "seed"))
        add_config_parameters(self, TrainingConfig)   # every declared field not given above
        add_parameter(self, QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, self.tr("Model file"), self.tr(f"MaMOL model (*{EXTENSION})"),
            defaultValue=str(new_model_path(EXTENSION))),
            "The trained model. By default a new dated file in the trained models folder "
            "(Options → Processing → Providers → MaMOL land cover; empty: 'MaMOL models' in "
            "your documents). Not a temporary file: QGIS deletes those when it closes.")
        add_parameter(self, QgsProcessingParameterFileDestination(
            self.OUTPUT_REPORT, self.tr("Training report"), self.tr("HTML files (*.html)"),
            optional=True, createByDefault=True),
            "HTML report; a JSON report with the same name is written next to it.")
        self.addOutput(QgsProcessingOutputFile(self.OUTPUT_REPORT_JSON,
                                               self.tr("Training report (JSON)")))

    def _add_labels(self) -> None:
        """The training labels: polygons with their class fields, or a label raster."""
        add_parameter(self, QgsProcessingParameterFeatureSource(
            self.POLYGONS, self.tr("Labelled polygons"), [SOURCE_VECTOR_POLYGON],
            optional=True), "Training polygons, any CRS. Give these or a label raster.")
        add_parameter(self, QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field"), parentLayerParameterName=self.POLYGONS,
            optional=True), "Integer class value of each polygon (with polygons).")
        add_parameter(self, QgsProcessingParameterField(
            self.CLASS_NAME_FIELD, self.tr("Class-name field"),
            parentLayerParameterName=self.POLYGONS, optional=True),
            "Optional text field naming each class.")
        add_parameter(self, RasterFileParameter(
            self.LABEL_RASTER, self.tr("Label raster"), optional=True),
            "Instead of polygons: a single-band raster of class values (0 and nodata = "
            "unlabelled), e.g. a benchmark's training-label map. Class names and colours come "
            "from its category names and colour table where it has them; pixels are split "
            "into training and validation by blocks of 16 × 16.")

    def _add_backbone(self) -> None:
        """The frozen base image model and where its weights come from."""
        add_parameter(self, ChoiceParameter(
            self.BACKBONE, self.tr("Base image model (backbone)"),
            [value for value, _ in ARCH_CHOICES],
            [self.tr(label) for _, label in ARCH_CHOICES], DEFAULT_ARCH),
            "The frozen open_clip ViT the model adapts. ViT-B-16 is the paper's; larger "
            "ones are slower; the mamol-* ones are small random-weight towers for demos on a "
            "CPU and for tests. In scripts the name (e.g. ViT-B-16) may be given instead of "
            "the index.")
        add_parameter(self, QgsProcessingParameterEnum(
            self.WEIGHTS, self.tr("Base model weights"),
            options=[self.tr("Pretrained (download once)"), self.tr("Checkpoint file"),
                     self.tr("Random (tests and demos)")], defaultValue=0),
            "Where the frozen backbone's weights come from: an open_clip pretrained tag "
            "(downloaded once, then cached), a local checkpoint file, or a seeded random "
            "initialisation (offline tests and demos only).")
        add_parameter(self, QgsProcessingParameterString(
            self.PRETRAINED_TAG, self.tr("Pretrained weights tag"), defaultValue="openai",
            optional=True),
            "open_clip pretrained tag, e.g. openai (ViT-B-16, ViT-B-32, ViT-L-14) or "
            "laion2b_s32b_b79k (ViT-H-14).")
        add_parameter(self, QgsProcessingParameterFile(
            self.CHECKPOINT, self.tr("Checkpoint file"), optional=True),
            "With weights from a checkpoint file: an OpenAI .pt, open_clip .bin/.pt or "
            ".safetensors file.")
        add_parameter(self, QgsProcessingParameterNumber(
            self.BACKBONE_SEED, self.tr("Seed of the random weights"),
            NUMBER_INTEGER, defaultValue=0, minValue=0),
            "Seed of the random backbone (weights = random).", advanced=True)

    def _add_simulation(self) -> None:
        """How rasters are hidden from training samples (Advanced: the defaults suit)."""
        add_parameter(self, QgsProcessingParameterEnum(
            self.MISSING_MODE, self.tr("Simulate missing rasters"),
            options=[self.tr("No (real gaps only)"), self.tr("Missing rate (η)"),
                     self.tr("Per-raster availability"),
                     self.tr("Per-raster, independently")],
            defaultValue=1),
            "How modalities are hidden from training samples so that the model copes with "
            "missing ones. Missing rate: a share η of the samples is incomplete, each "
            "incomplete pattern equally often. Per-raster availability: modality m is "
            "dropped from a share 1 − a_m of the samples (patterns as one draw, or each "
            "modality independently).", advanced=True)
        add_parameter(self, QgsProcessingParameterNumber(
            self.MISSING_RATE, self.tr("Share of samples with gaps"),
            NUMBER_DOUBLE, defaultValue=0.5, minValue=0.0,
            maxValue=1.0), "The missing rate η: share of incomplete samples.", advanced=True)
        for key, label in AVAILABILITY_PARAMETERS.values():
            add_parameter(self, QgsProcessingParameterNumber(
                key, self.tr(label), NUMBER_DOUBLE, defaultValue=1.0,
                minValue=0.0, maxValue=1.0),
                "Share a_m of samples keeping this modality (per-raster availability).",
                advanced=True)
        add_parameter(self, QgsProcessingParameterBoolean(
            self.SIMULATE_VALIDATION, self.tr("Hide rasters in validation too"),
            defaultValue=False),
            "Apply the same simulation to validation samples (the paper's protocol tests "
            "under the training availability).", advanced=True)

    def _add_training_mode(self) -> None:
        """MaMOL, or MaMOL + MCE for modalities missing at very different rates."""
        add_parameter(self, QgsProcessingParameterEnum(
            self.TRAINING_MODE, self.tr("Training mode"),
            options=[self.tr("Standard"), self.tr("Rasters missing unevenly")],
            defaultValue=0),
            "'Rasters missing unevenly' is MaMOL + MCE: it adds a fusion module before the "
            "head and trains per-modality auxiliary heads, weighted by how rarely each "
            "modality is present and how little the fused model uses it, plus subset "
            "prediction and cross-modal completion: for modalities missing at very "
            "different rates. Per-pixel model kind only.", advanced=True)
        add_parameter(self, QgsProcessingParameterEnum(
            self.MCE_FACTORS, self.tr("Uneven mode: aux. loss weights"),
            options=[self.tr("Rarity × under-use"), self.tr("Rarity only"),
                     self.tr("Under-use only")], defaultValue=0),
            "MCE: what weights each modality's auxiliary loss: availability (rarity), "
            "under-learning (under-use), or both.", advanced=True)
        for key, label, help_text in (
                (self.LAMBDA_AUX, "Uneven mode: aux. heads weight",
                 "MCE's λ of the auxiliary heads' loss."),
                (self.LAMBDA_SUB, "Uneven mode: subset weight",
                 "MCE's λ of the subset prediction loss."),
                (self.LAMBDA_REC, "Uneven mode: completion weight",
                 "MCE's λ of the cross-modal completion loss.")):
            add_parameter(self, QgsProcessingParameterNumber(
                key, self.tr(label), NUMBER_DOUBLE, defaultValue=1.0,
                minValue=0.0, maxValue=100.0), help_text, advanced=True)

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        if not has_raster_input(parameters):
            return False, self.tr(NO_RASTER_MESSAGE)
        has_polygons = bool(parameters.get(self.POLYGONS))
        if has_polygons == bool(parameters.get(self.LABEL_RASTER)):
            return False, self.tr(NO_LABELS_MESSAGE if not has_polygons else
                                  "Give either labelled polygons or a label raster, not both.")
        if has_polygons and not parameters.get(self.CLASS_FIELD):
            return False, self.tr("Choose the polygons' class field.")
        output = str(parameters.get(self.OUTPUT_MODEL) or "")
        if output and not output.endswith(EXTENSION) and not output.startswith("TEMPORARY"):
            return False, self.tr(f"The model file must end in {EXTENSION}.")
        kind = field_value(self, parameters, context, TrainingConfig, "model_kind")
        if kind == ModelKind.TILE and \
                self.parameterAsEnum(parameters, self.TRAINING_MODE, context) == 1:
            return False, self.tr(TILE_MCE_MESSAGE)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        relay = FeedbackRelay(feedback)
        with core_errors_as_processing_exceptions():
            arguments = self.engine_arguments(parameters, context, feedback)
        model = arguments[arguments.index("--output") + 1]
        if in_qgis_temporary_folder(model):
            feedback.pushWarning(self.tr(
                f"The model goes to QGIS's temporary folder ({model}), which QGIS deletes "
                "when it closes: save it elsewhere (choose a file for 'Model file') to keep "
                "it."))
        result = run_engine("train", arguments, relay)
        return {self.OUTPUT_MODEL: result["model"],
                self.OUTPUT_REPORT: result["report_html"],
                self.OUTPUT_REPORT_JSON: result["report_json"]}

    def engine_arguments(self, parameters, context, feedback) -> List[str]:
        """The options of ``python -m mamol train`` these parameters mean."""
        arguments = raster_arguments(raster_inputs(self, parameters, context))
        if parameters.get(self.LABEL_RASTER):
            arguments += ["--labels", raster_file(self, parameters, self.LABEL_RASTER, context,
                                                  "the label raster")]
        else:
            arguments += polygon_arguments(polygon_source(
                self, parameters, context, feedback, self.POLYGONS, self.CLASS_FIELD,
                self.CLASS_NAME_FIELD))
        backbone = self._backbone(parameters, context)
        arguments += ["--arch", backbone.arch, "--weights", backbone.source.value,
                      "--backbone-seed", str(backbone.seed)]
        if backbone.pretrained_tag:
            arguments += ["--pretrained-tag", backbone.pretrained_tag]
        if backbone.checkpoint_path:
            arguments += ["--checkpoint", backbone.checkpoint_path]
        arguments += config_arguments(self, parameters, context, TrainingConfig)
        arguments += config_arguments(self, parameters, context, SplitConfig)
        names = [name for name, _ in raster_inputs(self, parameters, context)]
        arguments += self._simulation(parameters, context, names)
        if self.parameterAsBoolean(parameters, self.SIMULATE_VALIDATION, context):
            arguments.append("--simulate-validation")
        if self.parameterAsEnum(parameters, self.TRAINING_MODE, context) == 1:
            arguments += ["--mce", "--mce-factors", ("both", "a", "b")[
                self.parameterAsEnum(parameters, self.MCE_FACTORS, context)]]
            for key, option in ((self.LAMBDA_AUX, "--lambda-aux"),
                                (self.LAMBDA_SUB, "--lambda-sub"),
                                (self.LAMBDA_REC, "--lambda-rec")):
                arguments += [option, repr(self._float(parameters, key, context))]
        arguments += ["--output", self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL,
                                                             context)]
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if report:
            arguments += ["--report", report]
        return arguments

    def _int(self, parameters, key, context) -> int:
        return self.parameterAsInt(parameters, key, context)

    def _float(self, parameters, key, context) -> float:
        return self.parameterAsDouble(parameters, key, context)

    def _backbone(self, parameters, context) -> BackboneSpec:
        arch = choice_value(self, parameters, self.BACKBONE, context,
                            [value for value, _ in ARCH_CHOICES])
        source = WEIGHT_SOURCES[self.parameterAsEnum(parameters, self.WEIGHTS, context)]
        tag = (self.parameterAsString(parameters, self.PRETRAINED_TAG, context) or "").strip()
        checkpoint = self.parameterAsFile(parameters, self.CHECKPOINT, context) or None
        if source is WeightsSource.PRETRAINED and not tag:
            raise MamolInputError("Give the open_clip pretrained tag, e.g. openai.")
        if source is WeightsSource.CHECKPOINT and not checkpoint:
            raise MamolInputError("Give the backbone checkpoint file.")
        return BackboneSpec(arch=arch, source=source,
                            pretrained_tag=tag if source is WeightsSource.PRETRAINED else None,
                            checkpoint_path=checkpoint if source is WeightsSource.CHECKPOINT
                            else None,
                            seed=self._int(parameters, self.BACKBONE_SEED, context))

    def _simulation(self, parameters, context, names) -> List[str]:
        """The simulation options (none with a single modality: nothing to hide)."""
        mode = MISSING_MODES[self.parameterAsEnum(parameters, self.MISSING_MODE, context)]
        if mode in (SimulationMode.AVAILABILITY, SimulationMode.INDEPENDENT):
            rates = [self._float(parameters, AVAILABILITY_PARAMETERS[n][0], context)
                     for n in names]
            return ["--availability"] + [repr(rate) for rate in rates] + \
                (["--independent"] if mode is SimulationMode.INDEPENDENT else [])
        if mode is SimulationMode.RATE and len(names) > 1:
            return ["--missing-rate", repr(self._float(parameters, self.MISSING_RATE,
                                                       context))]
        return []
