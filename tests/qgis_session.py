"""One headless QGIS application for the session, started on import, before any test module
of the QGIS tiers is imported (tests/qgis/conftest.py and tests/install/conftest.py import
this first), with its profile in QGIS_CUSTOM_CONFIG_PATH (the Makefile's
``.build/qgis-profile``; the same folder when pytest runs bare), so nothing writes a QGIS
profile into the repository. Also the QGIS helpers those tiers share."""
import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import types

import pytest

from support import PLUGINS_DIR, REPO

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", str(REPO / ".build" / "qgis-profile"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each pytest-xdist worker runs a QGIS of its own: a profile of its own too, so that one
    # worker's settings (the model environment, the weights cache) never reach another's.
    os.environ["QGIS_CUSTOM_CONFIG_PATH"] = os.path.join(
        os.environ["QGIS_CUSTOM_CONFIG_PATH"], "xdist-" + os.environ["PYTEST_XDIST_WORKER"])
from qgis.core import QgsApplication, QgsSettings  # noqa: E402 - after the environment it reads

QGIS_APP = QgsApplication([], False)
QGIS_APP.initQgis()
# QGIS's own Python plugins (Processing) for ``import processing``
_QGIS_PYTHON_PLUGINS = os.path.join(QGIS_APP.pkgDataPath(), "python", "plugins")
if _QGIS_PYTHON_PLUGINS not in sys.path:
    sys.path.append(_QGIS_PYTHON_PLUGINS)
_running = True


def shut_down():
    """Called once by the root conftest at the end of the session."""
    global _running
    if _running:
        from qgis.PyQt.QtCore import QThreadPool
        QThreadPool.globalInstance().waitForDone()
        QGIS_APP.exitQgis()
        _running = False


def recording_feedback():
    """A QgsProcessingFeedback that keeps its info lines (``.info``), warnings
    (``.warnings``), debug lines (``.debug``) and progress values (``.progress_values``)
    besides passing them on."""
    from qgis.core import QgsProcessingFeedback

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.info, self.warnings, self.debug, self.progress_values = [], [], [], []

        def setProgress(self, progress):  # noqa: N802 - QGIS API
            self.progress_values.append(progress)
            super().setProgress(progress)

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


def cancelling_feedback(after_percent: float):
    """A QgsProcessingFeedback that asks to cancel once progress passes ``after_percent``."""
    from qgis.core import QgsProcessingFeedback

    class CancelMidway(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802 - QGIS API
            super().setProgress(progress)
            if progress > after_percent:
                self.cancel()

    return CancelMidway()


@contextlib.contextmanager
def kept_setting(key: str):
    """QgsSettings for a test that changes ``key``: its value is put back afterwards."""
    settings = QgsSettings()
    before = settings.value(key, None)
    try:
        yield settings
    finally:
        if before is None:
            settings.remove(key)
        else:
            settings.setValue(key, before)


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
    from mamol.algorithms.provider import MamolProvider
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("mamol")
    if provider is None:
        provider = MamolProvider()
        assert registry.addProvider(provider)
    yield provider


@pytest.fixture(scope="module")
def qgis_env(tmp_path_factory):
    """The environment of a ``qgis_process.bin`` with an isolated profile of its own in which
    the plugin is enabled (skips where qgis_process is not installed)."""
    if shutil.which("qgis_process.bin") is None:
        pytest.skip("qgis_process.bin is not installed")
    profile = tmp_path_factory.mktemp("qgis-profile")
    runtime = tmp_path_factory.mktemp("xdg-runtime")
    runtime.chmod(0o700)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(profile),
               QGIS_PLUGINPATH=str(PLUGINS_DIR), XDG_RUNTIME_DIR=str(runtime),
               PYTHONPATH=sysconfig.get_paths()["purelib"])
    enabled = qgis_process(env, "plugins", "enable", "mamol")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return env


def qgis_process(env, *args, timeout=300):
    """Run ``qgis_process.bin ARGS`` to the end; the completed process."""
    return subprocess.run(["qgis_process.bin", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
