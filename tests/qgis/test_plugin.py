"""The QGIS plugin entry points and metadata."""
import configparser

import pytest
from qgis.core import QgsApplication

from support import REPO


def test_metadata_has_required_fields():
    parser = configparser.ConfigParser()
    parser.read(REPO / "metadata.txt")
    general = parser["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "tags", "icon"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert (REPO / general["icon"]).is_file()
    # The Plugin Manager's links (the full rules: tests/install/test_packaging.py)
    assert general["homepage"] == general["repository"]
    assert general["repository"].startswith("https://")
    assert general["tracker"] == general["repository"] + "/issues"


class MenuRecordingIface:
    """A stand-in for QGIS's ``iface`` that keeps the plugin menu's entries."""

    def __init__(self):
        self.menu = []

    def mainWindow(self):  # noqa: N802 - QGIS API
        return None

    def addPluginToMenu(self, menu, action):  # noqa: N802 - QGIS API
        self.menu.append((menu, action))

    def removePluginMenu(self, menu, action):  # noqa: N802 - QGIS API
        self.menu.remove((menu, action))


def test_class_factory_registers_and_unload_removes(qgis_processing):
    import mamol
    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("mamol")
    if existing is not None:     # registered by another test's session fixture
        registry.removeProvider(existing)
    iface = MenuRecordingIface()
    plugin = mamol.classFactory(iface)
    plugin.initProcessing()
    assert iface.menu == []      # headless: no menu
    plugin.initGui()             # idempotent: still exactly one provider
    provider = registry.providerById("mamol")
    assert provider is not None
    assert sorted(a.id() for a in provider.algorithms()) == ["mamol:checkenvironment",
                                                           "mamol:classify",
                                                           "mamol:createsamplescene",
                                                           "mamol:evaluate",
                                                           "mamol:installdependencies",
                                                           "mamol:removeenvironment",
                                                           "mamol:trainmodel"]
    assert [(menu, action.text()) for menu, action in iface.menu] == [
        ("&MaMOL", "Install dependencies…")]
    plugin.unload()
    assert iface.menu == []
    assert registry.providerById("mamol") is None
    if existing is not None:
        from mamol.algorithms.provider import MamolProvider
        registry.addProvider(MamolProvider())


@pytest.mark.subprocess
def test_provider_loads_without_importing_torch():
    """Heavy imports are lazy (DESIGN §7): the provider and its algorithms load without
    PyTorch, so QGIS starts fast and can say what is missing when an algorithm runs."""
    import subprocess
    import sys

    from support import PLUGINS_DIR
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); "
             "from mamol.algorithms.provider import MamolProvider; "
             "from mamol.algorithms.trainmodel import TrainModelAlgorithm; "
             "from mamol.algorithms.classify import ClassifyAlgorithm; "
             "from mamol.algorithms.evaluate import EvaluateAlgorithm; "
             "TrainModelAlgorithm().initAlgorithm(); ClassifyAlgorithm().initAlgorithm(); "
             "from mamol.algorithms.installdependencies import InstallDependenciesAlgorithm; "
             "EvaluateAlgorithm().initAlgorithm(); InstallDependenciesAlgorithm().initAlgorithm(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'open_clip', 'torchvision')))")
    done = subprocess.run([sys.executable, "-c", probe, str(PLUGINS_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_algorithm_has_a_help_page_on_the_repository(qgis_processing):
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "metadata.txt")
    prefix = parser["general"]["repository"] + "/blob/main/"
    from mamol.algorithms.provider import MamolProvider
    provider = MamolProvider()
    provider.loadAlgorithms()
    algorithms = provider.algorithms()
    assert len(algorithms) >= 5
    for algorithm in algorithms:
        url = algorithm.helpUrl()
        assert url.startswith(prefix), (algorithm.id(), url)
        assert (REPO / url[len(prefix):].split("#")[0]).is_file(), (algorithm.id(), url)


def test_unload_survives_processing_unloaded_first(qgis_processing, monkeypatch):
    """At QGIS exit the Processing plugin may be unloaded before ours; QGIS then deletes its
    modules from sys.modules, and importing ProcessingConfig again gives a fresh class
    without our setting (the KeyError 'MAMOL_WEIGHTS_CACHE' once seen at exit)."""
    import sys

    from processing.core.ProcessingConfig import ProcessingConfig

    from mamol.algorithms.common import WEIGHTS_CACHE_SETTING
    from mamol.algorithms.provider import MamolProvider
    registered = dict(ProcessingConfig.settings)            # the session's, put back below
    provider = MamolProvider()
    assert provider.load()
    assert WEIGHTS_CACHE_SETTING in ProcessingConfig.settings
    for name in [name for name in sys.modules if name.split(".")[0] == "processing"]:
        monkeypatch.delitem(sys.modules, name)      # as qgis.utils.unloadPlugin does
    provider.unload()
    assert WEIGHTS_CACHE_SETTING not in ProcessingConfig.settings
    provider.unload()                               # twice: still no KeyError
    ProcessingConfig.settings.update(registered)
