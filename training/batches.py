"""Batches of normalised windows on the run's device, and prediction over a sample set.

Shared by training (the optimisation loop and validation, :mod:`training.trainer`) and
evaluation (:mod:`training.evaluation`): both gather batches from a :class:`SampleSet`
with stored normalisation statistics and let the model predict them.
"""
from typing import Dict, Optional, Sequence

import numpy as np

from ..core import torch_compat
from ..core.devices import free_gpu_bytes, require_finite_scores, to_device
from ..core.feedback import Reporter
from .dataset import Normalisation, SampleSet, normalise
from .tiles import pixel_presence, tile_pixel_patterns


#: Normalised training windows up to this size are held in memory (CPU) ...
RESIDENT_CPU_BYTES = 2 * 2 ** 30
#: ... and on a GPU up to this share of its free memory, so batches are gathered where the
#: model runs instead of being read, normalised and copied per step.
RESIDENT_GPU_SHARE = 0.25


class Batches:
    """Builds normalised torch batches from a :class:`SampleSet`.

    When the normalised windows fit (:data:`RESIDENT_CPU_BYTES`, :data:`RESIDENT_GPU_SHARE`)
    they are normalised once and kept on the run's device, and a batch is one index_select
    there; otherwise each batch is read from the memory-mapped windows, normalised and
    copied (from pinned memory, without waiting, on CUDA). Both give the same values.
    """

    def __init__(self, samples: SampleSet, names: Sequence[str],
                 statistics: Dict[str, Normalisation], device) -> None:
        self.samples = samples
        self.names = list(names)
        self.statistics = statistics
        self.device = device
        self.torch = torch_compat.import_torch()
        self.resident: Optional[Dict[str, object]] = None
        self._presence: Optional[np.ndarray] = None
        size = sum(int(np.prod(w.shape)) * 4 for w in samples.windows.values())
        free = free_gpu_bytes(device)
        budget = RESIDENT_CPU_BYTES if free is None else RESIDENT_GPU_SHARE * free
        if size <= budget:
            self.resident = {name: self._load(name) for name in self.names
                             if name in samples.windows}

    def _load(self, name: str):
        torch = self.torch
        source = self.samples.windows[name]
        target = torch.empty(source.shape, dtype=torch.float32, device=self.device)
        for start in range(0, source.shape[0], 4096):
            chunk = normalise(source[start:start + 4096], self.statistics[name])
            target[start:start + chunk.shape[0]] = to_device(torch.from_numpy(chunk),
                                                             self.device)
        return target

    def pixel_presence(self) -> np.ndarray:
        """(n, P, P) uint8 valid modalities per window pixel (:mod:`training.tiles`), read
        from the raw windows once and kept."""
        if self._presence is None:
            self._presence = pixel_presence(self.samples, self.names)
        return self._presence

    def windows(self, index: np.ndarray, pattern: np.ndarray) -> Dict[str, object]:
        torch = self.torch
        result = {}
        device_index = None
        # Sorted reads are faster on a memory map; the order is restored after.
        order = None if self.resident is not None else np.argsort(index, kind="stable")
        for bit, name in enumerate(self.names):
            if not ((pattern >> bit) & 1).any():
                continue  # no sample of this batch has it: the model never reads it
            if self.resident is not None:
                if device_index is None:
                    device_index = to_device(torch.from_numpy(np.ascontiguousarray(index)),
                                             self.device)
                result[name] = self.resident[name].index_select(0, device_index)
                continue
            raw = np.empty((index.size,) + self.samples.windows[name].shape[1:], np.float32)
            raw[order] = self.samples.windows[name][index[order]]
            result[name] = to_device(torch.from_numpy(normalise(raw, self.statistics[name])),
                                     self.device)
        return result


def predict(model, batches: Batches, patterns: np.ndarray, batch_size: int,
            reporter: Optional[Reporter] = None,
            samples: Optional[np.ndarray] = None) -> np.ndarray:
    """Predicted class index of ``samples`` (indices into ``batches.samples``; default all)
    under ``patterns`` (one per sample of the set). Predictions stay on the device until
    the end: the host waits for the GPU once, not once per batch.

    A model of the tile kind classifies each sample's window as a tile (its pixels'
    patterns: their valid modalities among the sample's pattern) and the prediction is the
    tile's centre pixel's, the pixel a tile is most central for, as in classification."""
    torch = batches.torch
    samples = np.arange(patterns.size) if samples is None else samples
    tiled = getattr(getattr(model, "kind", None), "value", "pixel") == "tile"
    presence = batches.pixel_presence() if tiled and samples.size else None
    parts, finite = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, samples.size, batch_size):
            if reporter is not None:
                reporter.check()
            index = samples[start:start + batch_size]
            pattern = patterns[index]
            windows = batches.windows(index, pattern)
            if tiled:
                codes = tile_pixel_patterns(presence[index], pattern)
                logits = model.forward_tiles(windows, torch.from_numpy(codes))
                centre = logits.shape[-1] // 2
                logits = logits[:, :, centre, centre]
            else:
                logits = model(windows, torch.from_numpy(pattern))
            parts.append(logits.argmax(dim=1))
            finite.append(torch.isfinite(logits).all())
    if not parts:
        return np.empty(0, dtype=np.int64)
    require_finite_scores(bool(torch.stack(finite).all()), model.compute_dtype)
    return torch.cat(parts).cpu().numpy().astype(np.int64)


__all__ = ["Batches", "predict", "RESIDENT_CPU_BYTES", "RESIDENT_GPU_SHARE"]
