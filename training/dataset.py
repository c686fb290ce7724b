"""Training samples: P×P windows around labelled pixels, from every modality, with each
sample's real missing pattern and per-band normalisation statistics.

Windows are cut tile by tile from the aligned rasters (a tile of labelled pixels plus a
halo of P/2 is read at a time) and kept in memory-mapped files in a temporary folder, so
memory stays bounded by one tile whatever the number of samples; the operating system
keeps in RAM what fits.
"""
import contextlib
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..core import runs
from ..core.feedback import Reporter
from ..core.disk import reporting_full_disk
from ..core.grid import AlignedRaster
from ..core.windows import cut_windows, modality_present, pattern_from_presence, window_offset
from .labels import LabelledPixels

LOG = logging.getLogger(__name__)

TILE = 256  # grid pixels per side of one extraction tile


@dataclass
class SampleSet:
    """Samples of one side of the split. ``windows[name]`` is (n, bands, P, P) float32 raw
    values with NaN where missing; ``pattern`` is each sample's real missing pattern."""

    windows: Dict[str, np.ndarray]
    class_index: np.ndarray
    pattern: np.ndarray
    polygon: np.ndarray
    rows: Optional[np.ndarray] = None    # grid row / column of each target pixel (tile
    cols: Optional[np.ndarray] = None    # models label every sample of a set in its tile)

    def __len__(self) -> int:
        return int(self.class_index.size)


def extract_samples(aligned: Sequence[Tuple[str, AlignedRaster]], pixels: LabelledPixels,
                    patch_size: int, max_missing_fraction: float, folder: Path,
                    prefix: str, reporter: Optional[Reporter] = None,
                    span: Tuple[float, float] = (0.0, 100.0)) -> Tuple[SampleSet, int]:
    """Cut the windows of ``pixels`` from each aligned modality (in model order).

    Returns the samples that have at least one modality present, and how many were dropped
    because no modality is present at them.
    """
    count = len(pixels)
    offset = window_offset(patch_size)
    windows = {name: _reserved_memmap(Path(folder) / f"{prefix}-{name}.npy",
                                      (count, raster.bands, patch_size, patch_size))
               for name, raster in aligned}
    presence = {name: np.zeros(count, dtype=bool) for name, _ in aligned}
    tile_keys = (pixels.rows // TILE) * (1 + int(pixels.cols.max(initial=0)) // TILE) + \
        pixels.cols // TILE
    order = np.argsort(tile_keys, kind="stable")
    boundaries = np.flatnonzero(np.diff(tile_keys[order])) + 1
    groups = np.split(order, boundaries) if count else []
    for number, members in enumerate(groups):
        rows, cols = pixels.rows[members], pixels.cols[members]
        row0, col0 = int(rows.min()), int(cols.min())
        height = int(rows.max()) - row0 + patch_size
        width = int(cols.max()) - col0 + patch_size
        for name, raster in aligned:
            block = raster.read(col0 - offset, row0 - offset, width, height)
            cut = cut_windows(block, rows - row0, cols - col0, patch_size)
            windows[name][members] = cut
            presence[name][members] = modality_present(cut, max_missing_fraction)
        if reporter is not None:
            reporter.report(span[0] + (span[1] - span[0]) * (number + 1) / len(groups))
    pattern = pattern_from_presence([presence[name] for name, _ in aligned])
    keep = np.flatnonzero(pattern)
    dropped = count - keep.size
    if dropped:
        # Rewrite without the empty samples (rare: labels where no raster has data).
        for name in list(windows):
            kept = _reserved_memmap(Path(folder) / f"{prefix}-{name}-kept.npy",
                                    (keep.size,) + windows[name].shape[1:])
            for start in range(0, keep.size, 4096):
                kept[start:start + 4096] = windows[name][keep[start:start + 4096]]
            windows[name] = kept
    return SampleSet(windows, pixels.class_index[keep], pattern[keep],
                     pixels.polygon[keep], pixels.rows[keep], pixels.cols[keep]), dropped


@dataclass(frozen=True)
class Normalisation:
    """Per-band mean and standard deviation of one modality, from training pixels."""

    mean: np.ndarray  # (bands,) float64
    std: np.ndarray   # (bands,) float64, > 0


def normalisation_statistics(samples: SampleSet, names: Sequence[str]) -> Dict[str, Normalisation]:
    """Mean/std per band over the target pixels of training samples where the modality is
    present. A band that does not vary gets std 1 (so it normalises to 0, not to inf)."""
    statistics = {}
    for bit, name in enumerate(names):
        present = np.flatnonzero((samples.pattern >> bit) & 1)
        cube = samples.windows[name]
        centre = window_offset(cube.shape[-1])
        bands = cube.shape[1]
        if present.size == 0:
            statistics[name] = Normalisation(np.zeros(bands), np.ones(bands))
            continue
        values = np.asarray(cube[present, :, centre, centre], dtype=np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        statistics[name] = Normalisation(mean, std)
    return statistics


def normalise(windows: np.ndarray, statistics: Normalisation) -> np.ndarray:
    """(n, bands, P, P) raw windows -> normalised float32, missing pixels set to 0 (mean)."""
    mean = statistics.mean.astype(np.float32)[None, :, None, None]
    std = statistics.std.astype(np.float32)[None, :, None, None]
    result = (np.asarray(windows, dtype=np.float32) - mean) / std
    return np.nan_to_num(result, nan=0.0, posinf=0.0, neginf=0.0)


def _reserved_memmap(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
    """A new float32 ``.npy`` memory map whose disk space is reserved up front: a memory map
    over a sparse file that meets a full disk kills the process (SIGBUS); a reservation
    fails with ENOSPC, which :func:`scratch_folder` names."""
    array = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=shape)
    if hasattr(os, "posix_fallocate") and array.size:
        with open(path, "r+b") as stream:
            try:
                os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
                    raise OSError(exc.errno, exc.strerror, str(path)) from exc
                # EINVAL/EOPNOTSUPP: the file system cannot reserve (written as it goes)
    return array


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A folder for the memory-mapped windows in this run's scratch folder (the temp root,
    ``MAMOL_TEMP_DIR``; :mod:`core.runs`), removed when the block ends; a full disk there is
    reported as such."""
    with runs.scratch_folder("samples-") as folder, \
            reporting_full_disk([folder], what="the training samples (set "
                                f"{runs.TEMP_ROOT_VARIABLE} to a folder with more room)"):
        yield folder


def class_counts(samples: SampleSet, class_count: int) -> List[int]:
    return np.bincount(samples.class_index, minlength=class_count).tolist()
