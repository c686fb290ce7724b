"""``mamol doctor``: what the engine's side of the machine is, whether a run would use the
GPU, how fast the device is, and what to do about it (issue 32).

:func:`engine_facts` gathers the facts in the model environment (Python, torch and its
build, NumPy, GDAL, open_clip, threads, the GPUs ``nvidia-smi`` lists and whether torch
can use them, MPS, the weights cache and the backbones cached in it, the device a run would
pick); :mod:`core.probe` adds a speed probe; :func:`advice` turns the facts into what to do,
and :func:`report_lines` into one copyable report. The Processing algorithm *Check
environment* adds the QGIS side (plugin, QGIS, which Python runs the engine and why) in
front of the same lines, and both write the facts as JSON for bug reports.
"""
import importlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .backbone import ARCH_CHOICES
from .devices import device_field
from .errors import MamolInputError
from .options import choosing, option
from .model_kinds import model_kind_field
from .pace import LONG_CPU_RUN, human_duration
from .probe import BUDGET_SECONDS
from .system import (CUDA_SETUP_HINT, TorchGpuState, detect_nvidia, driver_cuda_version,
                     idle_gpu_problem, torch_gpu_state)

#: Packages whose versions the report gives: (label, module to import).
PACKAGES = (("torch", "torch"), ("torchvision", "torchvision"), ("open_clip", "open_clip"),
            ("safetensors", "safetensors"), ("NumPy", "numpy"), ("GDAL", "osgeo.gdal"))

#: The longest speed probe one may ask for (seconds).
MAX_PROBE_SECONDS = 600.0


@dataclass(frozen=True)
class DoctorConfig:
    """The check's settings (the engine's options and the algorithm's parameters)."""

    device: str = device_field()
    probe_seconds: float = option(
        BUDGET_SECONDS, flag="--probe-seconds", key="PROBE_SECONDS",
        label="Speed probe (seconds; 0 = none)", minimum=0.0, maximum=MAX_PROBE_SECONDS,
        help="About how long to measure the device a run would use, with seeded untrained "
             "networks (the tiny backbone and ViT-B-16; nothing is downloaded). On a CPU "
             "ViT-B-16 needs about a second a window, so a probe may take a little longer.")

    def validate(self) -> None:
        if not 0 <= self.probe_seconds <= MAX_PROBE_SECONDS:
            raise MamolInputError(f"The speed probe takes 0 to {MAX_PROBE_SECONDS:g} "
                                  f"seconds; got {self.probe_seconds:g}.")


def package_version(module: str) -> str:
    """A module's version, or why it cannot be imported ("missing: …")."""
    try:
        loaded = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is a fact to report
        return f"missing ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return str(getattr(loaded, "__version__", "unknown"))


def cached_backbones(cache) -> List[str]:
    """"ViT-B-16 openai", … : the pretrained weights of the Toolbox's backbones that are in
    the weights cache ``cache`` (read from the folder; no network)."""
    from . import torch_compat
    from .weights import cached_file, hub_file
    open_clip = torch_compat.import_open_clip()
    found = []
    for arch, _ in ARCH_CHOICES:
        for tag in open_clip.list_pretrained_tags_by_model(arch):
            config = open_clip.get_pretrained_cfg(arch, tag) or {}
            if config.get("hf_hub") and cached_file(hub_file(str(config["hf_hub"])), cache):
                found.append(f"{arch} {tag}")
    return found


def gpu_facts(state: TorchGpuState, gpus, driver_cuda: Optional[str]) -> Dict[str, object]:
    """The GPU part of the facts, from torch's state and ``nvidia-smi``'s list."""
    return {
        "nvidia_smi": [gpu._asdict() for gpu in gpus or ()],
        "driver_cuda": driver_cuda,
        "torch_build": torch_build(state),
        "cuda_available": state.cuda_available,
        "cuda_devices": list(state.cuda_devices),
        "cuda_error": state.cuda_error,
        "mps_built": state.mps_built,
        "mps_available": state.mps_available,
        "idle_gpu": idle_gpu_problem(state, gpus, driver_cuda),
    }


def torch_build(state: TorchGpuState) -> str:
    """"CUDA 12.8", "CPU" or "CPU + MPS"."""
    if state.cuda_build:
        return f"CUDA {state.cuda_build}"
    return "CPU + MPS" if state.mps_built else "CPU"


def engine_facts(device: str = "auto") -> Dict[str, object]:
    """Everything the engine's side knows of itself, without the probe."""
    from . import torch_compat
    from .devices import dtype_name, resolve_device, resolve_precision
    from .weights import weights_cache_dir
    torch = torch_compat.import_torch()
    torch_compat.import_open_clip()   # torchvision through its work-around, if it needs one
    packages = {label: package_version(module) for label, module in PACKAGES}
    if torch_compat.patched_torchvision:
        packages["torchvision"] += " (its compiled operators did not load; MaMOL uses none)"
    state = torch_gpu_state()
    gpus = detect_nvidia()
    try:
        chosen, problem = resolve_device(device), None
    except MamolInputError as exc:   # e.g. cuda asked for where torch sees none: a fact
        chosen, problem = None, str(exc)
    cache = weights_cache_dir()
    return {
        "python": {"executable": sys.executable, "version": platform.python_version(),
                   "platform": platform.platform(), "machine": platform.machine()},
        "packages": packages,
        "threads": {"torch": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "gpu": gpu_facts(state, gpus, driver_cuda_version() if gpus else None),
        "device": {"asked": device, "chosen": None if chosen is None else str(chosen),
                   "precision": None if chosen is None else
                   dtype_name(resolve_precision("auto", chosen)), "problem": problem},
        "weights_cache": {"folder": str(cache), "cached": cached_backbones(cache)},
    }


def advice(facts: Mapping[str, object]) -> List[str]:
    """What to do, from the facts (with or without a probe): one line per point, the most
    important first; a line that says all is well when nothing needs doing."""
    gpu, device = facts["gpu"], facts["device"]
    said = []
    if gpu["idle_gpu"]:
        said.append(gpu["idle_gpu"])
    if device.get("problem"):
        said.append(device["problem"])
    chosen = str(device["chosen"])
    if chosen.startswith("cuda"):
        said.append(f"Runs use the GPU ({', '.join(gpu['cuda_devices'])}): nothing to do.")
    elif chosen == "mps":
        said.append("Runs use Apple's GPU (MPS): nothing to do. (No Apple hardware ran "
                    "MaMOL during its development; please report what you see.)")
    elif not gpu["nvidia_smi"]:
        said.append("No GPU was found (no NVIDIA driver answered nvidia-smi), so runs use "
                    "the CPU. If this machine has an NVIDIA GPU, install its driver, then "
                    f"{CUDA_SETUP_HINT}.")
    slow = [probe for probe in facts.get("probe") or ()
            if probe["pixel_scene_seconds"] > LONG_CPU_RUN]
    if slow and not chosen.startswith("cuda"):
        probe = slow[-1]
        said.append(
            f"On this device a {probe['scene_side']:,} × {probe['scene_side']:,} scene takes "
            f"about {human_duration(probe['pixel_scene_seconds'])} with a per-pixel "
            f"{probe['arch']} model but {human_duration(probe['tile_scene_seconds'])} with "
            f"the tile kind: train with {choosing(model_kind_field(), 'tile')}; or use a "
            "machine with an NVIDIA GPU.")
    return said


def _probe_lines(probes: Sequence[Mapping[str, object]]) -> List[str]:
    lines = []
    for probe in probes:
        side, samples = probe["scene_side"], probe["training_samples"]
        lines += [
            f"  {probe['arch']} (P = {probe['patch_size']}, {probe['precision']}): "
            f"{probe['windows_per_second']:.3g} windows/s classifying, "
            f"{probe['training_samples_per_second']:.3g} samples/s training "
            f"(probed in {probe['seconds']:.1f} s)",
            f"    a {side:,} × {side:,} three-modality scene takes about "
            f"{human_duration(probe['tile_scene_seconds'])} with the tile kind, "
            f"{human_duration(probe['pixel_scene_seconds'])} per pixel",
            f"    training {samples:,} samples takes about "
            f"{human_duration(probe['training_epoch_seconds'])} per epoch"]
    return lines


def report_lines(facts: Mapping[str, object]) -> List[str]:
    """The engine's part of the report, ending with the advice."""
    python, packages, gpu = facts["python"], facts["packages"], facts["gpu"]
    threads, device = facts["threads"], facts["device"]
    lines = [
        f"Engine Python: {python['executable']} (Python {python['version']}, "
        f"{python['platform']})",
        "Packages: " + ", ".join(f"{label} {version}" for label, version in packages.items()),
        f"PyTorch build: {gpu['torch_build']}; threads: {threads['torch']} of "
        f"{threads['cpus']} CPUs" + (f" (OMP_NUM_THREADS={threads['OMP_NUM_THREADS']})"
                                     if threads["OMP_NUM_THREADS"] else ""),
        "NVIDIA GPUs (nvidia-smi): " + (_gpu_list(gpu) if gpu["nvidia_smi"] else "none"),
        "CUDA in PyTorch: " + (", ".join(gpu["cuda_devices"]) if gpu["cuda_available"] else
                               "not available" + (f" ({gpu['cuda_error']})"
                                                  if gpu["cuda_error"] else "")),
        f"Apple MPS: {'available' if gpu['mps_available'] else 'not available'}",
        f"Device a run picks ({device['asked']}): " + (
            f"{device['chosen']}, frozen tower in {device['precision']}"
            if device["chosen"] else "none"),
        f"Weights cache: {facts['weights_cache']['folder']} (cached: "
        f"{', '.join(facts['weights_cache']['cached']) or 'none'})"]
    if facts.get("probe"):
        lines += ["Speed probe (seeded untrained networks; reading and writing rasters not "
                  "included):"] + _probe_lines(facts["probe"])
    lines += ["What to do:"] + [f"  - {line}" for line in advice(facts)]
    return lines


def _gpu_list(gpu: Mapping[str, object]) -> str:
    listed = []
    for record in gpu["nvidia_smi"]:
        memory = (f", {record['memory_mib'] / 1024:.0f} GiB"
                  if record.get("memory_mib") else "")
        listed.append(f"{record['name']} (driver {record['driver_version']}{memory})")
    cuda = f"; the driver supports CUDA up to {gpu['driver_cuda']}" if gpu["driver_cuda"] \
        else ""
    return ", ".join(listed) + cuda


def write_json(path: Path, facts: Mapping[str, object]) -> None:
    """Write the facts as JSON, whole or not at all (for a bug report)."""
    from .staging import staged_outputs
    with staged_outputs(path.parent, [path.name]) as staged:
        staged[path.name].write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
