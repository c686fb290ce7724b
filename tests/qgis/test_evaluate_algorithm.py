"""``mamol:evaluate`` through real QGIS Processing (the core: tests/training/test_evaluation.py)."""
import json

import pytest
from qgis.core import QgsProcessingException

from qgis_session import cancelling_feedback, recording_feedback

pytestmark = pytest.mark.subprocess   # every run starts an engine child


def run(parameters, feedback=None):
    import processing
    return processing.run("mamol:evaluate", parameters, feedback=feedback)


def test_algorithm_with_a_label_raster(mamol_provider, tiny_model, small_scene, tmp_path):
    from qgis.core import QgsApplication
    algorithm = QgsApplication.processingRegistry().algorithmById("mamol:evaluate")
    assert all(d.help() for d in algorithm.parameterDefinitions())
    report = tmp_path / "evaluation.html"
    result = run({"MODEL": str(tiny_model), "HS": str(small_scene.hs),
                  "LIDAR": str(small_scene.lidar),
                  "LABEL_RASTER": str(small_scene.reference_labels),
                  "MAX_SAMPLES_PER_CLASS": 60, "DEVICE": "cpu", "OUTPUT_REPORT": str(report)})
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["OUTPUT_REPORT"] == str(report) and report.is_file()
    assert result["OA"] == pytest.approx(written["evaluation"]["oa"])
    assert result["KAPPA"] == pytest.approx(written["evaluation"]["kappa"])
    assert [m["name"] for m in written["modalities"]] == ["hs", "lidar"]


def test_algorithm_with_polygons(mamol_provider, tiny_model, small_scene, tmp_path):
    result = run({"MODEL": str(tiny_model), "HS": str(small_scene.hs),
                  "SAR": str(small_scene.sar), "LIDAR": str(small_scene.lidar),
                  "POLYGONS": str(small_scene.training_polygons), "CLASS_FIELD": "class_id",
                  "DEVICE": "cpu", "OUTPUT_REPORT": str(tmp_path / "e.html")})
    assert 0.0 <= result["OA"] <= 1.0
    written = json.loads((tmp_path / "e.json").read_text())
    assert "class field class_id" in written["config"]["label source"]


def test_text_class_field_advice_is_one_evaluate_offers(mamol_provider, tiny_model,
                                                          small_scene, tmp_path):
    """Evaluate has no class-name field, so its error must not advise choosing one."""
    with pytest.raises(QgsProcessingException) as raised:
        run({"MODEL": str(tiny_model), "HS": str(small_scene.hs), "DEVICE": "cpu",
             "POLYGONS": str(small_scene.training_polygons), "CLASS_FIELD": "class_name",
             "OUTPUT_REPORT": str(tmp_path / "e.html")})
    message = str(raised.value)
    assert "'class_name' is not numeric. Choose a numeric class field" in message
    assert "name field" not in message.lower()
    assert not list(tmp_path.iterdir())


def test_algorithm_needs_exactly_one_label_source(mamol_provider, tiny_model, small_scene,
                                                  tmp_path):
    base = {"MODEL": str(tiny_model), "HS": str(small_scene.hs), "DEVICE": "cpu",
            "OUTPUT_REPORT": str(tmp_path / "e.html")}
    with pytest.raises(QgsProcessingException, match="reference labels"):
        run(base)
    with pytest.raises(QgsProcessingException, match="not both"):
        run(dict(base, LABEL_RASTER=str(small_scene.reference_labels),
                 POLYGONS=str(small_scene.training_polygons), CLASS_FIELD="class_id"))
    assert not list(tmp_path.iterdir())


def test_algorithm_cancel_leaves_nothing(mamol_provider, tiny_model, small_scene, tmp_path):
    with pytest.raises(QgsProcessingException):
        run({"MODEL": str(tiny_model), "HS": str(small_scene.hs),
             "LABEL_RASTER": str(small_scene.reference_labels), "DEVICE": "cpu",
             "OUTPUT_REPORT": str(tmp_path / "e.html")}, feedback=cancelling_feedback(30))
    assert not list(tmp_path.iterdir())


def test_evaluate_algorithm_warns_and_reports_the_share(mamol_provider, tiny_model,
                                                        small_scene, lidar_in_centimetres,
                                                        tmp_path):
    import processing

    feedback = recording_feedback()
    processing.run("mamol:evaluate", {
        "MODEL": str(tiny_model), "HS": str(small_scene.hs), "SAR": str(small_scene.sar),
        "LIDAR": str(lidar_in_centimetres), "LABEL_RASTER": str(small_scene.reference_labels),
        "MAX_SAMPLES_PER_CLASS": 50, "DEVICE": "cpu",
        "OUTPUT_REPORT": str(tmp_path / "report.html")}, feedback=feedback)
    assert any("LiDAR pixels lie far" in w for w in feedback.warnings)
    summary = json.loads((tmp_path / "report.json").read_text())
    shares = {m["name"]: m["far_share"] for m in summary["modalities"]}
    assert shares["lidar"] > 0.5 and shares["hs"] < 0.05
    assert "Far from the training data" in (tmp_path / "report.html").read_text()
