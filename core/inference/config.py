"""What one classification run is asked to do: :class:`ClassifyConfig` and its options."""
from dataclasses import dataclass
from typing import Optional, Tuple

from ..devices import parse_compile_mode, parse_precision
from ..errors import MamolInputError
from ..grid import Bounds
from ..raster_io import DEFAULT_GDAL_CACHE_MB

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
    output_probabilities: Optional[str] = None  # K float32 bands
    output_confidence: Optional[str] = None    # max probability
    output_entropy: Optional[str] = None       # entropy / log K, in [0, 1]
    output_modalities: Optional[str] = None    # bitmask of the modalities used per pixel
    reference: Optional[str] = None            # modality whose grid is used; None = first
    pixel_size: float = 0.0                    # 0 = the reference raster's
    extent: Optional[Bounds] = None            # in the reference raster's CRS
    extent_crs_wkt: Optional[str] = None       # CRS of ``extent`` if not the grid's
    mask: Optional[MaskSource] = None
    max_missing_fraction: Optional[float] = None  # None = the value the model was trained with
    stride: int = 1
    block_size: int = 0                        # pixels per block side; 0 = automatic
    batch_size: int = 0                        # pixels per model call; 0 = automatic
    gdal_cache_mb: int = DEFAULT_GDAL_CACHE_MB  # GDAL block cache for the run, MiB
    device: str = "auto"
    precision: str = "auto"                    # frozen tower: auto (bf16 on CUDA) | fp32 | bf16
    compile_mode: str = "off"                  # torch.compile: off | default | max-autotune
    tile_blend: str = TILE_BLENDS[0]           # tile models: see TILE_BLENDS (issue 17)
    tile_step: int = 0                         # tile models: lattice step; 0 = default
    cog: bool = False                          # outputs as Cloud-Optimized GeoTIFFs

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
