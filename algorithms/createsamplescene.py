"""``mamol:createsamplescene`` — write the built-in synthetic HS + SAR + LiDAR scene."""
from qgis.core import (QgsProcessingContext,
                       QgsProcessingOutputFile, QgsProcessingOutputRasterLayer,
                       QgsProcessingOutputVectorLayer, QgsProcessingParameterFolderDestination)

from ..core import sample_scene
from ..core.errors import MamolInputError
from .common import (LoadStyle, MamolAlgorithm, add_config_parameters, as_whole_number,
                     core_errors_as_processing_exceptions, FeedbackRelay, set_post_processor)
from .qgis_compat import SOURCE_VECTOR_POLYGON


class CreateSampleSceneAlgorithm(MamolAlgorithm):
    """Adapter: SIZE, SEED, OUTPUT_FOLDER -> ``sample_scene.write_sample_scene``."""

    GROUP = "Sample data"
    GROUP_ID = "sampledata"

    SIZE = "SIZE"
    SEED = "SEED"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    HS = "HS"
    SAR = "SAR"
    LIDAR = "LIDAR"
    TRAINING_POLYGONS = "TRAINING_POLYGONS"
    REFERENCE_LABELS = "REFERENCE_LABELS"
    MANIFEST = "MANIFEST"

    def name(self) -> str:
        return "createsamplescene"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Create sample multimodal scene")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Writes a synthetic scene to try the MaMOL tools on: a hyperspectral raster "
            "(48 bands, 400–1000 nm, 1 m, UTM 32N) with a cloud-shaped nodata hole, a SAR "
            "raster (VV/VH backscatter, 2 m) covering only the eastern part of the scene, a "
            "LiDAR DSM in another CRS (ETRS89-LAEA, 1.5 m), training polygons with a numeric "
            "class field and a class-name field, and a separate reference label raster for "
            "evaluation that shares no pixel with the training polygons.\n\n"
            "Seven classes — water, shadow, road, building, grass, trees, bare soil — are "
            "chosen so that no single modality separates them all: roofs and roads look "
            "alike to the hyperspectral sensor (height tells them apart), shadows look like "
            "water (SAR tells them apart), grass and trees share one spectrum (height or SAR "
            "texture tell them apart).\n\n"
            "<b>Size</b>: width and height of the hyperspectral grid in 1 m pixels "
            f"({sample_scene.MIN_SIZE}–{sample_scene.MAX_SIZE}).\n"
            "<b>Seed</b>: the same size and seed always give the same scene.\n"
            "<b>Output folder</b>: receives hs.tif, sar.tif, lidar.tif, "
            "training_polygons.gpkg, reference_labels.tif and scene.json (a description of "
            "the files and classes). Files of these names are replaced; if the algorithm "
            "fails or is cancelled, none of them is touched.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_config_parameters(self, sample_scene.SampleSceneConfig)
        folder = QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, self.tr("Output folder"))
        folder.setHelp(self.tr("Folder that receives the scene's files."))
        self.addParameter(folder)
        self.addOutput(QgsProcessingOutputRasterLayer(self.HS, self.tr("Hyperspectral raster")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.SAR, self.tr("SAR raster")))
        self.addOutput(QgsProcessingOutputRasterLayer(self.LIDAR, self.tr("LiDAR DSM raster")))
        self.addOutput(QgsProcessingOutputVectorLayer(
            self.TRAINING_POLYGONS, self.tr("Training polygons"),
            SOURCE_VECTOR_POLYGON))
        self.addOutput(QgsProcessingOutputRasterLayer(
            self.REFERENCE_LABELS, self.tr("Reference labels")))
        self.addOutput(QgsProcessingOutputFile(self.MANIFEST, self.tr("Scene description")))

    def _config(self, parameters) -> sample_scene.SampleSceneConfig:
        """The typed config, built from raw parameter values so that bad input is reported
        in the core's words (which say what to change) rather than as a generic error."""
        values = {}
        for key, field in ((self.SIZE, "size"), (self.SEED, "seed")):
            raw = parameters.get(key, self.parameterDefinition(key).defaultValue())
            number = as_whole_number(raw)
            values[field] = raw if number is None else number
        config = sample_scene.SampleSceneConfig(**values)
        config.validate()
        return config

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        try:
            self._config(parameters)
        except MamolInputError as exc:
            return False, str(exc)
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback):  # noqa: N802
        relay = FeedbackRelay(feedback)
        with core_errors_as_processing_exceptions():
            config = self._config(parameters)
            folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
            scene = sample_scene.write_sample_scene(config, folder, relay.progress,
                                                      relay.is_cancelled)
        manifest = sample_scene.read_manifest(scene.manifest)
        if feedback is not None:
            relay.info(self.tr(f"Sample scene written to {scene.folder}:"))
            for path in (scene.hs, scene.sar, scene.lidar, scene.training_polygons,
                         scene.reference_labels, scene.manifest):
                relay.info(f"  {path.name}")
            relay.info(self.tr("Classes (training polygons / training px / "
                                      "reference px):"))
            for record in manifest["classes"]:
                relay.info(
                    f"  {record['value']} {record['name']}: {record['training_polygons']} / "
                    f"{record['training_pixels']} / {record['reference_pixels']}")
        results = {
            self.OUTPUT_FOLDER: str(scene.folder),
            self.HS: str(scene.hs),
            self.SAR: str(scene.sar),
            self.LIDAR: str(scene.lidar),
            self.TRAINING_POLYGONS: str(scene.training_polygons),
            self.REFERENCE_LABELS: str(scene.reference_labels),
            self.MANIFEST: str(scene.manifest),
        }
        for key, label in ((self.HS, "Sample HS"), (self.SAR, "Sample SAR"),
                           (self.LIDAR, "Sample LiDAR DSM"),
                           (self.TRAINING_POLYGONS, "Sample training polygons"),
                           (self.REFERENCE_LABELS, "Sample reference labels")):
            context.addLayerToLoadOnCompletion(
                results[key], QgsProcessingContext.LayerDetails(label, context.project(), key))
        # the legend of the seven classes, not the colour table's 256 entries
        set_post_processor(context, results[self.REFERENCE_LABELS], LoadStyle(
            str(scene.folder / sample_scene.REFERENCE_STYLE_FILE)))
        return results
