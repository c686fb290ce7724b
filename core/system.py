"""What the machine has outside Python, and whether PyTorch uses it: the NVIDIA GPUs that
``nvidia-smi`` lists, the highest CUDA version their driver supports, the state of torch's
CUDA and MPS backends, and a diagnosis, with what to do, when a GPU sits idle (issue 32).

The most common report against QGIS deep-learning plugins is "GPU detected but not used":
the CUDA build did not install and runs fell back to the CPU without a word. A run here
never does that silently: :func:`check_gpu_use` warns (``device`` auto) or stops before any
work (``device`` cuda) when a driver lists a GPU that torch cannot use.

The rule for a driver that is too old (NVIDIA's CUDA compatibility guide, "minor version
compatibility"): a CUDA 12.x runtime runs on any driver that supports CUDA 12.0 or later,
so only the major version of the driver's CUDA (``nvidia-smi``'s "CUDA Version") and of
torch's build (``torch.version.cuda``) are compared.
"""
import os
import re
import shutil
import subprocess
import warnings
from typing import Callable, NamedTuple, Optional, Tuple

from .errors import MamolInputError

#: ``nvidia-smi``'s query for the GPU list: one CSV line per GPU, memory in MiB.
NVIDIA_QUERY = ("--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader,nounits")
#: PyTorch's package index of the CUDA build the plugin installs.
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
#: What to run to install the CUDA build: in QGIS (the Toolbox's words), and also on the
#: command line.
CUDA_SETUP_TOOLBOX = ("run 'Install dependencies' (Processing Toolbox → MaMOL land cover → "
                      "Setup) with Build = CUDA")
CUDA_SETUP_HINT = (f"{CUDA_SETUP_TOOLBOX}; on the command line, install torch from "
                   f"PyTorch's CUDA index (pip install torch --index-url {CUDA_INDEX})")


def spawn_options() -> dict:
    """``subprocess`` keywords for every child: a process group of its own, so that a stop
    reaches its children too; on Windows no console window either."""
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)
                | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


class NvidiaGpu(NamedTuple):
    name: str
    driver_version: str
    memory_mib: Optional[int] = None


def _nvidia_smi(arguments: Tuple[str, ...], timeout: float) -> Optional[str]:
    """``nvidia-smi``'s standard output, or None when it is not on PATH, fails or hangs."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    try:
        done = subprocess.run([program, *arguments], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **spawn_options())
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def detect_nvidia(timeout: float = 15.0) -> Optional[Tuple[NvidiaGpu, ...]]:
    """The NVIDIA GPUs that ``nvidia-smi`` reports (name, driver version, memory), or None
    when there is no ``nvidia-smi`` on PATH, it fails, times out, or lists no GPU."""
    output = _nvidia_smi(NVIDIA_QUERY, timeout)
    gpus = []
    for line in (output or "").splitlines():
        fields = [field.strip() for field in line.rsplit(",", 2)]
        if len(fields) == 3 and not (fields[2].isdigit() or "N/A" in fields[2]):
            # no memory column (an older nvidia-smi): the name holds a comma
            fields = [field.strip() for field in line.rsplit(",", 1)] + [""]
        if len(fields) < 2 or not fields[0]:
            continue
        memory = fields[2] if len(fields) > 2 else ""
        gpus.append(NvidiaGpu(fields[0], fields[1], int(memory) if memory.isdigit() else None))
    return tuple(gpus) or None


def driver_cuda_version(timeout: float = 15.0) -> Optional[str]:
    """The highest CUDA version the NVIDIA driver supports ("12.8"), from the header of
    ``nvidia-smi``'s table; None when unknown."""
    found = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", _nvidia_smi((), timeout) or "")
    return found.group(1) if found else None


class TorchGpuState(NamedTuple):
    """What the installed PyTorch says of the GPUs (:func:`torch_gpu_state`)."""

    torch_version: str
    cuda_build: Optional[str]      # torch.version.cuda: "12.8", None for a CPU build
    cuda_available: bool
    cuda_devices: Tuple[str, ...]  # names of the GPUs torch can use
    cuda_error: str                # why CUDA is unavailable, as torch warned it ("" if none)
    mps_built: bool
    mps_available: bool


def torch_gpu_state() -> TorchGpuState:
    """Ask the installed PyTorch (imported here) about CUDA and MPS; torch's own warning
    when CUDA fails to start (e.g. "The NVIDIA driver on your system is too old") is kept
    as the reason."""
    from . import torch_compat
    torch = torch_compat.import_torch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
    error = " ".join(" ".join(str(item.message).split()) for item in caught)
    devices = tuple(torch.cuda.get_device_name(index)
                    for index in range(torch.cuda.device_count())) if available else ()
    mps = getattr(torch.backends, "mps", None)
    return TorchGpuState(
        torch_version=str(torch.__version__).split("+")[0], cuda_build=torch.version.cuda,
        cuda_available=available, cuda_devices=devices, cuda_error=error,
        mps_built=bool(mps is not None and mps.is_built()),
        mps_available=bool(mps is not None and mps.is_available()))


def _major(version: Optional[str]) -> Optional[int]:
    found = re.match(r"\s*(\d+)", version or "")
    return int(found.group(1)) if found else None


def describe_gpus(gpus) -> str:
    """"NVIDIA H200 (driver 570.86.15)", or several joined."""
    return ", ".join(f"{gpu.name} (driver {gpu.driver_version})" for gpu in gpus)


def idle_gpu_problem(state: TorchGpuState, gpus, driver_cuda: Optional[str]) -> Optional[str]:
    """What keeps PyTorch from the NVIDIA GPUs ``nvidia-smi`` listed, and what to do; None
    when there is no such GPU or torch uses it."""
    if not gpus or state.cuda_available:
        return None
    present = f"An NVIDIA GPU is present ({describe_gpus(gpus)})"
    if not state.cuda_build:
        return (f"{present}, but the installed PyTorch {state.torch_version} is a CPU build, "
                f"so runs cannot use the GPU. To use it, {CUDA_SETUP_HINT}.")
    torch_major, driver_major = _major(state.cuda_build), _major(driver_cuda)
    if (driver_major is not None and torch_major is not None and driver_major < torch_major) \
            or "too old" in state.cuda_error:
        supports = f"supports CUDA up to {driver_cuda}" if driver_cuda else "is too old"
        return (f"{present}, but its driver {supports}, and the installed PyTorch is a CUDA "
                f"{state.cuda_build} build, which needs a driver for CUDA {torch_major} or "
                f"later. Update the NVIDIA driver (nvidia.com/drivers), then run again.")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = (f" CUDA_VISIBLE_DEVICES is set to '{visible}', which may hide it."
              if visible is not None else "")
    reason = state.cuda_error or "torch.cuda.is_available() is false"
    return (f"{present}, but PyTorch's CUDA {state.cuda_build} build cannot use it "
            f"({reason}).{hidden} Check that the driver works (nvidia-smi), then run "
            "'Check environment' (Processing Toolbox → MaMOL land cover → Setup) for a "
            "report.")


def check_gpu_use(device: str, warn: Callable[[str], None]) -> None:
    """Before a run on ``device``: when an NVIDIA GPU is present but torch cannot use it,
    warn that the run goes on on the CPU (``auto``), or stop before any work (``cuda``,
    ``cuda:N``) with what to do. Costs nothing when torch sees a GPU; else one look for
    ``nvidia-smi``."""
    text = (device or "auto").strip().lower()
    if text != "auto" and not text.startswith("cuda"):
        return
    from . import torch_compat
    if torch_compat.import_torch().cuda.is_available():
        return   # (no device query here: it would open a CUDA context on every GPU)
    state = torch_gpu_state()
    if text == "auto" and state.mps_available:
        return
    gpus = detect_nvidia()
    if not gpus:
        return
    problem = idle_gpu_problem(state, gpus, driver_cuda_version() if state.cuda_build else None)
    if text == "auto":
        warn(f"{problem} This run goes on on the CPU, which is some 10 to 50 times slower.")
    else:
        raise MamolInputError(problem)
