"""Runs the engine (``python -m mamol COMMAND``) in the model environment as a child process
and relays it to a Processing feedback.

PyTorch never loads into QGIS's process: QGIS's own BLAS and NumPy otherwise capture
torch's (6× slower on Debian 13's QGIS 3.40, or a crash with OpenBLAS 0.3.29). The child
writes JSON lines on stderr (see :mod:`engine.channel`): progress, log lines and warnings
go to the feedback as they come, its error line becomes a ``QgsProcessingException``, and a
cancel in QGIS sends it SIGTERM within a fraction of a second (the core stops at its next
batch and removes what it staged), then kills it if it has not stopped within a grace period.

However the QGIS side ends, the engine does not outlive it: its stdin is a pipe that only the
operating system closes, when this process dies (SIGTERM, SIGHUP, SIGKILL, a crash), and the
engine cancels itself then (``MAMOL_LIFELINE``; Linux, macOS and Windows alike). Ctrl-C to
``qgis_process`` becomes a cancel of the feedback, which reaches the engine the same way as
the Toolbox's Cancel button. The engine announces each run folder and output lock before it
makes them; whatever remains of those when it has exited (it was killed) is removed here.
"""
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from qgis.core import QgsApplication, QgsProcessingException, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QThread

from ..core import model_env, runs
from ..core.errors import MamolInputError
from ..engine import channel
from .common import WEIGHTS_CACHE_SETTING, FeedbackRelay

#: The plugin's package name (``mamol`` when installed) and the folder that holds it, which
#: ``python -m mamol`` needs on its path. Not resolved: the plugin folder may be a link.
PACKAGE = __name__.split(".")[0]
PLUGIN_PARENT = str(Path(os.path.abspath(__file__)).parent.parent.parent)
#: Seconds a cancelled engine may take to stop before it is killed.
CANCEL_GRACE_SECONDS = 15.0
#: Seconds between two looks at the feedback's cancel flag while the engine is quiet.
POLL_SECONDS = 0.2


def engine_python() -> str:
    """The Python that runs the engine: ``MAMOL_PYTHON``, the user's setting, or the
    environment *Install dependencies* made (a clear error if there is none)."""
    return model_env.engine_python(
        os.environ, QgsSettings().value(model_env.SETTINGS_KEY, "") or "",
        model_env.default_env_dir(QgsApplication.qgisSettingsDirPath()))


def _child_environment() -> Dict[str, str]:
    """The model environment's own packages plus the plugin package (none of QGIS's
    Python variables), unbuffered UTF-8 output, and the weights cache of the Processing
    setting unless MAMOL_WEIGHTS_CACHE is set already."""
    environment = model_env.child_environment()
    environment["PYTHONPATH"] = PLUGIN_PARENT
    cache = QgsSettings().value(f"Processing/Configuration/{WEIGHTS_CACHE_SETTING}", "")
    if cache and not environment.get(WEIGHTS_CACHE_SETTING):
        environment[WEIGHTS_CACHE_SETTING] = str(cache)
    return environment


def _read_lines(stream, sink: "queue.Queue", tag: str) -> None:
    for line in iter(stream.readline, ""):
        sink.put((tag, line.rstrip("\n")))
    sink.put((tag, None))


def run_engine(command: str, arguments: Sequence[str], relay: FeedbackRelay,
               python: Optional[str] = None) -> Dict[str, object]:
    """Run ``python -m mamol COMMAND ARGUMENTS --progress json``; return its result.

    Raises ``QgsProcessingException`` with the engine's own one-line message on bad input,
    "Cancelled …" when the user cancelled, or the exit status (the signal's name when one
    killed it) and the last lines of its output when it died. Whatever happened, nothing the
    engine staged is left behind once this returns.
    """
    if not python:
        try:
            python = engine_python()
        except MamolInputError as exc:
            raise QgsProcessingException(str(exc)) from exc
    argv: List[str] = [python, "-m", PACKAGE, command, *arguments, "--progress", "json"]
    if relay.feedback is not None:
        relay.feedback.pushDebugInfo("Engine: " + command_line(argv))
    token = uuid.uuid4().hex[:12]
    environment = _child_environment()
    environment[runs.TOKEN_VARIABLE] = token
    environment[runs.LIFELINE_VARIABLE] = "stdin"
    options = {}
    if os.name == "nt":
        options["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP |
                                    getattr(subprocess, "CREATE_NO_WINDOW", 0))
    else:
        options["start_new_session"] = True
    try:
        # stdin is the engine's lifeline: a pipe never written to, closed by the operating
        # system when this process dies however it dies; the engine then cancels itself.
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                 errors="replace", env=environment, **options)
    except OSError as exc:
        raise QgsProcessingException(
            f"Cannot start the MaMOL engine with '{python}' ({exc}). Run 'Install "
            "dependencies' (Processing Toolbox → MaMOL land cover → Setup).") from exc
    staged: List[str] = []
    try:
        result, error, tail, cancelled = _follow(child, relay, staged)
    finally:
        if child.poll() is None:    # an exception here (none expected): never orphan it
            child.kill()
            child.wait()
        if child.stdin is not None:
            child.stdin.close()
        runs.remove_leftovers(staged, token)
    finished = child.returncode == 0 and result is not None
    if not finished and (cancelled or (error and error.get("kind") == channel.KIND_CANCELLED)):
        raise QgsProcessingException("Cancelled by the user; nothing was written.")
    if error is not None:
        raise QgsProcessingException(str(error.get("message", "")))
    if child.returncode != 0 or result is None:
        said = "\n".join(tail) or "(no output)"
        raise QgsProcessingException(
            f"The MaMOL engine stopped unexpectedly ({exit_description(child.returncode)}, "
            f"Python '{python}'). Its last output:\n{said}")
    return result


def _follow(child: subprocess.Popen, relay: FeedbackRelay, staged: List[str]):
    """Relay the engine's lines until it exits; a cancel in QGIS reaches it within a
    fraction of a second. Returns (result, error event, last plain lines, cancel sent)."""
    lines: "queue.Queue" = queue.Queue()
    readers = [threading.Thread(target=_read_lines, args=(child.stderr, lines, "err"),
                                daemon=True),
               threading.Thread(target=_read_lines, args=(child.stdout, lines, "out"),
                                daemon=True)]
    for reader in readers:
        reader.start()
    result = error = None
    tail: deque = deque(maxlen=15)
    open_streams, cancel_sent, killed = 2, None, False
    while open_streams or child.poll() is None:
        try:
            tag, line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            tag = line = None
        if tag is not None and line is None:
            open_streams -= 1
        elif tag is not None:
            event = channel.parse_event(line)
            kind = event.get("event") if event is not None else None
            if event is None:
                tail.append(line)
                if tag == "err" and relay.feedback is not None:
                    relay.feedback.pushDebugInfo(line)
            elif kind == channel.PROGRESS:
                relay.progress(float(event.get("percent", 0.0)))
            elif kind == channel.LOG:
                relay.info(str(event.get("text", "")))
            elif kind == channel.WARNING:
                relay.warning(str(event.get("text", "")))
            elif kind == channel.STAGING:
                staged.append(str(event.get("path", "")))
            elif kind == channel.RESULT:
                result = event.get("result")
            elif kind == channel.ERROR:
                error = event
        _deliver_signals()
        if relay.is_cancelled() and child.poll() is None:
            if cancel_sent is None:
                cancel_sent = time.monotonic()
                _stop(child)
            elif not killed and time.monotonic() - cancel_sent > CANCEL_GRACE_SECONDS:
                killed = True
                child.kill()
    child.wait()
    for reader in readers:
        reader.join(timeout=5.0)
    for stream in (child.stdout, child.stderr):
        stream.close()
    return result, error, tail, cancel_sent is not None


def _deliver_signals() -> None:
    """Let QGIS see its pending signals now. ``qgis_process`` turns Ctrl-C into a cancel of
    the feedback only while its event loop runs, which it lets happen at most on a
    progress change; the algorithm runs on the main thread there, so without this a
    one-block run never noticed Ctrl-C. In the Toolbox the algorithm runs in a task
    thread, where there is nothing to do (the Cancel button sets the feedback directly)."""
    application = QCoreApplication.instance()
    if application is not None and QThread.currentThread() == application.thread():
        QCoreApplication.processEvents()


def exit_description(status: int) -> str:
    """'exit status 1', or the signal that killed the engine and what usually sends it."""
    if status is not None and status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        text = f"stopped by signal {name}"
        if -status == getattr(signal, "SIGKILL", 9):
            text += (" — usually the system ran out of memory (try a smaller batch or "
                     "block size), or another program killed it")
        return text
    return f"exit status {status}"


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one line that can be pasted into this system's shell."""
    if os.name == "nt":
        return subprocess.list2cmdline(list(argv))
    return shlex.join(argv)


def _stop(child: subprocess.Popen) -> None:
    """Ask the engine to cancel (SIGTERM; on Windows CTRL_BREAK to its process group)."""
    try:
        if os.name == "nt":
            child.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            child.send_signal(signal.SIGTERM)
    except OSError:
        pass
