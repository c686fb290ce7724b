"""Windows around target pixels and the per-pixel missing pattern (DESIGN §2.1, §4).

Shared by training and inference so both see a sample the same way:

* A sample is the P×P window whose row/column ``P // 2`` is the target pixel (for even P
  the pixel sits just below/right of the window centre).
* A modality is *missing* for a sample when the target pixel is missing in it (NaN after
  alignment: outside coverage, nodata, non-finite) or when more than
  ``max_missing_fraction`` of the window is missing.
* Inside a present window, missing pixels are set to the band mean (0 after
  normalisation), so they carry no signal.
"""
from typing import Sequence, Tuple

import numpy as np

from .options import option

#: Default share of a window that may be missing before the whole modality counts as missing.
DEFAULT_MAX_MISSING_FRACTION = 0.5


def max_missing_fraction_field():
    """The ``max_missing_fraction`` override of classification and evaluation: None (the
    Toolbox's -1) keeps the share the model was trained with (declared once)."""
    return option(
        None, kind=float, unset=-1.0, flag="--max-missing-fraction",
        key="MAX_MISSING_FRACTION", label="Gap allowed (-1 = the model's)",
        minimum=-1.0, maximum=1.0, advanced=True,
        help="The share of a window that may be missing: a modality counts as missing at a "
             "pixel when more of its window than this is missing (default: the share the model was trained with).")


def window_offset(patch_size: int) -> int:
    """Rows/columns of the window before (above/left of) the target pixel."""
    return patch_size // 2


def cut_windows(block: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                patch_size: int) -> np.ndarray:
    """Windows (n, bands, P, P) from ``block`` (bands, H, W) for target pixels given in
    *block* coordinates minus the halo, i.e. window k covers block rows
    ``rows[k] .. rows[k] + P - 1`` (a block read with a halo of ``window_offset(P)`` puts
    the target pixel at its window's offset)."""
    view = np.lib.stride_tricks.sliding_window_view(block, (patch_size, patch_size),
                                                    axis=(1, 2))
    # view: (bands, H-P+1, W-P+1, P, P) -> (n, bands, P, P)
    return np.ascontiguousarray(np.moveaxis(view[:, rows, cols], 1, 0))


def default_tile_step(patch_size: int) -> int:
    """The default step of the tile lattice: P - 2 * max(1, P // 7), at least 1 (10 for
    P = 14, 5 for P = 7), so each kept cell has a margin of P // 7 pixels of context on
    every side. Measured on the sample scene (tiny backbone, P = 14, one trained tile
    model, bench/RESULTS.md): step 7 (P / 2) 87.15 % OA, 966 passes; step 10 86.74 %,
    453 passes; step 14 (no overlap) 85.79 %, 269 passes."""
    return max(1, patch_size - 2 * max(1, patch_size // 7))


def tile_layout(patch_size: int, step: int = 0) -> Tuple[int, int]:
    """(stride S, lead) of the tile lattice a tile model classifies with (issue 17).

    Tiles of P x P pixels start every S = ``step`` pixels (at most P; 0: the default,
    ``default_tile_step``) along each axis of the
    (uncropped) reference grid, at ``k * S - lead``; tile k keeps its predictions only for
    the S x S cell ``[k * S, (k + 1) * S)``, which sits at its centre (``lead = (P - S) // 2``
    pixels of the tile before the cell, ``P - S - lead`` after it). The cells tile the grid,
    so every pixel takes the prediction of the tile in which it is most central (up to half
    a pixel when P - S is odd), and the lattice belongs to the grid, not to a block or a
    crop: results do not depend on the block size or the extent.
    """
    stride = step or default_tile_step(patch_size)
    if not 1 <= stride <= patch_size:
        raise ValueError(f"A tile step must be in [1, {patch_size}], got {stride}.")
    return stride, (patch_size - stride) // 2


def tile_halo(patch_size: int) -> int:
    """Pixels a block of a tile model reads beyond each of its edges, besides the window
    halo of its pixels' missing rule: enough for every tile whose cell meets the block,
    wherever the block lies on the lattice. With the block's first row at phase
    ``φ = row mod S`` of its cell, the first tile starts ``φ + lead <= (S - 1) + (P - S)``
    pixels before the block; the last cell overhangs the block's end by at most S - 1, so
    the last tile ends at most ``(S - 1) - S + (P - lead) <= P - 1`` pixels after it."""
    return patch_size - 1


def modality_present(windows: np.ndarray, max_missing_fraction: float) -> np.ndarray:
    """(n,) bool: is the modality usable for each window (n, bands, P, P)?"""
    patch = windows.shape[-1]
    missing = np.isnan(windows).any(axis=1)          # (n, P, P)
    centre = window_offset(patch)
    fraction = missing.reshape(missing.shape[0], -1).mean(axis=1)
    return ~missing[:, centre, centre] & (fraction <= max_missing_fraction)


def pattern_from_presence(presence: Sequence[np.ndarray]) -> np.ndarray:
    """Bitmask pattern codes (int64) from per-modality presence, bit m = modality m."""
    pattern = np.zeros(presence[0].shape, dtype=np.int64)
    for bit, present in enumerate(presence):
        pattern |= present.astype(np.int64) << bit
    return pattern


def pattern_name(pattern: int, names: Sequence[str]) -> str:
    """'hs+lidar' for a pattern code; 'none' for 0."""
    present = [name for bit, name in enumerate(names) if (int(pattern) >> bit) & 1]
    return "+".join(present) or "none"
