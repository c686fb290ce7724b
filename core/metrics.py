"""Classification accuracy metrics from a confusion matrix (QGIS-free, numpy only).

Classes are positions ``0 .. K-1`` (map raster class values to positions before calling).
The confusion matrix has one row per *reference* class and one column per *predicted*
class, so ``matrix[i, j]`` counts samples of reference class ``i`` predicted as ``j``.
All accuracies are fractions in ``[0, 1]`` (not percentages); a metric whose denominator
is zero is ``nan``, and :func:`summarise` turns every ``nan`` into ``None`` for JSON.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np


def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` flattened to int64; ``ValueError`` if any value is not a whole number."""
    array = np.asarray(values).ravel()
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} labels must be integers, got dtype {array.dtype}")
    # float labels are accepted only when they are whole numbers (e.g. read from a float raster)
    if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError(f"{name} labels must be whole numbers")
    return array.astype(np.int64)


def confusion_matrix(reference: np.ndarray, predicted: np.ndarray,
                     class_count: int) -> np.ndarray:
    """Counts of (reference, predicted) class pairs: int64 array ``(K, K)``, K = ``class_count``.

    Rows are reference classes, columns predicted classes. Both inputs must have the same
    shape and hold class positions in ``0 .. K-1``; otherwise ``ValueError``.
    """
    if class_count < 0:
        raise ValueError(f"class_count must be >= 0, got {class_count}")
    if np.shape(reference) != np.shape(predicted):
        raise ValueError(f"reference and predicted differ in shape: "
                         f"{np.shape(reference)} != {np.shape(predicted)}")
    ref = _as_labels(reference, "reference")
    pred = _as_labels(predicted, "predicted")
    for name, labels in (("reference", ref), ("predicted", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= class_count):
            raise ValueError(f"{name} labels must lie in 0..{class_count - 1}, "
                             f"got {labels.min()}..{labels.max()}")
    # one bincount over the flattened (row, column) index is far faster than a Python loop
    flat = np.bincount(ref * class_count + pred, minlength=class_count * class_count)
    return flat.astype(np.int64).reshape(class_count, class_count)


def _checked(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as int64, ``ValueError`` unless it is square 2-D and non-negative."""
    array = np.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {array.shape}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError("a confusion matrix cannot hold negative counts")
    return array


def overall_accuracy(matrix: np.ndarray) -> float:
    """Fraction of samples on the diagonal (0..1); ``nan`` when the matrix holds no sample."""
    array = _checked(matrix)
    total = int(array.sum())
    if total == 0:
        return float("nan")
    return int(np.trace(array)) / total


def cohen_kappa(matrix: np.ndarray) -> float:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` (unitless, <= 1); ``nan`` where undefined.

    ``p_e = sum_i(row_i * col_i) / n**2`` is the agreement expected by chance. Kappa is
    undefined (``nan``) with no sample, and when ``p_e == 1``: every reference sample and
    every prediction fall in one single class, so agreement cannot be told from chance and
    the formula is 0/0. A perfectly classified one-class set is not evidence of skill.
    """
    array = _checked(matrix)
    # exact integer arithmetic (Python ints): no rounding in the p_e == 1 test, no overflow
    total = int(array.sum())
    if total == 0:
        return float("nan")
    agree = int(np.trace(array))
    rows = [int(v) for v in array.sum(axis=1)]
    cols = [int(v) for v in array.sum(axis=0)]
    chance = sum(r * c for r, c in zip(rows, cols))        # p_e * n**2
    denominator = total * total - chance                   # (1 - p_e) * n**2
    if denominator == 0:
        return float("nan")
    return (total * agree - chance) / denominator


#: How reports flag a result whose reference holds a single class.
ONE_CLASS_NOTE = "one reference class only: OA is no measure of skill here, kappa undefined or 0"


def one_class_flag(record) -> str:
    """`` [<note>]`` for a metrics record (with ``reference_classes``) of one class, else ''."""
    return f" [{ONE_CLASS_NOTE}]" if record.get("reference_classes") == 1 else ""


def reference_class_count(matrix: np.ndarray) -> int:
    """How many classes have reference samples (rows of ``matrix`` that are not empty).
    With one, OA measures nothing but that class and kappa is 0 or undefined."""
    return int(np.count_nonzero(_checked(matrix).sum(axis=1)))


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator`` as float64, ``nan`` where denominator is 0."""
    num = numerator.astype(np.float64)
    den = denominator.astype(np.float64)
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def producers_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Per-class recall (0..1, shape ``(K,)``): diagonal / reference (row) total; nan if 0."""
    array = _checked(matrix)
    return _safe_ratio(np.diag(array), array.sum(axis=1))


def users_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Per-class precision (0..1, shape ``(K,)``): diagonal / predicted (column) total; nan if 0."""
    array = _checked(matrix)
    return _safe_ratio(np.diag(array), array.sum(axis=0))


def f1_scores(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 (0..1, shape ``(K,)``): ``2 TP / (reference total + predicted total)``.

    This equals the harmonic mean of producer's and user's accuracy where both exist, and it
    is 0 (not nan) for a class that is present but never correctly predicted; it is nan only
    for a class absent from both the reference and the predictions.
    """
    array = _checked(matrix)
    return _safe_ratio(2 * np.diag(array), array.sum(axis=1) + array.sum(axis=0))


def _or_none(value: float) -> Optional[float]:
    """``value`` as a Python float, or ``None`` if it is nan/inf (JSON has no nan)."""
    value = float(value)
    return value if math.isfinite(value) else None


def summarise(matrix: np.ndarray, class_names: Sequence[str]) -> Dict[str, object]:
    """A JSON-ready summary of ``matrix``: sample count, OA, kappa, matrix and per-class metrics.

    Accuracies are fractions (0..1) or ``None`` where undefined. ``class_names`` must have
    one name per matrix row, in class-position order.
    """
    array = _checked(matrix)
    if len(class_names) != array.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {array.shape[0]}-class matrix")
    reference_totals = array.sum(axis=1)
    predicted_totals = array.sum(axis=0)
    pa, ua, f1 = producers_accuracy(array), users_accuracy(array), f1_scores(array)
    per_class: List[Dict[str, object]] = [
        {"name": str(name),
         "reference_samples": int(reference_totals[i]),
         "predicted_samples": int(predicted_totals[i]),
         "producers_accuracy": _or_none(pa[i]),
         "users_accuracy": _or_none(ua[i]),
         "f1": _or_none(f1[i])}
        for i, name in enumerate(class_names)]
    return {"samples": int(array.sum()),
            "oa": _or_none(overall_accuracy(array)),
            "kappa": _or_none(cohen_kappa(array)),
            "reference_classes": reference_class_count(array),
            "confusion_matrix": array.tolist(),
            "per_class": per_class}
