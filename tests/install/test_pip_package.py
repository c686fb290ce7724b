"""``pip install .`` (pyproject.toml): the wheel holds the QGIS-free engine and nothing of the
plugin, its ``mamol`` command runs the engine, and a missing GDAL is a message, not a
traceback. Built offline from a copy of the tree with the venv's own setuptools, and not
installed here: the project's one install of it, from PyPI into a bare Debian 13 root, is
``make test-pip`` (.ci/pip-root), which also checks what the installed wheel's ``mamol``
command prints and that ``mamol`` imports from the venv's site-packages."""
import configparser
import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from support import PLUGINS_DIR, REPO

# What `pip install .` reads; copied so that setuptools' build/ and egg-info stay out of
# the repository (and a stale build/ there cannot leak into the wheel).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "metadata.txt", "__init__.py", "__main__.py",
           "mamol_plugin.py", "core", "engine", "training", "algorithms", "resources", "tests")
QGIS_IMPORT = re.compile(r"^\s*(from|import)\s+(qgis|PyQt5|PyQt6|processing)\b", re.MULTILINE)


def _setuptools_builds_wheels() -> bool:
    """pyproject.toml's build needs setuptools ≥ 77 (its SPDX `license`), which builds wheels
    by itself (no wheel package); without one here, the wheel cannot be built offline."""
    try:
        import setuptools
    except ImportError:
        return False
    major = int(setuptools.__version__.split(".")[0])
    return major >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if not _setuptools_builds_wheels():
        pytest.skip("this Python has no setuptools that builds wheels offline")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                           "--no-build-isolation", "-q", "-w", str(work / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("mamol-*.whl")
    return built


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_pyproject_version_is_the_plugin_version():
    metadata = configparser.ConfigParser()
    metadata.read(REPO / "metadata.txt", encoding="utf-8")
    assert _pyproject()["project"]["version"] == metadata["general"]["version"]


@pytest.mark.subprocess
def test_wheel_holds_the_engine_and_nothing_of_the_plugin(wheel):
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    modules = {f"mamol/{path.relative_to(REPO).as_posix()}"
               for folder in ("core", "training") for path in (REPO / folder).glob("*.py")}
    assert modules <= names, modules - names
    assert {"mamol/__init__.py", "mamol/__main__.py",
            "mamol/resources/model_configs/mamol-tiny-vit.json",
            "mamol/resources/report/report.html.j2", "mamol/resources/report/macros.html.j2",
            "mamol/resources/report/style.css"} <= names
    package_files = [n for n in names if not n.startswith("mamol-")]
    assert all(n.startswith("mamol/") for n in package_files), package_files
    for unwanted in ("mamol/algorithms/", "mamol/mamol_plugin.py", "mamol/tests/",
                     "mamol/bench/", "mamol/packaging/", "mamol/resources/screenshots/",
                     "mamol/resources/icon.svg"):
        assert not [n for n in names if n.startswith(unwanted)], unwanted
    importing_qgis = [n for n in names if n.endswith(".py")
                      and QGIS_IMPORT.search(archive.read(n).decode("utf-8"))]
    assert not importing_qgis


@pytest.mark.subprocess
def test_wheel_metadata_names_the_dependencies_and_the_gdal_extra(wheel):
    archive = zipfile.ZipFile(wheel)
    info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = archive.read(info).decode("utf-8")
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(.*)$", metadata, re.MULTILINE)
    plain = {name.lower().replace("_", "-") for name, rest in requires if "extra ==" not in rest}
    assert {"torch", "torchvision", "open-clip-torch", "safetensors", "numpy", "jinja2",
            "matplotlib"} <= plain
    assert [name for name, rest in requires if 'extra == "gdal"' in rest] == ["gdal-wheel"]
    assert "Requires-Python: >=3.10" in metadata
    entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert re.search(r"^mamol = mamol\.engine\.console:main$", entry_points, re.MULTILINE)


NO_GDAL = textwrap.dedent("""
    import importlib.abc, sys

    class NoGdal(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "osgeo":
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoGdal())
    sys.path.insert(0, sys.argv[1])
    from mamol.engine.console import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.subprocess
@pytest.mark.parametrize("progress", ["plain", "json"])
def test_missing_gdal_says_how_to_install_it(tmp_path, progress):
    done = subprocess.run([sys.executable, "-c", NO_GDAL, str(PLUGINS_DIR), "scene",
                           "--output-folder", str(tmp_path / "scene"), "--progress", progress],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    if progress == "json":
        event = json.loads(line)
        assert event["event"] == "error" and event["kind"] == "input"
        message = event["message"]
    else:
        assert line.startswith("error: ")
        message = line
    assert "GDAL's Python bindings" in message and 'pip install "mamol[gdal]"' in message
    assert not (tmp_path / "scene").exists()


@pytest.mark.subprocess
def test_the_plugin_zip_leaves_the_pip_files_out(tmp_path):
    out = tmp_path / "mamol.zip"
    subprocess.run([sys.executable, str(REPO / "packaging" / "build_zip.py"), "--out", str(out)],
                   check=True, capture_output=True)
    names = zipfile.ZipFile(out).namelist()
    assert "mamol/__main__.py" in names and "mamol/engine/console.py" in names
    assert not [n for n in names if n.endswith("pyproject.toml") or ".egg-info" in n
                or n.startswith("mamol/build/")]
