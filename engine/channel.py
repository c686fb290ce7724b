"""The engine's channel: how it talks to whoever started it, in one place that the engine and
the Processing algorithms' runner (``algorithms/engine_runner.py``) both read.

Progress goes to stderr, in one of four forms (``--progress``):

* ``bar``: a progress bar on the current line, log lines and warnings above it;
* ``plain``: log lines and warnings only (the default when stderr is not a terminal);
* ``json``: one JSON object per line, for a calling program (the Processing algorithms):
  ``{"event": "progress", "percent": 12.5, "stage": "train"}``,
  ``{"event": "log", "text": ...}``, ``{"event": "warning", "text": ...}``,
  ``{"event": "staging", "path": ...}`` (a run folder or output lock about to be made,
  which the caller removes if the engine dies: :mod:`core.runs`),
  ``{"event": "result", "command": ..., "result": {...}}`` and, on failure,
  ``{"event": "error", "kind": "input" | "cancelled" | "internal", "message": ...}``;
* ``none``: errors only.

The result is also printed on stdout (as JSON with ``--progress json``, as text otherwise).

Exit status (:data:`EXIT_OK` …): 0 on success; 2 for bad input (a bad argument included),
with a one-line message that says what to fix; 1 for an internal error; 130 when interrupted
(Ctrl-C) and 143 on SIGTERM, SIGHUP or the loss of the calling program — all cancel the run,
and nothing is written.
"""
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, TextIO

PROGRESS_MODES = ("auto", "bar", "plain", "json", "none")
EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 1, 130, 143
#: The ``event`` of each JSON line.
PROGRESS, LOG, WARNING, STAGING, RESULT, ERROR = (
    "progress", "log", "warning", "staging", "result", "error")
#: The ``kind`` of an error event.
KIND_INPUT, KIND_CANCELLED, KIND_INTERNAL = "input", "cancelled", "internal"


def program_name() -> str:
    """How the user started the engine: ``mamol`` (the command ``pip install`` makes) or
    ``python -m mamol`` (the plugin's engine, and torchrun's ``-m mamol``)."""
    return "mamol" if Path(sys.argv[0] or "").name == "mamol" else "python -m mamol"


class Channel:
    """Where the engine's progress, log lines, warnings, result and error go (stderr)."""

    def __init__(self, mode: str, stage: str, stream: Optional[TextIO] = None,
                 rank: Optional[int] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        if rank:   # under torchrun only rank 0 shows progress; every rank shows its errors
            mode = "json-errors" if mode == "json" else "none"
        self.mode = mode
        self.stage = stage
        self.rank = rank   # None: a single process
        self._percent = -1.0
        self._bar_shown = False
        self._last_bar = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _json(self, record: Dict[str, object]) -> None:
        self._write(json.dumps(record, ensure_ascii=False) + "\n")

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self._write("\r\033[K")
            self._bar_shown = False

    def _draw_bar(self) -> None:
        width = 30
        filled = int(round(width * self._percent / 100.0))
        self._write(f"\r{self.stage} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{self._percent:5.1f} %")
        self._bar_shown = True

    def progress(self, percent: float) -> None:
        percent = round(float(percent), 1)
        if percent == self._percent:
            return
        self._percent = percent
        if self.mode == "json":
            self._json({"event": PROGRESS, "percent": percent, "stage": self.stage})
        elif self.mode == "bar":
            now = time.monotonic()
            if now - self._last_bar >= 0.1 or percent >= 100:
                self._last_bar = now
                self._draw_bar()

    def log(self, text: str) -> None:
        if self.mode == "json":
            self._json({"event": LOG, "text": text})
        elif self.mode in ("bar", "plain"):
            self._clear_bar()
            self._write(text + "\n")
            if self.mode == "bar" and self._percent >= 0:
                self._draw_bar()

    def warning(self, text: str) -> None:
        if self.mode == "json":
            self._json({"event": WARNING, "text": text})
        elif self.mode in ("bar", "plain"):
            self._clear_bar()
            self._write(f"warning: {text}\n")
            if self.mode == "bar" and self._percent >= 0:
                self._draw_bar()

    def result(self, command: str, result: Dict[str, object], out: TextIO,
               lines: Optional[Sequence[str]] = None) -> None:
        """The result on ``out``: JSON with ``--progress json``, else ``lines`` when the
        command words its result itself (``doctor``'s report), else a line per key."""
        if self.mode == "json":
            self._json({"event": RESULT, "command": command, "result": result})
        self._clear_bar()
        if self.mode == "json":
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        elif lines is not None:
            out.write("".join(line + "\n" for line in lines))
        else:
            for key, value in result.items():
                out.write(f"{key}: {json.dumps(value, ensure_ascii=False)}\n")
        out.flush()

    def staging(self, path: Path) -> None:
        """A path this run is about to create (a run folder, an output lock): the calling
        program removes it if the engine dies before it could (:mod:`core.runs`)."""
        if self.mode == "json":
            self._json({"event": STAGING, "path": str(path)})

    def error(self, kind: str, message: str) -> None:
        self._clear_bar()
        if self.mode in ("json", "json-errors"):
            record = {"event": ERROR, "kind": kind, "message": message}
            if self.rank is not None:
                record["rank"] = self.rank
            self._json(record)
        else:
            where = "" if self.rank is None else f"rank {self.rank}: "
            self._write(f"error: {where}{message}\n")


def json_requested(argv: Sequence[str]) -> bool:
    """Whether a command line asks for ``--progress json`` (read before it is parsed)."""
    argv = list(argv)
    return "json" in [argv[i + 1] for i, value in enumerate(argv[:-1])
                      if value == "--progress"] or "--progress=json" in argv


def parse_event(line: str) -> Optional[Dict[str, object]]:
    """The JSON event a line of the engine's stderr carries, or None for a plain line."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def one_line(text: str) -> str:
    return " ".join(text.split())
