"""The grid a run classifies, its blocks, and reading them: GDAL reads with a halo, the
per-pixel missing pattern (window rule and mask), normalisation, and the windows the model
sees, gathered on the device."""
import math
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, osr

from .. import torch_compat
from ..devices import to_device
from ..errors import MamolInputError
from ..grid import (AlignedRaster, RasterInfo, ReferenceGrid, crs_label, reference_grid,
                    srs_from_wkt)
from ..model_file import ModelHeader
from ..raster_io import VECTOR_MEMORY_DRIVER
from ..value_range import FarTally
from ..windows import window_offset
from .config import ClassifyConfig, MaskSource

#: A block's place on the grid: (first column, first row, width, height) in pixels.
BlockWindow = Tuple[int, int, int, int]


def resolve_grid(config: ClassifyConfig, infos: Dict[str, RasterInfo],
                 order: Sequence[str]) -> Tuple[ReferenceGrid, ReferenceGrid, int, int]:
    """(output grid, full grid, column and row of the output grid's origin in the full
    grid). The output grid is the full grid cropped to the extent; windows near the crop's
    edges read the real pixels beyond it from the full grid."""
    first = config.reference or order[0]
    ordered = [infos[first]] + [infos[n] for n in order if n != first]
    grid = reference_grid(ordered)
    if config.pixel_size:
        width = max(1, int(math.ceil(grid.width * grid.pixel_width / config.pixel_size - 1e-9)))
        height = max(1, int(math.ceil(grid.height * grid.pixel_height / config.pixel_size
                                      - 1e-9)))
        grid = ReferenceGrid(grid.crs_wkt, grid.x_origin, grid.y_origin, config.pixel_size,
                             config.pixel_size, width, height)
    full, crop_col, crop_row = grid, 0, 0
    if config.extent is not None:
        bounds = config.extent
        if config.extent_crs_wkt and not srs_from_wkt(config.extent_crs_wkt).IsSame(
                srs_from_wkt(grid.crs_wkt)):
            transform = osr.CoordinateTransformation(srs_from_wkt(config.extent_crs_wkt),
                                                     srs_from_wkt(grid.crs_wkt))
            bounds = tuple(transform.TransformBounds(*bounds, 21))
        window = grid.pixel_window(bounds)
        if window is None:
            raise MamolInputError(
                f"The extent does not meet the {first} raster (in {crs_label(grid.crs_wkt)}). "
                "Give an extent inside the rasters.")
        crop_col, crop_row, col1, row1 = window
        grid = grid.subgrid(crop_col, crop_row, col1 - crop_col, row1 - crop_row)
    return grid, full, crop_col, crop_row


def block_windows(grid: ReferenceGrid, size: int) -> Iterator[BlockWindow]:
    """The grid's blocks of ``size`` px (smaller at the right and bottom edges), row by row."""
    for row0 in range(0, grid.height, size):
        for col0 in range(0, grid.width, size):
            yield col0, row0, min(size, grid.width - col0), min(size, grid.height - row0)


def anchors(start: int, length: int, stride: int, limit: int) -> np.ndarray:
    """For each pixel of [start, start + length) on an axis of ``limit`` pixels, the pixel
    classified for it: the centre of its stride cell (clipped to the axis)."""
    index = np.arange(start, start + length)
    return np.minimum(index - index % stride + stride // 2, limit - 1)


def window_presence(missing: np.ndarray, patch_size: int, threshold: float) -> np.ndarray:
    """(h, w) bool from a (h + P - 1, w + P - 1) missing mask: the modality is present at a
    pixel when its target pixel is valid and at most ``threshold`` of its window is missing
    (:func:`core.windows.modality_present`, for every pixel of a block at once)."""
    offset = window_offset(patch_size)
    height = missing.shape[0] - patch_size + 1
    width = missing.shape[1] - patch_size + 1
    integral = np.zeros((missing.shape[0] + 1, missing.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(missing, axis=0, dtype=np.int64), axis=1)
    p = patch_size
    counts = (integral[p:p + height, p:p + width] - integral[:height, p:p + width]
              - integral[p:p + height, :width] + integral[:height, :width])
    centre = missing[offset:offset + height, offset:offset + width]
    return ~centre & (counts <= threshold * p * p + 1e-9)


def open_mask(mask: MaskSource, grid: ReferenceGrid):
    """The mask polygons reprojected into an in-memory layer in the grid's CRS: (the
    in-memory dataset, which must outlive the layer, and the layer)."""
    try:
        source = gdal.OpenEx(mask.path, gdal.OF_VECTOR)
    except RuntimeError as exc:
        raise MamolInputError(f"Cannot read the mask layer '{mask.path}' ({exc}).") from exc
    options = gdal.VectorTranslateOptions(
        format=VECTOR_MEMORY_DRIVER, dstSRS=grid.crs_wkt,
        layers=[mask.layer] if mask.layer else None, geometryType="PROMOTE_TO_MULTI")
    memory = gdal.VectorTranslate("", source, options=options)
    layer = memory.GetLayer(0)
    if layer is None or layer.GetFeatureCount() == 0:
        raise MamolInputError(f"The mask layer '{mask.path}' has no polygons.")
    return memory, layer


def mask_block(mask_layer, grid: ReferenceGrid, col0: int, row0: int, width: int,
               height: int) -> np.ndarray:
    """(height, width) bool: which pixels of the window lie inside the mask polygons."""
    target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    sub = grid.subgrid(col0, row0, width, height)
    target.SetGeoTransform(sub.geotransform)
    target.SetSpatialRef(srs_from_wkt(grid.crs_wkt))
    gdal.RasterizeLayer(target, [1], mask_layer, burn_values=[1])
    return target.GetRasterBand(1).ReadAsArray().astype(bool)


@dataclass
class Block:
    """One block read and prepared on the host: where it lies, each pixel's modality
    pattern, its anchors and each modality's normalised bands with the halo."""

    col0: int
    row0: int
    width: int
    height: int
    pattern: np.ndarray                  # (height, width) int64 bitmask per pixel
    anchor_rows: np.ndarray              # grid row classified for each block row
    anchor_cols: np.ndarray
    bands: Dict[str, np.ndarray]         # name -> (bands, height + 2 margin + P - 1, ...)
    far: FarTally                        # the block's pixels against the training data
    margin: int = 0                      # extra pixels read on every side (tile models)
    outer_pattern: Optional[np.ndarray] = None  # pattern of the block with its margin


class BlockReader:
    """Reads and prepares blocks (GDAL reads, window rule, normalisation, mask) — the host
    work that runs in a background thread, one block ahead of the device. With a ``margin``
    the pattern and bands also cover ``margin`` pixels beyond every edge of a block (mirrored
    past the grid's edges, masked like the block), which a tile model's tiles reach into."""

    def __init__(self, config: ClassifyConfig, header: ModelHeader, grid: ReferenceGrid,
                 aligned: Dict[str, AlignedRaster], order: Sequence[str], crop: Tuple[int, int],
                 threshold: float, mask_layer, margin: int = 0) -> None:
        self.grid = grid
        self.aligned = aligned
        self.order = order
        self.crop = crop
        self.threshold = threshold
        self.mask_layer = mask_layer
        self.margin = margin
        self.stride = config.stride
        self.patch = header.patch_size
        self.bits = {m.name: bit for bit, m in enumerate(header.modalities)}
        self.stats = {m.name: (np.asarray(m.mean, np.float32)[:, None, None],
                               np.asarray(m.std, np.float32)[:, None, None])
                      for m in header.modalities}

    def read(self, col0: int, row0: int, width: int, height: int) -> Block:
        """The block at (col0, row0) of width x height pixels, with the reader's margin."""
        patch, offset, margin = self.patch, window_offset(self.patch), self.margin
        outer_h, outer_w = height + 2 * margin, width + 2 * margin
        pattern = np.zeros((outer_h, outer_w), dtype=np.int64)
        inner = (slice(margin, margin + height), slice(margin, margin + width))
        own_rows = slice(offset + margin, offset + margin + height)
        own_cols = slice(offset + margin, offset + margin + width)
        bands, valid = {}, {}
        for name in self.order:
            raw = self.aligned[name].read(self.crop[0] + col0 - margin - offset,
                                          self.crop[1] + row0 - margin - offset,
                                          outer_w + patch - 1, outer_h + patch - 1)
            present = window_presence(np.isnan(raw).any(axis=0), patch, self.threshold)
            pattern |= present.astype(np.int64) << self.bits[name]
            mean, std = self.stats[name]
            own = raw[:, own_rows, own_cols]
            valid[name] = np.isfinite(own).all(axis=0)
            bands[name] = np.nan_to_num((raw - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
        if self.mask_layer is not None:
            inside = mask_block(self.mask_layer, self.grid, col0 - margin, row0 - margin,
                                outer_w, outer_h)
            pattern[~inside] = 0
        outer_pattern = pattern
        pattern = outer_pattern[inner] if margin else outer_pattern
        far = FarTally(self.order)
        for name, finite in valid.items():
            # Pixels where the model uses this modality (present, inside the mask) count.
            counted = finite & (((pattern >> self.bits[name]) & 1) > 0)
            own = bands[name][:, own_rows, own_cols]
            far.add(name, own[:, counted])
        # Anchor pixels (the ones classified) of this block, in grid coords; with stride 1
        # every pixel is its own anchor. Anchors lie inside the block because blocks are
        # whole multiples of the stride.
        return Block(col0, row0, width, height, pattern,
                     anchors(row0, height, self.stride, self.grid.height),
                     anchors(col0, width, self.stride, self.grid.width), bands, far,
                     margin, outer_pattern)


class BlockStream:
    """The blocks at ``windows``, in order, each read in ``executor``'s thread while the
    caller works on the one before (the first read starts at once)."""

    def __init__(self, reader: BlockReader, executor: Executor,
                 windows: Sequence[BlockWindow]) -> None:
        self.reader = reader
        self.executor = executor
        self.windows = windows
        self.taken = 0
        self.pending = executor.submit(reader.read, *windows[0]) if windows else None

    def next(self) -> Block:
        """The next block (waiting for its read), after starting the read of the one after."""
        current = self.pending.result()
        self.taken += 1
        self.pending = (self.executor.submit(self.reader.read, *self.windows[self.taken])
                        if self.taken < len(self.windows) else None)
        return current


def device_bands(block: Block, device) -> Dict[str, Any]:
    """Each modality's normalised bands of ``block`` as a tensor on ``device``."""
    torch = torch_compat.import_torch()
    return {name: to_device(torch.from_numpy(bands), device)
            for name, bands in block.bands.items()}


def device_windows(bands: Dict[str, Any], rows, cols, ramp) -> Dict[str, Any]:
    """Each modality's (n, bands, P, P) windows of the device ``bands``, the n windows'
    first rows and columns being ``rows`` and ``cols`` (device tensors; ``ramp`` is
    ``arange(P)`` on the device): tensor indexing, no per-window loop."""
    window_rows = (rows[:, None] + ramp[None, :])[:, :, None]
    window_cols = (cols[:, None] + ramp[None, :])[:, None, :]
    return {name: tensor[:, window_rows, window_cols].permute(1, 0, 2, 3)
            for name, tensor in bands.items()}
