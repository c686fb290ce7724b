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

    def report(self, percent: float) -> None:
        """Report overall progress (0–100) and raise :class:`Cancelled` if the user stopped."""
        self.check()
        if self._progress is not None:
            self._progress(max(0.0, min(100.0, float(percent))))

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user asked to stop."""
        if self._is_cancelled is not None and self._is_cancelled():
            raise Cancelled("Cancelled by the user; nothing was written.")
