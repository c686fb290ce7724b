"""Shared fixtures. The plugin is imported as the package ``mamol`` (its install name), from
``<plugins folder>/mamol``, a link to the repository that ``make setup`` creates in
QGIS_PLUGINPATH (``.build/plugins`` unless the Makefile is told another build folder); this
file creates it too so that a bare ``pytest`` works after the venv exists.

One headless QGIS application runs for the whole session, started here before any test
module is imported, with its profile in QGIS_CUSTOM_CONFIG_PATH (the Makefile's
``.build/qgis-profile``; the same folder when pytest runs bare), so nothing writes a QGIS
profile into the repository."""
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DIR = Path(os.environ.get("QGIS_PLUGINPATH", "").split(os.pathsep)[0]
                   or REPO / ".build" / "plugins")
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The algorithms run the engine in a child Python: this one (the project's venv), unless the
# caller chose another.
os.environ.setdefault("MAMOL_PYTHON", sys.executable)
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", str(REPO / ".build" / "qgis-profile"))
from qgis.core import QgsApplication  # noqa: E402 - after the environment it reads

QGIS_APP = QgsApplication([], False)
QGIS_APP.initQgis()
# QGIS's own Python plugins (Processing) for ``import processing``
_QGIS_PYTHON_PLUGINS = os.path.join(QGIS_APP.pkgDataPath(), "python", "plugins")
if _QGIS_PYTHON_PLUGINS not in sys.path:
    sys.path.append(_QGIS_PYTHON_PLUGINS)

PLUGINS_DIR.mkdir(parents=True, exist_ok=True)
if not (PLUGINS_DIR / "mamol").exists():
    if (PLUGINS_DIR / "mamol").is_symlink():   # a link made elsewhere (another root)
        (PLUGINS_DIR / "mamol").unlink()
    os.symlink(REPO, PLUGINS_DIR / "mamol")
if str(PLUGINS_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGINS_DIR))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def recording_feedback():
    """A QgsProcessingFeedback that keeps its info lines (``.info``), warnings
    (``.warnings``) and debug lines (``.debug``) besides passing them on."""
    from qgis.core import QgsProcessingFeedback

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.info, self.warnings, self.debug = [], [], []

        def pushInfo(self, info):  # noqa: N802 - QGIS API
            self.info.append(info)
            super().pushInfo(info)

        def pushDebugInfo(self, info):  # noqa: N802 - QGIS API
            self.debug.append(info)
            super().pushDebugInfo(info)

        def pushWarning(self, warning):  # noqa: N802 - QGIS API
            self.warnings.append(warning)
            super().pushWarning(warning)

    return RecordingFeedback()


def pytest_unconfigure(config):
    from qgis.PyQt.QtCore import QThreadPool
    QThreadPool.globalInstance().waitForDone()   # no QGIS task may outlive the application
    QGIS_APP.exitQgis()


@pytest.fixture(scope="session")
def qgis_processing():
    """QGIS Processing initialised once (``processing.run`` and the native algorithms)."""
    from processing.core.Processing import Processing
    Processing.initialize()


@pytest.fixture
def qgis_iface():
    """A stand-in for QGIS's ``iface``: the plugin only keeps it (no menus, no toolbars)."""
    return types.SimpleNamespace()


@pytest.fixture(scope="session")
def mamol_provider(qgis_processing):
    """The MaMOL provider registered in the test session's QGIS Processing registry."""
    from qgis.core import QgsApplication

    from mamol.algorithms.provider import MamolProvider
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("mamol")
    if provider is None:
        provider = MamolProvider()
        assert registry.addProvider(provider)
    yield provider


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 128 x 128 sample scene written once per session (seed 3)."""
    from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene
    folder = tmp_path_factory.mktemp("scene128")
    return write_sample_scene(SampleSceneConfig(size=128, seed=3), folder)


def tiny_training_config(scene, output, **changes):
    """Quick training settings on a sample scene: tiny random backbone, P = 5, 2 epochs,
    η = 50 %, CPU; ``changes`` override any field."""
    from dataclasses import replace

    from mamol.core.backbone import TINY_ARCH, BackboneSpec
    from mamol.training.labels import PolygonSource, SplitConfig
    from mamol.training.missing import MissingSimulation, SimulationMode
    from mamol.training.trainer import TrainingConfig
    config = TrainingConfig(
        modalities=(("hs", str(scene.hs)), ("sar", str(scene.sar)),
                    ("lidar", str(scene.lidar))),
        polygons=PolygonSource(str(scene.training_polygons), "class_id",
                               name_field="class_name"),
        output_model=str(output), backbone=BackboneSpec(arch=TINY_ARCH),
        patch_size=5, epochs=2, split=SplitConfig(max_train_per_class=40,
                                                  max_validation_per_class=20),
        simulation=MissingSimulation(SimulationMode.RATE, 0.5, seed=2), device="cpu")
    return replace(config, **changes)


@pytest.fixture(scope="session")
def tiny_model(small_scene, tmp_path_factory):
    """A quickly trained model (tiny random backbone, P = 5, 2 epochs, η = 50 %) on the
    small scene, for the classification tests."""
    from mamol.training.trainer import train_model
    folder = tmp_path_factory.mktemp("tiny-model")
    return train_model(tiny_training_config(small_scene, folder / "tiny.mamol")).model_path


def cancelling_feedback(after_percent: float):
    """A QgsProcessingFeedback that asks to cancel once progress passes ``after_percent``."""
    from qgis.core import QgsProcessingFeedback

    class CancelMidway(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802 - QGIS API
            super().setProgress(progress)
            if progress > after_percent:
                self.cancel()

    return CancelMidway()
