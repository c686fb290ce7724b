"""The GPU diagnosis and the doctor's advice (issue 32), as pure functions of faked states:
no driver; a driver with CPU torch; a driver too old for torch's CUDA; CUDA usable; MPS.
The same states through the real engine and a faked ``nvidia-smi``: tests/engine/
test_doctor.py."""
import pytest

from mamol.core import doctor, system
from mamol.core.errors import MamolInputError
from mamol.core.system import NvidiaGpu, TorchGpuState

GPUS = (NvidiaGpu("NVIDIA RTX 4090", "550.54.14", 24564),)


def state(cuda_build=None, available=False, error="", mps=False):
    return TorchGpuState("2.13.0", cuda_build, available,
                         ("NVIDIA RTX 4090",) if available else (), error, mps, mps)


def test_no_gpu_or_a_used_gpu_is_no_problem():
    assert system.idle_gpu_problem(state(), None, None) is None
    assert system.idle_gpu_problem(state("12.8", available=True), GPUS, "12.4") is None


def test_a_driver_with_cpu_torch_says_install_the_cuda_build():
    problem = system.idle_gpu_problem(state(), GPUS, "12.4")
    assert problem.startswith("An NVIDIA GPU is present (NVIDIA RTX 4090 (driver 550.54.14))")
    assert "PyTorch 2.13.0 is a CPU build" in problem and "Build = CUDA" in problem


def test_a_driver_too_old_for_torchs_cuda_says_update_the_driver():
    problem = system.idle_gpu_problem(state("12.8"), GPUS, "11.4")
    assert "supports CUDA up to 11.4" in problem and "CUDA 12.8 build" in problem
    assert "Update the NVIDIA driver" in problem
    # CUDA's minor version compatibility: a 12.x runtime runs on a driver for 12.0 and up
    other = system.idle_gpu_problem(state("12.8", error="CUDA unknown error"), GPUS, "12.2")
    assert "Update the NVIDIA driver" not in other and "CUDA unknown error" in other
    # torch's own words when the driver's CUDA version is not known
    words = "The NVIDIA driver on your system is too old (found version 11040)."
    assert "Update the NVIDIA driver" in system.idle_gpu_problem(state("12.8", error=words),
                                                                 GPUS, None)


def test_hidden_devices_are_named(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problem = system.idle_gpu_problem(state("12.8"), GPUS, "12.8")
    assert "torch.cuda.is_available() is false" in problem
    assert "CUDA_VISIBLE_DEVICES is set to ''" in problem


def facts(torch_state, gpus, chosen, probe=None):
    record = {"gpu": doctor.gpu_facts(torch_state, gpus, "12.4"),
              "device": {"asked": "auto", "chosen": chosen, "precision": "float32"}}
    if probe is not None:
        record["probe"] = probe
    return record


def test_advice_for_each_gpu_state():
    assert doctor.advice(facts(state(), None, "cpu"))[0].startswith(
        "No GPU was found (no NVIDIA driver answered nvidia-smi)")
    cpu_torch = doctor.advice(facts(state(), GPUS, "cpu"))
    assert len(cpu_torch) == 1 and "Build = CUDA" in cpu_torch[0]
    assert doctor.advice(facts(state("12.8", available=True), GPUS, "cuda")) == [
        "Runs use the GPU (NVIDIA RTX 4090): nothing to do."]
    assert doctor.advice(facts(state(mps=True), None, "mps"))[0].startswith(
        "Runs use Apple's GPU (MPS): nothing to do.")


def test_advice_suggests_the_tile_kind_when_a_cpu_run_is_long():
    slow = {"arch": "ViT-B-16", "scene_side": 1000, "pixel_scene_seconds": 5 * 86400,
            "tile_scene_seconds": 5 * 3600}
    said = doctor.advice(facts(state(), None, "cpu", [slow]))
    assert said[-1] == (
        "On this device a 1,000 × 1,000 scene takes about 5 d with a per-pixel ViT-B-16 "
        "model but 5 h with the tile kind: train with Model kind 'Tile (about 100× faster)' "
        "in the Toolbox, --model-kind tile on the command line; or use a machine with an "
        "NVIDIA GPU.")
    quick = dict(slow, pixel_scene_seconds=600)
    assert len(doctor.advice(facts(state(), None, "cpu", [quick]))) == 1


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_check_gpu_use_warns_with_auto_and_stops_with_cuda(monkeypatch, device):
    monkeypatch.setattr(system, "torch_gpu_state", lambda: state())
    monkeypatch.setattr(system, "detect_nvidia", lambda: GPUS)
    monkeypatch.setattr(system, "driver_cuda_version", lambda: "12.4")
    said = []
    if device == "auto":
        system.check_gpu_use(device, said.append)
        assert len(said) == 1 and said[0].endswith(
            "This run goes on on the CPU, which is some 10 to 50 times slower.")
    else:
        with pytest.raises(MamolInputError, match="is a CPU build"):
            system.check_gpu_use(device, said.append)
    system.check_gpu_use("cpu", said.append)   # the CPU asked for: nothing to say
    monkeypatch.setattr(system, "torch_gpu_state", lambda: state(mps=True))
    system.check_gpu_use("auto", said.append)  # auto takes Apple's GPU: nothing to say
    assert len(said) == (1 if device == "auto" else 0)


def test_nvidia_smi_query_and_driver_cuda_version(tmp_path, monkeypatch):
    if system.os.name == "nt":
        pytest.skip("a shell script stands in for nvidia-smi")
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\n"
                      'case "$1" in --query-gpu=*) echo "NVIDIA H200, 570.86.15, 143771";; '
                      '*) echo "| Driver Version: 570.86.15     CUDA Version: 12.8     |";; '
                      "esac\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert system.detect_nvidia() == (NvidiaGpu("NVIDIA H200", "570.86.15", 143771),)
    assert system.driver_cuda_version() == "12.8"
