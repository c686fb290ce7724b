"""What one engine run writes besides its outputs, kept where a dead run cannot strand it.

A run has a token (``MAMOL_RUN_TOKEN`` when the plugin's runner started the engine, else a
random one). Everything it writes before its outputs are complete lives in a *run folder*
named with that token:

* staged outputs in ``<output folder>/.mamol-run-<token>/`` (next to the outputs, so that
  publishing them is a rename on one file system);
* scratch files (the memory-mapped training and evaluation samples, reports being written)
  in ``<temp root>/mamol-run-<token>/``; the temp root is ``MAMOL_TEMP_DIR`` if set, else
  the system's temporary folder.

Each run folder holds ``owner.json`` (host, process id and the process's start time, token,
command). Each output path is locked for the whole run by ``.<name>.mamol-lock`` beside it,
created exclusively, naming the same owner: a second run on the same output stops at once
and names the first.

Cleanup happens in three places, so that nothing outlives a run however it ends:

1. the run itself removes its folders and locks when it finishes, fails or is cancelled;
2. every path is *announced* (:data:`announce`, the engine's ``staging`` JSON event) before
   it is created, so the program that started the engine removes what a killed engine left
   (:func:`remove_leftovers`);
3. a new run in the same folder sweeps run folders and locks whose process is gone
   (pid plus start time, so a reused pid is not mistaken for the old run).
"""
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from .disk import NoSpaceError, ensure_writable_folder, is_full_disk, no_space_message
from .errors import MamolInputError

TOKEN_VARIABLE = "MAMOL_RUN_TOKEN"
#: ``MAMOL_LIFELINE=stdin``: the engine's stdin is a pipe from the program that started it,
#: closed only when that program dies (:mod:`engine.main`).
LIFELINE_VARIABLE = "MAMOL_LIFELINE"
TEMP_ROOT_VARIABLE = "MAMOL_TEMP_DIR"
RUN_PREFIX = "mamol-run-"
OUTPUT_RUN_PREFIX = "." + RUN_PREFIX
LOCK_SUFFIX = ".mamol-lock"
OWNER_FILE = "owner.json"
#: A lock or owner file that is still empty this many seconds after it was created belongs
#: to a run killed between creating and writing it.
EMPTY_GRACE_SECONDS = 10.0

#: Told each path (folder or lock file) before it is created; the engine sends it on as a
#: ``staging`` event to the program that started it. None: nobody listens.
announce: Optional[Callable[[Path], None]] = None

_token: Optional[str] = None
_command = ""
_scratch_root: Optional[Path] = None


def token() -> str:
    """This process's run token (from ``MAMOL_RUN_TOKEN``, else made once at random)."""
    global _token
    if _token is None:
        given = os.environ.get(TOKEN_VARIABLE, "")
        _token = given if given.isalnum() and len(given) <= 32 else uuid.uuid4().hex[:12]
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:   # torchrun: a folder per rank
            _token += f"r{os.environ.get('RANK', '0')}"
    return _token


def begin(command: str) -> None:
    """Name the command the owner files record (``mamol classify`` …)."""
    global _command
    _command = command


def temp_root() -> Path:
    """Where scratch run folders go: ``MAMOL_TEMP_DIR`` or the system's temporary folder."""
    return Path(os.environ.get(TEMP_ROOT_VARIABLE) or tempfile.gettempdir())


def process_start(pid: int) -> Optional[int]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def owner() -> Dict[str, object]:
    """This process as the owner of a run folder or a lock."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": process_start(os.getpid()), "token": token(),
            "command": _command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def owner_alive(record: Dict[str, object]) -> bool:
    """Whether the process a record names still runs. On another host that cannot be
    told, so it counts as running."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        pid = int(record.get("pid"))   # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return record.get("token") == token()
    if not _pid_running(pid):
        return False
    started = record.get("started")
    return started is None or process_start(pid) in (None, started)


def _pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists (on Windows ``os.kill(pid, 0)`` would end it, so
    the process is opened and its exit code read instead)."""
    if os.name == "nt":
        import ctypes
        kernel = ctypes.windll.kernel32   # type: ignore[attr-defined]
        handle = kernel.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel.GetLastError() == 5   # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259   # STILL_ACTIVE
        finally:
            kernel.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass   # e.g. another user's process: it exists
    return True


def describe(record: Dict[str, object]) -> str:
    """'process 123 (mamol classify, started 2026-12-04 17:30:02)' for messages."""
    host = record.get("host")
    where = "" if host == socket.gethostname() else f" on {host}"
    what = ", ".join(str(x) for x in (record.get("command"),
                                      f"started {record.get('since')}") if x)
    return f"process {record.get('pid')}{where} ({what})"


def _read_owner(path: Path) -> Optional[Dict[str, object]]:
    """The owner a lock or owner file names; None while it is empty or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _abandoned(path: Path) -> bool:
    """Whether a lock or owner file belongs to a run that is gone."""
    record = _read_owner(path)
    if record is None:
        try:
            return time.time() - path.stat().st_mtime > EMPTY_GRACE_SECONDS
        except OSError:
            return False
    return not owner_alive(record)


_announced: List[Path] = []


def _tell(path: Path) -> None:
    _announced.append(path)
    if announce is not None:
        announce(path)


def remove_own() -> List[Path]:
    """Remove everything this run announced that is still there (its last act when it must
    stop at once, e.g. when the program that started it is gone)."""
    return remove_leftovers(list(_announced), token())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(folder: Path, prefix: str) -> List[Path]:
    """Remove run folders (``prefix`` + token) and output locks in ``folder`` whose run is
    gone; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_dir():
            marker = entry / OWNER_FILE
            if (_abandoned(marker) if marker.exists() else _abandoned(entry)):
                _remove(entry)
                removed.append(entry)
        elif entry.name.startswith(".") and entry.name.endswith(LOCK_SUFFIX):
            if _abandoned(entry):
                _remove(entry)
                removed.append(entry)
    return removed


def _make_run_folder(path: Path) -> Path:
    _tell(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_FILE).write_text(json.dumps(owner()), encoding="utf-8")
    return path


@contextlib.contextmanager
def output_run_folder(parent: Path) -> Iterator[Path]:
    """This run's hidden folder in ``parent`` (an output folder), made after sweeping what
    dead runs left there; removed with everything in it when the block ends."""
    parent = Path(parent)
    sweep(parent, OUTPUT_RUN_PREFIX)
    folder = _make_run_folder(parent / f"{OUTPUT_RUN_PREFIX}{token()}")
    try:
        yield folder
    finally:
        _remove(folder)


def scratch_root() -> Path:
    """This run's folder in the temp root (made when first needed, after a sweep)."""
    global _scratch_root
    if _scratch_root is None or not _scratch_root.is_dir():
        root = temp_root()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MamolInputError(
                f"Cannot use the temporary folder '{root}' ({exc.strerror or exc}); set "
                f"{TEMP_ROOT_VARIABLE} to a folder with room.") from exc
        sweep(root, RUN_PREFIX)
        _scratch_root = _make_run_folder(root / f"{RUN_PREFIX}{token()}")
    return _scratch_root


_scratch_users = 0


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A fresh folder inside this run's scratch folder, removed when the block ends; the
    run's scratch folder goes with the last one (so a library caller that trains twice, or
    changes ``MAMOL_TEMP_DIR`` between runs, leaves nothing in the temp root either)."""
    global _scratch_users
    _scratch_users += 1
    try:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
        try:
            yield folder
        finally:
            _remove(folder)
    finally:
        _scratch_users -= 1
        if _scratch_users == 0:
            end()


def end() -> None:
    """Remove this run's scratch folder (also the engine's last act, however it ended)."""
    global _scratch_root
    if _scratch_root is not None:
        _remove(_scratch_root)
        _scratch_root = None


def lock_path(final: Path) -> Path:
    final = Path(final)
    return final.with_name(f".{final.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def locked_outputs(finals: Sequence[Path]) -> Iterator[None]:
    """Hold an exclusive lock on each output path for the block; a path another running
    run holds stops this one at once with a message that names that run."""
    held: List[Path] = []
    try:
        for final in finals:
            path = _take(lock_path(final), Path(final))
            if path is not None:
                held.append(path)
        yield
    finally:
        for path in held:
            if _mine(_read_owner(path)):
                _remove(path)


def _mine(record: Optional[Dict[str, object]]) -> bool:
    return (record is not None and record.get("token") == token()
            and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname())


def _take(path: Path, final: Path) -> Optional[Path]:
    """Lock ``final`` by creating ``path``; None when this run holds it already (a nested
    lock, e.g. the engine's for the whole run and the writer's)."""
    if _mine(_read_owner(path)):
        return None
    text = json.dumps(owner())
    for _ in range(3):
        _tell(path)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        except OSError:
            ensure_writable_folder(final.parent)   # says why the folder refuses files
            raise
        else:
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    stream.write(text)
            except OSError as exc:   # a full disk: no room even for the lock's few bytes
                _remove(path)
                if is_full_disk(exc, final.parent):
                    raise NoSpaceError(no_space_message(final.parent, f"'{final.name}'")) \
                        from exc
                raise
            return path
        record = _read_owner(path)
        if record is not None and owner_alive(record):
            elsewhere = record.get("host") != socket.gethostname()
            raise MamolInputError(
                f"'{final}' is being written by another MaMOL run, {describe(record)}. "
                "Wait for it to finish, or choose other output paths"
                + (f" (if that run is gone, delete '{path}')." if elsewhere else ".")) \
                from None
        if record is None and not _abandoned(path):
            raise MamolInputError(
                f"'{final}' is being written by another MaMOL run that is just "
                "starting. Wait for it to finish, or choose other output paths.") from None
        _remove(path)   # its run is gone
    raise MamolInputError(f"Cannot lock the output '{final}': its lock file '{path}' keeps "
                          "coming back. Is another MaMOL run starting on it?")


def remove_leftovers(paths: Sequence[Path], run_token: str) -> List[Path]:
    """For the program that started an engine: remove the announced ``paths`` that remain,
    once the engine has exited. Locks are removed only when they name ``run_token`` (an
    announced lock may have been another run's, if taking it failed)."""
    removed = []
    for path in paths:
        path = Path(path)
        if not (path.exists() or path.is_symlink()):
            continue
        if path.name.endswith(LOCK_SUFFIX):
            record = _read_owner(path)
            if record is None or record.get("token") != run_token:
                continue
        elif run_token not in path.name:
            continue
        _remove(path)
        removed.append(path)
    return removed
