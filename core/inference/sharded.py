"""Block-sharded classification under torchrun (DESIGN §6): block i goes to rank i mod N,
which writes it into its own part files; rank 0 assembles the outputs when every rank is
done. The outputs are bit-identical to a single process's."""
import shutil
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from osgeo import gdal

from ..distributed import World
from ..feedback import Reporter
from ..grid import ReferenceGrid
from ..raster_io import close_datasets, gdal_type
from .blocks import Block, BlockReader, BlockStream, BlockWindow
from .outputs import OutputSet
from .tally import RunTally

#: Prefix of the hidden folder where the ranks of a torchrun classification write their
#: part files, next to the class raster; rank 0 removes it after assembling the outputs.
PARTS_PREFIX = ".mamol-parts-"


def part_file(folder: Path, rank: int, key: str) -> Path:
    """Where ``rank`` writes its blocks of the output ``key``."""
    return folder / f"rank{rank:05d}-{key}.tif"


class PartFiles:
    """One rank's part files: a full-grid, sparse, tiled GeoTIFF per output, holding this
    rank's blocks only (unwritten tiles take no space). ``outputs``: output key -> (data
    type, band count, nodata)."""

    def __init__(self, folder: Path, rank: int, outputs: Dict[str, Tuple[np.dtype, int, float]],
                 grid: ReferenceGrid) -> None:
        self.paths = {key: part_file(folder, rank, key) for key in outputs}
        self.datasets: Dict[str, gdal.Dataset] = {}
        driver = gdal.GetDriverByName("GTiff")
        for key, (dtype, bands, _) in outputs.items():
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


def classify_sharded(world: World, outputs: OutputSet, blocks: List[BlockWindow],
                     compute: Callable[[Block], Dict[str, np.ndarray]], tally: RunTally,
                     reader: BlockReader, prefetch: Executor, reporter: Reporter) -> None:
    """Several ranks: block i goes to rank i mod N, which writes it into its part files;
    the ranks compare their status after every round of blocks, so a failure anywhere stops
    all of them within a block; rank 0 assembles the outputs when every rank is done."""
    folder: Optional[Path] = None
    parts: Optional[PartFiles] = None
    try:
        with world.agreed():
            if world.is_main:
                folder = Path(tempfile.mkdtemp(prefix=PARTS_PREFIX,
                                               dir=outputs.paths["classes"].parent))
        folder = Path(world.broadcast(str(folder) if folder else None))
        with world.agreed():
            parts = PartFiles(folder, world.rank, outputs.part_kinds(), outputs.grid)
        mine = world.shard(list(range(len(blocks))))
        rounds = -(-len(blocks) // world.size)
        stream = BlockStream(reader, prefetch, [blocks[number] for number in mine])
        for number in range(rounds):
            with world.agreed():
                if number < len(mine):
                    reporter.check()
                    reporter.begin_part(90 * number / rounds, 90 * (number + 1) / rounds)
                    current = stream.next()
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
                _assemble(world, outputs, blocks, folder, tally, reporter)
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


def _assemble(world: World, outputs: OutputSet, blocks: List[BlockWindow], folder: Path,
              tally: RunTally, reporter: Reporter) -> None:
    """Rank 0: copy every block from its rank's part file into the staged outputs."""
    sources: Dict[Tuple[int, str], gdal.Dataset] = {}
    try:
        with outputs.staged(tally) as rasters:
            for number, (col0, row0, width, height) in enumerate(blocks):
                reporter.check()
                owner = number % world.size
                for key in outputs.paths:
                    source = sources.get((owner, key))
                    if source is None:
                        source = gdal.Open(str(part_file(folder, owner, key)))
                        sources[(owner, key)] = source
                    rasters.write(key, source.ReadAsArray(col0, row0, width, height),
                                  col0, row0)
                reporter.report(90 + 10 * (number + 1) / len(blocks))
    finally:
        sources.clear()
