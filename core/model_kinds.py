"""The model kinds, without torch: what one encoder pass labels (issue 17). Here so that the
configs and the Toolbox can name them without importing the model."""
import enum


class ModelKind(str, enum.Enum):
    """What one encoder pass labels."""

    PIXEL = "pixel"   # the paper's model: one P x P window per pixel, its CLS feature
    TILE = "tile"     # every pixel token of a P x P tile, one pass per tile and modality
