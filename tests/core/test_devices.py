"""Which device a run takes and what each device type changes (issue 32, item 3): 'auto'
is CUDA, else Apple's GPU (MPS), else the CPU; an explicit 'mps' without one says why; MPS
sizes batches from its memory, copies without pinning, synchronises through torch.mps, and
is refused under torchrun. No Apple hardware runs here: torch's availability checks and
torch.mps's memory functions are replaced, the rest is the real code."""
import pytest
import torch

from mamol.core import distributed
from mamol.core.devices import (DEVICE_CHOICES, GPU_BLOCK_SIZE, auto_block_size,
                                free_gpu_bytes, resolve_device, resolve_precision,
                                synchronize, to_device)
from mamol.core.errors import MamolInputError

MPS = torch.device("mps")   # a device descriptor only: nothing is allocated on it


def machine(monkeypatch, cuda: bool, mps: bool, mps_built: bool = True) -> None:
    """Make torch see (or not see) a CUDA GPU and Apple's GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps_built)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                 (False, True, "mps"), (False, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    machine(monkeypatch, cuda, mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(" Auto ") == torch.device(expected)


def test_explicit_mps_where_torch_has_it(monkeypatch):
    machine(monkeypatch, cuda=True, mps=True)
    assert resolve_device("MPS") == MPS


def test_explicit_mps_on_this_machine_says_why_and_what_to_choose():
    assert not torch.backends.mps.is_available()   # Linux: torch has no MPS here
    with pytest.raises(MamolInputError, match=r"Device 'mps' was asked for, but this PyTorch "
                       r"was built without MPS.*Choose 'cpu' or 'auto'"):
        resolve_device("mps")


def test_explicit_mps_on_a_mac_without_apple_silicon_says_what_it_needs(monkeypatch):
    machine(monkeypatch, cuda=False, mps=False, mps_built=True)
    with pytest.raises(MamolInputError, match=r"MPS needs a Mac with Apple silicon \(M1 or "
                       r"later\) and macOS 12\.3 or later.*Choose 'cpu' or 'auto'"):
        resolve_device("mps")


def test_mps_is_a_choice_after_the_existing_ones():
    values = [value for value, _ in DEVICE_CHOICES]
    assert values[:3] == ["auto", "cpu", "cuda"] and values[-1] == "mps"
    assert dict(DEVICE_CHOICES)["mps"] == "Apple GPU (mps)"
    with pytest.raises(MamolInputError, match="Use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("metal")


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), ("cuda", torch.bfloat16),
                                           ("mps", torch.float16)])
def test_automatic_precision_follows_the_device_type(device, dtype):
    assert resolve_precision("auto", torch.device(device)) is dtype
    assert resolve_precision("fp16", torch.device(device)) is torch.float16
    assert resolve_precision("fp32", torch.device(device)) is torch.float32


def test_mps_memory_is_metals_working_set_less_what_torch_holds(monkeypatch):
    gib = 2 ** 30
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 20 * gib)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * gib)
    assert free_gpu_bytes(MPS) == 17 * gib
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 30 * gib)
    assert free_gpu_bytes(MPS) == 0
    assert free_gpu_bytes(torch.device("cpu")) is None
    assert auto_block_size(MPS) == GPU_BLOCK_SIZE


class HostTensor:
    """Records how :func:`to_device` copies it (an MPS tensor cannot be made here)."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def pin_memory(self):
        self.calls.append("pin_memory")
        return self

    def to(self, device, non_blocking=False):
        self.calls.append(("to", device, non_blocking))
        return self


def test_copies_to_mps_are_plain_and_only_cuda_pins():
    assert to_device(HostTensor(), MPS).calls == [("to", MPS, False)]
    cuda = torch.device("cuda", 0)
    assert to_device(HostTensor(), cuda).calls == ["pin_memory", ("to", cuda, True)]


def test_synchronize_waits_for_mps_through_torch_mps(monkeypatch):
    waits = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waits.append("mps"))
    synchronize(MPS)
    synchronize(torch.device("cpu"))
    assert waits == ["mps"]


@pytest.mark.parametrize("name", ["mps", "auto"])
def test_torchrun_refuses_mps_and_auto_takes_the_cpu_there(monkeypatch, name):
    """torch.distributed has NCCL (CUDA) and gloo (CPU), no backend for MPS: an explicit
    'mps' stops before the process group starts; 'auto' on a Mac runs the ranks on CPUs."""
    machine(monkeypatch, cuda=False, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    started = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: started.append(backend))
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)
    if name == "mps":
        with pytest.raises(MamolInputError, match=r"torchrun cannot share a run over Apple's "
                           r"GPU \(MPS\).*Run one process without torchrun.*--device cpu"):
            distributed.start(name)
        assert started == []
    else:
        world = distributed.start(name)
        assert world.device == torch.device("cpu") and started == ["gloo"]
