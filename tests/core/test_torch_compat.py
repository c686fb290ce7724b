"""The single compat point for torch / torchvision / open_clip (core/torch_compat.py)."""
import pytest

from mamol.core import torch_compat


def test_open_clip_imports_and_builds_a_vit():
    open_clip = torch_compat.import_open_clip()
    torch = torch_compat.import_torch()
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    visual = model.visual
    assert visual.transformer.width == 768 and len(visual.transformer.resblocks) == 12
    with torch.no_grad():
        features = visual(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, 512)


def test_patch_only_when_needed():
    import torchvision
    torch_compat.import_torchvision()
    # Either torchvision loaded its own operators, or we declared the missing schemas.
    assert torchvision.extension._has_ops() != torch_compat.patched_torchvision


@pytest.mark.gpu
def test_vit_runs_on_the_gpu_in_bf16():
    open_clip = torch_compat.import_open_clip()
    torch = torch_compat.import_torch()
    visual = open_clip.create_model("ViT-B-16", pretrained=None).visual.cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        features = visual(torch.zeros(4, 3, 224, 224, device="cuda"))
    assert features.shape == (4, 512) and torch.isfinite(features.float()).all()
