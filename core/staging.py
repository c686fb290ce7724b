"""All-or-nothing output: files are written into a hidden staging folder next to their
destination and moved into place only when every one of them is complete.

On an error or a cancel the staging folder is removed, so the destination never holds a
half-written set of outputs.
"""
import contextlib
import os
import shutil
import tempfile
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
        reason = exc.strerror or exc.__class__.__name__
        raise MamolInputError(
            f"Cannot write to the output folder '{folder}' ({reason}). "
            "Choose a folder you have write access to.") from exc
    return folder


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
