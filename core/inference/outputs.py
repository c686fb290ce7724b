"""The output rasters of a classification, declared once: :data:`OUTPUTS` holds one
:class:`OutputSpec` per raster (its option, pixel type, bands, nodata, overview resampling
and the function that computes its pixels from a classified block); creating, writing,
sizing, staging, COG conversion and the part files of a sharded run all read it."""
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from osgeo import gdal

from ..class_style import apply_legend, qml_path, write_qml
from ..grid import ReferenceGrid, srs_from_wkt
from ..model_file import ModelHeader
from ..raster_io import close_datasets, create_geotiff
from ..staging import staged_files
from .config import ClassifyConfig
from .tally import RunTally

FLOAT_NODATA = -1.0  # probabilities, confidence and entropy are in [0, 1]

T = TypeVar("T")


def class_nodata(values: Sequence[int]) -> Tuple[np.dtype, int]:
    """The class raster's data type and nodata value (never a class value)."""
    if max(values) <= 254:
        return np.dtype(np.uint8), 255
    return np.dtype(np.uint16), 65535


@dataclass(frozen=True, eq=False)
class ClassTable:
    """What the outputs take from the model: class values and names, the class raster's
    type and nodata, and the modality names (bit order of the modalities-used code)."""

    values: np.ndarray
    names: Tuple[str, ...]
    dtype: np.dtype
    nodata: int
    modalities: Tuple[str, ...]

    @classmethod
    def of(cls, header: ModelHeader) -> "ClassTable":
        values = np.array([c.value for c in header.classes])
        dtype, nodata = class_nodata(values)
        return cls(values, tuple(c.name for c in header.classes), dtype, nodata,
                   tuple(m.name for m in header.modalities))


@dataclass(frozen=True, eq=False)
class BlockPrediction:
    """One classified block as the outputs see it; all arrays cover the block's pixels."""

    probabilities: np.ndarray   # (K, h, w) float32, NaN where not classified
    valid: np.ndarray           # (h, w) bool: has a modality and a classified anchor
    index: np.ndarray           # (h, w) index of the most probable class
    used: np.ndarray            # (h, w) modalities-used bitmask, 0 where not valid

    @classmethod
    def of(cls, probabilities: np.ndarray, anchor_pattern: np.ndarray,
           pattern: np.ndarray) -> "BlockPrediction":
        """From the probabilities and pattern of the anchors upsampled to the block's
        pixels and the pixels' own ``pattern``: nodata where a pixel has no modality."""
        valid = (pattern > 0) & (anchor_pattern > 0)
        index = np.argmax(np.nan_to_num(probabilities, nan=-1.0), axis=0)
        return cls(probabilities, valid, index, np.where(valid, anchor_pattern, 0))


def fixed(value: T) -> Callable[[ClassTable], T]:
    """An :class:`OutputSpec` field that does not depend on the model."""
    return lambda table: value


@dataclass(frozen=True)
class OutputSpec:
    """One output raster. The fields that may depend on the model are functions of its
    :class:`ClassTable` (:func:`fixed` where they do not)."""

    key: str                    # its name in ClassifyResult.outputs and in part file names
    option: str                 # the ClassifyConfig field that holds its path
    dtype: Callable[[ClassTable], np.dtype]
    band_names: Callable[[ClassTable], Sequence[str]]   # one per band: the band count
    nodata: Callable[[ClassTable], Optional[float]]     # None: no nodata value
    cog_resampling: str         # overviews of a COG: NEAREST keeps real values
    compute: Callable[[BlockPrediction, ClassTable], np.ndarray]  # (bands,) h, w pixels
    band_metadata: Callable[[ClassTable], Dict[str, str]] = fixed({})  # of band 1
    required: bool = False      # written on every run (else when its option is set)

    def bands(self, table: ClassTable) -> int:
        return len(self.band_names(table))


def _classes(block: BlockPrediction, table: ClassTable) -> np.ndarray:
    return np.where(block.valid, table.values[block.index], table.nodata).astype(table.dtype)


def _probabilities(block: BlockPrediction, table: ClassTable) -> np.ndarray:
    return np.where(block.valid[None], block.probabilities, FLOAT_NODATA).astype(np.float32)


def _confidence(block: BlockPrediction, table: ClassTable) -> np.ndarray:
    return np.where(block.valid, block.probabilities.max(axis=0, initial=0.0),
                    FLOAT_NODATA).astype(np.float32)


def _entropy(block: BlockPrediction, table: ClassTable) -> np.ndarray:
    """Entropy / log K, in [0, 1]."""
    log_k = math.log(len(table.values))
    p = np.clip(np.nan_to_num(block.probabilities, nan=1.0), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0) / log_k if log_k else p[0] * 0
    return np.where(block.valid, entropy, FLOAT_NODATA).astype(np.float32)


def _modalities_used(block: BlockPrediction, table: ClassTable) -> np.ndarray:
    return block.used.astype(np.uint8)


#: Every output raster, in the order they are created and written. The class raster comes
#: first and always; the others are written when their ClassifyConfig option is set.
OUTPUTS: Tuple[OutputSpec, ...] = (
    OutputSpec(key="classes", option="output_classes", dtype=lambda table: table.dtype,
               band_names=fixed(("land cover class",)), nodata=lambda table: table.nodata,
               cog_resampling="NEAREST", compute=_classes, required=True),
    OutputSpec(key="probabilities", option="output_probabilities", dtype=fixed(np.float32),
               band_names=lambda table: [f"P({name})" for name in table.names],
               nodata=fixed(FLOAT_NODATA), cog_resampling="AVERAGE", compute=_probabilities),
    OutputSpec(key="confidence", option="output_confidence", dtype=fixed(np.float32),
               band_names=fixed(("confidence (max probability)",)),
               nodata=fixed(FLOAT_NODATA), cog_resampling="AVERAGE", compute=_confidence),
    OutputSpec(key="entropy", option="output_entropy", dtype=fixed(np.float32),
               band_names=fixed(("normalised entropy",)), nodata=fixed(FLOAT_NODATA),
               cog_resampling="AVERAGE", compute=_entropy),
    OutputSpec(key="modalities", option="output_modalities", dtype=fixed(np.uint8),
               band_names=fixed(("modalities used (bitmask)",)), nodata=fixed(None),
               cog_resampling="NEAREST", compute=_modalities_used,
               band_metadata=lambda table: {f"BIT_{bit}": name
                                            for bit, name in enumerate(table.modalities)}),
)

#: Overview resampling of each output in a Cloud-Optimized GeoTIFF: classes and bitmasks
#: keep real values (nearest), the continuous outputs are averaged.
COG_RESAMPLING = {spec.key: spec.cog_resampling for spec in OUTPUTS}
#: The ClassifyConfig fields of the optional outputs, in the registry's order: their engine
#: options and Toolbox parameters come from the fields' declarations (core/options.py).
OPTIONAL_OUTPUT_FIELDS = tuple(spec.option for spec in OUTPUTS if not spec.required)


def output_paths(config: ClassifyConfig) -> Dict[str, Path]:
    """Output key -> path of each output the run writes, in :data:`OUTPUTS` order."""
    return {spec.key: Path(getattr(config, spec.option)) for spec in OUTPUTS
            if spec.required or getattr(config, spec.option)}


@dataclass(frozen=True, eq=False)
class OutputSet:
    """The rasters one run writes: ``paths`` (output key -> final path, from
    :func:`output_paths`) on ``grid``, for the model ``header`` describes."""

    config: ClassifyConfig
    header: ModelHeader
    grid: ReferenceGrid
    paths: Dict[str, Path]
    table: ClassTable

    @property
    def specs(self) -> List[OutputSpec]:
        return [spec for spec in OUTPUTS if spec.key in self.paths]

    def arrays(self, block: BlockPrediction) -> Dict[str, np.ndarray]:
        """The block's pixels of every output written."""
        return {spec.key: spec.compute(block, self.table) for spec in self.specs}

    def part_kinds(self) -> Dict[str, Tuple[np.dtype, int, Optional[float]]]:
        """Output key -> (data type, band count, nodata), for part files."""
        return {spec.key: (spec.dtype(self.table), spec.bands(self.table),
                           spec.nodata(self.table) or 0) for spec in self.specs}

    def uncompressed_bytes(self) -> int:
        """What the outputs take before compression (for the free-space check)."""
        return self.grid.width * self.grid.height * sum(
            np.dtype(spec.dtype(self.table)).itemsize * spec.bands(self.table)
            for spec in self.specs)

    @contextmanager
    def staged(self, tally: RunTally) -> Iterator["OutputRasters"]:
        """The outputs open for block writes under hidden names (:mod:`core.staging`); when
        the block ends without error they are finished (far shares of ``tally``, optional
        COG, style) and moved into place, otherwise closed and removed."""
        finals = list(self.paths.values()) + [qml_path(self.paths["classes"])]
        with staged_files(finals, self.uncompressed_bytes()) as staged:
            rasters = OutputRasters(self, {k: staged[p] for k, p in self.paths.items()})
            try:
                yield rasters
            except BaseException:
                rasters.close()
                raise
            try:
                rasters.record_far_shares(tally.far.shares())
            finally:
                rasters.close()
            if self.config.cog:
                for key, final in self.paths.items():
                    write_cog(staged[final], COG_RESAMPLING[key])
            write_qml(staged[qml_path(self.paths["classes"])], self.header.classes,
                      self.table.nodata)


class OutputRasters:
    """The output GeoTIFFs of an :class:`OutputSet`, created at ``paths``, open for block
    writes."""

    def __init__(self, outputs: OutputSet, paths: Dict[str, Path]) -> None:
        grid, table = outputs.grid, outputs.table
        srs = srs_from_wkt(grid.crs_wkt)
        self.datasets: Dict[str, gdal.Dataset] = {}
        for spec in outputs.specs:
            self.datasets[spec.key] = create_geotiff(
                paths[spec.key], grid.width, grid.height, spec.bands(table),
                spec.dtype(table), grid.geotransform, srs, nodata=spec.nodata(table),
                band_names=spec.band_names(table))
            metadata = spec.band_metadata(table)
            if metadata:
                self.datasets[spec.key].GetRasterBand(1).SetMetadata(metadata)
        apply_legend(self.datasets["classes"].GetRasterBand(1), outputs.header.classes)

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
