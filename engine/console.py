"""The ``mamol`` command that ``pip install`` makes, and ``python -m mamol``: the engine
(:mod:`engine.main`), after one check.

Every engine command reads or writes rasters through GDAL's Python bindings (``osgeo``), and
without them the engine would stop in its argument parser with a traceback. Inside QGIS they
are always there; a pip-installed engine gets them from the ``gdal`` extra or from the
environment, and this module says so, in the engine's error format, when they are missing.
"""
import os
import sys
from typing import Optional, Sequence

from ..core.distributed import launched_world_size
from .channel import EXIT_INPUT, KIND_INPUT, Channel, json_requested

INSTALL_GDAL = (
    "Install them with 'pip install \"mamol[gdal]\"' (the gdal-wheel package, for Python "
    "3.12 and 3.13), or from conda-forge ('conda install -c conda-forge gdal'), or from your "
    "system's packages (Debian and Ubuntu: 'apt install python3-gdal', used from a venv "
    "made with --system-site-packages).")


def gdal_problem() -> Optional[str]:
    """What is wrong with GDAL's Python bindings in this Python, or None when they import."""
    try:
        from osgeo import gdal  # noqa: F401 - the import is the check
    except ImportError as exc:
        return (f"MaMOL needs GDAL's Python bindings (the module 'osgeo'), which do not "
                f"import in this Python ({sys.executable}): {exc}. {INSTALL_GDAL}")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one engine command; returns its exit status (2 when GDAL is missing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = gdal_problem()
    if problem is not None:
        mode = "json" if json_requested(argv) else "plain"
        Channel(mode, "setup").error(KIND_INPUT, problem)
        return EXIT_INPUT
    from .main import main as run   # after the check: the commands' modules import GDAL
    status = run(argv)
    if launched_world_size() > 1:
        # A rank under torchrun: its outcome is decided and reported, its outputs are in
        # place or removed and the process group is left. Exit now, without the
        # interpreter's teardown, in which gloo's threads sometimes abort the process after
        # its last line ("terminate called without an active exception", then SIGABRT or
        # SIGSEGV: seen on rank 0 in 5 of 120 runs of a failing two-rank classify), which
        # would replace the rank's own exit status with a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
