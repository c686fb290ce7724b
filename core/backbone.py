"""The frozen backbone: an open_clip ViT image tower, its weights and their fingerprint.

Weights come from one of three sources (DESIGN §2.9):

* ``pretrained``: an open_clip pretrained tag (e.g. ``openai``, ``laion2b_s34b_b88k``). The
  file is the one open_clip resolves the tag to on the Hugging Face hub (the
  ``.safetensors`` alternative first); :mod:`core.weights` fetches it once, with progress
  lines ("… 37 % (128.4 of 351.6 MB)") to the caller's ``log``, into the weights cache
  (:func:`weights_cache_dir`: ``MAMOL_WEIGHTS_CACHE`` if set, else Hugging Face's own cache,
  ``HF_HUB_CACHE`` / ``HF_HOME/hub`` / ``~/.cache/huggingface/hub``). A cached file is used
  without any network access; with ``HF_HUB_OFFLINE=1`` or no network, a file that is not
  cached is a :class:`MamolInputError` saying what to do. open_clip's own code then loads
  it, with QuickGELU where the tag was trained with it (``openai``); a corrupt or
  misshapen cached file is a :class:`MamolInputError` naming it;
* ``checkpoint``: a local file — an OpenAI TorchScript archive (``.pt``), an open_clip
  state dict (``.bin``/``.pt``/``.pth``, read with ``weights_only=True`` so no pickled code
  runs) or ``.safetensors``;
* ``random``: a seeded random initialisation, for offline tests and the demo.

The fingerprint is a SHA-256 over the image tower's tensors (names, shapes, dtypes, bytes),
so a model file can prove it is used with the backbone it was trained on.
"""
import contextlib
import dataclasses
import enum
import hashlib
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from . import torch_compat
from .errors import MamolInputError
from .weights import weights_cache_dir  # noqa: F401 - part of this module's interface

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "model_configs"
DEFAULT_ARCH = "ViT-B-16"
#: Small ViT configs shipped as data for tests and the CPU demo.
TINY_ARCH = "mamol-tiny-vit"
SMALL_ARCH = "mamol-small-vit"
#: The backbones the Toolbox offers, default first: (open_clip config name, label). Each
#: is a plain ViT whose weights open_clip knows (the tiny ones: random or a checkpoint);
#: the engine's ``--arch`` takes any open_clip ViT config besides (research use).
ARCH_CHOICES = (
    (DEFAULT_ARCH, "ViT-B-16 (the paper's; default)"),
    ("ViT-B-32", "ViT-B-32 (faster, coarser)"),
    ("ViT-L-14", "ViT-L-14 (larger, slower)"),
    ("ViT-H-14", "ViT-H-14 (tag laion2b_s32b_b79k)"),
    (SMALL_ARCH, "mamol-small-vit (small; tests)"),
    (TINY_ARCH, "mamol-tiny-vit (tests, demo)"),
)


class WeightsSource(str, enum.Enum):
    PRETRAINED = "pretrained"
    CHECKPOINT = "checkpoint"
    RANDOM = "random"


@dataclass(frozen=True)
class BackboneSpec:
    """Which frozen ViT to use and where its weights come from."""

    arch: str = DEFAULT_ARCH                      # open_clip model config name
    source: WeightsSource = WeightsSource.RANDOM  # where the weights come from
    pretrained_tag: Optional[str] = None          # for source=pretrained
    checkpoint_path: Optional[str] = None         # for source=checkpoint
    seed: int = 0                                 # for source=random

    def to_json(self) -> Dict[str, object]:
        record = dataclasses.asdict(self)
        record["source"] = self.source.value
        return record

    @classmethod
    def from_json(cls, record: Dict[str, object]) -> "BackboneSpec":
        values = {f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record}
        values["source"] = WeightsSource(values.get("source", "random"))
        return cls(**values)

    def describe(self) -> str:
        if self.source is WeightsSource.PRETRAINED:
            return f"{self.arch} with open_clip pretrained weights '{self.pretrained_tag}'"
        if self.source is WeightsSource.CHECKPOINT:
            return f"{self.arch} with weights from '{self.checkpoint_path}'"
        return f"{self.arch} with random weights (seed {self.seed})"


def _register_configs(open_clip) -> None:
    if TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def available_archs() -> Tuple[str, ...]:
    """open_clip ViT config names (including the shipped tiny ones)."""
    open_clip = torch_compat.import_open_clip()
    _register_configs(open_clip)
    return tuple(name for name in open_clip.list_models()
                 if "ViT" in name or name.startswith("mamol-"))


def _vision_config(open_clip, arch: str) -> Dict[str, object]:
    _register_configs(open_clip)
    config = open_clip.get_model_config(arch)
    if config is None:
        raise MamolInputError(
            f"Unknown backbone architecture '{arch}'. Use an open_clip ViT config name such as "
            f"'{DEFAULT_ARCH}' or '{TINY_ARCH}'.")
    vision = config.get("vision_cfg", {})
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise MamolInputError(
            f"Backbone '{arch}' is not a plain open_clip ViT (ResNet or timm tower); MaMOL "
            "adapts ViT transformer blocks. Choose a ViT config, e.g. 'ViT-B-16'.")
    return config


def _unwrap_state_dict(loaded) -> Dict[str, object]:
    for key in ("state_dict", "model", "module"):
        if isinstance(loaded, dict) and key in loaded and isinstance(loaded[key], dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise MamolInputError("The checkpoint holds no state dict of tensors.")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in loaded.items()}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def read_checkpoint(path: Path) -> Dict[str, object]:
    """Read a checkpoint file into a flat state dict without unpickling arbitrary objects."""
    torch = torch_compat.import_torch()
    path = Path(path)
    if not path.is_file():
        raise MamolInputError(f"Backbone checkpoint '{path}' does not exist or is not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        if _is_torchscript(path):
            # OpenAI's CLIP releases are TorchScript archives: code is TorchScript, not pickle.
            # torch.jit.load is their only reader; its deprecation (torch >= 2.10; "not
            # supported in Python 3.14+" there) is not something a user of those files can
            # act on, so it is not passed on.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`torch.jit.load` is ",
                                        category=DeprecationWarning)
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return _unwrap_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    except MamolInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unusable file"
        raise MamolInputError(
            f"Cannot read backbone checkpoint '{path}': {exc}. Give an OpenAI .pt, an "
            "open_clip .bin/.pt or a .safetensors file.") from exc


def _visual_tensors(state: Dict[str, object]) -> Dict[str, object]:
    """The image tower's entries of a full CLIP state dict, without the ``visual.`` prefix."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return visual or dict(state)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip warns on the root logger that a model "initialized randomly"; for a seeded
    random backbone (or one we fill from a checkpoint next) that is the intent."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _pretrained_model(open_clip, spec: BackboneSpec, log: Optional[Callable[[str], None]]):
    """The full open_clip model of a pretrained tag, its weights from :mod:`core.weights`."""
    from .weights import cache_entry, fetch_pretrained, one_line
    if not spec.pretrained_tag:
        raise MamolInputError("Pretrained weights need an open_clip tag, e.g. 'openai'.")
    path, config = fetch_pretrained(open_clip, spec.arch, spec.pretrained_tag, log=log)
    try:
        # open_clip's loader (conversions, strict state dict), given the file it would have
        # downloaded; QuickGELU as the tag was trained with (open_clip only warns).
        return open_clip.create_model(spec.arch, pretrained=str(path),
                                      force_quick_gelu=bool(config.get("quick_gelu")))
    except Exception as exc:  # noqa: BLE001 - unreadable or misshapen file
        raise MamolInputError(
            f"The weights file '{path}' for {spec.describe()} cannot be loaded "
            f"({one_line(exc)}): it is damaged or holds weights of another architecture. "
            f"Delete '{cache_entry(path)}' so that it is downloaded "
            "again, or give the backbone weights as a checkpoint file.") from exc


def build_visual_tower(spec: BackboneSpec, *, log: Optional[Callable[[str], None]] = None):
    """Instantiate the image tower of ``spec`` with its weights (on the CPU, fp32).

    ``log`` receives progress lines while pretrained weights download (default: this
    module's logger)."""
    open_clip = torch_compat.import_open_clip()
    torch = torch_compat.import_torch()
    _vision_config(open_clip, spec.arch)
    if spec.source is WeightsSource.PRETRAINED:
        return _pretrained_model(open_clip, spec, log).visual.float()
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(int(spec.seed))
        model = open_clip.create_model(spec.arch, pretrained=None)
    visual = model.visual.float()
    if spec.source is WeightsSource.CHECKPOINT:
        if not spec.checkpoint_path:
            raise MamolInputError("Checkpoint weights need a checkpoint file path.")
        tensors = _visual_tensors(read_checkpoint(Path(spec.checkpoint_path)))
        expected = visual.state_dict()
        missing = [name for name in expected if name not in tensors]
        misshapen = [name for name in expected if name in tensors
                     and tuple(tensors[name].shape) != tuple(expected[name].shape)]
        if missing or misshapen:
            examples = ", ".join((missing + misshapen)[:3])
            raise MamolInputError(
                f"Checkpoint '{spec.checkpoint_path}' does not fit backbone {spec.arch}: "
                f"{len(missing)} image-tower tensors missing and {len(misshapen)} of another "
                f"shape (e.g. {examples}). Choose the architecture the checkpoint was "
                "trained with.")
        visual.load_state_dict({name: tensors[name] for name in expected})
    return visual


def hash_tensors(digest, tensors: Dict[str, object]) -> None:
    """Feed every tensor (sorted by name: name, shape, dtype, raw bytes) into ``digest``."""
    torch = torch_compat.import_torch()
    for name, tensor in sorted(tensors.items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(data.view(-1).view(dtype=torch.uint8).numpy().tobytes())


def fingerprint(visual) -> str:
    """SHA-256 (hex, first 16 digits) of the image tower's tensors."""
    digest = hashlib.sha256()
    hash_tensors(digest, visual.state_dict())
    return digest.hexdigest()[:16]
