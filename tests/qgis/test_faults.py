"""Faults that happen to a running job, across the process boundary between QGIS and the
engine, through ``qgis_process`` and ``processing.run``: Ctrl-C and the feedback's cancel
land within seconds (also in a one-block run), the engine never outlives the QGIS side, a
killed engine leaves nothing next to the outputs or in the temp root, a full disk is named,
a failed report keeps the trained model, two runs on one output set cannot both write, and
the user's input folders get no ``.aux.xml``."""
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qgis_session import qgis_process, recording_feedback
from support import small_disk

pytestmark = pytest.mark.subprocess   # every test starts the engine


def start(env, *args, log: Path) -> subprocess.Popen:
    """``qgis_process.bin ARGS`` in the background, its output into ``log``."""
    stream = open(log, "w")
    try:
        return subprocess.Popen(["qgis_process.bin", *args], env=env, stdout=stream,
                                stderr=subprocess.STDOUT, text=True)
    finally:
        stream.close()


def engines(marker: str):
    """pids of the engine processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if " -m mamol " in command and marker in command:
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def everything_in(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def classify_args(model, scene, out: Path, *extra):
    """A one-block classification (the whole 128 × 128 scene in one block)."""
    return ("run", "mamol:classify", "--", f"MODEL={model}", f"HS={scene.hs}",
            f"SAR={scene.sar}", f"LIDAR={scene.lidar}", "DEVICE=cpu", "BLOCK_SIZE=512",
            f"OUTPUT={out / 'c.tif'}", *extra)


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """The engine's temp root for this test (MAMOL_TEMP_DIR), so that what it leaves there
    can be seen."""
    root = tmp_path / "temp-root"
    root.mkdir()
    monkeypatch.setenv("MAMOL_TEMP_DIR", str(root))
    return root


def test_ctrl_c_cancels_a_one_block_run_within_5_s(qgis_env, tiny_model, small_scene,
                                                    tmp_path):
    out = tmp_path / "out"
    run = start(qgis_env, *classify_args(tiny_model, small_scene, out), log=tmp_path / "log")
    try:
        pid = wait_for(lambda: engines(str(out)), 120)[0]
        wait_for(lambda: (out / ".c.tif.mamol-lock").exists(), 60)
        time.sleep(2.0)   # into the block's batches
        run.send_signal(signal.SIGINT)
        sent = time.monotonic()
        run.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        run.kill()
    said = (tmp_path / "log").read_text()
    assert took < 5.0, said
    assert run.returncode != 0 and "Cancelled by the user; nothing was written." in said
    assert pid not in engines(str(out))
    assert everything_in(out) == []


def test_the_feedbacks_cancel_stops_a_one_block_run_within_5_s(
        mamol_provider, tiny_model, small_scene, tmp_path):
    """processing.run (and the Toolbox's Cancel button): a cancel of the feedback."""
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "out"
    feedback = recording_feedback()
    cancelled_at = []

    def cancel_once_running():
        # the bar moves within the one block (batch by batch): cancel once it has
        wait_for(lambda: any(0 < p < 100 for p in feedback.progress_values), 240)
        cancelled_at.append(time.monotonic())
        feedback.cancel()
    threading.Thread(target=cancel_once_running, daemon=True).start()
    with pytest.raises(QgsProcessingException, match="Cancelled by the user"):
        processing.run("mamol:classify", {
            "MODEL": str(tiny_model), "HS": str(small_scene.hs), "SAR": str(small_scene.sar),
            "LIDAR": str(small_scene.lidar), "DEVICE": "cpu", "BLOCK_SIZE": 512,
            "OUTPUT": str(out / "c.tif")}, feedback=feedback)
    assert cancelled_at, "the bar never moved within the block"
    assert time.monotonic() - cancelled_at[0] < 5.0
    assert everything_in(out) == []


def test_sigterm_to_qgis_process_leaves_no_engine(qgis_env, tiny_model, small_scene,
                                                  tmp_path):
    out = tmp_path / "out"
    run = start(qgis_env, *classify_args(tiny_model, small_scene, out), log=tmp_path / "log")
    try:
        wait_for(lambda: engines(str(out)), 120)
        wait_for(lambda: (out / ".c.tif.mamol-lock").exists(), 60)
        run.send_signal(signal.SIGTERM)    # a batch scheduler, `timeout`, a closed terminal
        run.wait(timeout=30)
        assert run.returncode != 0
        wait_for(lambda: not engines(str(out)), 5.0)
        wait_for(lambda: everything_in(out) == [], 5.0)   # the engine cleaned up itself
    finally:
        run.kill()
        for pid in engines(str(out)):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_engine_leaves_nothing_behind(qgis_env, small_scene, tmp_path, temp_root):
    """kill -9 mid-train: nothing next to the model and nothing in the temp root once
    qgis_process returns, and the message names the signal."""
    out = tmp_path / "out"
    out.mkdir()   # an existing folder: the run locks its outputs from the start
    env = dict(qgis_env, MAMOL_TEMP_DIR=str(temp_root))
    run = start(env, "run", "mamol:trainmodel", "--", f"HS={small_scene.hs}",
                f"SAR={small_scene.sar}", f"POLYGONS={small_scene.training_polygons}",
                "CLASS_FIELD=class_id", "BACKBONE=mamol-tiny-vit", "WEIGHTS=2",
                "PATCH_SIZE=5", "EPOCHS=50", "MAX_SAMPLES_PER_CLASS=40", "DEVICE=cpu",
                f"OUTPUT_MODEL={out / 'm.mamol'}", f"OUTPUT_REPORT={out / 'r.html'}",
                log=tmp_path / "log")
    try:
        pid = wait_for(lambda: engines(str(out)), 120)[0]
        wait_for(lambda: list(temp_root.glob("mamol-run-*/samples-*/*.npy")), 120)
        assert everything_in(out) == [".m.mamol.mamol-lock"]
        os.kill(pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        run.kill()
    said = (tmp_path / "log").read_text()
    assert run.returncode == 1
    assert "stopped by signal SIGKILL — usually the system ran out of memory" in said
    assert everything_in(out) == [] and everything_in(temp_root) == []


def test_a_killed_classification_leaves_nothing_next_to_its_outputs(
        mamol_provider, tiny_model, small_scene, tmp_path, temp_root):
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "out"

    def kill_once_staged():
        wait_for(lambda: list(out.glob(".mamol-run-*")), 120)
        for pid in engines(str(out)):
            os.kill(pid, signal.SIGKILL)
    threading.Thread(target=kill_once_staged, daemon=True).start()
    with pytest.raises(QgsProcessingException, match="stopped by signal SIGKILL"):
        processing.run("mamol:classify", {
            "MODEL": str(tiny_model), "HS": str(small_scene.hs), "DEVICE": "cpu",
            "OUTPUT": str(out / "c.tif"), "OUTPUT_PROBABILITIES": str(out / "p.tif")})
    assert everything_in(out) == [] and everything_in(temp_root) == []


def test_a_full_disk_is_named_before_the_first_write(qgis_env, tiny_model, small_scene,
                                                     tmp_path):
    with small_disk(tmp_path / "disk", 3 << 20, leave_free=48 << 10) as disk:
        done = qgis_process(qgis_env, *classify_args(
            tiny_model, small_scene, disk, f"OUTPUT_PROBABILITIES={disk / 'p.tif'}"))
        said = done.stdout + done.stderr
        assert done.returncode == 1
        assert f"No space left on {disk} (folder '{disk}') while writing 'c.tif', 'p.tif'" \
            in said, said
        assert "MB needed" in said and "MB free" in said
        assert everything_in(disk) == ["ballast"]


def test_a_report_that_cannot_be_written_keeps_the_model(mamol_provider, small_scene,
                                                         tmp_path):
    import processing
    with small_disk(tmp_path / "disk", 1 << 20, leave_free=2 << 10) as disk:
        feedback = recording_feedback()
        result = processing.run("mamol:trainmodel", {
            "HS": str(small_scene.hs), "LIDAR": str(small_scene.lidar),
            "POLYGONS": str(small_scene.training_polygons), "CLASS_FIELD": "class_id",
            "BACKBONE": "mamol-tiny-vit", "WEIGHTS": 2, "PATCH_SIZE": 5, "EPOCHS": 1,
            "MAX_SAMPLES_PER_CLASS": 20, "DEVICE": "cpu",
            "OUTPUT_MODEL": str(tmp_path / "m.mamol"),
            "OUTPUT_REPORT": str(disk / "r.html")}, feedback=feedback)
        assert (tmp_path / "m.mamol").is_file()
        assert result["OUTPUT_MODEL"] == str(tmp_path / "m.mamol")
        warning = next(w for w in feedback.warnings if "report could not be written" in w)
        assert f"The model was saved to '{tmp_path / 'm.mamol'}'" in warning
        assert "No space left on" in warning
        assert everything_in(disk) == ["ballast"]


def test_two_runs_on_one_output_set_cannot_both_write(qgis_env, tiny_model, small_scene,
                                                      tmp_path):
    from osgeo import gdal
    out = tmp_path / "out"
    first = start(qgis_env, *classify_args(tiny_model, small_scene, out, "STRIDE=2"),
                  log=tmp_path / "first.log")
    try:
        wait_for(lambda: (out / ".c.tif.mamol-lock").exists(), 120)
        second = qgis_process(qgis_env, *classify_args(tiny_model, small_scene, out))
        assert first.poll() is None, "the first run ended before the second was refused"
        first.wait(timeout=300)
    finally:
        first.kill()
    said = second.stdout + second.stderr
    assert second.returncode == 1
    assert f"'{out / 'c.tif'}' is being written by another MaMOL run, process " in said
    assert "python -m mamol classify, started " in said
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    assert everything_in(out) == ["c.qml", "c.tif", "c.tif.aux.xml"]
    dataset = gdal.Open(str(out / "c.tif"))
    assert (dataset.RasterXSize, dataset.RasterYSize) == (128, 128)
    dataset = None


def test_no_sidecar_is_written_beside_the_inputs(qgis_env, mamol_provider, tiny_model,
                                                 small_scene, tmp_path):
    """QGIS computes statistics when it loads a raster as a layer, which GDAL saves as an
    .aux.xml beside it: the inputs are handed over as files instead."""
    import processing
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in (small_scene.hs, small_scene.sar, small_scene.lidar,
                 small_scene.training_polygons, small_scene.reference_labels):
        shutil.copy(path, inputs / Path(path).name)
    before = everything_in(inputs)
    trained = qgis_process(qgis_env, "run", "mamol:trainmodel", "--",
                           f"HS={inputs / 'hs.tif'}", f"SAR={inputs / 'sar.tif'}",
                           f"LIDAR={inputs / 'lidar.tif'}",
                           f"POLYGONS={inputs / 'training_polygons.gpkg'}",
                           "CLASS_FIELD=class_id", "BACKBONE=mamol-tiny-vit", "WEIGHTS=2",
                           "PATCH_SIZE=5", "EPOCHS=1", "MAX_SAMPLES_PER_CLASS=20",
                           "DEVICE=cpu", f"OUTPUT_MODEL={tmp_path / 'm.mamol'}")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    processing.run("mamol:evaluate", {
        "MODEL": str(tiny_model), "HS": str(inputs / "hs.tif"),
        "LIDAR": str(inputs / "lidar.tif"),
        "LABEL_RASTER": str(inputs / Path(small_scene.reference_labels).name),
        "MAX_SAMPLES_PER_CLASS": 20, "DEVICE": "cpu",
        "OUTPUT_REPORT": str(tmp_path / "e.html")})
    assert everything_in(inputs) == before
