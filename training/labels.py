"""Labelled pixels from polygons (DESIGN §5): rasterised onto the reference grid, split into
training and validation by polygon, capped per class.

Polygons may be in any CRS; they are reprojected to the grid's CRS and burnt onto the part
of the grid they cover (never onto the whole grid). A pixel belongs to a polygon when its
centre lies inside it. Splitting by polygon keeps neighbouring, strongly correlated pixels
on one side of the split, so validation accuracy is not inflated by spatial leakage.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from osgeo import gdal, ogr, osr

from ..core.class_style import palette_colour
from ..core.errors import MamolInputError
from ..core.options import option
from ..core.grid import (AlignedRaster, ReferenceGrid, crs_label, inspect_raster,
                         srs_from_wkt)
from ..core.raster_io import VECTOR_MEMORY_DRIVER

gdal.UseExceptions()
ogr.UseExceptions()

LOG = logging.getLogger(__name__)


_NUMERIC_FIELD_TYPES = (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal)


@dataclass(frozen=True)
class LabelledClass:
    value: int     # the class value in the data (and in output rasters)
    name: str
    colour: str    # "#rrggbb"


@dataclass
class LabelledPixels:
    """Every labelled pixel of the grid, with the polygon it came from.

    ``rows``/``cols`` are grid pixel indices; ``class_index`` indexes ``classes`` (0..K-1);
    ``polygon`` identifies the source polygon (the split unit).
    """

    rows: np.ndarray
    cols: np.ndarray
    class_index: np.ndarray
    polygon: np.ndarray
    classes: Tuple[LabelledClass, ...]
    warnings: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.rows.size)

    def subset(self, index: np.ndarray) -> "LabelledPixels":
        return LabelledPixels(self.rows[index], self.cols[index], self.class_index[index],
                              self.polygon[index], self.classes, list(self.warnings))


@dataclass(frozen=True)
class PolygonSource:
    """A polygon layer as the core receives it: a file (any OGR format) and its fields."""

    path: str
    class_field: str
    layer: Optional[str] = None          # layer name in a multi-layer file; None = first
    name_field: Optional[str] = None     # optional class-name field
    # value -> (name, colour) from a categorised style; overrides names/colours from data.
    styled_classes: Optional[Mapping[int, Tuple[str, str]]] = None
    # How the caller's user gives a class-name field, in the caller's words (the Toolbox's
    # parameter, the command line's option); None where there is no such choice, so that
    # errors never advise one.
    name_field_choice: Optional[str] = None


def _open_layer(source: PolygonSource):
    try:
        dataset = ogr.Open(source.path)
    except RuntimeError as exc:
        raise MamolInputError(
            f"Cannot read the polygon layer '{source.path}' ({exc}).") from exc
    if dataset is None:
        raise MamolInputError(f"Cannot read the polygon layer '{source.path}'.")
    layer = dataset.GetLayerByName(source.layer) if source.layer else dataset.GetLayer(0)
    if layer is None:
        raise MamolInputError(f"'{source.path}' has no layer '{source.layer}'.")
    return dataset, layer


def _field_type(layer, name: str, role: str, path: str) -> int:
    definition = layer.GetLayerDefn()
    index = definition.GetFieldIndex(name)
    if index < 0:
        fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        raise MamolInputError(
            f"The polygon layer '{path}' has no {role} field '{name}'. Its fields are: "
            f"{', '.join(fields) or 'none'}.")
    return definition.GetFieldDefn(index).GetType()


def _class_value(raw) -> Optional[int]:
    """A numeric field value as a class value; None if empty or not a whole number."""
    if raw is None:
        return None
    number = float(raw)
    return int(number) if number.is_integer() else None


def rasterise_polygons(source: PolygonSource, grid: ReferenceGrid) -> LabelledPixels:
    """Rasterise ``source`` onto ``grid`` and return every labelled pixel.

    Raises :class:`MamolInputError` for a missing or non-numeric class field (unless a
    class-name field is given, see below), a layer without CRS, and polygons that meet no
    part of the grid.

    A text class field is accepted only together with a class-name field: the distinct
    texts become classes 1..K in alphabetical order, named from the name field.
    """
    dataset, layer = _open_layer(source)
    numeric = _numeric_class_field(layer, source)
    transform = _transform_to_grid(layer, source, grid)
    geometries, keys, names, warnings = _read_polygons(layer, source, numeric, transform,
                                                       grid)
    del dataset  # closes the file; the features were copied
    if not geometries:
        raise MamolInputError(
            f"The polygon layer '{source.path}' has no polygons with a class value.")
    values, classes = _polygon_classes(keys, names, numeric, source)
    rows, cols, polygon = _burn_on_grid(geometries, grid)
    empty = len(geometries) - np.unique(polygon).size
    if empty:
        warnings.append(f"{empty} polygon(s) cover no pixel centre (too small, or outside "
                        "the rasters) and were not used.")
    class_index_of = {c.value: i for i, c in enumerate(classes)}
    key_index = np.array([class_index_of[values[k]] for k in keys], dtype=np.int64)
    for message in warnings:
        LOG.warning(message)
    return LabelledPixels(rows=rows, cols=cols, class_index=key_index[polygon],
                          polygon=polygon, classes=classes, warnings=warnings)


def _numeric_class_field(layer, source: PolygonSource) -> bool:
    """Whether the class field holds numbers; a text one needs a class-name field."""
    class_type = _field_type(layer, source.class_field, "class", source.path)
    numeric = class_type in _NUMERIC_FIELD_TYPES
    if source.name_field:
        _field_type(layer, source.name_field, "class-name", source.path)
    if not numeric and not source.name_field:
        remedy = (f", or also give {source.name_field_choice}: text classes are then "
                  "numbered 1..K in alphabetical order" if source.name_field_choice else "")
        raise MamolInputError(
            f"The class field '{source.class_field}' is not numeric. Choose a numeric class "
            f"field (integer class values){remedy}.")
    return numeric


def _transform_to_grid(layer, source: PolygonSource, grid: ReferenceGrid):
    """The transformation from the layer's CRS to the grid's; None when they are the same."""
    layer_srs = layer.GetSpatialRef()
    # GeoPackage reports a layer without CRS as "Undefined geographic/Cartesian SRS".
    if layer_srs is None or (layer_srs.GetName() or "").startswith("Undefined"):
        raise MamolInputError(
            f"The polygon layer '{source.path}' has no CRS. Assign one and run again.")
    layer_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    grid_srs = srs_from_wkt(grid.crs_wkt)
    return None if layer_srs.IsSame(grid_srs) else osr.CoordinateTransformation(
        layer_srs, grid_srs)


def _read_polygons(layer, source: PolygonSource, numeric: bool, transform,
                   grid: ReferenceGrid):
    """Each polygon with a class (in the grid's CRS), its class key (a number, or the text
    of a text class field), the class names found, and warnings about skipped features."""
    geometries: List[ogr.Geometry] = []
    keys: List[object] = []
    names: Dict[object, str] = {}
    skipped_geometry = skipped_class = 0
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            skipped_geometry += 1
            continue
        raw = feature.GetField(source.class_field)
        key = _class_value(raw) if numeric else (str(raw).strip() if raw else None)
        if key is None:
            if numeric and raw is not None:
                raise MamolInputError(
                    f"The class field '{source.class_field}' holds {raw!r}, which is not a "
                    "whole number. Class values must be integers.")
            skipped_class += 1
            continue
        geometry = geometry.Clone()
        if transform is not None:
            try:
                geometry.Transform(transform)
            except RuntimeError as exc:
                raise MamolInputError(
                    f"A polygon of '{source.path}' cannot be reprojected to the rasters' CRS "
                    f"{crs_label(grid.crs_wkt)} ({exc}). Check the layer's CRS.") from exc
        geometries.append(geometry)
        keys.append(key)
        if source.name_field:
            name = feature.GetField(source.name_field)
            if name not in (None, "") and key not in names:
                names[key] = str(name)
    warnings: List[str] = []
    if skipped_geometry:
        warnings.append(f"{skipped_geometry} feature(s) without geometry were ignored.")
    if skipped_class:
        warnings.append(f"{skipped_class} feature(s) with an empty class field were ignored.")
    return geometries, keys, names, warnings


def _polygon_classes(keys: Sequence[object], names: Mapping[object, str], numeric: bool,
                     source: PolygonSource):
    """The class value of each key (numeric as given; text numbered 1..K alphabetically)
    and the classes in value order, named and coloured."""
    if numeric:
        values = {key: int(key) for key in keys}
    else:
        values = {key: i + 1 for i, key in enumerate(sorted(set(keys)))}
    for value in values.values():
        if not 0 <= value <= 65534:
            raise MamolInputError(
                f"Class value {value} is outside 0..65534; renumber the classes.")
    by_value = {values[key]: key for key in keys}
    classes = []
    for i, value in enumerate(sorted(set(values.values()))):
        key = by_value[value]
        name = names.get(key) or (key if isinstance(key, str) else f"class {value}")
        colour = palette_colour(i)
        if source.styled_classes and value in source.styled_classes:
            name, colour = source.styled_classes[value]
        classes.append(LabelledClass(value, name, colour))
    return values, tuple(classes)


def _burn_on_grid(geometries: Sequence[ogr.Geometry], grid: ReferenceGrid):
    """Grid rows, columns and 0-based polygon number of every pixel centre the polygons
    cover, burnt onto the part of the grid they cover (never onto the whole grid)."""
    envelope = [g.GetEnvelope() for g in geometries]   # (xmin, xmax, ymin, ymax)
    bounds = (min(e[0] for e in envelope), min(e[2] for e in envelope),
              max(e[1] for e in envelope), max(e[3] for e in envelope))
    window = grid.pixel_window(bounds)
    if window is None:
        gx0, gy0, gx1, gy1 = grid.bounds()
        raise MamolInputError(
            f"None of the {len(geometries)} polygons lies on the rasters (polygons: x "
            f"{bounds[0]:.1f}…{bounds[2]:.1f}, y {bounds[1]:.1f}…{bounds[3]:.1f}; rasters: x "
            f"{gx0:.1f}…{gx1:.1f}, y {gy0:.1f}…{gy1:.1f}, in {crs_label(grid.crs_wkt)}). "
            "Check that they show the same area and that their CRSs are right.")
    col0, row0, col1, row1 = window
    burnt = _burn(geometries, grid.subgrid(col0, row0, col1 - col0, row1 - row0))
    rows, cols = np.nonzero(burnt)
    polygon = burnt[rows, cols].astype(np.int64) - 1
    if rows.size == 0:
        raise MamolInputError(
            "The polygons cover no pixel centre of the reference grid (they are smaller than "
            "a pixel or lie outside the rasters). Draw larger polygons.")
    return rows.astype(np.int64) + row0, cols.astype(np.int64) + col0, polygon


def _burn(geometries: Sequence[ogr.Geometry], grid: ReferenceGrid) -> np.ndarray:
    """int32 (height, width): 1-based polygon number at each pixel centre, 0 elsewhere.
    Where polygons overlap the later one wins."""
    memory = ogr.GetDriverByName(VECTOR_MEMORY_DRIVER).CreateDataSource("")
    layer = memory.CreateLayer("polygons", srs_from_wkt(grid.crs_wkt), ogr.wkbUnknown)
    layer.CreateField(ogr.FieldDefn("number", ogr.OFTInteger))
    definition = layer.GetLayerDefn()
    for number, geometry in enumerate(geometries, start=1):
        feature = ogr.Feature(definition)
        feature.SetField("number", number)
        feature.SetGeometry(geometry)
        layer.CreateFeature(feature)
    target = gdal.GetDriverByName("MEM").Create("", grid.width, grid.height, 1, gdal.GDT_Int32)
    target.SetGeoTransform(grid.geotransform)
    target.SetSpatialRef(srs_from_wkt(grid.crs_wkt))
    gdal.RasterizeLayer(target, [1], layer, options=["ATTRIBUTE=number"])
    return target.GetRasterBand(1).ReadAsArray()


@dataclass(frozen=True)
class LabelRasterSource:
    """A label raster: integer class values, 0 and the nodata value = unlabelled."""

    path: str
    group_size: int = 16   # side (pixels) of the square blocks that are the split units


def labels_from_raster(source: LabelRasterSource, grid: ReferenceGrid) -> LabelledPixels:
    """Every labelled pixel of a label raster, aligned onto ``grid`` (nearest neighbour).

    Class names and colours come from the raster's category names and colour table where
    it has them. The split unit ("polygon") of a pixel is its ``group_size`` block per
    class, so that neighbouring pixels stay on one side of a split.
    """
    info = inspect_raster(source.path, "label")
    if info.bands != 1:
        raise MamolInputError(
            f"The label raster '{source.path}' has {info.bands} bands; give a single-band "
            "raster of class values.")
    dataset = gdal.Open(source.path)
    band = dataset.GetRasterBand(1)
    gdal.Info(dataset)  # loads the PAM sidecar, so category names are seen (GDAL 3.6)
    names = band.GetCategoryNames() or []
    table = band.GetRasterColorTable()
    # Copied now: the table dies with the dataset.
    palette = [table.GetColorEntry(i)[:3] for i in range(table.GetCount())] if table else []
    table = band = None
    rows, cols, values = [], [], []
    with AlignedRaster(info, grid, categorical=True) as aligned:
        for row0 in range(0, grid.height, 512):
            height = min(512, grid.height - row0)
            block = aligned.read(0, row0, grid.width, height)[0]
            labelled = np.isfinite(block) & (block > 0)
            r, c = np.nonzero(labelled)
            rows.append(r + row0)
            cols.append(c)
            values.append(block[r, c])
    dataset = None
    rows = np.concatenate(rows).astype(np.int64)
    cols = np.concatenate(cols).astype(np.int64)
    values = np.concatenate(values)
    if rows.size == 0:
        raise MamolInputError(
            f"The label raster '{source.path}' has no labelled pixel on the rasters' grid "
            "(values > 0). Check that it shows the same area.")
    if not np.all(values == np.round(values)):
        raise MamolInputError(f"The label raster '{source.path}' holds non-integer values.")
    values = values.astype(np.int64)
    ordered = np.unique(values)
    classes = []
    for i, value in enumerate(ordered.tolist()):
        name = names[value] if value < len(names) and names[value] else f"class {value}"
        colour = palette_colour(i)
        if value < len(palette):
            colour = "#%02x%02x%02x" % tuple(palette[value])
        classes.append(LabelledClass(int(value), name, colour))
    class_index = np.searchsorted(ordered, values)
    blocks_per_row = grid.width // source.group_size + 1
    block = (rows // source.group_size) * blocks_per_row + cols // source.group_size
    _, polygon = np.unique(block * len(ordered) + class_index, return_inverse=True)
    return LabelledPixels(rows, cols, class_index, polygon.astype(np.int64), tuple(classes))


@dataclass(frozen=True)
class SplitConfig:
    """How labelled pixels become training and validation samples."""

    validation_fraction: float = option(
        0.25, flag="--validation-fraction", key="VALIDATION_FRACTION",
        label="Share held out for validation", minimum=0.0, maximum=0.9, advanced=True,
        help="Share of each class's pixels held out, by whole polygons.")
    max_train_per_class: int = option(
        2000, flag="--max-train-per-class", key="MAX_SAMPLES_PER_CLASS",
        label="Training samples per class (cap)", minimum=0, advanced=True,
        help="Cap per class (0 = no cap); classes are balanced per epoch.")
    max_validation_per_class: int = option(
        1000, flag="--max-validation-per-class", key="MAX_VALIDATION_PER_CLASS",
        label="Validation samples per class (cap)", minimum=0, advanced=True,
        help="Cap per class of the held-out samples (0 = no cap).")
    min_pixels_per_class: int = 20        # fewer labelled pixels in a class is an error
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise MamolInputError(
                f"The validation fraction must be in [0, 1), got {self.validation_fraction}.")
        for name in ("max_train_per_class", "max_validation_per_class"):
            if getattr(self, name) < 0:
                raise MamolInputError(f"{name} must be 0 (no cap) or positive.")


@dataclass
class Split:
    train: LabelledPixels
    validation: LabelledPixels
    # per class: (train pixels, validation pixels, train polygons, validation polygons)
    class_counts: List[Tuple[int, int, int, int]]
    warnings: List[str]


def split_by_polygon(pixels: LabelledPixels, config: SplitConfig) -> Split:
    """Assign whole polygons to validation until each class has about
    ``validation_fraction`` of its pixels there, then cap each side per class."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    warnings = list(pixels.warnings)
    train_parts, validation_parts, counts = [], [], []
    for index, labelled in enumerate(pixels.classes):
        in_class = np.nonzero(pixels.class_index == index)[0]
        if in_class.size < config.min_pixels_per_class:
            raise MamolInputError(
                f"Class {labelled.value} '{labelled.name}' has only {in_class.size} labelled "
                f"pixel(s) usable on the rasters; at least {config.min_pixels_per_class} are "
                "needed. Draw more or larger polygons for it, or remove the class.")
        polygons, sizes = np.unique(pixels.polygon[in_class], return_counts=True)
        order = rng.permutation(polygons.size)
        validation_polygons: List[int] = []
        if config.validation_fraction > 0 and polygons.size >= 2:
            target = config.validation_fraction * in_class.size
            taken = 0
            for position in order:
                # Always keep at least one polygon for training.
                if len(validation_polygons) == polygons.size - 1 or taken >= target:
                    break
                validation_polygons.append(int(polygons[position]))
                taken += int(sizes[position])
        elif config.validation_fraction > 0:
            warnings.append(
                f"Class {labelled.value} '{labelled.name}' has a single polygon, so it has no "
                "validation pixels (the split is by polygon).")
        is_validation = np.isin(pixels.polygon[in_class], validation_polygons)
        train = cap_indices(in_class[~is_validation], config.max_train_per_class, rng)
        validation = cap_indices(in_class[is_validation], config.max_validation_per_class, rng)
        train_parts.append(train)
        validation_parts.append(validation)
        counts.append((int(train.size), int(validation.size),
                       int(polygons.size - len(validation_polygons)), len(validation_polygons)))
    train_index = np.sort(np.concatenate(train_parts))
    validation_index = np.sort(np.concatenate(validation_parts))
    return Split(pixels.subset(train_index), pixels.subset(validation_index), counts, warnings)


def cap_indices(index: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` of ``index`` (0 = all), drawn with ``rng``, in ascending order."""
    if cap and index.size > cap:
        return np.sort(rng.choice(index, size=cap, replace=False))
    return index
