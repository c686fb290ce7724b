"""Shared fixtures. The plugin is imported as the package ``mamol`` (its install name), from
``.build/plugins/mamol``, a link to the repository that ``make setup`` creates; this file
creates it too so that a bare ``pytest`` works after the venv exists."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DIR = REPO / ".build" / "plugins"
SHARED_DATA = REPO.parent / "shared" / "data"

PLUGINS_DIR.mkdir(parents=True, exist_ok=True)
if not (PLUGINS_DIR / "mamol").exists():
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
