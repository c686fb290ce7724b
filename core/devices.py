"""Which torch device a run uses (auto | cpu | cuda | cuda:N), and its autocast."""
import contextlib

from . import torch_compat
from .errors import MamolInputError


def resolve_device(name: str):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, or a clear error."""
    torch = torch_compat.import_torch()
    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
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
    raise MamolInputError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.")


def autocast(device):
    """bf16 autocast on CUDA (DESIGN §4, §5); full precision on the CPU."""
    torch = torch_compat.import_torch()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
