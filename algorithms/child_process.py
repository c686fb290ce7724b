"""The plugin's one way to run a child process: start it, hand each line of its output to a
callable as it comes, poll a cancel check, stop it politely and kill it after a grace
period, and say how it ended (exit status, or the signal's name, and its last lines).

Both of the plugin's kinds of child go through here: the engine (``python -m mamol``,
:mod:`algorithms.engine_runner`) and pip and the probes that make the model environment
(:mod:`algorithms.model_env`). QGIS-free, so the installer's tests need no QGIS; what only
QGIS needs while it waits (letting the main thread's events through, so that
``qgis_process`` sees Ctrl-C) comes in as the ``on_poll`` callable.

The child runs in a process group of its own (a new session on POSIX, a new process group
without a console window on Windows), so that a stop reaches whatever it started too. A stop
is polite first: SIGTERM to the group (CTRL_BREAK_EVENT on Windows), and the child's
lifeline, if it has one, is closed; if it is still running ``grace_seconds`` later, the
group is killed (SIGKILL; ``taskkill /F /T`` on Windows). However the wait ends (the child
exits, a cancel, an exception in a callable), no child outlives :meth:`ChildProcess.follow`.
"""
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from ..core.system import spawn_options

#: The names of the streams that ``on_line`` is told a line came from.
STDOUT, STDERR = "stdout", "stderr"
#: Seconds between two cancel checks while the child is quiet.
POLL_SECONDS = 0.2
#: Lines of output that :class:`ChildExit` keeps.
TAIL_LINES = 15
#: Seconds to wait for the output readers once the child has exited.
READER_JOIN_SECONDS = 5.0

#: Receives ``(stream, line)``, the line without its line break. A true return value says the
#: line was a message for the caller (an event it handled), not output: it stays out of the
#: tail.
LineHandler = Callable[[str, str], Optional[bool]]


@dataclass(frozen=True)
class ChildExit:
    """How a child ended."""

    status: int               # its exit status; negative (POSIX): the signal that ended it
    tail: Tuple[str, ...]     # its last lines of output, oldest first
    stopped: bool             # it was asked to stop (a cancel) while it ran
    killed: bool              # it was still running a grace period later, and was killed

    def description(self) -> str:
        """'exit status 1', or the signal that ended it (see :func:`exit_description`)."""
        return exit_description(self.status)


class ChildProcess:
    """A started child and its output readers; :meth:`follow` runs it to its end."""

    def __init__(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 lifeline: bool = False, merge_stderr: bool = False) -> None:
        """Start ``argv`` (``OSError`` when it cannot start).

        ``env``: the child's environment (default: this process's). ``lifeline``: its stdin
        is a pipe that is never written to, closed at a stop and once it has ended, and by
        the operating system when this process dies however it dies: for a child that stops
        itself when it closes (the engine's ``MAMOL_LIFELINE=stdin``); otherwise its stdin is
        empty. ``merge_stderr``: stderr goes into stdout, in the order written, and every
        line comes as :data:`STDOUT`."""
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if lifeline else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            env=None if env is None else dict(env), **spawn_options())
        self._lines: "queue.Queue[Tuple[str, Optional[str]]]" = queue.Queue()
        streams = [(STDOUT, self.process.stdout)]
        if not merge_stderr:
            streams.append((STDERR, self.process.stderr))
        self._readers = [threading.Thread(target=_read_lines, args=(name, stream, self._lines),
                                          daemon=True) for name, stream in streams]
        for reader in self._readers:
            reader.start()
        self._open_streams = len(self._readers)
        self._stop_sent: Optional[float] = None
        self._killed = False

    def follow(self, on_line: LineHandler, grace_seconds: float,
               is_cancelled: Optional[Callable[[], bool]] = None,
               on_poll: Optional[Callable[[], None]] = None,
               tail_lines: int = TAIL_LINES) -> ChildExit:
        """Relay the child's lines to ``on_line`` until it has exited; return how it ended.

        Between lines, and every :data:`POLL_SECONDS` while the child is quiet, ``on_poll()``
        runs and ``is_cancelled()`` is asked; once it says True the child is stopped
        politely, and killed if it still runs ``grace_seconds`` later (its lines keep coming
        until it has exited). An exception from any of the callables stops the child the
        same way, waiting out the grace period, and is raised again.
        """
        tail: deque = deque(maxlen=tail_lines)
        try:
            while self._open_streams or self.process.poll() is None:
                if on_poll is not None:
                    on_poll()
                if self._stop_sent is not None or (is_cancelled is not None
                                                   and is_cancelled()):
                    self._stop(grace_seconds)
                received = self._next_line()
                if received is not None and not on_line(*received):
                    tail.append(received[1])
        except BaseException:
            self._stop_now(grace_seconds)
            raise
        finally:
            self._close()
        return ChildExit(self.process.returncode, tuple(tail), self._stop_sent is not None,
                         self._killed)

    def _next_line(self) -> Optional[Tuple[str, str]]:
        """The next line and its stream; None when none came within POLL_SECONDS, or a
        stream ended."""
        try:
            stream, line = self._lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return None
        if line is None:
            self._open_streams -= 1
            return None
        return stream, line

    def _stop(self, grace_seconds: float) -> None:
        """The first call asks the running child to stop; a later one kills it once the grace
        period has passed."""
        if self.process.poll() is not None:
            return
        if self._stop_sent is None:
            self._stop_sent = time.monotonic()
            _ask_to_stop(self.process)
            self._close_lifeline()
        elif not self._killed and time.monotonic() - self._stop_sent > grace_seconds:
            self._killed = True
            _kill(self.process)

    def _stop_now(self, grace_seconds: float) -> None:
        """Stop the child before returning: politely, then by force after the grace."""
        self._stop(grace_seconds)
        try:
            self.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._killed = True
            _kill(self.process)

    def _close_lifeline(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def _close(self) -> None:
        """Reap the child, let the readers finish, close the pipes."""
        self.process.wait()
        for reader in self._readers:
            reader.join(timeout=READER_JOIN_SECONDS)
        self._close_lifeline()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def run(argv: Sequence[str], on_line: LineHandler, grace_seconds: float,
        is_cancelled: Optional[Callable[[], bool]] = None,
        on_poll: Optional[Callable[[], None]] = None, env: Optional[Mapping[str, str]] = None,
        lifeline: bool = False, merge_stderr: bool = False) -> ChildExit:
    """Start ``argv`` and follow it to its end: :class:`ChildProcess` then
    :meth:`ChildProcess.follow`, with the same arguments."""
    child = ChildProcess(argv, env=env, lifeline=lifeline, merge_stderr=merge_stderr)
    return child.follow(on_line, grace_seconds, is_cancelled=is_cancelled, on_poll=on_poll)


def _read_lines(name: str, stream, sink: "queue.Queue") -> None:
    """Put each line of ``stream`` into ``sink`` as ``(name, text)``, then ``(name, None)``.
    Bytes are read and split at ``\\n`` only, then decoded as UTF-8 (what cannot be decoded
    is replaced), without the line break (``\\r\\n`` included)."""
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", errors="replace")
        sink.put((name, text[:-1].rstrip("\r") if text.endswith("\n") else text))
    sink.put((name, None))


def _ask_to_stop(process: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (CTRL_BREAK_EVENT on Windows)."""
    try:
        if os.name == "nt":
            process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(process.pid, signal.SIGTERM)
    except OSError:
        pass


def _kill(process: subprocess.Popen) -> None:
    """Kill the child's process group (SIGKILL; ``taskkill /F /T`` on Windows), or at least
    the child."""
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                           **spawn_options())
        else:
            os.killpg(process.pid, signal.SIGKILL)
    except (OSError, subprocess.SubprocessError):
        process.kill()


def exit_description(status: Optional[int]) -> str:
    """'exit status 1', or the signal that ended the child and what usually sends it."""
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
    words: List[str] = [str(word) for word in argv]
    if os.name == "nt":
        return subprocess.list2cmdline(words)
    return shlex.join(words)
