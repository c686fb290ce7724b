"""Fixtures and rules of every tier. Nothing here imports QGIS: tests/core, tests/training
and tests/engine run with only the engine's dependencies (``make test-core``; in the bare pip
root, against the installed wheel). The QGIS tiers (tests/qgis, tests/install) boot one
headless QGIS per session in their own conftest.py, through qgis_session.py.

The plugin is imported as the package ``mamol`` (its install name), from
``<plugins folder>/mamol``, a link to the repository that ``make setup`` creates in
QGIS_PLUGINPATH (``.build/plugins`` unless the Makefile is told another build folder); this
file creates it too so that a bare ``pytest`` works after the venv exists. With
MAMOL_TEST_INSTALLED=1 the pip-installed ``mamol`` is tested instead and nothing is linked.

Which tier runs where (Debian 12, Debian 13, the bare pip root) is in tests/README.md."""
import os
import sys
from pathlib import Path

# Under pytest-xdist each worker runs one thread (and so do the engine children it starts),
# so that two workers do not oversubscribe two cores; set before NumPy or torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402 - after the thread setting

from support import (INSTALLED, PLUGINS_DIR, REPO, scaled_copy,  # noqa: E402
                     tiny_training_config)

TESTS = Path(__file__).resolve().parent
# The algorithms run the engine in a child Python: this one (the project's venv), unless the
# caller chose another.
os.environ.setdefault("MAMOL_PYTHON", sys.executable)

if not INSTALLED:
    PLUGINS_DIR.mkdir(parents=True, exist_ok=True)
    if not (PLUGINS_DIR / "mamol").exists():
        if (PLUGINS_DIR / "mamol").is_symlink():   # a link made elsewhere (another root)
            (PLUGINS_DIR / "mamol").unlink()
        os.symlink(REPO, PLUGINS_DIR / "mamol")
    if str(PLUGINS_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGINS_DIR))
else:
    import mamol
    if Path(mamol.__file__).resolve().parent == REPO:
        raise RuntimeError(f"MAMOL_TEST_INSTALLED=1 but mamol imports from the sources "
                           f"({mamol.__file__}), not from an installed wheel")

# Tiers whose every test also runs on Debian 13 (see tests/README.md): everything that goes
# through QGIS or an install. Elsewhere a test opts in with @pytest.mark.platform.
PLATFORM_TIERS = ("qgis", "install")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.resolve().relative_to(TESTS).parts[0]
        if tier in PLATFORM_TIERS:
            item.add_marker(pytest.mark.platform)
        if tier == "install":
            item.add_marker(pytest.mark.install)
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_unconfigure(config):
    session = sys.modules.get("qgis_session")
    if session is not None:   # a QGIS tier ran: no QGIS task may outlive the application
        session.shut_down()


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 128 x 128 sample scene written once per session (seed 3)."""
    from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene
    folder = tmp_path_factory.mktemp("scene128")
    return write_sample_scene(SampleSceneConfig(size=128, seed=3), folder)


@pytest.fixture(scope="session")
def tiny_model(small_scene, tmp_path_factory):
    """A quickly trained model (tiny random backbone, P = 5, 2 epochs, η = 50 %) on the
    small scene, for the classification tests."""
    from mamol.training.trainer import train_model
    folder = tmp_path_factory.mktemp("tiny-model")
    return train_model(tiny_training_config(small_scene, folder / "tiny.mamol")).model_path


@pytest.fixture(scope="session")
def lidar_in_centimetres(small_scene, tmp_path_factory):
    """The small scene's LiDAR written in centimetres: values far from the training data."""
    folder = tmp_path_factory.mktemp("centimetres")
    return scaled_copy(small_scene.lidar, folder / "lidar_cm.tif", 100.0)
