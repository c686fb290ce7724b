"""All-or-nothing output: files are written into a hidden staging folder next to their
destination and moved into place only when every one of them is complete.

On an error or a cancel the staging folder is removed, so the destination never holds a
half-written set of outputs.
"""
import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Dict, Iterator, Sequence

from .errors import MamolInputError


def ensure_writable_folder(folder: Path) -> Path:
    """Create ``folder`` if needed and prove it is writable; raise a user-facing error if not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".mamol-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise MamolInputError(
            f"Cannot write to the output folder '{folder}': {_why_not_writable(folder, exc)}. "
            "Choose a folder you have write access to.") from exc
    return folder


def _why_not_writable(folder: Path, exc: OSError) -> str:
    """What is true about a folder that refused a file: the operating system's own message
    can mislead (a folder under /proc exists, yet creating a file there says "No such file
    or directory")."""
    detail = exc.strerror or exc.__class__.__name__
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            return "the folder exists, but you have no permission to write in it"
        return f"the folder exists, but its file system refuses new files there ({detail})"
    if folder.exists():
        return "it is a file, not a folder"
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"'{parent}' is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return (f"the folder does not exist, and you have no permission to create it in "
                f"'{parent}'")
    return (f"the folder does not exist, and the file system of '{parent}' refuses to create "
            f"it ({detail})")


@contextlib.contextmanager
def staged_outputs(folder: Path, file_names: Sequence[str]) -> Iterator[Dict[str, Path]]:
    """Yield staging paths for ``file_names``; on success move them into ``folder``.

    Args:
        folder: destination folder (created if missing; must be writable).
        file_names: the final file names, relative to ``folder``.

    Yields:
        Mapping from each file name to the path it must be written to. Other files that
        appear in the staging folder (sidecars such as ``.aux.xml``) are moved too.
    """
    folder = ensure_writable_folder(folder)
    staging = Path(tempfile.mkdtemp(prefix=".mamol-staging-", dir=folder))
    try:
        yield {name: staging / name for name in file_names}
        missing = [name for name in file_names if not (staging / name).exists()]
        if missing:
            raise RuntimeError(f"internal error: outputs not written: {', '.join(missing)}")
        # Everything staged moves, so sidecars GDAL wrote (e.g. ``.aux.xml``) come along.
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
def staged_files(finals: Sequence[Path]) -> Iterator[Dict[Path, Path]]:
    """Yield a hidden temporary path next to each final path; on success move every file
    (and its GDAL sidecars) into place, on an error or a cancel remove them all.

    Unlike :func:`staged_outputs`, the files may live in different folders (e.g. a class
    raster and a probability raster the user put in two places).
    """
    finals = [Path(p) for p in finals]
    if len({p.resolve() for p in finals}) != len(finals):
        raise MamolInputError("Two outputs point to the same file; give each its own path.")
    for final in finals:
        ensure_writable_folder(final.parent)
    token = uuid.uuid4().hex[:8]
    temporaries = {final: final.with_name(f".{final.name}.{token}.partial") for final in finals}
    try:
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
    finally:
        for temporary in temporaries.values():
            for path in (temporary, *(Path(str(temporary) + s) for s in SIDECAR_SUFFIXES)):
                if path.exists():
                    path.unlink()
