"""The model the way CUDA runs it, on the CPU: frozen tower and activations in bf16, gates,
trainable tensors and logits in fp32 (DESIGN §4, §5).

CI has no GPU, and CPU autocast hides dtype mixes that crash on CUDA (a bf16 ``index_add``
fed fp32 expert outputs shipped that way). The model has no autocast any more: its casts
are explicit, so ``precision="bf16"`` on the CPU takes exactly the CUDA path.
"""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import tiny_training_config
from osgeo import gdal

from mamol.core import backbone as bb
from mamol.core import mamol_model as mm
from mamol.core.devices import (missing_compiler, prepare_model, resolve_device,
                                resolve_precision)
from mamol.core.errors import MamolInputError
from mamol.core.inference import ClassifyConfig, classify
from mamol.training.trainer import train_model

MODALITIES = [mm.ModalitySpec("hs", 6), mm.ModalitySpec("sar", 2), mm.ModalitySpec("lidar", 1)]


def random_tiny_model(experts=mm.ExpertSet.FULL, **config):
    visual = bb.build_visual_tower(bb.BackboneSpec(arch=bb.TINY_ARCH, seed=11))
    torch.manual_seed(0)
    model = mm.MamolModel(MODALITIES, 5, visual, mm.AdapterConfig(experts=experts, layers=3,
                                                                  **config))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):  # as after some training: every expert acts
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def sample_batch(size=21, patch=6):
    generator = torch.Generator().manual_seed(1)
    windows = {m.name: torch.randn(size, m.bands, patch, patch, generator=generator)
               for m in MODALITIES}
    pattern = torch.arange(1, 8).repeat(size // 7)
    labels = torch.randint(0, 5, (size,), generator=generator)
    return windows, pattern, labels


def test_precision_names_resolve():
    cpu = resolve_device("cpu")
    assert resolve_precision("auto", cpu) is torch.float32
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("FP32", cpu) is torch.float32
    with pytest.raises(MamolInputError, match="Unknown precision 'half'"):
        resolve_precision("half", cpu)


@pytest.mark.parametrize("experts", list(mm.ExpertSet))
def test_bf16_training_step_has_fp32_gradients_in_every_trainable_tensor(experts):
    model = prepare_model(random_tiny_model(experts), resolve_device("cpu"), "bf16").train()
    assert all(p.dtype is torch.bfloat16 for p in model.encoder.visual.parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.dtype is torch.float32 for _, p in trainable)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-3)
    windows, pattern, labels = sample_batch()
    logits = model(windows, pattern)
    assert logits.dtype is torch.float32
    loss = F.cross_entropy(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    silent = [n for n, p in trainable
              if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not silent, f"{experts.value}: no gradient in {silent}"
    assert all(p.grad.dtype is torch.float32 for _, p in trainable)
    optimizer.step()
    state = optimizer.state[trainable[0][1]]
    assert state["exp_avg"].dtype is torch.float32


def test_bf16_gates_are_fp32_and_logits_follow_fp32():
    fp32_model = random_tiny_model().eval()
    bf16_model = prepare_model(copy.deepcopy(fp32_model), resolve_device("cpu"), "bf16")
    gates = []
    bf16_model.encoder.adapters[0].router.register_forward_hook(
        lambda module, args, output: gates.append(output))
    windows, pattern, _ = sample_batch()
    with torch.no_grad():
        reference = fp32_model(windows, pattern)
        approximate = bf16_model(windows, pattern)
    assert gates and all(g.dtype is torch.float32 for g in gates)
    assert approximate.dtype is torch.float32
    assert (approximate - reference).abs().max() < 0.05 * reference.abs().max()
    assert (approximate.argmax(1) == reference.argmax(1)).float().mean() >= 0.9


def test_classify_in_bf16_agrees_with_fp32_on_the_sample_scene(tiny_model, small_scene,
                                                               tmp_path):
    # Stride 2 (a quarter of the pixels) because bf16 matrix products are slow on CPUs.
    def run(precision):
        config = ClassifyConfig(
            model_path=str(tiny_model),
            rasters=tuple((n, str(getattr(small_scene, n))) for n in ("hs", "sar", "lidar")),
            output_classes=str(tmp_path / f"classes_{precision}.tif"),
            output_modalities=str(tmp_path / f"modalities_{precision}.tif"),
            device="cpu", precision=precision, block_size=64, stride=2)
        classify(config)
        return (gdal.Open(config.output_classes).ReadAsArray(),
                gdal.Open(config.output_modalities).ReadAsArray())

    classes_fp32, used_fp32 = run("fp32")
    classes_bf16, used_bf16 = run("bf16")
    assert np.array_equal(used_fp32, used_bf16)
    agreement = (classes_fp32 == classes_bf16).mean()
    assert agreement >= 0.99, agreement


def test_training_runs_with_a_bf16_tower(small_scene, tmp_path):
    config = tiny_training_config(small_scene, tmp_path / "bf16.mamol", precision="bf16")
    result = train_model(config)
    epochs = result.summary["epochs"]
    assert all(np.isfinite(e["train_loss"]) for e in epochs)
    assert result.summary["timing"]["precision"] == "bfloat16"
    assert result.summary["timing"]["steady_samples_per_second"] > 0
    assert epochs[-1]["validation_oa"] > 1 / 7  # better than chance after two epochs
    with pytest.raises(MamolInputError, match="Unknown precision"):
        train_model(dataclasses.replace(config, precision="fp8"))


@pytest.mark.gpu
def test_cuda_forward_never_waits_for_the_gpu():
    device = torch.device("cuda")
    model = prepare_model(random_tiny_model(), device, "bf16").eval()
    windows, pattern, _ = sample_batch()
    windows = {k: v.to(device) for k, v in windows.items()}
    with torch.no_grad():
        model(windows, pattern)  # warm-up: library handles and kernels are set up once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            logits = model(windows, pattern)  # pattern on the host, as callers pass it
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.skipif(missing_compiler(resolve_device("cpu")) is not None,
                    reason="torch.compile on the CPU needs g++ and Python's headers")
# Inside torch 2.13: importing inductor imports torch.utils.mkldnn, whose classes use the
# deprecated torch.jit.script_method ("not supported in Python 3.14+" there).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is :DeprecationWarning")
def test_compiled_encoder_gives_the_same_logits():
    """``torch.compile`` (default mode; inductor compiles C++ on the CPU) changes speed,
    not results."""
    model = random_tiny_model().eval()
    windows, pattern, _ = sample_batch()
    with torch.no_grad():
        eager = model(windows, pattern)
        prepare_model(model, resolve_device("cpu"), "fp32", "default")
        compiled = model(windows, pattern)
        again = model(windows, pattern)
    assert model.encoder._compiled is not None
    assert torch.allclose(eager, compiled, atol=1e-4, rtol=1e-4)
    assert torch.equal(compiled, again)
    with pytest.raises(MamolInputError, match="Unknown compile mode"):
        prepare_model(model, resolve_device("cpu"), "fp32", "fastest")


def test_compiling_without_a_compiler_says_what_to_install_or_turn_off(monkeypatch, tmp_path):
    """Without g++ torch.compile fails deep inside inductor at the first batch; the run
    must stop before that and name both remedies."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert missing_compiler(resolve_device("cpu")) == "a C++ compiler (g++)"
    model = random_tiny_model().eval()
    with pytest.raises(MamolInputError, match=r"needs a C\+\+ compiler \(g\+\+\).*apt install "
                       r"g\+\+ python3-dev.*'Compile the model first'.*--compile off"):
        prepare_model(model, resolve_device("cpu"), "fp32", "default")
    assert model.encoder._compiled is None
