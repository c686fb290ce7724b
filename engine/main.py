"""The engine: ``python -m mamol {scene,train,evaluate,classify,doctor}`` (and the ``mamol`` command
of a pip install, :mod:`engine.console`).

One command line for every front end. Each command (a module of this package: ``NAME``,
``HELP``, ``add_arguments``, ``outputs``, ``run``) makes the same core call as its
Processing algorithm; the algorithms of ``mamol:trainmodel``, ``mamol:classify`` and
``mamol:evaluate`` run this command in the model environment as a child process, so that
PyTorch never loads into QGIS's own process (DESIGN §1). How it reports progress, results
and errors, and its exit statuses: :mod:`engine.channel`.

Under ``torchrun`` (several processes), ``train`` and ``classify`` join one process group
and share the work (:mod:`core.distributed`; docs "Beyond one machine"): only rank 0 shows
progress and prints the result; every rank prints its errors as ``error: rank R: …`` (JSON
errors carry ``"rank"``), and a failure on any rank fails every rank. ``--cog`` writes
classification outputs as Cloud-Optimized GeoTIFFs.

A calling program that must not leave an engine behind starts it with
``MAMOL_LIFELINE=stdin`` and a pipe as its stdin that it never writes to: when the caller
dies, however it dies (SIGKILL included), the pipe closes and the engine cancels itself; if
it has not stopped :data:`LIFELINE_GRACE_SECONDS` later it removes what it staged and exits.
That works alike on Linux, macOS and Windows (no ``PR_SET_PDEATHSIG``, no job object needed).
Every output path is locked for the whole run (:mod:`core.runs`): a second run on the same
outputs stops at once and names the first.
"""
import argparse
import os
import signal
import sys
import threading
import time
import traceback
from typing import Optional, Sequence, TextIO

from ..core.distributed import PeerFailed, finish, launched_world_size, start
from ..core.errors import Cancelled, MamolInputError
from ..core.modalities import NAMES
from ..core.system import check_gpu_use
from . import classify, doctor, evaluate, scene, train
from .channel import (EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED,
                      KIND_CANCELLED, KIND_INPUT, KIND_INTERNAL, Channel, json_requested,
                      one_line, program_name)
from .options import add_common

#: Seconds a run may take to stop after its caller is gone before it exits at once.
LIFELINE_GRACE_SECONDS = 20.0
#: The commands, by name, in the order ``--help`` lists them.
COMMANDS = {command.NAME: command for command in (scene, train, evaluate, classify, doctor)}


class Stop:
    """SIGTERM (and SIGINT) as a cancel request the core polls between blocks and batches;
    a second Ctrl-C interrupts at once (the core's staging still removes what it wrote)."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def install(self) -> None:
        def handler(number, _frame):
            if self.signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self.signal = number
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGHUP"):    # the terminal closed
            signal.signal(signal.SIGHUP, handler)
        if hasattr(signal, "SIGBREAK"):  # Windows: what the plugin sends to cancel
            signal.signal(signal.SIGBREAK, handler)

    def watch_lifeline(self, stream) -> None:
        """Cancel when ``stream`` (a pipe from the calling program) closes: the caller is
        gone. If the run has not stopped after a grace period, remove what it staged and
        exit at once."""
        descriptor = stream.fileno()

        def wait() -> None:
            try:   # the raw descriptor: a buffered reader's lock would block shutdown
                while os.read(descriptor, 65536):
                    pass
            except OSError:
                pass
            if self.signal is None:
                self.signal = signal.SIGTERM
            time.sleep(LIFELINE_GRACE_SECONDS)
            from ..core import runs
            runs.remove_own()
            runs.end()
            os._exit(EXIT_TERMINATED)
        threading.Thread(target=wait, name="mamol-lifeline", daemon=True).start()

    def __call__(self) -> bool:
        return self.signal is not None


class ArgumentsError(Exception):
    """A command line the engine cannot run: the reason in one line."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: {message}")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises :class:`ArgumentsError` with argparse's reason
    instead of printing the whole usage message and exiting."""

    def error(self, message: str):
        raise ArgumentsError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=program_name(),
        description="MaMOL land cover without QGIS: the engine behind the Processing "
                    "algorithms. Each command is the same core call as its algorithm.",
        epilog=f"Run '{program_name()} COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for command in COMMANDS.values():
        command.add_arguments(sub.add_parser(command.NAME, help=command.SUMMARY,
                                             description=command.HELP))
        add_common(sub.choices[command.NAME])
    return parser


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    """Run one engine command; returns the exit status (see the module's docstring)."""
    from ..core import runs
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help
        return EXIT_INPUT if exc.code else 0
    except ArgumentsError as exc:
        if json_requested(argv):
            Channel("json", "arguments", stderr).error(KIND_INPUT, one_line(str(exc)))
        else:
            stderr.write(f"error: {exc} (see '{exc.prog} --help')\n")
        return EXIT_INPUT
    mode = "none" if args.quiet else args.progress
    size = launched_world_size()
    rank = int(os.environ.get("RANK", "0")) if size > 1 else None
    channel = Channel(mode, args.command, stderr, rank)
    stop = Stop()
    stop.install()
    if os.environ.get(runs.LIFELINE_VARIABLE) == "stdin" and sys.stdin is not None:
        stop.watch_lifeline(sys.stdin)
    runs.begin(f"{program_name()} {args.command}")
    runs.announce = channel.staging
    command = COMMANDS[args.command]
    world = None
    try:
        if hasattr(command, "check"):
            command.check(args)
        if args.command in DEVICE_COMMANDS:   # before any work: is a GPU left idle?
            check_gpu_use(args.device, channel.warning)
        with runs.locked_outputs([p for p in command.outputs(args) if p.parent.is_dir()]
                                 if rank in (None, 0) else []):
            if size > 1:
                world = _join_world(args)
            result = command.run(args, channel, stop, world)
    except PeerFailed as exc:
        channel.error(exc.kind, one_line(str(exc)))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INTERNAL
    except MamolInputError as exc:
        if stop():
            return _cancelled(channel, stop)
        channel.error(KIND_INPUT, one_line(str(exc)))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INPUT
    except (Cancelled, KeyboardInterrupt):
        return _cancelled(channel, stop)
    except Exception as exc:  # noqa: BLE001 - the engine's last line of defence
        if world is not None and _lost_peer(exc):   # e.g. inside a DDP gradient exchange
            channel.error(KIND_INTERNAL, "another process of the run stopped or did not "
                          "answer (see its own error); " + one_line(str(exc)))
            return EXIT_INTERNAL
        channel.error(KIND_INTERNAL, one_line(f"{type(exc).__name__}: {exc}") +
                      ("" if args.debug else " (run with --debug for the traceback)"))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INTERNAL
    finally:
        if world is not None:
            # The outcome is decided and reported: torchrun's agent, seeing another rank
            # exit, sends SIGTERM to this one, which must still exit with its own status.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            finish(world)
        runs.end()
        runs.announce = None
    channel.progress(100.0)
    if world is None or world.is_main:
        channel.result(args.command, result, stdout,
                       command.text(result) if hasattr(command, "text") else None)
    return 0


#: The commands that run the model on a device of the user's choice: each checks first that
#: no GPU is left idle (:func:`core.system.check_gpu_use`).
DEVICE_COMMANDS = ("train", "evaluate", "classify")
#: The commands that run across the processes torchrun starts (DESIGN §6).
DISTRIBUTED_COMMANDS = ("train", "classify")


def _join_world(args):
    """Under torchrun: join the process group (see :mod:`core.distributed`)."""
    if args.command not in DISTRIBUTED_COMMANDS:
        raise MamolInputError(
            f"'{args.command}' runs in one process: start it with '{program_name()} "
            f"{args.command}', not torchrun (train and classify run across processes).")
    world = start(getattr(args, "device", "auto"))
    if world.faulty("input"):   # test hook: this rank cannot read its rasters
        for name in NAMES:
            if getattr(args, name, None):
                setattr(args, name, getattr(args, name) + ".not-on-this-node")
    return world


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.distributed's report of a peer gone or silent."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"DistBackendError", "DistNetworkError"}) or any(
        text in str(exc) for text in ("Connection closed by peer", "Connection reset by peer",
                                      "timed out", "Timed out"))


def _cancelled(channel: Channel, stop: Stop) -> int:
    channel.error(KIND_CANCELLED, "Cancelled; nothing was written.")
    return EXIT_TERMINATED if stop.signal == signal.SIGTERM else EXIT_INTERRUPTED
