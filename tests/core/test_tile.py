"""The tile model kind (issue 17): one encoder pass per tile and modality labels every pixel
of a P x P tile. Model, model file and tile classification, on a tiny seeded ViT."""
import copy

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from mamol.core import backbone as bb
from mamol.core import sample_scene as ss
from mamol.core import mamol_model as mm
from mamol.core import model_file as mf
from mamol.core.devices import missing_compiler, prepare_model, resolve_device
from mamol.core.errors import MamolInputError

MODALITIES = [mm.ModalitySpec("hs", 6), mm.ModalitySpec("sar", 2), mm.ModalitySpec("lidar", 1)]
CLASSES = 5
P = 6
SPEC = bb.BackboneSpec(arch=bb.TINY_ARCH, seed=11)


@pytest.fixture(scope="module")
def tiny_visual():
    return bb.build_visual_tower(SPEC)


def make_model(visual, kind=mm.ModelKind.PIXEL, **config):
    config.setdefault("layers", 3)
    torch.manual_seed(0)
    return mm.MamolModel(MODALITIES, CLASSES, copy.deepcopy(visual),
                         mm.AdapterConfig(kind=kind, **config))


def trained_like(model, scale=0.05):
    """Give every trainable tensor a seeded random offset (B's leave zero, so the adapters and
    the router matter), as training would."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def tiles(size=4, patch=P, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m.name: torch.randn(size, m.bands, patch, patch, generator=generator)
            for m in MODALITIES}


def full(size=4, patch=P, code=7):
    return torch.full((size, patch, patch), code, dtype=torch.int64)


# ------------------------------------------------------------------ the kind itself

def test_pixel_kind_is_exactly_todays_model(tiny_visual):
    """The default kind builds the model as before: same tensors, same logits, and the
    header's adapter record gains no key."""
    default = trained_like(make_model(tiny_visual))
    explicit = trained_like(make_model(tiny_visual, mm.ModelKind.PIXEL))
    assert default.kind is mm.ModelKind.PIXEL
    assert "kind" not in default.config.to_json()
    assert mm.AdapterConfig.from_json(default.config.to_json()) == default.config
    tile = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    # the tile kind has the same tensors (same head: one feature per modality and token)
    assert list(default.state_dict()) == list(tile.state_dict())
    assert all(default.state_dict()[k].shape == v.shape for k, v in tile.state_dict().items())
    windows = tiles(7)
    pattern = torch.arange(1, 8)
    with torch.no_grad():
        assert torch.equal(default(windows, pattern), explicit(windows, pattern))
    record = tile.config.to_json()
    assert record["kind"] == "tile"
    assert mm.AdapterConfig.from_json(record).kind is mm.ModelKind.TILE


def test_tile_kind_refuses_mce(tiny_visual):
    with pytest.raises(MamolInputError, match="pixel model kind only"):
        make_model(tiny_visual, mm.ModelKind.TILE, mce=True)


def test_pixel_model_refuses_forward_tiles(tiny_visual):
    with pytest.raises(MamolInputError, match="tile kind"):
        make_model(tiny_visual).forward_tiles(tiles(), full())


def test_tile_model_refuses_a_per_pixel_forward(tiny_visual):
    """A tile model's head was trained on token features, not the CLS feature: the
    per-window forward must not quietly give its logits."""
    model = make_model(tiny_visual, mm.ModelKind.TILE)
    with pytest.raises(MamolInputError, match="tile kind"):
        model(tiles(2), torch.tensor([7, 7]))


# ------------------------------------------------------------------ the tile forward

def test_tile_forward_gives_per_pixel_logits_from_per_token_features(tiny_visual):
    """(B, K, P, P) fp32 logits, each the head over the concatenated ln_post/proj features
    of that pixel's token in each modality's pass."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows = tiles(3)
    with torch.no_grad():
        logits = model.forward_tiles(windows, full(3))
        assert logits.shape == (3, CLASSES, P, P) and logits.dtype == torch.float32
        # by hand: the tower's own blocks, ln_post and proj on every token
        per_modality = []
        for index, spec in enumerate(MODALITIES):
            encoder = model.encoder
            tokens = model.token_embeddings[spec.name](windows[spec.name])
            context = mm.RoutingContext(model.pattern_embedding(torch.full((3,), 7)),
                                        model.modality_embedding.weight[index], index)
            x = encoder._blocks(tokens, encoder.position_embedding(P), context)
            per_modality.append(encoder.visual.ln_post(x[:, 1:]) @ encoder.visual.proj)
        by_hand = model.head(torch.cat(per_modality, dim=-1))     # (B, P², K)
    torch.testing.assert_close(logits, by_hand.transpose(1, 2).reshape(3, CLASSES, P, P))
    # pixels differ: a dense prediction, not one value broadcast over the tile
    assert logits[0, :, 0, 0].sub(logits[0, :, 3, 4]).abs().max() > 1e-4


def test_a_pixel_missing_a_modality_gets_zero_features_for_it(tiny_visual):
    """Where a pixel lacks a modality its token's features for it are zero and its logits
    are the ones from the other modalities alone; the other pixels' features for it are
    those of the pass (which still ran for the tile)."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows = tiles(2)
    patterns = full(2)
    patterns[0, 2, 3] = 0b101        # no sar at one pixel of tile 0
    patterns[1, :3] = 0b011          # no lidar in the top half of tile 1
    with torch.no_grad():
        features = model.tile_features(windows, patterns)       # (B, P², M, D)
        reference = model.tile_features(windows, full(2))
    grid = features.reshape(2, P, P, 3, -1)
    ref = reference.reshape(2, P, P, 3, -1)
    assert torch.count_nonzero(grid[0, 2, 3, 1]) == 0
    assert torch.count_nonzero(grid[1, :3, :, 2]) == 0
    # the router saw the union (all three modalities) in both tiles, so every other token's
    # features are those of the full-pattern pass
    keep = torch.ones(2, P, P, 3, dtype=torch.bool)
    keep[0, 2, 3, 1] = False
    keep[1, :3, :, 2] = False
    assert torch.equal(grid[keep], ref[keep])


def test_a_modality_missing_in_a_whole_tile_is_not_encoded(tiny_visual):
    """Its pass is skipped only for tiles where it is missing at every pixel; the router
    pattern of the others is the union, so without lidar anywhere it changes; tiles in a
    batch do not affect each other."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows = tiles(3)
    patterns = full(3)
    patterns[1] = 0b011              # lidar missing in all of tile 1
    passes = []
    original = model.encode_tiles

    def counting(index, tile_windows, tile_pattern):
        passes.append((index, tile_windows.shape[0], tile_pattern.tolist()))
        return original(index, tile_windows, tile_pattern)

    model.encode_tiles = counting
    with torch.no_grad():
        features = model.tile_features(windows, patterns)
        single = model.tile_features({k: v[1:2] for k, v in windows.items()}, patterns[1:2])
    assert passes[:3] == [(0, 3, [7, 3, 7]), (1, 3, [7, 3, 7]), (2, 2, [7, 7])]
    assert torch.count_nonzero(features[1, :, 2]) == 0
    torch.testing.assert_close(features[1], single[0])
    # tile 1's hs features come from a pass routed with pattern hs+sar, not the full one
    with torch.no_grad():
        as_full = model.tile_features({k: v[1:2] for k, v in windows.items()}, full(1))
    assert not torch.allclose(as_full[0, :, 0], features[1, :, 0])


def test_mixed_tile_router_pattern_is_the_union_of_its_pixels(tiny_visual):
    model = make_model(tiny_visual, mm.ModelKind.TILE)
    patterns = torch.zeros(3, P, P, dtype=torch.int64)
    patterns[0, 0, 0] = 0b001
    patterns[0, 5, 5] = 0b100
    patterns[1] = 0b010
    assert model.tile_pattern(patterns).tolist() == [0b101, 0b010, 0]


# The largest logit error allowed, relative to the largest fp32 logit (measured: bf16
# 1.5 %, fp16 0.11 %).
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_tile_forward_with_a_half_tower_on_the_cpu(tiny_visual, dtype, tolerance):
    """The GPU's dtype path (bf16: CUDA's, fp16: Apple's GPU's): 16-bit tower activations,
    fp32 trainable tensors, fp32 features into the head and fp32 logits close to the fp32
    model's; gradients reach the trainable tensors in fp32."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows = tiles(2)
    patterns = full(2)
    patterns[0, :2] = 0b001
    with torch.no_grad():
        reference = model.forward_tiles(windows, patterns)
    model.set_compute_dtype(dtype)
    assert model.compute_dtype == dtype
    activations = []
    model.encoder.adapters[0].register_forward_hook(
        lambda module, args, output: activations.append(output))
    logits = model.forward_tiles(windows, patterns)
    assert activations and all(a.dtype == dtype for a in activations)
    assert logits.dtype == torch.float32
    error = float((logits.detach() - reference).abs().max() / reference.abs().max())
    assert error < tolerance, error
    logits.sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32, name
    assert model.head.weight.grad is not None and model.head.weight.grad.dtype == torch.float32
    assert model.token_embeddings["hs"].spatial.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ the model file

def header_for(visual, kind):
    return mf.ModelHeader(
        modalities=mf.modality_infos([(m.name, m.bands) for m in MODALITIES]),
        classes=tuple(mf.ClassInfo(v, f"class {v}", "#808080") for v in range(1, CLASSES + 1)),
        patch_size=P, backbone=SPEC, backbone_fingerprint=bb.fingerprint(visual),
        adapter=mm.AdapterConfig(layers=2, kind=kind).to_json(),
        software=mf.software_versions())


def test_tile_model_file_round_trip(tiny_visual, tmp_path):
    header = header_for(tiny_visual, mm.ModelKind.TILE)
    assert header.adapter["kind"] == "tile"
    model = trained_like(mf.build_model(header, copy.deepcopy(tiny_visual)))
    assert model.kind is mm.ModelKind.TILE
    path = mf.save_model(tmp_path / "tile.mamol", model, header)
    loaded, loaded_header = mf.load_model(path)
    assert loaded.kind is mm.ModelKind.TILE
    assert loaded_header.adapter["kind"] == "tile"
    windows, patterns = tiles(2), full(2)
    patterns[1, 1:] = 0b110
    with torch.no_grad():
        assert torch.equal(model.forward_tiles(windows, patterns),
                           loaded.forward_tiles(windows, patterns))


def test_a_file_without_the_kind_loads_as_a_pixel_model(tiny_visual, tmp_path):
    header = header_for(tiny_visual, mm.ModelKind.PIXEL)
    assert "kind" not in header.adapter      # what every model file written so far holds
    model = trained_like(mf.build_model(header, copy.deepcopy(tiny_visual)))
    loaded, _ = mf.load_model(mf.save_model(tmp_path / "pixel.mamol", model, header))
    assert loaded.kind is mm.ModelKind.PIXEL


# ------------------------------------------------------------------ tile classification

def tile_copy(pixel_model_path, path):
    """The trained tiny pixel model's tensors in a model of the tile kind (same tensors), so
    tile classification runs with the training data's normalisation."""
    import dataclasses
    model, header = mf.load_model(pixel_model_path)
    header = dataclasses.replace(header, adapter=dict(header.adapter, kind="tile"))
    tile = mf.build_model(header, model.encoder.visual)
    tile.load_state_dict(model.state_dict())
    return mf.save_model(path, tile, header)


@pytest.fixture(scope="module")
def tile_model(tiny_model, tmp_path_factory):
    return tile_copy(tiny_model, tmp_path_factory.mktemp("tile-model") / "tile.mamol")


def classify_scene(model_path, scene, folder, tag, **changes):
    """Every output of the whole small scene (test_classify's run), tagged ``tag``."""
    from test_classify import run
    return run(model_path, scene, folder, tag, **changes)


def test_a_slow_tile_run_says_the_time_left_without_advice(tile_model, small_scene, tmp_path,
                                                           monkeypatch):
    """The estimate of the time left comes for a tile model too, but not the advice to use
    a tile model or a GPU, which is for per-pixel models (core.pace)."""
    from test_classify import ESTIMATE, classify_on_a_slow_clock
    lines, warnings = classify_on_a_slow_clock(tile_model, small_scene, tmp_path, monkeypatch)
    assert any(ESTIMATE.fullmatch(line) for line in lines), lines
    assert not any(text.startswith("At this pace") for text in warnings), warnings


def read(path):
    from osgeo import gdal
    return gdal.Open(str(path)).ReadAsArray()


def test_tile_lattice_cells_cover_the_grid_and_the_halo_is_enough_and_tight():
    """Every pixel lies in exactly one tile's central cell, and the tiles a block needs (those
    whose cell or, for blending, whose pixels meet it) stay within tile_halo of it for any
    block position and length; one pixel less would not do for some P."""
    from mamol.core.windows import tile_halo, tile_layout
    tight = False
    for patch, step in [(p, s) for p in range(1, 21) for s in (0,) + tuple(range(1, p + 1))]:
        stride, lead = tile_layout(patch, step)
        assert stride == (step or max(1, patch - 2 * max(1, patch // 7)))
        assert 1 <= stride <= patch and 0 <= lead and lead + stride <= patch
        # the cells [kS, (k + 1)S) tile the axis, each at the centre of its tile
        assert patch - stride - lead - lead in (0, 1)
        halo = tile_halo(patch)
        needed = 0
        for start in range(0, 3 * stride):
            for length in range(1, 3 * patch):
                stop = start + length
                ks = range(-(-(start + lead - patch + 1) // stride),
                           (stop - 1 + lead) // stride + 1)
                for k in ks:                # every tile with a pixel in the block
                    first, last = k * stride - lead, k * stride - lead + patch - 1
                    assert first <= stop - 1 and last >= start
                    needed = max(needed, start - first, last - (stop - 1))
        assert needed <= halo, (patch, step, needed, halo)
        tight |= needed == halo
    assert tight


@pytest.fixture(scope="module")
def tile_whole(tile_model, small_scene, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tile-classified")
    result, config = classify_scene(tile_model, small_scene, folder, "b256", block_size=256)
    return result, config, folder


def test_tile_classification_does_not_depend_on_block_size(tile_whole, tile_model,
                                                           small_scene):
    """Blocks of 16 (the smallest) and 45 (odd: 44 after rounding to the lattice step,
    partial at the scene's edges) give every pixel, probability and pattern the one-block
    run gives: the halo reaches every tile a block needs."""
    reference_result, reference, folder = tile_whole
    for size in (16, 45):
        result, other = classify_scene(tile_model, small_scene, folder, f"b{size}",
                                       block_size=size)
        assert np.array_equal(read(reference.output_classes), read(other.output_classes))
        assert np.array_equal(read(reference.output_modalities),
                              read(other.output_modalities))
        np.testing.assert_allclose(read(reference.output_probabilities),
                                   read(other.output_probabilities), atol=1e-6)
        # blocks are rounded to the lattice step, so no tile runs twice
        assert result.encoder_passes == reference_result.encoder_passes


def test_tile_outputs_are_complete_and_consistent(tile_whole, small_scene, tmp_path,
                                                  tiny_model):
    """Same outputs as the pixel kind: the same modalities-used raster (same per-pixel
    rule), every pixel with a modality classified, probabilities summing to 1, confidence
    their maximum; far fewer encoder passes than pixel passes."""
    result, config, _ = tile_whole
    _, pixel = classify_scene(tiny_model, small_scene, tmp_path, "pixel",
                              output_probabilities=None, output_confidence=None,
                              output_entropy=None)
    used = read(config.output_modalities)
    assert np.array_equal(used, read(pixel.output_modalities))
    classes = read(config.output_classes)
    assert np.array_equal(classes == 255, used == 0)
    probabilities = read(config.output_probabilities)
    valid = used > 0
    np.testing.assert_allclose(probabilities[:, valid].sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(read(config.output_confidence)[valid],
                               probabilities[:, valid].max(axis=0), atol=1e-6)
    entropy = read(config.output_entropy)[valid]
    assert ((entropy >= 0) & (entropy <= 1 + 1e-6)).all()
    # P = 5: tiles every 2 px, 64 x 64 cells on the 128 px scene, <= 3 passes per tile
    pixel_passes = sum(bin(code).count("1") * n for code, n in result.pattern_counts.items())
    assert result.encoder_passes <= 3 * 64 * 64
    assert result.encoder_passes * 3.5 < pixel_passes
    assert sum(result.class_counts.values()) == int(valid.sum())


def scene_by_hand(tile_model, small_scene, config):
    """(model, patch, per-pixel patterns, normalised aligned rasters) of the whole scene,
    for tiles cut by hand."""
    from mamol.core.grid import AlignedRaster, inspect_raster, reference_grid
    from mamol.core.modalities import modality_label
    model, header = mf.load_model(tile_model)
    used = read(config.output_modalities).astype(np.int64)
    stats = {m.name: (np.asarray(m.mean)[:, None, None], np.asarray(m.std)[:, None, None])
             for m in header.modalities}
    infos = {name: inspect_raster(str(getattr(small_scene, name)), modality_label(name))
             for name in ("hs", "sar", "lidar")}
    grid = reference_grid(list(infos.values()))
    rasters = {}
    for name, info in infos.items():
        with AlignedRaster(info, grid) as aligned:
            raw = aligned.read(0, 0, 128, 128)
        mean, std = stats[name]
        rasters[name] = np.nan_to_num((raw - mean) / std, nan=0.0).astype(np.float32)
    return model, header.patch_size, used, rasters


def tile_by_hand(model, patch, used, rasters, r0, c0):
    """Softmax probabilities (K, P, P) of the tile whose first pixel is (r0, c0)."""
    windows = {name: torch.from_numpy(a[None, :, r0:r0 + patch, c0:c0 + patch].copy())
               for name, a in rasters.items()}
    codes = torch.from_numpy(used[None, r0:r0 + patch, c0:c0 + patch].copy())
    with torch.no_grad():
        return torch.softmax(model.forward_tiles(windows, codes), dim=1)[0].numpy()


PIXELS_AWAY_FROM_EDGES = ((40, 41), (63, 64), (101, 7))


def test_each_pixel_takes_the_tile_where_it_is_most_central(tile_whole, tile_model,
                                                            small_scene):
    """A pixel's probabilities are those of forward_tiles on the lattice tile whose central
    cell holds it, cut from the aligned, normalised rasters by hand."""
    from mamol.core.windows import tile_layout
    _, config, _ = tile_whole
    model, patch, used, rasters = scene_by_hand(tile_model, small_scene, config)
    stride, lead = tile_layout(patch)
    probabilities = read(config.output_probabilities)
    for row, col in PIXELS_AWAY_FROM_EDGES:
        r0 = row - row % stride - lead
        c0 = col - col % stride - lead
        expected = tile_by_hand(model, patch, used, rasters, r0, c0)[:, row - r0, col - c0]
        np.testing.assert_allclose(probabilities[:, row, col], expected, atol=1e-5)
        # a neighbouring tile (shifted by one cell) predicts otherwise: the choice matters
        other = tile_by_hand(model, patch, used, rasters, r0 + stride, c0)[
            :, row - r0 - stride, col - c0]
        assert np.abs(other - expected).max() > 1e-6


@pytest.fixture(scope="module")
def weighted_whole(tile_model, small_scene, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tile-weighted")
    result, config = classify_scene(tile_model, small_scene, folder, "b256", block_size=256,
                                    tile_blend="weighted")
    return result, config, folder


def test_weighted_blending_averages_every_covering_tile(weighted_whole, tile_whole,
                                                        tile_model, small_scene):
    """Centre-weighted blending: a pixel's probabilities are the tent-weighted mean over
    every lattice tile covering it; not the central tile's alone; the same per block size;
    about the encoder passes of the central rule (same lattice)."""
    from mamol.core.inference import tile_weights
    from mamol.core.windows import tile_layout
    result, config, folder = weighted_whole
    model, patch, used, rasters = scene_by_hand(tile_model, small_scene, config)
    stride, lead = tile_layout(patch)
    weights = tile_weights(patch)
    probabilities = read(config.output_probabilities)
    central = read(tile_whole[1].output_probabilities)
    for row, col in PIXELS_AWAY_FROM_EDGES:
        total, weight = 0.0, 0.0
        for r0 in range(row - patch + 1, row + 1):
            for c0 in range(col - patch + 1, col + 1):
                if (r0 + lead) % stride or (c0 + lead) % stride:
                    continue     # not a lattice tile
                w = weights[row - r0, col - c0]
                total = total + w * tile_by_hand(model, patch, used, rasters, r0, c0)[
                    :, row - r0, col - c0]
                weight += w
        np.testing.assert_allclose(probabilities[:, row, col], total / weight, atol=1e-5)
        assert np.abs(probabilities[:, row, col] - central[:, row, col]).max() > 1e-6
    valid = used > 0
    np.testing.assert_allclose(probabilities[:, valid].sum(axis=0), 1.0, atol=1e-5)
    other, other_config = classify_scene(tile_model, small_scene, folder, "b45", block_size=45,
                                         tile_blend="weighted")
    np.testing.assert_allclose(read(other_config.output_probabilities), probabilities,
                               atol=1e-6)
    assert np.array_equal(read(other_config.output_classes), read(config.output_classes))
    # the same lattice; only tiles reaching past the scene's edges run in addition (and
    # with several blocks, tiles overlapping two blocks run for each)
    assert tile_whole[0].encoder_passes < result.encoder_passes \
        < 1.1 * tile_whole[0].encoder_passes


def test_a_tile_crop_gives_the_whole_scene_pixels(tile_whole, tile_model, small_scene,
                                                  tmp_path):
    """The lattice belongs to the full grid: a crop at an odd offset is exactly the
    corresponding part of the whole-scene result."""
    _, full_config, _ = tile_whole
    x0, y0 = ss.hs_geotransform()[0], ss.hs_geotransform()[3]
    _, cropped = classify_scene(tile_model, small_scene, tmp_path, "crop", block_size=32,
                                extent=(x0 + 5, y0 - 60, x0 + 70, y0 - 5))
    np.testing.assert_array_equal(read(cropped.output_classes),
                                  read(full_config.output_classes)[5:60, 5:70])
    np.testing.assert_allclose(read(cropped.output_probabilities),
                               read(full_config.output_probabilities)[:, 5:60, 5:70],
                               atol=1e-6)


def test_tile_model_refuses_a_stride(tile_model, small_scene, tmp_path):
    with pytest.raises(MamolInputError, match="Use stride 1"):
        classify_scene(tile_model, small_scene, tmp_path, "s", stride=2)
    assert not list(tmp_path.iterdir())


def test_tile_classification_cancels_and_reports_progress(tile_model, small_scene, tmp_path):
    from mamol.core.errors import Cancelled
    from mamol.core.inference import ClassifyConfig, classify
    seen = []
    config = ClassifyConfig(
        model_path=str(tile_model),
        rasters=(("hs", str(small_scene.hs)), ("sar", str(small_scene.sar))),
        output_classes=str(tmp_path / "c.tif"), device="cpu", block_size=32)
    with pytest.raises(Cancelled):
        classify(config, progress=seen.append, is_cancelled=lambda: len(seen) >= 3)
    assert seen == sorted(seen) and 0 < seen[-1] < 100
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ training (tile kind)

def sample_set(rows, cols, classes, patch=5, nan_at=None):
    from mamol.training.dataset import SampleSet
    count = len(rows)
    cube = np.ones((count, 2, patch, patch), np.float32)
    other = np.ones((count, 1, patch, patch), np.float32)
    if nan_at is not None:
        other[nan_at] = np.nan
    return SampleSet({"hs": cube, "sar": other}, class_index=np.asarray(classes, np.int64),
                     pattern=np.full(count, 3, np.int64), polygon=np.zeros(count, np.int64),
                     rows=np.asarray(rows), cols=np.asarray(cols))


def test_tile_labels_hold_exactly_the_sets_own_samples():
    from mamol.training.tiles import IGNORE_INDEX, label_tiles
    # P = 5: tile of (10, 10) spans rows/cols 8..12
    samples = sample_set([10, 10, 12, 30, 8], [10, 12, 7, 30, 12], [0, 1, 2, 3, 4])
    labels = label_tiles(samples, 5)
    assert labels.shape == (5, 5, 5)
    first = labels[0]
    assert first[2, 2] == 0              # its own pixel, at the centre
    assert first[2, 4] == 1              # (10, 12)
    assert first[0, 4] == 4              # (8, 12)
    assert (first == IGNORE_INDEX).sum() == 25 - 3   # (12, 7) lies outside, (30, 30) too
    assert (labels[3] != IGNORE_INDEX).sum() == 1    # an isolated sample labels only itself
    # a validation pixel next to a training one: training tiles never carry its label
    train = sample_set([10], [10], [0])
    assert (label_tiles(train, 5) != IGNORE_INDEX).sum() == 1


def test_tile_pixel_patterns_are_valid_modalities_within_the_tile_pattern():
    from mamol.training.tiles import pixel_presence, tile_pixel_patterns
    samples = sample_set([10, 20], [10, 20], [0, 1])
    samples.windows["sar"][0, :, 1, 3] = np.nan
    presence = pixel_presence(samples, ["hs", "sar"])
    assert presence.dtype == np.uint8 and presence.shape == (2, 5, 5)
    assert presence[0, 1, 3] == 0b01 and (presence[1] == 0b11).all()
    codes = tile_pixel_patterns(presence, np.array([0b11, 0b01]))
    assert codes[0, 1, 3] == 0b01 and codes[0, 0, 0] == 0b11
    assert (codes[1] == 0b01).all()      # the simulation dropped sar for the whole tile


def test_tile_loss_counts_labelled_tokens_with_a_modality_only():
    from mamol.training.tiles import IGNORE_INDEX, tile_loss
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, generator=generator, requires_grad=True)
    targets = torch.full((2, 4, 4), IGNORE_INDEX)
    targets[0, 1, 2], targets[1, 3, 3], targets[1, 0, 0] = 2, 0, 1
    codes = torch.full((2, 4, 4), 7)
    codes[1, 0, 0] = 0                       # labelled, but no modality there
    loss = tile_loss(logits, targets, codes, labelled=2)
    by_hand = (F.cross_entropy(logits[0, :, 1, 2][None], torch.tensor([2]))
               + F.cross_entropy(logits[1, :, 3, 3][None], torch.tensor([0]))) / 2
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert touched.sum() == 2 and touched[0, 1, 2] and touched[1, 3, 3]


@pytest.fixture(scope="module")
def trained_tile(small_scene, tmp_path_factory):
    from support import tiny_training_config

    from mamol.training.trainer import train_model
    folder = tmp_path_factory.mktemp("tile-trained")
    return train_model(tiny_training_config(small_scene, folder / "tile.mamol",
                                            model_kind="tile"))


def test_training_a_tile_model(trained_tile, small_scene, tmp_path):
    """The model file records the kind; validation ran on the tiles' centre pixels; the
    trained model classifies the scene through the tile path, better than chance."""
    header = mf.read_header(trained_tile.model_path)
    assert header.model_kind == "tile" and header.adapter["kind"] == "tile"
    assert header.training["model_kind"] == "tile"
    assert header.training["validation_oa"] is not None
    result, config = classify_scene(trained_tile.model_path, small_scene, tmp_path, "t")
    assert result.encoder_passes is not None and result.encoder_passes > 0
    classes = read(config.output_classes)
    assert (classes != 255).mean() > 0.9
    reference = read(small_scene.reference_labels)
    labelled = reference != ss.REFERENCE_NODATA
    accuracy = (classes[labelled] == reference[labelled]).mean()
    assert accuracy > 1.5 / len(header.classes), accuracy


def test_model_kind_from_the_command_line(small_scene, tmp_path):
    from mamol.engine import train as cli
    from mamol.engine.main import build_parser
    base = ["train", "--hs", str(small_scene.hs), "--polygons",
            str(small_scene.training_polygons), "--class-field", "class_id", "--output",
            str(tmp_path / "m.mamol")]
    parser = build_parser()
    assert cli.config_from_args(parser.parse_args(base)).model_kind == "pixel"
    config = cli.config_from_args(parser.parse_args(base + ["--model-kind", "tile"]))
    assert config.model_kind == "tile"
    config.validate()
    with pytest.raises(MamolInputError, match="pixel model kind only"):
        cli.config_from_args(parser.parse_args(base + ["--model-kind", "tile", "--mce"])) \
            .validate()


def test_evaluating_a_tile_model(trained_tile, small_scene, tmp_path):
    """mamol:evaluate takes a tile model without new parameters: each reference pixel is
    predicted at the centre of a tile centred on it (classification takes the lattice tile
    whose central cell holds it, at most S/2 off centre), so the two agree closely but need
    not agree exactly."""
    from mamol.core.assessment import assess
    from mamol.training.evaluation import EvaluationConfig, evaluate
    from mamol.training.labels import LabelRasterSource
    rasters = tuple((name, str(getattr(small_scene, name))) for name in ("hs", "sar", "lidar"))
    result, config = classify_scene(trained_tile.model_path, small_scene, tmp_path, "e")
    expected = assess(config.output_classes, small_scene.reference_labels,
                      config.output_modalities)
    evaluated = evaluate(EvaluationConfig(
        model_path=str(trained_tile.model_path), rasters=rasters,
        labels=LabelRasterSource(str(small_scene.reference_labels)), device="cpu"))
    assert evaluated.summary["evaluation"]["samples"] == expected["samples"]
    assert abs(evaluated.oa - expected["oa"]) < 0.05, (evaluated.oa, expected["oa"])


def test_a_larger_tile_step_runs_fewer_tiles_and_keeps_the_rules(tile_whole, tile_model,
                                                                 tiny_model, small_scene):
    """A tile step of P (no overlap): fewer encoder passes than the default step, results
    still independent of the block size, each pixel still from the tile whose central
    cell holds it; a step above P, or a step for a pixel model, is refused."""
    from mamol.core.errors import MamolInputError
    from mamol.core.model_file import read_header
    from mamol.core.windows import tile_layout
    default_result, _, folder = tile_whole
    patch = read_header(tile_model).patch_size
    runs = {size: classify_scene(tile_model, small_scene, folder, f"stepP-b{size}",
                                 block_size=size, tile_step=patch)
            for size in (256, 45)}
    (big, big_config), (_, small_config) = runs[256], runs[45]
    assert np.array_equal(read(big_config.output_classes), read(small_config.output_classes))
    np.testing.assert_allclose(read(big_config.output_probabilities),
                               read(small_config.output_probabilities), atol=1e-6)
    assert big.encoder_passes < default_result.encoder_passes
    model, patch, used, rasters = scene_by_hand(tile_model, small_scene, big_config)
    stride, lead = tile_layout(patch, patch)
    assert (stride, lead) == (patch, 0)
    probabilities = read(big_config.output_probabilities)
    for row, col in PIXELS_AWAY_FROM_EDGES:
        r0, c0 = row - row % stride - lead, col - col % stride - lead
        expected = tile_by_hand(model, patch, used, rasters, r0, c0)[:, row - r0, col - c0]
        np.testing.assert_allclose(probabilities[:, row, col], expected, atol=1e-5)
    with pytest.raises(MamolInputError, match="at most the tile size"):
        classify_scene(tile_model, small_scene, folder, "too-big", tile_step=patch + 1)
    with pytest.raises(MamolInputError, match="for models of the tile kind"):
        classify_scene(tiny_model, small_scene, folder, "pixel-step", tile_step=2)


@pytest.mark.slow
@pytest.mark.skipif(missing_compiler(resolve_device("cpu")) is not None,
                    reason="torch.compile on the CPU needs g++ and Python's headers")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is :DeprecationWarning")
def test_compiled_tile_encoder_gives_the_same_logits(tiny_visual):
    """``--compile`` compiles the per-token encoder the tile kind runs: same logits."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows, codes = tiles(3), full(3)
    codes[1, :2] = 1      # a mixed tile: per-pixel zeroing inside the compiled run's output
    with torch.no_grad():
        eager = model.forward_tiles(windows, codes)
        prepare_model(model, resolve_device("cpu"), "fp32", "default")
        compiled = model.forward_tiles(windows, codes)
    assert model.encoder._compiled_tokens is not None
    assert torch.allclose(eager, compiled, atol=1e-4, rtol=1e-4)
