"""The model the way CUDA and Apple's GPU run it, on the CPU: frozen tower and activations
in bf16 (CUDA's automatic precision) or fp16 (MPS's), gates, trainable tensors and logits in
fp32 (DESIGN §4, §5).

CI has no GPU, and CPU autocast hides dtype mixes that crash on CUDA (a bf16 ``index_add``
fed fp32 expert outputs shipped that way). The model has no autocast any more: its casts
are explicit, so ``precision="bf16"`` or ``"fp16"`` on the CPU takes exactly the GPU's path.
No Apple hardware ran these tests: the fp16 cases are the CPU's half of the MPS path.
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
from mamol.core.devices import (dtype_name, missing_compiler, prepare_model,
                                require_finite_scores, resolve_device, resolve_precision)
from mamol.core.errors import MamolInputError
from mamol.core.inference import ClassifyConfig, classify
from mamol.training.steps import LossScale
from mamol.training.trainer import train_model

MODALITIES = [mm.ModalitySpec("hs", 6), mm.ModalitySpec("sar", 2), mm.ModalitySpec("lidar", 1)]
#: The 16-bit tower precisions: CUDA's automatic one and Apple's GPU's (MPS).
HALF = [("bf16", torch.bfloat16), ("fp16", torch.float16)]


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
    assert resolve_precision(" FP16", cpu) is torch.float16
    assert resolve_precision("FP32", cpu) is torch.float32
    with pytest.raises(MamolInputError, match="Unknown precision 'half'"):
        resolve_precision("half", cpu)


@pytest.mark.parametrize("precision, dtype", HALF)
@pytest.mark.parametrize("experts", list(mm.ExpertSet))
def test_half_training_step_has_fp32_gradients_in_every_trainable_tensor(experts, precision,
                                                                         dtype):
    model = prepare_model(random_tiny_model(experts), resolve_device("cpu"), precision).train()
    assert all(p.dtype is dtype for p in model.encoder.visual.parameters())
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


# The largest logit error allowed, relative to the largest fp32 logit: bf16 keeps 8
# significant bits, fp16 11 (measured on this batch: 0.66 % and 0.097 %).
TOLERANCE = {"bf16": 0.05, "fp16": 0.01}


@pytest.mark.parametrize("precision, dtype", HALF)
def test_half_gates_are_fp32_and_logits_follow_fp32(precision, dtype):
    fp32_model = random_tiny_model().eval()
    half_model = prepare_model(copy.deepcopy(fp32_model), resolve_device("cpu"), precision)
    gates, activations = [], []
    half_model.encoder.adapters[0].router.register_forward_hook(
        lambda module, args, output: gates.append(output))
    half_model.encoder.adapters[0].register_forward_hook(
        lambda module, args, output: activations.append(output))
    windows, pattern, _ = sample_batch()
    with torch.no_grad():
        reference = fp32_model(windows, pattern)
        approximate = half_model(windows, pattern)
    assert activations and all(a.dtype is dtype for a in activations)
    assert gates and all(g.dtype is torch.float32 for g in gates)
    assert approximate.dtype is torch.float32
    error = (approximate - reference).abs().max() / reference.abs().max()
    assert error < TOLERANCE[precision], float(error)
    assert (approximate.argmax(1) == reference.argmax(1)).float().mean() >= 0.9


def sgd_update(model, share: float, scale=None):
    """The change one SGD step (learning rate 1: minus the gradient) makes to the trainable
    tensors for the loss times ``share`` (a micro-batch's share of a large batch's loss),
    through ``scale`` (a LossScale) or plainly; and whether the step was taken."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.SGD(parameters, lr=1.0)
    windows, pattern, labels = sample_batch()
    loss = F.cross_entropy(model(windows, pattern), labels) * share
    if scale is None:
        loss.backward()
        optimizer.step()
        stepped = True
    else:
        scale.backward(loss)
        stepped = scale.step(optimizer)
    return torch.cat([(b - p.detach()).flatten() for b, p in zip(before, parameters)]), stepped


def test_fp16_training_scales_the_loss_so_that_small_gradients_survive():
    """At a thousandth of the loss (ViT-B-16's gradients are that small: see LossScale) a
    plain fp16 backward flushes gradients to zero and is 36 % off the fp32 update (measured);
    the scaled one is 0.1 % off."""
    cpu = resolve_device("cpu")
    fp32_model = random_tiny_model().train()
    reference, _ = sgd_update(copy.deepcopy(fp32_model), 1e-3)

    def error(update):
        return float((update - reference).norm() / reference.norm())

    fp16_model = prepare_model(copy.deepcopy(fp32_model), cpu, "fp16").train()
    plain, _ = sgd_update(copy.deepcopy(fp16_model), 1e-3)
    scaled, stepped = sgd_update(fp16_model, 1e-3, LossScale(torch.float16, cpu))
    assert stepped and error(scaled) < 0.01, error(scaled)
    assert error(plain) > 0.1, error(plain)   # why the scale exists


def test_fp16_step_with_overflowing_gradients_is_skipped_and_the_scale_backs_off():
    cpu = resolve_device("cpu")
    model = prepare_model(random_tiny_model(), cpu, "fp16").train()
    scale = LossScale(torch.float16, cpu)
    first = scale.scaler.get_scale()
    update, stepped = sgd_update(model, 1e4, scale)   # 1e4 x 65536 overflows fp16
    assert not stepped and update.abs().max() == 0
    assert scale.scaler.get_scale() == first / 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_only_fp16_scales_the_loss(dtype):
    assert not LossScale(dtype, resolve_device("cpu")).scaler.is_enabled()


def test_an_overflowing_fp16_tower_stops_with_what_to_do():
    """fp16 reaches 65504: inputs far outside the training range overflow the tower,
    whose class scores then become NaN; they must not become a class silently."""
    cpu = resolve_device("cpu")
    model = prepare_model(random_tiny_model(), cpu, "fp16").eval()
    windows, pattern, _ = sample_batch()
    with torch.no_grad():
        scores = model({k: v * 1e5 for k, v in windows.items()}, pattern)
    assert not torch.isfinite(scores).all()
    with pytest.raises(MamolInputError, match=r"overflowed.*fp16, which holds numbers up "
                       r"to 65504 only.*--precision fp32"):
        require_finite_scores(bool(torch.isfinite(scores).all()), model.compute_dtype)
    with pytest.raises(MamolInputError, match="in bfloat16: the model file may be damaged"):
        require_finite_scores(False, torch.bfloat16)
    require_finite_scores(True, torch.float16)


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_classify_in_half_agrees_with_fp32_on_the_sample_scene(tiny_model, small_scene,
                                                               tmp_path, half):
    # Stride 2 (a quarter of the pixels) because 16-bit matrix products are slow on CPUs.
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
    classes_half, used_half = run(half)
    assert np.array_equal(used_fp32, used_half)
    agreement = (classes_fp32 == classes_half).mean()
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("precision, dtype", HALF)
def test_training_runs_with_a_half_tower(small_scene, tmp_path, precision, dtype):
    config = tiny_training_config(small_scene, tmp_path / f"{precision}.mamol",
                                  precision=precision)
    result = train_model(config)
    epochs = result.summary["epochs"]
    assert all(np.isfinite(e["train_loss"]) for e in epochs)
    assert result.summary["timing"]["precision"] == dtype_name(dtype)
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
