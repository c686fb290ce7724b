"""Datasets for the paper-protocol harness (``bench/paper/paper_protocol.py``).

Every dataset becomes GeoTIFF rasters in model order plus two disjoint label sources —
training and test — in a work folder; nothing is copied into the repository.

* ``sample``: the built-in sample scene (``core/sample_scene.py``): HS + SAR + LiDAR, the
  training polygons and the reference labels (which exclude the polygons and a buffer).
* ``trento``: ``../shared/data/trento/trento.npz`` read in place: the real LiDAR rasters
  and the standard ``TRLabel``/``TSLabel`` maps. The hyperspectral cube is not available
  here, so a **stand-in** 63-band cube is generated from the ground-truth map (see
  :func:`trento_standin_hs`); its file name and band descriptions say so, and accuracies
  with it are not comparable to the paper's.
* ``houston2013`` / ``trento-original`` / ``augsburg``: the original files a user holds
  (MATLAB ``.mat``, ``.npy`` or GeoTIFF), found in a folder by the names in
  :data:`LAYOUTS`. The ``.mat`` arrays carry no georeferencing; they are written on a
  nominal grid (the :data:`LAYOUTS` CRS and pixel size, an arbitrary origin), which is
  all the harness needs since every modality shares the label maps' pixel grid.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from osgeo import gdal

from mamol.core.class_style import apply_legend
from mamol.core.errors import MamolInputError
from mamol.core.model_file import ClassInfo
from mamol.core.raster_io import create_geotiff, srs_from_epsg
from mamol.core.sample_scene import (CLASS_FIELD, CLASS_NAME_FIELD, SampleSceneConfig,
                                     hs_wavelengths, material_spectra, smooth_noise,
                                     write_sample_scene)
from mamol.training.labels import LabelRasterSource, PolygonSource

REPO = Path(__file__).resolve().parents[2]
SHARED_TRENTO = REPO.parent / "shared" / "data" / "trento" / "trento.npz"

TRENTO_CLASSES = ((1, "Apple trees", "#6aa84f"), (2, "Buildings", "#cc0000"),
                  (3, "Ground", "#b07d48"), (4, "Woods", "#274e13"),
                  (5, "Vineyard", "#a64d79"), (6, "Roads", "#999999"))
#: AISA Eagle band centres of the Trento cube (63 bands, 402.9–989.1 nm).
TRENTO_WAVELENGTHS = np.linspace(402.9, 989.1, 63)
STANDIN_HS_FILE = "trento_STANDIN_hs_generated_from_labels.tif"


@dataclass
class Dataset:
    """Rasters (model order) and the disjoint training and test label sources."""

    name: str
    modalities: Tuple[Tuple[str, str], ...]
    train: Union[PolygonSource, LabelRasterSource]
    test: LabelRasterSource
    notes: List[str] = field(default_factory=list)

    def names(self) -> List[str]:
        return [name for name, _ in self.modalities]

    def describe(self) -> Dict[str, object]:
        return {"name": self.name, "rasters": dict(self.modalities),
                "train_labels": self.train.path, "test_labels": self.test.path,
                "notes": self.notes}


# ------------------------------------------------------------------ the sample scene

def sample_dataset(folder: Path, size: int = 256, seed: int = 42) -> Dataset:
    scene = write_sample_scene(SampleSceneConfig(size=size, seed=seed), folder)
    return Dataset(
        "sample", (("hs", str(scene.hs)), ("sar", str(scene.sar)), ("lidar", str(scene.lidar))),
        PolygonSource(str(scene.training_polygons), CLASS_FIELD, name_field=CLASS_NAME_FIELD),
        LabelRasterSource(str(scene.reference_labels)),
        [f"sample scene {size}² seed {seed}: training polygons vs reference labels (every "
         "other pixel, 3-pixel buffer around the polygons)"])


# ------------------------------------------------------------------ writing arrays

NOMINAL_ORIGIN = (600000.0, 5000000.0)


def _geotransform(pixel: float) -> Tuple[float, ...]:
    return (NOMINAL_ORIGIN[0], pixel, 0.0, NOMINAL_ORIGIN[1], 0.0, -pixel)


def write_array(path: Path, cube: np.ndarray, epsg: int, pixel: float,
                band_names: Sequence[str] = (), nodata=None) -> Path:
    """(rows, cols) or (rows, cols, bands) array -> GeoTIFF on the nominal grid."""
    cube = np.asarray(cube)
    if cube.ndim == 2:
        cube = cube[..., None]
    rows, cols, bands = cube.shape
    dataset = create_geotiff(path, cols, rows, bands, cube.dtype, _geotransform(pixel),
                             srs_from_epsg(epsg), nodata=nodata, band_names=band_names)
    for index in range(bands):
        dataset.GetRasterBand(index + 1).WriteArray(cube[:, :, index])
    dataset = None
    return path


def write_labels(path: Path, labels: np.ndarray, epsg: int, pixel: float,
                 classes: Sequence[Tuple[int, str, str]] = ()) -> Path:
    """A uint8 label raster (0 = unlabelled) with class names and colours when known."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MamolInputError(f"A label map must be 2-D, got shape {labels.shape}.")
    if labels.min() < 0 or labels.max() > 254 or not np.all(labels == np.round(labels)):
        raise MamolInputError("Label maps must hold whole class values 0–254 (0 = unlabelled).")
    labels = labels.astype(np.uint8)
    dataset = create_geotiff(path, labels.shape[1], labels.shape[0], 1, np.uint8,
                             _geotransform(pixel), srs_from_epsg(epsg), nodata=0,
                             band_names=["class"])
    band = dataset.GetRasterBand(1)
    if classes:  # before the pixels: GDAL >= 3.10 (libtiff 4.7) refuses a colour table after
        apply_legend(band, [ClassInfo(value, name, colour) for value, name, colour in classes])
    band.WriteArray(labels)
    band = dataset = None
    return path


# ------------------------------------------------------------------ Trento (shared data)

def trento_standin_hs(gt: np.ndarray, seed: int = 0) -> np.ndarray:
    """A STAND-IN hyperspectral cube (rows, cols, 63) float32 reflectance, generated from
    the ground-truth map because the real AISA Eagle cube is not available here.

    Each class is a mixture of generic materials (vegetation, soil, asphalt, roof) with
    per-pixel mixing jitter, brightness variation, a smooth illumination field and noise;
    apple trees and vineyards share their materials on purpose (only the mixture differs),
    so the cube alone does not separate every class. Unlabelled pixels get random smooth
    mixtures. It exists to exercise the HS branch of the pipeline, nothing more.
    """
    rng = np.random.default_rng([int(seed), 63])
    spectra = {k: np.interp(TRENTO_WAVELENGTHS, hs_wavelengths(), v)
               for k, v in material_spectra().items()}
    roof = 0.12 + 0.10 * (TRENTO_WAVELENGTHS - 400.0) / 600.0
    materials = np.stack([spectra["vegetation"], spectra["soil"], spectra["tar"], roof,
                          spectra["dark"]])                      # (5, bands)
    # class -> mean abundances of (vegetation, soil, asphalt, roof, dark)
    mixtures = np.array([
        [0.30, 0.30, 0.20, 0.10, 0.10],   # 0 unlabelled (replaced below)
        [0.65, 0.30, 0.00, 0.00, 0.05],   # 1 apple trees
        [0.05, 0.05, 0.15, 0.70, 0.05],   # 2 buildings
        [0.10, 0.85, 0.05, 0.00, 0.00],   # 3 ground
        [0.80, 0.05, 0.00, 0.00, 0.15],   # 4 woods
        [0.50, 0.45, 0.00, 0.00, 0.05],   # 5 vineyard
        [0.05, 0.10, 0.80, 0.00, 0.05],   # 6 roads
    ])
    rows, cols = gt.shape
    abundance = mixtures[np.clip(gt, 0, 6)].copy()               # (rows, cols, 5)
    unlabelled = gt == 0
    fields = np.stack([smooth_noise(rng, (rows, cols), 12.0) for _ in range(5)], axis=-1)
    abundance[unlabelled] = np.exp(1.5 * fields[unlabelled])
    abundance += rng.uniform(-0.12, 0.12, abundance.shape)
    abundance = np.clip(abundance, 0.0, None)
    abundance /= abundance.sum(axis=-1, keepdims=True) + 1e-9
    cube = abundance @ materials                                  # (rows, cols, bands)
    illumination = 1.0 + 0.10 * smooth_noise(rng, (rows, cols), 40.0)
    brightness = rng.lognormal(0.0, 0.10, (rows, cols)) * illumination
    cube = cube * brightness[..., None] + rng.normal(0.0, 0.005, cube.shape)
    return np.clip(cube, 0.0, None).astype(np.float32)


def trento_dataset(folder: Path, npz: Path = SHARED_TRENTO, seed: int = 0) -> Dataset:
    """Trento from the shared npz (read in place): real LiDAR, standard train/test maps and
    the stand-in HS cube, written as GeoTIFFs into ``folder`` (a scratch folder)."""
    if not Path(npz).is_file():
        raise MamolInputError(f"Trento data not found at {npz}.")
    with np.load(npz) as data:
        lidar, train, test, gt = (data[k] for k in ("lidar", "train_labels", "test_labels",
                                                    "gt"))
    if np.any((train > 0) & (test > 0)):
        raise MamolInputError("The Trento training and test maps overlap.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    epsg, pixel = 32632, 1.0
    hs = write_array(folder / STANDIN_HS_FILE, trento_standin_hs(gt, seed), epsg, pixel,
                     [f"STAND-IN band {i + 1}: {wl:.1f} nm"
                      for i, wl in enumerate(TRENTO_WAVELENGTHS)])
    gdal_hs = gdal.Open(str(hs), gdal.GA_Update)
    gdal_hs.SetMetadataItem("STANDIN", "synthetic cube generated from the Trento label map; "
                            "not the AISA Eagle data")
    gdal_hs = None
    lidar_path = write_array(folder / "trento_lidar.tif", lidar, epsg, pixel,
                             ["LiDAR elevation", "LiDAR channel 2 (intensity-like)"])
    train_path = write_labels(folder / "trento_train_labels.tif", train, epsg, pixel,
                              TRENTO_CLASSES)
    test_path = write_labels(folder / "trento_test_labels.tif", test, epsg, pixel,
                             TRENTO_CLASSES)
    return Dataset("trento", (("hs", str(hs)), ("lidar", str(lidar_path))),
                   LabelRasterSource(str(train_path)), LabelRasterSource(str(test_path)),
                   ["Trento: real LiDAR (2 rasters) and the standard TRLabel/TSLabel maps "
                    f"from {npz}; HS is a STAND-IN generated from the ground truth "
                    f"({STANDIN_HS_FILE}), so HS accuracies are not the paper's"])


# ------------------------------------------------------------------ original files

@dataclass(frozen=True)
class Layout:
    """Where the original files of a benchmark are: per role, accepted file names (the
    first found is used) and the array key in a .mat file."""

    modalities: Tuple[Tuple[str, Tuple[str, ...], str], ...]  # (modality, names, key)
    train: Tuple[Tuple[str, ...], str]
    test: Tuple[Tuple[str, ...], str]
    epsg: int
    pixel: float
    classes: Tuple[Tuple[int, str, str], ...] = ()


HOUSTON_CLASSES = tuple((i + 1, name, colour) for i, (name, colour) in enumerate((
    ("Healthy grass", "#00d000"), ("Stressed grass", "#80ff00"),
    ("Synthetic grass", "#31a354"), ("Trees", "#00803a"), ("Soil", "#a0522d"),
    ("Water", "#00ffff"), ("Residential", "#ffffff"), ("Commercial", "#d8b0b0"),
    ("Road", "#bfbfbf"), ("Highway", "#ff8000"), ("Railway", "#8c4a00"),
    ("Parking lot 1", "#ffff00"), ("Parking lot 2", "#c0c000"),
    ("Tennis court", "#ff00ff"), ("Running track", "#e00000"))))
AUGSBURG_CLASSES = ((1, "Forest", "#274e13"), (2, "Residential area", "#e06666"),
                    (3, "Industrial area", "#999999"), (4, "Low plants", "#93c47d"),
                    (5, "Allotment", "#f1c232"), (6, "Commercial area", "#cc0000"),
                    (7, "Water", "#3d85c6"))

LAYOUTS: Dict[str, Layout] = {
    "houston2013": Layout(
        (("hs", ("HSI.mat", "Houston_HSI.mat", "hsi.npy", "hs.tif"), "HSI"),
         ("lidar", ("LiDAR.mat", "Houston_LiDAR.mat", "lidar.npy", "lidar.tif"), "LiDAR")),
        (("TRLabel.mat", "train_labels.npy", "train_labels.tif"), "TRLabel"),
        (("TSLabel.mat", "test_labels.npy", "test_labels.tif"), "TSLabel"),
        epsg=32615, pixel=2.5, classes=HOUSTON_CLASSES),
    "trento-original": Layout(
        (("hs", ("HSI.mat", "Italy_hsi.mat", "hsi.npy", "hs.tif"), "HSI"),
         ("lidar", ("LiDAR.mat", "Italy_lidar.mat", "lidar.npy", "lidar.tif"), "LiDAR")),
        (("TRLabel.mat", "train_labels.npy", "train_labels.tif"), "TRLabel"),
        (("TSLabel.mat", "test_labels.npy", "test_labels.tif"), "TSLabel"),
        epsg=32632, pixel=1.0, classes=TRENTO_CLASSES),
    "augsburg": Layout(
        (("hs", ("data_HS_LR.mat", "hsi.npy", "hs.tif"), "data_HS_LR"),
         ("sar", ("data_SAR_HR.mat", "sar.npy", "sar.tif"), "data_SAR_HR"),
         ("lidar", ("data_DSM.mat", "dsm.npy", "dsm.tif"), "data_DSM")),
        (("TrainImage.mat", "train_labels.npy", "train_labels.tif"), "TrainImage"),
        (("TestImage.mat", "test_labels.npy", "test_labels.tif"), "TestImage"),
        epsg=32632, pixel=30.0, classes=AUGSBURG_CLASSES),
}


def read_array(path: Path, key: Optional[str] = None) -> np.ndarray:
    """An array from a .mat (the named key, or the file's only array), .npy or raster file,
    as (rows, cols[, bands])."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise MamolInputError(
                "Reading .mat files needs SciPy (apt install python3-scipy).") from exc
        try:
            content = loadmat(str(path))
        except NotImplementedError as exc:  # MATLAB v7.3 = HDF5
            raise MamolInputError(
                f"'{path.name}' is a MATLAB v7.3 (HDF5) file; re-save it with "
                "save(..., '-v7') or convert it to .npy.") from exc
        arrays = {k: v for k, v in content.items()
                  if not k.startswith("__") and isinstance(v, np.ndarray) and v.ndim >= 2}
        if key in arrays:
            return arrays[key]
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        raise MamolInputError(f"'{path.name}' has no array '{key}' (it has "
                              f"{', '.join(sorted(arrays)) or 'none'}).")
    dataset = gdal.Open(str(path))
    if dataset is None:
        raise MamolInputError(f"Cannot read '{path}'.")
    array = dataset.ReadAsArray()
    return np.moveaxis(array, 0, -1) if array.ndim == 3 else array


def _find(folder: Path, names: Sequence[str]) -> Path:
    present = {p.name.lower(): p for p in folder.iterdir()}
    for name in names:
        if name.lower() in present:
            return present[name.lower()]
    raise MamolInputError(f"None of {', '.join(names)} is in {folder}.")


def original_dataset(layout_name: str, source: Path, folder: Path) -> Dataset:
    """A benchmark from its original files in ``source`` (names and keys in
    :data:`LAYOUTS`), written as GeoTIFFs on a nominal grid into ``folder``."""
    layout = LAYOUTS[layout_name]
    source, folder = Path(source), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = read_array(_find(source, layout.train[0]), layout.train[1])
    test = read_array(_find(source, layout.test[0]), layout.test[1])
    if train.shape != test.shape:
        raise MamolInputError(f"The training map is {train.shape} but the test map is "
                              f"{test.shape}.")
    if np.any((train > 0) & (test > 0)):
        raise MamolInputError("The training and test maps overlap; give disjoint maps.")
    modalities = []
    for name, names, key in layout.modalities:
        cube = read_array(_find(source, names), key).astype(np.float32)
        if cube.shape[:2] != train.shape:
            raise MamolInputError(f"The {name} array is {cube.shape[:2]} pixels but the label "
                                  f"maps are {train.shape}.")
        path = write_array(folder / f"{layout_name}_{name}.tif", cube, layout.epsg,
                           layout.pixel)
        modalities.append((name, str(path)))
    train_path = write_labels(folder / f"{layout_name}_train_labels.tif", train, layout.epsg,
                              layout.pixel, layout.classes)
    test_path = write_labels(folder / f"{layout_name}_test_labels.tif", test, layout.epsg,
                             layout.pixel, layout.classes)
    return Dataset(layout_name, tuple(modalities), LabelRasterSource(str(train_path)),
                   LabelRasterSource(str(test_path)),
                   [f"{layout_name} from the original files in {source}"])
