"""The MaMOL model file: one self-describing, pickle-free file per trained model (DESIGN §3).

Format: safetensors. The tensors are only the trainable ones (token embeddings, adapters,
router, pattern/modality embeddings, head); the frozen backbone comes from open_clip and is
identified by its architecture, weights source and fingerprint. The safetensors metadata
holds one key, ``mamol``, whose value is a JSON document::

    format, format_version, modalities (name, bands, band names, wavelengths,
    normalisation mean/std), patch_size, backbone (arch, source, tag/path/seed,
    fingerprint), adapter (L_e, N_d, k, r, alpha, ..., experts; "mce": true and
    "kind": "tile" only where set, so a plain pixel model's record is unchanged), classes
    (value, name, colour), training (free-form summary), reference_grid, software, checksum

``checksum`` is a SHA-256 over the rest of the JSON and every tensor's bytes, so a
truncated or edited file is refused rather than silently misused (safetensors itself does
not checksum). Loading never unpickles: safetensors parses a JSON header and raw buffers.
"""
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import torch_compat
from .backbone import BackboneSpec, build_visual_tower, fingerprint, hash_tensors
from .errors import MamolInputError
from .staging import publish

FORMAT = "mamol-model"
FORMAT_VERSION = 1
METADATA_KEY = "mamol"
EXTENSION = ".mamol"


@dataclass(frozen=True)
class ModalityInfo:
    """A modality as the model file records it."""

    name: str
    bands: int
    mean: Tuple[float, ...] = ()            # per-band normalisation, from training pixels
    std: Tuple[float, ...] = ()
    band_names: Tuple[str, ...] = ()
    wavelengths_nm: Tuple[float, ...] = ()

    def to_json(self) -> Dict[str, object]:
        return {"name": self.name, "bands": self.bands, "band_names": list(self.band_names),
                "wavelengths_nm": list(self.wavelengths_nm),
                "normalisation": {"mean": list(self.mean), "std": list(self.std)}}

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> "ModalityInfo":
        norm = record.get("normalisation", {})
        return cls(name=str(record["name"]), bands=int(record["bands"]),
                   mean=tuple(float(v) for v in norm.get("mean", ())),
                   std=tuple(float(v) for v in norm.get("std", ())),
                   band_names=tuple(str(v) for v in record.get("band_names", ())),
                   wavelengths_nm=tuple(float(v) for v in record.get("wavelengths_nm", ())))


@dataclass(frozen=True)
class ClassInfo:
    value: int
    name: str
    colour: str   # "#rrggbb"


@dataclass(frozen=True)
class ModelHeader:
    """Everything in a model file except the tensors."""

    modalities: Tuple[ModalityInfo, ...]
    classes: Tuple[ClassInfo, ...]
    patch_size: int
    backbone: BackboneSpec
    backbone_fingerprint: str
    adapter: Dict[str, object]
    training: Dict[str, object] = field(default_factory=dict)
    reference_grid: Dict[str, object] = field(default_factory=dict)
    software: Dict[str, object] = field(default_factory=dict)

    @property
    def modality_names(self) -> List[str]:
        return [m.name for m in self.modalities]

    @property
    def model_kind(self) -> str:
        """"pixel" or "tile" (``AdapterConfig.kind``); files written before model kinds
        existed hold no key and are pixel models."""
        return str(self.adapter.get("kind", "pixel"))

    def to_json(self) -> Dict[str, object]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "modalities": [m.to_json() for m in self.modalities],
            "classes": [dataclasses.asdict(c) for c in self.classes],
            "patch_size": self.patch_size,
            "backbone": dict(self.backbone.to_json(), fingerprint=self.backbone_fingerprint),
            "adapter": dict(self.adapter),
            "training": self.training, "reference_grid": self.reference_grid,
            "software": self.software,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, object]) -> "ModelHeader":
        backbone = dict(record["backbone"])
        return cls(
            modalities=tuple(ModalityInfo.from_json(m) for m in record["modalities"]),
            classes=tuple(ClassInfo(int(c["value"]), str(c["name"]), str(c["colour"]))
                          for c in record["classes"]),
            patch_size=int(record["patch_size"]),
            backbone=BackboneSpec.from_json(backbone),
            backbone_fingerprint=str(backbone["fingerprint"]),
            adapter=dict(record["adapter"]),
            training=dict(record.get("training", {})),
            reference_grid=dict(record.get("reference_grid", {})),
            software=dict(record.get("software", {})))


def software_versions() -> Dict[str, str]:
    """Versions recorded in every model file."""
    open_clip = torch_compat.import_open_clip()
    torch = torch_compat.import_torch()
    return {"mamol_format": str(FORMAT_VERSION), "torch": torch.__version__,
            "open_clip": open_clip.__version__}


def _checksum(document: Mapping[str, object], tensors: Mapping[str, object]) -> str:
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    hash_tensors(digest, tensors)
    return digest.hexdigest()


def save_model(path: Path, model, header: ModelHeader) -> Path:
    """Write ``model``'s trainable tensors and ``header`` to ``path`` atomically."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {name: t.detach().cpu().float().contiguous().clone()
               for name, t in model.trainable_state_dict().items()}
    document = header.to_json()
    document["checksum"] = _checksum(document, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, partial, metadata={METADATA_KEY: json.dumps(document)})
        publish(Path(partial), path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _read(path: Path) -> Tuple[Dict[str, object], Dict[str, object]]:
    """(JSON document, tensors) of a model file, verified; clear errors otherwise."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise MamolInputError(f"Model file '{path}' does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure: not a usable model file
        raise MamolInputError(
            f"'{path}' is not a readable MaMOL model file ({exc}). It may be truncated, or "
            "not a model file at all; model files are safetensors files written by "
            "mamol:trainmodel, and pickled PyTorch files are refused.") from exc
    if METADATA_KEY not in metadata:
        raise MamolInputError(
            f"'{path}' is a safetensors file but not a MaMOL model (no '{METADATA_KEY}' "
            "metadata).")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except ValueError as exc:
        raise MamolInputError(f"'{path}' has damaged MaMOL metadata ({exc}).") from exc
    if document.get("format") != FORMAT:
        raise MamolInputError(f"'{path}' is not a MaMOL model file.")
    if int(document.get("format_version", -1)) > FORMAT_VERSION:
        raise MamolInputError(
            f"'{path}' uses model format {document.get('format_version')}, newer than this "
            f"plugin understands ({FORMAT_VERSION}). Update the plugin.")
    stored = document.pop("checksum", None)
    if stored != _checksum(document, tensors):
        raise MamolInputError(
            f"'{path}' fails its checksum: the file was modified or damaged after it was "
            "written. Use the original file or train the model again.")
    return document, tensors


def _header(document: Mapping[str, object], path: Path) -> ModelHeader:
    try:
        return ModelHeader.from_json(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise MamolInputError(f"'{path}' has incomplete MaMOL metadata ({exc}).") from exc


def read_header(path: Path) -> ModelHeader:
    """The verified header of a model file (cheap: no backbone is built)."""
    document, _ = _read(path)
    return _header(document, path)


def check_inputs(header: ModelHeader, band_counts: Mapping[str, int]) -> None:
    """Check the rasters a user gives (modality name -> band count) against the model.

    Call before any heavy work. Raises :class:`MamolInputError` naming the problem.
    """
    if not band_counts:
        raise MamolInputError(
            f"No input raster given. This model uses {', '.join(header.modality_names)}; "
            "give at least one of them.")
    known = {m.name: m for m in header.modalities}
    for name, bands in band_counts.items():
        if name not in known:
            raise MamolInputError(
                f"The model has no modality '{name}'; it was trained on "
                f"{', '.join(header.modality_names)}.")
        if int(bands) != known[name].bands:
            raise MamolInputError(
                f"The {name} raster has {bands} band(s) but the model expects "
                f"{known[name].bands} for {name}. Give the raster the model was trained on.")


def build_model(header: ModelHeader, visual):
    """An untrained :class:`MamolModel` shaped as ``header`` describes, on ``visual``."""
    from .mamol_model import AdapterConfig, MamolModel, ModalitySpec
    return MamolModel([ModalitySpec(m.name, m.bands) for m in header.modalities],
                      len(header.classes), visual, AdapterConfig.from_json(header.adapter))


def load_model(path: Path, backbone: Optional[BackboneSpec] = None, *,
               log: Optional[Callable[[str], None]] = None):
    """Load a model file into a :class:`MamolModel` (CPU, eval mode).

    Args:
        path: the model file.
        backbone: where to get the frozen backbone from, if not where the file says (e.g.
            the checkpoint moved). Its fingerprint must match the file's.
        log: receives progress lines while pretrained backbone weights download.

    Returns:
        (model, header)
    """
    document, tensors = _read(path)
    header = _header(document, path)
    spec = backbone or header.backbone
    if spec.arch != header.backbone.arch:
        raise MamolInputError(
            f"The model was trained on backbone {header.backbone.arch}, not {spec.arch}.")
    visual = build_visual_tower(spec, log=log)
    actual = fingerprint(visual)
    if actual != header.backbone_fingerprint:
        raise MamolInputError(
            f"Backbone mismatch: the model was trained on {header.backbone.describe()} "
            f"(fingerprint {header.backbone_fingerprint}), but {spec.describe()} has "
            f"fingerprint {actual}. Use the backbone weights the model was trained with.")
    model = build_model(header, visual)
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(n for n in set(expected) & set(tensors)
                         if tuple(expected[n].shape) != tuple(tensors[n].shape))
    if missing or unexpected or wrong_shape:
        raise MamolInputError(
            f"'{path}' does not match the model its metadata describes (missing tensors: "
            f"{missing[:3]}, unexpected: {unexpected[:3]}, wrong shape: {wrong_shape[:3]}).")
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return model, header


def modality_infos(specs: Sequence[Tuple[str, int]]) -> Tuple[ModalityInfo, ...]:
    """ModalityInfo records with identity normalisation, for models not trained on data."""
    return tuple(ModalityInfo(name, bands, mean=(0.0,) * bands, std=(1.0,) * bands)
                 for name, bands in specs)
