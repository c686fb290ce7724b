"""Runs the engine (``python -m mamol COMMAND``) in the model environment as a child process
and relays it to a Processing feedback.

PyTorch never loads into QGIS's process: QGIS's own BLAS and NumPy otherwise capture
torch's (6× slower on Debian 13's QGIS 3.40, or a crash with OpenBLAS 0.3.29). The child
writes JSON lines on stderr (see :mod:`engine.channel`): progress, log lines and warnings
go to the feedback as they come, its error line becomes a ``QgsProcessingException``, and a
cancel in QGIS sends it SIGTERM within a fraction of a second (the core stops at its next
batch and removes what it staged), then kills it if it has not stopped within a grace period
(:mod:`algorithms.child_process` starts, follows and stops it; what is QGIS's here is the
feedback, and letting the main thread's events through while it runs).

However the QGIS side ends, the engine does not outlive it: its stdin is a pipe that only the
operating system closes, when this process dies (SIGTERM, SIGHUP, SIGKILL, a crash), and the
engine cancels itself then (``MAMOL_LIFELINE``; Linux, macOS and Windows alike). Ctrl-C to
``qgis_process`` becomes a cancel of the feedback, which reaches the engine the same way as
the Toolbox's Cancel button. The engine announces each run folder and output lock before it
makes them; whatever remains of those when it has exited (it was killed) is removed here.
"""
import os
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from qgis.core import QgsApplication, QgsProcessingException, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QThread

from ..core import runs
from ..core.errors import MamolInputError
from ..engine import channel
from . import model_env
from .child_process import STDERR, ChildProcess, command_line, exit_description
from .common import WEIGHTS_CACHE_SETTING, FeedbackRelay, provider_setting

#: The plugin's package name (``mamol`` when installed) and the folder that holds it, which
#: ``python -m mamol`` needs on its path. Not resolved: the plugin folder may be a link.
PACKAGE = __name__.split(".")[0]
PLUGIN_PARENT = str(Path(os.path.abspath(__file__)).parent.parent.parent)
#: Seconds a cancelled engine may take to stop before it is killed.
CANCEL_GRACE_SECONDS = 15.0


def engine_python() -> str:
    """The Python that runs the engine: ``MAMOL_PYTHON``, the user's setting, or the
    environment *Install dependencies* made (a clear error if there is none)."""
    return engine_python_choice()[0]


def engine_python_choice() -> Tuple[str, str]:
    """(:func:`engine_python`, how it was chosen) — for *Check environment*'s report."""
    return model_env.engine_python_choice(
        os.environ, QgsSettings().value(model_env.SETTINGS_KEY, "") or "",
        model_env.default_env_dir(QgsApplication.qgisSettingsDirPath()))


def _child_environment() -> Dict[str, str]:
    """The model environment's own packages plus the plugin package (none of QGIS's
    Python variables), unbuffered UTF-8 output, and the weights cache of the Processing
    setting unless MAMOL_WEIGHTS_CACHE is set already."""
    environment = model_env.child_environment()
    environment["PYTHONPATH"] = PLUGIN_PARENT
    cache = provider_setting(WEIGHTS_CACHE_SETTING)
    if cache and not environment.get(WEIGHTS_CACHE_SETTING):
        environment[WEIGHTS_CACHE_SETTING] = cache
    return environment


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
    try:
        # stdin is the engine's lifeline: a pipe never written to, closed by the operating
        # system when this process dies however it dies; the engine then cancels itself.
        child = ChildProcess(argv, env=environment, lifeline=True)
    except OSError as exc:
        raise QgsProcessingException(
            f"Cannot start the MaMOL engine with '{python}' ({exc}). Run 'Install "
            "dependencies' (Processing Toolbox → MaMOL land cover → Setup).") from exc
    events = _EngineEvents(relay)
    try:
        ended = child.follow(events.line, CANCEL_GRACE_SECONDS,
                             is_cancelled=relay.is_cancelled, on_poll=_deliver_signals)
    finally:
        runs.remove_leftovers(events.staged, token)
    error = events.error
    finished = ended.status == 0 and events.result is not None
    if not finished and (ended.stopped
                         or (error and error.get("kind") == channel.KIND_CANCELLED)):
        raise QgsProcessingException("Cancelled by the user; nothing was written.")
    if error is not None:
        raise QgsProcessingException(str(error.get("message", "")))
    if ended.status != 0 or events.result is None:
        said = "\n".join(ended.tail) or "(no output)"
        raise QgsProcessingException(
            f"The MaMOL engine stopped unexpectedly ({exit_description(ended.status)}, "
            f"Python '{python}'). Its last output:\n{said}")
    return events.result


class _EngineEvents:
    """The engine's JSON lines (:mod:`engine.channel`), relayed as they come: progress, log
    lines and warnings to the feedback; staged paths, the result and the error kept."""

    def __init__(self, relay: FeedbackRelay) -> None:
        self.relay = relay
        self.staged: List[str] = []
        self.result: Optional[Dict[str, object]] = None
        self.error: Optional[dict] = None

    def line(self, stream: str, line: str) -> bool:
        """Handle one line; True for an event, False for plain output (its stderr lines
        go to the feedback's debug log)."""
        event = channel.parse_event(line)
        if event is None:
            if stream == STDERR and self.relay.feedback is not None:
                self.relay.feedback.pushDebugInfo(line)
            return False
        kind = event.get("event")
        if kind == channel.PROGRESS:
            self.relay.progress(float(event.get("percent", 0.0)))
        elif kind == channel.LOG:
            self.relay.info(str(event.get("text", "")))
        elif kind == channel.WARNING:
            self.relay.warning(str(event.get("text", "")))
        elif kind == channel.STAGING:
            self.staged.append(str(event.get("path", "")))
        elif kind == channel.RESULT:
            self.result = event.get("result")
        elif kind == channel.ERROR:
            self.error = event
        return True


def _deliver_signals() -> None:
    """Let QGIS see its pending signals now. ``qgis_process`` turns Ctrl-C into a cancel of
    the feedback only while its event loop runs, which it lets happen at most on a
    progress change; the algorithm runs on the main thread there, so without this a
    one-block run never noticed Ctrl-C. In the Toolbox the algorithm runs in a task
    thread, where there is nothing to do (the Cancel button sets the feedback directly)."""
    application = QCoreApplication.instance()
    if application is not None and QThread.currentThread() == application.thread():
        QCoreApplication.processEvents()
