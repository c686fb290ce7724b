"""Build the plugin zip that QGIS's "Install from ZIP" accepts.

The archive has one top folder, ``mamol/`` (the plugin's install name), holding the plugin
files only: no tests, benchmarks, build files or caches. ``docs/`` stays out as well: the
README links to it for readers of the repository, but nothing the installed plugin shows
(``metadata.txt``, the algorithms' help) does; tests/install/test_packaging.py checks both,
and a help link into ``docs/`` would have to add it to ``PLUGIN_FOLDERS``.

Needs only Python 3.9 or newer (no QGIS, no Debian packages), so it runs on Windows and
macOS as well. The version comes from ``metadata.txt``; the ZIP is then checked against the
plugin repository's rules (``packaging/check_zip.py``).

Usage: python3 packaging/build_zip.py [--out dist/mamol-<version>.zip]
"""
import argparse
import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "mamol"
PLUGIN_FILES = ("metadata.txt", "__init__.py", "__main__.py", "mamol_plugin.py", "README.md",
                "LICENSE")
PLUGIN_FOLDERS = ("algorithms", "core", "engine", "training", "resources")
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def plugin_files(root: Path = ROOT):
    """Yield (path on disk, path inside the archive) for every file that ships."""
    for name in PLUGIN_FILES:
        if (root / name).is_file():
            yield root / name, f"{PLUGIN_NAME}/{name}"
    for folder in PLUGIN_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts \
                    and not path.name.endswith(SKIPPED_SUFFIXES):
                yield path, f"{PLUGIN_NAME}/{path.relative_to(root).as_posix()}"


def plugin_version(root: Path = ROOT) -> str:
    """The version declared in ``metadata.txt``."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in plugin_files():
            archive.write(path, name)
    partial.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        help="zip file to write (default: dist/mamol-<version>.zip)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the plugin repository's checks (packaging/check_zip.py)")
    args = parser.parse_args()
    version = plugin_version()
    out = build(args.out or ROOT / "dist" / f"{PLUGIN_NAME}-{version}.zip")
    count = len(zipfile.ZipFile(out).namelist())
    print(f"wrote {out} ({count} files, version {version})")
    if args.no_check:
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import check_zip
    return check_zip.main([str(out)])


if __name__ == "__main__":
    sys.exit(main())
