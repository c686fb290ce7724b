"""How long a run has left (issue 32). After the first blocks of a classification or the
first steps of training, one log line with the measured pace and the time left ("About 3 h
10 min left at 88 pixels/s on the CPU."); and, once per run, a warning that says what is
faster when a per-pixel model would run for more than :data:`LONG_CPU_RUN` on the CPU (a
ViT-B-16 per-pixel model classifies about 1 pixel/s there: days for a scene).

When it speaks, kept simple so that the log stays short:

* The first unit of work (a batch, a training step) pays for warm-up (allocations, kernel
  choice, compilation) and is not measured: the pace is the work done since it ended over
  the time since then.
* The first estimate comes once :data:`MEASURE_SECONDS` have been measured, and only when at
  least :data:`QUIET_BELOW` is left (a short run needs none).
* A new estimate comes only when the run's projected length (time so far plus time left)
  has moved by more than a factor :data:`RESTATE_FACTOR` from the one last said: a handful
  of lines at most, however long the run.

The run feeds a :class:`Pace` from its loop where the host is anyway (each batch, block or
step): one clock reading, no device sync. On a GPU such a point marks when the host queued
the work, not when the device finished it; the device's bounded queue soon makes the two
march together, and the first estimate waits for :data:`MEASURE_SECONDS` of measuring.
"""
import time
from typing import Callable, Optional

from .devices import device_field
from .model_kinds import model_kind_field
from .options import choosing

#: Past this estimate (seconds left) on the CPU, a per-pixel run gets the warning that
#: says what is faster.
LONG_CPU_RUN = 30 * 60.0
#: Seconds of measured work (after the first unit) before the first estimate.
MEASURE_SECONDS = 10.0
#: No estimate when less than this is left (seconds).
QUIET_BELOW = 60.0
#: A new estimate when the projected length of the run changes by more than this factor.
RESTATE_FACTOR = 2.0


def clock() -> float:
    """Seconds for measuring the pace; tests replace it with a fake clock."""
    return time.perf_counter()


def human_duration(seconds: float) -> str:
    """"45 s", "12 min", "3 h 10 min", "2 d 4 h": at most two units, rounded to the
    smaller one."""
    seconds = max(0.0, float(seconds))
    if seconds < 59.5:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 24 * 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} d" + (f" {hours} h" if hours else "")


def human_rate(rate: float) -> str:
    """A rate with the digits that mean something: "88", "3.4", "0.75"."""
    if rate >= 10:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


def device_words(device) -> str:
    """Where a run computes, for a sentence: "on the CPU", "on the GPU (cuda:0)", or
    "on mps" (any other kind of torch device, by its name)."""
    name = str(device)
    kind = name.split(":")[0]
    if kind == "cpu":
        return "on the CPU"
    if kind == "cuda":
        return f"on the GPU ({name})"
    return f"on {name}"


def estimate_line(left: float, rate: float, unit: str, where: str) -> str:
    """"About 3 h 10 min left at 88 pixels/s on the CPU." """
    return f"About {human_duration(left)} left at {human_rate(rate)} {unit}/s {where}."


def pixel_classify_advice() -> str:
    """What to do about a long classification with a per-pixel model on the CPU."""
    return ("The model is of the per-pixel kind: one encoder pass per pixel. A model of the "
            "tile kind labels a whole tile in one pass: train one with "
            f"{choosing(model_kind_field(), 'tile')}. Or run on a GPU: "
            f"{choosing(device_field(), 'cuda')}.")


def pixel_training_advice(tile_kind: bool) -> str:
    """What to do about a long training of a per-pixel model on the CPU; ``tile_kind``:
    whether the run could train the tile kind instead (MCE cannot)."""
    text = f"A GPU trains far faster: {choosing(device_field(), 'cuda')}."
    if tile_kind:
        text += (" A per-pixel model is slow to classify on a CPU too (one encoder pass per "
                 f"pixel): with {choosing(model_kind_field(), 'tile')}, one pass labels a "
                 "whole tile.")
    return text


class Pace:
    """Measures a run's pace from the work it reports and says the time left (see the
    module docstring). Feed it with :meth:`advance` (units finished) and, for long units
    such as a classification block, :meth:`begin_part` and :meth:`step` within them.

    Args:
        total: units of work in the run (pixels of the grid, training samples).
        unit: what a unit is, plural ("pixels", "samples").
        device: the run's torch device (or its name).
        say: receives the estimate lines.
        caution: receives the warning (once) when more than :data:`LONG_CPU_RUN` is left
            on the CPU and there is ``advice``.
        advice: what to do about a long CPU run; None: nothing to advise (a tile model).
        processes: ranks that share the work evenly: ``total`` is this rank's share, and the
            rate said is the whole run's (this rank's times ``processes``).
        clock: seconds (default: :func:`clock`).
    """

    def __init__(self, total: float, unit: str, device, say: Callable[[str], None],
                 caution: Callable[[str], None], advice: Optional[str] = None,
                 processes: int = 1, clock: Optional[Callable[[], float]] = None) -> None:
        self.total = float(total)
        self.unit = unit
        self.where = device_words(device) + (f", {processes} processes" if processes > 1
                                             else "")
        self.on_cpu = str(device).split(":")[0] == "cpu"
        self.say, self.caution, self.advice = say, caution, advice
        self.processes = processes
        self.clock = clock
        self.done = 0.0                # units finished
        self._part = 0.0               # units of the part under way
        self._started = self._now()
        self._base = None              # (seconds, units) when the first unit of work ended
        self._said = None              # the projected length of the run last said
        self._advised = advice is None

    def _now(self) -> float:
        return (self.clock or clock)()

    def begin_part(self, units: float) -> None:
        """A part of ``units`` starts (a block): :meth:`step` reports progress within it."""
        self._part = float(units)

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` of the current part are finished (the signature of
        :meth:`core.feedback.Reporter.step`, which forwards here)."""
        if total > 0:
            self._measure(self.done + self._part * min(1.0, done / total))

    def advance(self, units: float) -> None:
        """``units`` more are finished (a block, a step); the current part ends."""
        self.done += units
        self._part = 0.0
        self._measure(self.done)

    def _measure(self, done: float) -> None:
        now = self._now()
        if self._base is None:
            if done > 0:
                self._base = (now, done)
            return
        seconds, units = now - self._base[0], done - self._base[1]
        if seconds < MEASURE_SECONDS or units <= 0:
            return
        rate = units / seconds
        self._tell(now - self._started, max(0.0, self.total - done) / rate, rate)

    def _tell(self, elapsed: float, left: float, rate: float) -> None:
        """Say the estimate if it is the first worth saying or has moved by more than
        :data:`RESTATE_FACTOR`; warn once about a long CPU run."""
        length = elapsed + left
        moved = self._said is None or not (
            self._said / RESTATE_FACTOR <= length <= self._said * RESTATE_FACTOR)
        if moved and left >= QUIET_BELOW:
            self._said = length
            self.say(estimate_line(left, rate * self.processes, self.unit, self.where))
        if not self._advised and self.on_cpu and left > LONG_CPU_RUN:
            self._advised = True
            self.caution(f"At this pace the run needs about {human_duration(left)} more "
                         f"{self.where}. {self.advice}")
