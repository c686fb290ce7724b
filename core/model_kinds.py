"""The model kinds, without torch: what one encoder pass labels (issue 17). Here so that the
configs and the Toolbox can name them without importing the model."""
import enum

from .options import choices, option


class ModelKind(str, enum.Enum):
    """What one encoder pass labels."""

    PIXEL = "pixel"   # the paper's model: one P x P window per pixel, its CLS feature
    TILE = "tile"     # every pixel token of a P x P tile, one pass per tile and modality


def model_kind_field():
    """The ``model_kind`` field of the training config, declared here (not in
    :mod:`training.trainer`) so that the core's messages can name the option too."""
    return option(
        ModelKind.PIXEL.value, flag="--model-kind", key="MODEL_KIND", label="Model kind",
        choices=choices(ModelKind, ("Per pixel (the paper's; slow)",
                                    "Tile (about 100× faster)")),
        help="Per pixel: one encoder pass per pixel (the paper). Tile: one pass labels every "
             "pixel of a P × P tile (tiles overlap), some 100× fewer passes at P = 14 when "
             "classifying, usually a little less accurate. MCE needs the per-pixel kind.")
