"""Progress and cancellation as plain callables, so the core never sees QGIS feedback objects.

Algorithms pass ``feedback.setProgress`` and ``feedback.isCanceled``; the CLI passes its own
functions; library users may pass nothing.
"""
from typing import Callable, Optional

from .errors import Cancelled

#: Receives overall progress in percent (0–100).
ProgressCallback = Callable[[float], None]
#: Returns True once the user asked to stop.
CancelCheck = Callable[[], bool]


class Reporter:
    """Bundles the two callables and maps a sub-task's progress into a percent range."""

    def __init__(self, progress: Optional[ProgressCallback] = None,
                 is_cancelled: Optional[CancelCheck] = None) -> None:
        self._progress = progress
        self._is_cancelled = is_cancelled
        self._span = None   # (low, high): the percent range of the part under way
        self._reached = 0.0
        self._follower: Optional[Callable[[int, int], None]] = None

    def follow(self, listener: Callable[[int, int], None]) -> None:
        """Also tell ``listener`` the ``(done, total)`` of every :meth:`step`: the run's
        :class:`~core.pace.Pace` measures its pace within a block from them."""
        self._follower = listener

    def begin_part(self, low: float, high: float) -> None:
        """The next :meth:`step` calls move the bar from ``low`` to ``high`` (e.g. one block of
        a classification, so that the bar moves batch by batch in a one-block run)."""
        self._span = (float(low), float(high))
        self._reached = float(low)

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current part are finished: report the
        progress (never backwards) and raise :class:`Cancelled` if the user stopped."""
        if self._follower is not None:
            self._follower(done, total)
        if self._span is None or total <= 0:
            self.check()
            return
        low, high = self._span
        percent = low + (high - low) * min(1.0, done / total)
        if percent > self._reached:
            self._reached = percent
            self.report(percent)
        else:
            self.check()

    def report(self, percent: float) -> None:
        """Report overall progress (0–100) and raise :class:`Cancelled` if the user stopped."""
        self.check()
        if self._progress is not None:
            self._progress(max(0.0, min(100.0, float(percent))))

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user asked to stop."""
        if self._is_cancelled is not None and self._is_cancelled():
            raise Cancelled("Cancelled by the user; nothing was written.")
