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

#: The class colours, declared once: the k-th class (in value order) of labels that bring
#: no colours of their own gets the k-th colour (training/labels.py), and the sample
#: scene's classes 1..7 are the first seven (core/sample_scene.py), so a model trained on
#: the sample scene colours its classification as the scene's reference labels. The first
#: seven read as the scene's land covers (water, shadow, road, building, grass, trees, bare
#: soil); the rest are distinct on a map.
PALETTE = ("#2f6fd1", "#4a4a5a", "#a0a0a0", "#d9534f", "#a4d65e", "#1f7a32", "#c9a064",
           "#ff7f00", "#6a3d9a", "#e7298a", "#17becf", "#b15928", "#fdbf6f", "#cab2d6",
           "#ffff99", "#8c564b")


def palette_colour(rank: int) -> str:
    """The colour of the ``rank``-th class (0 = the first), the palette repeating."""
    return PALETTE[rank % len(PALETTE)]


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
