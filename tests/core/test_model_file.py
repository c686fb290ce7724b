"""The model file (core/model_file.py) and the backbone loader (core/backbone.py)."""
import copy
import json
import pickle

import pytest
import torch

from mamol.core import backbone as bb
from mamol.core import mamol_model as mm
from mamol.core import model_file as mf
from mamol.core.errors import MamolInputError

pytestmark = pytest.mark.platform   # the model file: JSON header and safetensors on this platform's NumPy

SPEC = bb.BackboneSpec(arch=bb.TINY_ARCH, seed=21)
MODALITIES = (("hs", 6), ("sar", 2), ("lidar", 1))


@pytest.fixture(scope="module")
def visual():
    return bb.build_visual_tower(SPEC)


def header_for(visual, **changes):
    values = dict(
        modalities=mf.modality_infos(MODALITIES),
        classes=(mf.ClassInfo(1, "Water", "#2f6fd1"), mf.ClassInfo(2, "Trees", "#1f7a32"),
                 mf.ClassInfo(3, "Road", "#a0a0a0")),
        patch_size=6, backbone=SPEC, backbone_fingerprint=bb.fingerprint(visual),
        adapter=mm.AdapterConfig(layers=2).to_json(),
        training={"epochs": 0}, software=mf.software_versions())
    values.update(changes)
    return mf.ModelHeader(**values)


@pytest.fixture
def saved(tmp_path, visual):
    header = header_for(visual)
    model = mf.build_model(header, copy.deepcopy(visual))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    path = mf.save_model(tmp_path / "model.mamol", model, header)
    return path, model.eval(), header


def inputs(size=5):
    generator = torch.Generator().manual_seed(3)
    windows = {name: torch.randn(size, bands, 6, 6, generator=generator)
               for name, bands in MODALITIES}
    return windows, torch.tensor([7, 1, 2, 4, 6])[:size]


def test_save_load_gives_identical_logits(saved):
    path, model, header = saved
    loaded, loaded_header = mf.load_model(path)
    windows, pattern = inputs()
    with torch.no_grad():
        assert torch.equal(model(windows, pattern), loaded(windows, pattern))
    assert loaded_header == header


def test_only_trainable_tensors_are_stored(saved):
    from safetensors import safe_open
    path, model, _ = saved
    with safe_open(str(path), framework="pt") as reader:
        names = set(reader.keys())
    assert names == set(model.trainable_state_dict())
    assert not any(name.startswith("encoder.visual") for name in names)
    assert path.stat().st_size < 2_000_000


def test_header_is_self_describing(saved):
    path, _, _ = saved
    header = mf.read_header(path)
    assert header.modality_names == ["hs", "sar", "lidar"]
    assert header.modalities[0].mean == (0.0,) * 6
    assert header.classes[1].name == "Trees"
    assert header.backbone.arch == bb.TINY_ARCH and header.backbone.seed == 21
    assert header.adapter["layers"] == 2 and header.adapter["experts"] == "full"
    assert "torch" in header.software


def test_wrong_backbone_fingerprint(saved):
    path, _, _ = saved
    other = bb.BackboneSpec(arch=bb.TINY_ARCH, seed=22)
    with pytest.raises(MamolInputError, match="Backbone mismatch.*seed 21.*seed 22"):
        mf.load_model(path, backbone=other)


def test_wrong_backbone_arch(saved):
    path, _, _ = saved
    with pytest.raises(MamolInputError, match="trained on backbone mamol-tiny-vit"):
        mf.load_model(path, backbone=bb.BackboneSpec(arch=bb.SMALL_ARCH))


@pytest.mark.parametrize("given,fragment", [
    ({"hs": 5}, "hs raster has 5 band.*expects 6"),
    ({"lidar": 2}, "lidar raster has 2 band.*expects 1"),
    ({"rgb": 3}, "no modality 'rgb'; it was trained on hs, sar, lidar"),
    ({}, "No input raster given"),
])
def test_inputs_checked_against_the_model(saved, given, fragment):
    path, _, _ = saved
    with pytest.raises(MamolInputError, match=fragment):
        mf.check_inputs(mf.read_header(path), given)


def test_valid_inputs_pass(saved):
    path, _, _ = saved
    mf.check_inputs(mf.read_header(path), {"hs": 6, "lidar": 1})


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    broken = tmp_path / "truncated.mamol"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MamolInputError, match="not a readable MaMOL model file"):
        mf.read_header(broken)


def test_tampered_tensor_bytes(saved, tmp_path):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    tampered = tmp_path / "tampered.mamol"
    tampered.write_bytes(bytes(data))
    with pytest.raises(MamolInputError, match="fails its checksum"):
        mf.load_model(tampered)


def test_tampered_metadata(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    assert b"Trees" in data
    tampered = tmp_path / "renamed-class.mamol"
    tampered.write_bytes(data.replace(b"Trees", b"Treez", 1))
    with pytest.raises(MamolInputError, match="fails its checksum"):
        mf.read_header(tampered)


class _Payload:
    """Unpickling this would create a marker file: proves loading never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_renamed_to_model_extension_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    fake = tmp_path / "model.mamol"
    torch.save({"weights": torch.zeros(3), "payload": _Payload(marker)}, fake,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(MamolInputError, match="pickled PyTorch files are refused"):
        mf.load_model(fake)
    assert not marker.exists()


def test_plain_safetensors_is_not_a_model(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "other.mamol"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(MamolInputError, match="not a MaMOL model"):
        mf.read_header(path)


def test_newer_format_is_refused_with_advice(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    path, _, _ = saved
    with safe_open(str(path), framework="pt") as reader:
        tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        document = json.loads(reader.metadata()["mamol"])
    document["format_version"] = 99
    future = tmp_path / "future.mamol"
    save_file(tensors, str(future), metadata={"mamol": json.dumps(document)})
    with pytest.raises(MamolInputError, match="newer than this plugin.*Update the plugin"):
        mf.read_header(future)


def test_missing_file():
    with pytest.raises(MamolInputError, match="does not exist"):
        mf.read_header("/nonexistent/model.mamol")


# ------------------------------------------------------------------ backbone loader

def test_random_backbone_is_seeded():
    assert bb.fingerprint(bb.build_visual_tower(SPEC)) == \
        bb.fingerprint(bb.build_visual_tower(SPEC))
    other = bb.build_visual_tower(bb.BackboneSpec(arch=bb.TINY_ARCH, seed=22))
    assert bb.fingerprint(other) != bb.fingerprint(bb.build_visual_tower(SPEC))


def full_clip(seed):
    open_clip = bb.torch_compat.import_open_clip()
    bb._register_configs(open_clip)
    torch.manual_seed(seed)
    return open_clip.create_model(bb.TINY_ARCH, pretrained=None)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
def test_open_clip_checkpoints_load(tmp_path, suffix):
    clip = full_clip(seed=5)
    path = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    elif suffix == ".pt":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v
                                               for k, v in clip.state_dict().items()}}, path)
    else:
        torch.save(clip.state_dict(), path)
    spec = bb.BackboneSpec(arch=bb.TINY_ARCH, source=bb.WeightsSource.CHECKPOINT,
                           checkpoint_path=str(path))
    assert bb.fingerprint(bb.build_visual_tower(spec)) == bb.fingerprint(clip.visual)


# Making the TorchScript file needs torch.jit.trace/save, deprecated since torch 2.10 ("not
# supported in Python 3.14+" there), and tracing warns about the shape checks inside
# nn.MultiheadAttention: the test's own set-up.
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning",
                            "ignore:`torch.jit.save` is :DeprecationWarning",
                            "ignore::torch.jit.TracerWarning")
def test_torchscript_checkpoint_loads(tmp_path):
    clip = full_clip(seed=6).eval()

    class ImageTower(torch.nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, image):
            return self.visual(image)

    traced = torch.jit.trace(ImageTower(clip.visual), torch.zeros(1, 3, 224, 224),
                             check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    spec = bb.BackboneSpec(arch=bb.TINY_ARCH, source=bb.WeightsSource.CHECKPOINT,
                           checkpoint_path=str(path))
    assert bb.fingerprint(bb.build_visual_tower(spec)) == bb.fingerprint(clip.visual)


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    path = tmp_path / "tiny.bin"
    torch.save(full_clip(seed=1).state_dict(), path)
    spec = bb.BackboneSpec(arch=bb.SMALL_ARCH, source=bb.WeightsSource.CHECKPOINT,
                           checkpoint_path=str(path))
    with pytest.raises(MamolInputError, match="does not fit backbone mamol-small-vit"):
        bb.build_visual_tower(spec)


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a checkpoint")
    spec = bb.BackboneSpec(arch=bb.TINY_ARCH, source=bb.WeightsSource.CHECKPOINT,
                           checkpoint_path=str(path))
    with pytest.raises(MamolInputError, match="Cannot read backbone checkpoint"):
        bb.build_visual_tower(spec)


@pytest.mark.parametrize("arch,fragment", [("ViT-Nonexistent", "Unknown backbone"),
                                           ("RN50", "not a plain open_clip ViT")])
def test_unusable_arch(arch, fragment):
    with pytest.raises(MamolInputError, match=fragment):
        bb.build_visual_tower(bb.BackboneSpec(arch=arch))


def test_tiny_configs_are_listed():
    archs = bb.available_archs()
    assert bb.TINY_ARCH in archs and "ViT-B-16" in archs and "RN50" not in archs
