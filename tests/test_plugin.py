"""The QGIS plugin entry points and metadata."""
import configparser

from qgis.core import QgsApplication

from conftest import REPO


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
    assert "http" not in "".join(general.values()), "no placeholder URLs"


def test_class_factory_registers_and_unload_removes(qgis_iface, qgis_processing):
    import mamol
    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("mamol")
    if existing is not None:     # registered by another test's session fixture
        registry.removeProvider(existing)
    plugin = mamol.classFactory(qgis_iface)
    plugin.initProcessing()
    plugin.initGui()             # idempotent: still exactly one provider
    provider = registry.providerById("mamol")
    assert provider is not None
    assert [a.id() for a in provider.algorithms()] == ["mamol:createsamplescene"]
    plugin.unload()
    assert registry.providerById("mamol") is None
    if existing is not None:
        from mamol.algorithms.provider import MamolProvider
        registry.addProvider(MamolProvider())
