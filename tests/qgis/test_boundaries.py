"""``core/`` and ``training/`` must work where QGIS and Qt cannot even be imported; so must
the plugin's QGIS-free modules (the child-process runner and the model-environment
installer), whose tests then need no QGIS."""
import subprocess
import sys
import textwrap

import pytest

from support import PLUGINS_DIR, REPO

pytestmark = pytest.mark.subprocess   # every test starts a child process

PROBE = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    class NoQgis(importlib.abc.MetaPathFinder):
        BLOCKED = ("qgis", "PyQt5", "PyQt6", "sip", "processing")
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoQgis())
    sys.path.insert(0, sys.argv[1])
    imported = []
    for package_name in ("mamol.core", "mamol.engine", "mamol.training"):
        package = importlib.import_module(package_name)
        imported.append(package_name)
        for info in pkgutil.walk_packages(getattr(package, "__path__", ()),
                                          package_name + "."):
            if info.name.endswith(".__main__"):
                continue  # the CLI entry point runs on import
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = [m for m in sys.modules if m.split(".")[0] in NoQgis.BLOCKED]
    assert not leaked, leaked
    print("\\n".join(imported))
""")


def test_core_and_training_import_without_qgis():
    result = subprocess.run([sys.executable, "-c", PROBE, str(PLUGINS_DIR)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    expected = {f"mamol.{path.parent.name}.{path.stem}"
                for folder in ("core", "training") for path in (REPO / folder).glob("*.py")
                if path.stem not in ("__init__", "__main__")}
    assert expected <= imported, expected - imported
    assert "mamol.core.sample_scene" in imported


def test_the_probe_does_block_qgis():
    """Guards the test above: the blocker really makes ``qgis`` unimportable."""
    probe = PROBE.replace('("mamol.core", "mamol.engine", "mamol.training")',
                          '("mamol.algorithms.common",)')
    result = subprocess.run([sys.executable, "-c", probe, str(PLUGINS_DIR)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "blocked in this test" in result.stderr


def test_the_plugins_qgis_free_modules_import_without_qgis():
    modules = ("mamol.algorithms.child_process", "mamol.algorithms.model_env")
    probe = PROBE.replace('("mamol.core", "mamol.engine", "mamol.training")', repr(modules))
    result = subprocess.run([sys.executable, "-c", probe, str(PLUGINS_DIR)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(modules) <= set(result.stdout.split())
