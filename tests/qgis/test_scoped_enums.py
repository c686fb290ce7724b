"""No unscoped enum value anywhere in the plugin's Python (shipped code, packaging, tests):
QGIS 4 (Qt6) removes names such as ``QgsProcessingParameterDefinition.FlagAdvanced`` and
``QImage.Format_Indexed8``, and plugins.qgis.org's Qt6 check flags them. Each
``Name.attr[.attr...]`` whose ``Name`` is imported from QGIS or PyQt is resolved in the
running QGIS: an enum value read from a class that is not its own enum type is unscoped.
The scoped way is ``QImage.Format.Format_Indexed8`` for Qt and algorithms/qgis_compat.py
for QGIS's enums that moved to ``Qgis`` in 3.36."""
import ast
import enum
import importlib

import pytest
from support import REPO

#: top-level packages whose names are checked (``qgis.PyQt`` re-exports PyQt5 or PyQt6)
CHECKED_PACKAGES = ("qgis", "PyQt5", "PyQt6")
#: folders below the clone that hold no source of ours (venvs, builds, caches)
SKIPPED_FOLDERS = {"build", "dist", "__pycache__", "node_modules"}


def python_files():
    """Every .py of the clone outside hidden, build and cache folders."""
    return sorted(path for path in REPO.rglob("*.py")
                  if not any(part.startswith(".") or part in SKIPPED_FOLDERS
                             for part in path.relative_to(REPO).parts[:-1]))


def imported_names(tree) -> dict:
    """Local name -> the object it is bound to, for every ``from <QGIS/PyQt module> import
    name [as alias]`` anywhere in ``tree`` (tests import inside their functions)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in CHECKED_PACKAGES:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:   # a submodule not imported yet: from qgis import core
                    names[alias.asname or alias.name] = importlib.import_module(
                        f"{node.module}.{alias.name}")
    return names


def is_enum_value(value) -> bool:
    """A member of a Python enum (PyQt6, QGIS >= 3.36's Qgis enums under Qt6) or of a sip
    enum (PyQt5: its type is a ``sip.enumtype``)."""
    return isinstance(value, enum.Enum) or type(type(value)).__name__ == "enumtype"


def chain(node):
    """``['QImage', 'Format', 'Format_Indexed8']`` for the expression QImage.Format.Format_
    Indexed8, or None when it does not start with a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id] + parts[::-1] if isinstance(node, ast.Name) else None


def unscoped_enums(source: str, filename: str = "<source>") -> list:
    """``file:line: dotted.name`` for each enum value ``source`` reads from a class other
    than its own enum type. A name this QGIS lacks is not judged (a version's own branch)."""
    tree = ast.parse(source, filename)
    names = imported_names(tree)
    found = []
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts = chain(node)
        if not parts or parts[0] not in names:
            continue
        owner = names[parts[0]]
        for depth, name in enumerate(parts[1:], start=2):
            value = getattr(owner, name, None)
            if value is None:
                break
            if is_enum_value(value) and owner is not type(value):
                found.append(f"{filename}:{node.lineno}: {'.'.join(parts[:depth])} (scoped: "
                             f"{type(value).__qualname__}.<member>)")
                break
            owner = value
    return found


def test_the_plugin_reads_every_enum_value_through_its_enum_type():
    files = python_files()
    assert REPO / "algorithms" / "common.py" in files and len(files) > 50
    found = [line for path in files
             for line in unscoped_enums(path.read_text(encoding="utf-8"),
                                        str(path.relative_to(REPO)))]
    assert not found, "unscoped enum values (QGIS 4 drops them):\n" + "\n".join(found)


@pytest.mark.parametrize("expression, unscoped", [
    ("QgsProcessingParameterDefinition.FlagAdvanced", True),
    ("QgsProcessingParameterNumber.Double", True),
    ("QImage.Format_Indexed8", True),
    ("Qt.ThresholdDither", True),
    ("QgsProcessingParameterDefinition.Flag.FlagAdvanced", False),
    ("QImage.Format.Format_Indexed8", False),
    ("Qt.ImageConversionFlag.ThresholdDither", False),
    ("QgsProcessingContext.LayerDetails", False),
    ("QgsApplication.processingRegistry", False),
])
def test_the_scan_tells_unscoped_from_scoped(expression, unscoped):
    """The scan itself, on names PyQt5's QGIS (3.22 to 3.44) has both ways."""
    source = ("from qgis.core import QgsApplication, QgsProcessingContext, "
              "QgsProcessingParameterDefinition, QgsProcessingParameterNumber\n"
              "from qgis.PyQt.QtCore import Qt\nfrom qgis.PyQt.QtGui import QImage\n"
              f"x = {expression}\n")
    assert bool(unscoped_enums(source)) == unscoped


def test_the_compat_names_have_qgis_documented_values():
    """Each algorithms/qgis_compat.py name is an enum value, and the one QGIS documents for
    it (the same on 3.22 and in ``Qgis``), whichever of the two names this QGIS took."""
    from mamol.algorithms import qgis_compat
    documented = {"NUMBER_INTEGER": 0, "NUMBER_DOUBLE": 1, "FLAG_ADVANCED": 2,
                  "FLAG_OPTIONAL": 8, "SOURCE_VECTOR_POLYGON": 2, "FILE_BEHAVIOR_FILE": 0,
                  "FILE_BEHAVIOR_FOLDER": 1}
    constants = {name for name in vars(qgis_compat) if name.isupper()}
    assert constants == set(documented)
    for name, number in documented.items():
        value = getattr(qgis_compat, name)
        assert is_enum_value(value), name
        assert int(getattr(value, "value", value)) == number, name


def test_the_compat_flags_combine_with_this_qgis_flags():
    """Flags are sip ints with a ``Flags`` wrapper on QGIS 3.22 and enum flags from 3.36:
    ``|`` and ``&`` with the compat names work on both (the Advanced group, RasterFile-
    Parameter's clone keeping Optional)."""
    from mamol.algorithms.common import RasterFileParameter
    from mamol.algorithms.qgis_compat import FLAG_ADVANCED, FLAG_OPTIONAL
    optional = RasterFileParameter("R", "raster", None, True)
    optional.setFlags(optional.flags() | FLAG_ADVANCED)
    copy = optional.clone()
    assert copy.flags() & FLAG_OPTIONAL and copy.flags() & FLAG_ADVANCED
    required = RasterFileParameter("R", "raster", None, False).clone()
    assert not required.flags() & FLAG_OPTIONAL and not required.flags() & FLAG_ADVANCED
