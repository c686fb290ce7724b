"""``mamol:trainmodel`` through real QGIS Processing (``processing.run``) and through the
command line without QGIS."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsProcessingException,
                       QgsRendererCategory, QgsVectorLayer)

from qgis_session import cancelling_feedback, kept_setting, recording_feedback
from support import PLUGINS_DIR
from mamol.core.model_file import read_header

ALGORITHM = "mamol:trainmodel"


def run(parameters, feedback=None):
    import processing
    return processing.run(ALGORITHM, parameters, feedback=feedback)


def quick_parameters(scene, folder, **changes):
    """A run that takes seconds: tiny random backbone, P = 5, one epoch, few samples."""
    parameters = {
        "HS": str(scene.hs), "SAR": str(scene.sar), "LIDAR": str(scene.lidar),
        "POLYGONS": str(scene.training_polygons), "CLASS_FIELD": "class_id",
        "CLASS_NAME_FIELD": "class_name", "BACKBONE": "mamol-tiny-vit", "WEIGHTS": 2,
        "PATCH_SIZE": 5, "EPOCHS": 1, "MAX_SAMPLES_PER_CLASS": 20, "DEVICE": "cpu",
        "OUTPUT_MODEL": str(folder / "model.mamol"),
        "OUTPUT_REPORT": str(folder / "report.html"),
    }
    parameters.update(changes)
    return parameters


def test_registered_with_help_for_every_parameter(mamol_provider):
    from qgis.core import QgsApplication

    from mamol.algorithms.qgis_compat import FLAG_ADVANCED
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    assert algorithm is not None
    assert algorithm.group() == "Model"
    for definition in algorithm.parameterDefinitions():
        assert definition.help(), definition.name()
    advanced = {d.name() for d in algorithm.parameterDefinitions()
                if d.flags() & FLAG_ADVANCED}
    assert {"BATCH_SIZE", "LEARNING_RATE", "DEVICE", "SEED"} <= advanced
    assert "EPOCHS" not in advanced


@pytest.mark.subprocess
def test_trains_and_writes_model_and_reports(mamol_provider, small_scene, tmp_path):
    results = run(quick_parameters(small_scene, tmp_path, MISSING_MODE=2,
                                   HS_AVAILABILITY=0.75, SAR_AVAILABILITY=0.75,
                                   LIDAR_AVAILABILITY=1.0))
    assert results["OUTPUT_MODEL"] == str(tmp_path / "model.mamol")
    header = read_header(tmp_path / "model.mamol")
    assert header.modality_names == ["hs", "sar", "lidar"]
    assert header.classes[0].name == "Water"
    assert header.training["missing_simulation"] == {
        "mode": "availability", "missing_rate": 0.0, "availability": [0.75, 0.75, 1.0],
        "seed": 0}
    assert header.backbone.arch == "mamol-tiny-vit"
    report = json.loads((tmp_path / "report.json").read_text())
    assert results["OUTPUT_REPORT_JSON"] == str(tmp_path / "report.json")
    assert report["validation"]["samples"] > 0
    assert (tmp_path / "report.html").is_file()


@pytest.mark.subprocess
def test_class_names_and_colours_from_a_categorised_style(mamol_provider, small_scene,
                                                          tmp_path):
    layer = QgsVectorLayer(f"{small_scene.training_polygons}|layername=training_polygons",
                           "labels", "ogr")
    assert layer.isValid()
    categories = []
    for value in range(1, 8):
        symbol = QgsFillSymbol.createSimple({"color": f"{10 * value},{20 * value},200"})
        categories.append(QgsRendererCategory(value, symbol, f"styled {value}"))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
    try:
        run(quick_parameters(small_scene, tmp_path, POLYGONS=layer, CLASS_NAME_FIELD=None,
                             LIDAR=None, SAR=None))
    finally:
        del layer
    header = read_header(tmp_path / "model.mamol")
    assert [c.name for c in header.classes] == [f"styled {v}" for v in range(1, 8)]
    assert header.classes[2].colour == "#1e3cc8"
    assert header.modality_names == ["hs"]


@pytest.mark.subprocess
def test_a_tile_model_trains_and_classifies_without_new_parameters(mamol_provider,
                                                                   small_scene, tmp_path):
    import processing
    from osgeo import gdal
    feedback = recording_feedback()
    run(quick_parameters(small_scene, tmp_path, MODEL_KIND=1, SAR=None), feedback=feedback)
    header = read_header(tmp_path / "model.mamol")
    assert header.adapter.get("kind") == "tile" and header.model_kind == "tile"
    assert header.modality_names == ["hs", "lidar"]
    assert any("--model-kind tile" in line for line in feedback.debug)
    results = processing.run("mamol:classify", {
        "MODEL": str(tmp_path / "model.mamol"), "HS": str(small_scene.hs),
        "LIDAR": str(small_scene.lidar), "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "lc.tif")})
    classified = gdal.Open(results["OUTPUT"])
    assert (classified.RasterXSize, classified.RasterYSize) == (128, 128)
    values = set(classified.ReadAsArray().ravel().tolist())
    assert values and values <= set(range(0, 8))


def test_the_default_kind_is_per_pixel_and_not_written(mamol_provider, small_scene, tmp_path):
    from qgis.core import QgsApplication, QgsProcessingContext
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    definition = algorithm.parameterDefinition("MODEL_KIND")
    assert definition.options()[definition.defaultValue()].startswith("Per pixel")
    assert definition.options()[1].startswith("Tile")
    assert "Model kind" in algorithm.shortHelpString()
    context = QgsProcessingContext()
    arguments = algorithm.engine_arguments(quick_parameters(small_scene, tmp_path), context,
                                           None)
    assert "--model-kind" not in arguments
    arguments = algorithm.engine_arguments(quick_parameters(small_scene, tmp_path,
                                                            MODEL_KIND=1), context, None)
    assert arguments[arguments.index("--model-kind") + 1] == "tile"


@pytest.mark.subprocess
def test_tile_with_mce_is_refused_before_any_work(mamol_provider, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match=r"MaMOL \+ MCE\) needs the per-pixel "
                                                     "model kind"):
        run(quick_parameters(small_scene, tmp_path, MODEL_KIND=1, TRAINING_MODE=1))
    assert list(tmp_path.iterdir()) == []


def test_the_engine_refuses_tile_with_mce_in_its_own_words(mamol_provider, small_scene,
                                                           tmp_path):
    """Past the algorithm's check (e.g. a script calling the engine), the core's message
    still reaches the user as a QgsProcessingException."""
    from qgis.core import QgsApplication, QgsProcessingContext
    from mamol.algorithms.common import FeedbackRelay
    from mamol.algorithms.engine_runner import run_engine
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    arguments = algorithm.engine_arguments(quick_parameters(
        small_scene, tmp_path, MODEL_KIND=1, TRAINING_MODE=1), QgsProcessingContext(), None)
    assert "--mce" in arguments and "--model-kind" in arguments
    with pytest.raises(QgsProcessingException,
                       match="MCE is available for the pixel model kind only"):
        run_engine("train", arguments, FeedbackRelay(None))
    assert not (tmp_path / "model.mamol").exists()


@pytest.mark.subprocess
def test_needs_at_least_one_raster(mamol_provider, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="at least one raster"):
        run(quick_parameters(small_scene, tmp_path, HS=None, SAR=None, LIDAR=None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_bad_class_field_is_reported(mamol_provider, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException,
                       match="not numeric.* or also give a 'Class-name field'"):
        run(quick_parameters(small_scene, tmp_path, CLASS_FIELD="class_name",
                             CLASS_NAME_FIELD=None))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_cancel_leaves_nothing(mamol_provider, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run(quick_parameters(small_scene, tmp_path, EPOCHS=3), feedback=cancelling_feedback(20))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_command_line_trains_without_qgis(small_scene, tmp_path):
    model = tmp_path / "cli.mamol"
    command = [sys.executable, "-c",
               "import sys; sys.modules['qgis'] = None; "
               "from mamol.engine.console import main; "
               "sys.exit(main(['train', *sys.argv[1:]]))",
               "--hs", str(small_scene.hs), "--lidar", str(small_scene.lidar),
               "--polygons", str(small_scene.training_polygons), "--class-field", "class_id",
               "--arch", "mamol-tiny-vit", "--weights", "random", "--patch-size", "5",
               "--epochs", "1", "--max-train-per-class", "20", "--table1", "0.5",
               "missing_both", "--device", "cpu", "--output", str(model),
               "--report", str(tmp_path / "cli.html")]
    env = {"PYTHONPATH": str(PLUGINS_DIR), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Model written to" in done.stderr
    header = read_header(model)
    assert header.training["missing_simulation"]["availability"] == [0.75, 0.75]
    assert (tmp_path / "cli.json").is_file()

    bad = subprocess.run(command[:3] + ["--sar", str(small_scene.sar), "--polygons",
                                        str(small_scene.training_polygons), "--class-field",
                                        "nope", "--output", str(tmp_path / "x.mamol")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "no class field 'nope'" in bad.stderr
    assert not (tmp_path / "x.mamol").exists()


def one_polygon_per_class(scene, path):
    """The scene's training polygons, keeping only each class's first one."""
    from osgeo import ogr
    source = ogr.Open(str(scene.training_polygons))
    layer = source.GetLayer(0)
    target = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    out = target.CreateLayer("one_each", layer.GetSpatialRef(), ogr.wkbPolygon)
    definition = layer.GetLayerDefn()
    for index in range(definition.GetFieldCount()):
        out.CreateField(definition.GetFieldDefn(index))
    seen = set()
    for feature in layer:
        if feature.GetField("class_id") not in seen:
            seen.add(feature.GetField("class_id"))
            out.CreateFeature(feature.Clone())
    target = source = None
    return path


@pytest.mark.subprocess
def test_no_validation_is_said_as_a_warning_and_the_last_epoch_kept(mamol_provider,
                                                                    small_scene, tmp_path):
    polygons = one_polygon_per_class(small_scene, tmp_path / "one_each.gpkg")
    feedback = recording_feedback()
    run(quick_parameters(small_scene, tmp_path, POLYGONS=str(polygons), EPOCHS=2,
                         OUTPUT_MODEL="TEMPORARY_OUTPUT"), feedback=feedback)
    assert [w for w in feedback.warnings if "QGIS's temporary folder" in w
            and "deletes when it closes" in w]
    assert sum("has a single polygon, so it has no validation pixels" in w
               for w in feedback.warnings) == 7
    assert any(w.startswith("No validation pixels") and "the last one (2) is kept" in w
               for w in feedback.warnings)
    epochs = [line for line in feedback.info if line.startswith("epoch ")]
    assert len(epochs) == 2 and not any("best so far" in line for line in epochs)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best_epoch"] == 2
    assert any(w.startswith("No validation pixels") for w in report["warnings"])


@pytest.mark.subprocess
def test_command_line_prints_warnings(small_scene, tmp_path):
    polygons = one_polygon_per_class(small_scene, tmp_path / "one_each.gpkg")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from mamol.engine.console import main; "
         "sys.exit(main(['train', *sys.argv[1:]]))", "--hs", str(small_scene.hs),
         "--polygons", str(polygons),
         "--class-field", "class_id", "--arch", "mamol-tiny-vit", "--weights", "random",
         "--patch-size", "5", "--epochs", "1", "--max-train-per-class", "20", "--device",
         "cpu", "--output", str(tmp_path / "m.mamol")],
        capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(PLUGINS_DIR), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: No validation pixels" in done.stderr


@pytest.fixture
def models_folder_setting(tmp_path):
    """The provider's trained-models folder set to a fresh folder for one test."""
    from mamol.algorithms.common import MODELS_FOLDER_SETTING
    key = f"Processing/Configuration/{MODELS_FOLDER_SETTING}"
    folder = tmp_path / "my models"
    with kept_setting(key) as settings:
        settings.setValue(key, str(folder))
        yield folder


def test_the_model_file_defaults_to_a_folder_that_outlives_qgis(mamol_provider):
    """Not "[Save to temporary file]": QGIS deletes its temporary folder when it closes."""
    from qgis.core import QgsApplication, QgsProcessingUtils
    from qgis.PyQt.QtCore import QStandardPaths
    documents = QStandardPaths.writableLocation(
        QStandardPaths.StandardLocation.DocumentsLocation)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM)
    default = Path(algorithm.parameterDefinition("OUTPUT_MODEL").defaultValue())
    assert default.parent == Path(documents) / "MaMOL models"
    assert re.fullmatch(r"model-\d{8}-\d{6}\.mamol", default.name), default.name
    assert Path(QgsProcessingUtils.tempFolder()) not in default.parents


@pytest.mark.subprocess
def test_the_dialog_fills_the_model_file_with_that_default():
    """The Train dialog's output widget starts from the parameter's default (it showed
    "[Save to temporary file]" before there was one). Widgets need a GUI application: a
    child process, offscreen."""
    probe = (
        "import sys\n"
        "from qgis.core import QgsApplication\n"
        "app = QgsApplication([], True); app.initQgis()\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from qgis.gui import QgsProcessingLayerOutputDestinationWidget\n"
        "from mamol.algorithms.trainmodel import TrainModelAlgorithm\n"
        "algorithm = TrainModelAlgorithm(); algorithm.initAlgorithm()\n"
        "definition = algorithm.parameterDefinition('OUTPUT_MODEL')\n"
        "widget = QgsProcessingLayerOutputDestinationWidget(definition, False)\n"
        "print(widget.value() == definition.defaultValue(), widget.value())\n")
    done = subprocess.run([sys.executable, "-c", probe, str(PLUGINS_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    same, value = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert same == "True" and value.endswith(".mamol") and "MaMOL models" in value, value


@pytest.mark.subprocess
def test_trains_from_a_label_raster(mamol_provider, small_scene, tmp_path,
                                    models_folder_setting):
    """A label raster instead of polygons (a benchmark's TRLabel map, here the scene's
    reference labels): class names and colours from its category names and colour table.
    No model file named: it goes to the trained-models folder of the provider's settings."""
    from qgis.core import QgsApplication

    from mamol.core.sample_scene import read_manifest
    parameters = quick_parameters(small_scene, tmp_path, POLYGONS=None, CLASS_FIELD=None,
                                  CLASS_NAME_FIELD=None,
                                  LABEL_RASTER=str(small_scene.reference_labels))
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM)
    parameters["OUTPUT_MODEL"] = algorithm.parameterDefinition("OUTPUT_MODEL").defaultValue()
    results = run(parameters)                     # as the dialog runs it (next test)
    assert Path(results["OUTPUT_MODEL"]).parent == models_folder_setting
    assert Path(results["OUTPUT_MODEL"]).is_file()
    header = read_header(results["OUTPUT_MODEL"])
    expected = {c["value"]: c["name"] for c in read_manifest(small_scene.manifest)["classes"]}
    assert {c.value: c.name for c in header.classes} == expected


def test_polygons_or_a_label_raster_not_both_nor_neither(mamol_provider, small_scene,
                                                         tmp_path):
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match="not both"):
        run(quick_parameters(small_scene, tmp_path,
                             LABEL_RASTER=str(small_scene.reference_labels)))
    with pytest.raises(QgsProcessingException, match="Give the training labels"):
        run(quick_parameters(small_scene, tmp_path, POLYGONS=None, CLASS_FIELD=None,
                             CLASS_NAME_FIELD=None))
    assert not (tmp_path / "model.mamol").exists()


TRENTO_CLASSES = ("Apple trees", "Buildings", "Ground", "Woods", "Vineyard", "Roads")


@pytest.fixture(scope="module")
def trento_shaped(tmp_path_factory):
    """Trento's real LiDAR elevation and its standard training map (TRLabel, 819 labelled
    pixels in 166 × 600) from ../shared/data, read in place and written as GeoTIFFs; the
    map's category names give the class names."""
    import numpy as np
    from osgeo import gdal, osr
    from support import SHARED_DATA
    npz = SHARED_DATA / "trento" / "trento.npz"
    if not npz.is_file():
        pytest.skip(f"no Trento data at {npz}")
    with np.load(npz) as data:
        lidar, labels = data["lidar"][:, :, 0], data["train_labels"]
    folder = tmp_path_factory.mktemp("trento")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    paths = {}
    for name, array, kind in (("lidar", lidar, gdal.GDT_Float32),
                              ("train_labels", labels, gdal.GDT_Byte)):
        paths[name] = folder / f"trento_{name}.tif"
        dataset = gdal.GetDriverByName("GTiff").Create(str(paths[name]), array.shape[1],
                                                       array.shape[0], 1, kind)
        dataset.SetGeoTransform((664000.0, 1.0, 0.0, 5105000.0, 0.0, -1.0))
        dataset.SetProjection(srs.ExportToWkt())
        band = dataset.GetRasterBand(1)
        band.WriteArray(array)
        if name == "train_labels":
            band.SetCategoryNames(["unlabelled", *TRENTO_CLASSES])
        dataset = None
    return paths


def trento_parameters(paths, folder):
    return {"LIDAR": str(paths["lidar"]), "LABEL_RASTER": str(paths["train_labels"]),
            "BACKBONE": "mamol-tiny-vit", "WEIGHTS": 2, "PATCH_SIZE": 5, "EPOCHS": 1,
            "MAX_SAMPLES_PER_CLASS": 40, "DEVICE": "cpu",
            "OUTPUT_MODEL": str(folder / "trento.mamol"),
            "OUTPUT_REPORT": str(folder / "trento.html")}


@pytest.mark.subprocess
def test_trains_from_trentos_training_map(mamol_provider, trento_shaped, tmp_path):
    """A benchmark's TRLabel map as the label raster, through ``processing.run``: the six
    classes with the map's category names."""
    results = run(trento_parameters(trento_shaped, tmp_path))
    header = read_header(results["OUTPUT_MODEL"])
    assert [(c.value, c.name) for c in header.classes] == list(enumerate(TRENTO_CLASSES, 1))
    assert header.modality_names == ["lidar"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_qgis_process_trains_from_trentos_training_map(qgis_env, trento_shaped, tmp_path):
    """The same through ``qgis_process`` (a script's or a shell's way in)."""
    from qgis_session import qgis_process
    parameters = trento_parameters(trento_shaped, tmp_path)
    done = qgis_process(qgis_env, "run", ALGORITHM, "--",
                        *[f"{key}={value}" for key, value in parameters.items()])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    header = read_header(tmp_path / "trento.mamol")
    assert [c.name for c in header.classes] == list(TRENTO_CLASSES)
