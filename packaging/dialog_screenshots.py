"""Take the README's screenshots of MaMOL's Processing dialogs from a real QGIS window.

A developer tool; not part of the tests, not shipped in the plugin ZIP. It starts the QGIS
desktop application (``qgis``) under Xvfb with a throw-away profile in which only this
plugin is enabled, runs this same file inside QGIS (``qgis --code``), which

1. writes the sample scene (``mamol:createsamplescene``, 128 × 128) and adds its layers
   to the project,
2. opens the dialogs of *Install dependencies*, *Create sample multimodal scene*, *Train
   model from labelled polygons*, *Classify land cover* and *Evaluate model*, filled
   with the sample scene's files, each at QGIS's default size (as a new user first sees
   it: the size the last dialog was left at is forgotten), waits for each to paint,
3. checks each by widget geometry, with the Advanced group collapsed and expanded: the
   parameters panel must show no horizontal scroll bar, and no visible widget in it may
   be wider (at its minimum size) than the panel's viewport (issue 31: a long label or
   choice widens the panel and cuts the browse buttons off),
4. grabs each dialog and saves it as a palette PNG (Pillow's quantizer when QGIS's Python
   has Pillow, else Qt's), and quits QGIS.

The exit status is 1 when a dialog is too wide (the widgets are listed) or a screenshot
is missing. ``tests/qgis/test_dialog_geometry.py`` runs the same check offscreen.

Rerun (Debian 12 or 13 with QGIS; needs ``xvfb-run``: ``apt-get install -y
--no-install-recommends xvfb xauth``), from the repository root::

    python3 packaging/dialog_screenshots.py            # writes resources/screenshots/dialog_*.png
    python3 packaging/dialog_screenshots.py --out /tmp/shots --keep

PyTorch is not needed and not put on QGIS's path: the dialogs never import it (the
algorithms run ``python -m mamol`` in the model environment), and the in-QGIS part checks
that ``torch`` was not loaded. ``--keep`` keeps the work folder (profile, QGIS's log
``qgis.log``, the in-QGIS part's ``report.txt``) and the sample scene.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Set in QGIS's environment by the outer part; its presence selects the in-QGIS part.
STAGE_VARIABLE = "MAMOL_SHOTS_OUT"
#: (file name or None = checked only, algorithm id, advanced parameters shown in the
#: screenshot); every dialog is shown at QGIS's default size and checked with the Advanced
#: group collapsed and expanded
SHOTS = (
    ("dialog_install_dependencies.png", "mamol:installdependencies", True),
    ("dialog_create_sample_scene.png", "mamol:createsamplescene", False),
    ("dialog_train.png", "mamol:trainmodel", False),
    ("dialog_classify.png", "mamol:classify", False),
    (None, "mamol:evaluate", False),
)
SHOT_FILES = tuple(name for name, *_ in SHOTS if name)
#: The line of the in-QGIS report that says a dialog is too wide.
TOO_WIDE = "TOO WIDE"
#: Colours kept in each PNG: enough for anti-aliased text, icons and the help panel.
PALETTE_COLOURS = 128
SCREEN = "1600x1000x24"
TIMEOUT_S = 240
#: Seconds for QGIS to start the script, and to quit once it has finished.
STARTUP_S = 90
QUIT_S = 30


# ---------------------------------------------------------------- outside QGIS
def _outer(argv=None) -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "resources" / "screenshots",
                        help="folder for the PNG files (default: resources/screenshots)")
    parser.add_argument("--qgis", default="qgis", help="QGIS desktop executable")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (profile, sample scene, QGIS log)")
    args = parser.parse_args(argv)
    if shutil.which("xvfb-run") is None:
        sys.exit("xvfb-run not found: apt-get install -y --no-install-recommends xvfb xauth")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mamol-shots-"))
    # the sample scene, at a short path that reads well in the dialogs
    scene = Path(tempfile.gettempdir()) / "mamol-sample"
    scene_existed = scene.exists()
    try:
        return _run_qgis(root, work, scene, out, args.qgis)
    finally:
        if args.keep:
            print(f"work folder kept: {work}; sample scene: {scene}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if not scene_existed:
                shutil.rmtree(scene, ignore_errors=True)


def _run_qgis(root: Path, work: Path, scene: Path, out: Path, qgis: str) -> int:
    plugins = work / "plugins"
    plugins.mkdir()
    (plugins / "mamol").symlink_to(root, target_is_directory=True)
    profiles = work / "profiles-root"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    # plugin enabled; no tips, news or version check; English interface
    ini.write_text("[PythonPlugins]\nmamol=true\n\n"
                   "[locale]\noverrideFlag=true\nuserLocale=en_US\n\n"
                   "[qgis]\ncheckVersion=false\nshowTips=false\n"
                   "allowVersionCheck=false\n\n"
                   "[core]\nNewsFeed\\httpsfeedqgisorg\\disabled=true\n")
    runtime = work / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "QGIS_", "MAMOL_"))}
    # QGIS's embedded Python finds its prefix through the first python3 on PATH: keep
    # pyenv's and virtual environments' out, so it is the system Python QGIS is built with
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep)
        if part and ".pyenv" not in part and not (Path(part) / "activate").is_file())
    env.pop("VIRTUAL_ENV", None)
    env.update({
        "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(runtime),
        "QGIS_PLUGINPATH": str(plugins), "LANG": "C.UTF-8",
        STAGE_VARIABLE: str(out), "MAMOL_SHOTS_WORK": str(work),
        "MAMOL_SHOTS_SCENE": str(scene),
    })
    for name in SHOT_FILES:
        (out / name).unlink(missing_ok=True)
    log = work / "qgis.log"
    command = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN}",
               qgis, "--nologo", "--noversioncheck", "--lang", "en",
               "--profiles-path", str(profiles), "--code", str(Path(__file__).resolve())]
    print("running:", " ".join(command))
    report = work / "report.txt"
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        _wait(process, report)
    text = report.read_text() if report.is_file() else ""
    print(text, end="")
    missing = [name for name in SHOT_FILES if not (out / name).is_file()]
    if missing:
        print(f"missing: {', '.join(missing)}; end of QGIS's log:\n"
              + log.read_text(errors="replace")[-4000:])
        return 1
    for name in SHOT_FILES:
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KiB")
    if TOO_WIDE in text:
        print("some dialogs are wider than their parameters panel at the default size "
              f"(the {TOO_WIDE} lines above)")
        return 1
    return 0


def _wait(process: subprocess.Popen, report: Path) -> None:
    """Wait for QGIS to quit; end it (its process group: xvfb-run, Xvfb, qgis) when the
    script inside never started (a Python error dialog waits for a click), or when it
    finished but QGIS does not quit, or after TIMEOUT_S."""
    start = time.monotonic()
    finished_at = None
    while process.poll() is None:
        time.sleep(1)
        elapsed = time.monotonic() - start
        text = report.read_text() if report.is_file() else ""
        if finished_at is None and ("done" in text.splitlines() or "FAILED" in text):
            finished_at = elapsed
        if (not text and elapsed > STARTUP_S) or elapsed > TIMEOUT_S \
                or (finished_at is not None and elapsed - finished_at > QUIT_S):
            print(f"ending QGIS after {elapsed:.0f} s (it did not start the script or quit)")
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# ---------------------------------------------------------------- widget geometry
# (also used by tests/qgis/test_dialog_geometry.py, offscreen)
def forget_dialog_state() -> None:
    """QGIS restores the size the last Processing dialog was left at and the state of its
    Advanced group: forget both, as a new user has neither."""
    from qgis.core import QgsSettings
    for key in ("Windows/QgsProcessingDialogBase",
                "QgsCollapsibleGroupBox/QgsProcessingDialogBase"):
        QgsSettings().remove(key)


def show_advanced(dialog, shown: bool) -> None:
    """Expand or collapse the "Advanced Parameters" group (a QgsCollapsibleGroupBox)."""
    from qgis.PyQt.QtWidgets import QGroupBox
    for box in dialog.findChildren(QGroupBox, "grpAdvanced"):
        box.setProperty("collapsed", not shown)


def parameters_area(dialog, algorithm):
    """The scroll area of a dialog's parameters panel: the innermost one that holds the
    label of the algorithm's first parameter (the panel sits in an outer scroll area whose
    bars never show)."""
    from qgis.PyQt.QtWidgets import QLabel, QScrollArea
    first = algorithm.parameterDefinitions()[0].description()
    holding = [area for area in dialog.findChildren(QScrollArea)
               if area.widget() is not None and any(
                   first in label.text() for label in area.widget().findChildren(QLabel))]
    inner = [area for area in holding
             if not any(area is not other and area.isAncestorOf(other) for other in holding)]
    if len(inner) != 1:
        raise LookupError(f"{len(inner)} innermost scroll areas hold the label '{first}'")
    return inner[0]


def too_wide(area) -> list:
    """What makes the parameters panel scroll sideways: (widget type, its text, its minimum
    width, the viewport's width) of each visible widget wider at its minimum than the
    panel's viewport, and ("horizontal scroll bar", …) when the bar shows."""
    from qgis.PyQt.QtWidgets import QWidget
    limit = area.viewport().width()
    found = []
    for widget in area.widget().findChildren(QWidget):
        width = widget.minimumSizeHint().width()
        if widget.isVisible() and width > limit:
            text = getattr(widget, "text", None) or getattr(widget, "currentText", None)
            found.append((type(widget).__name__, text() if callable(text) else "", width,
                          limit))
    if area.horizontalScrollBar().isVisible():
        found.append(("horizontal scroll bar", "", area.widget().minimumSizeHint().width(),
                      limit))
    return found


# ---------------------------------------------------------------- inside QGIS
def _inside_qgis() -> None:
    import traceback

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
    from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice, Qt, QTimer
    from qgis.PyQt.QtGui import QImage
    from qgis.PyQt.QtWidgets import QLineEdit
    from qgis.utils import iface

    out = Path(os.environ[STAGE_VARIABLE])
    work = Path(os.environ["MAMOL_SHOTS_WORK"])
    scene = Path(os.environ["MAMOL_SHOTS_SCENE"])
    report = []
    state = {"tries": 0, "queue": list(SHOTS), "dialog": None}

    def note(line):
        report.append(line)
        (work / "report.txt").write_text("\n".join(report) + "\n")

    def fail():
        note("FAILED:\n" + traceback.format_exc())
        quit_qgis()

    def quit_qgis():
        if state["dialog"] is not None:
            state["dialog"].close()
        QgsProject.instance().clear()
        QgsProject.instance().setDirty(False)
        iface.actionExit().trigger()
        QTimer.singleShot(10000, QgsApplication.exit)   # should the main window stay open

    def save_png(image: QImage, path: Path) -> None:
        try:
            from PIL import Image
        except ImportError:
            image.convertToFormat(QImage.Format.Format_Indexed8, Qt.ImageConversionFlag.ThresholdDither).save(str(path))
            return
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        image.save(buffer, "PNG")
        buffer.close()
        import io
        picture = Image.open(io.BytesIO(bytes(data))).convert("RGB")
        picture = picture.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE)
        picture.save(path, optimize=True)

    def start():
        try:
            if QgsApplication.processingRegistry().providerById("mamol") is None:
                state["tries"] += 1
                if state["tries"] > 60:
                    raise RuntimeError("the mamol provider was not registered: plugin not loaded")
                QTimer.singleShot(500, start)
                return
            import processing
            result = processing.run("mamol:createsamplescene",
                                    {"SIZE": 128, "SEED": 42, "OUTPUT_FOLDER": str(scene)})
            project = QgsProject.instance()
            for key, name in (("HS", "hs"), ("SAR", "sar"), ("LIDAR", "lidar")):
                project.addMapLayer(QgsRasterLayer(result[key], name))
            project.addMapLayer(QgsVectorLayer(result["TRAINING_POLYGONS"],
                                               "training_polygons", "ogr"))
            project.addMapLayer(QgsRasterLayer(result["REFERENCE_LABELS"], "reference_labels"))
            note(f"sample scene: {scene}")
            QTimer.singleShot(500, next_dialog)
        except Exception:   # noqa: BLE001 - any failure ends the run with a report
            fail()

    def parameters(algorithm_id):
        layers = {layer.name(): layer.id()
                  for layer in QgsProject.instance().mapLayers().values()}
        rasters = {"HS": layers["hs"], "SAR": layers["sar"], "LIDAR": layers["lidar"]}
        if algorithm_id == "mamol:createsamplescene":
            return {"SIZE": 256, "SEED": 42, "OUTPUT_FOLDER": str(scene)}
        if algorithm_id == "mamol:trainmodel":
            return dict(rasters, POLYGONS=layers["training_polygons"], CLASS_FIELD="class_id",
                        CLASS_NAME_FIELD="class_name", WEIGHTS=0,
                        PRETRAINED_TAG="openai", EPOCHS=20,
                        OUTPUT_MODEL=str(scene / "model.mamol"),
                        OUTPUT_REPORT=str(scene / "training_report.html"))
        if algorithm_id == "mamol:classify":
            return dict(rasters, MODEL=str(scene / "model.mamol"),
                        OUTPUT=str(scene / "land_cover.tif"))
        if algorithm_id == "mamol:evaluate":
            return dict(rasters, MODEL=str(scene / "model.mamol"),
                        LABEL_RASTER=layers["reference_labels"],
                        OUTPUT_REPORT=str(scene / "evaluation_report.html"))
        return {}

    def next_dialog():
        try:
            if not state["queue"]:
                note("torch loaded in QGIS: " + str("torch" in sys.modules))
                note("done")
                quit_qgis()
                return
            _, algorithm_id, _ = state["queue"][0]
            import processing
            forget_dialog_state()
            dialog = processing.createAlgorithmDialog(algorithm_id, parameters(algorithm_id))
            dialog.move(40, 40)
            dialog.show()
            show_advanced(dialog, False)
            dialog.raise_()
            dialog.activateWindow()
            state["dialog"] = dialog
            QTimer.singleShot(2500, check)      # let it lay out and paint
        except Exception:   # noqa: BLE001 - any failure ends the run with a report
            fail()

    def check():
        """The geometry check, Advanced collapsed (as shown first) and expanded."""
        try:
            _, algorithm_id, advanced = state["queue"][0]
            dialog = state["dialog"]
            area = parameters_area(dialog, dialog.algorithm())
            size = dialog.size()
            for shown in (False, True):
                show_advanced(dialog, shown)
                for _ in range(3):
                    QgsApplication.processEvents()
                for widget, text, width, limit in too_wide(area):
                    note(f"{TOO_WIDE}: {algorithm_id} ({'advanced' if shown else 'basic'}), "
                         f"{widget} '{text}': {width} px in a panel of {limit} px")
            note(f"{algorithm_id}: default size {size.width()} x {size.height()} px, "
                 f"parameters panel {area.viewport().width()} px wide")
            show_advanced(dialog, advanced)
            QTimer.singleShot(1000, grab)
        except Exception:   # noqa: BLE001
            fail()

    def grab():
        try:
            name, algorithm_id, _ = state["queue"].pop(0)
            dialog = state["dialog"]
            focused = QgsApplication.focusWidget()
            if focused is not None:         # no selected text or focus frame in the shot
                focused.clearFocus()
            for line_edit in dialog.findChildren(QLineEdit):
                line_edit.deselect()
            # the panel from its first parameter (filling it in may have scrolled it)
            parameters_area(dialog, dialog.algorithm()).verticalScrollBar().setValue(0)
            QgsApplication.processEvents()
            if name:
                image = dialog.grab().toImage()
                save_png(image, out / name)
                note(f"{name}: {algorithm_id}, {image.width()} x {image.height()} px, "
                     f"{(out / name).stat().st_size // 1024} KiB")
            dialog.close()
            dialog.deleteLater()
            state["dialog"] = None
            QTimer.singleShot(500, next_dialog)
        except Exception:   # noqa: BLE001
            fail()

    note("started")
    QTimer.singleShot(1000, start)


if os.environ.get(STAGE_VARIABLE) and "qgis.utils" in sys.modules:
    _inside_qgis()
elif __name__ == "__main__":
    sys.exit(_outer())
