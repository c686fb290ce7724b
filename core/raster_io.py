"""Small GDAL helpers shared by every part that writes rasters or vectors."""
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from osgeo import gdal, ogr, osr

gdal.UseExceptions()
ogr.UseExceptions()
osr.UseExceptions()

#: GDAL's data type for each NumPy data type the plugin writes.
GDAL_TYPES = {
    np.dtype(np.uint8): gdal.GDT_Byte,
    np.dtype(np.uint16): gdal.GDT_UInt16,
    np.dtype(np.int16): gdal.GDT_Int16,
    np.dtype(np.float32): gdal.GDT_Float32,
}


def gdal_type(dtype: np.dtype) -> int:
    """GDAL's data type for the NumPy data type ``dtype``."""
    return GDAL_TYPES[np.dtype(dtype)]

#: GDAL's in-memory vector driver: "MEM" since GDAL 3.11, which deprecates the old
#: "Memory" name; GDAL 3.6 (Debian 12) knows only "Memory".
VECTOR_MEMORY_DRIVER = "MEM" if int(gdal.VersionInfo()) >= 3110000 else "Memory"

#: Tiled, compressed GeoTIFF, as every output of the plugin is written (DESIGN §4).
GEOTIFF_OPTIONS = ("TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256",
                   "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")

#: GDAL's block cache during a classification, in MiB. GDAL keeps every raster block it
#: reads or writes in one process-wide cache that grows up to GDAL_CACHEMAX (by default 5 %
#: of the RAM), so without a cap a run's memory grew with the scene until that size. Blocks
#: are read and written in order, each about once, so a small cache costs little speed.
DEFAULT_GDAL_CACHE_MB = 256


@contextmanager
def gdal_cache_limit(megabytes: int) -> Iterator[None]:
    """Cap GDAL's (process-wide) block cache at ``megabytes`` MiB while the block runs and
    restore the previous cap afterwards (blocks over the cap are flushed first)."""
    previous = gdal.GetCacheMax()
    gdal.SetCacheMax(int(megabytes) * 2 ** 20)
    try:
        yield
    finally:
        gdal.SetCacheMax(previous)


def srs_from_epsg(epsg: int) -> osr.SpatialReference:
    """A spatial reference in traditional GIS axis order (x = easting/longitude)."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def create_geotiff(path: Path, width: int, height: int, band_count: int, dtype: np.dtype,
                   geotransform: Sequence[float], srs: osr.SpatialReference,
                   nodata=None, band_names: Sequence[str] = ()) -> gdal.Dataset:
    """Create a tiled, compressed GeoTIFF and return it open for writing."""
    dtype = np.dtype(dtype)
    predictor = "PREDICTOR=3" if dtype.kind == "f" else "PREDICTOR=2"
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(path), int(width), int(height), int(band_count),
                            GDAL_TYPES[dtype], list(GEOTIFF_OPTIONS) + [predictor])
    dataset.SetGeoTransform(tuple(float(v) for v in geotransform))
    dataset.SetSpatialRef(srs)
    for index in range(band_count):
        band = dataset.GetRasterBand(index + 1)
        if nodata is not None:
            band.SetNoDataValue(float(nodata))
        if index < len(band_names):
            band.SetDescription(band_names[index])
    return dataset


def close_datasets(datasets: dict) -> None:
    """Flush and release every dataset of ``datasets`` (emptied), even when flushing one
    fails (a full disk): a dataset left alive would be destroyed at interpreter exit, after
    GDAL itself (a crash where QGIS shares the process). The first failure is raised once
    all are released; releasing after a failure is quiet, as GDAL repeats the same error."""
    failure = None
    for dataset in datasets.values():
        try:
            dataset.FlushCache()
            if hasattr(dataset, "Close"):   # GDAL >= 3.8: closing's own errors raise here,
                dataset.Close()             # not later in a destructor nobody can catch
        except RuntimeError as exc:
            failure = failure or exc
    exceptions = gdal.GetUseExceptions()
    if failure is not None:
        gdal.DontUseExceptions()
        gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        for key in list(datasets):
            datasets[key] = None
        datasets.clear()
    finally:
        if failure is not None:
            gdal.PopErrorHandler()
            if exceptions:
                gdal.UseExceptions()
    if failure is not None:
        raise failure
