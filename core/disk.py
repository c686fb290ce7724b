"""Folders and disks that outputs go to: whether a folder can take files (said truthfully)
and a full disk named as such (:class:`NoSpaceError`, with the folder, its device and the
sizes), before the first write where the sizes are known and when a write fails."""
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

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


#: Below this much free space a failed write counts as a full disk even when the error
#: does not say so (GDAL reports "WriteEncodedTile/Strip() failed").
NEARLY_FULL_BYTES = 1 << 20
#: Outputs whose uncompressed size exceeds the free space this many times over cannot fit,
#: however well they compress: refused before anything is written.
COMPRESSION_ALLOWANCE = 10


class NoSpaceError(MamolInputError):
    """A disk filled up (or would have): the message names the folder, the device and the
    sizes."""


def _megabytes(count: int) -> str:
    return f"{count / 2 ** 20:.1f} MB"


def _mount_point(folder: Path) -> Path:
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: Path) -> Optional[int]:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def no_space_message(folder: Path, what: str, needed_bytes: int = 0) -> str:
    free = free_bytes(folder)
    sizes = [f"about {_megabytes(needed_bytes)} needed" if needed_bytes else "",
             f"{_megabytes(free)} free" if free is not None else ""]
    sizes_text = ", ".join(s for s in sizes if s)
    return (f"No space left on {_mount_point(folder)} (folder '{folder}') while writing "
            f"{what}{f' ({sizes_text})' if sizes_text else ''}. Free some space there, or "
            "choose a folder on another disk.")


def is_full_disk(exc: BaseException, folder: Path, needed_bytes: int = 0) -> bool:
    """Whether ``exc`` is a write that failed because ``folder``'s disk is full: the error
    says so, or it is a failed write (GDAL: "WriteEncodedTile/Strip() failed", "Write error
    at scanline 0") while less room is left than the outputs need (GDAL may have removed
    its partial file by then) or almost none."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return True
    if isinstance(exc, (OSError, RuntimeError)):
        text = str(exc).lower()
        if "no space left" in text or "disk full" in text:
            return True
        free = free_bytes(folder)
        if free is None:
            return False
        return free < NEARLY_FULL_BYTES or ("write" in text and free < needed_bytes)
    return False


def check_free_space(folder: Path, what: str, needed_bytes: int,
                     allowance: int = 1) -> None:
    """Refuse before writing when ``needed_bytes`` cannot fit in ``folder``'s disk
    (``allowance``: how many times smaller the written files may end up, e.g. compressed)."""
    free = free_bytes(folder)
    if needed_bytes and free is not None and free * allowance < needed_bytes:
        raise NoSpaceError(no_space_message(folder, what, needed_bytes))


@contextlib.contextmanager
def reporting_full_disk(folders: Sequence[Path], needed_bytes: int = 0,
                        what: Optional[str] = None) -> Iterator[None]:
    """Check that the outputs can fit, then turn a full disk during the block into a
    :class:`NoSpaceError` that names the folder."""
    folders = [Path(f) for f in folders]
    for folder in folders:
        check_free_space(folder, what or "the outputs", needed_bytes, COMPRESSION_ALLOWANCE)
    try:
        yield
    except NoSpaceError:
        raise
    except (OSError, RuntimeError) as exc:
        for folder in folders:
            if is_full_disk(exc, folder, needed_bytes):
                raise NoSpaceError(no_space_message(
                    folder, what or _written_file(exc) or "the outputs", needed_bytes)) \
                    from exc
        raise


def _written_file(exc: BaseException) -> Optional[str]:
    name = getattr(exc, "filename", None)
    return f"'{name}'" if name else None
