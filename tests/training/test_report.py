"""The training report writer: JSON round trip, HTML content, escaping and atomic writes."""
import copy
import json
import re
from pathlib import Path

import pytest

from mamol.training.report import format_percent, render_html, write_report

pytestmark = pytest.mark.platform   # reports: the platform's Jinja2 and matplotlib

CONFUSION = [[37, 2, 1], [3, 28, 4], [0, 5, 41]]


def make_summary() -> dict:
    """A realistic summary: 3 classes, 4 epochs, best epoch 3."""
    return {
        "title": "MaMOL training report",
        "model_file": "/data/models/wetlands.mamol",
        "created_by": "mamol:trainmodel",
        "modalities": [{"name": "hs", "bands": 48, "path": "/data/hs.tif"},
                       {"name": "sar", "bands": 2, "path": "/data/sar.tif"},
                       {"name": "lidar", "bands": 1, "path": "/data/lidar.tif"}],
        "classes": [
            {"value": 1, "name": "water", "colour": "#1f78b4", "train_pixels": 120,
             "validation_pixels": 40, "train_polygons": 4, "validation_polygons": 2},
            {"value": 2, "name": "reed bed", "colour": "#33a02c", "train_pixels": 110,
             "validation_pixels": 35, "train_polygons": 5, "validation_polygons": 2},
            {"value": 5, "name": "bare soil", "colour": "#b15928", "train_pixels": 140,
             "validation_pixels": 46, "train_polygons": 3, "validation_polygons": 1}],
        "config": {"epochs": 4, "batch_size": 64, "learning_rate": 0.001,
                   "modality_dropout": 0.3, "experts": ["hs", "sar", "lidar"],
                   "device": "cpu"},
        "missing_simulation": {
            "description": "Each modality dropped with probability 0.3; never all of them.",
            "train_patterns": {"hs+sar+lidar": 500, "sar+lidar": 120, "hs+lidar": 80},
            "validation_patterns": {"hs+sar+lidar": 90, "sar+lidar": 31}},
        "epochs": [
            {"epoch": 1, "train_loss": 1.92, "learning_rate": 0.001, "validation_oa": 0.61,
             "validation_kappa": 0.42, "seconds": 3.2},
            {"epoch": 2, "train_loss": 1.21, "learning_rate": 0.001, "validation_oa": 0.78,
             "validation_kappa": 0.66, "seconds": 3.1},
            {"epoch": 3, "train_loss": 0.74, "learning_rate": 0.0005, "validation_oa": 0.875,
             "validation_kappa": 0.81, "seconds": 3.0},
            {"epoch": 4, "train_loss": 0.69, "learning_rate": 0.00025, "validation_oa": 0.86,
             "validation_kappa": 0.79, "seconds": 3.3}],
        "best_epoch": 3,
        "validation": {
            "samples": 121, "oa": 0.8429752066115702, "kappa": 0.7634,
            "confusion_matrix": CONFUSION,
            "per_class": [
                {"name": "water", "reference_samples": 40, "predicted_samples": 40,
                 "producers_accuracy": 0.925, "users_accuracy": 0.925, "f1": 0.925},
                {"name": "reed bed", "reference_samples": 35, "predicted_samples": 35,
                 "producers_accuracy": 0.8, "users_accuracy": 0.8, "f1": 0.8},
                {"name": "bare soil", "reference_samples": 46, "predicted_samples": 46,
                 "producers_accuracy": 0.8913, "users_accuracy": None, "f1": None}],
            "per_pattern": [{"pattern": "hs+sar+lidar", "samples": 90, "oa": 0.9, "kappa": 0.85},
                            {"pattern": "sar+lidar", "samples": 31, "oa": 0.68,
                             "kappa": 0.52}]},
        "forced_patterns": [{"pattern": "sar+lidar", "samples": 121, "oa": 0.7, "kappa": 0.6},
                            {"pattern": "hs", "samples": 121, "oa": 0.81, "kappa": 0.72}],
        "timing": {"device": "cpu", "training_seconds": 12.6, "samples_per_second": 150.2,
                   "train_samples_seen": 2800},
        "warnings": ["Class 'bare soil' has only 1 validation polygon."],
    }


def figures(page: str) -> list:
    """The names of the inline SVG figures on ``page``, in order."""
    return re.findall(r'<svg class="figure ([\w-]+)"', page)


def figure(page: str, name: str) -> str:
    """The inline SVG figure ``name`` on ``page``."""
    start = page.index(f'<svg class="figure {name}"')
    return page[start:page.index("</svg>", start) + len("</svg>")]


def write(tmp_path: Path, summary: dict) -> tuple:
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    write_report(summary, html_path, json_path)
    return html_path.read_text(encoding="utf-8"), json.loads(json_path.read_text("utf-8"))


def test_writes_both_files_and_json_round_trips(tmp_path):
    summary = make_summary()
    original = copy.deepcopy(summary)
    _, loaded = write(tmp_path, summary)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.json").is_file()
    assert loaded == original
    assert summary == original                          # the input is not modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_html_content(tmp_path):
    html_text, _ = write(tmp_path, make_summary())
    assert html_text.startswith("<!DOCTYPE html>")
    for name in ("water", "reed bed", "bare soil"):
        assert name in html_text
    assert figures(html_text) == ["curves", "confusion", "pattern-oa"]
    curves = figure(html_text, "curves")
    assert "Training loss" in curves and "Validation accuracy" in curves    # both panels
    assert "best epoch 3" in curves                     # marked in the charts
    assert '<tr class="best"><td>3 <span class="best-tag">best</span>' in html_text
    assert "84.30 %" in html_text and "76.34 %" in html_text     # OA, kappa
    assert "Validation accuracy per real missing pattern" in html_text
    assert "Validation accuracy with modalities removed" in html_text
    assert "background:#1f78b4" in html_text           # class colour swatch
    assert "Each modality dropped with probability 0.3" in html_text
    assert "hs+lidar" in html_text and "150.2" in html_text
    assert "only 1 validation polygon" in html_text
    # self-contained: no script, no external resources (the SVG figures only refer to
    # their own markers and clip paths, as "#id")
    assert "<script" not in html_text.lower()
    assert all(ref.startswith("#")
               for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html_text))
    assert not re.search(r"(src|href)\s*=\s*[^\s\"]", html_text)


def test_confusion_matrix_cells(tmp_path):
    html_text, _ = write(tmp_path, make_summary())
    table = html_text[html_text.index('<table class="confusion">'):]
    table = table[:table.index("</table>")]
    cells = [int(v) for v in re.findall(r'<td style="[^"]*" title="[^"]*">(\d+)</td>', table)]
    assert cells == [v for row in CONFUSION for v in row]
    # row-normalised shading: 37 of 40 in the first row
    assert "rgba(31,119,180,0.925)" in table
    assert "<th>water</th>" in table and "<th>bare soil</th>" in table
    assert '<td class="total">121</td>' in table


def test_strings_are_escaped(tmp_path):
    summary = make_summary()
    summary["classes"][0]["name"] = "<script>alert(1)</script>"
    summary["validation"]["per_class"][0]["name"] = "<script>alert(1)</script>"
    summary["config"]["note"] = 'a "quoted" <b>value</b> & more'
    summary["classes"][1]["colour"] = "red;position:fixed"       # not a hex colour
    html_text, loaded = write(tmp_path, summary)
    assert "<script>" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "&lt;b&gt;value&lt;/b&gt; &amp; more" in html_text
    assert "background:red" not in html_text
    assert loaded["classes"][0]["name"] == "<script>alert(1)</script>"


def test_missing_sections_still_render(tmp_path):
    summary = make_summary()
    summary["validation"] = None
    summary["epochs"] = []
    summary["best_epoch"] = None
    del summary["timing"], summary["forced_patterns"], summary["config"]
    html_text, loaded = write(tmp_path, summary)
    assert loaded["validation"] is None
    assert "<svg" not in html_text
    assert "No validation results" in html_text
    assert "water" in html_text


def test_empty_summary_renders(tmp_path):
    html_text, loaded = write(tmp_path, {})
    assert loaded == {}
    assert "MaMOL training report" in html_text and "—" in html_text


def test_epochs_without_validation_draw_loss_only(tmp_path):
    summary = make_summary()
    for epoch in summary["epochs"]:
        epoch["validation_oa"] = epoch["validation_kappa"] = None
    html_text, _ = write(tmp_path, summary)
    assert figures(html_text) == ["curves", "confusion", "pattern-oa"]
    curves = figure(html_text, "curves")
    assert "Training loss" in curves and "Validation accuracy" not in curves   # loss only
    assert "No validation during training" in html_text


def test_single_epoch_chart(tmp_path):
    summary = make_summary()
    summary["epochs"] = summary["epochs"][:1]
    summary["best_epoch"] = 1
    html_text, _ = write(tmp_path, summary)
    curves = figure(html_text, "curves")
    assert "Validation accuracy" in curves and "best epoch 1" in curves


def test_nan_becomes_null(tmp_path):
    summary = make_summary()
    summary["validation"]["kappa"] = float("nan")
    summary["epochs"][0]["train_loss"] = float("inf")
    summary["forced_patterns"][0]["oa"] = float("-inf")
    html_text, loaded = write(tmp_path, summary)
    text = (tmp_path / "report.json").read_text("utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert loaded["validation"]["kappa"] is None
    assert loaded["epochs"][0]["train_loss"] is None
    assert loaded["forced_patterns"][0]["oa"] is None
    assert "nan" not in html_text.lower().replace("nan-", "")


def test_unwritable_destination_raises_and_leaves_nothing(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(OSError):
        write_report(make_summary(), missing / "report.html", tmp_path / "report.json")
    # the JSON temp file staged before the HTML failed must be cleaned up too
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        write_report(make_summary(), tmp_path / "report.html", missing / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_existing_report_is_kept_on_failure(tmp_path):
    html_path = tmp_path / "report.html"
    html_path.write_text("old", encoding="utf-8")
    summary = make_summary()
    summary["warnings"] = [object()]                    # not JSON-serialisable
    with pytest.raises(TypeError):
        write_report(summary, html_path, tmp_path / "report.json")
    assert html_path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_format_percent():
    assert format_percent(None) == "—"
    assert format_percent(0.84297) == "84.30 %"
    assert format_percent(1) == "100.00 %"
    assert format_percent(0.5, 1) == "50.0 %"


def test_render_html_accepts_numpy_free_minimal_summary():
    page = render_html({"title": "T & U", "best_epoch": 2,
                        "epochs": [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2}]})
    assert "<title>T &amp; U</title>" in page and "<svg" in page


def test_confusion_picture_escapes_names_and_shades_by_row():
    from mamol.training.report import confusion_svg
    svg = confusion_svg([[3, 1], [0, 0]], ["<b>a</b>", "b & c"])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<b>" not in svg and "&lt;b&gt;a&lt;/b&gt;" in svg and "b &amp; c" in svg
    # four cells (grid-lined), white blended towards #1f77b4 by the share of the row:
    # 3/4 and 1/4 in the first row; an empty reference row shades nothing
    cells = re.findall(r"fill: (#[0-9a-f]{6}); stroke: #e4e4e4", svg)
    assert cells == ["#5799c7", "#c7ddec", "#ffffff", "#ffffff"]
    assert re.findall(r">(\d+)</text>", svg) == ["3", "1", "0", "0"]     # counts in cells
    assert confusion_svg([[1, 2, 3]], ["a"]) == "" and confusion_svg([], []) == ""
    assert confusion_svg([["x", 1], [2, 3]], ["a", "b"]) == ""


def test_evaluation_report_sections(tmp_path):
    summary = {"title": "MaMOL evaluation report", "classes": [
        {"value": 1, "name": "water", "colour": "#0000ff", "reference_samples": 2},
        {"value": 2, "name": "road", "colour": "#888888", "reference_samples": 1}],
        "missing_patterns": {"real": {"hs+lidar": 3}, "evaluated": {"hs+lidar": 2, "lidar": 1}},
        "forcing": {"description": "hs 50%"},
        "evaluation": {"samples": 3, "oa": 2 / 3, "kappa": 0.4,
                       "confusion_matrix": [[2, 0], [1, 0]], "per_class": [],
                       "per_pattern": [{"pattern": "lidar", "samples": 1, "oa": 0.0,
                                        "kappa": None, "confusion_matrix": [[0, 0], [1, 0]]}]}}
    write_report(summary, tmp_path / "e.html", tmp_path / "e.json")
    page = (tmp_path / "e.html").read_text()
    assert "Validation" not in page and "Reference samples" in page
    assert "Missing patterns" in page and "hs 50%" in page
    assert figures(page) == ["confusion", "pattern-oa"] and page.count("<details>") == 1
    assert "66.67" in page


def test_pattern_rows_with_one_reference_class_are_flagged(tmp_path):
    summary = make_summary()
    summary["validation"]["per_pattern"] = [
        {"pattern": "hs+sar+lidar", "samples": 90, "oa": 0.9, "kappa": 0.85,
         "reference_classes": 3},
        {"pattern": "lidar", "samples": 12, "oa": 1.0, "kappa": None, "reference_classes": 1}]
    html_text, written = write(tmp_path, summary)
    assert "<code>lidar</code> <sup>†</sup>" in html_text
    assert "<code>hs+sar+lidar</code></td>" in html_text
    assert "one reference class only: OA is no measure of skill here" in html_text
    assert written["validation"]["per_pattern"][1]["kappa"] is None
    html_text, _ = write(tmp_path, make_summary())
    assert "†" not in html_text


def full_summary() -> dict:
    """:func:`make_summary` with per-class results in the pattern records (as the
    evaluation's records carry them)."""
    summary = make_summary()
    for record, f1 in zip(summary["validation"]["per_pattern"],
                          ([0.95, 0.8, 0.9], [0.7, None, 0.6])):
        record["per_class"] = [{"name": name, "f1": value}
                               for name, value in zip(("water", "reed bed", "bare soil"), f1)]
    return summary


def test_page_is_self_contained_with_four_inline_figures(tmp_path):
    page, _ = write(tmp_path, full_summary())
    assert page.count("<svg") == 4
    assert figures(page) == ["curves", "confusion", "pattern-oa", "pattern-f1"]
    lower = page.lower()
    for banned in ("<script", "javascript:", "<link", "<img", "<iframe", "<object", "<embed",
                   "@import", "@font-face", "<?xml", "<!doctype svg", "<metadata"):
        assert banned not in lower, banned
    assert not re.search(r"\bdata:[a-z]+/", lower)                  # no embedded files
    assert not re.search(r"\bon[a-z]+\s*=", lower)                  # no event handlers
    # web addresses only as the inline SVG's namespace names, never as a resource
    assert set(re.findall(r"https?://[^\s\"'<>]*", page)) <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    without_namespaces = re.sub(r'\sxmlns(?::\w+)?="[^"]*"', "", page)
    assert "http://" not in without_namespaces and "https://" not in without_namespaces
    # the figures' references (markers, clip paths, hatches) each name one element here
    references = (re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
                  + re.findall(r"url\(([^)]*)\)", page))
    assert references and all(reference.startswith("#") for reference in references)
    for reference in set(references):
        assert page.count(f'id="{reference[1:]}"') == 1, reference


def test_figures_are_deterministic():
    summary = full_summary()
    assert render_html(summary) == render_html(copy.deepcopy(summary))


def test_rendering_leaves_matplotlib_settings_alone():
    import matplotlib
    settings = matplotlib.rcParams

    def snapshot() -> dict:       # dict access: reading "backend" could pick one
        return {key: dict.__getitem__(settings, key) for key in settings}

    before = snapshot()
    render_html(full_summary())
    assert snapshot() == before


def test_evaluation_report_draws_pattern_figures(tmp_path):
    names = ("water", "road")

    def record(pattern, oa, f1, **extra):
        return {"pattern": pattern, "samples": 10, "oa": oa, "kappa": None,
                "confusion_matrix": [[5, 0], [0, 5]],
                "per_class": [{"name": n, "f1": v} for n, v in zip(names, f1)], **extra}

    summary = {"title": "MaMOL evaluation report",
               "classes": [{"value": 1, "name": "water", "reference_samples": 19},
                           {"value": 2, "name": "road", "reference_samples": 11}],
               "evaluation": {"samples": 30, "oa": 0.8, "kappa": 0.6,
                              "confusion_matrix": [[18, 1], [5, 6]],
                              "per_pattern": [record("hs+lidar", 0.9, [0.9, 0.85]),
                                              record("lidar", 1.0, [1.0, None],
                                                     reference_classes=1),
                                              record("sar", None, [None, None])]}}
    page, _ = write(tmp_path, summary)
    assert figures(page) == ["confusion", "pattern-oa", "pattern-f1"]
    bars = figure(page, "pattern-oa")
    assert re.findall(r">(\d+\.\d) %</text>", bars) == ["90.0", "100.0"]
    assert bars.count(">—</text>") == 1                 # no OA: no bar, a dash
    assert "hs+lidar  (10)" in bars and "lidar †  (10)" in bars
    heat = figure(page, "pattern-f1")
    cells = re.findall(r">(\d+\.\d|—)</text>", heat)
    assert cells == ["90.0", "85.0", "100.0", "—", "—", "—"]
    assert "<pattern" in heat                           # hatched empty cells
    for label in ("water", "road", "hs+lidar", "lidar †", "sar"):
        assert f">{label}</text>" in heat
    assert "one reference class only" in page           # the † note under the table


def test_hostile_names_are_escaped_in_tables_and_figures(tmp_path):
    hostile, escaped = "<b>a</b> & c", "&lt;b&gt;a&lt;/b&gt; &amp; c"
    summary = full_summary()
    summary["classes"][0]["name"] = hostile
    summary["validation"]["per_class"][0]["name"] = hostile
    for record in summary["validation"]["per_pattern"]:
        record["per_class"][0]["name"] = hostile
    summary["validation"]["per_pattern"][0]["pattern"] = "<i>p</i>"
    page, _ = write(tmp_path, summary)
    assert "<b>" not in page and "<i>" not in page
    assert f"<td>{escaped}</td>" in page                # classes and per-class tables
    assert f"<th>{escaped}</th>" in page                # confusion table
    for name in ("confusion", "pattern-f1"):
        assert f">{escaped}</text>" in figure(page, name)
    assert ">&lt;i&gt;p&lt;/i&gt;  (90)</text>" in figure(page, "pattern-oa")


def test_names_with_dollars_and_rare_glyphs_stay_plain_text(tmp_path):
    # no mathtext from "$...$", and no warning for glyphs DejaVu Sans lacks: the
    # browser draws the text
    summary = full_summary()
    summary["validation"]["per_class"][0]["name"] = "$x^2$"
    summary["validation"]["per_class"][1]["name"] = "水域"
    page, _ = write(tmp_path, summary)
    confusion = figure(page, "confusion")
    assert ">$x^2$</text>" in confusion and ">水域</text>" in confusion
