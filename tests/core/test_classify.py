"""Classification core (``core.inference``) on the small sample scene with a tiny model."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr

from mamol.core import pace
from mamol.core import sample_scene as ss
from mamol.core.errors import Cancelled, MamolInputError
from mamol.core.inference import ClassifyConfig, MaskSource, classify, window_presence
from mamol.core.model_file import load_model, read_header, save_model
from mamol.core.raster_io import create_geotiff, srs_from_epsg
from mamol.core.windows import modality_present
from support import TickingClock

pytestmark = pytest.mark.platform   # raster writing: GeoTIFF, COG, colour tables, GDAL's cache

HS_BIT, SAR_BIT, LIDAR_BIT = 1, 2, 4


def scene_rasters(scene, names=("hs", "sar", "lidar")):
    return tuple((name, str(getattr(scene, name))) for name in names)


def run(model, scene, folder: Path, tag: str, **changes):
    config = ClassifyConfig(
        model_path=str(model), rasters=scene_rasters(scene),
        output_classes=str(folder / f"classes_{tag}.tif"),
        output_probabilities=str(folder / f"probabilities_{tag}.tif"),
        output_confidence=str(folder / f"confidence_{tag}.tif"),
        output_entropy=str(folder / f"entropy_{tag}.tif"),
        output_modalities=str(folder / f"modalities_{tag}.tif"), device="cpu")
    config = dataclasses.replace(config, **changes)
    return classify(config), config


def read(path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()


@pytest.fixture(scope="module")
def whole(tiny_model, small_scene, tmp_path_factory):
    folder = tmp_path_factory.mktemp("classified")
    result, config = run(tiny_model, small_scene, folder, "b256", block_size=256)
    return result, config, folder


def test_block_size_does_not_change_any_pixel(whole, tiny_model, small_scene):
    _, reference, folder = whole
    # 48 does not divide 128: the last blocks are partial, at the scene's right/bottom edges.
    _, other = run(tiny_model, small_scene, folder, "b48", block_size=48)
    classes = read(reference.output_classes)
    assert np.array_equal(classes, read(other.output_classes))
    assert np.array_equal(read(reference.output_modalities), read(other.output_modalities))
    np.testing.assert_allclose(read(reference.output_probabilities),
                               read(other.output_probabilities), atol=1e-6)
    # Edge rows and columns are classified too (mirrored windows), not left empty.
    for edge in (classes[0], classes[-1], classes[:, 0], classes[:, -1]):
        assert (edge != 255).mean() > 0.9


def test_outputs_carry_the_reference_grid_and_the_legend(whole, small_scene, tiny_model):
    result, config, _ = whole
    hs = gdal.Open(str(small_scene.hs))
    header = read_header(tiny_model)
    for path in (config.output_classes, config.output_probabilities, config.output_confidence,
                 config.output_entropy, config.output_modalities):
        dataset = gdal.Open(path)
        assert dataset.GetGeoTransform() == hs.GetGeoTransform()
        assert dataset.GetSpatialRef().IsSame(hs.GetSpatialRef())
        assert (dataset.RasterXSize, dataset.RasterYSize) == (128, 128)
        assert dataset.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    classes_dataset = gdal.Open(config.output_classes)  # must outlive its band
    band = classes_dataset.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    names = band.GetCategoryNames()
    for info in header.classes:
        assert names[info.value] == info.name
        assert band.GetMetadataItem(f"CLASS_{info.value}") == info.name
        entry = band.GetRasterColorTable().GetColorEntry(info.value)
        assert "#%02x%02x%02x" % entry[:3] == info.colour
    style = Path(config.output_classes).with_suffix(".qml").read_text()
    assert 'type="paletted"' in style
    for info in header.classes:
        assert f'value="{info.value}"' in style and f'label="{info.name}"' in style
    assert gdal.Open(config.output_probabilities).RasterCount == len(header.classes)
    assert result.outputs["style"] == Path(config.output_classes).with_suffix(".qml")


def test_gaps_are_classified_from_the_remaining_modalities(whole, small_scene):
    _, config, _ = whole
    classes = read(config.output_classes)
    used = read(config.output_modalities)
    layout = ss.generate_layout(ss.SampleSceneConfig(size=128, seed=3))
    cloud = layout.hs_cloud
    sar = gdal.Open(str(small_scene.sar))
    sar_first_col = int(round((sar.GetGeoTransform()[0] - ss.hs_geotransform()[0])))
    # In the HS cloud hole HS is never used, yet the pixels are classified.
    assert cloud.sum() > 100
    assert not (used[cloud] & HS_BIT).any()
    assert (classes[cloud] != 255).all()
    # West of the SAR coverage SAR is never used; pixels there are still classified.
    west = np.zeros_like(cloud)
    west[:, :sar_first_col] = True
    assert not (used[west] & SAR_BIT).any()
    assert (classes[west] != 255).all()
    # Where everything is valid, all three are used.
    assert ((used & 7) == 7).mean() > 0.4
    confidence = read(config.output_confidence)
    entropy = read(config.output_entropy)
    assert ((confidence > 0) & (confidence <= 1)).all()
    assert ((entropy >= 0) & (entropy <= 1 + 1e-6)).all()
    probabilities = read(config.output_probabilities)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_pixels_without_any_valid_modality_are_nodata(tiny_model, small_scene, tmp_path):
    result, config = run(tiny_model, small_scene, tmp_path, "hs", rasters=scene_rasters(
        small_scene, ("hs",)))
    classes = read(config.output_classes)
    used = read(config.output_modalities)
    layout = ss.generate_layout(ss.SampleSceneConfig(size=128, seed=3))
    hs = read(small_scene.hs)[0]
    assert np.array_equal(classes == 255, used == 0)
    assert (classes[hs == ss.HS_NODATA] == 255).all()   # cloud pixels: nothing left
    assert (classes[~layout.hs_cloud] != 255).mean() > 0.95
    assert set(np.unique(used)) <= {0, HS_BIT}
    assert result.pattern_counts[0] == int((used == 0).sum())


def test_window_presence_matches_the_training_rule():
    rng = np.random.default_rng(0)
    missing = rng.random((40, 50)) < 0.3
    for patch in (3, 4, 5):
        for threshold in (0.0, 0.3, 0.5, 1.0):
            block = window_presence(missing, patch, threshold)
            windows = np.lib.stride_tricks.sliding_window_view(
                np.where(missing, np.nan, 1.0), (patch, patch))
            flat = windows.reshape(-1, 1, patch, patch)
            expected = modality_present(flat, threshold).reshape(block.shape)
            assert np.array_equal(block, expected), (patch, threshold)


def test_stride_fills_each_cell_with_its_centre_pixel(whole, tiny_model, small_scene,
                                                      tmp_path):
    _, full, _ = whole
    _, strided = run(tiny_model, small_scene, tmp_path, "s4", stride=4, block_size=40)
    every = read(full.output_classes)
    preview = read(strided.output_classes)
    anchors = every[2::4, 2::4]
    cells = preview.reshape(32, 4, 32, 4)
    valid = cells != 255
    expected = np.broadcast_to(anchors[:, None, :, None], cells.shape)
    assert np.array_equal(cells[valid], expected[valid])
    assert valid.mean() > 0.9


def test_mask_and_extent(tiny_model, small_scene, tmp_path):
    x0, y0 = ss.hs_geotransform()[0], ss.hs_geotransform()[3]
    mask_path = tmp_path / "mask.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(mask_path))
    layer = source.CreateLayer("mask", srs_from_epsg(32632), ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(
        f"POLYGON(({x0 + 10} {y0 - 10},{x0 + 50} {y0 - 10},{x0 + 50} {y0 - 40},"
        f"{x0 + 10} {y0 - 40},{x0 + 10} {y0 - 10}))"))
    layer.CreateFeature(feature)
    source = None
    _, config = run(tiny_model, small_scene, tmp_path, "mask", mask=MaskSource(str(mask_path)),
                    extent=(x0 + 5, y0 - 60, x0 + 70, y0 - 5))
    dataset = gdal.Open(config.output_classes)
    assert (dataset.RasterXSize, dataset.RasterYSize) == (65, 55)
    assert dataset.GetGeoTransform()[0] == x0 + 5 and dataset.GetGeoTransform()[3] == y0 - 5
    classes = dataset.ReadAsArray()
    inside = np.zeros_like(classes, dtype=bool)
    inside[5:35, 5:45] = True
    assert (classes[~inside] == 255).all()
    assert (classes[inside] != 255).mean() > 0.95


def test_an_extent_crop_gives_the_whole_scene_pixels(whole, tiny_model, small_scene,
                                                     tmp_path):
    """Windows near the crop's edges read the real pixels beyond it, so the crop is exactly
    the corresponding part of the whole-scene result."""
    _, full, _ = whole
    x0, y0 = ss.hs_geotransform()[0], ss.hs_geotransform()[3]
    _, cropped = run(tiny_model, small_scene, tmp_path, "crop", block_size=32,
                     extent=(x0 + 5, y0 - 60, x0 + 70, y0 - 5))
    assert np.array_equal(read(cropped.output_classes), read(full.output_classes)[5:60, 5:70])
    assert np.array_equal(read(cropped.output_modalities),
                          read(full.output_modalities)[5:60, 5:70])


def test_more_than_254_class_values_give_a_uint16_raster(tiny_model, small_scene, tmp_path):
    model, header = load_model(tiny_model)
    classes = tuple(dataclasses.replace(c, value=c.value + 300) for c in header.classes)
    renumbered = save_model(tmp_path / "big.mamol", model,
                            dataclasses.replace(header, classes=classes))
    _, config = run(renumbered, small_scene, tmp_path, "u16")
    dataset = gdal.Open(config.output_classes)  # must outlive its band
    band = dataset.GetRasterBand(1)
    assert band.DataType == gdal.GDT_UInt16 and band.GetNoDataValue() == 65535
    values = set(np.unique(band.ReadAsArray()).tolist()) - {65535}
    assert values and values <= {c.value for c in classes}


# ---- bad input: a clear error and no output -------------------------------------------

def only_output(tmp_path: Path, **changes):
    return ClassifyConfig(model_path=changes.pop("model"), rasters=changes.pop("rasters"),
                          output_classes=str(tmp_path / "out" / "classes.tif"),
                          output_confidence=str(tmp_path / "out" / "confidence.tif"),
                          device="cpu", **changes)


def assert_no_output(tmp_path: Path):
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_wrong_band_count(tiny_model, small_scene, tmp_path):
    config = only_output(tmp_path, model=tiny_model,
                         rasters=(("hs", str(small_scene.sar)),))
    with pytest.raises(MamolInputError, match="has 2 band"):
        classify(config)
    assert_no_output(tmp_path)


def test_modality_not_in_the_model(tiny_model, small_scene, tmp_path):
    config = only_output(tmp_path, model=tiny_model, rasters=(("radar", str(small_scene.sar)),))
    with pytest.raises(MamolInputError, match="no modality 'radar'"):
        classify(config)
    assert_no_output(tmp_path)


def test_rasters_with_no_common_extent(tiny_model, small_scene, tmp_path):
    far = tmp_path / "far.tif"
    create_geotiff(far, 20, 20, 1, np.float32, (100000, 1, 0, 200000, 0, -1),
                   srs_from_epsg(32632)).FlushCache()
    config = only_output(tmp_path, model=tiny_model,
                         rasters=(("hs", str(small_scene.hs)), ("lidar", str(far))))
    with pytest.raises(MamolInputError, match="no area in common"):
        classify(config)
    assert_no_output(tmp_path)


def test_corrupted_model_file(tiny_model, small_scene, tmp_path):
    broken = tmp_path / "broken.mamol"
    data = bytearray(Path(tiny_model).read_bytes())
    data[-100] ^= 0xFF
    broken.write_bytes(bytes(data))
    config = only_output(tmp_path, model=broken, rasters=scene_rasters(small_scene))
    with pytest.raises(MamolInputError, match="checksum|corrupt|damaged"):
        classify(config)
    assert_no_output(tmp_path)


def test_unwritable_output(tiny_model, small_scene, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    config = only_output(tmp_path, model=tiny_model, rasters=scene_rasters(small_scene))
    with pytest.raises(MamolInputError, match="Cannot write"):
        classify(config)


def test_cancel_leaves_nothing(tiny_model, small_scene, tmp_path):
    seen = []
    config = dataclasses.replace(
        only_output(tmp_path, model=tiny_model, rasters=scene_rasters(small_scene)),
        block_size=32)
    with pytest.raises(Cancelled):
        classify(config, progress=seen.append, is_cancelled=lambda: len(seen) >= 3)
    assert_no_output(tmp_path)


def classify_on_a_slow_clock(model, scene, folder: Path, monkeypatch):
    """(log lines, warnings) of a classification in blocks of 48 px whose pace is read from
    a clock that moves 10 minutes at every reading."""
    monkeypatch.setattr(pace, "clock", TickingClock(600.0))
    lines, warnings = [], []
    config = dataclasses.replace(only_output(folder, model=model, rasters=scene_rasters(scene)),
                                 block_size=48)
    classify(config, log=lines.append, warn=warnings.append)
    return lines, warnings


ESTIMATE = re.compile(r"About (\d+ (s|min|h|d))( \d+ (min|h))? left at [\d.]+ pixels/s on the "
                      r"CPU\.")


def test_a_slow_per_pixel_run_says_the_time_left_and_what_is_faster(tiny_model, small_scene,
                                                                    tmp_path, monkeypatch):
    lines, warnings = classify_on_a_slow_clock(tiny_model, small_scene, tmp_path, monkeypatch)
    said = [n for n, line in enumerate(lines) if ESTIMATE.fullmatch(line)]
    assert said, lines
    # after the grid line, before the final one, and only a few times over 9 blocks
    first, last = (next(n for n, line in enumerate(lines) if line.startswith(start))
                   for start in ("Grid:", "Classified"))
    assert first < said[0] and said[-1] < last
    assert len(said) <= 3
    advice = [text for text in warnings if text.startswith("At this pace the run needs")]
    assert len(advice) == 1, warnings
    assert "per-pixel kind" in advice[0] and "--model-kind tile" in advice[0]
    assert "--device cuda" in advice[0]


def test_gdal_cache_is_capped_during_the_run_and_restored_after(tiny_model, small_scene,
                                                               tmp_path):
    before = gdal.GetCacheMax()
    during = []
    config = dataclasses.replace(
        only_output(tmp_path, model=tiny_model, rasters=scene_rasters(small_scene)),
        block_size=64, gdal_cache_mb=48)
    classify(config, progress=lambda percent: during.append(gdal.GetCacheMax()))
    assert during and set(during) == {48 * 2 ** 20}
    assert gdal.GetCacheMax() == before
    with pytest.raises(Cancelled):
        classify(dataclasses.replace(config, output_classes=str(tmp_path / "c2.tif"),
                                     output_confidence=None),
                 is_cancelled=lambda: True)
    assert gdal.GetCacheMax() == before


def test_gdal_cache_below_16_mib_is_refused(tiny_model, small_scene, tmp_path):
    config = only_output(tmp_path, model=tiny_model, rasters=scene_rasters(small_scene),
                         gdal_cache_mb=8)
    with pytest.raises(MamolInputError, match="at least 16 MiB"):
        classify(config)
    assert_no_output(tmp_path)


@pytest.mark.gpu
def test_cuda_bf16_agrees_with_the_cpu(whole, tiny_model, small_scene, tmp_path):
    _, on_cpu, _ = whole
    _, on_gpu = run(tiny_model, small_scene, tmp_path, "cuda", device="cuda")
    assert np.array_equal(read(on_cpu.output_modalities), read(on_gpu.output_modalities))
    agreement = (read(on_cpu.output_classes) == read(on_gpu.output_classes)).mean()
    assert agreement >= 0.99  # bf16 weights and activations may flip near-ties

