"""The reference grid and the alignment of every modality onto it (core/grid.py).

Real GDAL on small seeded rasters written to tmp_path, plus the session's sample scene.
"""
import numpy as np
import pytest
from osgeo import gdal

from mamol.core.errors import MamolInputError
from mamol.core.grid import AlignedRaster, ReferenceGrid, inspect_raster, reference_grid
from mamol.core.raster_io import create_geotiff, srs_from_epsg

pytestmark = pytest.mark.platform   # reference grids, CRSs and warping: GDAL and PROJ

gdal.UseExceptions()

UTM = 32632
ORIGIN = (500000.0, 5000000.0)


def write_raster(path, data, geotransform=None, epsg=UTM, nodata=None):
    """A GeoTIFF of ``data`` (bands, rows, cols); ``epsg=None`` writes one without CRS."""
    bands, rows, cols = data.shape
    geotransform = geotransform or (ORIGIN[0], 10.0, 0.0, ORIGIN[1], 0.0, -10.0)
    if epsg is None:
        kind = {np.dtype(np.float32): gdal.GDT_Float32, np.dtype(np.uint16): gdal.GDT_UInt16}
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, bands,
                                                       kind[data.dtype])
        dataset.SetGeoTransform(geotransform)
    else:
        dataset = create_geotiff(path, cols, rows, bands, data.dtype, geotransform,
                                 srs_from_epsg(epsg), nodata=nodata)
    dataset.WriteArray(data)
    dataset.FlushCache()
    dataset = None
    return path


def random_raster(tmp_path, name="a.tif", bands=2, rows=20, cols=30, seed=0, **kwargs):
    data = np.random.default_rng(seed).random((bands, rows, cols)).astype(np.float32)
    return write_raster(tmp_path / name, data, **kwargs), data


def aligned_full(info, grid):
    raster = AlignedRaster(info, grid)
    try:
        return raster.resampling, raster.read(0, 0, grid.width, grid.height)
    finally:
        raster.close()


@pytest.fixture(scope="module")
def scene_infos(small_scene):
    return {role: inspect_raster(getattr(small_scene, role), role)
            for role in ("hs", "sar", "lidar")}


# ------------------------------------------------------------------ reference grid

def test_reference_grid_is_the_first_rasters_grid(scene_infos):
    hs, sar, lidar = scene_infos["hs"], scene_infos["sar"], scene_infos["lidar"]
    grid = reference_grid([hs, sar, lidar])
    assert isinstance(grid, ReferenceGrid)
    assert grid.geotransform == hs.geotransform
    assert (grid.width, grid.height) == (hs.width, hs.height)
    assert grid.crs_wkt == hs.crs_wkt
    assert grid.bounds() == pytest.approx(hs.bounds())
    # Another order: the SAR raster (2 m, eastern part) now defines the grid.
    grid = reference_grid([sar, hs, lidar])
    assert grid.geotransform == sar.geotransform
    assert (grid.width, grid.height) == (sar.width, sar.height)
    assert (grid.pixel_width, grid.pixel_height) == (2.0, 2.0)


def test_reference_grid_json_round_trip(scene_infos):
    grid = reference_grid([scene_infos["hs"]])
    again = ReferenceGrid.from_json(grid.to_json())
    assert again == grid
    assert grid.to_json()["crs"] == f"EPSG:{UTM}"


# ------------------------------------------------------------------ the sample scene aligned

def test_aligned_hs_is_nan_exactly_on_nodata(small_scene, scene_infos):
    grid = reference_grid(list(scene_infos.values()))
    resampling, aligned = aligned_full(scene_infos["hs"], grid)
    raw = gdal.Open(str(small_scene.hs)).ReadAsArray()
    cloud = (raw == 65535).any(axis=0)
    assert cloud.any() and not cloud.all()
    assert resampling == "near"          # identity grid
    assert aligned.dtype == np.float32 and aligned.shape == raw.shape
    missing = np.isnan(aligned)
    # NaN in every band on the nodata pixels, nowhere else.
    assert np.array_equal(missing.all(axis=0), cloud)
    assert np.array_equal(missing.any(axis=0), cloud)
    assert np.array_equal(aligned[:, ~cloud], raw[:, ~cloud].astype(np.float32))


def test_aligned_sar_is_nan_exactly_outside_its_coverage(scene_infos):
    hs, sar = scene_infos["hs"], scene_infos["sar"]
    grid = reference_grid([hs, sar, scene_infos["lidar"]])
    resampling, aligned = aligned_full(sar, grid)
    assert resampling == "bilinear"      # 2 m onto 1 m
    assert aligned.shape == (2, grid.height, grid.width)
    # Grid columns whose pixel centre lies on the SAR raster (it spans all rows).
    x0, px, _, y0, _, py = sar.geotransform
    centres = grid.x_origin + (np.arange(grid.width) + 0.5) * grid.pixel_width
    covered = (centres > x0) & (centres < x0 + px * sar.width)
    assert y0 == grid.y_origin and y0 + py * sar.height <= grid.bounds()[1]
    assert 0 < covered.sum() < grid.width and not covered[0]
    missing = np.isnan(aligned)
    expected = np.broadcast_to(~covered[None, :], (grid.height, grid.width))
    assert np.array_equal(missing[0], expected)
    assert np.array_equal(missing[1], expected)
    assert (aligned[:, :, covered] > 0).all()     # linear backscatter


def test_aligned_lidar_in_another_crs_is_finite_in_the_scene(scene_infos):
    hs, lidar = scene_infos["hs"], scene_infos["lidar"]
    assert "3035" in lidar.crs_wkt and "32632" in hs.crs_wkt
    grid = reference_grid([hs, scene_infos["sar"], lidar])
    resampling, aligned = aligned_full(lidar, grid)
    assert resampling == "bilinear"
    assert aligned.shape == (1, grid.height, grid.width)
    assert np.isfinite(aligned).all()
    assert -100 < aligned.min() and aligned.max() < 1000   # metres, not the -9999 nodata


# ------------------------------------------------------------------ reading windows

def test_read_inside_equals_the_raster(tmp_path):
    path, data = random_raster(tmp_path)
    info = inspect_raster(path, "test")
    with AlignedRaster(info, reference_grid([info])) as raster:
        assert raster.resampling == "near"
        assert np.array_equal(raster.read(0, 0, 30, 20), data)
        assert np.array_equal(raster.read(7, 3, 5, 4), data[:, 3:7, 7:12])


def mirrored_window(data, col0, row0, width, height, margin=10):
    """The window of ``data`` (bands, rows, cols) with numpy's symmetric padding outside."""
    padded = np.pad(data, ((0, 0), (margin, margin), (margin, margin)), mode="symmetric")
    return padded[:, row0 + margin:row0 + margin + height, col0 + margin:col0 + margin + width]


@pytest.mark.parametrize("window", [
    (-3, -3, 7, 7),       # top-left corner
    (26, 15, 8, 8),       # bottom-right corner
    (-2, 5, 6, 6),        # left edge
    (10, -4, 9, 9),       # top edge
    (27, 17, 6, 6),       # just past the bottom-right corner, half inside
    (-4, -4, 38, 28),     # the whole grid plus a margin all round
])
def test_read_beyond_the_edges_is_symmetric_padding(tmp_path, window):
    path, data = random_raster(tmp_path, seed=1)
    info = inspect_raster(path, "test")
    col0, row0, width, height = window
    expected = mirrored_window(data, col0, row0, width, height)
    with AlignedRaster(info, reference_grid([info])) as raster:
        got = raster.read(col0, row0, width, height)
    assert got.shape == (2, height, width)
    assert np.array_equal(got, expected)
    # Mirrored including the edge pixel: the first pixel outside repeats the edge pixel.
    if col0 < 0:
        assert np.array_equal(got[:, :, -col0 - 1], got[:, :, -col0])


@pytest.mark.parametrize("window", [(-5, 0, 7, 7), (-7, -7, 8, 8)])
def test_read_mostly_outside_mirrors_the_grid(tmp_path, window):
    path, data = random_raster(tmp_path, seed=2)
    info = inspect_raster(path, "test")
    col0, row0, width, height = window
    expected = mirrored_window(data, col0, row0, width, height)
    with AlignedRaster(info, reference_grid([info])) as raster:
        assert np.array_equal(raster.read(col0, row0, width, height), expected)


def test_read_a_window_off_the_grid_is_refused(tmp_path):
    path, _ = random_raster(tmp_path)
    info = inspect_raster(path, "test")
    with AlignedRaster(info, reference_grid([info])) as raster:
        with pytest.raises(ValueError):
            raster.read(40, 0, 5, 5)


def test_nan_in_one_band_makes_every_band_missing(tmp_path):
    data = np.random.default_rng(4).random((3, 12, 15)).astype(np.float32)
    data[1, 5, 7] = np.nan
    data[2, 0, 0] = np.inf
    info = inspect_raster(write_raster(tmp_path / "nan.tif", data), "test")
    _, aligned = aligned_full(info, reference_grid([info]))
    missing = np.zeros((12, 15), dtype=bool)
    missing[5, 7] = missing[0, 0] = True
    assert np.array_equal(np.isnan(aligned).all(axis=0), missing)
    assert np.array_equal(np.isnan(aligned).any(axis=0), missing)
    assert np.array_equal(aligned[:, ~missing], data[:, ~missing])


def test_nodata_in_one_band_makes_every_band_missing(tmp_path):
    data = np.full((3, 10, 12), 100, dtype=np.uint16)
    data[1, 4, 5] = 65535
    data[:, 2, 2] = 65535
    info = inspect_raster(write_raster(tmp_path / "nd.tif", data, nodata=65535), "test")
    assert info.nodata == (65535.0,) * 3
    _, aligned = aligned_full(info, reference_grid([info]))
    missing = np.zeros((10, 12), dtype=bool)
    missing[4, 5] = missing[2, 2] = True
    assert np.array_equal(np.isnan(aligned).all(axis=0), missing)
    assert (aligned[:, ~missing] == 100).all()


# ------------------------------------------------------------------ refused inputs

def test_raster_without_crs_is_refused(tmp_path):
    data = np.ones((1, 5, 5), dtype=np.float32)
    path = write_raster(tmp_path / "nocrs.tif", data, epsg=None)
    assert gdal.Open(str(path)).GetProjection() == ""
    with pytest.raises(MamolInputError, match="no coordinate reference system") as error:
        inspect_raster(path, "LiDAR")
    assert "LiDAR" in str(error.value) and str(path) in str(error.value)


def test_text_file_named_tif_is_refused(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    with pytest.raises(MamolInputError, match="Cannot read the HS raster") as error:
        inspect_raster(path, "HS")
    assert str(path) in str(error.value)


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "missing.tif"
    with pytest.raises(MamolInputError, match="Cannot read the SAR raster") as error:
        inspect_raster(path, "SAR")
    assert str(path) in str(error.value)


def test_rotated_raster_is_refused(tmp_path):
    path, _ = random_raster(tmp_path, geotransform=(ORIGIN[0], 10.0, 2.0, ORIGIN[1], 0.0, -10.0))
    with pytest.raises(MamolInputError, match="rotated"):
        inspect_raster(path, "HS")


def test_rasters_with_no_common_area_are_refused(tmp_path):
    here, _ = random_raster(tmp_path, "here.tif")
    far = (ORIGIN[0] + 50000.0, 10.0, 0.0, ORIGIN[1] + 50000.0, 0.0, -10.0)
    there, _ = random_raster(tmp_path, "there.tif", seed=5, geotransform=far)
    infos = [inspect_raster(here, "HS"), inspect_raster(there, "SAR")]
    with pytest.raises(MamolInputError, match="no area in common") as error:
        reference_grid(infos)
    assert "HS" in str(error.value) and "SAR" in str(error.value)
    # Touching edges only is no common area either; any overlap is enough.
    beside = (ORIGIN[0] + 300.0, 10.0, 0.0, ORIGIN[1], 0.0, -10.0)
    touching, _ = random_raster(tmp_path, "beside.tif", geotransform=beside)
    with pytest.raises(MamolInputError, match="no area in common"):
        reference_grid([infos[0], inspect_raster(touching, "LiDAR")])
    overlap = (ORIGIN[0] + 290.0, 10.0, 0.0, ORIGIN[1], 0.0, -10.0)
    overlapping, _ = random_raster(tmp_path, "overlap.tif", geotransform=overlap)
    reference_grid([infos[0], inspect_raster(overlapping, "LiDAR")])


def test_no_rasters_is_refused():
    with pytest.raises(MamolInputError, match="at least one"):
        reference_grid([])


def test_overlapping_raster_in_another_crs_is_accepted(tmp_path):
    path, _ = random_raster(tmp_path, "utm.tif", rows=30, cols=30, seed=6)
    other = tmp_path / "laea.tif"
    gdal.Warp(str(other), str(path), dstSRS="EPSG:3035", xRes=15.0, yRes=15.0,
              resampleAlg="bilinear", dstNodata=float("nan"))
    first = inspect_raster(path, "HS")
    second = inspect_raster(other, "LiDAR")
    assert "3035" in second.crs_wkt
    grid = reference_grid([first, second])
    assert grid.geotransform == first.geotransform
    _, aligned = aligned_full(second, grid)
    # The warped copy covers the middle of the grid.
    assert np.isfinite(aligned[:, 5:25, 5:25]).all()
