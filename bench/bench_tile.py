"""Tile vs per-pixel model kind, side by side on one scene (issue 17): encoder passes,
pixels/s and the speed-up, plus the time each kind takes for the whole scene.

A sample scene (HS + SAR + LiDAR) of ``--size`` pixels is written and two model files are
made from the same seeded, untrained weights (speed does not depend on the weights): one of
the pixel kind, one of the tile kind. Each kind classifies a centred crop of ``--crop``
pixels in a fresh process (the same pixels for both); the tile kind also classifies the
whole scene when ``--whole`` is given. The per-pixel time for the whole scene is
extrapolated from the crop's px/s when it is not run. Printed per run: classified pixels,
encoder passes (pixel: one per present modality and pixel; tile: one per present modality
and tile), passes per pixel, px/s, wall time.

Usage:
    .venv/bin/python bench/bench_tile.py --arch mamol-tiny-vit --size 512 --crop 96
    .venv/bin/python bench/bench_tile.py --arch ViT-B-16 --size 512 --crop 20 --tile-crop 128
    .venv/bin/python bench/bench_tile.py --arch ViT-B-16 --device cuda --size 1024 --crop 256
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

COLUMNS = [harness.Column("kind", "kind", number=False),
           harness.Column("area", "area", number=False),
           harness.Column("classified", "classified px"),
           harness.Column("passes", "encoder passes"),
           harness.Column("passes_per_pixel", "passes/px", ".4f"),
           harness.Column("pixels_per_second", "px/s", ".1f"),
           harness.Column("seconds", "wall s", ".1f")]


def single(args) -> None:
    """One classification in this process; prints one JSON line."""
    from osgeo import gdal

    from mamol.core.inference import ClassifyConfig, classify
    folder = Path(args.folder)
    extent = None
    if args.crop:
        dataset = gdal.Open(str(folder / "hs.tif"))
        x0, dx, _, y0, _, dy = dataset.GetGeoTransform()
        first = (dataset.RasterXSize - args.crop) // 2
        extent = (x0 + first * dx, y0 + (first + args.crop) * dy,
                  x0 + (first + args.crop) * dx, y0 + first * dy)
    config = ClassifyConfig(
        model_path=str(folder / f"{args.kind}.mamol"), rasters=harness.scene_rasters(folder),
        output_classes=str(folder / f"classes-{args.kind}.tif"),
        output_modalities=str(folder / f"used-{args.kind}.tif"), extent=extent,
        tile_step=args.tile_step, device=args.device, precision=args.precision)
    started = time.perf_counter()
    result = classify(config, log=lambda line: None)
    wall = time.perf_counter() - started
    counted = harness.encoder_passes(config.output_modalities)
    passes = counted["passes"] if result.encoder_passes is None else result.encoder_passes
    harness.print_child_record({"classified": counted["classified"], "passes": passes,
                                "seconds": wall,
                                "pixels_per_second": result.pixels_per_second})


def run(args, folder: str, kind: str, crop: int) -> dict:
    return harness.run_child(__file__, [
        "--single", "--folder", folder, "--kind", kind, "--crop", str(crop),
        "--device", args.device, "--precision", args.precision,
        "--tile-step", str(args.tile_step)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--size", type=int, default=512, help="scene side, pixels")
    parser.add_argument("--crop", type=int, default=96,
                        help="side of the centred crop both kinds classify")
    parser.add_argument("--tile-crop", type=int, default=0,
                        help="a larger crop for the tile kind (0 = --crop): tiles at a small "
                             "crop's edges reach outside it, which a large scene does not see")
    parser.add_argument("--whole", action="store_true",
                        help="also classify the whole scene with the tile kind")
    parser.add_argument("--tile-step", type=int, default=0, help="0 = the default, P − 2·(P // 7)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    harness.add_record_arguments(parser)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args)
        return
    from mamol.core.windows import tile_layout
    step = tile_layout(args.patch_size, args.tile_step)[0]
    print(harness.host_banner(args.device, arch=args.arch, P=args.patch_size, **{
        "tile step": step, "precision": args.precision, "scene": f"{args.size}²",
        "crop": f"{args.crop}²"}))
    table = harness.Table("tile", COLUMNS, args.json_lines)
    table.header()
    with tempfile.TemporaryDirectory() as folder:
        harness.sample_scene(args.size, folder)
        for kind in ("pixel", "tile"):   # the same seeded weights, two kinds
            harness.fixture_model(args.arch, args.patch_size, Path(folder) / f"{kind}.mamol",
                                  kind=kind)
        records = {}
        plan = [("pixel", args.crop), ("tile", args.crop)]
        if args.tile_crop and args.tile_crop != args.crop:
            plan.append(("tile", args.tile_crop))
        if args.whole:
            plan.append(("tile", 0))
        for kind, crop in plan:
            record = run(args, folder, kind, crop)
            records[(kind, crop)] = record
            record.update(kind=kind, area=f"crop {crop}²" if crop else f"whole {args.size}²",
                          passes_per_pixel=record["passes"] / max(record["classified"], 1))
            table.row(record)
    pixel, tile = records[("pixel", args.crop)], records[("tile", args.crop)]
    print(f"\nOn the same crop: tile/pixel px/s = "
          f"{tile['pixels_per_second'] / pixel['pixels_per_second']:.1f}×, "
          f"pixel/tile encoder passes = {pixel['passes'] / max(tile['passes'], 1):.1f}×")
    for crop in sorted({args.tile_crop} - {0, args.crop}) + ([0] if args.whole else []):
        other = records[("tile", crop)]
        area = f"crop {crop}²" if crop else "whole scene"
        fewer = (pixel["passes"] / pixel["classified"]) / (other["passes"] / other["classified"])
        print(f"Tile on the {area} against pixel on the crop: px/s "
              f"{other['pixels_per_second'] / pixel['pixels_per_second']:.1f}×, passes per "
              f"pixel {fewer:.1f}× fewer")
    whole = args.size * args.size
    print(f"Whole {args.size}² scene, per pixel (extrapolated from the crop's px/s): "
          f"{whole / pixel['pixels_per_second'] / 60:.1f} min")
    if ("tile", 0) in records:
        print(f"Whole {args.size}² scene, tile (measured): "
              f"{records[('tile', 0)]['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
