"""``python -m mamol scene``: the built-in sample scene (the same as mamol:createsamplescene)."""
from pathlib import Path
from typing import Dict, List

from .channel import Channel
from .options import add_config_options, config_values

NAME = "scene"
SUMMARY = "write the built-in sample scene"
HELP = (
    "Write the built-in synthetic scene: a hyperspectral raster (48 bands, 1 m) with a "
    "cloud-shaped hole, a SAR raster covering the eastern part, a LiDAR DSM in another CRS, "
    "training polygons and separate reference labels (the same as mamol:createsamplescene).")


def add_arguments(parser) -> None:
    from ..core import sample_scene
    add_config_options(parser, sample_scene.SampleSceneConfig)
    parser.add_argument("--output-folder", required=True,
                        help="folder that receives hs.tif, sar.tif, lidar.tif, "
                             "training_polygons.gpkg, reference_labels.tif and scene.json")


def outputs(args) -> List[Path]:
    """The files the run writes (locked for the run)."""
    from ..core.sample_scene import OUTPUT_FILES
    return [Path(args.output_folder) / name for name in OUTPUT_FILES]


def run(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..core import sample_scene
    config = sample_scene.SampleSceneConfig(
        **config_values(args, sample_scene.SampleSceneConfig))
    config.validate()
    scene = sample_scene.write_sample_scene(config, Path(args.output_folder),
                                            channel.progress, is_cancelled)
    manifest = sample_scene.read_manifest(scene.manifest)
    channel.log(f"Sample scene written to {scene.folder}")
    return {"folder": str(scene.folder), "hs": str(scene.hs), "sar": str(scene.sar),
            "lidar": str(scene.lidar), "training_polygons": str(scene.training_polygons),
            "reference_labels": str(scene.reference_labels), "manifest": str(scene.manifest),
            "classes": manifest["classes"]}
