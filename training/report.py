"""Training and evaluation report: a JSON record and one self-contained HTML page (QGIS-free).

The summary is a plain dict (see :func:`write_report`); every key is optional. Accuracies
in it are fractions (0..1) and are shown as percentages; durations are seconds. The page
is rendered from the jinja2 templates in ``resources/report`` with autoescaping, so every
string taken from the summary is HTML-escaped. It has no external resources and no
JavaScript: the style sheet is inline, and the figures are matplotlib figures (made with
``Figure`` directly, never pyplot) inlined as SVG, whose text matplotlib escapes.
"""
import io
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jinja2
import numpy as np
from markupsafe import escape

from ..core.metrics import ONE_CLASS_NOTE
from ..core.staging import publish

DASH = "—"
DEFAULT_TITLE = "MaMOL training report"
TEMPLATES = Path(__file__).resolve().parent.parent / "resources" / "report"
_HEX_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


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
# Values as text: plain text (the templates escape it); a missing value is a dash
# ---------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """``value``, with jinja2's ``Undefined`` (a key the summary lacks) as ``None``."""
    return None if isinstance(value, jinja2.Undefined) else value


def _number(value: Any) -> Optional[float]:
    """``value`` as a finite float, or ``None`` (missing, non-numeric, nan or inf)."""
    value = _plain(value)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    value = _plain(value)
    return DASH if value is None else str(value)


def _percent(value: Any, decimals: int = 2) -> str:
    number = _number(value)
    return _text(value) if number is None else f"{100.0 * number:.{decimals}f} %"


def format_percent(value: Any, decimals: int = 2) -> str:
    """A fraction (0..1) as a percentage with ``decimals`` decimals; ``None`` as a dash
    (HTML-safe: anything else comes back as escaped text)."""
    return escape(_percent(value, decimals))


def _fixed(value: Any, decimals: int) -> str:
    number = _number(value)
    return _text(value) if number is None else f"{number:.{decimals}f}"


def _count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return _text(value)
    return str(int(number)) if number == int(number) else f"{number:.2f}"


def _general(value: Any) -> str:
    """A setting value: lists joined by commas, dicts as JSON, floats in short form."""
    value = _plain(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_general(item) for item in value) or DASH
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False)
    return _text(value)


def _records(value: Any) -> List[Mapping[str, Any]]:
    """The mappings in ``value`` when it is a list; anything else gives an empty list."""
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _listed(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _pattern_name(record: Mapping[str, Any]) -> str:
    """A pattern's name, with † when its reference holds one class (see ONE_CLASS_NOTE)."""
    return _text(record.get("pattern")) + (" †" if record.get("reference_classes") == 1 else "")


# ---------------------------------------------------------------------------------------
# Rows the templates cannot easily compute
# ---------------------------------------------------------------------------------------

def _square(matrix: Any, size: int) -> Optional[np.ndarray]:
    """``matrix`` as a ``size`` x ``size`` float array (nan as 0), or ``None``."""
    if not size:
        return None
    try:
        counts = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    except (TypeError, ValueError):
        return None
    return counts if counts.shape == (size, size) else None


def _row_shares(counts: np.ndarray) -> np.ndarray:
    """Each cell's share of its row; 0 in an empty row."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals != 0)


def _confusion_rows(matrix: Any, names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Table rows (name, [(count, share of the row)], row total) and column totals."""
    counts = _square(matrix, len(names))
    if counts is None:
        return None
    shares = _row_shares(counts)
    rows = [(name, [(matrix[i][j], shares[i, j]) for j in range(len(names))],
             counts[i].sum()) for i, name in enumerate(names)]
    return {"rows": rows, "columns": counts.sum(axis=0).tolist(), "total": counts.sum()}


def _pattern_shares(train: Mapping[str, Any], validation: Mapping[str, Any]) -> List[tuple]:
    """(pattern, training samples and share, validation samples and share) per pattern."""
    totals = [sum(_number(v) or 0.0 for v in counts.values()) for counts in (train, validation)]

    def share(value: Any, total: float) -> Optional[float]:
        number = _number(value)
        return number / total if number is not None and total else None

    return [(p, train.get(p), share(train.get(p), totals[0]),
             validation.get(p), share(validation.get(p), totals[1]))
            for p in list(train) + [p for p in validation if p not in train]]


# ---------------------------------------------------------------------------------------
# Figures: matplotlib, inline SVG
# ---------------------------------------------------------------------------------------

_BLUE, _GREEN = (31, 119, 180), (26, 128, 92)
_SERIES = ("#1f77b4", "#d62728", "#2ca02c")
_INK, _GRID, _BEST, _NONE = "#333333", "#e4e4e4", "#e6a700", "#f0f0f0"
# text stays text (svg.fonttype none); browsers without DejaVu Sans get a font of similar width
_RC = {"svg.fonttype": "none", "text.usetex": False, "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Verdana", "Arial", "Helvetica"],
       "font.size": 10.5, "axes.titlesize": 11, "axes.labelsize": 10.5, "legend.fontsize": 9.5,
       "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#888888",
       "text.color": _INK, "axes.labelcolor": _INK}
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def _shade(fraction: float, rgb: Tuple[int, int, int] = _BLUE) -> str:
    """The colour ``fraction`` (0..1) of the way from white to ``rgb``, as ``#rrggbb``."""
    return "#" + "".join(f"{round(255 + (c - 255) * fraction):02x}" for c in rgb)


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


def _svg(name: str, size: Tuple[float, float], draw: Callable[[Any], None],
         layout: Optional[str] = None) -> str:
    """Draw a figure of ``size`` inches with ``draw(figure)``; return it as SVG markup
    without XML prolog or metadata. Ids are salted with ``name``, so the output is the
    same on every run and two figures on one page do not share ids."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    buffer = io.StringIO()
    with rc_context({**_RC, "svg.hashsalt": f"mamol-report-{name}"}), \
            warnings.catch_warnings():
        # text stays text in the SVG: the browser draws glyphs matplotlib's font lacks
        # (matplotlib 3.6: "... missing from current font"; 3.10: "... from font(s) X")
        warnings.filterwarnings("ignore",
                                message=r"Glyph \d+ .* missing from (current font|font\(s\))")
        figure = Figure(figsize=size, layout=layout)
        FigureCanvasAgg(figure)
        draw(figure)
        figure.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.05,
                       metadata=_NO_METADATA)
    text = buffer.getvalue()
    return text[text.index("<svg"):].strip().replace("<svg ", f'<svg class="figure {name}" ', 1)


def _grid(axes, values: np.ndarray, colour: Tuple[int, int, int],
          labels: Sequence[str]) -> None:
    """Cells of ``values`` (0..1; nan = no value, hatched) shaded towards ``colour`` with
    ``labels`` written in them (a count of 0 in light grey); rows top down."""
    from matplotlib.patches import Rectangle

    rows, columns = values.shape
    size = min(10.0, 15 * axes.figure.get_figwidth() / columns)   # fits a 5-digit count
    for (i, j), value in np.ndenumerate(values):
        missing = not np.isfinite(value)
        axes.add_patch(Rectangle((j, i), 1, 1, linewidth=0.8, edgecolor=_GRID,
                                 facecolor=_NONE if missing else _shade(value, colour),
                                 hatch="///" if missing else None))
        label = labels[i * columns + j]
        ink = "#aaaaaa" if missing or label == "0" else "#ffffff" if value > 0.55 else _INK
        axes.text(j + 0.5, i + 0.5, label, ha="center", va="center",
                  color=ink, fontsize=size, parse_math=False)
    axes.set_xlim(0, columns)
    axes.set_ylim(rows, 0)
    axes.tick_params(length=0)
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    for spine in axes.spines.values():
        spine.set_visible(False)


def _ticks(axes, x_labels: Sequence[str], y_labels: Sequence[str]) -> None:
    axes.set_xticks(np.arange(len(x_labels)) + 0.5, [_short(n) for n in x_labels],
                    rotation=40, ha="left", rotation_mode="anchor", parse_math=False)
    axes.set_yticks(np.arange(len(y_labels)) + 0.5, [_short(n) for n in y_labels],
                    parse_math=False)


def confusion_svg(matrix: Sequence[Sequence[Any]], labels: Sequence[str]) -> str:
    """The confusion matrix as an SVG figure: cells shaded by the share of the reference
    row, counts written in the cells, class names (plain text) on both axes. Returns an
    empty string for a non-square or empty matrix."""
    counts = _square(matrix, len(labels))
    if counts is None:
        return ""
    side = min(0.6 * len(labels), 8.0)

    def draw(figure) -> None:
        axes = figure.add_axes((0, 0, 1, 1))
        _grid(axes, _row_shares(counts), _BLUE, [_count(v) for v in counts.ravel()])
        _ticks(axes, labels, labels)
        axes.set_xlabel("Predicted class", labelpad=8)
        axes.set_ylabel("Reference class")

    return _svg("confusion", (side, side), draw)


def _curves_svg(epochs: Any, best_epoch: Any) -> str:
    """Training loss and validation OA and kappa per epoch, the kept epoch marked."""
    epochs = [e for e in _records(epochs) if _number(e.get("epoch")) is not None]

    def series(key: str) -> List[float]:
        return [math.nan if _number(e.get(key)) is None else _number(e.get(key))
                for e in epochs]

    panels = [(title, lines, percent) for title, lines, percent in (
        ("Training loss", [("training loss", series("train_loss"))], False),
        ("Validation accuracy", [("validation OA", series("validation_oa")),
                                 ("validation kappa", series("validation_kappa"))], True))
        if any(np.isfinite(values).any() for _, values in lines)]
    if not panels:
        return ""
    xs = [_number(e.get("epoch")) for e in epochs]
    best = _number(best_epoch)

    def draw(figure) -> None:
        from matplotlib.ticker import MaxNLocator, PercentFormatter

        for index, (title, lines, percent) in enumerate(panels):
            axes = figure.add_subplot(1, len(panels), index + 1)
            for (label, values), colour in zip(lines, _SERIES[index:]):
                axes.plot(xs, values, marker="o", markersize=4, linewidth=1.8, color=colour,
                          label=label)
            if best is not None and min(xs) <= best <= max(xs):
                axes.axvline(best, color=_BEST, linestyle="--", linewidth=1.4,
                             label=f"best epoch {best:g}")
            values = np.concatenate([v for _, v in lines])
            low, high = np.nanmin(values), np.nanmax(values)
            if percent:                          # a negative kappa stretches the axis
                axes.set_ylim(min(0.0, low) - 0.02, max(1.0, high) + 0.02)
                axes.yaxis.set_major_formatter(PercentFormatter(1.0))
            else:
                axes.set_ylim(min(0.0, low), high * 1.08 if high > 0 else 1.0)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(axis="y", color=_GRID)
            axes.set(title=title, xlabel="Epoch")
            axes.legend(frameon=False)

    return _svg("curves", (4.4 * len(panels), 3.0), draw, layout="constrained")


def _mce_svg(epochs: Any) -> str:
    """MCE's factors per epoch and modality: the auxiliary head's accuracy, mean φ, mean b
    and a, one panel each, one line per modality (empty without MCE)."""
    epochs = [e for e in _records(epochs) if isinstance(e.get("mce"), Mapping)]
    if not epochs:
        return ""
    names = list(_mapping(epochs[0]["mce"]))
    xs = [_number(e.get("epoch")) for e in epochs]

    def series(name: str, key: str) -> List[float]:
        values = []
        for e in epochs:
            value = _number(_mapping(_mapping(e["mce"]).get(name)).get(key))
            values.append(math.nan if value is None else value)
        return values

    panels = (("Auxiliary head accuracy", "aux_accuracy", True),
              ("Mean Shapley value φ", "phi", True),
              ("Under-learning b (mean per batch)", "b", False),
              ("Inverse availability a", "a", False))

    def draw(figure) -> None:
        from matplotlib.ticker import MaxNLocator, PercentFormatter

        for index, (title, key, percent) in enumerate(panels):
            axes = figure.add_subplot(1, len(panels), index + 1)
            for name, colour in zip(names, _SERIES):
                axes.plot(xs, series(name, key), marker="o", markersize=4, linewidth=1.8,
                          color=colour, label=name)
            if percent:
                axes.set_ylim(-0.02, 1.02)
                axes.yaxis.set_major_formatter(PercentFormatter(1.0))
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.grid(axis="y", color=_GRID)
            axes.set(title=title, xlabel="Epoch")
            axes.legend(frameon=False)

    return _svg("mce", (3.6 * len(panels), 3.0), draw, layout="constrained")


def _pattern_oa_svg(per_pattern: Any) -> str:
    """Overall accuracy per missing pattern as horizontal bars (no bar where it is None)."""
    rows = _records(per_pattern)
    if not rows:
        return ""
    oa = [_number(r.get("oa")) for r in rows]
    names = [f"{_short(_pattern_name(r))}  ({_count(r.get('samples'))})" for r in rows]

    def draw(figure) -> None:
        from matplotlib.ticker import PercentFormatter

        axes = figure.add_axes((0, 0, 1, 1))
        for y, (value, record) in enumerate(zip(oa, rows)):
            one_class = record.get("reference_classes") == 1
            if value is not None:
                axes.barh(y, value, height=0.6, color=_shade(0.45 if one_class else 1.0),
                          hatch="///" if one_class else None, edgecolor="#ffffff")
            axes.text(max(value or 0.0, 0.0) + 0.01, y, DASH if value is None
                      else f"{100 * value:.1f} %", va="center")
        axes.set_yticks(range(len(rows)), names, parse_math=False)
        axes.set_ylim(len(rows) - 0.4, -0.6)
        axes.set_xlim(0.0, 1.12)                # room for a label after 100 %
        axes.set_xticks(np.linspace(0.0, 1.0, 6))
        axes.xaxis.set_major_formatter(PercentFormatter(1.0))
        axes.grid(axis="x", color=_GRID)
        axes.set_axisbelow(True)
        axes.tick_params(axis="y", length=0)
        axes.set_xlabel("Overall accuracy (samples in brackets)")

    return _svg("pattern-oa", (5.6, 0.4 * len(rows) + 0.2), draw)


def _pattern_f1_svg(per_pattern: Any) -> str:
    """F1 per class (columns) and missing pattern (rows) as a heat map, from each pattern's
    ``per_class`` list; empty when no pattern has one."""
    rows = _records(per_pattern)
    per_class = [_records(r.get("per_class")) for r in rows]
    columns = max((len(c) for c in per_class), default=0)
    if not columns:
        return ""
    first = next(c for c in per_class if len(c) == columns)
    classes = [str(j) if c.get("name") is None else str(c["name"]) for j, c in enumerate(first)]
    f1 = np.array([[_number(c[j].get("f1")) if j < len(c) else None for j in range(columns)]
                   for c in per_class], dtype=np.float64)
    labels = [DASH if math.isnan(v) else f"{100 * v:.1f}" for v in f1.ravel()]

    def draw(figure) -> None:
        axes = figure.add_axes((0, 0, 1, 1))
        _grid(axes, f1, _GREEN, labels)
        _ticks(axes, classes, [_pattern_name(r) for r in rows])
        axes.set_xlabel("F1 (%) per class", labelpad=8)

    cell = min(0.75, 8.0 / columns)
    return _svg("pattern-f1", (cell * columns, 0.42 * len(rows)), draw)


# ---------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------

_ENVIRONMENT: Optional[jinja2.Environment] = None


def _environment() -> jinja2.Environment:
    """The report templates, autoescaped, with the filters and tests they use (made once)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        environment.filters.update(
            text=_text, percent=_percent, fixed=_fixed, count=_count, general=_general,
            number=_number, records=_records, mapping=_mapping, listed=_listed,
            shade=lambda share: f"{share:.3f}")
        environment.tests.update(
            given=lambda value: _plain(value) is not None,
            hex_colour=lambda value: isinstance(value, str)
            and _HEX_COLOUR.fullmatch(value) is not None)
        environment.globals.update(
            default_title=DEFAULT_TITLE, one_class_note=ONE_CLASS_NOTE,
            pattern_shares=_pattern_shares,
            curves_svg=_curves_svg, mce_svg=_mce_svg, pattern_oa_svg=_pattern_oa_svg,
            pattern_f1_svg=_pattern_f1_svg)
        _ENVIRONMENT = environment
    return _ENVIRONMENT


def _class_names(summary: Mapping[str, Any], size: int) -> List[str]:
    """Plain class names for a matrix of ``size`` classes (validation per-class names,
    then classes, then the index)."""
    validation = _mapping(summary.get("validation"))
    for source in (_records(validation.get("per_class")), _records(summary.get("classes"))):
        names = [c.get("name") for c in source]
        if len(names) == size:
            return [str(n) if n is not None else str(i) for i, n in enumerate(names)]
    return [str(i) for i in range(size)]


def render_html(summary: Mapping[str, Any]) -> str:
    """The whole report page for ``summary`` (nan already replaced by ``None``)."""

    def names(matrix: Any) -> List[str]:
        return _class_names(summary, len(matrix) if isinstance(matrix, (list, tuple)) else 0)

    return _environment().get_template("report.html.j2").render(
        s=summary, confusion_rows=lambda matrix: _confusion_rows(matrix, names(matrix)),
        confusion_svg=lambda matrix: confusion_svg(matrix, names(matrix)))
