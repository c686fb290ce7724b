"""Training samples of the tile model kind (issue 17): a sample is the P×P tile centred on a
labelled pixel — the same window the pixel kind cuts (:mod:`training.dataset`) — labelled at
every pixel of the tile that is a sample of the *same* set.

* **Labels.** :func:`label_tiles` gives each tile the class of every sample of its own set
  (training or validation) that falls inside it and :data:`IGNORE_INDEX` elsewhere, so the
  loss counts labelled tokens only and a training tile never carries a validation label
  (the split is by polygon, as for the pixel kind; the rasters' values under validation
  polygons may still be seen as context, as a pixel window near them sees them too).
* **Missing pattern per pixel.** :func:`pixel_presence` marks, per tile pixel, the
  modalities with valid values there; :func:`tile_pixel_patterns` intersects it with the
  tile's (simulated) pattern, so the missing simulation drops a modality for the whole
  tile, as it drops it for a pixel sample, and real gaps inside a tile are per pixel.
  Decision: during training a pixel counts a modality present where its value is valid;
  classification uses the pixel kind's window rule per pixel (``core.windows``), which
  also drops pixels whose own window is mostly missing. Both agree away from gaps.
"""
from typing import Sequence

import numpy as np

from .dataset import SampleSet

#: Label of tile pixels that carry no training signal (``cross_entropy``'s ignore_index).
IGNORE_INDEX = -100


def label_tiles(samples: SampleSet, patch_size: int) -> np.ndarray:
    """(n, P, P) int64 class index per tile pixel, :data:`IGNORE_INDEX` where no sample of
    ``samples`` lies. Tile k is centred as window k (row/column ``P // 2`` is its pixel)."""
    count = len(samples)
    labels = np.full((count, patch_size, patch_size), IGNORE_INDEX, dtype=np.int64)
    if count == 0:
        return labels
    if samples.rows is None or samples.cols is None:
        raise ValueError("tile labels need the samples' grid positions")
    rows = samples.rows.astype(np.int64)
    cols = samples.cols.astype(np.int64)
    # A key per grid position, shifted by P so that every tile pixel's column lands in
    # [0, width) and its key is unique.
    width = int(cols.max()) + 2 * patch_size + 1
    keys = (rows + patch_size) * width + (cols + patch_size)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    offset = patch_size // 2
    ramp = np.arange(patch_size) - offset
    tile_rows = rows[:, None, None] + ramp[None, :, None]
    tile_cols = cols[:, None, None] + ramp[None, None, :]
    lookup = (tile_rows + patch_size) * width + (tile_cols + patch_size)
    position = np.clip(np.searchsorted(sorted_keys, lookup), 0, count - 1)
    found = sorted_keys[position] == lookup
    labels[found] = samples.class_index[order[position[found]]]
    return labels


def pixel_presence(samples: SampleSet, names: Sequence[str], chunk: int = 4096) -> np.ndarray:
    """(n, P, P) uint8 bitmask per tile pixel: bit m set where modality ``names[m]`` has a
    valid value (its stored raw window is not NaN there)."""
    count = len(samples)
    first = next(iter(samples.windows.values()))
    presence = np.zeros((count,) + tuple(first.shape[-2:]), dtype=np.uint8)
    for bit, name in enumerate(names):
        cube = samples.windows.get(name)
        if cube is None:
            continue
        for start in range(0, count, chunk):
            valid = ~np.isnan(np.asarray(cube[start:start + chunk])).any(axis=1)
            presence[start:start + chunk] |= (valid.astype(np.uint8) << bit)
    return presence


def tile_pixel_patterns(presence: np.ndarray, tile_patterns: np.ndarray) -> np.ndarray:
    """(n, P, P) int64 pixel patterns: each pixel's valid modalities among its tile's
    (simulated) pattern."""
    return presence.astype(np.int64) & tile_patterns.astype(np.int64)[:, None, None]


def tile_loss(logits, targets, pixel_patterns, labelled: int):
    """Cross-entropy of (n, K, P, P) logits summed over the labelled tokens of the tiles and
    divided by ``labelled`` (the whole batch's labelled tokens, so micro-batches add up to
    the batch mean). Tokens labelled :data:`IGNORE_INDEX`, and tokens whose pixel has no
    modality (``pixel_patterns`` 0, never classified), add nothing and get no gradient."""
    import torch.nn.functional as F
    no_modality = (pixel_patterns == 0).to(targets.device)
    targets = targets.masked_fill(no_modality, IGNORE_INDEX)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                           reduction="sum") / max(1, labelled)
