"""All-or-nothing output: files are written into this run's hidden folder next to their
destination (:mod:`core.runs`) and moved into place only when every one of them is complete.

On an error or a cancel the run folder is removed, so the destination never holds a
half-written set of outputs; a killed run's folder is removed by the program that started it
or by the next run. A full disk is reported as such (:class:`NoSpaceError`), naming the
folder, its device and the sizes (:mod:`core.disk`).
"""
import contextlib
import os
from pathlib import Path
from typing import Dict, Iterator, Sequence

from . import runs
from .disk import ensure_writable_folder, reporting_full_disk
from .errors import MamolInputError


@contextlib.contextmanager
def staged_outputs(folder: Path, file_names: Sequence[str],
                   needed_bytes: int = 0) -> Iterator[Dict[str, Path]]:
    """Yield staging paths for ``file_names``; on success move them into ``folder``.

    Args:
        folder: destination folder (created if missing; must be writable).
        file_names: the final file names, relative to ``folder``.
        needed_bytes: about how much the outputs take (0: unknown), for the free-space
            check and the message of a full disk.

    Yields:
        Mapping from each file name to the path it must be written to, in this run's folder
        (:mod:`core.runs`). Other files that appear there (sidecars such as ``.aux.xml``)
        are moved too.
    """
    folder = ensure_writable_folder(folder)
    finals = [folder / name for name in file_names]
    with runs.locked_outputs(finals), runs.output_run_folder(folder) as staging, \
            reporting_full_disk([folder], needed_bytes, _names(finals)):
        yield {name: staging / name for name in file_names}
        missing = [name for name in file_names if not (staging / name).exists()]
        if missing:
            raise RuntimeError(f"internal error: outputs not written: {', '.join(missing)}")
        # Everything staged moves, so sidecars GDAL wrote (e.g. ``.aux.xml``) come along.
        for path in sorted(staging.iterdir()):
            if path.name != runs.OWNER_FILE:
                os.replace(path, folder / path.name)


def publish(temporary: Path, final: Path) -> None:
    """Move a finished temporary file over ``final``, with the permissions a newly created
    file gets (``mkstemp`` creates files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(temporary, 0o666 & ~mask)
    os.replace(temporary, final)


#: Sidecar files GDAL may write next to a raster (category names, statistics).
SIDECAR_SUFFIXES = (".aux.xml",)


@contextlib.contextmanager
def staged_files(finals: Sequence[Path], needed_bytes: int = 0) -> Iterator[Dict[Path, Path]]:
    """Yield a temporary path for each final path, in this run's folder beside it; on
    success move every file (and its GDAL sidecars) into place, on an error or a cancel
    remove them all.

    Unlike :func:`staged_outputs`, the files may live in different folders (e.g. a class
    raster and a probability raster the user put in two places). Each final path is locked
    for the run (:func:`core.runs.locked_outputs`).
    """
    finals = [Path(p) for p in finals]
    if len({p.resolve() for p in finals}) != len(finals):
        raise MamolInputError("Two outputs point to the same file; give each its own path.")
    for final in finals:
        ensure_writable_folder(final.parent)
    parents = list(dict.fromkeys(final.parent for final in finals))
    with contextlib.ExitStack() as stack:
        stack.enter_context(runs.locked_outputs(finals))
        folders = {parent: stack.enter_context(runs.output_run_folder(parent))
                   for parent in parents}
        stack.enter_context(reporting_full_disk(parents, needed_bytes, _names(finals)))
        temporaries = {final: folders[final.parent] / final.name for final in finals}
        yield temporaries
        for final, temporary in temporaries.items():
            if not temporary.exists():
                raise RuntimeError(f"internal error: output not written: {final}")
        for final, temporary in temporaries.items():
            publish(temporary, final)
            for suffix in SIDECAR_SUFFIXES:
                sidecar = Path(str(temporary) + suffix)
                stale = Path(str(final) + suffix)
                if sidecar.exists():
                    publish(sidecar, stale)
                elif stale.exists():
                    stale.unlink()


def _names(finals: Sequence[Path]) -> str:
    names = [f"'{Path(f).name}'" for f in finals]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
