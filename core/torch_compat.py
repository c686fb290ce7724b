"""The one place that knows how to import PyTorch, torchvision and open_clip here.

Why this module exists: the only CPU build of PyTorch we install is ``torch==2.13.0+cpu``,
but the package registry's ``torchvision==0.28.0`` is a CUDA build. Its compiled operators
(``torchvision._C``) cannot load next to CPU torch, after which ``import torchvision`` dies
while registering fake kernels for operators that were never defined
("operator torchvision::nms does not exist", pytorch/vision#9085). open_clip imports
torchvision (for its image transforms), so open_clip would be unusable.

What we do: try the normal import first. Only if it fails with exactly that error, declare
the schemas of the two operators torchvision registers fake kernels for unconditionally
(``nms`` and ``qnms``), so the import completes. No kernel is provided: calling
``torchvision.ops.nms`` would still fail loudly, and MaMOL never calls it (we use no
torchvision operator, only open_clip's model code). With a working torchvision (a matching
CPU or CUDA build) the first import succeeds and nothing is patched.

Heavy imports happen only when these functions are called, never at module import, so the
QGIS provider loads even where PyTorch is missing and can say so.
"""
import importlib
import logging
import sys
from types import ModuleType

from .errors import MamolInputError

log = logging.getLogger(__name__)

_MISSING_HELP = (
    "MaMOL needs PyTorch and open_clip_torch in the Python that runs it. Install them with "
    "'pip install torch==2.13.0 torchvision==0.28.0 open_clip_torch==3.3.0' (see the README, "
    "'Install into desktop QGIS').")

# Operators torchvision's _meta_registrations registers fake kernels for without first
# checking that its C++ extension loaded (schemas as in torchvision/csrc/ops/nms.cpp).
_UNGUARDED_OPERATOR_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library_fragment = None   # kept alive: dropping it would unregister the schemas
patched_torchvision = False


def import_torch() -> ModuleType:
    """Import and return ``torch``, or raise :class:`MamolInputError` saying how to install it."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise MamolInputError(f"PyTorch is not installed ({exc}). {_MISSING_HELP}") from exc


def _forget_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import ``torchvision``, working around a CUDA build next to CPU torch (see above)."""
    global _library_fragment, patched_torchvision
    torch = import_torch()
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
            raise
        log.info("torchvision's compiled operators did not load (%s); declaring their "
                 "schemas so that the Python part of torchvision imports", exc)
    except ImportError as exc:
        raise MamolInputError(f"torchvision is not installed ({exc}). {_MISSING_HELP}") from exc
    _forget_modules("torchvision")
    if _library_fragment is None:
        _library_fragment = torch.library.Library("torchvision", "DEF")
        for schema in _UNGUARDED_OPERATOR_SCHEMAS:
            _library_fragment.define(schema)
    patched_torchvision = True
    return importlib.import_module("torchvision")


def import_open_clip() -> ModuleType:
    """Import and return ``open_clip`` (after :func:`import_torchvision`)."""
    import_torchvision()
    try:
        return importlib.import_module("open_clip")
    except ImportError as exc:
        raise MamolInputError(f"open_clip_torch is not installed ({exc}). {_MISSING_HELP}") \
            from exc
