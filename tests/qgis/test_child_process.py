"""The plugin's child-process runner (``algorithms.child_process``), which runs both the
engine and the installer's pip, with ``python -c`` children: lines as they come, exit
statuses and signal names, a cancel's polite stop, the kill after the grace period. It
imports nothing of QGIS (``test_boundaries.py`` proves the runner can't either); it sits in
this tier with the rest of the plugin's tests."""
import os
import shlex
import signal
import sys
import time

import pytest

from mamol.algorithms import child_process
from mamol.algorithms.child_process import STDERR, STDOUT, ChildProcess, exit_description

pytestmark = pytest.mark.subprocess   # every test starts a child process

posix_signals = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def python(code: str):
    return [sys.executable, "-c", code]


def test_lines_come_as_they_are_written_with_their_stream():
    seen = []
    ended = child_process.run(
        python("import sys, time\n"
               "print('first', flush=True)\n"
               "time.sleep(0.5)\n"
               "print('on stderr', file=sys.stderr, flush=True)\n"
               "print('last')\n"),
        lambda stream, line: seen.append((stream, line, time.monotonic())),
        grace_seconds=5)
    # Each stream keeps its order; across the two pipes, only what the sleep separates is
    # ordered (two reader threads: 'last' may be relayed before 'on stderr').
    assert [(stream, line) for stream, line, _ in seen if stream == STDOUT] == [
        (STDOUT, "first"), (STDOUT, "last")]
    assert [(stream, line) for stream, line, _ in seen if stream == STDERR] == [
        (STDERR, "on stderr")]
    assert seen[0][1] == "first"
    assert min(t for _, _, t in seen[1:]) - seen[0][2] > 0.3   # 'first' came before the sleep
    assert ended.status == 0 and ended.description() == "exit status 0"
    assert sorted(ended.tail) == ["first", "last", "on stderr"]
    assert not ended.stopped and not ended.killed


def test_merged_output_keeps_the_order_and_the_tail_skips_claimed_lines():
    seen = []

    def on_line(stream, line):
        seen.append((stream, line))
        return line.startswith("{")      # an "event": not output

    code = "import sys\n" + "".join(
        f"print({text!r}, file=sys.{name}, flush=True)\n"
        for text, name in (("a", "stdout"), ("{b}", "stderr"), ("é\r", "stdout"),
                           ("", "stderr"), ("d", "stderr")))
    ended = child_process.run(python(code + "sys.exit(3)\n"), on_line, grace_seconds=5,
                              env=dict(os.environ, PYTHONIOENCODING="utf-8"),
                              merge_stderr=True)
    assert seen == [(STDOUT, "a"), (STDOUT, "{b}"), (STDOUT, "é"), (STDOUT, ""),
                    (STDOUT, "d")]
    assert ended.status == 3 and ended.description() == "exit status 3"
    assert ended.tail == ("a", "é", "", "d")


def test_the_tail_keeps_the_last_lines():
    child = ChildProcess(python("for n in range(40): print(n)"))
    ended = child.follow(lambda stream, line: None, grace_seconds=5, tail_lines=3)
    assert ended.tail == ("37", "38", "39")


@posix_signals
def test_signal_names():
    ended = child_process.run(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
                              lambda stream, line: None, grace_seconds=5)
    assert ended.status == -signal.SIGKILL
    assert ended.description() == (
        "stopped by signal SIGKILL — usually the system ran out of memory (try a smaller "
        "batch or block size), or another program killed it")
    assert exit_description(-signal.SIGTERM) == "stopped by signal SIGTERM"
    assert exit_description(-1000) == "stopped by signal signal 1000"
    assert exit_description(139) == "exit status 139"


@posix_signals
def test_a_cancel_stops_a_sleeping_child_politely():
    """SIGTERM reaches the child at once; it says goodbye, and its last lines still come.

    The child writes with ``os.write``: the stop can arrive while its ``print('ready')`` is
    still inside the buffered writer (the parent read the line as the flush wrote it), and a
    ``print`` in the handler would then fail as a reentrant call (CI saw it once)."""
    seen, cancelled_at = [], []

    def cancelled():
        if seen and not cancelled_at:
            cancelled_at.append(time.monotonic())
        return bool(cancelled_at)

    ended = child_process.run(
        python("import os, signal, sys, time\n"
               "def bye(number, frame):\n"
               "    os.write(1, f'stopping on {signal.Signals(number).name}\\n'.encode())\n"
               "    sys.exit(5)\n"
               "signal.signal(signal.SIGTERM, bye)\n"
               "os.write(1, b'ready\\n')\n"
               "time.sleep(60)\n"),
        lambda stream, line: seen.append(line), grace_seconds=30, is_cancelled=cancelled)
    assert time.monotonic() - cancelled_at[0] < 5
    assert seen == ["ready", "stopping on SIGTERM"]
    assert ended.status == 5 and ended.stopped and not ended.killed


@posix_signals
def test_a_stop_closes_the_lifeline():
    """A child that ignores SIGTERM but watches its stdin stops when the stop closes it."""
    seen = []
    ended = child_process.run(
        python("import signal, sys\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\n"
               "sys.stdin.read()\n"
               "print('lifeline closed', flush=True)\n"),
        lambda stream, line: seen.append(line), grace_seconds=30,
        is_cancelled=lambda: bool(seen), lifeline=True)
    assert seen == ["ready", "lifeline closed"]
    assert ended.status == 0 and ended.stopped and not ended.killed


@posix_signals
def test_a_child_that_ignores_the_stop_is_killed_after_the_grace():
    seen, polls = [], []
    started = time.monotonic()
    ended = child_process.run(
        python("import signal, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n"),
        lambda stream, line: seen.append(time.monotonic()), grace_seconds=1.5,
        is_cancelled=lambda: bool(seen), on_poll=lambda: polls.append(1))
    took = time.monotonic() - seen[0]
    assert 1.5 <= took < 10, took
    assert ended.status == -signal.SIGKILL and ended.stopped and ended.killed
    assert len(polls) >= 5            # on_poll ran while the child was quiet
    assert time.monotonic() - started < 30


@posix_signals
def test_an_exception_in_a_callable_stops_the_child_and_is_raised_again():
    pids = []

    def on_line(stream, line):
        pids.append(int(line))
        raise RuntimeError("the caller failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the caller failed"):
        child_process.run(python("import os, time; print(os.getpid(), flush=True); "
                                 "time.sleep(60)"), on_line, grace_seconds=5)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):    # gone, and reaped
        os.kill(pids[0], 0)


def test_a_program_that_cannot_start_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        ChildProcess([str(tmp_path / "no-such-program")])


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell's quoting")
def test_command_line_can_be_pasted():
    argv = ["/usr/bin/python3", "-c", "print('a b')", "résumé folder/c.tif"]
    assert shlex.split(child_process.command_line(argv)) == argv
