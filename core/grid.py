"""The reference grid and every modality aligned onto it (DESIGN §4, "Alignment").

Training and inference share this module, so a pixel means the same thing in both.

* :func:`inspect_raster` reads a raster's header and refuses what cannot be used (unreadable,
  no CRS, rotated).
* :func:`reference_grid` is the default grid: the grid (CRS, pixel size, extent) of the
  first modality in model order. The rasters must have some area in common; where only
  some of them cover a pixel, the others are missing there (per-pixel missing patterns).
* :class:`AlignedRaster` warps a modality onto the grid through a GDAL VRT (bilinear for
  continuous data; nearest when the raster already lies on the grid), so nothing is loaded
  whole: :meth:`AlignedRaster.read` returns one window, NaN wherever the modality is
  missing (outside its coverage, nodata, non-finite), with symmetric padding beyond the
  grid's edges.
"""
import itertools
import math
import uuid
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, osr

from .errors import MamolInputError

gdal.UseExceptions()
osr.UseExceptions()

Bounds = Tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) in the grid's CRS


def srs_from_wkt(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def crs_label(wkt: str) -> str:
    """A short human name for a CRS (``EPSG:32632`` or its name)."""
    srs = srs_from_wkt(wkt)
    code = srs.GetAuthorityCode(None)
    authority = srs.GetAuthorityName(None)
    if code and authority:
        return f"{authority}:{code}"
    return srs.GetName() or "custom CRS"


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about one input raster."""

    path: str
    role: str                           # the modality it is given as, for messages
    width: int
    height: int
    bands: int
    geotransform: Tuple[float, ...]
    crs_wkt: str
    nodata: Tuple[Optional[float], ...]  # per band
    band_names: Tuple[str, ...]

    @property
    def pixel_size(self) -> Tuple[float, float]:
        return abs(self.geotransform[1]), abs(self.geotransform[5])

    def bounds(self) -> Bounds:
        x0, px, _, y0, _, py = self.geotransform
        xs = (x0, x0 + px * self.width)
        ys = (y0, y0 + py * self.height)
        return min(xs), min(ys), max(xs), max(ys)


def inspect_raster(path, role: str) -> RasterInfo:
    """Open ``path`` and describe it, or raise a :class:`MamolInputError` saying what to fix."""
    path = str(path)
    try:
        dataset = gdal.Open(path)
    except RuntimeError as exc:
        raise MamolInputError(
            f"Cannot read the {role} raster '{path}' ({exc}). Check that the file exists and "
            "is a raster GDAL can open.") from exc
    if dataset is None or dataset.RasterCount == 0:
        raise MamolInputError(f"The {role} raster '{path}' has no bands.")
    wkt = dataset.GetProjection()
    if not wkt:
        raise MamolInputError(
            f"The {role} raster '{path}' has no coordinate reference system. Assign its CRS "
            "(e.g. Raster > Projections > Assign Projection, or gdal_edit.py -a_srs) and run "
            "again.")
    geotransform = tuple(dataset.GetGeoTransform())
    if geotransform[2] != 0 or geotransform[4] != 0:
        raise MamolInputError(
            f"The {role} raster '{path}' is rotated; warp it to a north-up grid first "
            "(gdalwarp).")
    bands = [dataset.GetRasterBand(i + 1) for i in range(dataset.RasterCount)]
    return RasterInfo(path=path, role=role, width=dataset.RasterXSize,
                      height=dataset.RasterYSize, bands=dataset.RasterCount,
                      geotransform=geotransform, crs_wkt=wkt,
                      nodata=tuple(b.GetNoDataValue() for b in bands),
                      band_names=tuple(b.GetDescription() or f"band {i + 1}"
                                       for i, b in enumerate(bands)))


@dataclass(frozen=True)
class ReferenceGrid:
    """A north-up pixel grid: CRS, origin, pixel size and size in pixels."""

    crs_wkt: str
    x_origin: float     # left edge, CRS units
    y_origin: float     # top edge, CRS units
    pixel_width: float  # CRS units, > 0
    pixel_height: float  # CRS units, > 0 (rows go south)
    width: int
    height: int

    @property
    def geotransform(self) -> Tuple[float, ...]:
        return (self.x_origin, self.pixel_width, 0.0, self.y_origin, 0.0, -self.pixel_height)

    def bounds(self) -> Bounds:
        return (self.x_origin, self.y_origin - self.pixel_height * self.height,
                self.x_origin + self.pixel_width * self.width, self.y_origin)

    def subgrid(self, col0: int, row0: int, width: int, height: int) -> "ReferenceGrid":
        """The grid of a pixel window of this grid."""
        return ReferenceGrid(self.crs_wkt, self.x_origin + col0 * self.pixel_width,
                             self.y_origin - row0 * self.pixel_height, self.pixel_width,
                             self.pixel_height, int(width), int(height))

    def pixel_window(self, bounds: Bounds) -> Optional[Tuple[int, int, int, int]]:
        """(col0, row0, col1, row1) of the pixels whose area meets ``bounds``, clipped to the
        grid; None if they do not meet."""
        xmin, ymin, xmax, ymax = bounds
        col0 = max(0, int(math.floor((xmin - self.x_origin) / self.pixel_width)))
        col1 = min(self.width, int(math.ceil((xmax - self.x_origin) / self.pixel_width)))
        row0 = max(0, int(math.floor((self.y_origin - ymax) / self.pixel_height)))
        row1 = min(self.height, int(math.ceil((self.y_origin - ymin) / self.pixel_height)))
        if col0 >= col1 or row0 >= row1:
            return None
        return col0, row0, col1, row1

    def to_json(self) -> Dict[str, object]:
        return {"crs_wkt": self.crs_wkt, "crs": crs_label(self.crs_wkt),
                "geotransform": list(self.geotransform), "width": self.width,
                "height": self.height}

    @classmethod
    def from_json(cls, record: Dict[str, object]) -> "ReferenceGrid":
        x0, px, _, y0, _, py = (float(v) for v in record["geotransform"])
        return cls(str(record["crs_wkt"]), x0, y0, px, abs(py), int(record["width"]),
                   int(record["height"]))


def footprint(info: RasterInfo, crs_wkt: str) -> Bounds:
    """The raster's bounds expressed in ``crs_wkt`` (edges densified, so curved edges of a
    reprojected footprint are enclosed)."""
    source = srs_from_wkt(info.crs_wkt)
    target = srs_from_wkt(crs_wkt)
    if source.IsSame(target):
        return info.bounds()
    transform = osr.CoordinateTransformation(source, target)
    xmin, ymin, xmax, ymax = info.bounds()
    try:
        return tuple(transform.TransformBounds(xmin, ymin, xmax, ymax, 21))
    except RuntimeError as exc:
        raise MamolInputError(
            f"The {info.role} raster's extent cannot be expressed in {crs_label(crs_wkt)} "
            f"({exc}). Check its CRS.") from exc


def _intersection(a: Bounds, b: Bounds) -> Optional[Bounds]:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[2] and box[1] < box[3] else None


def _describe_bounds(bounds: Bounds) -> str:
    return "x {:.1f}…{:.1f}, y {:.1f}…{:.1f}".format(bounds[0], bounds[2], bounds[1], bounds[3])


def reference_grid(rasters: Sequence[RasterInfo]) -> ReferenceGrid:
    """The default reference grid for ``rasters`` (in model order; at least one): the first
    raster's own grid (DESIGN §4). Raises if two rasters have no area in common (wrong CRS
    or different places).
    """
    if not rasters:
        raise MamolInputError("Give at least one raster.")
    first = rasters[0]
    crs = first.crs_wkt
    feet = [footprint(info, crs) for info in rasters]
    for (a, fa), (b, fb) in itertools.combinations(zip(rasters, feet), 2):
        if _intersection(fa, fb) is None:
            raise MamolInputError(
                f"The {a.role} and {b.role} rasters have no area in common (in "
                f"{crs_label(crs)}: {a.role} {_describe_bounds(fa)}; {b.role} "
                f"{_describe_bounds(fb)}). Give rasters of the same place, and check their "
                "CRSs.")
    x0, px, _, y0, _, py = first.geotransform
    return ReferenceGrid(crs, x0, y0, abs(px), abs(py), first.width, first.height)


def _on_grid(info: RasterInfo, grid: ReferenceGrid) -> bool:
    """True if the raster's pixels coincide with grid pixels (same CRS, size, alignment)."""
    if not srs_from_wkt(info.crs_wkt).IsSame(srs_from_wkt(grid.crs_wkt)):
        return False
    x0, px, _, y0, _, py = info.geotransform
    if not (math.isclose(px, grid.pixel_width, rel_tol=1e-9)
            and math.isclose(-py, grid.pixel_height, rel_tol=1e-9)):
        return False
    dx = (x0 - grid.x_origin) / grid.pixel_width
    dy = (grid.y_origin - y0) / grid.pixel_height
    return abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6


def symmetric_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices [start, stop) of an axis of ``size``, reflected into it at its edges
    (symmetric padding, the edge pixel repeated: -1 -> 0, -2 -> 1, size -> size - 1)."""
    period = 2 * size
    index = np.mod(np.arange(start, stop), period)
    return np.where(index < size, index, period - 1 - index)


class AlignedRaster:
    """One modality warped onto a reference grid through a GDAL VRT (nothing read whole).

    Every pixel read is float32; a pixel is NaN in every band where the modality is missing
    there: outside the raster's coverage, nodata in the source, or non-finite in any band.
    """

    def __init__(self, info: RasterInfo, grid: ReferenceGrid, categorical: bool = False) -> None:
        self.info = info
        self.grid = grid
        self.bands = info.bands
        self._vrt_path = f"/vsimem/mamol-{uuid.uuid4().hex}.vrt"
        # Labels are categories: never interpolate them.
        resampling = "near" if categorical or _on_grid(info, grid) else "bilinear"
        xmin, ymin, xmax, ymax = grid.bounds()
        options = gdal.WarpOptions(
            format="VRT", dstSRS=grid.crs_wkt, outputBounds=(xmin, ymin, xmax, ymax),
            width=grid.width, height=grid.height, resampleAlg=resampling,
            outputType=gdal.GDT_Float32, dstNodata=float("nan"), multithread=False,
            warpOptions=["INIT_DEST=NO_DATA", "UNIFIED_SRC_NODATA=PARTIAL"])
        try:
            self._dataset = gdal.Warp(self._vrt_path, info.path, options=options)
        except RuntimeError as exc:
            raise MamolInputError(
                f"Cannot align the {info.role} raster '{info.path}' onto the reference grid "
                f"({exc}).") from exc
        self.resampling = resampling

    def read(self, col0: int, row0: int, width: int, height: int) -> np.ndarray:
        """(bands, height, width) float32 for a pixel window of the grid.

        The window may reach beyond the grid: those pixels are mirrored from inside
        (symmetric padding), as at any scene edge. NaN marks missing pixels (all bands).
        """
        if (col0 >= self.grid.width or row0 >= self.grid.height or col0 + width <= 0
                or row0 + height <= 0):
            raise ValueError("window does not meet the grid")
        cols = symmetric_indices(col0, col0 + width, self.grid.width)
        rows = symmetric_indices(row0, row0 + height, self.grid.height)
        c_lo, c_hi = int(cols.min()), int(cols.max()) + 1
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        block = self._dataset.ReadAsArray(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)
        block = np.asarray(block, dtype=np.float32).reshape(self.bands, r_hi - r_lo,
                                                            c_hi - c_lo)
        invalid = ~np.isfinite(block).all(axis=0)
        if invalid.any():
            block[:, invalid] = np.nan
        inside = (col0 >= 0 and row0 >= 0 and col0 + width <= self.grid.width
                  and row0 + height <= self.grid.height)
        if inside:
            return block
        return block[:, rows - r_lo][:, :, cols - c_lo]

    def close(self) -> None:
        self._dataset = None
        gdal.Unlink(self._vrt_path)

    def __enter__(self) -> "AlignedRaster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

