"""``make package``'s zip is what QGIS's "Install from ZIP" accepts, and what plugins.qgis.org
would accept (``packaging/check_zip.py``, our checker of the site's rules, run over it)."""
import configparser
import functools
import http.server
import importlib.util
import re
import subprocess
import sys
import threading
import zipfile

import pytest

from support import REPO

pytestmark = pytest.mark.subprocess   # every test starts a child process


@functools.lru_cache(maxsize=None)
def check_zip():
    """packaging/check_zip.py as a module (packaging/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_zip",
                                                  REPO / "packaging" / "check_zip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    """The ZIP as `make package` builds it (build_zip.py checks it: its exit status)."""
    out = tmp_path_factory.mktemp("package") / "mamol.zip"
    done = subprocess.run([sys.executable, str(REPO / "packaging" / "build_zip.py"),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passes the plugin repository's checks" in done.stdout
    return out


def rewritten(source, out, drop=(), add=(), metadata=None):
    """A copy of the ZIP ``source`` without the entries in ``drop``, with ``add``'s
    (name, bytes) entries, and with metadata.txt's [general] keys changed (None removes)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(out, "w") as copy:
        for name in original.namelist():
            if name in drop:
                continue
            data = original.read(name)
            if name == "mamol/metadata.txt" and metadata:
                parser = configparser.ConfigParser(interpolation=None)
                parser.optionxform = str
                parser.read_string(data.decode())
                for key, value in metadata.items():
                    if value is None:
                        parser.remove_option("general", key)
                    else:
                        parser.set("general", key, value)
                lines = [f"{key}={value}" for key, value in parser.items("general")]
                data = ("[general]\n" + "\n".join(lines) + "\n").encode()
            copy.writestr(name, data)
        for name, data in add:
            copy.writestr(name, data)
    return out


def test_the_built_zip_passes_the_plugin_repository_rules(built_zip):
    assert check_zip().problems(built_zip) == []
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read_string(zipfile.ZipFile(built_zip).read("mamol/metadata.txt").decode())
    assert metadata["general"]["qgisMaximumVersion"] == "4.99"
    assert zipfile.ZipFile(built_zip).read("mamol/LICENSE").startswith(
        b"                    GNU GENERAL PUBLIC LICENSE\n                       Version 2")


@pytest.mark.parametrize("change, expected", [
    (dict(drop=("mamol/LICENSE",)), "mamol/LICENSE is missing"),
    (dict(metadata={"tracker": None}), "lacks 'tracker'"),
    (dict(metadata={"email": None, "repository": None}), "lacks 'email'"),
    (dict(metadata={"homepage": None}), "'homepage' must be a URL"),
    (dict(metadata={"repository": "http://repo"}), "'repository' must be a URL"),
    (dict(metadata={"qgisMaximumVersion": None}), "qgisMaximumVersion is 3.99"),
    (dict(metadata={"supportsQt6": "True"}), "'supportsQt6' is deprecated"),
    (dict(metadata={"author": "A/B"}), "must not contain '/'"),
    (dict(metadata={"icon": "resources/none.svg"}), "the icon resources/none.svg"),
    (dict(add=(("mamol/core/__pycache__/x.cpython-311.pyc", b""),)), "compiled Python"),
    (dict(add=(("mamol/.git/HEAD", b""),)), "a .git folder is refused"),
    (dict(add=(("other/readme.txt", b""),)), "must hold one folder"),
])
def test_the_checker_names_each_broken_rule(built_zip, tmp_path, change, expected):
    broken = rewritten(built_zip, tmp_path / "broken.zip", **change)
    found = check_zip().problems(broken)
    assert any(expected in problem for problem in found), found
    done = subprocess.run([sys.executable, str(REPO / "packaging" / "check_zip.py"),
                           str(broken)], capture_output=True, text=True)
    assert done.returncode == 1 and expected in done.stderr


def test_online_the_checker_fetches_the_urls_as_the_site_does(built_zip, tmp_path,
                                                               monkeypatch):
    """The site refuses a tracker, repository or homepage that answers 400 or more."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server API
            self.send_response(200 if self.path == "/ok" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        checked = rewritten(built_zip, tmp_path / "urls.zip", metadata={
            "tracker": f"{base}/ok", "repository": f"{base}/ok", "homepage": f"{base}/gone"})
        assert check_zip().problems(checked) == []
        assert check_zip().problems(checked, online=True) == [
            f"metadata.txt's 'homepage' ({base}/gone) answers HTTP 404"]
    finally:
        server.shutdown()
        server.server_close()


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


def test_the_plugin_links_to_docs_only_on_the_web():
    """docs/ stays out of the ZIP (above): the plugin reaches it only through its
    algorithms' Help pages (``HELP_PAGE``), which open on the repository's web site
    (tests/qgis/test_plugin.py checks the URLs); a file link would be dead once installed."""
    shown = [REPO / "metadata.txt", REPO / "mamol_plugin.py",
             *sorted((REPO / "algorithms").rglob("*.py"))]
    pages = []
    for path in shown:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.fullmatch(r'\s*HELP_PAGE = "(.+)"', line)
            if match:
                pages.append(match.group(1))
            elif "docs/" in line:
                pytest.fail(f"{path.name} links to docs/ outside HELP_PAGE: {line.strip()}")
    assert "docs/training.md" in pages
    assert [page for page in pages if not (REPO / page.split("#")[0]).is_file()] == []


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
