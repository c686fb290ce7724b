"""The Processing algorithms run the engine (``python -m mamol``) in a child process, so that
torch never loads into QGIS's process: what reaches it, and how its failures are reported."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from qgis_session import recording_feedback
from support import PLUGINS_DIR, REPO


PROBE = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from qgis.core import QgsApplication
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append(os.path.join(app.pkgDataPath(), "python", "plugins"))
    from processing.core.Processing import Processing
    Processing.initialize()
    import processing
    from mamol.algorithms.provider import MamolProvider
    provider = MamolProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    folder = sys.argv[2]
    scene = processing.run("mamol:createsamplescene", {
        "SIZE": 128, "SEED": 4, "OUTPUT_FOLDER": folder + "/scene"})
    common = {"HS": scene["HS"], "LIDAR": scene["LIDAR"], "DEVICE": "cpu"}
    model = processing.run("mamol:trainmodel", dict(common,
        POLYGONS=scene["TRAINING_POLYGONS"], CLASS_FIELD="class_id", BACKBONE="mamol-tiny-vit",
        WEIGHTS=2, PATCH_SIZE=5, EPOCHS=1, MAX_SAMPLES_PER_CLASS=20,
        OUTPUT_MODEL=folder + "/m.mamol", OUTPUT_REPORT=folder + "/r.html"))
    processing.run("mamol:classify", dict(common, MODEL=model["OUTPUT_MODEL"], STRIDE=8,
                   OUTPUT=folder + "/c.tif"))
    scores = processing.run("mamol:evaluate", dict(common, MODEL=model["OUTPUT_MODEL"],
                            LABEL_RASTER=scene["REFERENCE_LABELS"], MAX_SAMPLES_PER_CLASS=20,
                            OUTPUT_REPORT=folder + "/e.html"))
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip"))
    print(json.dumps({"heavy": heavy, "oa": scores["OA"]}))
    app.exitQgis()
""")


@pytest.mark.subprocess
@pytest.mark.slow
def test_algorithms_never_import_torch_into_qgis(tmp_path):
    """Every model algorithm through ``processing.run`` in a fresh QGIS process: the engine
    did the work (outputs exist, OA came back) and torch never loaded there."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(PLUGINS_DIR), str(tmp_path)],
                          capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, MAMOL_PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["heavy"] == []
    assert 0.0 <= record["oa"] <= 1.0
    for name in ("m.mamol", "r.html", "c.tif", "e.html", "e.json"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.subprocess
def test_an_engine_that_cannot_start_says_so(mamol_provider, small_scene, tmp_path,
                                             monkeypatch):
    import processing
    from qgis.core import QgsProcessingException
    monkeypatch.setenv("MAMOL_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(QgsProcessingException, match="Install dependencies"):
        processing.run("mamol:classify", {"MODEL": str(REPO / "none.mamol"),
                                          "HS": str(small_scene.hs),
                                          "OUTPUT": str(tmp_path / "c.tif")})
    assert not (tmp_path / "c.tif").exists()


def test_the_weights_cache_setting_reaches_the_engine(mamol_provider, tmp_path, monkeypatch):
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsSettings

    from mamol.algorithms import engine_runner
    key = "MAMOL_WEIGHTS_CACHE"
    assert ProcessingConfig.getSetting(key) is not None or key in ProcessingConfig.settings
    settings = QgsSettings()
    before = settings.value(f"Processing/Configuration/{key}", None)
    monkeypatch.delenv(key, raising=False)
    try:
        assert key not in engine_runner._child_environment()
        settings.setValue(f"Processing/Configuration/{key}", str(tmp_path))
        environment = engine_runner._child_environment()
        assert environment[key] == str(tmp_path)
        assert "PYTHONPATH" in environment and environment["PYTHONPATH"] == str(PLUGINS_DIR)
        monkeypatch.setenv(key, "/chosen/by/variable")      # the variable wins
        assert engine_runner._child_environment()[key] == "/chosen/by/variable"
    finally:
        if before is None:
            settings.remove(f"Processing/Configuration/{key}")
        else:
            settings.setValue(f"Processing/Configuration/{key}", before)


@pytest.mark.subprocess
def test_memory_layer_selection_is_handed_over_as_a_file(mamol_provider, small_scene,
                                                          tmp_path):
    """A memory layer (not a file) with a selection trains through the engine: Processing
    writes the selected features to a temporary file the engine reads."""
    import processing
    from qgis.core import (QgsFeatureRequest, QgsProcessingFeatureSourceDefinition,
                           QgsProject, QgsVectorLayer)

    from mamol.core.model_file import read_header
    source = QgsVectorLayer(str(small_scene.training_polygons), "polygons", "ogr")
    memory = source.materialize(QgsFeatureRequest())
    del source
    QgsProject.instance().addMapLayer(memory)
    try:
        memory.selectByExpression('"class_id" IN (1, 4, 6)')
        feedback = recording_feedback()
        processing.run("mamol:trainmodel", {
            "HS": str(small_scene.hs), "LIDAR": str(small_scene.lidar),
            "POLYGONS": QgsProcessingFeatureSourceDefinition(memory.id(),
                                                             selectedFeaturesOnly=True),
            "CLASS_FIELD": "class_id", "CLASS_NAME_FIELD": "class_name",
            "BACKBONE": "mamol-tiny-vit", "WEIGHTS": 2, "PATCH_SIZE": 5, "EPOCHS": 1,
            "MAX_SAMPLES_PER_CLASS": 20, "DEVICE": "cpu",
            "OUTPUT_MODEL": str(tmp_path / "m.mamol"), "OUTPUT_REPORT": ""},
            feedback=feedback)
    finally:
        QgsProject.instance().removeMapLayer(memory.id())
    command = next(line for line in feedback.debug if line.startswith("Engine: "))
    polygons = command.split(" --polygons ")[1].split(" ")[0]
    assert polygons.endswith(".gpkg") and "memory" not in polygons.lower()
    header = read_header(tmp_path / "m.mamol")
    assert [c.value for c in header.classes] == [1, 4, 6]


@pytest.mark.subprocess
def test_without_a_model_environment_the_algorithms_say_to_install_one(
        mamol_provider, small_scene, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException, QgsSettings

    from mamol.algorithms import model_env
    monkeypatch.delenv("MAMOL_PYTHON", raising=False)
    settings = QgsSettings()
    before = settings.value(model_env.SETTINGS_KEY, None)
    settings.remove(model_env.SETTINGS_KEY)
    assert not model_env.read_marker(
        model_env.default_env_dir(QgsApplication.qgisSettingsDirPath()))
    try:
        for algorithm, parameters in (
                ("mamol:classify", {"MODEL": str(tmp_path / "m.mamol"),
                                    "HS": str(small_scene.hs),
                                    "OUTPUT": str(tmp_path / "c.tif")}),
                ("mamol:trainmodel", {"HS": str(small_scene.hs),
                                      "POLYGONS": str(small_scene.training_polygons),
                                      "CLASS_FIELD": "class_id",
                                      "OUTPUT_MODEL": str(tmp_path / "m.mamol")})):
            with pytest.raises(QgsProcessingException,
                               match=r"run 'Install dependencies' \(Processing Toolbox"):
                processing.run(algorithm, parameters)
    finally:
        if before is not None:
            settings.setValue(model_env.SETTINGS_KEY, before)
    assert not list(tmp_path.iterdir())


@pytest.mark.subprocess
def test_an_engine_that_dies_is_reported_with_its_last_words(mamol_provider, small_scene,
                                                              tmp_path, monkeypatch):
    """A crash (no error line, a signal's exit status) names the status and the last lines
    the engine printed."""
    import processing
    from qgis.core import QgsProcessingException
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '{\"event\": \"progress\", \"percent\": 3.0}' >&2\n"
                    "echo 'Fatal Python error: Segmentation fault' >&2\nexit 139\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MAMOL_PYTHON", str(fake))
    with pytest.raises(QgsProcessingException,
                       match=r"(?s)stopped unexpectedly \(exit status 139.*Segmentation fault"):
        processing.run("mamol:classify", {"MODEL": str(tmp_path / "m.mamol"),
                                          "HS": str(small_scene.hs),
                                          "OUTPUT": str(tmp_path / "out" / "c.tif")})
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_what_the_engine_printed_on_stdout_is_reported_and_the_command_can_be_pasted(
        mamol_provider, small_scene, tmp_path, monkeypatch):
    """A 'Python' that is not one (here /bin/echo, which prints its arguments and exits
    0 without a result) is reported with what it printed; the logged command line is
    shell-quoted, non-ASCII and spaces included, so it can be pasted into a shell."""
    import shlex

    import processing
    from qgis.core import QgsProcessingException
    echo = shutil.which("echo")
    monkeypatch.setenv("MAMOL_PYTHON", echo)
    output = tmp_path / "résumé folder" / "c.tif"
    feedback = recording_feedback()
    with pytest.raises(QgsProcessingException) as raised:
        processing.run("mamol:classify", {"MODEL": str(tmp_path / "m.mamol"),
                                          "HS": str(small_scene.hs), "OUTPUT": str(output)},
                       feedback=feedback)
    message = str(raised.value)
    assert "stopped unexpectedly (exit status 0" in message
    assert "-m mamol classify --model" in message and "(no output)" not in message
    command = next(line for line in feedback.debug if line.startswith("Engine: "))
    argv = shlex.split(command[len("Engine: "):])
    assert argv[:4] == [echo, "-m", "mamol", "classify"]
    assert argv[argv.index("--output") + 1] == str(output)
