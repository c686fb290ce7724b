"""Classify a scene with a MaMOL model file (DESIGN §4): the one core call behind
``mamol:classify``.

* **Grid.** The reference grid is the grid of one given raster (by default the first in
  the model's modality order), optionally resampled to another pixel size and cropped to
  an extent (windows near the crop's edges still read the real pixels beyond it). Every
  modality is aligned onto it through GDAL VRTs (:mod:`core.grid`).
* **Per-pixel missing pattern.** A modality is missing at a pixel when it was not given,
  the pixel is outside its coverage or nodata/non-finite, or more than the model's
  ``max_missing_fraction`` of the pixel's window is (the rule training used,
  :mod:`core.windows`). Pixels with no valid modality, or outside the mask, are nodata.
* **Streaming.** The grid is processed in square blocks; each modality is read with a halo
  of P/2 (mirrored at the grid's edges), so results do not depend on the block size and
  nothing is stitched. Blocks are written as they finish; memory is bounded by one block
  plus GDAL's block cache, which is capped for the run (``gdal_cache_mb``, 256 MiB), so it
  does not grow with the scene.
* **Compute.** A block's normalised bands go to the device once; windows are gathered
  there with tensor indexing (no per-pixel Python loop) and classified in batches; the
  block's probabilities stay on the device until the block is done, so the host waits for
  the GPU once per block, not once per batch. The next block is read and prepared in a
  background thread while the device works on the current one. On CUDA the frozen tower
  holds bf16 weights (``precision``); batch and block sizes follow free GPU memory unless
  given. The model runs the encoder only for (pixel, modality) pairs present. With a
  stride s only the centre pixel of each s×s cell is classified and the cell takes its
  result (nearest upsampling), for fast previews.
* **Tile models** (issue 17). A model of the tile kind labels every pixel of a P×P tile in
  one pass per modality. Tiles overlap on a lattice of the full grid (every S pixels,
  ``tile_step``; by default P − 2·(P // 7), 10 for P = 14) and each pixel takes the
  prediction of the tile in whose central S×S cell it lies
  (:func:`core.windows.tile_layout`); blocks read a further halo of P − 1 pixels
  (:func:`core.windows.tile_halo`), so results do not depend on the block size or the
  extent. The per-pixel missing pattern is the same rule as above; a tile's pass of a
  modality runs when the modality is present at any of its pixels. Stride must be 1.
* **Unfamiliar input.** Per modality, the share of classified pixels whose values lie far
  from the training data (:mod:`core.value_range`) is logged, written into the class
  raster's metadata (``MAMOL_FAR_SHARE_<MODALITY>``) and warned about above 5 %; the run
  never refuses.

All outputs are written under hidden names and moved into place only when complete.
"""
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, osr

from . import torch_compat
from .class_style import apply_legend, qml_path, write_qml
from .devices import (CPU_BLOCK_SIZE, CPU_INFERENCE_BATCH, GPU_BLOCK_SIZE,
                      auto_block_size, compile_field, device_field, dtype_name,
                      model_inference_batch, parse_compile_mode, parse_precision,
                      precision_field, prepare_model, resolve_device, to_device)
from .disk import ensure_writable_folder
from .distributed import SINGLE, World
from .errors import MamolInputError
from .options import choices, option
from .feedback import CancelCheck, ProgressCallback, Reporter
from .grid import (AlignedRaster, Bounds, RasterInfo, ReferenceGrid, crs_label,
                   inspect_raster, modality_label, reference_grid, srs_from_wkt)
from .model_file import ModelHeader, check_inputs, load_model, read_header
from .raster_io import (DEFAULT_GDAL_CACHE_MB, VECTOR_MEMORY_DRIVER, close_datasets,
                        create_geotiff, gdal_cache_limit)
from .staging import staged_files
from .value_range import FarTally
from .windows import (DEFAULT_MAX_MISSING_FRACTION, max_missing_fraction_field, tile_halo,
                      tile_layout, window_offset)

LOG = logging.getLogger(__name__)

FLOAT_NODATA = -1.0  # probabilities, confidence and entropy are in [0, 1]
#: How a tile model's overlapping tiles give a pixel its class: from the tile where the pixel
#: is most central (the default), or the covering tiles averaged, weighted towards centres.
TILE_BLENDS = ("central", "weighted")


@dataclass(frozen=True)
class MaskSource:
    """Polygons outside which nothing is classified."""

    path: str
    layer: Optional[str] = None


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything one classification run needs."""

    model_path: str
    rasters: Tuple[Tuple[str, str], ...]       # (modality name, raster path)
    output_classes: str                        # class raster (GeoTIFF) + .qml next to it
    output_probabilities: Optional[str] = None  # K float32 bands
    output_confidence: Optional[str] = None    # max probability
    output_entropy: Optional[str] = None       # entropy / log K, in [0, 1]
    output_modalities: Optional[str] = None    # bitmask of the modalities used per pixel
    reference: Optional[str] = None            # modality whose grid is used; None = first
    pixel_size: float = option(
        0.0, flag="--pixel-size", key="PIXEL_SIZE",
        label="Output pixel size (0 = the reference raster's)", minimum=0.0, advanced=True,
        help="In the reference raster's CRS units.")
    extent: Optional[Bounds] = None            # in the reference raster's CRS
    extent_crs_wkt: Optional[str] = None       # CRS of ``extent`` if not the grid's
    mask: Optional[MaskSource] = None
    max_missing_fraction: Optional[float] = max_missing_fraction_field()
    stride: int = option(
        1, flag="--stride", key="STRIDE", label="Prediction stride", minimum=1, maximum=64,
        advanced=True,
        help="Classify every s-th pixel in each direction and fill its s×s cell (preview).")
    block_size: int = option(
        0, flag="--block-size", key="BLOCK_SIZE", label="Block size (pixels, 0 = automatic)",
        minimum=0, maximum=8192, advanced=True,
        help=f"Pixels per side of a processing block (16 or more); memory, not results. "
             f"Automatic: {GPU_BLOCK_SIZE} on a GPU, {CPU_BLOCK_SIZE} on the CPU.")
    batch_size: int = option(
        0, flag="--batch-size", key="BATCH_SIZE", label="Batch size (0 = automatic)",
        minimum=0, maximum=65536, advanced=True,
        help=f"Pixels per model call. Automatic: from free GPU memory on a GPU, "
             f"{CPU_INFERENCE_BATCH} on the CPU.")
    gdal_cache_mb: int = option(
        DEFAULT_GDAL_CACHE_MB, flag="--gdal-cache-mb", key="GDAL_CACHE",
        label="GDAL block cache for the run (MiB)", minimum=16, maximum=65536, advanced=True,
        help="GDAL keeps the raster blocks it reads and writes in one cache; it is capped at "
             "this size while the run lasts (QGIS's own setting is restored afterwards), so "
             "memory does not grow with the scene. More rarely helps: blocks are read in "
             "order.")
    device: str = device_field()
    precision: str = precision_field()     # frozen tower: auto (bf16 on CUDA) | fp32 | bf16
    compile_mode: str = compile_field()    # torch.compile: off | default | max-autotune
    tile_blend: str = option(
        TILE_BLENDS[0], flag="--tile-blend", key="TILE_BLEND",
        label="Tile models: where a pixel's class comes from", advanced=True,
        choices=choices(TILE_BLENDS, ("The tile where the pixel is most central",
                                      "The covering tiles, weighted towards their centres")),
        help="For models of the tile kind: take each pixel from the tile where it is most "
             "central, or average the covering tiles weighted towards their centres.")
    tile_step: int = option(
        0, flag="--tile-step", key="TILE_STEP",
        label="Tile models: tile step (pixels, 0 = automatic)", minimum=0, maximum=1024,
        advanced=True,
        help="For models of the tile kind: start a tile every N pixels (automatic: "
             "P − 2·(P // 7), 10 for P = 14; at most P). Larger is faster; each pixel then "
             "sits nearer its tile's edge.")
    cog: bool = option(
        False, flag="--cog", key="COG", label="Write Cloud-Optimized GeoTIFFs", advanced=True,
        help="Every output as a COG with internal overviews, for serving over HTTP or object "
             "storage.")

    def validate(self) -> None:
        if not self.rasters:
            raise MamolInputError("Give at least one raster to classify.")
        names = [name for name, _ in self.rasters]
        if len(set(names)) != len(names):
            raise MamolInputError(f"Each modality may be given once, got {names}.")
        if self.stride < 1:
            raise MamolInputError(f"The stride must be at least 1, got {self.stride}.")
        if self.block_size != 0 and self.block_size < 16:
            raise MamolInputError(
                f"The block size must be 0 (automatic) or at least 16, got {self.block_size}.")
        if self.gdal_cache_mb < 16:
            raise MamolInputError(
                f"GDAL's block cache needs at least 16 MiB, got {self.gdal_cache_mb}.")
        if self.batch_size < 0:
            raise MamolInputError(
                f"The batch size must be 0 (automatic) or positive, got {self.batch_size}.")
        if self.pixel_size < 0:
            raise MamolInputError("The pixel size must be 0 (the raster's) or positive.")
        if self.max_missing_fraction is not None and not 0 <= self.max_missing_fraction <= 1:
            raise MamolInputError("The missing fraction of a window must be in [0, 1].")
        if self.reference is not None and self.reference not in names:
            raise MamolInputError(
                f"The reference grid comes from '{self.reference}', but no such raster was "
                "given.")
        parse_precision(self.precision)
        parse_compile_mode(self.compile_mode)
        if self.tile_step < 0:
            raise MamolInputError(
                f"The tile step must be 0 (automatic) or positive, got {self.tile_step}.")
        if self.tile_blend not in TILE_BLENDS:
            raise MamolInputError(
                f"Tile blending is 'central' or 'weighted', got '{self.tile_blend}'.")


@dataclass
class ClassifyResult:
    outputs: Dict[str, Path]            # output key -> path
    grid: ReferenceGrid
    class_counts: Dict[int, int]        # class value -> pixels
    class_names: Dict[int, str]         # class value -> name
    far_shares: Dict[str, Optional[float]]  # modality -> share of its pixels far from training
    pattern_counts: Dict[int, int]      # modalities-used code -> pixels (0 = none)
    seconds: float
    pixels_per_second: float            # classified (target) pixels per second
    encoder_passes: Optional[int] = None  # tile models: (tile, modality) passes run


def class_nodata(values: Sequence[int]) -> Tuple[np.dtype, int]:
    """The class raster's data type and nodata value (never a class value)."""
    if max(values) <= 254:
        return np.dtype(np.uint8), 255
    return np.dtype(np.uint16), 65535


def _resolve_grid(config: ClassifyConfig, infos: Dict[str, RasterInfo],
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


class _Outputs:
    """The output GeoTIFFs, open for block writes."""

    def __init__(self, config: ClassifyConfig, header: ModelHeader, grid: ReferenceGrid,
                 paths: Dict[str, Path]) -> None:
        srs = srs_from_wkt(grid.crs_wkt)
        values = [c.value for c in header.classes]
        self.dtype, self.nodata = class_nodata(values)
        self.datasets: Dict[str, gdal.Dataset] = {}
        gt = grid.geotransform
        self.datasets["classes"] = create_geotiff(
            paths["classes"], grid.width, grid.height, 1, self.dtype, gt, srs,
            nodata=self.nodata, band_names=["land cover class"])
        if "probabilities" in paths:
            self.datasets["probabilities"] = create_geotiff(
                paths["probabilities"], grid.width, grid.height, len(values), np.float32, gt,
                srs, nodata=FLOAT_NODATA,
                band_names=[f"P({c.name})" for c in header.classes])
        if "confidence" in paths:
            self.datasets["confidence"] = create_geotiff(
                paths["confidence"], grid.width, grid.height, 1, np.float32, gt, srs,
                nodata=FLOAT_NODATA, band_names=["confidence (max probability)"])
        if "entropy" in paths:
            self.datasets["entropy"] = create_geotiff(
                paths["entropy"], grid.width, grid.height, 1, np.float32, gt, srs,
                nodata=FLOAT_NODATA, band_names=["normalised entropy"])
        if "modalities" in paths:
            names = [m.name for m in header.modalities]
            dataset = create_geotiff(
                paths["modalities"], grid.width, grid.height, 1, np.uint8, gt, srs,
                band_names=["modalities used (bitmask)"])
            dataset.GetRasterBand(1).SetMetadata(
                {f"BIT_{bit}": name for bit, name in enumerate(names)})
            self.datasets["modalities"] = dataset
        apply_legend(self.datasets["classes"].GetRasterBand(1), header.classes)

    def write(self, key: str, array: np.ndarray, col0: int, row0: int) -> None:
        if key not in self.datasets:
            return
        # No local name for the dataset: a failed write's traceback would keep it alive
        # past close() (see raster_io.close_datasets).
        planes = array[None] if array.ndim == 2 else array
        for band in range(planes.shape[0]):
            self.datasets[key].GetRasterBand(band + 1).WriteArray(planes[band], col0, row0)

    def record_far_shares(self, shares: Dict[str, Optional[float]]) -> None:
        """Keep each modality's share of far pixels in the class raster's metadata."""
        for name, share in shares.items():
            self.datasets["classes"].SetMetadataItem(
                f"MAMOL_FAR_SHARE_{name.upper()}", "none" if share is None else f"{share:.6f}")

    def close(self) -> None:
        close_datasets(self.datasets)


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


def _mask_block(mask_layer, grid: ReferenceGrid, col0: int, row0: int, width: int,
                height: int) -> np.ndarray:
    target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    sub = grid.subgrid(col0, row0, width, height)
    target.SetGeoTransform(sub.geotransform)
    target.SetSpatialRef(srs_from_wkt(grid.crs_wkt))
    gdal.RasterizeLayer(target, [1], mask_layer, burn_values=[1])
    return target.GetRasterBand(1).ReadAsArray().astype(bool)


def _open_mask(mask: MaskSource, grid: ReferenceGrid):
    """The mask polygons reprojected into an in-memory layer in the grid's CRS."""
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


def _output_paths(config: ClassifyConfig) -> Dict[str, Path]:
    paths = {"classes": Path(config.output_classes)}
    for key, value in (("probabilities", config.output_probabilities),
                       ("confidence", config.output_confidence),
                       ("entropy", config.output_entropy),
                       ("modalities", config.output_modalities)):
        if value:
            paths[key] = Path(value)
    return paths


def _blocks(grid: ReferenceGrid, size: int):
    for row0 in range(0, grid.height, size):
        for col0 in range(0, grid.width, size):
            yield col0, row0, min(size, grid.width - col0), min(size, grid.height - row0)


def _anchors(start: int, length: int, stride: int, limit: int) -> np.ndarray:
    """For each pixel of [start, start + length) on an axis of ``limit`` pixels, the pixel
    classified for it: the centre of its stride cell (clipped to the axis)."""
    index = np.arange(start, start + length)
    return np.minimum(index - index % stride + stride // 2, limit - 1)


@dataclass
class _Block:
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


class _BlockReader:
    """Reads and prepares blocks (GDAL reads, window rule, normalisation, mask) — the host
    work that runs in a background thread, one block ahead of the device."""

    def __init__(self, config: ClassifyConfig, header: ModelHeader, grid: ReferenceGrid,
                 aligned: Dict[str, AlignedRaster], order: Sequence[str], crop: Tuple[int, int],
                 threshold: float, mask_layer) -> None:
        self.grid = grid
        self.aligned = aligned
        self.order = order
        self.crop = crop
        self.threshold = threshold
        self.mask_layer = mask_layer
        self.stride = config.stride
        self.patch = header.patch_size
        self.bits = {m.name: bit for bit, m in enumerate(header.modalities)}
        self.stats = {m.name: (np.asarray(m.mean, np.float32)[:, None, None],
                               np.asarray(m.std, np.float32)[:, None, None])
                      for m in header.modalities}

    def read(self, col0: int, row0: int, width: int, height: int, margin: int = 0) -> _Block:
        """The block at (col0, row0) of width x height pixels; with a ``margin`` the pattern
        and bands also cover ``margin`` pixels beyond every edge (mirrored past the grid's
        edges, masked like the block), which a tile model's tiles reach into."""
        patch, offset = self.patch, window_offset(self.patch)
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
            inside = _mask_block(self.mask_layer, self.grid, col0 - margin, row0 - margin,
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
        return _Block(col0, row0, width, height, pattern,
                      _anchors(row0, height, self.stride, self.grid.height),
                      _anchors(col0, width, self.stride, self.grid.width), bands, far,
                      margin, outer_pattern)


def _classify_block(model, block: _Block, device, batch_size: int, patch: int,
                    class_count: int, reporter: Reporter):
    """(probabilities (K, h, w) float32 with NaN where not classified, pattern of the
    anchors (h, w), number classified) for one block. The device is waited for once."""
    torch = torch_compat.import_torch()
    height, width, pattern = block.height, block.width, block.pattern
    row0, col0 = block.row0, block.col0
    selectable = np.zeros((height, width), dtype=bool)
    selectable[np.ix_(np.unique(block.anchor_rows) - row0,
                      np.unique(block.anchor_cols) - col0)] = True
    selectable &= pattern > 0
    a_rows = (block.anchor_rows - row0)[:, None]
    a_cols = (block.anchor_cols - col0)[None, :]
    anchor_pattern = np.where(selectable, pattern, 0)[a_rows, a_cols]
    todo_r, todo_c = np.nonzero(selectable)
    probabilities = np.full((class_count, height, width), np.nan, dtype=np.float32)
    if todo_r.size == 0:
        return probabilities[:, a_rows, a_cols], anchor_pattern, 0
    tensors = {name: to_device(torch.from_numpy(bands), device)
               for name, bands in block.bands.items()}
    rows_all = to_device(torch.from_numpy(todo_r), device)
    cols_all = to_device(torch.from_numpy(todo_c), device)
    codes_all = torch.from_numpy(pattern[todo_r, todo_c])
    ramp = torch.arange(patch, device=device)
    results = []
    with torch.no_grad():
        for start in range(0, todo_r.size, batch_size):
            reporter.step(start, todo_r.size)
            stop = start + batch_size
            window_rows = (rows_all[start:stop, None] + ramp[None, :])[:, :, None]
            window_cols = (cols_all[start:stop, None] + ramp[None, :])[:, None, :]
            windows = {name: tensor[:, window_rows, window_cols].permute(1, 0, 2, 3)
                       for name, tensor in tensors.items()}
            logits = model(windows, codes_all[start:stop])
            results.append(torch.softmax(logits, dim=1))
    result = torch.cat(results).cpu().numpy()     # the one wait for the device per block
    probabilities[:, todo_r, todo_c] = result.T
    return probabilities[:, a_rows, a_cols], anchor_pattern, int(todo_r.size)


def _run_tiles(model, block: _Block, tile_r: np.ndarray, tile_c: np.ndarray, device,
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
    tensors = {name: to_device(torch.from_numpy(bands), device)
               for name, bands in block.bands.items()}
    offset = window_offset(patch)    # the bands reach the window halo beyond the margin
    rows_all = to_device(torch.from_numpy(tile_r + offset), device)
    cols_all = to_device(torch.from_numpy(tile_c + offset), device)
    ramp_device = torch.arange(patch, device=device)
    results, passes = [], 0
    with torch.no_grad():
        for start in range(0, tile_r.size, batch_size):
            reporter.step(start, tile_r.size)
            stop = start + batch_size
            window_rows = (rows_all[start:stop, None] + ramp_device[None, :])[:, :, None]
            window_cols = (cols_all[start:stop, None] + ramp_device[None, :])[:, None, :]
            windows = {name: tensor[:, window_rows, window_cols].permute(1, 0, 2, 3)
                       for name, tensor in tensors.items()}
            codes = pixel_patterns[start:stop]
            passes += sum(bin(int(code)).count("1") for code in model.tile_pattern(codes))
            logits = model.forward_tiles(windows, codes)
            results.append(torch.softmax(logits[:, :, keep, keep], dim=1))
    return torch.cat(results).cpu().numpy(), passes


def tile_weights(patch_size: int) -> np.ndarray:
    """(P, P) float64 weights of a tile's pixels when overlapping tiles are averaged: a tent
    in each axis, highest at the tile's centre, (P + 1) / 2 - |d - (P - 1) / 2| at distance
    d from its first row/column (never zero inside the tile)."""
    d = np.arange(patch_size)
    tent = (patch_size + 1) / 2 - np.abs(d - (patch_size - 1) / 2)
    return np.outer(tent, tent)


def _classify_tiles_weighted(model, block: _Block, phase: Tuple[int, int], device,
                             batch_size: int, patch: int, class_count: int,
                             reporter: Reporter, step: int = 0):
    """As :func:`_classify_tiles`, but each pixel's probabilities are the average of every
    lattice tile covering it, weighted by :func:`tile_weights` (centre-weighted blending).
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


def _classify_tiles(model, block: _Block, phase: Tuple[int, int], device, batch_size: int,
                    patch: int, class_count: int, reporter: Reporter, step: int = 0):
    """The tile model kind's :func:`_classify_block`: (probabilities (K, h, w) float32, NaN
    where not classified, the pixels' pattern (h, w), number classified, encoder passes).

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


class _RunTally:
    """What a run counts over its blocks (per rank, summed over ranks at the end)."""

    def __init__(self, class_count: int, pattern_codes: int, order: Sequence[str]) -> None:
        self.class_counts = np.zeros(class_count, dtype=np.int64)
        self.pattern_counts = np.zeros(pattern_codes, dtype=np.int64)
        self.classified = 0
        self.passes = 0
        self.far = FarTally(order)

    def merge(self, other: "_RunTally") -> None:
        self.class_counts += other.class_counts
        self.pattern_counts += other.pattern_counts
        self.classified += other.classified
        self.passes += other.passes
        self.far.merge(other.far)


#: Overview resampling of each output in a Cloud-Optimized GeoTIFF: classes and bitmasks
#: keep real values (nearest), the continuous outputs are averaged.
COG_RESAMPLING = {"classes": "NEAREST", "modalities": "NEAREST", "probabilities": "AVERAGE",
                  "confidence": "AVERAGE", "entropy": "AVERAGE"}


def write_cog(path: Path, resampling: str = "NEAREST") -> None:
    """Rewrite the finished GeoTIFF at ``path`` in place as a Cloud-Optimized GeoTIFF (GDAL's
    COG driver: 256 px tiles, DEFLATE, internal overviews made with ``resampling``). The
    colour table, nodata, band names and metadata come along; a ``.aux.xml`` sidecar
    (category names) is moved next to ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".cog")
    options = gdal.TranslateOptions(format="COG", creationOptions=[
        "COMPRESS=DEFLATE", "PREDICTOR=YES", "BLOCKSIZE=256", "BIGTIFF=IF_SAFER",
        f"RESAMPLING={resampling}"])
    try:
        if gdal.Translate(str(temporary), str(path), options=options) is None:
            raise RuntimeError(f"GDAL could not write a COG from {path}")
        os.replace(temporary, path)
        sidecar, old = Path(str(temporary) + ".aux.xml"), Path(str(path) + ".aux.xml")
        if sidecar.exists():
            os.replace(sidecar, old)
        elif old.exists():
            old.unlink()
    finally:
        for leftover in (temporary, Path(str(temporary) + ".aux.xml")):
            if leftover.exists():
                leftover.unlink()


#: Prefix of the hidden folder where the ranks of a torchrun classification write their
#: part files, next to the class raster; rank 0 removes it after assembling the outputs.
PARTS_PREFIX = ".mamol-parts-"


class _Parts:
    """One rank's part files: a full-grid, sparse, tiled GeoTIFF per output, holding this
    rank's blocks only (unwritten tiles take no space)."""

    def __init__(self, folder: Path, rank: int, outputs: Dict[str, Tuple[np.dtype, int, float]],
                 grid: ReferenceGrid) -> None:
        self.paths = {key: folder / f"rank{rank:05d}-{key}.tif" for key in outputs}
        self.datasets: Dict[str, gdal.Dataset] = {}
        driver = gdal.GetDriverByName("GTiff")
        for key, (dtype, bands, nodata) in outputs.items():
            dataset = driver.Create(str(self.paths[key]), grid.width, grid.height, bands,
                                    gdal_type(dtype), ["TILED=YES", "BLOCKXSIZE=256",
                                                       "BLOCKYSIZE=256", "SPARSE_OK=TRUE",
                                                       "COMPRESS=LZW", "BIGTIFF=IF_SAFER"])
            self.datasets[key] = dataset

    def write(self, key: str, array: np.ndarray, col0: int, row0: int) -> None:
        planes = array[None] if array.ndim == 2 else array
        for band in range(planes.shape[0]):
            self.datasets[key].GetRasterBand(band + 1).WriteArray(planes[band], col0, row0)

    def close(self) -> None:
        close_datasets(self.datasets)

    def remove(self) -> None:
        """Delete this rank's part files. Rank 0 may be removing the whole folder at the
        same moment (every rank reaches this together after the last stage), so a file
        that is already gone is not an error."""
        self.close()
        for path in self.paths.values():
            for leftover in (path, Path(str(path) + ".aux.xml")):
                leftover.unlink(missing_ok=True)


def gdal_type(dtype: np.dtype) -> int:
    from .raster_io import _GDAL_TYPES
    return _GDAL_TYPES[np.dtype(dtype)]


def classify(config: ClassifyConfig, progress: Optional[ProgressCallback] = None,
             is_cancelled: Optional[CancelCheck] = None,
             log: Optional[Callable[[str], None]] = None,
             warn: Optional[Callable[[str], None]] = None,
             world: Optional[World] = None) -> ClassifyResult:
    """Classify the scene ``config`` describes and write the outputs (see the module
    docstring); ``log`` receives progress lines, ``warn`` warnings. Raises
    :class:`MamolInputError` for bad input before any heavy work, and :class:`Cancelled`
    (nothing written) when ``is_cancelled`` turns true.

    Under torchrun (``world`` of several ranks, :mod:`core.distributed`) the blocks are
    dealt round-robin to the ranks; each writes its blocks into its own part files in a
    hidden folder next to the class raster, and rank 0 assembles the outputs once every
    rank is done. A failure on any rank fails the run on every rank, and no output and no
    part file is left behind. The outputs are bit-identical to a single process's."""
    import time

    world = world or SINGLE
    torch_compat.import_torch()  # fail before any work if PyTorch is missing
    reporter = Reporter(progress, is_cancelled)
    say = log or LOG.info
    caution = warn or LOG.warning
    with world.agreed():   # every rank checks the inputs; one that cannot read them stops all
        config.validate()
        given = dict(config.rasters)
        header = read_header(Path(config.model_path))
        infos = {name: inspect_raster(path, modality_label(name))
                 for name, path in config.rasters}
        check_inputs(header, {name: info.bands for name, info in infos.items()})
        order = [m.name for m in header.modalities if m.name in given]
        missing_modalities = [m.name for m in header.modalities if m.name not in given]
        device = world.device if world.distributed else resolve_device(config.device)
        grid, full_grid, crop_col, crop_row = _resolve_grid(config, infos, order)
        stride = config.stride
        tiled = header.model_kind == "tile"
        if tiled and stride > 1:
            raise MamolInputError(
                "A stride is for models of the pixel kind; a tile model labels every pixel "
                "of each tile in one pass. Use stride 1.")
        if tiled and config.tile_step > header.patch_size:
            raise MamolInputError(
                f"The tile step must be at most the tile size, {header.patch_size} px; "
                f"got {config.tile_step}.")
        if not tiled and config.tile_step:
            raise MamolInputError("A tile step is for models of the tile kind; this model "
                                  "classifies pixel by pixel.")
        margin = tile_halo(header.patch_size) if tiled else 0
        # Blocks are whole multiples of the stride, or of a tile model's lattice step, so
        # that no lattice cell is split between blocks (its tile would run twice) unless a
        # crop shifts the lattice; results never depend on it.
        unit = tile_layout(header.patch_size, config.tile_step)[0] if tiled else stride
        block_size = config.block_size or auto_block_size(device)
        block = max(unit, block_size - block_size % unit)
        threshold = (config.max_missing_fraction if config.max_missing_fraction is not None
                     else float(header.training.get("max_missing_fraction",
                                                    DEFAULT_MAX_MISSING_FRACTION)))
        paths = _output_paths(config)
        if world.distributed:
            for final in paths.values():
                ensure_writable_folder(final.parent)
        model, header = load_model(Path(config.model_path), log=say)
        model = prepare_model(model, device, config.precision, config.compile_mode).eval()
        batch_size = config.batch_size or model_inference_batch(model, device,
                                                                header.patch_size)
    # Every rank deals the same blocks and batches them the same way: rank 0's sizes.
    block, batch_size = world.broadcast((block, batch_size))
    blocks = list(_blocks(grid, block))
    if world.size > len(blocks):
        raise MamolInputError(
            f"{world.size} processes but the grid has only {len(blocks)} block(s) of "
            f"{block} px: start at most {len(blocks)} processes, or give a smaller "
            "--block-size.")
    patch = header.patch_size
    tile_stride = tile_layout(patch, config.tile_step)[0]
    blend = _classify_tiles_weighted if config.tile_blend == "weighted" else _classify_tiles
    say(f"Grid: {grid.width} × {grid.height} pixels of {grid.pixel_width:g} × "
        f"{grid.pixel_height:g} ({crs_label(grid.crs_wkt)}), blocks of {block} px, "
        f"batches of {batch_size}, device {device} "
        f"({dtype_name(model.compute_dtype)})"
        + (f", stride {stride}" if stride > 1 else "")
        + (f", tiles of {patch} px every {tile_stride} px" if tiled else "")
        + (f", {world.size} processes ({world.backend})" if world.distributed else ""))
    if missing_modalities:
        say("Not given (missing everywhere): " + ", ".join(missing_modalities))
    values = np.array([c.value for c in header.classes])
    class_count = len(values)
    log_k = math.log(class_count)
    dtype, nodata = class_nodata(values)
    tally = _RunTally(class_count, 2 ** len(header.modalities), order)

    def compute(current: _Block) -> Dict[str, np.ndarray]:
        """One block's output arrays (only those asked for), counted into ``tally``."""
        if tiled:
            pixel_probabilities, anchor_pattern, count, block_passes = blend(
                model, current, ((crop_col + current.col0) % tile_stride,
                                 (crop_row + current.row0) % tile_stride), device,
                batch_size, patch, class_count, reporter, config.tile_step)
            tally.passes += block_passes
        else:
            pixel_probabilities, anchor_pattern, count = _classify_block(
                model, current, device, batch_size, patch, class_count, reporter)
        # Upsample anchors to pixels; nodata where the pixel has no modality.
        valid = (current.pattern > 0) & (anchor_pattern > 0)
        index = np.argmax(np.nan_to_num(pixel_probabilities, nan=-1.0), axis=0)
        arrays = {"classes": np.where(valid, values[index], nodata).astype(dtype)}
        if "probabilities" in paths:
            arrays["probabilities"] = np.where(
                valid[None], pixel_probabilities, FLOAT_NODATA).astype(np.float32)
        if "confidence" in paths:
            arrays["confidence"] = np.where(
                valid, pixel_probabilities.max(axis=0, initial=0.0),
                FLOAT_NODATA).astype(np.float32)
        if "entropy" in paths:
            p = np.clip(np.nan_to_num(pixel_probabilities, nan=1.0), 1e-12, 1.0)
            entropy = -(p * np.log(p)).sum(axis=0) / log_k if log_k else p[0] * 0
            arrays["entropy"] = np.where(valid, entropy, FLOAT_NODATA).astype(np.float32)
        used = np.where(valid, anchor_pattern, 0)
        if "modalities" in paths:
            arrays["modalities"] = used.astype(np.uint8)
        tally.class_counts += np.bincount(index[valid], minlength=class_count)
        tally.pattern_counts += np.bincount(used.ravel(), minlength=tally.pattern_counts.size)
        tally.classified += count
        tally.far.merge(current.far)
        return arrays

    mask_handle = _open_mask(config.mask, grid) if config.mask else (None, None)
    started = time.perf_counter()
    # GDAL's block cache is capped for the run, so memory does not grow with the scene.
    with gdal_cache_limit(config.gdal_cache_mb):
        aligned = {name: AlignedRaster(infos[name], full_grid) for name in order}
        reader = _BlockReader(config, header, grid, aligned, order, (crop_col, crop_row),
                              threshold, mask_handle[1])
        # One thread reads block n + 1 while the device classifies block n; it alone touches
        # the GDAL datasets and the mask layer.
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mamol-read")
        try:
            if world.distributed:
                _classify_sharded(world, config, header, grid, paths, blocks, compute, tally,
                                  reader, prefetch, margin, reporter, (dtype, nodata))
            else:
                _classify_here(config, header, grid, paths, blocks, compute, tally, reader,
                               prefetch, margin, reporter)
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            for raster in aligned.values():
                raster.close()
    seconds = time.perf_counter() - started
    classified, passes = tally.classified, tally.passes
    say(f"Classified {classified} pixels in {seconds:.1f} s "
        f"({classified / max(seconds, 1e-9):.0f} pixels/s)"
        + (f", {passes} encoder passes ({passes / max(classified, 1):.3f} per pixel)."
           if tiled else "."))
    say(tally.far.line())
    for message in tally.far.warnings():
        caution(message)
    outputs_written = dict(paths)
    outputs_written["style"] = qml_path(paths["classes"])
    return ClassifyResult(
        outputs=outputs_written, grid=grid,
        class_counts={int(v): int(n) for v, n in zip(values, tally.class_counts)},
        class_names={c.value: c.name for c in header.classes},
        far_shares=tally.far.shares(),
        pattern_counts={code: int(n) for code, n in enumerate(tally.pattern_counts) if n},
        seconds=seconds, pixels_per_second=classified / max(seconds, 1e-9),
        encoder_passes=passes if tiled else None)


def _finish_outputs(config: ClassifyConfig, header: ModelHeader, outputs: "_Outputs",
                    staged: Dict[Path, Path], paths: Dict[str, Path],
                    tally: _RunTally) -> None:
    """The last steps on the staged outputs: far shares, close, optional COG, style."""
    try:
        outputs.record_far_shares(tally.far.shares())
    finally:
        outputs.close()
    if config.cog:
        for key, final in paths.items():
            write_cog(staged[final], COG_RESAMPLING[key])
    write_qml(staged[qml_path(paths["classes"])], header.classes, outputs.nodata)


def _uncompressed_bytes(grid, paths: Dict[str, Path], header: ModelHeader) -> int:
    """What the outputs asked for take before compression (for the free-space check)."""
    dtype, _ = class_nodata(np.array([c.value for c in header.classes]))
    per_pixel = {"classes": np.dtype(dtype).itemsize, "probabilities": 4 * len(header.classes),
                 "confidence": 4, "entropy": 4, "modalities": 1}
    return grid.width * grid.height * sum(per_pixel.get(key, 4) for key in paths)


def _classify_here(config, header, grid, paths, blocks, compute, tally, reader, prefetch,
                   margin, reporter: Reporter) -> None:
    """One process: every block, written straight into the staged outputs."""
    with staged_files(list(paths.values()) + [qml_path(paths["classes"])],
                      _uncompressed_bytes(grid, paths, header)) as staged:
        outputs = _Outputs(config, header, grid, {k: staged[p] for k, p in paths.items()})
        try:
            pending = prefetch.submit(reader.read, *blocks[0], margin) if blocks else None
            for number in range(len(blocks)):
                reporter.check()
                reporter.begin_part(100 * number / len(blocks),
                                    100 * (number + 1) / len(blocks))
                current = pending.result()
                pending = (prefetch.submit(reader.read, *blocks[number + 1], margin)
                           if number + 1 < len(blocks) else None)
                for key, array in compute(current).items():
                    outputs.write(key, array, current.col0, current.row0)
                reporter.report(100 * (number + 1) / len(blocks))
        except BaseException:
            outputs.close()
            raise
        _finish_outputs(config, header, outputs, staged, paths, tally)


def _classify_sharded(world: World, config, header, grid, paths, blocks, compute,
                      tally: _RunTally, reader, prefetch, margin, reporter: Reporter,
                      class_type) -> None:
    """Several ranks: block i goes to rank i mod N, which writes it into its part files;
    the ranks compare their status after every round of blocks, so a failure anywhere stops
    all of them within a block; rank 0 assembles the outputs when every rank is done."""
    dtype, nodata = class_type
    class_count = len(header.classes)
    kinds = {"classes": (dtype, 1, nodata), "probabilities": (np.float32, class_count, 0),
             "confidence": (np.float32, 1, 0), "entropy": (np.float32, 1, 0),
             "modalities": (np.uint8, 1, 0)}
    folder: Optional[Path] = None
    parts: Optional[_Parts] = None
    try:
        with world.agreed():
            if world.is_main:
                folder = Path(tempfile.mkdtemp(prefix=PARTS_PREFIX,
                                               dir=paths["classes"].parent))
        folder = Path(world.broadcast(str(folder) if folder else None))
        with world.agreed():
            parts = _Parts(folder, world.rank, {k: kinds[k] for k in paths}, grid)
        mine = world.shard(list(range(len(blocks))))
        rounds = -(-len(blocks) // world.size)
        pending = prefetch.submit(reader.read, *blocks[mine[0]], margin) if mine else None
        for number in range(rounds):
            with world.agreed():
                if number < len(mine):
                    reporter.check()
                    reporter.begin_part(90 * number / rounds, 90 * (number + 1) / rounds)
                    current = pending.result()
                    pending = (prefetch.submit(reader.read, *blocks[mine[number + 1]], margin)
                               if number + 1 < len(mine) else None)
                    for key, array in compute(current).items():
                        parts.write(key, array, current.col0, current.row0)
                    world.fault("block")
                reporter.report(90 * (number + 1) / rounds)
        with world.agreed():
            parts.close()
        for number, other in enumerate(world.gather(tally)):
            if number != world.rank:
                tally.merge(other)
        with world.agreed():
            if world.is_main:
                _assemble(world, config, header, grid, paths, blocks, folder, tally,
                          reporter)
    finally:
        # Every rank gets here only once no rank needs the part files any more: after the
        # last stage (rank 0 has assembled), or after a failure that every surviving rank
        # learnt of at the same stage's end. So each removes its own files and then the
        # whole folder, which also takes the files of a rank that was killed (rank 0's
        # included); the removals may overlap, and a file already gone is no error.
        if parts is not None:
            parts.remove()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _assemble(world: World, config, header, grid, paths, blocks, folder: Path,
              tally: _RunTally, reporter: Reporter) -> None:
    """Rank 0: copy every block from its rank's part file into the staged outputs."""
    sources: Dict[Tuple[int, str], gdal.Dataset] = {}
    try:
        with staged_files(list(paths.values()) + [qml_path(paths["classes"])],
                          _uncompressed_bytes(grid, paths, header)) as staged:
            outputs = _Outputs(config, header, grid, {k: staged[p] for k, p in paths.items()})
            try:
                for number, (col0, row0, width, height) in enumerate(blocks):
                    reporter.check()
                    owner = number % world.size
                    for key in paths:
                        source = sources.get((owner, key))
                        if source is None:
                            source = gdal.Open(str(folder / f"rank{owner:05d}-{key}.tif"))
                            sources[(owner, key)] = source
                        outputs.write(key, source.ReadAsArray(col0, row0, width, height),
                                      col0, row0)
                    reporter.report(90 + 10 * (number + 1) / len(blocks))
            except BaseException:
                outputs.close()
                raise
            _finish_outputs(config, header, outputs, staged, paths, tally)
    finally:
        sources.clear()
