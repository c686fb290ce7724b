"""The tile model kind (issue 17): one encoder pass per tile and modality labels every pixel
of a P x P tile. Model, model file and tile classification, on a tiny seeded ViT."""
import copy

import pytest
import torch

from mamol.core import backbone as bb
from mamol.core import mamol_model as mm
from mamol.core import model_file as mf
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


def test_tile_forward_with_a_bf16_tower_on_the_cpu(tiny_visual):
    """The GPU's dtype path: bf16 tower activations, fp32 trainable tensors, fp32 features
    into the head and fp32 logits close to the fp32 model's; gradients reach the trainable
    tensors in fp32."""
    model = trained_like(make_model(tiny_visual, mm.ModelKind.TILE))
    windows = tiles(2)
    patterns = full(2)
    patterns[0, :2] = 0b001
    with torch.no_grad():
        reference = model.forward_tiles(windows, patterns)
    model.set_compute_dtype(torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16
    logits = model.forward_tiles(windows, patterns)
    assert logits.dtype == torch.float32
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()
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
