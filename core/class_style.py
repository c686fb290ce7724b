"""Class legends on outputs: a GDAL colour table with category names on the class raster,
and a QGIS ``.qml`` style (paletted renderer) next to it so QGIS shows the legend.

The QML is written as plain XML (no QGIS import): QGIS reads a ``<name>.qml`` next to a
raster as that layer's default style.
"""
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import quoteattr

from osgeo import gdal

from .model_file import ClassInfo


def _rgb(colour: str):
    text = colour.lstrip("#")
    return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))


def apply_legend(band: gdal.Band, classes: Sequence[ClassInfo]) -> None:
    """Colour table and category names (index = class value) on a class raster band.
    Values that are no class get an empty name and a transparent colour."""
    table = gdal.ColorTable()
    size = max(c.value for c in classes) + 1
    names = [""] * size
    for index in range(size):
        table.SetColorEntry(index, (0, 0, 0, 0))
    for info in classes:
        table.SetColorEntry(info.value, _rgb(info.colour) + (255,))
        names[info.value] = info.name
    band.SetRasterColorTable(table)
    band.SetCategoryNames(names)
    # Also inside the GeoTIFF itself (category names live in the .aux.xml sidecar).
    band.SetMetadata({f"CLASS_{c.value}": c.name for c in classes})


def qml_text(classes: Sequence[ClassInfo], nodata: int) -> str:
    """A QGIS style: paletted renderer on band 1 with one legend entry per class."""
    entries = "\n".join(
        f"        <paletteEntry value=\"{c.value}\" color={quoteattr(c.colour)} "
        f"label={quoteattr(c.name)} alpha=\"255\"/>" for c in classes)
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0"/>
    <rasterresampler maxOversampling="2"/>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def qml_path(raster_path: Path) -> Path:
    """Where QGIS looks for a raster's default style."""
    return Path(raster_path).with_suffix(".qml")


def write_qml(path: Path, classes: Sequence[ClassInfo], nodata: int) -> None:
    Path(path).write_text(qml_text(classes, nodata), encoding="utf-8")
