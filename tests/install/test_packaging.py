"""``make package``'s zip is what QGIS's "Install from ZIP" accepts."""
import configparser
import subprocess
import sys
import zipfile

import pytest

from support import REPO

pytestmark = pytest.mark.subprocess   # every test starts a child process


def test_zip_has_one_top_folder_and_no_dev_files(tmp_path):
    out = tmp_path / "mamol.zip"
    subprocess.run([sys.executable, str(REPO / "packaging" / "build_zip.py"), "--out", str(out)],
                   check=True, capture_output=True)
    names = zipfile.ZipFile(out).namelist()
    assert {name.split("/")[0] for name in names} == {"mamol"}
    for required in ("mamol/metadata.txt", "mamol/__init__.py", "mamol/__main__.py",
                     "mamol/mamol_plugin.py",
                     "mamol/algorithms/provider.py", "mamol/algorithms/child_process.py",
                     "mamol/algorithms/model_env.py", "mamol/core/sample_scene.py",
                     "mamol/resources/icon.svg", "mamol/resources/report/report.html.j2",
                     "mamol/resources/report/macros.html.j2",
                     "mamol/resources/report/style.css"):
        assert required in names
    forbidden = ("tests/", "bench/", ".ci/", "Makefile", ".build", "__pycache__", ".pyc",
                 "packaging/", "docs/")
    assert not [n for n in names if any(part in n for part in forbidden)]
    metadata = configparser.ConfigParser()
    metadata.read_string(zipfile.ZipFile(out).read("mamol/metadata.txt").decode())
    assert metadata["general"]["icon"] in [n[len("mamol/"):] for n in names]


def test_nothing_the_plugin_shows_links_to_docs():
    """docs/ stays out of the ZIP (above) because neither the plugin's metadata nor the help
    of its algorithms points into it; a link there would be dead in an installed plugin."""
    shown = [REPO / "metadata.txt", REPO / "mamol_plugin.py",
             *sorted((REPO / "algorithms").rglob("*.py"))]
    linking = [path.name for path in shown
               if "docs/" in path.read_text(encoding="utf-8")]
    assert not linking, f"{linking} link to docs/: ship it in packaging/build_zip.py"


def test_the_installed_zip_runs_the_engine(tmp_path):
    """Unpacked as QGIS installs it, the plugin folder's parent is all ``python -m mamol``
    needs on its path: the algorithms launch the engine exactly so."""
    out = tmp_path / "mamol.zip"
    subprocess.run([sys.executable, str(REPO / "packaging" / "build_zip.py"), "--out", str(out)],
                   check=True, capture_output=True)
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(out).extractall(plugins)
    done = subprocess.run([sys.executable, "-m", "mamol", "scene", "--size", "128",
                           "--output-folder", str(tmp_path / "scene"), "--progress", "none"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"PYTHONPATH": str(plugins), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "scene" / "hs.tif").is_file()
