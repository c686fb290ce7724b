"""What one classification run is asked to do: :class:`ClassifyConfig` and its options."""
from dataclasses import dataclass
from typing import Optional, Tuple

from ..devices import (CPU_BLOCK_SIZE, CPU_INFERENCE_BATCH, GPU_BLOCK_SIZE, compile_field,
                       device_field, parse_compile_mode, parse_precision, precision_field)
from ..errors import MamolInputError
from ..grid import Bounds
from ..options import choices, option
from ..raster_io import DEFAULT_GDAL_CACHE_MB
from ..windows import max_missing_fraction_field

#: How a tile model's overlapping tiles give a pixel its class: from the tile where the pixel
#: is most central (the default), or the covering tiles averaged, weighted towards centres.
TILE_BLENDS = ("central", "weighted")


@dataclass(frozen=True)
class MaskSource:
    """Polygons outside which nothing is classified."""

    path: str
    layer: Optional[str] = None


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything one classification run needs."""

    model_path: str
    rasters: Tuple[Tuple[str, str], ...]       # (modality name, raster path)
    output_classes: str                        # class raster (GeoTIFF) + .qml next to it
    # the optional output rasters (each one row of inference.outputs.OUTPUTS)
    output_probabilities: Optional[str] = option(
        None, kind=str, output=True, flag="--probabilities", key="OUTPUT_PROBABILITIES",
        label="Class probabilities", help="One float32 band per class.")
    output_confidence: Optional[str] = option(
        None, kind=str, output=True, flag="--confidence", key="OUTPUT_CONFIDENCE",
        label="Confidence", help="The highest class probability of each pixel.")
    output_entropy: Optional[str] = option(
        None, kind=str, output=True, flag="--entropy", key="OUTPUT_ENTROPY",
        label="Normalised entropy", help="Entropy of the class probabilities divided by "
                                         "log(K): 0 = certain, 1 = undecided.")
    output_modalities: Optional[str] = option(
        None, kind=str, output=True, flag="--modalities-used", key="OUTPUT_MODALITIES",
        label="Modalities used", help="Bitmask of the modalities each pixel was classified "
                                      "from (bit 0 = the model's first modality); 0 = none.")
    reference: Optional[str] = None            # modality whose grid is used; None = first
    pixel_size: float = option(
        0.0, flag="--pixel-size", key="PIXEL_SIZE",
        label="Pixel size (0 = the reference's)", minimum=0.0, advanced=True,
        help="In the reference raster's CRS units.")
    extent: Optional[Bounds] = None            # in the reference raster's CRS
    extent_crs_wkt: Optional[str] = None       # CRS of ``extent`` if not the grid's
    mask: Optional[MaskSource] = None
    max_missing_fraction: Optional[float] = max_missing_fraction_field()
    stride: int = option(
        1, flag="--stride", key="STRIDE", label="Prediction stride", minimum=1, maximum=64,
        advanced=True,
        help="Classify every s-th pixel in each direction and fill its s×s cell (preview).")
    block_size: int = option(
        0, flag="--block-size", key="BLOCK_SIZE", label="Block size (pixels, 0 = automatic)",
        minimum=0, maximum=8192, advanced=True,
        help=f"Pixels per side of a processing block (16 or more); memory, not results. "
             f"Automatic: {GPU_BLOCK_SIZE} on a GPU, {CPU_BLOCK_SIZE} on the CPU.")
    batch_size: int = option(
        0, flag="--batch-size", key="BATCH_SIZE", label="Batch size (0 = automatic)",
        minimum=0, maximum=65536, advanced=True,
        help=f"Pixels per model call. Automatic: from free GPU memory on a GPU, "
             f"{CPU_INFERENCE_BATCH} on the CPU.")
    gdal_cache_mb: int = option(
        DEFAULT_GDAL_CACHE_MB, flag="--gdal-cache-mb", key="GDAL_CACHE",
        label="GDAL block cache for the run (MiB)", minimum=16, maximum=65536, advanced=True,
        help="GDAL keeps the raster blocks it reads and writes in one cache; it is capped at "
             "this size while the run lasts (QGIS's own setting is restored afterwards), so "
             "memory does not grow with the scene. More rarely helps: blocks are read in "
             "order.")
    device: str = device_field()
    precision: str = precision_field()     # frozen tower: auto | fp32 | bf16 | fp16
    compile_mode: str = compile_field()    # torch.compile: off | default | max-autotune
    tile_blend: str = option(
        TILE_BLENDS[0], flag="--tile-blend", key="TILE_BLEND",
        label="Tile kind: how tiles combine", advanced=True,
        choices=choices(TILE_BLENDS, ("Most central tile", "Centre-weighted average")),
        help="For models of the tile kind: take each pixel from the tile where it is most "
             "central, or average the covering tiles weighted towards their centres.")
    tile_step: int = option(
        0, flag="--tile-step", key="TILE_STEP",
        label="Tile kind: step (px, 0 = automatic)", minimum=0, maximum=1024,
        advanced=True,
        help="For models of the tile kind: start a tile every N pixels (automatic: "
             "P − 2·(P // 7), 10 for P = 14; at most P). Larger is faster; each pixel then "
             "sits nearer its tile's edge.")
    cog: bool = option(
        False, flag="--cog", key="COG", label="Write Cloud-Optimized GeoTIFFs", advanced=True,
        help="Every output as a COG with internal overviews, for serving over HTTP or object "
             "storage.")

    def validate(self) -> None:
        if not self.rasters:
            raise MamolInputError("Give at least one raster to classify.")
        names = [name for name, _ in self.rasters]
        if len(set(names)) != len(names):
            raise MamolInputError(f"Each modality may be given once, got {names}.")
        if self.stride < 1:
            raise MamolInputError(f"The stride must be at least 1, got {self.stride}.")
        if self.block_size != 0 and self.block_size < 16:
            raise MamolInputError(
                f"The block size must be 0 (automatic) or at least 16, got {self.block_size}.")
        if self.gdal_cache_mb < 16:
            raise MamolInputError(
                f"GDAL's block cache needs at least 16 MiB, got {self.gdal_cache_mb}.")
        if self.batch_size < 0:
            raise MamolInputError(
                f"The batch size must be 0 (automatic) or positive, got {self.batch_size}.")
        if self.pixel_size < 0:
            raise MamolInputError("The pixel size must be 0 (the raster's) or positive.")
        if self.max_missing_fraction is not None and not 0 <= self.max_missing_fraction <= 1:
            raise MamolInputError("The missing fraction of a window must be in [0, 1].")
        if self.reference is not None and self.reference not in names:
            raise MamolInputError(
                f"The reference grid comes from '{self.reference}', but no such raster was "
                "given.")
        parse_precision(self.precision)
        parse_compile_mode(self.compile_mode)
        if self.tile_step < 0:
            raise MamolInputError(
                f"The tile step must be 0 (automatic) or positive, got {self.tile_step}.")
        if self.tile_blend not in TILE_BLENDS:
            raise MamolInputError(
                f"Tile blending is 'central' or 'weighted', got '{self.tile_blend}'.")
