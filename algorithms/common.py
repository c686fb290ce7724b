"""What every MaMOL algorithm shares: core errors become ``QgsProcessingException`` and
QGIS feedback becomes the core's plain progress/cancel callables."""
import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Tuple

from qgis.core import QgsProcessingException, QgsProcessingFeedback

from ..core.errors import Cancelled, MamolInputError

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")


@contextlib.contextmanager
def core_errors_as_processing_exceptions() -> Iterator[None]:
    """Re-raise the core's user-facing errors as ``QgsProcessingException``."""
    try:
        yield
    except (MamolInputError, Cancelled) as exc:
        raise QgsProcessingException(str(exc)) from exc


def progress_callables(feedback: Optional[QgsProcessingFeedback]) -> Tuple[Optional[Callable],
                                                                           Optional[Callable]]:
    """``(progress, is_cancelled)`` for the core, forwarding to ``feedback`` (may be None)."""
    if feedback is None:
        return None, None
    return feedback.setProgress, feedback.isCanceled


def as_whole_number(value):
    """``value`` as an int if it is one (int, integral float or such a string), else None.

    Processing hands parameters over as Python numbers from ``processing.run`` and as
    strings from ``qgis_process``; both must be checked before the core sees them.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None
