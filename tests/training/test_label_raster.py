"""Label rasters as a training label source (DESIGN §5: "or from a label raster")."""
import numpy as np
import pytest
from osgeo import gdal

from mamol.core.errors import MamolInputError
from mamol.core.grid import inspect_raster, reference_grid
from mamol.core.raster_io import create_geotiff, srs_from_epsg
from mamol.core.sample_scene import CLASS_STYLE, hs_geotransform
from mamol.training.labels import (LabelRasterSource, SplitConfig, labels_from_raster,
                                   split_by_polygon)

pytestmark = pytest.mark.platform   # label rasters read with GDAL


@pytest.fixture(scope="module")
def hs_grid(small_scene):
    return reference_grid([inspect_raster(small_scene.hs, "HS")])


def test_every_labelled_pixel_with_names_and_colours(small_scene, hs_grid):
    pixels = labels_from_raster(LabelRasterSource(str(small_scene.reference_labels)), hs_grid)
    reference = gdal.Open(str(small_scene.reference_labels)).ReadAsArray()
    assert len(pixels) == int((reference > 0).sum())
    values = np.array([c.value for c in pixels.classes])
    assert np.array_equal(values[pixels.class_index], reference[pixels.rows, pixels.cols])
    for info in pixels.classes:
        name, colour = CLASS_STYLE[info.value]
        assert (info.name, info.colour) == (name, colour)


def test_split_units_are_blocks_of_one_class(small_scene, hs_grid):
    pixels = labels_from_raster(LabelRasterSource(str(small_scene.reference_labels), 16),
                                hs_grid)
    for group in np.unique(pixels.polygon)[:50]:
        members = pixels.polygon == group
        assert np.unique(pixels.class_index[members]).size == 1
        assert np.unique(pixels.rows[members] // 16).size == 1
        assert np.unique(pixels.cols[members] // 16).size == 1
    split = split_by_polygon(pixels, SplitConfig(validation_fraction=0.3, seed=1))
    assert not set(split.train.polygon.tolist()) & set(split.validation.polygon.tolist())


def test_labels_on_another_grid_are_not_interpolated(small_scene):
    lidar_grid = reference_grid([inspect_raster(small_scene.lidar, "LiDAR")])
    pixels = labels_from_raster(LabelRasterSource(str(small_scene.reference_labels)),
                                lidar_grid)
    assert {c.value for c in pixels.classes} <= set(range(1, 8))
    assert len(pixels) > 1000


def test_bad_label_rasters(tmp_path, hs_grid):
    create_geotiff(tmp_path / "two.tif", 8, 8, 2, np.uint8, hs_geotransform(),
                   srs_from_epsg(32632)).FlushCache()
    with pytest.raises(MamolInputError, match="2 bands"):
        labels_from_raster(LabelRasterSource(str(tmp_path / "two.tif")), hs_grid)
    empty = create_geotiff(tmp_path / "empty.tif", 8, 8, 1, np.uint8, hs_geotransform(),
                           srs_from_epsg(32632))
    empty.GetRasterBand(1).Fill(0)
    empty = None
    with pytest.raises(MamolInputError, match="no labelled pixel"):
        labels_from_raster(LabelRasterSource(str(tmp_path / "empty.tif")), hs_grid)
