"""The modalities a MaMOL model knows, in model order: the one table that the grid, the
trainer, the engine's options and the Processing algorithms read (a new modality is one row
here).

Model order matters: a model's missing-pattern code has bit ``i`` set when modality ``i`` of
the model is present, and the rasters given are taken in this order.
"""
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Modality:
    name: str         # the model file's and the code's name: "hs"
    label: str        # short, for messages and reports: "HS"
    description: str  # what the raster is: "hyperspectral raster"
    key: str          # the Processing parameter: "HS"

    @property
    def flag(self) -> str:
        """The engine's command-line option: ``--hs``."""
        return "--" + self.name


MODALITIES: Tuple[Modality, ...] = (
    Modality("hs", "HS", "hyperspectral raster", "HS"),
    Modality("sar", "SAR", "SAR raster", "SAR"),
    Modality("lidar", "LiDAR", "LiDAR / DSM raster", "LIDAR"),
)
#: The modality names in model order.
NAMES: Tuple[str, ...] = tuple(m.name for m in MODALITIES)
#: Each name's label ("lidar" → "LiDAR").
LABELS = {m.name: m.label for m in MODALITIES}


def modality_label(name: str) -> str:
    """The label of modality ``name`` (the name itself when it is not one of ours)."""
    return LABELS.get(name, name)
