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

The modules, each importing only those listed before it: ``config`` (:class:`ClassifyConfig`
and its options), ``tally`` (what a run counts), ``blocks`` (grid, blocks, reading them,
device windows), ``pixel`` and ``tiles`` (a block classified by a model of either kind),
``outputs`` (the output rasters, one :class:`~core.inference.outputs.OutputSpec` each in
``OUTPUTS``: a new output is one row there and its option), ``sharded`` (the torchrun
writer) and ``run`` (:func:`classify`). This file only re-exports the public names.
"""
from ..raster_io import gdal_type
from .blocks import window_presence
from .config import TILE_BLENDS, ClassifyConfig, MaskSource
from .outputs import (COG_RESAMPLING, FLOAT_NODATA, OPTIONAL_OUTPUT_FIELDS, OUTPUTS,
                      OutputSpec, class_nodata, write_cog)
from .run import ClassifyResult, classify
from .sharded import PARTS_PREFIX
from .tiles import tile_weights

__all__ = [
    "COG_RESAMPLING", "FLOAT_NODATA", "OPTIONAL_OUTPUT_FIELDS", "OUTPUTS", "PARTS_PREFIX", "TILE_BLENDS",
    "ClassifyConfig", "ClassifyResult", "MaskSource", "OutputSpec", "class_nodata",
    "classify", "gdal_type", "tile_weights", "window_presence", "write_cog",
]
