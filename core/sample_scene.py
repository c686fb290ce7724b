"""The built-in sample scene: a small synthetic HS + SAR + LiDAR scene with labels.

Every later part of the plugin (alignment, training, classification, evaluation) is tried on
this scene, so it deliberately contains what real data throws at the method:

* **Three modalities on three different grids.** Hyperspectral (48 bands, 400–1000 nm, 1 m,
  EPSG:32632), SAR (VV/VH backscatter, 2 m, same CRS but only the eastern part of the scene)
  and a LiDAR DSM (1.5 m, EPSG:3035), so the reference grid and GDAL warping are exercised.
* **Per-pixel missing modalities.** SAR covers only part of the scene and a cloud punches a
  nodata hole into HS that straddles the SAR edge: some pixels have all three modalities,
  some only HS+LiDAR, some SAR+LiDAR and some LiDAR alone.
* **Classes that no single modality separates.** Roofs are tar-covered like the roads
  (identical spectra; height separates them), shadows are as dark as open water in the
  optical (SAR backscatter separates them), and grass and trees share one vegetation
  spectrum (height or SAR volume scattering separate them). Losing a modality therefore
  measurably costs accuracy, which is what the MaMOL paper's experiments are about.

The layout is spatially coherent: a street grid, parcels that are residential blocks (flat
roofed buildings casting shadows to the north-west), parks, woods, bare fields and meadows,
and a river crossing the scene. Output is deterministic for a (size, seed) pair.
"""
import dataclasses
import enum
import json
import math
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from osgeo import gdal, ogr, osr

from .class_style import palette_colour, qml_path, write_qml
from .model_file import ClassInfo
from .errors import MamolInputError
from .feedback import CancelCheck, ProgressCallback, Reporter
from .options import option
from .raster_io import GEOTIFF_OPTIONS, create_geotiff, srs_from_epsg
from .staging import staged_outputs

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1

MIN_SIZE = 128
MAX_SIZE = 4096
MAX_SEED = 2**31 - 1

HS_EPSG = 32632          # WGS 84 / UTM zone 32N (the Trento area)
LIDAR_EPSG = 3035        # ETRS89-extended / LAEA Europe: a different CRS on purpose
HS_PIXEL_M = 1.0
SAR_PIXEL_M = 2.0
LIDAR_PIXEL_M = 1.5
HS_ORIGIN = (664000.0, 5104000.0)   # upper-left corner (easting, northing) in HS_EPSG
HS_BAND_COUNT = 48
#: Bands of each modality raster of the scene, in model order.
BAND_COUNTS = {"hs": HS_BAND_COUNT, "sar": 2, "lidar": 1}
HS_NODATA = 65535        # HS is stored as reflectance x 10000 in uint16
HS_SCALE = 10000.0
LIDAR_NODATA = -9999.0
REFERENCE_NODATA = 0
SAR_FIRST_COLUMN_SHARE = 0.4   # SAR covers HS columns from 40 % of the width eastwards

HS_FILE = "hs.tif"
SAR_FILE = "sar.tif"
LIDAR_FILE = "lidar.tif"
TRAINING_FILE = "training_polygons.gpkg"
REFERENCE_FILE = "reference_labels.tif"
#: The reference labels' QGIS style: a legend of the seven classes (a GeoTIFF's colour
#: table has 256 entries, which QGIS lists all).
REFERENCE_STYLE_FILE = qml_path(Path(REFERENCE_FILE)).name
MANIFEST_FILE = "scene.json"
OUTPUT_FILES = (HS_FILE, SAR_FILE, LIDAR_FILE, TRAINING_FILE, REFERENCE_FILE,
                REFERENCE_STYLE_FILE, MANIFEST_FILE)

TRAINING_LAYER = "training_polygons"
CLASS_FIELD = "class_id"
CLASS_NAME_FIELD = "class_name"

_STRIP_ROWS = 64          # HS is synthesised in strips of this many rows (bounded memory)


class LandCover(enum.IntEnum):
    """Class values of the sample scene (0 is reserved for "no label")."""

    WATER = 1
    SHADOW = 2
    ROAD = 3
    BUILDING = 4
    GRASS = 5
    TREES = 6
    BARE_SOIL = 7


#: Display name of each class.
CLASS_NAMES: Dict[LandCover, str] = {
    LandCover.WATER: "Water",
    LandCover.SHADOW: "Shadow",
    LandCover.ROAD: "Road",
    LandCover.BUILDING: "Building",
    LandCover.GRASS: "Grass",
    LandCover.TREES: "Trees",
    LandCover.BARE_SOIL: "Bare soil",
}
#: Display name and colour of each class, as written to the manifest, the polygons and the
#: reference labels: the colour is the class's in the one palette (core/class_style.py),
#: the one a model trained on these polygons gives its classification.
CLASS_STYLE: Dict[LandCover, Tuple[str, str]] = {
    land_cover: (name, palette_colour(rank))
    for rank, (land_cover, name) in enumerate(sorted(CLASS_NAMES.items()))}

#: Mean backscatter in dB (VV, VH). Shadow is an optical effect only: SAR sees the lawn.
SAR_MEAN_DB: Dict[LandCover, Tuple[float, float]] = {
    LandCover.WATER: (-22.0, -29.0),
    LandCover.SHADOW: (-11.0, -18.0),
    LandCover.ROAD: (-15.0, -23.0),
    LandCover.BUILDING: (-1.0, -10.0),
    LandCover.GRASS: (-11.0, -18.0),
    LandCover.TREES: (-7.0, -12.0),
    LandCover.BARE_SOIL: (-9.0, -19.0),
}


@dataclass(frozen=True)
class SampleSceneConfig:
    """What to generate."""

    size: int = option(256, flag="--size", key="SIZE", label="Size (pixels per side)",
                       minimum=MIN_SIZE, maximum=MAX_SIZE,
                       help="Width and height of the hyperspectral grid, in 1 m pixels.")
    seed: int = option(42, flag="--seed", key="SEED", label="Random seed", minimum=0,
                       maximum=MAX_SEED, help="Seed of every random choice; the same size "
                                              "and seed always give the same scene.")

    def validate(self) -> None:
        """Raise :class:`MamolInputError` with an actionable message if a value is unusable."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise MamolInputError(
                f"Seed {self.seed!r} is not a whole number: give an integer between 0 and "
                f"{MAX_SEED}.")
        if not 0 <= int(self.seed) <= MAX_SEED:
            raise MamolInputError(
                f"Seed {self.seed} is out of range: give an integer between 0 and {MAX_SEED}.")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise MamolInputError(
                f"Size {self.size!r} is not a whole number of pixels: give an integer between "
                f"{MIN_SIZE} and {MAX_SIZE}.")
        if self.size < MIN_SIZE:
            raise MamolInputError(
                f"Size {self.size} is too small: the scene needs at least {MIN_SIZE} pixels a "
                f"side to hold every land-cover class. Give a size between {MIN_SIZE} and "
                f"{MAX_SIZE}.")
        if self.size > MAX_SIZE:
            gigabytes = self.size ** 2 * HS_BAND_COUNT * 2 / 1e9
            raise MamolInputError(
                f"Size {self.size} is too large: the hyperspectral raster alone would take "
                f"{gigabytes:.0f} GB. Give a size between {MIN_SIZE} and {MAX_SIZE}.")


@dataclass
class Layout:
    """The scene's ground truth on the HS grid."""

    classes: np.ndarray        # (size, size) uint8, LandCover values
    object_height: np.ndarray  # (size, size) float32, height above ground in metres
    terrain: np.ndarray        # (size, size) float32, ground elevation in metres
    hs_cloud: np.ndarray       # (size, size) bool, HS is nodata here
    sar_first_column: int      # SAR covers HS columns [sar_first_column, size)


@dataclass
class TrainingRectangle:
    """An axis-aligned training polygon in HS pixel coordinates (end exclusive)."""

    row0: int
    row1: int
    col0: int
    col1: int
    land_cover: LandCover


@dataclass(frozen=True)
class SampleScene:
    """Paths of a written sample scene."""

    folder: Path
    hs: Path
    sar: Path
    lidar: Path
    training_polygons: Path
    reference_labels: Path
    manifest: Path


# --------------------------------------------------------------------------- random fields

def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], cell: float) -> np.ndarray:
    """Spatially smooth noise in [-1, 1]: uniform noise on a coarse lattice, bilinearly
    interpolated. ``cell`` is the lattice spacing in pixels (the feature size)."""
    rows, cols = shape
    cell = max(float(cell), 1.0)
    lattice = rng.uniform(-1.0, 1.0, size=(int(rows / cell) + 2, int(cols / cell) + 2))
    y = np.arange(rows) / cell
    x = np.arange(cols) / cell
    y0 = y.astype(int)
    x0 = x.astype(int)
    wy = (y - y0)[:, None]
    wx = (x - x0)[None, :]
    top = lattice[y0][:, x0] * (1 - wx) + lattice[y0][:, x0 + 1] * wx
    bottom = lattice[y0 + 1][:, x0] * (1 - wx) + lattice[y0 + 1][:, x0 + 1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def _disc(radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """Offsets grid and normalised radius (0 at the centre, 1 at the rim) of a disc."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    return (dy, dx), np.sqrt(dy ** 2 + dx ** 2) / radius


# --------------------------------------------------------------------------- layout

_PARCEL_PITCH = 48   # target distance between road centre lines, pixels
_PARCEL_TYPES = ("residential", "residential", "park", "woods", "field", "meadow")


def _road_centres(size: int, count: int, rng: np.random.Generator) -> List[int]:
    pitch = size / count
    return [int(round(k * pitch + rng.uniform(-pitch / 8, pitch / 8))) for k in range(1, count)]


def _intervals_between(size: int, centres: List[int], width: int) -> List[Tuple[int, int]]:
    """The open stretches between roads of ``width`` centred on ``centres``."""
    edges = [0]
    for centre in centres:
        edges += [centre - width // 2, centre - width // 2 + width]
    edges.append(size)
    return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]


def _add_tree(classes, height, cy, cx, radius, tree_height, allowed=(LandCover.GRASS,)):
    size = classes.shape[0]
    (dy, dx), rnorm = _disc(radius)
    ys, xs = cy + dy, cx + dx
    inside = (rnorm <= 1) & (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    ys, xs, rnorm = ys[inside], xs[inside], rnorm[inside]
    free = np.isin(classes[ys, xs], [int(a) for a in allowed])
    ys, xs, rnorm = ys[free], xs[free], rnorm[free]
    classes[ys, xs] = LandCover.TREES
    crown = tree_height * (0.6 + 0.4 * np.sqrt(np.clip(1 - rnorm ** 2, 0, 1)))
    height[ys, xs] = np.maximum(height[ys, xs], crown)


def _residential(classes, height, box, rng, buildings):
    r0, r1, c0, c1 = box
    cells_y = max(1, (r1 - r0) // 18)
    cells_x = max(1, (c1 - c0) // 18)
    ys = np.linspace(r0, r1, cells_y + 1).astype(int)
    xs = np.linspace(c0, c1, cells_x + 1).astype(int)
    for i in range(cells_y):
        for j in range(cells_x):
            cy0, cy1, cx0, cx1 = ys[i], ys[i + 1], xs[j], xs[j + 1]
            roof_height = float(rng.uniform(6.0, 18.0))
            shadow = int(np.ceil(roof_height * 0.35))
            room_y = cy1 - cy0 - shadow - 1
            room_x = cx1 - cx0 - shadow - 1
            if room_y < 4 or room_x < 4:
                continue
            bh = int(rng.integers(4, max(5, min(room_y, 16)) + 1))
            bw = int(rng.integers(4, max(5, min(room_x, 16)) + 1))
            bh, bw = min(bh, room_y), min(bw, room_x)
            by = int(rng.integers(cy0 + shadow, cy1 - bh))
            bx = int(rng.integers(cx0 + shadow, cx1 - bw))
            classes[by:by + bh, bx:bx + bw] = LandCover.BUILDING
            height[by:by + bh, bx:bx + bw] = roof_height
            buildings.append((by, by + bh, bx, bx + bw, shadow))
    area = (r1 - r0) * (c1 - c0)
    for _ in range(int(rng.integers(0, area // 250 + 2))):
        _add_tree(classes, height, int(rng.integers(r0, r1)), int(rng.integers(c0, c1)),
                  float(rng.uniform(2.0, 3.5)), float(rng.uniform(5.0, 12.0)))


def _fill_parcel(kind, classes, height, box, rng, buildings):
    r0, r1, c0, c1 = box
    area = (r1 - r0) * (c1 - c0)
    if kind == "residential":
        _residential(classes, height, box, rng, buildings)
    elif kind == "park":
        for _ in range(max(2, area // 110)):
            _add_tree(classes, height, int(rng.integers(r0, r1)), int(rng.integers(c0, c1)),
                      float(rng.uniform(2.0, 5.0)), float(rng.uniform(6.0, 15.0)))
    elif kind == "woods":
        classes[r0:r1, c0:c1] = LandCover.TREES
        canopy = smooth_noise(rng, (r1 - r0, c1 - c0), 6.0)
        height[r0:r1, c0:c1] = 11.0 + 3.0 * canopy + rng.normal(0, 1.0, canopy.shape)
        for _ in range(max(1, area // 400)):
            (dy, dx), rnorm = _disc(float(rng.uniform(2.0, 4.0)))
            ys = np.clip(int(rng.integers(r0, r1)) + dy[rnorm <= 1], r0, r1 - 1)
            xs = np.clip(int(rng.integers(c0, c1)) + dx[rnorm <= 1], c0, c1 - 1)
            classes[ys, xs] = LandCover.GRASS
            height[ys, xs] = 0.0
    elif kind == "field":
        classes[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = LandCover.BARE_SOIL
    elif kind == "meadow":
        for _ in range(int(rng.integers(0, area // 500 + 2))):
            _add_tree(classes, height, int(rng.integers(r0, r1)), int(rng.integers(c0, c1)),
                      float(rng.uniform(2.0, 4.0)), float(rng.uniform(6.0, 14.0)))
    else:  # pragma: no cover - the parcel types are a fixed tuple
        raise ValueError(kind)


def _cast_shadows(classes, height, buildings):
    """Flat roofs cast shadows to the north-west (sun in the south-east) onto open ground."""
    shadow = np.zeros(classes.shape, dtype=bool)
    for r0, r1, c0, c1, length in buildings:
        for step in range(1, length + 1):
            shadow[max(r0 - step, 0):max(r1 - step, 0), max(c0 - step, 0):max(c1 - step, 0)] = True
    receivers = np.isin(classes, [LandCover.GRASS, LandCover.ROAD, LandCover.BARE_SOIL])
    classes[shadow & receivers] = LandCover.SHADOW


def _river(classes, height, rng):
    size = classes.shape[0]
    width = int(np.clip(round(size / 40), 4, 14))
    centre = rng.uniform(0.58, 0.72) * size
    amplitude = rng.uniform(0.03, 0.06) * size
    wavelength = rng.uniform(0.6, 1.0) * size
    phase = rng.uniform(0, 2 * np.pi)
    x = np.arange(size)
    y_mid = centre + amplitude * np.sin(2 * np.pi * x / wavelength + phase)
    rows = np.arange(size)[:, None]
    water = np.abs(rows - y_mid[None, :]) < width / 2
    water &= classes != LandCover.ROAD          # bridges: the road stays on top
    classes[water] = LandCover.WATER
    height[water] = 0.0


def _cloud(size: int, rng: np.random.Generator, sar_first_column: int) -> np.ndarray:
    """A ragged cloud, centred on the SAR coverage edge so it creates both the
    HS-missing/SAR-present and the HS-missing/SAR-missing patterns."""
    radius = 0.12 * size
    cy = rng.uniform(0.25, 0.35) * size
    cx = float(sar_first_column)
    rows, cols = np.mgrid[0:size, 0:size]
    distance = np.hypot(rows - cy, cols - cx) / radius
    ragged = distance + 0.35 * smooth_noise(rng, (size, size), max(4.0, radius / 3))
    return ragged < 1.0


def generate_layout(config: SampleSceneConfig) -> Layout:
    """Generate the land-cover layout, heights, terrain and cloud for ``config``."""
    config.validate()
    size = int(config.size)
    rng = np.random.default_rng([int(config.seed), 1])
    classes = np.full((size, size), LandCover.GRASS, dtype=np.uint8)
    height = np.zeros((size, size), dtype=np.float32)

    count = max(3, int(round(size / _PARCEL_PITCH)))
    road_width = int(np.clip(round(size / 64), 4, 8))
    row_centres = _road_centres(size, count, rng)
    col_centres = _road_centres(size, count, rng)
    for centre in row_centres:
        classes[centre - road_width // 2:centre - road_width // 2 + road_width, :] = LandCover.ROAD
    for centre in col_centres:
        classes[:, centre - road_width // 2:centre - road_width // 2 + road_width] = LandCover.ROAD

    boxes = [(r0, r1, c0, c1)
             for r0, r1 in _intervals_between(size, row_centres, road_width)
             for c0, c1 in _intervals_between(size, col_centres, road_width)]
    # Every parcel type appears at least once: deal whole shuffled decks of types.
    decks = -(-len(boxes) // len(_PARCEL_TYPES))
    kinds = np.concatenate([rng.permutation(_PARCEL_TYPES) for _ in range(decks)])
    buildings: List[Tuple[int, int, int, int, int]] = []
    for box, kind in zip(boxes, kinds):
        _fill_parcel(str(kind), classes, height, box, rng, buildings)

    grass = classes == LandCover.GRASS
    height[grass] = 0.15 + 0.05 * rng.random(int(grass.sum()), dtype=np.float32)
    _river(classes, height, rng)
    _cast_shadows(classes, height, buildings)

    terrain = 180.0 + 3.0 * smooth_noise(rng, (size, size), size / 3)
    sar_first_column = int(round(SAR_FIRST_COLUMN_SHARE * size))
    cloud = _cloud(size, rng, sar_first_column)
    return Layout(classes=classes, object_height=height.astype(np.float32),
                  terrain=terrain.astype(np.float32), hs_cloud=cloud,
                  sar_first_column=sar_first_column)


# --------------------------------------------------------------------------- modalities

def hs_wavelengths() -> np.ndarray:
    """Band centres of the HS raster in nanometres."""
    return np.linspace(400.0, 1000.0, HS_BAND_COUNT)


def _gauss(wl, centre, width):
    return np.exp(-0.5 * ((wl - centre) / width) ** 2)


def material_spectra() -> Dict[str, np.ndarray]:
    """Reflectance (0–1) of the scene's materials at :func:`hs_wavelengths`."""
    wl = hs_wavelengths()
    red_edge = 1.0 / (1.0 + np.exp(-(wl - 715.0) / 12.0))
    vegetation = 0.04 + 0.06 * _gauss(wl, 550.0, 30.0) - 0.02 * _gauss(wl, 670.0, 20.0) \
        + 0.40 * red_edge
    soil = 0.10 + 0.25 * (wl - 400.0) / 600.0 - 0.03 * _gauss(wl, 900.0, 40.0)
    tar = 0.06 + 0.04 * (wl - 400.0) / 600.0
    dark = 0.07 * np.exp(-(wl - 400.0) / 180.0) + 0.004
    return {"vegetation": vegetation, "soil": soil, "tar": tar, "dark": dark}


#: Which material each class shows to the HS sensor. Pairs share a material on purpose.
HS_MATERIAL: Dict[LandCover, str] = {
    LandCover.WATER: "dark",
    LandCover.SHADOW: "dark",
    LandCover.ROAD: "tar",
    LandCover.BUILDING: "tar",
    LandCover.GRASS: "vegetation",
    LandCover.TREES: "vegetation",
    LandCover.BARE_SOIL: "soil",
}


def _class_spectra() -> np.ndarray:
    """(max class + 1, bands) lookup table of mean reflectance per class value."""
    spectra = material_spectra()
    table = np.zeros((max(LandCover) + 1, HS_BAND_COUNT), dtype=np.float32)
    for land_cover, material in HS_MATERIAL.items():
        table[land_cover] = spectra[material]
    return table


def render_hs_strip(layout: Layout, row0: int, row1: int, seed: int) -> np.ndarray:
    """HS rows ``[row0, row1)`` as (bands, rows, cols) uint16 reflectance x 10000."""
    rng = np.random.default_rng([int(seed), 2, row0])
    classes = layout.classes[row0:row1]
    shape = classes.shape
    reflectance = _class_spectra()[classes]                      # rows, cols, bands
    # Vegetation: a soil fraction for both grass and trees, so they stay spectrally alike.
    vegetated = np.isin(classes, [LandCover.GRASS, LandCover.TREES])
    soil_share = np.where(vegetated, rng.uniform(0.0, 0.25, shape), 0.0).astype(np.float32)
    reflectance = (1 - soil_share[..., None]) * reflectance \
        + soil_share[..., None] * material_spectra()["soil"].astype(np.float32)
    brightness = rng.lognormal(0.0, 0.12, shape).astype(np.float32)
    reflectance *= brightness[..., None]
    reflectance += rng.normal(0.0, 0.003, reflectance.shape).astype(np.float32)
    digital = np.clip(np.rint(reflectance * HS_SCALE), 1, HS_NODATA - 1).astype(np.uint16)
    digital[layout.hs_cloud[row0:row1]] = HS_NODATA
    return np.ascontiguousarray(np.moveaxis(digital, -1, 0))


def render_sar(layout: Layout, seed: int) -> np.ndarray:
    """SAR (VV, VH) linear backscatter on the SAR grid, as (2, rows, cols) float32.

    Single-look speckle (exponential intensity) is simulated at 1 m and multi-looked 2 x 2
    onto the 2 m SAR grid, which leaves about four looks of speckle.
    """
    rng = np.random.default_rng([int(seed), 3])
    classes = layout.classes[:, layout.sar_first_column:]
    rows, cols = classes.shape
    rows2, cols2 = rows // 2, cols // 2
    classes = classes[:rows2 * 2, :cols2 * 2]
    mean_db = np.zeros((max(LandCover) + 1, 2), dtype=np.float32)
    for land_cover, (vv, vh) in SAR_MEAN_DB.items():
        mean_db[land_cover] = (vv, vh)
    sigma0 = 10.0 ** (mean_db[classes] / 10.0)                  # rows, cols, 2
    # Canopies are heterogeneous volume scatterers: extra texture for trees.
    texture = np.where(classes == LandCover.TREES,
                       rng.lognormal(0.0, 0.5, classes.shape), 1.0).astype(np.float32)
    sigma0 = sigma0 * texture[..., None]
    sigma0 = sigma0 * rng.exponential(1.0, sigma0.shape).astype(np.float32)
    looked = sigma0.reshape(rows2, 2, cols2, 2, 2).mean(axis=(1, 3))
    return np.ascontiguousarray(np.moveaxis(looked, -1, 0)).astype(np.float32)


def dsm(layout: Layout, seed: int) -> np.ndarray:
    """Digital surface model (terrain + objects + measurement noise) on the HS grid, metres."""
    rng = np.random.default_rng([int(seed), 4])
    noise = rng.normal(0.0, 0.05, layout.terrain.shape).astype(np.float32)
    return layout.terrain + layout.object_height + noise


# --------------------------------------------------------------------------- labels

_TRAINING_SHAPES = ((8, 8), (6, 8), (8, 6), (6, 6), (4, 6), (6, 4), (4, 4), (3, 3), (2, 2))
_TRAINING_BUFFER = 3        # pixels kept unlabelled between training and reference data
_TRAINING_SHARE_CAP = 0.3   # at most this share of a class's pixels goes to training
_CANDIDATES_PER_SHAPE = 4000


def _window_all(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Top-left positions where a ``height`` x ``width`` window lies entirely in ``mask``."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    sums = (integral[height:, width:] - integral[:-height, width:]
            - integral[height:, :-width] + integral[:-height, :-width])
    return np.argwhere(sums == height * width)


def select_training_rectangles(classes: np.ndarray, seed: int) -> List[TrainingRectangle]:
    """Pick non-overlapping rectangles inside single-class areas, spread over the scene.

    Each class gets up to ``size / 32`` rectangles (at least 4), with a buffer of
    ``_TRAINING_BUFFER`` pixels between any two and at most ``_TRAINING_SHARE_CAP`` of the
    class's pixels, so that the reference labels keep most of every class.
    """
    rng = np.random.default_rng([int(seed), 5])
    size = classes.shape[0]
    wanted = max(4, size // 32)
    taken = np.zeros(classes.shape, dtype=bool)
    rectangles: List[TrainingRectangle] = []
    for land_cover in LandCover:
        mask = classes == land_cover
        budget = _TRAINING_SHARE_CAP * int(mask.sum())
        chosen, used = 0, 0
        for height, width in _TRAINING_SHAPES:
            if chosen >= wanted:
                break
            candidates = _window_all(mask, height, width)
            if len(candidates) > _CANDIDATES_PER_SHAPE:
                candidates = candidates[rng.choice(len(candidates), _CANDIDATES_PER_SHAPE,
                                                   replace=False)]
            for row, col in rng.permutation(candidates):
                if chosen >= wanted or used + height * width > budget:
                    break
                b = _TRAINING_BUFFER
                if taken[max(row - b, 0):row + height + b, max(col - b, 0):col + width + b].any():
                    continue
                taken[row:row + height, col:col + width] = True
                rectangles.append(TrainingRectangle(int(row), int(row + height), int(col),
                                                    int(col + width), land_cover))
                chosen += 1
                used += height * width
    return rectangles


def reference_labels(classes: np.ndarray, rectangles: List[TrainingRectangle]) -> np.ndarray:
    """Reference labels for evaluation: every pixel except the training polygons and a
    buffer of ``_TRAINING_BUFFER`` pixels around them (0 = no label)."""
    labels = classes.copy()
    b = _TRAINING_BUFFER
    for rect in rectangles:
        labels[max(rect.row0 - b, 0):rect.row1 + b, max(rect.col0 - b, 0):rect.col1 + b] = \
            REFERENCE_NODATA
    return labels


# --------------------------------------------------------------------------- writing

def hs_geotransform() -> Tuple[float, ...]:
    return (HS_ORIGIN[0], HS_PIXEL_M, 0.0, HS_ORIGIN[1], 0.0, -HS_PIXEL_M)


def _write_hs(path: Path, layout: Layout, seed: int, reporter: Reporter, span) -> None:
    size = layout.classes.shape[0]
    names = [f"{wl:.1f} nm" for wl in hs_wavelengths()]
    dataset = create_geotiff(path, size, size, HS_BAND_COUNT, np.uint16, hs_geotransform(),
                             srs_from_epsg(HS_EPSG), nodata=HS_NODATA, band_names=names)
    dataset.SetMetadataItem("wavelength_units", "nm")
    dataset.SetMetadataItem("reflectance_scale_factor", str(HS_SCALE))
    for index, wl in enumerate(hs_wavelengths()):
        dataset.GetRasterBand(index + 1).SetMetadataItem("wavelength", f"{wl:.1f}")
    for row0 in range(0, size, _STRIP_ROWS):
        row1 = min(row0 + _STRIP_ROWS, size)
        dataset.WriteArray(render_hs_strip(layout, row0, row1, seed), xoff=0, yoff=row0)
        reporter.report(span[0] + (span[1] - span[0]) * row1 / size)
    dataset.FlushCache()
    dataset = None


def _write_sar(path: Path, layout: Layout, seed: int) -> None:
    sar = render_sar(layout, seed)
    origin_x = HS_ORIGIN[0] + layout.sar_first_column * HS_PIXEL_M
    transform = (origin_x, SAR_PIXEL_M, 0.0, HS_ORIGIN[1], 0.0, -SAR_PIXEL_M)
    dataset = create_geotiff(path, sar.shape[2], sar.shape[1], 2, np.float32, transform,
                             srs_from_epsg(HS_EPSG), band_names=["VV", "VH"])
    dataset.SetMetadataItem("units", "linear backscatter (sigma0)")
    dataset.WriteArray(sar)
    dataset = None


def lidar_grid(size: int) -> Tuple[float, float, int, int]:
    """The LiDAR grid for a scene of ``size`` HS pixels: (west, north, width, height) in
    LIDAR_EPSG, 1.5 m pixels on multiples of 1.5 m, enclosing the whole HS footprint.

    Computed here rather than left to ``gdal.Warp(targetAlignedPixels=True)``: that option's
    output extent comes from GDAL's own edge sampling, which changed between GDAL 3.6 and
    3.10 (88 x 87 pixels against 86 x 86 for 128 HS pixels, the smaller one leaving HS edge
    pixels without LiDAR). The footprint is transformed with its edges densified (21 points
    per edge) and snapped outwards, so every HS pixel lies under LiDAR pixels on any GDAL.
    """
    x0, pixel, _, y0, _, _ = hs_geotransform()
    transform = osr.CoordinateTransformation(srs_from_epsg(HS_EPSG), srs_from_epsg(LIDAR_EPSG))
    west, south, east, north = transform.TransformBounds(
        x0, y0 - size * pixel, x0 + size * pixel, y0, 21)
    west = math.floor(west / LIDAR_PIXEL_M) * LIDAR_PIXEL_M
    south = math.floor(south / LIDAR_PIXEL_M) * LIDAR_PIXEL_M
    east = math.ceil(east / LIDAR_PIXEL_M) * LIDAR_PIXEL_M
    north = math.ceil(north / LIDAR_PIXEL_M) * LIDAR_PIXEL_M
    return (west, north, int(round((east - west) / LIDAR_PIXEL_M)),
            int(round((north - south) / LIDAR_PIXEL_M)))


def _write_lidar(path: Path, layout: Layout, seed: int) -> None:
    """Warp the DSM from the HS grid to the LiDAR grid (another CRS, 1.5 m) with GDAL."""
    surface = dsm(layout, seed)
    size = surface.shape[0]
    source = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Float32)
    source.SetGeoTransform(hs_geotransform())
    source.SetSpatialRef(srs_from_epsg(HS_EPSG))
    source.GetRasterBand(1).WriteArray(surface)
    west, north, width, height = lidar_grid(size)
    options = gdal.WarpOptions(
        format="GTiff", dstSRS=srs_from_epsg(LIDAR_EPSG), width=width, height=height,
        outputBounds=(west, north - height * LIDAR_PIXEL_M, west + width * LIDAR_PIXEL_M, north),
        resampleAlg="average", dstNodata=LIDAR_NODATA, outputType=gdal.GDT_Float32,
        creationOptions=list(GEOTIFF_OPTIONS) + ["PREDICTOR=3"])
    dataset = gdal.Warp(str(path), source, options=options)
    dataset.GetRasterBand(1).SetDescription("DSM")
    dataset.SetMetadataItem("units", "metres above sea level")
    dataset = None
    source = None


def _write_training(path: Path, rectangles: List[TrainingRectangle]) -> None:
    x0, pixel, _, y0, _, _ = hs_geotransform()
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer(TRAINING_LAYER, srs_from_epsg(HS_EPSG), ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(CLASS_FIELD, ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn(CLASS_NAME_FIELD, ogr.OFTString))
    definition = layer.GetLayerDefn()
    layer.StartTransaction()
    for rect in rectangles:
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for row, col in ((rect.row0, rect.col0), (rect.row0, rect.col1), (rect.row1, rect.col1),
                         (rect.row1, rect.col0), (rect.row0, rect.col0)):
            ring.AddPoint_2D(x0 + col * pixel, y0 - row * pixel)
        polygon = ogr.Geometry(ogr.wkbPolygon)
        polygon.AddGeometry(ring)
        feature = ogr.Feature(definition)
        feature.SetField(CLASS_FIELD, int(rect.land_cover))
        feature.SetField(CLASS_NAME_FIELD, CLASS_STYLE[rect.land_cover][0])
        feature.SetGeometry(polygon)
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    source = None


def _write_reference(path: Path, labels: np.ndarray) -> None:
    size = labels.shape[0]
    dataset = create_geotiff(path, size, size, 1, np.uint8, hs_geotransform(),
                             srs_from_epsg(HS_EPSG), nodata=REFERENCE_NODATA,
                             band_names=["reference land cover"])
    band = dataset.GetRasterBand(1)
    colours = gdal.ColorTable()
    names = [""] * (max(LandCover) + 1)
    for land_cover, (name, colour) in CLASS_STYLE.items():
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        colours.SetColorEntry(int(land_cover), rgb + (255,))
        names[int(land_cover)] = name
    # Colour table before pixels: GDAL >= 3.10 (libtiff 4.7) refuses it after them.
    band.SetRasterColorTable(colours)
    band.SetCategoryNames(names)
    band.WriteArray(labels)
    dataset = None
    write_qml(qml_path(path), class_infos(), REFERENCE_NODATA)


def class_infos() -> List[ClassInfo]:
    """The classes as the model file and the class legends take them."""
    return [ClassInfo(int(lc), name, colour) for lc, (name, colour) in CLASS_STYLE.items()]


def class_table() -> List[Dict[str, object]]:
    """Classes as (value, name, colour) records, the form the model file uses."""
    return [{"value": int(lc), "name": name, "colour": colour}
            for lc, (name, colour) in CLASS_STYLE.items()]


def _manifest(config: SampleSceneConfig, layout: Layout,
              rectangles: List[TrainingRectangle], labels: np.ndarray) -> Dict[str, object]:
    classes = layout.classes
    training_pixels = np.zeros(max(LandCover) + 1, dtype=np.int64)
    for rect in rectangles:
        training_pixels[rect.land_cover] += (rect.row1 - rect.row0) * (rect.col1 - rect.col0)
    return {
        "generator": "mamol sample scene",
        "generator_version": GENERATOR_VERSION,
        "config": dataclasses.asdict(config),
        "files": {"hs": HS_FILE, "sar": SAR_FILE, "lidar": LIDAR_FILE,
                  "training_polygons": TRAINING_FILE, "reference_labels": REFERENCE_FILE},
        "training_layer": TRAINING_LAYER,
        "class_field": CLASS_FIELD,
        "class_name_field": CLASS_NAME_FIELD,
        "modalities": {
            "hs": {"bands": BAND_COUNTS["hs"], "epsg": HS_EPSG, "pixel_m": HS_PIXEL_M,
                   "nodata": HS_NODATA, "scale": HS_SCALE,
                   "wavelengths_nm": [round(float(w), 1) for w in hs_wavelengths()],
                   "cloud_pixels": int(layout.hs_cloud.sum())},
            "sar": {"bands": BAND_COUNTS["sar"], "band_names": ["VV", "VH"], "epsg": HS_EPSG,
                    "pixel_m": SAR_PIXEL_M,
                    "covered_hs_columns": [layout.sar_first_column, int(classes.shape[1])]},
            "lidar": {"bands": BAND_COUNTS["lidar"], "band_names": ["DSM"], "epsg": LIDAR_EPSG,
                      "pixel_m": LIDAR_PIXEL_M, "nodata": LIDAR_NODATA},
        },
        "classes": [dict(record,
                         scene_pixels=int((classes == record["value"]).sum()),
                         training_pixels=int(training_pixels[record["value"]]),
                         training_polygons=sum(r.land_cover == record["value"]
                                               for r in rectangles),
                         reference_pixels=int((labels == record["value"]).sum()))
                    for record in class_table()],
    }


def read_manifest(path: Path) -> Dict[str, object]:
    """The ``scene.json`` description written with a sample scene."""
    return json.loads(Path(path).read_text())


def write_sample_scene(config: SampleSceneConfig, folder: Path,
                       progress: Optional[ProgressCallback] = None,
                       is_cancelled: Optional[CancelCheck] = None) -> SampleScene:
    """Generate the sample scene for ``config`` and write it into ``folder``.

    Writes ``hs.tif``, ``sar.tif``, ``lidar.tif``, ``training_polygons.gpkg``,
    ``reference_labels.tif`` and ``scene.json``. Existing files of those names are replaced;
    on an error or a cancel none of them is touched.

    Raises:
        MamolInputError: invalid configuration or an unwritable folder.
        Cancelled: ``is_cancelled`` returned True.
    """
    config.validate()
    reporter = Reporter(progress, is_cancelled)
    folder = Path(folder)
    with staged_outputs(folder, OUTPUT_FILES) as paths:
        reporter.report(0)
        layout = generate_layout(config)
        reporter.report(10)
        rectangles = select_training_rectangles(layout.classes, config.seed)
        labels = reference_labels(layout.classes, rectangles)
        reporter.report(15)
        _write_hs(paths[HS_FILE], layout, config.seed, reporter, (15, 75))
        _write_sar(paths[SAR_FILE], layout, config.seed)
        reporter.report(82)
        _write_lidar(paths[LIDAR_FILE], layout, config.seed)
        reporter.report(90)
        _write_training(paths[TRAINING_FILE], rectangles)
        _write_reference(paths[REFERENCE_FILE], labels)
        manifest = _manifest(config, layout, rectangles, labels)
        paths[MANIFEST_FILE].write_text(json.dumps(manifest, indent=2))
        reporter.report(99)
        # Last chance to cancel: after this point the outputs are moved into place.
        reporter.check()
    log.info("sample scene of %d x %d pixels written to %s", config.size, config.size, folder)
    reporter.report(100)
    return SampleScene(folder=folder, hs=folder / HS_FILE, sar=folder / SAR_FILE,
                       lidar=folder / LIDAR_FILE, training_polygons=folder / TRAINING_FILE,
                       reference_labels=folder / REFERENCE_FILE, manifest=folder / MANIFEST_FILE)
