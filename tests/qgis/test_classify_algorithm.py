"""``mamol:classify`` through real QGIS Processing (``processing.run``)."""
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from qgis_session import cancelling_feedback, recording_feedback

ALGORITHM = "mamol:classify"


def run(parameters, feedback=None):
    import processing
    return processing.run(ALGORITHM, parameters, feedback=feedback)


def parameters(model, scene, folder, **changes):
    values = {"MODEL": str(model), "HS": str(scene.hs), "SAR": str(scene.sar),
              "LIDAR": str(scene.lidar), "DEVICE": "cpu", "OUTPUT": str(folder / "lc.tif")}
    values.update(changes)
    return values


def test_registered_with_help_and_advanced_options(mamol_provider):
    from qgis.core import QgsApplication

    from mamol.algorithms.qgis_compat import FLAG_ADVANCED
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    assert algorithm is not None and algorithm.group() == "Model"
    for definition in algorithm.parameterDefinitions():
        assert definition.help(), definition.name()
    advanced = {d.name() for d in algorithm.parameterDefinitions()
                if d.flags() & FLAG_ADVANCED}
    assert {"DEVICE", "BATCH_SIZE", "STRIDE", "BLOCK_SIZE", "GDAL_CACHE"} <= advanced
    optional = [d.name() for d in algorithm.destinationParameterDefinitions()
                if not d.createByDefault()]
    assert set(optional) == {"OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENCE", "OUTPUT_ENTROPY",
                             "OUTPUT_MODALITIES"}


@pytest.mark.subprocess
def test_classifies_with_optional_outputs(mamol_provider, tiny_model, small_scene, tmp_path):
    lines = []

    class Recorder(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802 - QGIS API
            lines.append(info)

    results = run(parameters(tiny_model, small_scene, tmp_path,
                             OUTPUT_CONFIDENCE=str(tmp_path / "confidence.tif"),
                             OUTPUT_MODALITIES=str(tmp_path / "used.tif"), STRIDE=2),
                  feedback=Recorder())
    assert results["OUTPUT"] == str(tmp_path / "lc.tif")
    assert results["OUTPUT_CONFIDENCE"] == str(tmp_path / "confidence.tif")
    assert results["OUTPUT_PROBABILITIES"] is None
    assert gdal.Open(results["OUTPUT"]).RasterXSize == 128
    assert (tmp_path / "lc.qml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confidence.tif", "lc.qml", "lc.tif", "lc.tif.aux.xml", "used.tif"]
    assert any("pixels/s" in line for line in lines)


@pytest.mark.subprocess
def test_wrong_band_count_is_reported_before_any_work(mamol_provider, tiny_model,
                                                      small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="expects 48"):
        run(parameters(tiny_model, small_scene, tmp_path, HS=str(small_scene.lidar)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_needs_a_raster_and_a_geotiff_name(mamol_provider, tiny_model, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="at least one raster"):
        run(parameters(tiny_model, small_scene, tmp_path, HS=None, SAR=None, LIDAR=None))
    with pytest.raises(QgsProcessingException, match="GeoTIFF"):
        run(parameters(tiny_model, small_scene, tmp_path, OUTPUT=str(tmp_path / "lc.img")))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_cancel_leaves_nothing(mamol_provider, tiny_model, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run(parameters(tiny_model, small_scene, tmp_path, BLOCK_SIZE=32),
            feedback=cancelling_feedback(20))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs /proc")
def test_output_where_files_cannot_be_made_says_so(mamol_provider, tiny_model, small_scene,
                                                   tmp_path):
    with pytest.raises(QgsProcessingException,
                       match="'/proc': the folder exists, but its file system refuses new "
                             "files there"):
        run(parameters(tiny_model, small_scene, tmp_path, OUTPUT="/proc/land_cover.tif"))


@pytest.mark.subprocess
def test_log_names_the_classes_it_counts(mamol_provider, tiny_model, small_scene, tmp_path):
    feedback = recording_feedback()
    run(parameters(tiny_model, small_scene, tmp_path), feedback=feedback)
    start = feedback.info.index("Pixels per class:")
    counted = feedback.info[start + 1:start + 8]
    assert [line.split(":")[0] for line in counted] == [
        "  1 Water", "  2 Shadow", "  3 Road", "  4 Building", "  5 Grass", "  6 Trees",
        "  7 Bare soil"]
    assert sum(int(line.split(":")[1]) for line in counted) == 128 * 128


@pytest.mark.subprocess
def test_classify_algorithm_warns_in_the_processing_log(mamol_provider, tiny_model,
                                                         small_scene, lidar_in_centimetres,
                                                         tmp_path):
    import processing

    feedback = recording_feedback()
    processing.run("mamol:classify", {
        "MODEL": str(tiny_model), "HS": str(small_scene.hs), "SAR": str(small_scene.sar),
        "LIDAR": str(lidar_in_centimetres), "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "classes.tif")}, feedback=feedback)
    assert len(feedback.warnings) == 1 and "LiDAR pixels lie far" in feedback.warnings[0]
    assert (tmp_path / "classes.tif").exists()


@pytest.mark.subprocess
def test_cloud_optimized_outputs_from_the_toolbox(mamol_provider, tiny_model, small_scene,
                                                  tmp_path):
    run(parameters(tiny_model, small_scene, tmp_path, STRIDE=8, COG=True,
                   OUTPUT_CONFIDENCE=str(tmp_path / "conf.tif")))
    for name in ("lc.tif", "conf.tif"):
        dataset = gdal.Open(str(tmp_path / name))
        assert dataset.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG", name
        dataset = None


@pytest.fixture
def project():
    """QGIS's project, emptied before and after (Processing loads results into it)."""
    from qgis.core import QgsProject
    QgsProject.instance().clear()
    yield QgsProject.instance()
    QgsProject.instance().clear()


def layer_order(project):
    """File names of the project's layers, top first."""
    from pathlib import Path
    return [Path(node.layer().source()).name for node in project.layerTreeRoot().findLayers()]


@pytest.mark.subprocess
def test_the_class_map_is_loaded_on_top_of_the_optional_outputs(mamol_provider, tiny_model,
                                                                 small_scene, tmp_path, project):
    """Loaded into a project (as the Toolbox does), the class map is the top layer, styled
    with its classes; QGIS 3.22 would put the output whose path sorts last ("used.tif") on
    top of it."""
    import processing
    from qgis.core import QgsPalettedRasterRenderer
    processing.runAndLoadResults(ALGORITHM, parameters(
        tiny_model, small_scene, tmp_path, OUTPUT_CONFIDENCE=str(tmp_path / "confidence.tif"),
        OUTPUT_MODALITIES=str(tmp_path / "used.tif"), STRIDE=4))
    assert layer_order(project)[0] == "lc.tif"
    assert sorted(layer_order(project)) == ["confidence.tif", "lc.tif", "used.tif"]
    classes = project.layerTreeRoot().findLayers()[0].layer()
    assert isinstance(classes.renderer(), QgsPalettedRasterRenderer)
    assert len(classes.renderer().classes()) == len(small_scene_classes())


def small_scene_classes():
    from mamol.core import sample_scene
    return sample_scene.CLASS_STYLE


def test_raise_above_moves_the_class_map_over_the_outputs_only(tmp_path, project):
    """The class map goes just above the highest of its run's outputs; other layers keep
    their places, and nothing moves when it is already above them."""
    from qgis.core import QgsRasterLayer
    from mamol.algorithms.classify import raise_above, _ClassesOnTop
    names = ("lc.tif", "used.tif", "other.tif", "confidence.tif")
    for name in names:
        path = tmp_path / name
        gdal.GetDriverByName("GTiff").Create(str(path), 4, 4, 1)
    for name in ("lc.tif", "confidence.tif", "other.tif", "used.tif"):   # each goes on top
        project.addMapLayer(QgsRasterLayer(str(tmp_path / name), name))
    assert layer_order(project) == ["used.tif", "other.tif", "confidence.tif", "lc.tif"]
    post = _ClassesOnTop(project, str(tmp_path / "lc.tif"),
                         [str(tmp_path / "confidence.tif"), str(tmp_path / "used.tif")])
    raise_above(project.layerTreeRoot(), post.classes, post.outputs)
    assert layer_order(project) == ["lc.tif", "used.tif", "other.tif", "confidence.tif"]
    assert len(project.mapLayers()) == 4
    raise_above(project.layerTreeRoot(), post.classes, post.outputs)
    assert layer_order(project) == ["lc.tif", "used.tif", "other.tif", "confidence.tif"]
