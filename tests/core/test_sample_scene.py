"""Pure core tests of the sample-scene generator (no QGIS involved)."""
import json

import numpy as np
import pytest
from osgeo import gdal, ogr

from mamol.core import sample_scene as ss
from mamol.core.errors import Cancelled, MamolInputError
from mamol.core.raster_io import srs_from_epsg

pytestmark = pytest.mark.platform   # the scene is written with GDAL and OGR

CONFIG = ss.SampleSceneConfig(size=128, seed=3)


def read(path):
    dataset = gdal.Open(str(path))
    array = dataset.ReadAsArray()
    return dataset, array


def lidar_on_hs_grid(scene, size):
    """The LiDAR DSM warped onto the HS grid with GDAL (bilinear), as the test's own check."""
    x0, pixel, _, y0, _, _ = ss.hs_geotransform()
    warped = gdal.Warp("", str(scene.lidar), format="MEM", dstSRS=srs_from_epsg(ss.HS_EPSG),
                       outputBounds=(x0, y0 - size * pixel, x0 + size * pixel, y0),
                       width=size, height=size, resampleAlg="bilinear")
    return warped.ReadAsArray()


# ------------------------------------------------------------------ grids, CRSs, holes

def test_grids_and_crs(small_scene):
    hs, hs_array = read(small_scene.hs)
    sar, sar_array = read(small_scene.sar)
    lidar, lidar_array = read(small_scene.lidar)
    assert hs_array.shape == (48, 128, 128) and hs_array.dtype == np.uint16
    assert hs.GetSpatialRef().GetAuthorityCode(None) == str(ss.HS_EPSG)
    assert hs.GetGeoTransform()[1] == 1.0
    assert sar_array.shape[0] == 2 and sar_array.dtype == np.float32
    assert sar.GetGeoTransform()[1] == 2.0
    assert lidar.RasterCount == 1 and lidar.GetGeoTransform()[1] == 1.5
    assert lidar.GetSpatialRef().GetAuthorityCode(None) == str(ss.LIDAR_EPSG)
    assert hs.GetRasterBand(1).GetDescription() == "400.0 nm"
    assert hs.GetRasterBand(48).GetMetadataItem("wavelength") == "1000.0"


def test_sar_covers_only_the_east(small_scene):
    hs, _ = read(small_scene.hs)
    sar, _ = read(small_scene.sar)
    hs_x0 = hs.GetGeoTransform()[0]
    hs_x1 = hs_x0 + hs.RasterXSize * hs.GetGeoTransform()[1]
    sar_x0 = sar.GetGeoTransform()[0]
    sar_x1 = sar_x0 + sar.RasterXSize * sar.GetGeoTransform()[1]
    assert sar_x0 == pytest.approx(hs_x0 + 0.4 * 128, abs=1)
    assert sar_x1 <= hs_x1 and sar_x1 > hs_x1 - 2
    assert sar.GetGeoTransform()[3] == hs.GetGeoTransform()[3]


def test_hs_cloud_hole_is_where_promised(small_scene):
    layout = ss.generate_layout(CONFIG)
    _, hs = read(small_scene.hs)
    nodata = (hs == ss.HS_NODATA)
    # The hole is all-bands nodata, exactly on the cloud mask, and nowhere else.
    assert np.array_equal(nodata.all(axis=0), layout.hs_cloud)
    assert np.array_equal(nodata.any(axis=0), layout.hs_cloud)
    assert 0.01 < layout.hs_cloud.mean() < 0.15
    # It straddles the SAR edge: both "HS and SAR missing" and "only HS missing" exist.
    columns = np.nonzero(layout.hs_cloud)[1]
    assert (columns < layout.sar_first_column).any() and (columns >= layout.sar_first_column).any()


def test_lidar_covers_the_whole_hs_footprint(small_scene):
    dsm = lidar_on_hs_grid(small_scene, 128)
    assert (dsm != ss.LIDAR_NODATA).all()
    assert np.isfinite(dsm).all()
    _, lidar = read(small_scene.lidar)
    assert (lidar == ss.LIDAR_NODATA).any(), "the rotated LAEA grid has nodata corners"


# ------------------------------------------------------------------ labels

def training_features(path):
    source = ogr.Open(str(path))
    layer = source.GetLayerByName(ss.TRAINING_LAYER)
    features = [(f.GetField(ss.CLASS_FIELD), f.GetField(ss.CLASS_NAME_FIELD),
                 f.GetGeometryRef().ExportToWkt()) for f in layer]
    epsg = layer.GetSpatialRef().GetAuthorityCode(None)
    return features, epsg


def rasterise_training(scene, size):
    target = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
    target.SetGeoTransform(ss.hs_geotransform())
    target.SetSpatialRef(srs_from_epsg(ss.HS_EPSG))
    source = ogr.Open(str(scene.training_polygons))
    gdal.RasterizeLayer(target, [1], source.GetLayerByName(ss.TRAINING_LAYER),
                        options=[f"ATTRIBUTE={ss.CLASS_FIELD}"])
    return target.ReadAsArray()


def test_every_class_in_training_and_reference(small_scene):
    features, epsg = training_features(small_scene.training_polygons)
    assert epsg == str(ss.HS_EPSG)
    names = {value: name for value, (name, _) in ss.CLASS_STYLE.items()}
    for value, name, _ in features:
        assert names[value] == name
    counts = {lc: sum(1 for v, _, _ in features if v == lc) for lc in ss.LandCover}
    assert all(count >= 4 for count in counts.values()), counts
    _, reference = read(small_scene.reference_labels)
    for lc in ss.LandCover:
        assert (reference == lc).sum() >= 100, lc


def test_polygons_are_pure_and_disjoint_from_reference(small_scene):
    layout = ss.generate_layout(CONFIG)
    burned = rasterise_training(small_scene, 128)
    _, reference = read(small_scene.reference_labels)
    inside = burned > 0
    assert inside.sum() > 500
    assert np.array_equal(burned[inside], layout.classes[inside]), "a polygon mixes classes"
    assert (reference[inside] == ss.REFERENCE_NODATA).all(), "training and reference overlap"
    labelled = reference != ss.REFERENCE_NODATA
    assert np.array_equal(reference[labelled], layout.classes[labelled])


def test_reference_raster_carries_names_and_colours(small_scene):
    dataset, _ = read(small_scene.reference_labels)
    band = dataset.GetRasterBand(1)
    assert band.GetNoDataValue() == 0
    assert band.GetCategoryNames()[ss.LandCover.BUILDING] == "Building"
    assert band.GetRasterColorTable().GetColorEntry(ss.LandCover.WATER)[:3] == (0x2f, 0x6f, 0xd1)


def test_manifest_describes_the_scene(small_scene):
    manifest = json.loads(small_scene.manifest.read_text())
    assert manifest["config"] == {"size": 128, "seed": 3}
    assert [c["name"] for c in manifest["classes"]] == [n for n, _ in ss.CLASS_STYLE.values()]
    assert all(c["training_pixels"] > 0 and c["reference_pixels"] > 0
               for c in manifest["classes"])
    assert manifest["modalities"]["hs"]["bands"] == 48


# ------------------------------------------------------------------ determinism

def scene_arrays(scene):
    arrays = [read(path)[1] for path in (scene.hs, scene.sar, scene.lidar,
                                         scene.reference_labels)]
    return arrays, training_features(scene.training_polygons)[0]


def test_same_seed_same_scene(small_scene, tmp_path):
    again = ss.write_sample_scene(CONFIG, tmp_path / "again")
    first_arrays, first_features = scene_arrays(small_scene)
    second_arrays, second_features = scene_arrays(again)
    for first, second in zip(first_arrays, second_arrays):
        assert np.array_equal(first, second)
    assert first_features == second_features


def test_other_seed_other_scene():
    first = ss.generate_layout(CONFIG)
    second = ss.generate_layout(ss.SampleSceneConfig(size=128, seed=4))
    assert (first.classes != second.classes).mean() > 0.2


@pytest.mark.parametrize("seed", [0, 1, 2, 11, 12345])
@pytest.mark.parametrize("size", [128, 200, 320])
def test_all_classes_for_any_seed_and_size(size, seed):
    layout = ss.generate_layout(ss.SampleSceneConfig(size=size, seed=seed))
    rectangles = ss.select_training_rectangles(layout.classes, seed)
    labels = ss.reference_labels(layout.classes, rectangles)
    for lc in ss.LandCover:
        assert sum(r.land_cover == lc for r in rectangles) >= 4, (lc, size, seed)
        assert (labels == lc).sum() >= 50, (lc, size, seed)


# ------------------------------------------------------------------ separability claims

def fisher(a, b):
    """Separation of two samples of one feature: |mean difference| / pooled std."""
    return abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2 + 1e-12)


@pytest.fixture(scope="module")
def features(small_scene):
    """Per-pixel features of each modality on the HS grid, with the true class map."""
    layout = ss.generate_layout(CONFIG)
    _, hs = read(small_scene.hs)
    _, sar = read(small_scene.sar)
    dsm = lidar_on_hs_grid(small_scene, 128)
    classes = layout.classes
    # SAR: dB on the 2 m grid; label each SAR pixel by the class of its pure 2 x 2 block.
    sub = classes[:, layout.sar_first_column:][:sar.shape[1] * 2, :sar.shape[2] * 2]
    blocks = sub.reshape(sar.shape[1], 2, sar.shape[2], 2).transpose(0, 2, 1, 3).reshape(
        sar.shape[1], sar.shape[2], 4)
    pure = (blocks == blocks[..., :1]).all(-1)
    return {"hs": (hs.reshape(48, -1).T.astype(float), classes.ravel(),
                   ~layout.hs_cloud.ravel()),
            "sar": (10 * np.log10(sar.reshape(2, -1).T), blocks[..., 0].ravel(), pure.ravel()),
            "lidar": (dsm.reshape(-1, 1), classes.ravel(), np.ones(classes.size, bool))}


def best_separation(features, modality, class_a, class_b):
    values, labels, valid = features[modality]
    a = values[valid & (labels == class_a)]
    b = values[valid & (labels == class_b)]
    assert len(a) > 20 and len(b) > 20
    return max(fisher(a[:, i], b[:, i]) for i in range(values.shape[1]))


L = ss.LandCover
# (pair, modality that cannot separate it, modality that can)
CONFUSIONS = [
    ((L.ROAD, L.BUILDING), "hs", "lidar"),
    ((L.WATER, L.SHADOW), "hs", "sar"),
    ((L.GRASS, L.TREES), "hs", "lidar"),
    ((L.GRASS, L.TREES), "hs", "sar"),
    ((L.GRASS, L.SHADOW), "sar", "hs"),
    ((L.GRASS, L.BARE_SOIL), "lidar", "hs"),
    ((L.ROAD, L.BARE_SOIL), "lidar", "hs"),
]


@pytest.mark.parametrize("pair,blind,seeing", CONFUSIONS)
def test_no_single_modality_separates_all_classes(features, pair, blind, seeing):
    assert best_separation(features, blind, *pair) < 0.5
    assert best_separation(features, seeing, *pair) > 2.0


def test_every_modality_is_blind_to_some_pair():
    blind = {modality for _, modality, _ in CONFUSIONS}
    assert blind == {"hs", "sar", "lidar"}


# ------------------------------------------------------------------ bad input, cancel

@pytest.mark.parametrize("size,seed,fragment", [
    (0, 1, "too small"), (-5, 1, "too small"), (100000, 1, "too large"),
    (1.5, 1, "not a whole number"), (128, -1, "out of range"), (128, 2**31, "out of range"),
    (128, "abc", "not a whole number"), (True, 1, "not a whole number"),
])
def test_bad_config_says_what_to_change(tmp_path, size, seed, fragment):
    with pytest.raises(MamolInputError, match=fragment) as info:
        ss.write_sample_scene(ss.SampleSceneConfig(size=size, seed=seed), tmp_path / "out")
    assert "between" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(MamolInputError, match="Cannot write to the output folder"):
        ss.write_sample_scene(CONFIG, blocker / "scene")


def test_cancel_leaves_existing_outputs_untouched(tmp_path):
    (tmp_path / ss.HS_FILE).write_text("an older file")
    calls = []

    def cancel_midway():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        ss.write_sample_scene(CONFIG, tmp_path, is_cancelled=cancel_midway)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ss.HS_FILE]
    assert (tmp_path / ss.HS_FILE).read_text() == "an older file"


def test_progress_is_monotonic_and_complete(tmp_path):
    seen = []
    ss.write_sample_scene(CONFIG, tmp_path, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) > 5


@pytest.mark.slow
def test_large_scene_memory_stays_bounded(tmp_path):
    """A 1024^2 scene (96 MB of HS) is written strip by strip: peak RSS grows far less than
    the HS array would need if it were built in memory at once as float32 (200 MB)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scene = ss.write_sample_scene(ss.SampleSceneConfig(size=1024, seed=1), tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert gdal.Open(str(scene.hs)).RasterXSize == 1024
    assert grown_mb < 150, grown_mb


def test_one_palette_colours_the_scene_and_unstyled_labels():
    """The sample scene's class colours are the first of the one palette that colours the
    classes of labels without colours of their own (so a model trained on the scene's
    polygons colours its classes as the reference labels)."""
    from mamol.core.class_style import PALETTE, palette_colour
    assert [colour for _, colour in ss.CLASS_STYLE.values()] == list(PALETTE[:7])
    assert [int(value) for value in ss.CLASS_STYLE] == list(range(1, 8))
    assert palette_colour(len(PALETTE)) == PALETTE[0]
    assert len(set(PALETTE)) == len(PALETTE)
