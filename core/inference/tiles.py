"""Models of the tile kind (issue 17): one pass per modality labels every pixel of a P×P
tile; tiles overlap on a lattice of the full grid (:func:`core.windows.tile_layout`), and a
pixel takes its class from the tile where it is most central or from every covering tile,
weighted (``ClassifyConfig.tile_blend``, :data:`TILE_CLASSIFIERS`)."""
from typing import Tuple

import numpy as np

from .. import torch_compat
from ..devices import require_finite_scores, to_device
from ..feedback import Reporter
from ..windows import tile_layout, window_offset
from .blocks import Block, device_bands, device_windows


def _run_tiles(model, block: Block, tile_r: np.ndarray, tile_c: np.ndarray, device,
               batch_size: int, patch: int, reporter: Reporter, keep: slice):
    """Softmax probabilities (n, K, k, k) float32 of the tiles whose first row/column in the
    block's outer pattern (the block with its margin) are ``tile_r``/``tile_c``, for the
    tile rows and columns ``keep``; and the number of encoder passes run. The host waits
    for the device once."""
    torch = torch_compat.import_torch()
    ramp = np.arange(patch)
    outer = block.outer_pattern
    pixel_patterns = torch.from_numpy(np.ascontiguousarray(
        outer[(tile_r[:, None] + ramp)[:, :, None], (tile_c[:, None] + ramp)[:, None, :]]))
    tensors = device_bands(block, device)
    offset = window_offset(patch)    # the bands reach the window halo beyond the margin
    rows_all = to_device(torch.from_numpy(tile_r + offset), device)
    cols_all = to_device(torch.from_numpy(tile_c + offset), device)
    ramp_device = torch.arange(patch, device=device)
    results, passes = [], 0
    with torch.no_grad():
        for start in range(0, tile_r.size, batch_size):
            reporter.step(start, tile_r.size)
            stop = start + batch_size
            windows = device_windows(tensors, rows_all[start:stop], cols_all[start:stop],
                                     ramp_device)
            codes = pixel_patterns[start:stop]
            passes += sum(bin(int(code)).count("1") for code in model.tile_pattern(codes))
            logits = model.forward_tiles(windows, codes)
            results.append(torch.softmax(logits[:, :, keep, keep], dim=1))
    result = torch.cat(results).cpu().numpy()
    require_finite_scores(bool(np.isfinite(result).all()), model.compute_dtype)
    return result, passes


def tile_weights(patch_size: int) -> np.ndarray:
    """(P, P) float64 weights of a tile's pixels when overlapping tiles are averaged: a tent
    in each axis, highest at the tile's centre, (P + 1) / 2 - |d - (P - 1) / 2| at distance
    d from its first row/column (never zero inside the tile)."""
    d = np.arange(patch_size)
    tent = (patch_size + 1) / 2 - np.abs(d - (patch_size - 1) / 2)
    return np.outer(tent, tent)


def classify_tiles_weighted(model, block: Block, phase: Tuple[int, int], device,
                            batch_size: int, patch: int, class_count: int,
                            reporter: Reporter, step: int = 0):
    """As :func:`classify_tiles_central`, but each pixel's probabilities are the average of
    every lattice tile covering it, weighted by :func:`tile_weights` (centre-weighted
    blending).
    The tiles are the same lattice's; those overlapping the block reach at most P - 1
    pixels beyond it, within :func:`core.windows.tile_halo`."""
    stride, lead = tile_layout(patch, step)
    height, width, pattern = block.height, block.width, block.pattern
    margin = block.margin
    phase_c, phase_r = phase
    count = int((pattern > 0).sum())
    empty = np.full((class_count, height, width), np.nan, dtype=np.float32)
    if count == 0:
        return empty, pattern, 0, 0

    def origins(length: int, phase_axis: int) -> np.ndarray:
        # lattice tiles meeting pixels [0, length) of the block, in outer coordinates
        first = -(-(lead + phase_axis - patch + 1) // stride)
        last = (length - 1 + lead + phase_axis) // stride
        return margin + np.arange(first, last + 1) * stride - lead - phase_axis

    rows, cols = origins(height, phase_r), origins(width, phase_c)
    # run a tile only when one of its pixels inside the block is to be classified
    wanted = np.zeros(block.outer_pattern.shape, dtype=np.int64)
    wanted[margin:margin + height, margin:margin + width] = pattern > 0
    integral = np.zeros((wanted.shape[0] + 1, wanted.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = wanted.cumsum(0).cumsum(1)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    sums = (integral[r + patch, c + patch] - integral[r, c + patch]
            - integral[r + patch, c] + integral[r, c])
    tile_r, tile_c = r[sums > 0], c[sums > 0]
    result, passes = _run_tiles(model, block, tile_r, tile_c, device, batch_size, patch,
                                reporter, slice(None))
    weights = tile_weights(patch)
    total = np.zeros((class_count,) + wanted.shape, dtype=np.float64)
    weight_sum = np.zeros(wanted.shape, dtype=np.float64)
    # one offset at a time: the tiles' pixels at one offset are distinct pixels
    for dr in range(patch):
        for dc in range(patch):
            total[:, tile_r + dr, tile_c + dc] += weights[dr, dc] * result[:, :, dr, dc].T
            weight_sum[tile_r + dr, tile_c + dc] += weights[dr, dc]
    inside = (slice(margin, margin + height), slice(margin, margin + width))
    with np.errstate(invalid="ignore", divide="ignore"):
        probabilities = (total[(slice(None),) + inside] / weight_sum[inside]).astype(np.float32)
    probabilities[:, pattern == 0] = np.nan
    return probabilities, pattern, count, passes


def classify_tiles_central(model, block: Block, phase: Tuple[int, int], device,
                           batch_size: int, patch: int, class_count: int, reporter: Reporter,
                           step: int = 0):
    """The tile model kind's :func:`core.inference.pixel.classify_pixels`: (probabilities
    (K, h, w) float32, NaN where not classified, the pixels' pattern (h, w), number
    classified, encoder passes).

    ``phase`` is (column, row) of the block's first pixel within its lattice cell
    (:func:`core.windows.tile_layout`, full-grid coordinates modulo S); the block was read
    with a margin of :func:`core.windows.tile_halo`. Each tile whose central S x S cell holds
    a pixel to classify runs once, and that cell takes its probabilities."""
    stride, lead = tile_layout(patch, step)
    height, width, pattern = block.height, block.width, block.pattern
    margin = block.margin
    phase_c, phase_r = phase
    cells_r, cells_c = -(-(height + phase_r) // stride), -(-(width + phase_c) // stride)
    probabilities = np.full((class_count, cells_r, stride, cells_c, stride), np.nan,
                            dtype=np.float32)
    inner = (slice(None), slice(phase_r, phase_r + height), slice(phase_c, phase_c + width))
    padded = np.zeros((cells_r * stride, cells_c * stride), dtype=bool)
    padded[inner[1:]] = pattern > 0
    wanted = padded.reshape(cells_r, stride, cells_c, stride).any(axis=(1, 3))
    cell_r, cell_c = np.nonzero(wanted)
    count = int((pattern > 0).sum())
    if cell_r.size == 0:
        return probabilities.reshape(class_count, cells_r * stride, -1)[inner], pattern, 0, 0
    # each tile's first row/column in the outer pattern (the block with its margin)
    tile_r = margin - phase_r - lead + cell_r * stride
    tile_c = margin - phase_c - lead + cell_c * stride
    result, passes = _run_tiles(model, block, tile_r, tile_c, device, batch_size, patch,
                                reporter, slice(lead, lead + stride))
    probabilities[:, cell_r, :, cell_c, :] = result   # advanced indices first: (n, K, S, S)
    probabilities = probabilities.reshape(class_count, cells_r * stride,
                                          cells_c * stride)[inner]
    probabilities[:, pattern == 0] = np.nan
    return probabilities, pattern, count, passes


#: The block classifier of each ``ClassifyConfig.tile_blend`` (config.TILE_BLENDS).
TILE_CLASSIFIERS = {"central": classify_tiles_central, "weighted": classify_tiles_weighted}
