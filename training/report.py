"""Training report: a JSON record and one self-contained HTML page (QGIS-free, stdlib + numpy).

The summary is a plain dict (see :func:`write_report`); every key is optional. Accuracies
in it are fractions (0..1) and are shown as percentages; durations are seconds. The HTML
has no external resources and no JavaScript: styles are inline, and the training curves
are SVG drawn here. Every string taken from the summary is HTML-escaped.
"""
import html
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.metrics import ONE_CLASS_NOTE
from ..core.staging import publish

DASH = "—"
DEFAULT_TITLE = "MaMOL training report"
_HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
_SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e")
# chart colours are SVG attributes, not CSS, so a chart copied out of the page looks the same
_GRID, _INK, _BEST, _BEST_TEXT = "#e4e4e4", "#333333", "#e6a700", "#9a6b00"


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------

def write_report(summary: Dict[str, Any], html_path: Path, json_path: Path) -> None:
    """Write ``summary`` as JSON to ``json_path`` and as an HTML page to ``html_path``.

    Summary keys (all optional): ``title``, ``model_file``, ``created_by``, ``modalities``,
    ``classes``, ``config``, ``missing_simulation``, ``epochs``, ``best_epoch``,
    ``validation``, ``forced_patterns``, ``timing``, ``warnings``; an evaluation report has
    ``evaluation``, ``missing_patterns`` and ``forcing`` instead of the training keys
    (see :mod:`training.evaluation`). Float nan/inf anywhere
    become ``null``/``—``. Both files are first written to temporary files in their target
    folders and then renamed over the targets, so a failure leaves neither a half-written
    file nor a temporary file behind (the parent folders must exist).
    """
    clean = _json_safe(summary)
    json_text = json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    html_text = render_html(clean)
    staged: List[Tuple[Path, Path]] = []
    try:
        for text, target in ((json_text, Path(json_path)), (html_text, Path(html_path))):
            staged.append((_stage(text, target), target))
        for temporary, target in staged:
            publish(temporary, target)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise


def _stage(text: str, target: Path) -> Path:
    """Write ``text`` (UTF-8) to a new temporary file next to ``target``; return its path."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _json_safe(value: Any) -> Any:
    """``value`` with nan/inf floats replaced by ``None`` and numpy types made plain Python."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------
# Formatting helpers: each returns HTML-safe text
# ---------------------------------------------------------------------------------------

def _esc(value: Any) -> str:
    """``value`` as escaped text; ``None`` as a dash."""
    return DASH if value is None else html.escape(str(value))


def _number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or ``None`` (missing, non-numeric, nan or inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_percent(value: Any, decimals: int = 2) -> str:
    """A fraction (0..1) as a percentage with ``decimals`` decimals; ``None`` as a dash."""
    number = _number(value)
    if number is None:
        return DASH if value is None else _esc(value)
    return f"{100.0 * number:.{decimals}f} %"


def _fixed(value: Any, decimals: int) -> str:
    """A number with ``decimals`` decimals; missing as a dash, non-numbers escaped as text."""
    number = _number(value)
    if number is None:
        return DASH if value is None else _esc(value)
    return f"{number:.{decimals}f}"


def _count(value: Any) -> str:
    """A whole count; missing as a dash, non-numbers escaped as text."""
    number = _number(value)
    if number is None:
        return DASH if value is None else _esc(value)
    return str(int(number)) if number == int(number) else f"{number:.2f}"


def _general(value: Any) -> str:
    """A setting value: lists joined by commas, dicts as JSON, floats in short form."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_general(item) for item in value) or DASH
    if isinstance(value, Mapping):
        return _esc(json.dumps(value, ensure_ascii=False))
    return _esc(value)


def _records(value: Any) -> List[Mapping[str, Any]]:
    """The mappings in ``value`` when it is a list; anything else gives an empty list."""
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]],
           row_classes: Optional[Sequence[str]] = None) -> str:
    """An HTML table; ``headers`` are plain text (escaped here), ``rows`` hold cell HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        css = row_classes[index] if row_classes and row_classes[index] else ""
        attribute = f' class="{css}"' if css else ""
        body.append(f"<tr{attribute}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return (f"<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _section(title: str, content: str) -> str:
    """A titled report section (``title`` is plain text)."""
    return f"<section><h2>{html.escape(title)}</h2>\n{content}\n</section>"


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------

def _header(summary: Mapping[str, Any]) -> str:
    """Title, model file and producer."""
    title = summary.get("title") or DEFAULT_TITLE
    lines = [f"<h1>{_esc(title)}</h1>", '<dl class="meta">',
             f"<dt>Model file</dt><dd><code>{_esc(summary.get('model_file'))}</code></dd>",
             f"<dt>Created by</dt><dd>{_esc(summary.get('created_by'))}</dd>"]
    best = summary.get("best_epoch")
    if best is not None:
        lines.append(f"<dt>Best epoch</dt><dd>{_esc(best)}</dd>")
    lines.append("</dl>")
    return "\n".join(lines)


def _modalities(summary: Mapping[str, Any]) -> str:
    """Input modalities: name, band count, source path."""
    records = _records(summary.get("modalities"))
    rows = [[_esc(m.get("name")), _count(m.get("bands")), f"<code>{_esc(m.get('path'))}</code>"]
            for m in records]
    if not rows:
        return ""
    headers = ["Modality", "Bands", "Source"]
    if any("used" in m for m in records):
        headers.append("Used")
        for row, m in zip(rows, records):
            row.append("yes" if m.get("used", True) else "no (forced absent)")
    if any("far_share" in m for m in records):
        headers.append("Far from the training data")
        for row, m in zip(rows, records):
            share = m.get("far_share")
            row.append(f"{100 * share:.1f} %" if isinstance(share, (int, float)) else DASH)
    return _section("Modalities", _table(headers, rows))


def _swatch(colour: Any) -> str:
    """A coloured square for a ``#rgb``/``#rrggbb``/``#rrggbbaa`` colour; a dash otherwise."""
    # only strict hex colours reach the style attribute, so no CSS can be injected
    if not isinstance(colour, str) or not _HEX_COLOUR.match(colour):
        return DASH if colour is None else _esc(colour)
    return f'<span class="swatch" style="background:{colour}"></span> <code>{colour}</code>'


def _classes(summary: Mapping[str, Any]) -> str:
    """Classes with colour and training/validation pixel and polygon counts (or, in an
    evaluation report, reference sample counts)."""
    records = _records(summary.get("classes"))
    if records and all("reference_samples" in c for c in records):
        rows = [[_esc(c.get("value")), _esc(c.get("name")), _swatch(c.get("colour")),
                 _count(c.get("reference_samples"))] for c in records]
        return _section("Classes", _table(["Value", "Class", "Colour", "Reference samples"],
                                          rows))
    rows = [[_esc(c.get("value")), _esc(c.get("name")), _swatch(c.get("colour")),
             _count(c.get("train_pixels")), _count(c.get("validation_pixels")),
             _count(c.get("train_polygons")), _count(c.get("validation_polygons"))]
            for c in _records(summary.get("classes"))]
    if not rows:
        return ""
    headers = ["Value", "Class", "Colour", "Training pixels", "Validation pixels",
               "Training polygons", "Validation polygons"]
    return _section("Classes", _table(headers, rows))


def _config(summary: Mapping[str, Any]) -> str:
    """Training settings as a two-column table, in the summary's order."""
    config = _mapping(summary.get("config"))
    if not config:
        return ""
    rows = [[f"<code>{_esc(key)}</code>", _general(value)] for key, value in config.items()]
    return _section("Settings", _table(["Setting", "Value"], rows))


def _pattern_counts(train: Mapping[str, Any], validation: Mapping[str, Any]) -> str:
    """Sample counts and shares per missing-modality pattern, training and validation."""
    patterns = list(train) + [p for p in validation if p not in train]
    train_total = sum(_number(v) or 0.0 for v in train.values())
    validation_total = sum(_number(v) or 0.0 for v in validation.values())

    def share(value: Any, total: float) -> str:
        number = _number(value)
        return format_percent(number / total, 1) if number is not None and total else DASH

    rows = [[f"<code>{_esc(p)}</code>", _count(train.get(p)), share(train.get(p), train_total),
             _count(validation.get(p)), share(validation.get(p), validation_total)]
            for p in patterns]
    headers = ["Pattern", "Training samples", "Training share", "Validation samples",
               "Validation share"]
    return _table(headers, rows)


def _missing_simulation(summary: Mapping[str, Any]) -> str:
    """How modalities were dropped during training, and the resulting pattern counts."""
    simulation = _mapping(summary.get("missing_simulation"))
    if not simulation:
        return ""
    parts = []
    if simulation.get("description"):
        parts.append(f"<p>{_esc(simulation['description'])}</p>")
    train = _mapping(simulation.get("train_patterns"))
    validation = _mapping(simulation.get("validation_patterns"))
    if train or validation:
        parts.append(_pattern_counts(train, validation))
    return _section("Missing-modality simulation", "\n".join(parts) or f"<p>{DASH}</p>")


# ---------------------------------------------------------------------------------------
# SVG line charts
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Series:
    """One line of a chart: points are (epoch, value or None for a gap)."""

    label: str
    colour: str
    points: Tuple[Tuple[float, Optional[float]], ...]


@dataclass(frozen=True)
class _Frame:
    """Chart geometry in SVG pixels, and the data ranges mapped onto the plot area."""

    width: int = 640
    height: int = 300
    left: int = 64
    right: int = 20
    top: int = 44
    bottom: int = 48
    x_range: Tuple[float, float] = (0.0, 1.0)
    y_range: Tuple[float, float] = (0.0, 1.0)

    def x(self, value: float) -> float:
        lo, hi = self.x_range
        return self.left + (value - lo) / (hi - lo) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        lo, hi = self.y_range
        plot = self.height - self.top - self.bottom
        return self.top + (hi - value) / (hi - lo) * plot


def _nice_ticks(lo: float, hi: float, target: int = 5) -> List[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^n) covering ``lo .. hi``."""
    if not hi > lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw)
    start = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - start) / step - 1e-9)
    # rounding hides float noise such as 0.30000000000000004 in the labels
    return [round(start + i * step, 12) for i in range(count + 1)]


def _epoch_ticks(lo: float, hi: float) -> List[int]:
    """Whole epoch numbers in ``lo .. hi``, at most about ten of them."""
    first, last = math.ceil(lo), math.floor(hi)
    step = max(1, math.ceil((last - first + 1) / 10))
    return list(range(first, last + 1, step))


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float],
          x_label: str, y_label: str, y_percent: bool) -> List[str]:
    """Grid lines, tick labels and axis titles."""
    parts = []
    x0, x1 = frame.left, frame.width - frame.right
    y0, y1 = frame.height - frame.bottom, frame.top
    for tick in y_ticks:
        y = frame.y(tick)
        label = f"{tick * 100:g}%" if y_percent else f"{tick:g}"
        parts.append(f'<line stroke="{_GRID}" x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append(f'<line stroke="{_INK}" x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 5}"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + 18}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<line stroke="{_INK}" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>')
    parts.append(f'<line stroke="{_INK}" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{frame.height - 8}" '
                 f'text-anchor="middle">{html.escape(x_label)}</text>')
    middle = (y0 + y1) / 2
    parts.append(f'<text x="14" y="{middle:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {middle:.1f})">{html.escape(y_label)}</text>')
    return parts


def _polylines(frame: _Frame, series: _Series) -> List[str]:
    """A series as polylines broken at missing values, with a marker on every point."""
    parts: List[str] = []
    run: List[str] = []
    for x, y in series.points + ((0.0, None),):          # sentinel flushes the last run
        if y is None:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{series.colour}" '
                             f'stroke-width="2" points="{" ".join(run)}"/>')
            run = []
            continue
        run.append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
    for x, y in series.points:
        if y is not None:
            parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" '
                         f'fill="{series.colour}"><title>{html.escape(series.label)}, '
                         f'epoch {x:g}: {y:.4g}</title></circle>')
    return parts


def _legend(frame: _Frame, series: Sequence[_Series]) -> List[str]:
    """Legend items in a row above the plot area."""
    parts = []
    x = frame.left
    for item in series:
        parts.append(f'<line x1="{x}" y1="14" x2="{x + 22}" y2="14" stroke="{item.colour}" '
                     f'stroke-width="3"/>')
        parts.append(f'<text x="{x + 28}" y="18">{html.escape(item.label)}</text>')
        x += 48 + 7 * len(item.label)                  # rough text width: 7 px a character
    return parts


def _best_marker(frame: _Frame, best: Optional[float]) -> List[str]:
    """A dashed vertical line and label at the best epoch, when it lies on the x axis."""
    if best is None or not frame.x_range[0] <= best <= frame.x_range[1]:
        return []
    x = frame.x(best)
    y0, y1 = frame.height - frame.bottom, frame.top
    # the label sits in the top margin, above the data, and stays inside the picture
    anchor = "end" if x > frame.width - 60 else ("start" if x < frame.left + 60 else "middle")
    label = (f'<text fill="{_BEST_TEXT}" x="{x:.1f}" y="{y1 - 6}" '
             f'text-anchor="{anchor}">best epoch {best:g}</text>')
    line = (f'<line stroke="{_BEST}" stroke-width="1.5" stroke-dasharray="5 4" '
            f'x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}"/>')
    return [line, label]


def _line_chart(series: Sequence[_Series], title: str, y_label: str,
                y_range: Optional[Tuple[float, float]] = None,
                best_epoch: Optional[float] = None, y_percent: bool = False) -> str:
    """An inline SVG line chart of ``series`` against epoch; empty string with no data.

    ``y_range`` fixes the y axis (e.g. ``(0, 1)`` for accuracies); otherwise it spans the
    data and zero, with round ticks.
    """
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points if y is not None]
    if not ys:
        return ""
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:                                    # one epoch: centre it
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    # a fixed axis still stretches to show out-of-range data (e.g. a negative kappa)
    lo, hi = y_range if y_range is not None else (0.0, max(ys))
    y_ticks = _nice_ticks(min(lo, *ys), max(hi, *ys))
    frame = _Frame(x_range=(x_lo, x_hi), y_range=(y_ticks[0], y_ticks[-1]))
    opening = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
               f'font-family="sans-serif" font-size="11" width="{frame.width}" '
               f'height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}">')
    parts = [opening, f"<title>{html.escape(title)}</title>"]
    parts += _axes(frame, _epoch_ticks(x_lo, x_hi), y_ticks, "Epoch", y_label, y_percent)
    parts += _best_marker(frame, best_epoch)
    for item in series:
        parts += _polylines(frame, item)
    parts += _legend(frame, series)
    parts.append("</svg>")
    return "\n".join(parts)


def _epoch_series(epochs: Sequence[Mapping[str, Any]], key: str, label: str,
                  colour: str) -> _Series:
    """The values of ``key`` per epoch (missing values become gaps)."""
    points = []
    for record in epochs:
        epoch = _number(record.get("epoch"))
        if epoch is not None:
            points.append((epoch, _number(record.get(key))))
    return _Series(label, colour, tuple(points))


def _curves(summary: Mapping[str, Any]) -> str:
    """Training loss and validation accuracy charts."""
    epochs = _records(summary.get("epochs"))
    if not epochs:
        return ""
    best = _number(summary.get("best_epoch"))
    loss = _line_chart(
        [_epoch_series(epochs, "train_loss", "training loss", _SERIES_COLOURS[0])],
        "Training loss per epoch", "Loss", best_epoch=best)
    accuracy = _line_chart(
        [_epoch_series(epochs, "validation_oa", "validation OA", _SERIES_COLOURS[1]),
         _epoch_series(epochs, "validation_kappa", "validation kappa", _SERIES_COLOURS[2])],
        "Validation accuracy per epoch", "Accuracy", y_range=(0.0, 1.0), best_epoch=best,
        y_percent=True)
    charts = []
    if loss:
        charts.append(f"<figure>{loss}<figcaption>Training loss per epoch</figcaption></figure>")
    if accuracy:
        charts.append(f"<figure>{accuracy}<figcaption>Validation overall accuracy and kappa "
                      "per epoch</figcaption></figure>")
    else:
        charts.append("<p>No validation during training.</p>")
    return _section("Training curves", "\n".join(charts))


def _epochs_table(summary: Mapping[str, Any]) -> str:
    """One row per epoch; the best epoch is highlighted."""
    epochs = _records(summary.get("epochs"))
    if not epochs:
        return ""
    best = _number(summary.get("best_epoch"))
    rows, classes = [], []
    for e in epochs:
        is_best = best is not None and _number(e.get("epoch")) == best
        marker = ' <span class="best-tag">best</span>' if is_best else ""
        rows.append([_esc(e.get("epoch")) + marker, _fixed(e.get("train_loss"), 4),
                     _general(e.get("learning_rate")), format_percent(e.get("validation_oa")),
                     format_percent(e.get("validation_kappa")), _fixed(e.get("seconds"), 1)])
        classes.append("best" if is_best else "")
    headers = ["Epoch", "Training loss", "Learning rate", "Validation OA", "Validation kappa",
               "Seconds"]
    return _section("Epochs", _table(headers, rows, classes))


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def _per_class_table(per_class: Sequence[Mapping[str, Any]]) -> str:
    """Producer's and user's accuracy and F1 per class."""
    rows = [[_esc(c.get("name")), _count(c.get("reference_samples")),
             _count(c.get("predicted_samples")), format_percent(c.get("producers_accuracy")),
             format_percent(c.get("users_accuracy")), format_percent(c.get("f1"))]
            for c in per_class]
    headers = ["Class", "Reference samples", "Predicted samples", "Producer's accuracy",
               "User's accuracy", "F1"]
    return "<h3>Per class</h3>\n" + _table(headers, rows)


def _pattern_table(records: Sequence[Mapping[str, Any]]) -> str:
    """OA and kappa per modality pattern (``pattern``, ``samples``, ``oa``, ``kappa``);
    rows whose reference holds one class (``reference_classes`` 1) are flagged."""
    rows = [[f"<code>{_esc(r.get('pattern'))}</code>"
             + (" <sup>†</sup>" if r.get("reference_classes") == 1 else ""),
             _count(r.get("samples")), format_percent(r.get("oa")),
             format_percent(r.get("kappa"))] for r in records]
    table = _table(["Pattern", "Samples", "OA", "Kappa"], rows)
    if any(r.get("reference_classes") == 1 for r in records):
        table += f'\n<p><sup>†</sup> {_esc(ONE_CLASS_NOTE)}.</p>'
    return table


def _cell_style(fraction: float) -> str:
    """Background shade for a row-normalised confusion-matrix cell (0..1)."""
    # blue with opacity = share of the reference row; white text once the shade is dark
    text = "color:#fff;" if fraction > 0.55 else ""
    return f"background:rgba(31,119,180,{fraction:.3f});{text}"


def _class_names(summary: Mapping[str, Any], size: int) -> List[str]:
    """Plain class names for the confusion-matrix axes (validation per-class names, then
    classes, then the index)."""
    validation = _mapping(summary.get("validation"))
    for source in (_records(validation.get("per_class")), _records(summary.get("classes"))):
        names = [c.get("name") for c in source]
        if len(names) == size:
            return [str(n) if n is not None else str(i) for i, n in enumerate(names)]
    return [str(i) for i in range(size)]


def _class_labels(summary: Mapping[str, Any], size: int) -> List[str]:
    """:func:`_class_names`, HTML-escaped."""
    return [html.escape(name) for name in _class_names(summary, size)]


def _confusion_table(matrix: Sequence[Sequence[Any]], labels: Sequence[str]) -> str:
    """Confusion matrix as HTML: rows reference, columns predicted, shaded by row share.

    ``labels`` are already HTML-safe. Returns an empty string for a non-square matrix.
    """
    try:
        counts = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        return ""
    size = len(labels)
    if counts.shape != (size, size) or size == 0:
        return ""
    counts = np.nan_to_num(counts)
    row_totals = counts.sum(axis=1)
    head = ('<tr><th class="corner">Reference \\ Predicted</th>'
            + "".join(f"<th>{label}</th>" for label in labels) + "<th>Total</th></tr>")
    body = []
    for i, label in enumerate(labels):
        cells = []
        for j in range(size):
            share = counts[i, j] / row_totals[i] if row_totals[i] else 0.0
            cells.append(f'<td style="{_cell_style(share)}" title="{100 * share:.1f}% of row">'
                         f"{_count(matrix[i][j])}</td>")
        body.append(f"<tr><th>{label}</th>{''.join(cells)}"
                    f"<td class=\"total\">{_count(row_totals[i])}</td></tr>")
    column_totals = "".join(f'<td class="total">{_count(v)}</td>' for v in counts.sum(axis=0))
    body.append(f'<tr><th>Total</th>{column_totals}'
                f'<td class="total">{_count(counts.sum())}</td></tr>')
    return f'<table class="confusion"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _validation(summary: Mapping[str, Any]) -> str:
    """Final validation: OA, kappa, per class, per real missing pattern, confusion matrix."""
    validation = _mapping(summary.get("validation"))
    if not validation:
        if "evaluation" in summary:
            return ""  # an evaluation report: see _evaluation
        return _section("Validation", "<p>No validation results.</p>")
    parts = ['<dl class="meta">',
             f"<dt>Samples</dt><dd>{_count(validation.get('samples'))}</dd>",
             f"<dt>Overall accuracy</dt><dd>{format_percent(validation.get('oa'))}</dd>",
             f"<dt>Kappa</dt><dd>{format_percent(validation.get('kappa'))}</dd>", "</dl>"]
    per_class = _records(validation.get("per_class"))
    if per_class:
        parts.append(_per_class_table(per_class))
    matrix = validation.get("confusion_matrix")
    if isinstance(matrix, (list, tuple)) and matrix:
        table = _confusion_table(matrix, _class_labels(summary, len(matrix)))
        if table:
            parts.append("<h3>Confusion matrix</h3>\n<p>Rows: reference class; columns: "
                         "predicted class; shading: share of the reference row.</p>\n" + table)
    per_pattern = _records(validation.get("per_pattern"))
    if per_pattern:
        parts.append("<h3>Validation accuracy per real missing pattern</h3>\n"
                     + _pattern_table(per_pattern))
    return _section("Validation", "\n".join(parts))


def _forced_patterns(summary: Mapping[str, Any]) -> str:
    """Validation accuracy when whole modalities are removed on purpose."""
    records = _records(summary.get("forced_patterns"))
    if not records:
        return ""
    return _section("Validation accuracy with modalities removed", _pattern_table(records))


# ---------------------------------------------------------------------------------------
# Evaluation (mamol:evaluate)
# ---------------------------------------------------------------------------------------

_PICTURE_CELL, _PICTURE_LEFT, _PICTURE_TOP = 34, 150, 120


def confusion_svg(matrix: Sequence[Sequence[Any]], labels: Sequence[str]) -> str:
    """The confusion matrix as an SVG picture: cells shaded by the share of the reference
    row, counts written in the cells, class names on both axes (``labels`` plain text).
    Returns an empty string for a non-square or empty matrix."""
    try:
        counts = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    except (TypeError, ValueError):
        return ""
    size = len(labels)
    if counts.shape != (size, size) or size == 0:
        return ""
    cell, left, top = _PICTURE_CELL, _PICTURE_LEFT, _PICTURE_TOP
    width, height = left + size * cell + 90, top + size * cell + 40
    rows = counts.sum(axis=1)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="Confusion matrix" font-family="sans-serif" font-size="11">']
    for i in range(size):
        y = top + i * cell
        short = labels[i] if len(labels[i]) <= 22 else labels[i][:21] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end" '
                     f'fill="{_INK}">{html.escape(short)}</text>')
        x = left + i * cell + cell / 2
        parts.append(f'<text x="{x:.1f}" y="{top - 6}" text-anchor="start" fill="{_INK}" '
                     f'transform="rotate(-45 {x:.1f} {top - 6})">{html.escape(short)}</text>')
        for j in range(size):
            share = counts[i, j] / rows[i] if rows[i] else 0.0
            text = "#ffffff" if share > 0.55 else _INK
            x0 = left + j * cell
            parts.append(f'<rect x="{x0}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="#1f77b4" fill-opacity="{share:.3f}" stroke="{_GRID}">'
                         f'<title>{html.escape(labels[i])} → {html.escape(labels[j])}: '
                         f'{int(counts[i, j])} ({100 * share:.1f}% of row)</title></rect>')
            if counts[i, j]:
                parts.append(f'<text x="{x0 + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" '
                             f'text-anchor="middle" fill="{text}">{int(counts[i, j])}</text>')
    bottom = top + size * cell
    parts.append(f'<text x="{left + size * cell / 2:.1f}" y="{bottom + 18}" '
                 f'text-anchor="middle" fill="{_INK}">predicted class</text>')
    parts.append(f'<text x="12" y="{top + size * cell / 2:.1f}" text-anchor="middle" '
                 f'fill="{_INK}" transform="rotate(-90 12 {top + size * cell / 2:.1f})">'
                 'reference class</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _metrics_block(result: Mapping[str, Any], summary: Mapping[str, Any],
                   picture: bool) -> List[str]:
    parts = ['<dl class="meta">',
             f"<dt>Samples</dt><dd>{_count(result.get('samples'))}</dd>",
             f"<dt>Overall accuracy</dt><dd>{format_percent(result.get('oa'))}</dd>",
             f"<dt>Kappa</dt><dd>{_fixed(result.get('kappa'), 4)}</dd>", "</dl>"]
    per_class = _records(result.get("per_class"))
    if per_class:
        parts.append(_per_class_table(per_class))
    matrix = result.get("confusion_matrix")
    if isinstance(matrix, (list, tuple)) and matrix:
        if picture:
            svg = confusion_svg(matrix, _class_names(summary, len(matrix)))
            if svg:
                parts.append("<h3>Confusion matrix</h3>\n<figure>" + svg + "<figcaption>Rows: "
                             "reference class; columns: predicted class; shading: share of "
                             "the reference row.</figcaption></figure>")
        table = _confusion_table(matrix, _class_labels(summary, len(matrix)))
        if table:
            parts.append("<p>Rows: reference class; columns: predicted class.</p>\n" + table)
    return parts


def _missing_patterns(summary: Mapping[str, Any]) -> str:
    """Sample counts per pattern: real (from the rasters) and as evaluated (after forcing)."""
    patterns = _mapping(summary.get("missing_patterns"))
    if not patterns:
        return ""
    real, evaluated = _mapping(patterns.get("real")), _mapping(patterns.get("evaluated"))
    names = list(real) + [p for p in evaluated if p not in real]
    rows = [[f"<code>{_esc(p)}</code>", _count(real.get(p, 0)), _count(evaluated.get(p, 0))]
            for p in names]
    forcing = _mapping(summary.get("forcing"))
    intro = f"<p>Forced missingness: {_esc(forcing.get('description'))}</p>" \
        if forcing.get("description") else ""
    return _section("Missing patterns",
                    intro + _table(["Pattern", "Real samples", "Evaluated samples"], rows))


def _evaluation(summary: Mapping[str, Any]) -> str:
    """Evaluation results: overall, then per missing pattern (each with its details)."""
    result = _mapping(summary.get("evaluation"))
    if not result:
        return ""
    parts = _metrics_block(result, summary, picture=True)
    per_pattern = _records(result.get("per_pattern"))
    if per_pattern:
        parts.append("<h3>Per missing pattern</h3>\n" + _pattern_table(per_pattern))
        for record in per_pattern:
            details = "\n".join(_metrics_block(record, summary, picture=False))
            parts.append(f"<details><summary>Pattern <code>{_esc(record.get('pattern'))}"
                         f"</code>: {_count(record.get('samples'))} samples</summary>\n"
                         f"{details}\n</details>")
    return _section("Accuracy", "\n".join(parts))


# ---------------------------------------------------------------------------------------
# Timing, warnings, page
# ---------------------------------------------------------------------------------------

_TIMING_LABELS = {"device": "Device", "precision": "Frozen tower precision",
                  "training_seconds": "Training time (s)",
                  "samples_per_second": "Samples per second (all epochs)",
                  "steady_samples_per_second": "Samples per second, steady (after epoch 1)",
                  "validation_seconds": "Validation time (s)",
                  "train_samples_seen": "Training samples seen", "seconds": "Time (s)"}


def _timing(summary: Mapping[str, Any]) -> str:
    """Device and throughput; known keys first, with readable labels, then any others."""
    timing = _mapping(summary.get("timing"))
    if not timing:
        return ""
    one_decimal = lambda v: _fixed(v, 1)  # noqa: E731
    formatters = {"training_seconds": one_decimal, "seconds": one_decimal,
                  "validation_seconds": one_decimal, "samples_per_second": one_decimal,
                  "steady_samples_per_second": one_decimal, "train_samples_seen": _count}
    keys = [k for k in _TIMING_LABELS if k in timing] + [k for k in timing
                                                         if k not in _TIMING_LABELS]
    rows = [[_esc(_TIMING_LABELS.get(k, k)), formatters.get(k, _general)(timing[k])]
            for k in keys]
    return _section("Timing", _table(["Item", "Value"], rows))


def _warnings(summary: Mapping[str, Any]) -> str:
    """Warnings raised during training, as a list."""
    warnings = summary.get("warnings")
    if not isinstance(warnings, (list, tuple)) or not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return _section("Warnings", f'<ul class="warnings">{items}</ul>')


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr.best td { background: #fff6d5; }
.best-tag { background: #e6a700; color: #fff; border-radius: 3px; padding: 0 0.3em;
            font-size: 0.8em; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #555;
          vertical-align: middle; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.meta dt { font-weight: bold; }
dl.meta dd { margin: 0; }
table.confusion td.total { background: #f8f8f8; font-style: italic; }
figure { margin: 1em 0; }
figcaption { font-size: 0.9em; color: #555; }
svg.chart { background: #fff; max-width: 100%; height: auto; }
ul.warnings li { color: #8a4b00; }
"""


def render_html(summary: Mapping[str, Any]) -> str:
    """The whole report page for ``summary`` (nan already replaced by ``None``)."""
    title = summary.get("title") or DEFAULT_TITLE
    sections = [_header(summary), _modalities(summary), _classes(summary), _config(summary),
                _missing_simulation(summary), _curves(summary), _epochs_table(summary),
                _validation(summary), _forced_patterns(summary), _missing_patterns(summary),
                _evaluation(summary), _timing(summary),
                _warnings(summary)]
    body = "\n".join(s for s in sections if s)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")
