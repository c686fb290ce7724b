"""The one core call, :func:`classify`: check the inputs, plan the grid and blocks, load the
model, then classify block by block in this process or, under torchrun, sharded."""
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import torch_compat
from ..class_style import qml_path
from ..devices import (auto_block_size, dtype_name, model_inference_batch, prepare_model,
                       resolve_device)
from ..disk import ensure_writable_folder
from ..distributed import SINGLE, World
from ..errors import MamolInputError
from ..feedback import CancelCheck, ProgressCallback, Reporter
from ..grid import AlignedRaster, RasterInfo, ReferenceGrid, crs_label, inspect_raster
from ..modalities import modality_label
from ..model_file import ModelHeader, check_inputs, load_model, read_header
from ..pace import Pace, pixel_classify_advice
from ..raster_io import gdal_cache_limit
from ..windows import DEFAULT_MAX_MISSING_FRACTION, tile_halo, tile_layout
from .blocks import (Block, BlockReader, BlockStream, BlockWindow, block_windows, open_mask,
                     resolve_grid)
from .config import ClassifyConfig
from .outputs import BlockPrediction, ClassTable, OutputSet, output_paths
from .pixel import classify_pixels
from .sharded import classify_sharded
from .tally import RunTally
from .tiles import TILE_CLASSIFIERS

LOG = logging.getLogger(__package__)


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


@dataclass
class _Plan:
    """What the checked inputs fix before the model loads (the same on every rank but the
    block size, which rank 0's decides)."""

    header: ModelHeader
    infos: Dict[str, RasterInfo]
    order: List[str]               # modalities given, in the model's order
    missing: List[str]             # modalities not given
    device: object
    grid: ReferenceGrid            # the output grid
    full_grid: ReferenceGrid       # the grid before the crop to the extent
    crop: Tuple[int, int]          # column and row of ``grid``'s origin in ``full_grid``
    tiled: bool                    # a tile model
    margin: int                    # pixels read beyond every block edge (tile models)
    block: int                     # block side, px
    threshold: float               # missing share of a window that drops a modality
    paths: Dict[str, Path]         # output key -> final path


def _check_model_kind(config: ClassifyConfig, header: ModelHeader) -> None:
    """Reject the options that the model's kind (pixel or tile) has no use for."""
    tiled = header.model_kind == "tile"
    if tiled and config.stride > 1:
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


def _plan(config: ClassifyConfig, world: World) -> _Plan:
    """Check the inputs against each other and the model file and fix the grid, blocks and
    outputs; raises :class:`MamolInputError` before any heavy work."""
    config.validate()
    given = dict(config.rasters)
    header = read_header(Path(config.model_path))
    infos = {name: inspect_raster(path, modality_label(name)) for name, path in config.rasters}
    check_inputs(header, {name: info.bands for name, info in infos.items()})
    order = [m.name for m in header.modalities if m.name in given]
    device = world.device if world.distributed else resolve_device(config.device)
    grid, full_grid, crop_col, crop_row = resolve_grid(config, infos, order)
    _check_model_kind(config, header)
    tiled = header.model_kind == "tile"
    # Blocks are whole multiples of the stride, or of a tile model's lattice step, so
    # that no lattice cell is split between blocks (its tile would run twice) unless a
    # crop shifts the lattice; results never depend on it.
    unit = tile_layout(header.patch_size, config.tile_step)[0] if tiled else config.stride
    block_size = config.block_size or auto_block_size(device)
    threshold = (config.max_missing_fraction if config.max_missing_fraction is not None
                 else float(header.training.get("max_missing_fraction",
                                                DEFAULT_MAX_MISSING_FRACTION)))
    paths = output_paths(config)
    if world.distributed:
        for final in paths.values():
            ensure_writable_folder(final.parent)
    missing = [m.name for m in header.modalities if m.name not in given]
    return _Plan(header, infos, order, missing, device, grid, full_grid, (crop_col, crop_row),
                 tiled, tile_halo(header.patch_size) if tiled else 0,
                 max(unit, block_size - block_size % unit), threshold, paths)


def _grid_line(config: ClassifyConfig, plan: _Plan, block: int, batch_size: int, model,
               world: World) -> str:
    """The log line that says how the run goes."""
    grid, patch = plan.grid, plan.header.patch_size
    return (f"Grid: {grid.width} × {grid.height} pixels of {grid.pixel_width:g} × "
            f"{grid.pixel_height:g} ({crs_label(grid.crs_wkt)}), blocks of {block} px, "
            f"batches of {batch_size}, device {plan.device} "
            f"({dtype_name(model.compute_dtype)})"
            + (f", stride {config.stride}" if config.stride > 1 else "")
            + (f", tiles of {patch} px every {tile_layout(patch, config.tile_step)[0]} px"
               if plan.tiled else "")
            + (f", {world.size} processes ({world.backend})" if world.distributed else ""))


def _block_classifier(config: ClassifyConfig, plan: _Plan, model, batch_size: int,
                      reporter: Reporter) -> Callable[[Block], Tuple]:
    """The function that classifies one block, chosen once for the model's kind:
    (probabilities (K, h, w), the anchors' pattern (h, w), pixels classified, passes)."""
    patch, class_count = plan.header.patch_size, len(plan.header.classes)
    if not plan.tiled:
        def pixels(block: Block) -> Tuple:
            return classify_pixels(model, block, plan.device, batch_size, patch, class_count,
                                   reporter) + (0,)
        return pixels
    blend = TILE_CLASSIFIERS[config.tile_blend]
    lattice = tile_layout(patch, config.tile_step)[0]
    crop_col, crop_row = plan.crop

    def tiles(block: Block) -> Tuple:
        phase = ((crop_col + block.col0) % lattice, (crop_row + block.row0) % lattice)
        return blend(model, block, phase, plan.device, batch_size, patch, class_count,
                     reporter, config.tile_step)
    return tiles


def _block_outputs(classify_block: Callable[[Block], Tuple], outputs: OutputSet,
                   tally: RunTally) -> Callable[[Block], Dict[str, np.ndarray]]:
    """One block's output arrays (those asked for), counted into ``tally``."""
    def compute(current: Block) -> Dict[str, np.ndarray]:
        probabilities, anchor_pattern, count, passes = classify_block(current)
        prediction = BlockPrediction.of(probabilities, anchor_pattern, current.pattern)
        tally.passes += passes
        tally.class_counts += np.bincount(prediction.index[prediction.valid],
                                          minlength=tally.class_counts.size)
        tally.pattern_counts += np.bincount(prediction.used.ravel(),
                                            minlength=tally.pattern_counts.size)
        tally.classified += count
        tally.far.merge(current.far)
        return outputs.arrays(prediction)
    return compute


def _paced(compute: Callable[[Block], Dict[str, np.ndarray]], plan: _Plan, world: World,
           blocks: Sequence[BlockWindow], reporter: Reporter, say, caution):
    """``compute`` that also feeds the run's :class:`~core.pace.Pace` (the estimate of the
    time left, issue 32), within each block through ``reporter``'s steps. Rank 0 alone
    measures, its own blocks (the ranks move in step)."""
    if not world.is_main:
        return compute
    pace = Pace(sum(width * height for _, _, width, height in world.shard(blocks)), "pixels",
                plan.device, say, caution, None if plan.tiled else pixel_classify_advice(),
                world.size)
    reporter.follow(pace.step)

    def paced(current: Block) -> Dict[str, np.ndarray]:
        pace.begin_part(current.width * current.height)
        arrays = compute(current)
        pace.advance(current.width * current.height)
        return arrays
    return paced


def _classify_here(outputs: OutputSet, blocks: Sequence[BlockWindow],
                   compute: Callable[[Block], Dict[str, np.ndarray]], tally: RunTally,
                   reader: BlockReader, prefetch: Executor, reporter: Reporter) -> None:
    """One process: every block, written straight into the staged outputs."""
    with outputs.staged(tally) as rasters:
        stream = BlockStream(reader, prefetch, blocks)
        for number in range(len(blocks)):
            reporter.check()
            reporter.begin_part(100 * number / len(blocks), 100 * (number + 1) / len(blocks))
            current = stream.next()
            for key, array in compute(current).items():
                rasters.write(key, array, current.col0, current.row0)
            reporter.report(100 * (number + 1) / len(blocks))


def _run_blocks(config: ClassifyConfig, plan: _Plan, world: World, outputs: OutputSet,
                blocks: List[BlockWindow], compute: Callable[[Block], Dict[str, np.ndarray]],
                tally: RunTally, mask_layer, reporter: Reporter) -> None:
    """Read, classify and write every block, here or sharded over the ranks."""
    # GDAL's block cache is capped for the run, so memory does not grow with the scene.
    with gdal_cache_limit(config.gdal_cache_mb):
        aligned = {name: AlignedRaster(plan.infos[name], plan.full_grid) for name in plan.order}
        reader = BlockReader(config, plan.header, plan.grid, aligned, plan.order, plan.crop,
                             plan.threshold, mask_layer, plan.margin)
        # One thread reads block n + 1 while the device classifies block n; it alone touches
        # the GDAL datasets and the mask layer.
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mamol-read")
        try:
            if world.distributed:
                classify_sharded(world, outputs, blocks, compute, tally, reader, prefetch,
                                 reporter)
            else:
                _classify_here(outputs, blocks, compute, tally, reader, prefetch, reporter)
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            for raster in aligned.values():
                raster.close()


def _result(outputs: OutputSet, tally: RunTally, seconds: float,
            tiled: bool) -> ClassifyResult:
    classified = tally.classified
    written = dict(outputs.paths)
    written["style"] = qml_path(outputs.paths["classes"])
    return ClassifyResult(
        outputs=written, grid=outputs.grid,
        class_counts={int(v): int(n) for v, n in zip(outputs.table.values, tally.class_counts)},
        class_names={c.value: c.name for c in outputs.header.classes},
        far_shares=tally.far.shares(),
        pattern_counts={code: int(n) for code, n in enumerate(tally.pattern_counts) if n},
        seconds=seconds, pixels_per_second=classified / max(seconds, 1e-9),
        encoder_passes=tally.passes if tiled else None)


def classify(config: ClassifyConfig, progress: Optional[ProgressCallback] = None,
             is_cancelled: Optional[CancelCheck] = None,
             log: Optional[Callable[[str], None]] = None,
             warn: Optional[Callable[[str], None]] = None,
             world: Optional[World] = None) -> ClassifyResult:
    """Classify the scene ``config`` describes and write the outputs (see
    :mod:`core.inference`); ``log`` receives progress lines, ``warn`` warnings. Raises
    :class:`MamolInputError` for bad input before any heavy work, and :class:`Cancelled`
    (nothing written) when ``is_cancelled`` turns true.

    Under torchrun (``world`` of several ranks, :mod:`core.distributed`) the blocks are
    dealt round-robin to the ranks; each writes its blocks into its own part files in a
    hidden folder next to the class raster, and rank 0 assembles the outputs once every
    rank is done. A failure on any rank fails the run on every rank, and no output and no
    part file is left behind. The outputs are bit-identical to a single process's."""
    world = world or SINGLE
    torch_compat.import_torch()  # fail before any work if PyTorch is missing
    reporter = Reporter(progress, is_cancelled)
    say, caution = log or LOG.info, warn or LOG.warning
    with world.agreed():   # every rank checks the inputs; one that cannot read them stops all
        plan = _plan(config, world)
        model, plan.header = load_model(Path(config.model_path), log=say)
        model = prepare_model(model, plan.device, config.precision, config.compile_mode).eval()
        batch_size = config.batch_size or model_inference_batch(model, plan.device,
                                                                plan.header.patch_size)
    # Every rank deals the same blocks and batches them the same way: rank 0's sizes.
    block, batch_size = world.broadcast((plan.block, batch_size))
    blocks = list(block_windows(plan.grid, block))
    if world.size > len(blocks):
        raise MamolInputError(
            f"{world.size} processes but the grid has only {len(blocks)} block(s) of "
            f"{block} px: start at most {len(blocks)} processes, or give a smaller "
            "--block-size.")
    say(_grid_line(config, plan, block, batch_size, model, world))
    if plan.missing:
        say("Not given (missing everywhere): " + ", ".join(plan.missing))
    header = plan.header
    outputs = OutputSet(config, header, plan.grid, plan.paths, ClassTable.of(header))
    tally = RunTally(len(header.classes), 2 ** len(header.modalities), plan.order)
    compute = _paced(_block_outputs(_block_classifier(config, plan, model, batch_size,
                                                      reporter), outputs, tally),
                     plan, world, blocks, reporter, say, caution)
    mask = open_mask(config.mask, plan.grid) if config.mask else (None, None)
    started = time.perf_counter()
    _run_blocks(config, plan, world, outputs, blocks, compute, tally, mask[1], reporter)
    seconds = time.perf_counter() - started
    classified, passes = tally.classified, tally.passes
    say(f"Classified {classified} pixels in {seconds:.1f} s "
        f"({classified / max(seconds, 1e-9):.0f} pixels/s)"
        + (f", {passes} encoder passes ({passes / max(classified, 1):.3f} per pixel)."
           if plan.tiled else "."))
    say(tally.far.line())
    for message in tally.far.warnings():
        caution(message)
    return _result(outputs, tally, seconds, plan.tiled)
