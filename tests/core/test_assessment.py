"""Accuracy of a class raster against reference labels, per modalities-used pattern."""
import json

import numpy as np
import pytest
from osgeo import gdal

from mamol.core.assessment import assess, main, write_quicklook
from mamol.core.class_style import apply_legend
from mamol.core.errors import MamolInputError
from mamol.core.model_file import ClassInfo
from mamol.core.raster_io import create_geotiff, srs_from_epsg

pytestmark = pytest.mark.platform   # GDAL rasters and a matplotlib quick-look

CLASSES = (ClassInfo(1, "water", "#0000ff"), ClassInfo(4, "road", "#808080"),
           ClassInfo(7, "trees", "#00ff00"))
GT = (500000, 1, 0, 4000000, 0, -1)


def write(path, array, nodata=None, classes=None, bits=None):
    dataset = create_geotiff(path, array.shape[1], array.shape[0], 1, array.dtype, GT,
                             srs_from_epsg(32632), nodata=nodata)
    band = dataset.GetRasterBand(1)
    if classes:  # colour table before pixels, as GDAL >= 3.10 requires
        apply_legend(band, classes)
    band.WriteArray(array)
    if bits:
        band.SetMetadata({f"BIT_{i}": name for i, name in enumerate(bits)})
    dataset = None
    return path


@pytest.fixture
def rasters(tmp_path):
    # 2 x 6 pixels; reference 0 = unlabelled, class raster 255 = nodata.
    reference = np.array([[1, 1, 4, 4, 7, 0],
                          [7, 7, 1, 4, 7, 7]], dtype=np.uint8)
    predicted = np.array([[1, 4, 4, 4, 7, 7],
                          [7, 1, 1, 255, 7, 7]], dtype=np.uint8)
    used = np.array([[7, 7, 5, 5, 6, 6],
                     [7, 7, 5, 0, 6, 6]], dtype=np.uint8)
    return (write(tmp_path / "classes.tif", predicted, 255, CLASSES),
            write(tmp_path / "reference.tif", reference, 0),
            write(tmp_path / "used.tif", used, bits=("hs", "sar", "lidar")))


def test_overall_and_per_pattern_against_hand_counts(rasters):
    result = assess(*rasters)
    # Labelled and classified: 10 pixels (one unlabelled, one nodata). Rows = reference
    # (water, road, trees), columns = predicted:
    #   water: water 2 (0,0)(1,2), road 1 (0,1)      -> [2, 1, 0]
    #   road:  road 2 (0,2)(0,3)                     -> [0, 2, 0]
    #   trees: water 1 (1,1), trees 4                -> [1, 0, 4]
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 4]]
    assert result["samples"] == 10 and result["oa"] == pytest.approx(0.8)
    by_pattern = {row["pattern"]: row for row in result["per_pattern"]}
    assert by_pattern["hs+sar+lidar"]["samples"] == 4
    assert by_pattern["hs+sar+lidar"]["oa"] == pytest.approx(0.5)
    assert by_pattern["hs+lidar"]["oa"] == pytest.approx(1.0)   # (0,2)(0,3)(1,2)
    assert by_pattern["sar+lidar"]["samples"] == 3 and by_pattern["sar+lidar"]["oa"] == 1.0
    # sar+lidar's reference is trees only: kappa is undefined there, and the row says so
    assert by_pattern["sar+lidar"]["kappa"] is None
    assert by_pattern["sar+lidar"]["reference_classes"] == 1
    assert by_pattern["hs+lidar"]["reference_classes"] == 2
    assert "none" not in by_pattern


def test_command_line_prints_and_writes(rasters, tmp_path, capsys):
    classes, reference, used = rasters
    png = tmp_path / "quicklook.png"
    code = main(["--classes", str(classes), "--reference", str(reference), "--modalities",
                 str(used), "--json", str(tmp_path / "a.json"), "--quicklook", str(png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "OA 80.00 %" in printed and "hs+lidar" in printed
    one_class = [line for line in printed.splitlines() if line.strip().startswith("sar+lidar")]
    assert one_class and "kappa       —" in one_class[0]
    assert one_class[0].endswith("[one reference class only: OA is no measure of skill here, "
                                 "kappa undefined or 0]")
    assert "one reference class" not in "".join(
        line for line in printed.splitlines() if line.strip().startswith("hs+lidar"))
    assert json.loads((tmp_path / "a.json").read_text())["samples"] == 10
    image = gdal.Open(str(png))
    assert image.RasterCount >= 3 and image.RasterXSize == 800


def test_quicklook_draws_class_colours(rasters, tmp_path):
    png = write_quicklook(rasters[0], tmp_path / "q.png")
    pixels = gdal.Open(str(png)).ReadAsArray()[:3].reshape(3, -1).T
    colours = {tuple(p) for p in pixels}
    assert (0, 0, 255) in colours and (0, 255, 0) in colours


def test_rasters_on_different_grids_are_refused(rasters, tmp_path):
    other = write(tmp_path / "small.tif", np.ones((2, 5), dtype=np.uint8), 0)
    with pytest.raises(MamolInputError, match="not on the class raster's grid"):
        assess(rasters[0], other)
