"""The plugin as ``qgis_process`` users meet it: a real ``qgis_process.bin`` subprocess with
its own isolated profile in which the plugin is enabled."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qgis_session import qgis_process

pytestmark = [pytest.mark.skipif(shutil.which("qgis_process.bin") is None,
                                 reason="qgis_process.bin is not installed"),
              pytest.mark.subprocess]   # every test starts qgis_process


def test_provider_is_listed(qgis_env):
    listing = qgis_process(qgis_env, "list")
    assert listing.returncode == 0, listing.stderr
    assert "MaMOL land cover" in listing.stdout
    assert "mamol:createsamplescene" in listing.stdout


def test_help_explains_parameters(qgis_env):
    result = qgis_process(qgis_env, "help", "mamol:createsamplescene")
    assert result.returncode == 0, result.stderr
    assert "SIZE" in result.stdout and "OUTPUT_FOLDER" in result.stdout
    assert "no single modality" in result.stdout


@pytest.mark.slow
def test_run_writes_the_scene(qgis_env, tmp_path):
    result = qgis_process(qgis_env, "--json", "run", "mamol:createsamplescene", "--",
                          "SIZE=128", "SEED=7", f"OUTPUT_FOLDER={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(result.stdout)["results"]
    assert results["HS"] == str(tmp_path / "hs.tif")
    assert (tmp_path / "training_polygons.gpkg").is_file()
    assert json.loads((tmp_path / "scene.json").read_text())["config"] == {"size": 128,
                                                                            "seed": 7}


def test_bad_size_fails_with_the_reason(qgis_env, tmp_path):
    result = qgis_process(qgis_env, "run", "mamol:createsamplescene", "--",
                          "SIZE=99999", f"OUTPUT_FOLDER={tmp_path / 'out'}")
    assert result.returncode != 0
    assert "Size 99999 is too large" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_trainmodel_runs_headless(qgis_env, small_scene, tmp_path):
    model = tmp_path / "model.mamol"
    result = qgis_process(
        qgis_env, "--json", "run", "mamol:trainmodel", "--", f"HS={small_scene.hs}",
        f"SAR={small_scene.sar}", f"POLYGONS={small_scene.training_polygons}",
        "CLASS_FIELD=class_id", "CLASS_NAME_FIELD=class_name", "BACKBONE=mamol-tiny-vit",
        "WEIGHTS=2", "PATCH_SIZE=5", "EPOCHS=1", "MAX_SAMPLES_PER_CLASS=20", "DEVICE=cpu",
        "MISSING_RATE=0.6", f"OUTPUT_MODEL={model}", f"OUTPUT_REPORT={tmp_path / 'r.html'}")
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(result.stdout)["results"]
    assert results["OUTPUT_MODEL"] == str(model)
    assert results["OUTPUT_REPORT_JSON"] == str(tmp_path / "r.json")
    from mamol.core.model_file import read_header
    header = read_header(model)
    assert header.modality_names == ["hs", "sar"]
    assert header.training["missing_simulation"]["missing_rate"] == 0.6


@pytest.mark.slow
def test_trainmodel_from_a_label_raster_headless(qgis_env, small_scene, tmp_path):
    model = tmp_path / "m.mamol"
    result = qgis_process(
        qgis_env, "--json", "run", "mamol:trainmodel", "--", f"HS={small_scene.hs}",
        f"LIDAR={small_scene.lidar}", f"LABEL_RASTER={small_scene.reference_labels}",
        "BACKBONE=mamol-tiny-vit", "WEIGHTS=2", "PATCH_SIZE=5", "EPOCHS=1",
        "MAX_SAMPLES_PER_CLASS=20", "DEVICE=cpu", f"OUTPUT_MODEL={model}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["results"]["OUTPUT_MODEL"] == str(model)
    from mamol.core.model_file import read_header
    assert [c.name for c in read_header(model).classes][0] == "Water"


def test_log_lines_do_not_run_into_the_progress_dots(qgis_env, small_scene, tmp_path):
    # without --json qgis_process prints progress as "0...10...20" on the current line
    result = qgis_process(
        qgis_env, "run", "mamol:trainmodel", "--", f"HS={small_scene.hs}",
        f"POLYGONS={small_scene.training_polygons}", "CLASS_FIELD=class_id",
        "BACKBONE=mamol-tiny-vit", "WEIGHTS=2", "PATCH_SIZE=5", "EPOCHS=2",
        "MAX_SAMPLES_PER_CLASS=20", "DEVICE=cpu", f"OUTPUT_MODEL={tmp_path / 'm.mamol'}")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    dots = [line for line in lines if re.match(r"0\.\.\.", line)]
    assert dots, result.stdout
    for line in dots:
        assert re.fullmatch(r"0[.\d]*( - done\.)?", line), line
    assert any("epoch 2/2" in line for line in lines), result.stdout
    # no class-name field: each class is named once ("class 1", not "class 1 class 1")
    assert "  class 1: " in result.stdout and "class 1 class 1" not in result.stdout


def test_trainmodel_without_rasters_fails_with_the_reason(qgis_env, small_scene, tmp_path):
    result = qgis_process(
        qgis_env, "run", "mamol:trainmodel", "--", f"POLYGONS={small_scene.training_polygons}",
        "CLASS_FIELD=class_id", f"OUTPUT_MODEL={tmp_path / 'm.mamol'}")
    assert result.returncode != 0
    assert "at least one raster" in result.stdout + result.stderr
    assert not (tmp_path / "m.mamol").exists()


@pytest.mark.slow
def test_classify_runs_headless(qgis_env, tiny_model, small_scene, tmp_path):
    result = qgis_process(
        qgis_env, "--json", "run", "mamol:classify", "--", f"MODEL={tiny_model}",
        f"HS={small_scene.hs}", f"LIDAR={small_scene.lidar}", "DEVICE=cpu", "STRIDE=4",
        f"OUTPUT={tmp_path / 'lc.tif'}", f"OUTPUT_ENTROPY={tmp_path / 'entropy.tif'}")
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(result.stdout)["results"]
    assert results["OUTPUT"] == str(tmp_path / "lc.tif")
    assert (tmp_path / "entropy.tif").is_file() and (tmp_path / "lc.qml").is_file()


@pytest.mark.slow
def test_graphical_model_chains_scene_training_and_classification(qgis_env, tmp_path):
    """tests/sample_to_land_cover.model3 (made in the graphical modeler's format):
    createsamplescene -> trainmodel -> classify."""
    model = Path(__file__).resolve().parent / "sample_to_land_cover.model3"
    output = tmp_path / "land_cover.tif"
    result = qgis_process(qgis_env, "--json", "run", str(model), "--", "SIZE=128",
                          "EPOCHS=1", f"classify:Land cover={output}", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["results"]["classify:Land cover"] == str(output)
    from osgeo import gdal
    dataset = gdal.Open(str(output))
    assert (dataset.RasterXSize, dataset.RasterYSize) == (128, 128)
    # gdal.Info reads the .aux.xml sidecar fully (GDAL 3.6's GeoTIFF band may return no
    # category names before its PAM metadata is loaded).
    assert "1: Water" in gdal.Info(dataset)


@pytest.mark.slow
def test_evaluate_runs_headless(qgis_env, tiny_model, small_scene, tmp_path):
    report = tmp_path / "evaluation.html"
    result = qgis_process(
        qgis_env, "--json", "run", "mamol:evaluate", "--", f"MODEL={tiny_model}",
        f"HS={small_scene.hs}", f"SAR={small_scene.sar}", f"LIDAR={small_scene.lidar}",
        f"LABEL_RASTER={small_scene.reference_labels}", "ABSENT=1", "HS_AVAILABILITY=0.5",
        "MAX_SAMPLES_PER_CLASS=50", "DEVICE=cpu", f"OUTPUT_REPORT={report}")
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(result.stdout)["results"]
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert results["OA"] == pytest.approx(written["evaluation"]["oa"])
    assert written["forcing"]["absent"] == ["sar"]
    assert not any("sar" in p for p in written["missing_patterns"]["evaluated"])


@pytest.mark.slow
def test_host_benchmark_trains_in_both_hosts(qgis_env):
    """bench/bench_host.py (the engine command vs qgis_process launching it) runs and
    reports the rates of both hosts; a benchmark, so no speed is asserted."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[2] / "bench" / "bench_host.py"),
         "--scene-size", "128", "--epochs", "2", "--samples-per-class", "10",
         "--patch-size", "5", "--stride", "8"],
        env=qgis_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines()
            if line.startswith(("| engine command |", "| qgis_process |"))]
    assert len(rows) == 2, done.stdout
    for row in rows:
        cells = row.split("|")
        assert float(cells[2]) > 0 and float(cells[4]) > 0, row
        assert "libtorch" not in cells[6]
    assert "qgis_process / engine command: training" in done.stdout


@pytest.mark.slow
def test_an_mce_model_trains_and_classifies_through_qgis_process(qgis_env, small_scene,
                                                                  tmp_path):
    """MaMOL + MCE from the command line of QGIS: the model file records the mode, and
    classify takes it without a new parameter."""
    from mamol.core.model_file import read_header
    trained = qgis_process(
        qgis_env, "run", "mamol:trainmodel", "--json", "--",
        f"HS={small_scene.hs}", f"SAR={small_scene.sar}", f"LIDAR={small_scene.lidar}",
        f"POLYGONS={small_scene.training_polygons}", "CLASS_FIELD=class_id",
        "BACKBONE=mamol-tiny-vit", "WEIGHTS=2", "PATCH_SIZE=5", "EPOCHS=1",
        "MAX_SAMPLES_PER_CLASS=20", "DEVICE=cpu", "TRAINING_MODE=1", "LAMBDA_SUB=0.5",
        f"OUTPUT_MODEL={tmp_path / 'mce.mamol'}", f"OUTPUT_REPORT={tmp_path / 'r.html'}",
        timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    header = read_header(tmp_path / "mce.mamol")
    assert header.adapter["mce"] is True and header.training["mce"]["subsets"] == 0.5
    classified = qgis_process(
        qgis_env, "run", "mamol:classify", "--json", "--", f"MODEL={tmp_path / 'mce.mamol'}",
        f"HS={small_scene.hs}", "STRIDE=8", "DEVICE=cpu", f"OUTPUT={tmp_path / 'c.tif'}",
        timeout=900)
    assert classified.returncode == 0, classified.stdout[-2000:] + classified.stderr[-2000:]
    assert (tmp_path / "c.tif").is_file()


@pytest.mark.slow
def test_a_tile_model_trains_and_classifies_through_qgis_process(qgis_env, small_scene,
                                                                 tmp_path):
    """The tile model kind from the command line of QGIS: "Model kind" = tile, recorded in
    the file, and classify takes the model with no new parameter and labels every pixel
    that a modality covers."""
    from osgeo import gdal

    from mamol.core.model_file import read_header
    trained = qgis_process(
        qgis_env, "run", "mamol:trainmodel", "--json", "--",
        f"HS={small_scene.hs}", f"SAR={small_scene.sar}", f"LIDAR={small_scene.lidar}",
        f"POLYGONS={small_scene.training_polygons}", "CLASS_FIELD=class_id",
        "BACKBONE=mamol-tiny-vit", "WEIGHTS=2", "PATCH_SIZE=6", "EPOCHS=1",
        "MAX_SAMPLES_PER_CLASS=20", "DEVICE=cpu", "MODEL_KIND=1",
        f"OUTPUT_MODEL={tmp_path / 'tile.mamol'}", f"OUTPUT_REPORT={tmp_path / 'r.html'}",
        timeout=900)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert read_header(tmp_path / "tile.mamol").model_kind == "tile"
    classified = qgis_process(
        qgis_env, "run", "mamol:classify", "--json", "--", f"MODEL={tmp_path / 'tile.mamol'}",
        f"HS={small_scene.hs}", f"SAR={small_scene.sar}", f"LIDAR={small_scene.lidar}",
        "DEVICE=cpu", f"OUTPUT={tmp_path / 'c.tif'}", timeout=900)
    assert classified.returncode == 0, classified.stdout[-2000:] + classified.stderr[-2000:]
    classes = gdal.Open(str(tmp_path / "c.tif")).ReadAsArray()
    hs = gdal.Open(str(small_scene.hs))
    assert classes.shape == (hs.RasterYSize, hs.RasterXSize)   # the finest grid
    hs = None
    assert (classes > 0).all()   # LiDAR covers the whole sample scene
