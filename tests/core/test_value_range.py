"""Input far from the training data (``core.value_range``): the rule, and warnings from
classify through the core (through ``processing.run``: tests/qgis/test_classify_algorithm.py
and test_evaluate_algorithm.py)."""
import numpy as np
import pytest
from osgeo import gdal

from mamol.core.inference import ClassifyConfig, classify
from mamol.core.model_file import read_header
from mamol.core.value_range import FAR_RMS_Z, FarTally, far_mask, z_scores


def test_training_like_data_is_rarely_far_whatever_its_distribution():
    rng = np.random.default_rng(0)
    # heavy-tailed, skewed bands: the bound still holds for the data the statistics come from
    values = np.stack([rng.lognormal(0, 1.5, 200_000), rng.standard_cauchy(200_000),
                       rng.normal(5, 2, 200_000)])
    z = z_scores(values, values.mean(axis=1), values.std(axis=1))
    assert far_mask(z).mean() <= 1 / FAR_RMS_Z ** 2
    tally = FarTally(["lidar"])
    tally.add("lidar", z)
    assert tally.warnings() == []


def test_values_in_other_units_are_far_and_warned_per_modality():
    rng = np.random.default_rng(1)
    training = rng.normal(10, 3, (2, 10_000))
    mean, std = training.mean(axis=1), training.std(axis=1)
    tally = FarTally(["hs", "lidar"])
    tally.add("hs", z_scores(training, mean, std))
    tally.add("lidar", z_scores(training * 100, mean, std))   # metres -> centimetres
    shares = tally.shares()
    assert shares["hs"] < 0.001 and shares["lidar"] > 0.99
    warnings = tally.warnings()
    assert len(warnings) == 1 and warnings[0].startswith("100.0 % of the LiDAR pixels lie far")
    assert "LiDAR 100.0 %" in tally.line() and "HS 0.0 %" in tally.line()


def test_a_constant_raster_is_flat_even_at_the_training_mean():
    tally = FarTally(["sar"])
    tally.add("sar", z_scores(np.full((3, 5000), 7.0), [7.0, 7.0, 7.0], [2.0, 2.0, 2.0]))
    assert tally.shares()["sar"] == 0.0
    (warning,) = tally.warnings()
    assert "The SAR raster hardly varies over the 5000 pixels" in warning


def test_no_valid_pixel_says_so_and_does_not_warn():
    tally = FarTally(["hs"])
    tally.add("hs", np.zeros((4, 0), np.float32))
    assert tally.shares() == {"hs": None}
    assert "HS no valid pixel" in tally.line() and tally.warnings() == []


def rasters(scene, lidar):
    return (("hs", str(scene.hs)), ("sar", str(scene.sar)), ("lidar", str(lidar)))


def test_classify_warns_logs_and_records_the_share(tiny_model, small_scene,
                                                    lidar_in_centimetres, tmp_path):
    lines, warnings = [], []
    result = classify(ClassifyConfig(
        model_path=str(tiny_model), rasters=rasters(small_scene, lidar_in_centimetres),
        output_classes=str(tmp_path / "classes.tif"), device="cpu"),
        log=lines.append, warn=warnings.append)
    assert result.far_shares["lidar"] > 0.5
    assert result.far_shares["hs"] < 0.05 and result.far_shares["sar"] < 0.05
    assert len(warnings) == 1 and "of the LiDAR pixels lie far" in warnings[0]
    assert any(line.startswith("Pixels far from the training data") for line in lines)
    metadata = gdal.Open(str(tmp_path / "classes.tif")).GetMetadata()
    assert float(metadata["MAMOL_FAR_SHARE_LIDAR"]) == pytest.approx(
        result.far_shares["lidar"], abs=1e-6)


def test_classify_of_the_training_scene_does_not_warn(tiny_model, small_scene, tmp_path):
    warnings = []
    result = classify(ClassifyConfig(
        model_path=str(tiny_model), rasters=rasters(small_scene, small_scene.lidar),
        output_classes=str(tmp_path / "classes.tif"), device="cpu"), warn=warnings.append)
    assert warnings == []
    assert all(share < 0.05 for share in result.far_shares.values())
    assert set(result.far_shares) == {m.name for m in read_header(tiny_model).modalities}
