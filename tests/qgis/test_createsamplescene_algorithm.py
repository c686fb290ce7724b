"""``mamol:createsamplescene`` through real QGIS Processing (``processing.run``)."""
import json

import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from mamol.core import sample_scene as ss

ALGORITHM = "mamol:createsamplescene"


def run(parameters, feedback=None):
    import processing
    return processing.run(ALGORITHM, parameters, feedback=feedback)


def test_registered_with_metadata(mamol_provider):
    from qgis.core import QgsApplication
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    assert algorithm is not None
    assert algorithm.displayName() == "Create sample multimodal scene"
    assert "reference label raster" in algorithm.shortHelpString()
    for name in ("SIZE", "SEED", "OUTPUT_FOLDER"):
        assert algorithm.parameterDefinition(name).help()


@pytest.mark.subprocess
def test_writes_the_scene(mamol_provider, tmp_path):
    results = run({"SIZE": 128, "SEED": 5, "OUTPUT_FOLDER": str(tmp_path)})
    assert results["OUTPUT_FOLDER"] == str(tmp_path)
    for key, name in (("HS", ss.HS_FILE), ("SAR", ss.SAR_FILE), ("LIDAR", ss.LIDAR_FILE),
                      ("TRAINING_POLYGONS", ss.TRAINING_FILE),
                      ("REFERENCE_LABELS", ss.REFERENCE_FILE), ("MANIFEST", ss.MANIFEST_FILE)):
        assert results[key] == str(tmp_path / name)
        assert (tmp_path / name).is_file()
    assert gdal.Open(results["HS"]).RasterXSize == 128
    assert json.loads((tmp_path / ss.MANIFEST_FILE).read_text())["config"]["seed"] == 5


@pytest.mark.subprocess
def test_same_as_core(mamol_provider, tmp_path):
    """The adapter adds nothing: same pixels as calling the core directly."""
    run({"SIZE": 128, "SEED": 9, "OUTPUT_FOLDER": str(tmp_path / "alg")})
    ss.write_sample_scene(ss.SampleSceneConfig(128, 9), tmp_path / "core")
    for name in (ss.HS_FILE, ss.SAR_FILE, ss.LIDAR_FILE, ss.REFERENCE_FILE):
        alg = gdal.Open(str(tmp_path / "alg" / name)).ReadAsArray()
        core = gdal.Open(str(tmp_path / "core" / name)).ReadAsArray()
        assert (alg == core).all()


@pytest.mark.subprocess
@pytest.mark.parametrize("size,seed,fragment", [
    (0, 1, "Size 0 is too small"), (-3, 1, "Size -3 is too small"),
    (50000, 1, "Size 50000 is too large"), (128, -2, "Seed -2 is out of range"),
    (128, 2.5, "Seed 2.5 is not a whole number"), (128, "x", "Seed 'x' is not a whole number"),
])
def test_bad_input_is_a_clear_error(mamol_provider, tmp_path, size, seed, fragment):
    with pytest.raises(QgsProcessingException, match=fragment):
        run({"SIZE": size, "SEED": seed, "OUTPUT_FOLDER": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_unwritable_folder(mamol_provider, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(QgsProcessingException, match="Cannot write to the output folder"):
        run({"SIZE": 128, "SEED": 1, "OUTPUT_FOLDER": str(tmp_path / "file" / "out")})


@pytest.mark.subprocess
def test_cancel_writes_nothing(mamol_provider, tmp_path):
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: percent > 20 and feedback.cancel())
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run({"SIZE": 256, "SEED": 1, "OUTPUT_FOLDER": str(tmp_path)}, feedback)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_the_reference_labels_legend_lists_the_classes_only(mamol_provider, tmp_path):
    """Loaded into a project, the reference labels show the seven classes in their palette
    colours, not the 256 entries of the GeoTIFF's colour table; a .qml beside the file
    gives the same legend where QGIS loads the file itself."""
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject, QgsRasterLayer
    QgsProject.instance().clear()
    try:
        processing.runAndLoadResults(ALGORITHM, {"SIZE": 128, "SEED": 5,
                                                 "OUTPUT_FOLDER": str(tmp_path)})
        [layer] = QgsProject.instance().mapLayersByName("Sample reference labels")
        assert gdal.Open(layer.source()).GetRasterBand(1).GetColorTable().GetCount() == 256
        expected = [(int(value), name, colour) for value, (name, colour) in
                    ss.CLASS_STYLE.items()]
        for loaded in (layer, QgsRasterLayer(str(tmp_path / ss.REFERENCE_FILE), "again")):
            assert isinstance(loaded.renderer(), QgsPalettedRasterRenderer)
            assert [(c.value, c.label, c.color.name()) for c in
                    loaded.renderer().classes()] == expected
    finally:
        QgsProject.instance().clear()
