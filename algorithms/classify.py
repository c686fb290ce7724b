"""``mamol:classify`` — classify a scene with a trained MaMOL model.

Adapter only: parameters -> the options of ``python -m mamol classify`` (the same core
call, ``core.inference.classify``), run in the model environment as a child process;
PyTorch never loads into QGIS's process.
"""
import os
from pathlib import Path
from typing import Sequence

from qgis.core import (QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterRasterDestination)

from ..core.class_style import qml_path
from ..core.errors import MamolInputError
from ..core.inference import OPTIONAL_OUTPUT_FIELDS, ClassifyConfig
from ..core.modalities import NAMES
from ..core.model_file import EXTENSION
from ..core.options import declared
from ..engine.classify import GEOTIFF_SUFFIXES
from .common import (LoadStyle, MamolAlgorithm, NO_RASTER_MESSAGE, FeedbackRelay,
                     add_config_parameters, add_parameter, add_raster_inputs,
                     config_arguments, core_errors_as_processing_exceptions, has_raster_input,
                     raster_arguments, raster_inputs, set_post_processor)
from .engine_runner import run_engine
from .qgis_compat import SOURCE_VECTOR_POLYGON

#: The optional outputs' declared ClassifyConfig fields (parameter, option, label, help).
OPTIONAL_OUTPUTS = tuple(declared(ClassifyConfig, OPTIONAL_OUTPUT_FIELDS))
REFERENCE_CHOICES = (None, *NAMES)


class _ClassesOnTop(QgsProcessingLayerPostProcessorInterface):
    """Run on each loaded output of one classification: the class raster gets its style,
    and ends up above the optional outputs, which would otherwise hide it.

    QGIS 3.22 adds the outputs in the order of their file paths, each above the last, and
    runs a layer's post-processor right after adding it; so every output's post-processor
    moves the class raster above the outputs added so far. QGIS 3.32 and later add them in
    the order of their ``layerSortKey`` (set too: the class raster last, so on top) and run
    the post-processors after adding all."""

    def __init__(self, project, classes: str, outputs: Sequence[str]) -> None:
        super().__init__()
        self.project = project
        self.classes = _same_file(classes)
        self.outputs = {_same_file(path) for path in outputs}
        self.style = LoadStyle(str(qml_path(Path(classes))))

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        if layer is not None and _same_file(layer.source()) == self.classes:
            self.style.postProcessLayer(layer, context, feedback)
        if self.project is not None:
            raise_above(self.project.layerTreeRoot(), self.classes, self.outputs)


def _same_file(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def raise_above(root, first: str, others) -> None:
    """Move the layer-tree node of the file ``first`` just above the highest node of the
    files ``others`` in its group, where it is below one (files as :func:`_same_file`)."""
    nodes = [node for node in root.findLayers() if node.layer() is not None]
    mine = next((node for node in nodes if _same_file(node.layer().source()) == first), None)
    if mine is None:
        return
    group = mine.parent()
    children = group.children()
    above = [children.index(node) for node in nodes
             if node.parent() is group and node is not mine
             and _same_file(node.layer().source()) in others]
    if not above or children.index(mine) < min(above):
        return
    # a copy in place first: a layer whose last node leaves the tree leaves the project
    group.insertChildNode(min(above), mine.clone())
    group.removeChildNode(mine)


class ClassifyAlgorithm(MamolAlgorithm):
    """Adapter: model file + rasters -> class raster (+ optional rasters)."""

    HELP_PAGE = "docs/classify-evaluate.md"

    MODEL = "MODEL"
    REFERENCE = "REFERENCE"
    PIXEL_SIZE = "PIXEL_SIZE"
    EXTENT = "EXTENT"
    MASK = "MASK"
    DEVICE = "DEVICE"
    BATCH_SIZE = "BATCH_SIZE"
    STRIDE = "STRIDE"
    BLOCK_SIZE = "BLOCK_SIZE"
    GDAL_CACHE = "GDAL_CACHE"
    MAX_MISSING_FRACTION = "MAX_MISSING_FRACTION"
    TILE_STEP = "TILE_STEP"
    TILE_BLEND = "TILE_BLEND"
    COG = "COG"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "classify"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Classify land cover")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Classifies land cover with a trained MaMOL model from whichever of its "
            "modalities you have. Each pixel is classified from the modalities valid there: "
            "where SAR does not reach or clouds punch holes in the hyperspectral image, the "
            "remaining rasters carry the pixel. Pixels with no valid modality are nodata.\n\n"
            "<b>Model</b>: a .mamol file from 'Train model from labelled polygons'. Each "
            "raster is checked against the model's modalities and band counts first.\n"
            "<b>Rasters</b>: at least one of the model's modalities; CRS, pixel size and "
            "extent may differ — everything is aligned onto the grid of the first given "
            "raster (or the one you choose), optionally cropped to an extent or a mask.\n"
            "<b>Outputs</b>: the class raster (GeoTIFF with colour table and class names, "
            "plus a .qml style next to it for the legend) and, if asked, class "
            "probabilities, confidence, normalised entropy and the modalities used.\n"
            "<b>Advanced</b>: device (auto uses a CUDA GPU when there is one), batch size, "
            "stride s (classify every s-th pixel and fill the s×s cell — a fast preview), "
            "block size (does not change the result), and the share of a window that may "
            "be missing before its modality counts as missing (default: the model's).")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        model = QgsProcessingParameterFile(self.MODEL, self.tr("Model file"),
                                           extension=EXTENSION.lstrip("."))
        model.setHelp(self.tr("A .mamol model file."))
        self.addParameter(model)
        add_raster_inputs(self, "Optional; give at least one of the model's modalities.")
        add_parameter(self, QgsProcessingParameterEnum(
            self.REFERENCE, self.tr("Reference grid from"),
            options=[self.tr("First raster given"),
                     self.tr("Hyperspectral raster"), self.tr("SAR raster"),
                     self.tr("LiDAR / DSM raster")], defaultValue=0),
            "Whose CRS, pixel size and extent the outputs get (first given: in the order "
            "HS, SAR, LiDAR).")
        add_config_parameters(self, ClassifyConfig, ("pixel_size",))
        add_parameter(self, QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"),
                                                         optional=True),
            "Classify only this area (default: the whole reference raster).")
        add_parameter(self, QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Mask polygons"), [SOURCE_VECTOR_POLYGON],
            optional=True), "Pixels outside these polygons are nodata.")
        add_config_parameters(self, ClassifyConfig, (
            "device", "precision", "compile_mode", "batch_size", "stride", "block_size",
            "gdal_cache_mb", "max_missing_fraction", "tile_step", "tile_blend", "cog"))
        add_parameter(self, QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Land-cover classes")),
            "Class raster (GeoTIFF) with colour table, class names and a .qml style.")
        add_config_parameters(self, ClassifyConfig, OPTIONAL_OUTPUT_FIELDS)
        add_config_parameters(self, ClassifyConfig)   # every declared field not given above

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        if not has_raster_input(parameters):
            return False, self.tr(NO_RASTER_MESSAGE)
        return super().checkParameterValues(parameters, context)

    def _output(self, parameters, key, context):
        path = self.parameterAsOutputLayer(parameters, key, context)
        if not path:
            return None
        if Path(path).suffix.lower() not in GEOTIFF_SUFFIXES:
            raise MamolInputError(f"Outputs are GeoTIFF: give '{key}' a .tif file name, not "
                                  f"'{Path(path).name}'.")
        return path

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        relay = FeedbackRelay(feedback)
        with core_errors_as_processing_exceptions():
            arguments, outputs = self.engine_arguments(parameters, context, feedback)
        result = run_engine("classify", arguments, relay)
        results = {self.OUTPUT: outputs[self.OUTPUT]}
        for item in OPTIONAL_OUTPUTS:
            results[item.option.key] = outputs.get(item.option.key)
        relay.info(self.tr("Pixels per class:"))
        for record in result["class_counts"]:
            relay.info(f"  {record['value']} {record['name']}: {record['pixels']}")
        self._load_classes_on_top(context, outputs)
        return results

    def _load_classes_on_top(self, context, outputs) -> None:
        """The class raster styled and above the optional outputs once QGIS loads them."""
        classes = outputs[self.OUTPUT]
        loaded = [path for path in outputs.values() if context.willLoadLayerOnCompletion(path)]
        for path in loaded:
            details = context.layerToLoadOnCompletionDetails(path)
            if hasattr(details, "layerSortKey"):          # QGIS >= 3.32: loaded in key order
                details.layerSortKey = 1 if path == classes else 0
            set_post_processor(context, path, _ClassesOnTop(
                details.project, classes, [p for p in loaded if p != classes]))

    def engine_arguments(self, parameters, context, feedback):
        """The options of ``python -m mamol classify`` and the output paths by key."""
        model_path = self.parameterAsFile(parameters, self.MODEL, context)
        if not model_path:
            raise MamolInputError("Give the model file (.mamol).")
        arguments = ["--model", model_path]
        arguments += raster_arguments(raster_inputs(self, parameters, context))
        reference = REFERENCE_CHOICES[self.parameterAsEnum(parameters, self.REFERENCE, context)]
        if reference:
            arguments += ["--reference", reference]
        if parameters.get(self.EXTENT):
            rectangle = self.parameterAsExtent(parameters, self.EXTENT, context)
            crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            arguments += ["--extent"] + [repr(v) for v in (
                rectangle.xMinimum(), rectangle.yMinimum(), rectangle.xMaximum(),
                rectangle.yMaximum())]
            if crs.isValid():
                arguments += ["--extent-crs", crs.toWkt()]
        if parameters.get(self.MASK):
            path, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, self.MASK, context, ["gpkg", "shp"], "gpkg", feedback)
            arguments += ["--mask", path] + (["--mask-layer", layer_name] if layer_name else [])
        arguments += config_arguments(self, parameters, context, ClassifyConfig,
                                      exclude=OPTIONAL_OUTPUT_FIELDS)
        outputs = {self.OUTPUT: self._output(parameters, self.OUTPUT, context)}
        arguments += ["--output", outputs[self.OUTPUT]]
        for item in OPTIONAL_OUTPUTS:    # each path asked for once (a temporary one is new)
            path = self._output(parameters, item.option.key, context)
            if path:
                outputs[item.option.key] = path
                arguments += [item.option.flag, path]
        return arguments, outputs
