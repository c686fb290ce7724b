"""The engine, ``python -m mamol``: its command line, its JSON lines, its exit codes and
cancel on SIGTERM. That the Processing algorithms run it in a child process (torch never in
QGIS's process) is tests/qgis/test_engine_runner.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support import PLUGINS_DIR

pytestmark = pytest.mark.subprocess   # every test starts a child process

ENV = dict(os.environ, PYTHONPATH=str(PLUGINS_DIR))


def engine(*arguments, timeout=600, **options):
    return subprocess.run([sys.executable, "-m", "mamol", *map(str, arguments)],
                          capture_output=True, text=True, env=ENV, timeout=timeout, **options)


def events(stderr):
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_help_names_every_command_and_reads_like_the_algorithms():
    done = engine("--help")
    assert done.returncode == 0
    for command in ("scene", "train", "evaluate", "classify"):
        assert command in done.stdout
    classify = engine("classify", "--help").stdout
    assert "each pixel from the modalities valid there" in classify
    for option in ("--model", "--hs", "--sar", "--lidar", "--probabilities", "--stride",
                   "--gdal-cache-mb", "--progress", "--debug"):
        assert option in classify
    assert "--missing-rate" in engine("train", "--help").stdout
    assert "--availability" in engine("evaluate", "--help").stdout


@pytest.mark.platform   # an engine run on Debian 13 too
def test_scene_in_json_lines(tmp_path):
    done = engine("scene", "--size", 128, "--seed", 5, "--output-folder", tmp_path / "s",
                  "--progress", "json")
    assert done.returncode == 0, done.stderr
    lines = events(done.stderr)
    assert all(set(event) >= {"event"} for event in lines)
    percents = [e["percent"] for e in lines if e["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert all(e["stage"] == "scene" for e in lines if e["event"] == "progress")
    result = [e for e in lines if e["event"] == "result"]
    assert len(result) == 1 and result[0]["result"]["hs"] == str(tmp_path / "s" / "hs.tif")
    assert json.loads(done.stdout)["manifest"] == str(tmp_path / "s" / "scene.json")
    assert (tmp_path / "s" / "lidar.tif").is_file()


def test_bad_input_is_one_line_and_exit_2(small_scene, tmp_path):
    done = engine("classify", "--model", tmp_path / "none.mamol", "--hs", small_scene.hs,
                  "--output", tmp_path / "c.tif")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: Model file '{tmp_path / 'none.mamol'}' does not exist."]
    as_json = engine("classify", "--model", tmp_path / "none.mamol", "--hs", small_scene.hs,
                     "--output", tmp_path / "c.tif", "--progress", "json")
    # what it announced before locking its outputs ("staging"), then the one error line
    assert [e for e in events(as_json.stderr) if e["event"] != "staging"] == [
        {"event": "error", "kind": "input", "message":
         f"Model file '{tmp_path / 'none.mamol'}' does not exist."}]
    debug = engine("classify", "--model", tmp_path / "none.mamol", "--hs", small_scene.hs,
                   "--output", tmp_path / "c.tif", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    unknown = engine("classify", "--model", "m.mamol", "--output", "c.tif", "--nonsense",
                     "--progress", "json")
    assert unknown.returncode == 2
    # one line, the reason in the JSON event, no usage message
    assert events(unknown.stderr) == [{"event": "error", "kind": "input", "message":
                                       "python -m mamol: unrecognized arguments: --nonsense"}]
    assert unknown.stderr.strip().count("\n") == 0
    plain = engine("classify", "--model", "m.mamol", "--output", "c.tif", "--nonsense")
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
        "error: python -m mamol: unrecognized arguments: --nonsense (see 'python -m mamol "
        "--help')"]
    png = engine("classify", "--model", "m.mamol", "--output", tmp_path / "c.png")
    assert png.returncode == 2 and "must end in .tif or .tiff" in png.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.platform   # an engine run on Debian 13 too
def test_classify_command_matches_the_core_call(tiny_model, small_scene, tmp_path):
    """The engine's classify is the core's classify: the same class raster, bit for bit."""
    from osgeo import gdal

    from mamol.core.inference import ClassifyConfig, classify
    done = engine("classify", "--model", tiny_model, "--hs", small_scene.hs, "--lidar",
                  small_scene.lidar, "--stride", 4, "--device", "cpu", "--output",
                  tmp_path / "engine.tif", "--progress", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    classify(ClassifyConfig(model_path=str(tiny_model), rasters=(
        ("hs", str(small_scene.hs)), ("lidar", str(small_scene.lidar))),
        output_classes=str(tmp_path / "core.tif"), stride=4, device="cpu"))
    pixels = [gdal.Open(str(tmp_path / name)).ReadAsArray() for name in ("engine.tif",
                                                                           "core.tif")]
    assert (pixels[0] == pixels[1]).all()
    assert sum(r["pixels"] for r in result["class_counts"]) == int((pixels[0] > 0).sum())
    logs = [e["text"] for e in events(done.stderr) if e["event"] == "log"]
    assert any(text.startswith("Classified ") for text in logs)


def test_sigterm_cancels_and_writes_nothing(tiny_model, small_scene, tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-m", "mamol", "classify", "--model", str(tiny_model), "--hs",
         str(small_scene.hs), "--device", "cpu", "--block-size", "16", "--output",
         str(out / "classes.tif"), "--confidence", str(out / "confidence.tif"),
         "--progress", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV)
    seen = []
    for line in child.stderr:
        seen.append(line)
        if '"progress"' in line and json.loads(line)["percent"] > 5:
            child.send_signal(signal.SIGTERM)
            break
    rest = child.stderr.read()
    child.stderr.close()
    assert child.wait(timeout=120) == 143
    assert events(rest)[-1] == {"event": "error", "kind": "cancelled",
                                "message": "Cancelled; nothing was written."}
    assert not out.exists() or not list(out.iterdir())


CALLER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "mamol", *sys.argv[1:]],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env=dict(os.environ, MAMOL_LIFELINE="stdin"))
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_engine_does_not_outlive_its_caller(tiny_model, small_scene, tmp_path):
    """A caller that dies outright (SIGKILL: no chance to stop its child) closes the
    engine's lifeline; the engine cancels and removes what it staged within seconds."""
    out = tmp_path / "out"
    out.mkdir()
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, "classify", "--model", str(tiny_model), "--hs",
         str(small_scene.hs), "--block-size", "512", "--device", "cpu", "--output",
         str(out / "c.tif"), "--probabilities", str(out / "p.tif")],
        stdout=subprocess.PIPE, text=True, env=dict(ENV, MAMOL_TEMP_DIR=str(tmp_path)))
    pid = int(caller.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".mamol-run-*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out.glob(".mamol-run-*")), "the engine never started writing"
        caller.kill()
        caller.wait()
        killed = time.monotonic()
        while _alive(pid) and time.monotonic() - killed < 5.0:
            time.sleep(0.1)
        assert not _alive(pid), "the engine outlived its caller by 5 s"
        assert sorted(p.name for p in out.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    finally:
        caller.kill()
        caller.wait()
        caller.stdout.close()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: the engine is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
