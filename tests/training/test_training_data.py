"""Labelled pixels from polygons, the polygon split, windows and training samples
(training/labels.py, core/windows.py, training/dataset.py).

Real GDAL/OGR on the session's sample scene and on small polygon files written to tmp_path.
"""
import numpy as np
import pytest
from osgeo import gdal, ogr

from mamol.core.errors import MamolInputError
from mamol.core.grid import AlignedRaster, inspect_raster, reference_grid
from mamol.core.raster_io import srs_from_epsg
from mamol.core.windows import (
    cut_windows,
    modality_present,
    pattern_from_presence,
    pattern_name,
    window_offset,
)
from mamol.training import dataset as dataset_module
from mamol.training.dataset import (
    Normalisation,
    SampleSet,
    extract_samples,
    normalisation_statistics,
    normalise,
)
from mamol.training.labels import (
    LabelledPixels,
    PolygonSource,
    SplitConfig,
    rasterise_polygons,
    split_by_polygon,
)

pytestmark = pytest.mark.platform   # rasterised polygons and windows read with GDAL and OGR

gdal.UseExceptions()
ogr.UseExceptions()

SCENE_NAMES = ("Water", "Shadow", "Road", "Building", "Grass", "Trees", "Bare soil")
MODALITIES = ("hs", "sar", "lidar")


@pytest.fixture(scope="module")
def grid(small_scene):
    return reference_grid([inspect_raster(getattr(small_scene, role), role)
                           for role in MODALITIES])


@pytest.fixture(scope="module")
def scene_source(small_scene):
    return PolygonSource(str(small_scene.training_polygons), "class_id",
                         name_field="class_name")


@pytest.fixture(scope="module")
def pixels(scene_source, grid):
    return rasterise_polygons(scene_source, grid)


@pytest.fixture(scope="module")
def aligned(small_scene, grid):
    rasters = [(role, AlignedRaster(inspect_raster(getattr(small_scene, role), role), grid))
               for role in MODALITIES]
    yield rasters
    for _, raster in rasters:
        raster.close()


@pytest.fixture(scope="module")
def hs_cloud(small_scene):
    return (gdal.Open(str(small_scene.hs)).ReadAsArray() == 65535).any(axis=0)


def rectangle_wkt(grid, row0, row1, col0, col1):
    """A rectangle over grid pixels rows [row0, row1) x cols [col0, col1)."""
    x0, y0, p = grid.x_origin, grid.y_origin, grid.pixel_width
    corners = [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]
    return "POLYGON((" + ", ".join(f"{x0 + c * p} {y0 - r * p}" for c, r in corners) + "))"


def write_polygons(path, features, fields, epsg=32632, driver="GPKG"):
    """A polygon layer with ``fields`` {name: ogr type} and ``features`` [(wkt, {values})]."""
    source = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    srs = srs_from_epsg(epsg) if epsg else None
    layer = source.CreateLayer("polygons", srs, ogr.wkbPolygon)
    for name, kind in fields.items():
        layer.CreateField(ogr.FieldDefn(name, kind))
    for wkt, values in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        for name, value in values.items():
            feature.SetField(name, value)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
        feature = None
    layer = None
    source = None
    return str(path)


def scene_polygons(small_scene):
    """The scene's polygons as (geometry, class_id) in layer order."""
    dataset = ogr.Open(str(small_scene.training_polygons))
    layer = dataset.GetLayer(0)
    result = [(f.GetGeometryRef().Clone(), f.GetField("class_id")) for f in layer]
    layer = None
    dataset = None
    return result


def pixel_centre(grid, row, col):
    point = ogr.Geometry(ogr.wkbPoint)
    point.AddPoint_2D(grid.x_origin + (col + 0.5) * grid.pixel_width,
                      grid.y_origin - (row + 0.5) * grid.pixel_height)
    return point


# ------------------------------------------------------------------ rasterising

def test_scene_polygons_give_classes_1_to_7_with_names(pixels):
    assert [c.value for c in pixels.classes] == list(range(1, 8))
    assert tuple(c.name for c in pixels.classes) == SCENE_NAMES
    # unstyled polygons take the palette's colours: the scene's reference labels' colours
    from mamol.core.sample_scene import CLASS_STYLE
    assert [c.colour for c in pixels.classes] == [colour for _, colour in CLASS_STYLE.values()]
    assert sorted(np.unique(pixels.class_index)) == list(range(7))
    assert len(pixels) == pixels.cols.size == pixels.class_index.size == pixels.polygon.size
    assert pixels.warnings == []


def test_labelled_pixels_lie_inside_their_polygon(small_scene, grid, pixels):
    polygons = scene_polygons(small_scene)
    assert np.unique(pixels.polygon).size == len(polygons)
    rng = np.random.default_rng(0)
    for k in rng.choice(len(pixels), size=40, replace=False):
        geometry, class_id = polygons[pixels.polygon[k]]
        assert geometry.Contains(pixel_centre(grid, pixels.rows[k], pixels.cols[k]))
        assert pixels.classes[pixels.class_index[k]].value == class_id
    # Unlabelled pixel centres lie in no polygon; the count matches the polygons' area.
    labelled = np.zeros((grid.height, grid.width), dtype=bool)
    labelled[pixels.rows, pixels.cols] = True
    unlabelled = np.argwhere(~labelled)
    for row, col in unlabelled[rng.choice(len(unlabelled), size=40, replace=False)]:
        centre = pixel_centre(grid, row, col)
        assert not any(geometry.Contains(centre) for geometry, _ in polygons)
    assert labelled.sum() == len(pixels) == round(sum(g.GetArea() for g, _ in polygons))


def test_polygons_in_another_crs_give_the_same_pixels(tmp_path, small_scene, grid, pixels):
    path = str(tmp_path / "wgs84.gpkg")
    gdal.VectorTranslate(path, str(small_scene.training_polygons), dstSRS="EPSG:4326")
    check = ogr.Open(path)
    assert check.GetLayer(0).GetSpatialRef().GetAuthorityCode(None) == "4326"
    check = None
    again = rasterise_polygons(PolygonSource(path, "class_id", name_field="class_name"), grid)
    first = {(r, c, k) for r, c, k in zip(pixels.rows, pixels.cols, pixels.class_index)}
    second = {(r, c, k) for r, c, k in zip(again.rows, again.cols, again.class_index)}
    assert len(first ^ second) <= 0.02 * len(first)
    assert tuple(c.name for c in again.classes) == SCENE_NAMES


def test_text_class_field_with_name_field_numbers_classes_alphabetically(tmp_path, grid):
    features = [
        (rectangle_wkt(grid, 10, 15, 10, 15), {"kind": "water", "label": "Open water"}),
        (rectangle_wkt(grid, 20, 24, 10, 15), {"kind": "grass", "label": "Lawn"}),
        (rectangle_wkt(grid, 30, 33, 40, 45), {"kind": "road", "label": "Street"}),
        (rectangle_wkt(grid, 50, 52, 50, 52), {"kind": "grass", "label": "Lawn"}),
    ]
    path = write_polygons(tmp_path / "text.gpkg", features,
                          {"kind": ogr.OFTString, "label": ogr.OFTString})
    result = rasterise_polygons(PolygonSource(path, "kind", name_field="label"), grid)
    assert [(c.value, c.name) for c in result.classes] == [
        (1, "Lawn"), (2, "Street"), (3, "Open water")]
    counts = np.bincount(result.class_index, minlength=3)
    assert counts.tolist() == [4 * 5 + 2 * 2, 3 * 5, 5 * 5]
    # The water rectangle's pixels carry class index 2 (value 3).
    water = (result.rows >= 10) & (result.rows < 15) & (result.cols >= 10) & (result.cols < 15)
    assert (result.class_index[water] == 2).all() and water.sum() == 25


def test_integer_class_values_are_kept(tmp_path, grid):
    features = [(rectangle_wkt(grid, 5, 9, 5, 9), {"cls": 12}),
                (rectangle_wkt(grid, 60, 63, 60, 64), {"cls": 3})]
    path = write_polygons(tmp_path / "int.gpkg", features, {"cls": ogr.OFTInteger})
    result = rasterise_polygons(PolygonSource(path, "cls"), grid)
    assert [(c.value, c.name) for c in result.classes] == [(3, "class 3"), (12, "class 12")]
    assert np.bincount(result.class_index).tolist() == [12, 16]


# ------------------------------------------------------------------ refused polygon layers

def test_missing_class_field_lists_the_fields(scene_source, grid):
    source = PolygonSource(scene_source.path, "landcover")
    with pytest.raises(MamolInputError, match="no class field 'landcover'") as error:
        rasterise_polygons(source, grid)
    assert "class_id" in str(error.value) and "class_name" in str(error.value)


def test_text_class_field_without_name_field_is_refused(scene_source, grid):
    with pytest.raises(MamolInputError, match="not numeric"):
        rasterise_polygons(PolygonSource(scene_source.path, "class_name"), grid)


def test_polygons_outside_the_rasters_are_refused(tmp_path, grid):
    far = rectangle_wkt(grid, -5000, -4990, 3000, 3010)
    path = write_polygons(tmp_path / "far.gpkg", [(far, {"cls": 1}), (far, {"cls": 2})],
                          {"cls": ogr.OFTInteger})
    with pytest.raises(MamolInputError, match="None of the 2 polygons"):
        rasterise_polygons(PolygonSource(path, "cls"), grid)


def test_layer_without_crs_is_refused(tmp_path, grid):
    path = write_polygons(tmp_path / "nocrs.shp", [(rectangle_wkt(grid, 5, 9, 5, 9),
                                                    {"cls": 1})],
                          {"cls": ogr.OFTInteger}, epsg=None, driver="ESRI Shapefile")
    with pytest.raises(MamolInputError, match="has no CRS"):
        rasterise_polygons(PolygonSource(path, "cls"), grid)


def test_geopackage_layer_without_crs_is_refused(tmp_path, grid):
    path = write_polygons(tmp_path / "nocrs.gpkg", [(rectangle_wkt(grid, 5, 9, 5, 9),
                                                     {"cls": 1})],
                          {"cls": ogr.OFTInteger}, epsg=None)
    outcome = None
    try:
        rasterise_polygons(PolygonSource(path, "cls"), grid)
    except MamolInputError as error:
        outcome = str(error)
    except RuntimeError as error:
        # Keep no traceback (it holds GDAL objects of the failed call).
        outcome = f"raw {type(error).__name__}: {error}"
    assert outcome is not None and "CRS" in outcome and not outcome.startswith("raw"), outcome


def test_non_integer_class_value_is_refused(tmp_path, grid):
    features = [(rectangle_wkt(grid, 5, 9, 5, 9), {"cls": 1.0}),
                (rectangle_wkt(grid, 20, 29, 5, 9), {"cls": 2.5})]
    path = write_polygons(tmp_path / "real.gpkg", features, {"cls": ogr.OFTReal})
    with pytest.raises(MamolInputError, match="2.5") as error:
        rasterise_polygons(PolygonSource(path, "cls"), grid)
    assert "whole number" in str(error.value)


def test_class_with_too_few_pixels_is_named(pixels):
    counts = np.bincount(pixels.class_index)
    smallest = int(np.argmin(counts))
    name = pixels.classes[smallest].name
    config = SplitConfig(min_pixels_per_class=int(counts[smallest]) + 1)
    with pytest.raises(MamolInputError, match=f"'{name}' has only {counts[smallest]}"):
        split_by_polygon(pixels, config)
    # At exactly the minimum it is accepted.
    split_by_polygon(pixels, SplitConfig(min_pixels_per_class=int(counts[smallest])))


# ------------------------------------------------------------------ split by polygon

@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_split_keeps_each_polygon_on_one_side(pixels, fraction, seed):
    config = SplitConfig(validation_fraction=fraction, max_train_per_class=0,
                         max_validation_per_class=0, seed=seed)
    split = split_by_polygon(pixels, config)
    train_polygons = set(split.train.polygon.tolist())
    validation_polygons = set(split.validation.polygon.tolist())
    assert train_polygons.isdisjoint(validation_polygons)
    # Uncapped: every labelled pixel is on exactly one side.
    assert len(split.train) + len(split.validation) == len(pixels)
    for index in range(len(pixels.classes)):
        size = int((pixels.class_index == index).sum())
        polygons = np.unique(pixels.polygon[pixels.class_index == index]).size
        train = int((split.train.class_index == index).sum())
        validation = int((split.validation.class_index == index).sum())
        train_count, validation_count, train_polys, validation_polys = split.class_counts[index]
        assert (train_count, validation_count) == (train, validation)
        assert train_polys >= 1 and train_polys + validation_polys == polygons
        # Validation reaches the fraction unless only the training polygon is left.
        assert validation >= fraction * size or validation_polys == polygons - 1


def test_split_respects_per_class_caps(pixels):
    config = SplitConfig(validation_fraction=0.3, max_train_per_class=50,
                         max_validation_per_class=20, seed=5)
    split = split_by_polygon(pixels, config)
    train_counts = np.bincount(split.train.class_index, minlength=7)
    validation_counts = np.bincount(split.validation.class_index, minlength=7)
    assert (train_counts <= 50).all() and (validation_counts <= 20).all()
    class_sizes = np.bincount(pixels.class_index)
    assert (train_counts == 50).sum() >= 5            # most classes have more than 50
    assert train_counts.tolist() == [c[0] for c in split.class_counts]
    assert validation_counts.tolist() == [c[1] for c in split.class_counts]
    assert (train_counts + validation_counts <= class_sizes).all()
    assert set(split.train.polygon.tolist()).isdisjoint(split.validation.polygon.tolist())


def test_split_is_seeded(pixels):
    def sides(seed):
        split = split_by_polygon(pixels, SplitConfig(validation_fraction=0.3,
                                                     max_train_per_class=100, seed=seed))
        return (split.train.rows.tolist(), split.train.cols.tolist(),
                split.validation.rows.tolist(), split.validation.cols.tolist())

    assert sides(11) == sides(11)
    assert sides(11) != sides(12)


def test_split_config_validation():
    with pytest.raises(MamolInputError, match="validation fraction"):
        SplitConfig(validation_fraction=1.0).validate()
    with pytest.raises(MamolInputError, match="max_train_per_class"):
        SplitConfig(max_train_per_class=-1).validate()


# ------------------------------------------------------------------ windows

@pytest.mark.parametrize("patch", [5, 6, 7, 14])
def test_cut_windows_puts_the_target_at_the_offset(patch):
    offset = window_offset(patch)
    assert offset == patch // 2
    block = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40)
    rows = np.array([0, 3, 30 - patch, 10])
    cols = np.array([0, 7, 40 - patch, 25])
    windows = cut_windows(block, rows, cols, patch)
    assert windows.shape == (4, 2, patch, patch) and windows.flags["C_CONTIGUOUS"]
    for k, (row, col) in enumerate(zip(rows, cols)):
        assert np.array_equal(windows[k], block[:, row:row + patch, col:col + patch])
        assert np.array_equal(windows[k, :, offset, offset],
                              block[:, row + offset, col + offset])


def test_modality_present_honours_centre_and_fraction():
    patch = 5                                   # 25 pixels; centre (2, 2)
    windows = np.ones((5, 2, patch, patch), dtype=np.float32)
    windows[0, 0, 2, 2] = np.nan                # centre missing (one band) -> absent
    flat = windows[1].reshape(2, -1)            # 12 of 25 (0.48) missing -> present
    flat[1, :12] = np.nan
    flat = windows[2].reshape(2, -1)            # 13 of 25 (0.52) missing -> absent
    flat[0, :12] = np.nan                       # (index 12 is the centre: kept)
    flat[0, 13] = np.nan
    windows[3, :, 0, :] = np.nan                # one row, 0.2 -> present
    windows[4, 1, 0, 0] = np.nan                # one corner -> present
    assert modality_present(windows, 0.5).tolist() == [False, True, False, True, True]
    assert modality_present(windows, 0.2).tolist() == [False, False, False, True, True]
    assert modality_present(windows, 0.0).tolist() == [False, False, False, False, False]
    assert modality_present(windows, 1.0).tolist() == [False, True, True, True, True]


def test_pattern_codes_and_names():
    presence = [np.array([True, False, True, False]), np.array([True, True, False, False]),
                np.array([False, True, True, False])]
    patterns = pattern_from_presence(presence)
    assert patterns.tolist() == [0b011, 0b110, 0b101, 0]
    assert [pattern_name(p, MODALITIES) for p in patterns] == [
        "hs+sar", "sar+lidar", "hs+lidar", "none"]


# ------------------------------------------------------------------ training samples

def expected_windows(full, rows, cols, patch):
    """Windows cut from a whole-grid read padded symmetrically, target at the offset."""
    offset = window_offset(patch)
    padded = np.pad(full, ((0, 0), (patch, patch), (patch, patch)), mode="symmetric")
    return np.stack([padded[:, r + patch - offset:r + 2 * patch - offset,
                            c + patch - offset:c + 2 * patch - offset]
                     for r, c in zip(rows, cols)])


def expected_presence(missing, rows, cols, patch, fraction):
    """Independent presence rule from a (H, W) missing mask."""
    windows = expected_windows(missing[None].astype(np.float32), rows, cols, patch)[:, 0]
    offset = window_offset(patch)
    return (windows[:, offset, offset] == 0) & (windows.mean(axis=(1, 2)) <= fraction)


def pixel_set(rows, cols):
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    return LabelledPixels(rows=rows, cols=cols, class_index=np.zeros(rows.size, np.int64),
                          polygon=np.arange(rows.size, dtype=np.int64), classes=())


def test_extract_samples_equals_windows_of_a_whole_read(tmp_path, aligned, grid, pixels):
    patch = 7
    samples, dropped = extract_samples(aligned, pixels, patch, 0.5, tmp_path, "train")
    assert dropped == 0 and len(samples) == len(pixels)
    assert np.array_equal(samples.class_index, pixels.class_index)
    assert np.array_equal(samples.polygon, pixels.polygon)
    # Some labelled pixels lie within the halo of the grid edge: padding is exercised.
    offset = window_offset(patch)
    edge = (pixels.rows < offset) | (pixels.cols < offset) | \
        (pixels.rows >= grid.height - offset) | (pixels.cols >= grid.width - offset)
    assert edge.any()
    for name, raster in aligned:
        full = raster.read(0, 0, grid.width, grid.height)
        expected = expected_windows(full, pixels.rows, pixels.cols, patch)
        got = np.asarray(samples.windows[name])
        assert got.shape == (len(pixels), raster.bands, patch, patch)
        assert np.array_equal(got, expected, equal_nan=True), name


def test_extract_samples_tiles_give_the_same_windows(tmp_path, monkeypatch, aligned, pixels):
    whole, _ = extract_samples(aligned, pixels, 6, 0.5, tmp_path, "whole")
    monkeypatch.setattr(dataset_module, "TILE", 16)
    tiled, _ = extract_samples(aligned, pixels, 6, 0.5, tmp_path, "tiled")
    assert np.array_equal(whole.pattern, tiled.pattern)
    for name in MODALITIES:
        assert np.array_equal(whole.windows[name], tiled.windows[name], equal_nan=True)


def test_extract_samples_real_patterns(tmp_path, aligned, grid, hs_cloud):
    patch, fraction = 7, 0.5
    rng = np.random.default_rng(1)
    cloud = np.argwhere(hs_cloud)
    clear = np.argwhere(~hs_cloud)
    chosen = np.concatenate([cloud, clear[rng.choice(len(clear), 700, replace=False)]])
    pixels = pixel_set(chosen[:, 0], chosen[:, 1])
    samples, dropped = extract_samples(aligned, pixels, patch, fraction, tmp_path, "real")
    assert dropped == 0                                # LiDAR covers every pixel
    in_cloud = hs_cloud[pixels.rows, pixels.cols]
    has_hs = (samples.pattern & 1).astype(bool)
    assert not has_hs[in_cloud].any()
    assert has_hs[~in_cloud].any()
    # HS presence follows the rule exactly; SAR from its coverage; LiDAR always present.
    assert np.array_equal(has_hs, expected_presence(hs_cloud, pixels.rows, pixels.cols,
                                                    patch, fraction))
    sar_missing = np.isnan(dict(aligned)["sar"].read(0, 0, grid.width, grid.height)[0])
    has_sar = (samples.pattern & 2).astype(bool)
    assert np.array_equal(has_sar, expected_presence(sar_missing, pixels.rows, pixels.cols,
                                                     patch, fraction))
    assert has_sar.any() and not has_sar.all()
    assert (samples.pattern & 4).all()
    # Every pattern the scene promises shows up (cloud on the SAR edge).
    assert set(samples.pattern.tolist()) == {4, 5, 6, 7}


def test_extract_samples_drops_samples_without_any_modality(tmp_path, aligned, grid, hs_cloud):
    patch = 5
    two = [pair for pair in aligned if pair[0] != "lidar"]
    rows, cols = np.mgrid[0:grid.height:3, 0:grid.width:3]
    pixels = pixel_set(rows.ravel(), cols.ravel())
    samples, dropped = extract_samples(two, pixels, patch, 0.5, tmp_path, "two")
    sar_full = dict(aligned)["sar"].read(0, 0, grid.width, grid.height)
    has_hs = expected_presence(hs_cloud, pixels.rows, pixels.cols, patch, 0.5)
    has_sar = expected_presence(np.isnan(sar_full[0]), pixels.rows, pixels.cols, patch, 0.5)
    keep = has_hs | has_sar
    assert dropped == (~keep).sum() > 0
    assert len(samples) == keep.sum()
    assert np.array_equal(samples.polygon, pixels.polygon[keep])
    assert np.array_equal(samples.pattern, pattern_from_presence([has_hs, has_sar])[keep])
    assert set(samples.pattern.tolist()) == {1, 2, 3}
    expected = expected_windows(sar_full, pixels.rows[keep], pixels.cols[keep], patch)
    assert np.array_equal(samples.windows["sar"], expected, equal_nan=True)


# ------------------------------------------------------------------ normalisation

def test_normalisation_statistics_over_present_target_pixels(tmp_path, aligned, hs_cloud):
    patch = 5
    rng = np.random.default_rng(2)
    chosen = np.concatenate([np.argwhere(hs_cloud)[:200],
                             np.argwhere(~hs_cloud)[rng.choice((~hs_cloud).sum(), 400)]])
    pixels = pixel_set(chosen[:, 0], chosen[:, 1])
    samples, _ = extract_samples(aligned, pixels, patch, 0.5, tmp_path, "norm")
    statistics = normalisation_statistics(samples, MODALITIES)
    offset = window_offset(patch)
    for bit, name in enumerate(MODALITIES):
        present = ((samples.pattern >> bit) & 1).astype(bool)
        assert 0 < present.sum()
        values = np.asarray(samples.windows[name])[present, :, offset, offset].astype(np.float64)
        assert np.isfinite(values).all()
        np.testing.assert_allclose(statistics[name].mean, values.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(statistics[name].std, values.std(axis=0), rtol=1e-9)
    # HS statistics ignore the cloud samples (their target pixel is NaN).
    assert not ((samples.pattern & 1).astype(bool)).all()


def test_constant_band_gets_std_one_and_absent_modality_defaults():
    count, patch = 6, 3
    rng = np.random.default_rng(3)
    cube = rng.normal(5.0, 2.0, (count, 2, patch, patch)).astype(np.float32)
    cube[:, 1] = 42.0                                  # constant band
    other = np.full((count, 1, patch, patch), np.nan, dtype=np.float32)
    samples = SampleSet({"a": cube, "b": other}, class_index=np.zeros(count, np.int64),
                        pattern=np.ones(count, np.int64), polygon=np.arange(count))
    statistics = normalisation_statistics(samples, ("a", "b"))
    assert statistics["a"].std[1] == 1.0 and statistics["a"].mean[1] == pytest.approx(42.0)
    assert statistics["a"].std[0] == pytest.approx(cube[:, 0, 1, 1].std(dtype=np.float64))
    assert statistics["b"].mean.tolist() == [0.0] and statistics["b"].std.tolist() == [1.0]
    normalised = normalise(cube, statistics["a"])
    assert np.allclose(normalised[:, 1], 0.0)


def test_normalise_maps_missing_to_zero():
    windows = np.array([[[[1.0, np.nan], [5.0, 3.0]], [[np.nan, 10.0], [20.0, 30.0]]]],
                       dtype=np.float32)
    statistics = Normalisation(mean=np.array([3.0, 20.0]), std=np.array([2.0, 10.0]))
    result = normalise(windows, statistics)
    assert result.dtype == np.float32 and np.isfinite(result).all()
    expected = np.array([[[[-1.0, 0.0], [1.0, 0.0]], [[0.0, -1.0], [0.0, 1.0]]]])
    np.testing.assert_allclose(result, expected)
