"""Check a plugin ZIP against the rules plugins.qgis.org applies on upload, before uploading.

The rules are those of the site's validator (the QGIS-Django project's
``qgis-app/plugins/validator.py``, read in December 2026), written here in our own words:

* the file is at most 25 MB and is a readable ZIP (no CRC errors);
* no entry name holds ``..`` or starts with ``/``; no ``.pyc`` file; no ``__pycache__``,
  ``.git`` or ``__MACOSX`` folder anywhere;
* one top folder (the site only warns about more), named with ASCII letters, digits, ``-``
  and ``_``, starting with a letter, holding ``__init__.py``, ``metadata.txt`` and ``LICENSE``
  (mandatory since June 2024);
* ``metadata.txt`` has a ``[general]`` section with ``name``, ``description``, ``version``,
  ``qgisMinimumVersion``, ``author``, ``email``, ``about``, ``tracker`` and ``repository``;
* ``tracker``, ``repository`` and ``homepage`` are URLs with a scheme and a host, and not the
  plugin builder's placeholders; the site also fetches each and refuses any that answers
  400 or above, or cannot be reached (``--online`` does that here too). ``homepage`` is
  optional in the site's list, but the URL check fails on a missing one, so it is needed;
* the author's name has no ``/``.

Rules of our own: the ``icon`` the metadata names is in the ZIP; ``qgisMaximumVersion`` is
4.x, since QGIS 4 offers a plugin only when that says so (an absent one counts as 3.99); and
no ``supportsQt6``, which QGIS 4 ignores and the site (now the QGIS-Plugins-Website project)
marks deprecated with a warning on upload since March 2026.

Usage: python3 packaging/check_zip.py dist/mamol-0.1.0.zip [--online]
"""
import argparse
import configparser
import re
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Dict, List
from urllib.parse import urlparse

MAX_BYTES = 25_000_000
REQUIRED_METADATA = ("name", "description", "version", "qgisMinimumVersion", "author",
                     "email", "about", "tracker", "repository")
#: The metadata URLs the site checks, with the placeholder it refuses for each.
CHECKED_URLS = {"tracker": "http://bugs", "repository": "http://repo",
                "homepage": "http://homepage"}
FORBIDDEN_FOLDERS = ("__MACOSX", ".git", "__pycache__")
PACKAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]+$")
BOOLEAN_METADATA = ("experimental", "deprecated", "server")


def problems(path: Path, online: bool = False) -> List[str]:
    """Every rule the ZIP at ``path`` breaks, in words; empty when it would be accepted."""
    if path.stat().st_size > MAX_BYTES:
        return [f"the file is {path.stat().st_size / 1e6:.1f} MB; the site takes at most "
                f"{MAX_BYTES / 1e6:.0f} MB"]
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return ["the file is not a readable ZIP"]
    with archive:
        names = archive.namelist()
        found = _entry_problems(names)
        bad = archive.testzip()
        if bad:
            found.append(f"the entry {bad} is damaged (CRC error)")
        tops = sorted({name.split("/")[0] for name in names})
        if len(tops) != 1 or "/" not in names[0]:
            return found + [f"the ZIP must hold one folder, the plugin; it holds {tops}"]
        top = tops[0]
        if not PACKAGE_NAME.match(top):
            found.append(f"the top folder {top!r} must start with an ASCII letter and hold "
                         "only ASCII letters, digits, '-' and '_'")
        for required in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{top}/{required}" not in names:
                found.append(f"{top}/{required} is missing")
        if f"{top}/metadata.txt" in names:
            metadata = _metadata(archive.read(f"{top}/metadata.txt"), found)
            found += _metadata_problems(metadata, top, names, online)
    return found


def _entry_problems(names: List[str]) -> List[str]:
    found = []
    for name in names:
        parts = name.split("/")
        if ".." in name or name.startswith("/"):
            found.append(f"{name}: entry names must not hold '..' or start with '/'")
        if ".pyc" in name:
            found.append(f"{name}: compiled Python files are refused")
        for folder in FORBIDDEN_FOLDERS:
            if folder in parts:
                found.append(f"{name}: a {folder} folder is refused")
    return found


def _metadata(raw: bytes, found: List[str]) -> Dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str            # the keys are case-sensitive (qgisMinimumVersion)
    try:
        parser.read_string(raw.decode("utf-8"))
    except (UnicodeDecodeError, configparser.Error) as error:
        found.append(f"metadata.txt cannot be read: {error}")
        return {}
    if not parser.has_section("general"):
        found.append("metadata.txt has no [general] section")
        return {}
    return {key: value.strip() for key, value in parser.items("general")}


def _metadata_problems(metadata: Dict[str, str], top: str, names: List[str],
                       online: bool) -> List[str]:
    if not metadata:
        return []
    found = [f"metadata.txt lacks '{key}'" for key in REQUIRED_METADATA
             if not metadata.get(key)]
    for key, placeholder in CHECKED_URLS.items():
        url = metadata.get(key, "")
        parsed = urlparse(url)
        if url == placeholder or not (parsed.scheme and parsed.netloc):
            found.append(f"metadata.txt's '{key}' must be a URL (https://…); it is {url!r}")
        elif online:
            reason = _unreachable(url)
            if reason:
                found.append(f"metadata.txt's '{key}' ({url}) {reason}")
    if "/" in metadata.get("author", ""):
        found.append("metadata.txt's 'author' must not contain '/'")
    for key in BOOLEAN_METADATA:
        if key in metadata and metadata[key].lower() not in ("true", "false", "1", "0"):
            found.append(f"metadata.txt's '{key}' must be True or False")
    icon = metadata.get("icon", "")
    if icon and f"{top}/{icon.removeprefix('./')}" not in names:
        found.append(f"the icon {icon} named in metadata.txt is not in the ZIP")
    if "supportsQt6" in metadata:
        found.append("metadata.txt's 'supportsQt6' is deprecated and ignored: remove it "
                     "(qgisMaximumVersion decides QGIS 4 compatibility)")
    maximum = metadata.get("qgisMaximumVersion", "3.99")
    if not maximum.startswith("4."):
        found.append(f"qgisMaximumVersion is {maximum}: QGIS 4 offers the plugin only with "
                     "a 4.x maximum (e.g. 4.99)")
    return found


def _unreachable(url: str) -> str:
    """Why ``url`` would fail the site's reachability check, or '' when it answers."""
    request = urllib.request.Request(url, method="HEAD",
                                     headers={"User-Agent": "Mozilla/5.0 (plugin check)"})
    try:
        with urllib.request.urlopen(request, timeout=20):
            return ""
    except urllib.error.HTTPError as error:
        error.close()
        return f"answers HTTP {error.code}" if error.code >= 400 else ""
    except (urllib.error.URLError, OSError) as error:
        return f"cannot be reached ({getattr(error, 'reason', error)})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip", type=Path, help="the plugin ZIP (make package writes dist/)")
    parser.add_argument("--online", action="store_true",
                        help="also fetch the tracker, repository and homepage URLs, as the "
                             "site does")
    args = parser.parse_args(argv)
    found = problems(args.zip, online=args.online)
    for problem in found:
        print(f"{args.zip.name}: {problem}", file=sys.stderr)
    if not found:
        print(f"{args.zip}: passes the plugin repository's checks"
              + ("" if args.online else " (URLs not fetched; --online does)"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
