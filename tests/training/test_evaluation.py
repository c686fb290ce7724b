"""Evaluating a model against reference labels: the core (training/evaluation.py);
``mamol:evaluate`` through real QGIS Processing is tests/qgis/test_evaluate_algorithm.py."""
import json

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from mamol.core.errors import Cancelled, MamolInputError
from mamol.training.evaluation import EvaluationConfig, evaluate, remap_patterns, score
from mamol.training.labels import LabelRasterSource, PolygonSource

NAMES = ("hs", "sar", "lidar")


def rasters(scene):
    return (("hs", str(scene.hs)), ("sar", str(scene.sar)), ("lidar", str(scene.lidar)))


def config(model, scene, folder=None, **changes):
    values = dict(model_path=str(model), rasters=rasters(scene),
                  labels=LabelRasterSource(str(scene.reference_labels)), device="cpu")
    if folder is not None:
        values.update(report_html=str(folder / "eval.html"),
                      report_json=str(folder / "eval.json"))
    values.update(changes)
    return EvaluationConfig(**values)


def test_score_per_pattern_against_hand_counts():
    reference = np.array([0, 0, 1, 1, 1, 0])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    patterns = np.array([3, 3, 3, 1, 1, 2])
    result = score(reference, predicted, patterns, ["a", "b"], ["hs", "lidar"])
    assert result["confusion_matrix"] == [[2, 1], [1, 2]]
    assert result["oa"] == pytest.approx(4 / 6)
    by_name = {r["pattern"]: r for r in result["per_pattern"]}
    assert [r["pattern"] for r in result["per_pattern"]] == ["hs+lidar", "lidar", "hs"]
    # hs+lidar: (0,0) (0,1) (1,1) -> [[1,1],[0,1]]; po = 2/3, pe = (2*1 + 1*2)/9 = 4/9
    assert by_name["hs+lidar"]["confusion_matrix"] == [[1, 1], [0, 1]]
    assert by_name["hs+lidar"]["kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert by_name["hs"]["samples"] == 2 and by_name["hs"]["oa"] == pytest.approx(0.5)
    assert by_name["lidar"]["oa"] == pytest.approx(1.0)
    # one class, perfect agreement: kappa is undefined there, and the row says one class
    assert by_name["lidar"]["kappa"] is None and by_name["lidar"]["reference_classes"] == 1
    assert by_name["lidar"]["per_class"][1]["producers_accuracy"] is None


def test_patterns_are_remapped_to_model_order():
    # extracted from (sar, lidar) only: bit 0 = sar, bit 1 = lidar
    patterns = np.array([1, 2, 3])
    assert remap_patterns(patterns, ["sar", "lidar"], list(NAMES)).tolist() == [2, 4, 6]


def test_matches_the_classified_scene(tiny_model, small_scene, tmp_path):
    """Sample-wise evaluation and whole-scene classification share the window and pattern
    rules: the confusion matrix over every reference pixel is the one the class raster
    gives."""
    from mamol.core.assessment import assess
    from mamol.core.inference import ClassifyConfig, classify
    classify(ClassifyConfig(str(tiny_model), rasters(small_scene), str(tmp_path / "lc.tif"),
                            output_modalities=str(tmp_path / "used.tif"), device="cpu"))
    expected = assess(tmp_path / "lc.tif", small_scene.reference_labels, tmp_path / "used.tif")
    result = evaluate(config(tiny_model, small_scene, tmp_path))
    evaluation = result.summary["evaluation"]
    assert evaluation["samples"] == expected["samples"]
    disagreement = np.abs(np.array(evaluation["confusion_matrix"]) -
                          np.array(expected["confusion_matrix"])).sum()
    # (batches differ between the two paths; allow a rare float tie to flip)
    assert disagreement <= 0.002 * expected["samples"], disagreement
    assert {r["pattern"]: r["samples"] for r in evaluation["per_pattern"]} == \
        {r["pattern"]: r["samples"] for r in expected["per_pattern"]}
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["evaluation"]["oa"] == pytest.approx(result.oa)
    page = (tmp_path / "eval.html").read_text()
    assert "<svg" in page and "Per missing pattern" in page and "Producer" in page
    assert page.count("<details>") == len(evaluation["per_pattern"])


def test_forced_absence_and_availability(tiny_model, small_scene):
    base = evaluate(config(tiny_model, small_scene, max_samples_per_class=80)).summary
    without_hs = evaluate(config(tiny_model, small_scene, absent=("hs",),
                                 max_samples_per_class=80)).summary
    assert not any("hs" in p for p in without_hs["missing_patterns"]["evaluated"])
    assert [m["used"] for m in without_hs["modalities"]] == [False, True, True]
    half = evaluate(config(tiny_model, small_scene, max_samples_per_class=80,
                           availability={"hs": 0.5}, simulation_seed=1)).summary
    with_hs = sum(n for p, n in half["missing_patterns"]["real"].items() if "hs" in p)
    kept = sum(n for p, n in half["missing_patterns"]["evaluated"].items() if "hs" in p)
    assert 0.4 * with_hs <= kept <= 0.6 * with_hs
    assert base["evaluation"]["samples"] == half["evaluation"]["samples"]
    assert "hs 50%" in half["forcing"]["description"]


def test_polygons_with_an_unknown_class_are_refused(tiny_model, small_scene, tmp_path):
    path = tmp_path / "refs.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    layer = source.CreateLayer("refs", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger))
    info = gdal.Info(str(small_scene.hs), format="json")["cornerCoordinates"]["upperLeft"]
    x, y = info
    for value, offset in ((1, 10), (99, 60)):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("cls", value)
        ring = f"{x + offset} {y - 10},{x + offset + 20} {y - 10},{x + offset + 20} {y - 30}," \
               f"{x + offset} {y - 30},{x + offset} {y - 10}"
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({ring}))"))
        layer.CreateFeature(feature)
    layer = source = None
    with pytest.raises(MamolInputError, match="99"):
        evaluate(config(tiny_model, small_scene, labels=PolygonSource(str(path), "cls")))


@pytest.mark.parametrize("changes, message", [
    ({"absent": ("hs", "sar", "lidar")}, "at least one modality"),
    ({"absent": ("thermal",)}, "thermal"),
    ({"batch_size": -1}, "batch size"),
    ({"precision": "fp8"}, "Unknown precision"),
    ({"availability": {"thermal": 0.5}}, "thermal"),
])
def test_bad_settings(tiny_model, small_scene, tmp_path, changes, message):
    with pytest.raises(MamolInputError, match=message):
        evaluate(config(tiny_model, small_scene, tmp_path, **changes))
    assert not list(tmp_path.iterdir())


def test_wrong_band_count(tiny_model, small_scene, tmp_path):
    with pytest.raises(MamolInputError, match="band"):
        evaluate(config(tiny_model, small_scene, tmp_path,
                        rasters=(("hs", str(small_scene.sar)),)))
    assert not list(tmp_path.iterdir())


def test_cancel_writes_no_report(tiny_model, small_scene, tmp_path):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        evaluate(config(tiny_model, small_scene, tmp_path), is_cancelled=cancelled)
    assert not list(tmp_path.iterdir())
