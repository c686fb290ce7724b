"""Where and how a run computes: the torch device (auto | cpu | cuda | cuda:N | mps), the
precision of the frozen tower (auto | fp32 | bf16 | fp16), optional ``torch.compile``, and
batch and block sizes chosen from free GPU memory.

There is no autocast anywhere: the model's dtypes are explicit (see
:mod:`core.mamol_model`), so the CPU, CUDA and MPS run the same code with the same casts,
and a CPU test with ``precision="bf16"`` (CUDA's) or ``"fp16"`` (MPS's) takes the path that
GPU takes.
"""
import enum
import logging
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Optional

from . import torch_compat
from .errors import MamolInputError
from .options import choices, option

LOG = logging.getLogger(__name__)

#: Automatic sizes where no GPU memory guides them: pixels per side of a classification
#: block (larger on a GPU, so that each block holds many batches) and samples per
#: inference batch on the CPU.
CPU_BLOCK_SIZE = 256
GPU_BLOCK_SIZE = 512
CPU_INFERENCE_BATCH = 512


class CompileMode(str, enum.Enum):
    """``torch.compile`` of the encoder: off, inductor's default, or max-autotune (longer
    compile, faster kernels)."""

    OFF = "off"
    DEFAULT = "default"
    MAX_AUTOTUNE = "max-autotune"


class Precision(str, enum.Enum):
    """dtype of the frozen tower and its activations. ``auto`` = bf16 on CUDA, fp16 on
    Apple's GPU (MPS), fp32 on the CPU (:data:`AUTO_PRECISION`). Trainable tensors, the
    optimiser state, the router's gates and the logits are fp32 in every case.

    Why fp16 on MPS: Apple's GPUs compute in fp16 natively, while PyTorch's MPS backend has
    bf16 only from macOS 14 on (pytorch/pytorch#119641), reportedly emulated on M1 and M2
    (huggingface/transformers#40458).
    fp16 keeps 10 mantissa bits (bf16 7) but reaches only 65504 and its smallest normal
    number is 6.1e-5, so training with an fp16 tower scales the loss
    (:mod:`training.steps`) and non-finite class scores stop a run with a clear error.
    FP16 comes last: the Toolbox stores a choice by its position."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


#: What ``auto`` means on each device type; any other device type computes in fp32.
AUTO_PRECISION = {"cuda": Precision.BF16, "mps": Precision.FP16}
#: The torch dtype of each precision (by name: torch is imported lazily).
_TORCH_DTYPES = {Precision.FP32: "float32", Precision.BF16: "bfloat16",
                 Precision.FP16: "float16"}


#: The GPUs a device choice names one by one (cuda:0 …): the Toolbox cannot ask PyTorch
#: how many there are (it never loads it), so it offers as many as a GPU node commonly has.
LISTED_GPUS = 8
#: The valid devices, declared once: the engine's ``--device`` choices and the Toolbox's
#: list. "cuda" is PyTorch's current GPU (the first, unless CUDA_VISIBLE_DEVICES says
#: otherwise); "cuda:N" the N-th; "mps" Apple's GPU (Metal Performance Shaders). "mps" comes
#: last because the Toolbox stores a choice by its position in saved models and scripts.
DEVICE_CHOICES = choices(
    ("auto", "cpu", "cuda", *(f"cuda:{index}" for index in range(LISTED_GPUS)), "mps"),
    ("Automatic (GPU if any)", "CPU", "GPU (the first; cuda)",
     *(f"GPU {index} (cuda:{index})" for index in range(LISTED_GPUS)), "Apple GPU (mps)"))
#: Device types that are GPUs: batch and block sizes follow their free memory.
GPU_TYPES = ("cuda", "mps")


def device_field():
    """The ``device`` field of every config that runs the model (declared once)."""
    return option("auto", flag="--device", key="DEVICE", label="Device", advanced=True,
                  choices=DEVICE_CHOICES,
                  help="Where the model runs. Automatic: a CUDA GPU when PyTorch sees one, "
                       "else Apple's GPU (MPS) on a Mac with Apple silicon, else the CPU. On "
                       "a machine with several GPUs, 'GPU N' picks one. "
                       "A GPU is some 10 to 50 times faster than the CPU for training and "
                       "classifying with ViT-B-16.")


def precision_field():
    """The ``precision`` field of every config that runs the model (declared once)."""
    return option(
        Precision.AUTO.value, flag="--precision", key="PRECISION",
        label="Number precision", advanced=True,
        choices=choices(Precision, ("Automatic (by device)", "fp32", "bf16", "fp16")),
        help="Automatic: bf16 on a CUDA GPU, fp16 on Apple's GPU (MPS), fp32 on the CPU. "
             "Number format of the frozen CLIP tower and its activations; trainable "
             "weights, gates and class scores are always fp32. bf16 is about twice as fast "
             "on a CUDA GPU; on a CPU bf16 and fp16 are slower and only useful for checking "
             "results.")


#: The compile setting's label, which an error names.
COMPILE_LABEL = "Compile the model first"


def compile_field():
    """The ``compile_mode`` field of every config that may compile the encoder."""
    return option(
        CompileMode.OFF.value, flag="--compile", key="COMPILE",
        label=COMPILE_LABEL, advanced=True,
        choices=choices(CompileMode, ("Off", "Default", "Max-autotune")),
        help="torch.compile: compiles the encoder once per run before the first batch "
             "(minutes; max-autotune longer). Pays off on a GPU for long runs only.")


def resolve_device(name: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, or a clear error. 'auto'
    is CUDA, else MPS, else the CPU."""
    torch = torch_compat.import_torch()
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        return _apple_gpu(torch, name)
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MamolInputError(
                f"Device '{name}' was asked for, but PyTorch sees no CUDA GPU here. Choose "
                "'cpu' or 'auto'.")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MamolInputError(
                f"There is no GPU {device.index}; this machine has "
                f"{torch.cuda.device_count()}.")
        return device
    raise MamolInputError(f"Unknown device '{name}'. Use auto, cpu, cuda, cuda:N or mps.")


def _apple_gpu(torch, name: str):
    """torch.device('mps'), or why PyTorch cannot use Apple's GPU here."""
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if not torch.backends.mps.is_built():
        why = ("this PyTorch was built without MPS (only its macOS builds have it: the "
               "model environment's Automatic build on a Mac)")
    else:
        why = ("MPS needs a Mac with Apple silicon (M1 or later) and macOS 12.3 or later; "
               "PyTorch finds no such GPU here")
    raise MamolInputError(f"Device '{name}' was asked for, but {why}. Choose 'cpu' or "
                          "'auto'.")


def parse_precision(name: str) -> Precision:
    try:
        return Precision((name or "auto").strip().lower())
    except ValueError:
        raise MamolInputError(f"Unknown precision '{name}'. Use auto, fp32, bf16 or "
                              "fp16.") from None


def resolve_precision(name: str, device):
    """The frozen tower's torch dtype for ``name`` on ``device``."""
    precision = parse_precision(name)
    if precision is Precision.AUTO:
        precision = AUTO_PRECISION.get(device.type, Precision.FP32)
    return getattr(torch_compat.import_torch(), _TORCH_DTYPES[precision])


def require_finite_scores(finite: bool, dtype) -> None:
    """Stop with what to do when the model's class scores hold NaN or infinity, which
    would otherwise become a class silently. With an fp16 tower the likely cause is its
    range: fp16 reaches only 65504, bf16 and fp32 some 3.4e38."""
    if finite:
        return
    if dtype_name(dtype) == "float16":
        raise MamolInputError(
            "The model's class scores overflowed (NaN or infinity) with its tower in fp16, "
            "which holds numbers up to 65504 only. Run again with the precision set to "
            "fp32 (--precision fp32), or bf16 where the device has it.")
    raise MamolInputError(
        f"The model's class scores are not finite (NaN or infinity) with its tower in "
        f"{dtype_name(dtype)}: the model file may be damaged; train the model again.")


def dtype_name(dtype) -> str:
    """'float32', 'bfloat16', … for reports and logs."""
    return str(dtype).replace("torch.", "")


def parse_compile_mode(name: str) -> CompileMode:
    try:
        return CompileMode((name or "off").strip().lower())
    except ValueError:
        raise MamolInputError(
            f"Unknown compile mode '{name}'. Use off, default or max-autotune.") from None


def missing_compiler(device) -> Optional[str]:
    """What ``torch.compile`` lacks on this machine to compile for ``device`` (None when
    nothing): on the CPU, inductor builds C++ kernels with $CXX or g++; on CUDA, Triton
    builds its launchers with $CC or a C compiler. Both need Python's headers."""
    if device.type == "cpu":
        compilers, what = [os.environ.get("CXX") or "g++"], "a C++ compiler (g++)"
    else:
        compilers = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
        what = "a C compiler (gcc)"
    if not any(shutil.which(name) for name in compilers):
        return what
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"Python's headers (Python.h of Python {sysconfig.get_python_version()})"
    return None


def prepare_model(model, device, precision: str = "auto", compile_mode: str = "off"):
    """Move ``model`` to ``device``, hold its frozen tower in the run's precision and
    optionally compile its encoder. Returns the model."""
    mode = parse_compile_mode(compile_mode)
    if mode is not CompileMode.OFF:
        lacking = missing_compiler(device)
        if lacking:
            raise MamolInputError(
                f"Compiling the model (torch.compile) needs {lacking}, which this machine "
                f"lacks. Install it (on Debian: apt install "
                f"{'g++' if device.type == 'cpu' else 'gcc'} python3-dev), or turn "
                f"compiling off (the algorithm's '{COMPILE_LABEL}' setting; --compile "
                "off on the command line): the results are the same, only slower.")
    dtype = resolve_precision(precision, device)
    model = model.to(device).set_compute_dtype(dtype)
    if mode is not CompileMode.OFF:
        LOG.info("Compiling the encoder with torch.compile (mode %s); the first batches "
                 "wait for it.", mode.value)
        model.encoder.set_compile_mode(mode)
    return model


def free_gpu_bytes(device) -> Optional[int]:
    """Free memory of a GPU in bytes (None on the CPU). An Apple GPU shares the Mac's
    memory: what Metal recommends it use at most (its working set), less what PyTorch's
    MPS allocator already holds."""
    torch = torch_compat.import_torch()
    if device.type == "mps":
        return max(0, int(torch.mps.recommended_max_memory()
                          - torch.mps.driver_allocated_memory()))
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


#: Bytes of activations one sequence of 197 tokens of width 768 needs in a forward pass
#: without gradients, in bf16, with room for the MLP's 4x expansion, the stacked experts
#: and the allocator's slack (a generous estimate: it only sizes batches).
_INFERENCE_BYTES_197x768_BF16 = 12 * 2 ** 20
#: The same for training, where every block keeps its activations for the backward pass
#: (measured on the CPU: about 160 MB per ViT-B-16 sample in fp32).
_TRAINING_BYTES_197x768_BF16 = 96 * 2 ** 20


def _sequence_bytes(reference: int, tokens: int, width: int, blocks: int,
                    element_bytes: int) -> float:
    return reference * (tokens / 197) * (width / 768) * (blocks / 12) * (element_bytes / 2)


def auto_inference_batch(free_bytes: Optional[int], tokens: int, width: int, blocks: int,
                         element_bytes: int, share: float = 0.5,
                         cpu_default: int = CPU_INFERENCE_BATCH,
                         largest: int = 4096) -> int:
    """Samples per inference batch: with ``free_bytes`` of GPU memory (None = the CPU) as
    many as ``share`` of it holds (a power of two, at most ``largest``); on the CPU
    ``cpu_default``."""
    if free_bytes is None:
        return cpu_default
    per_sample = _sequence_bytes(_INFERENCE_BYTES_197x768_BF16, tokens, width, blocks,
                                 element_bytes)
    return _power_of_two(free_bytes * share / per_sample, 16, largest)


def model_inference_batch(model, device, patch_size: int) -> int:
    """:func:`auto_inference_batch` for a prepared MaMOL model on ``device``."""
    encoder = model.encoder
    return auto_inference_batch(free_gpu_bytes(device), patch_size ** 2 + 1, encoder.width,
                                len(encoder.visual.transformer.resblocks),
                                model.compute_dtype.itemsize)


def auto_training_micro_batch(free_bytes: Optional[int], batch_size: int, tokens: int,
                              width: int, blocks: int, element_bytes: int, modalities: int,
                              share: float = 0.6) -> int:
    """Samples per forward/backward pass with ``free_bytes`` of GPU memory: the whole batch
    when ``share`` of it holds the batch with every modality encoded, else the largest
    power of two that fits. None (the CPU) gives the whole batch."""
    if free_bytes is None:
        return batch_size
    per_sample = modalities * _sequence_bytes(_TRAINING_BYTES_197x768_BF16, tokens, width,
                                              blocks, element_bytes)
    if per_sample * batch_size <= free_bytes * share:
        return batch_size
    return _power_of_two(free_bytes * share / per_sample, 1, batch_size)


def auto_block_size(device, cpu_default: int = CPU_BLOCK_SIZE,
                    gpu_default: int = GPU_BLOCK_SIZE) -> int:
    """Pixels per side of a classification block: larger on a GPU so that each block holds
    many batches and the GPU waits less on reading and writing."""
    return gpu_default if device.type in GPU_TYPES else cpu_default


def _power_of_two(value: float, smallest: int, largest: int) -> int:
    result = smallest
    while result * 2 <= min(value, largest):
        result *= 2
    return max(smallest, min(result, largest))


def to_device(tensor, device):
    """Copy a host tensor to ``device`` without making the host wait for a CUDA GPU (pinned
    memory, asynchronous copy); a no-op on the CPU. An Apple GPU shares the host's memory
    and PyTorch pins memory for CUDA only, so a copy to MPS is a plain one."""
    if tensor.device == device or device.type != "cuda":
        return tensor.to(device)
    if tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device, non_blocking=True)


def synchronize(device) -> None:
    """Wait for the device's queued work (for timing; a no-op on the CPU)."""
    if device.type == "cuda":
        torch_compat.import_torch().cuda.synchronize(device)
    elif device.type == "mps":
        torch_compat.import_torch().mps.synchronize()
