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
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plugin_path  # noqa: E402,F401 - puts the plugin on sys.path


def make_models(arch: str, patch: int, folder: Path) -> None:
    """pixel.mamol and tile.mamol: the same seeded weights, two kinds."""
    import torch

    from mamol.core.backbone import BackboneSpec, build_visual_tower, fingerprint
    from mamol.core.mamol_model import AdapterConfig, MamolModel, ModalitySpec, ModelKind
    from mamol.core.model_file import ClassInfo, ModalityInfo, ModelHeader, save_model
    from mamol.core.sample_scene import CLASS_STYLE
    spec = BackboneSpec(arch=arch)
    bands = {"hs": 48, "sar": 2, "lidar": 1}
    stats = {"hs": (2000.0, 1500.0), "sar": (0.1, 0.1), "lidar": (200.0, 10.0)}
    for kind in (ModelKind.PIXEL, ModelKind.TILE):
        visual = build_visual_tower(spec)
        torch.manual_seed(0)
        model = MamolModel([ModalitySpec(n, b) for n, b in bands.items()], 7, visual,
                           AdapterConfig(kind=kind))
        header = ModelHeader(
            modalities=tuple(ModalityInfo(n, b, (stats[n][0],) * b, (stats[n][1],) * b)
                             for n, b in bands.items()),
            classes=tuple(ClassInfo(int(k), v[0], v[1]) for k, v in CLASS_STYLE.items()),
            patch_size=patch, backbone=spec, backbone_fingerprint=fingerprint(visual),
            adapter=model.config.to_json(), training={"max_missing_fraction": 0.5})
        save_model(folder / f"{kind.value}.mamol", model, header)


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
        model_path=str(folder / f"{args.kind}.mamol"),
        rasters=tuple((n, str(folder / f"{n}.tif")) for n in ("hs", "sar", "lidar")),
        output_classes=str(folder / f"classes-{args.kind}.tif"),
        output_modalities=str(folder / f"used-{args.kind}.tif"), extent=extent,
        tile_step=args.tile_step, device=args.device, precision=args.precision)
    started = time.perf_counter()
    result = classify(config, log=lambda line: None)
    wall = time.perf_counter() - started
    used = gdal.Open(config.output_modalities).ReadAsArray()
    classified = int((used > 0).sum())
    if result.encoder_passes is None:
        passes = int(sum(((used >> bit) & 1).sum() for bit in range(3)))
    else:
        passes = result.encoder_passes
    print(json.dumps({"classified": classified, "passes": passes, "seconds": wall,
                      "pixels_per_second": result.pixels_per_second}))


def run(args, folder: str, kind: str, crop: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--single", "--folder", folder, "--kind", kind,
         "--crop", str(crop), "--device", args.device, "--precision", args.precision,
         "--tile-step", str(args.tile_step)],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args)
        return
    from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene
    from mamol.core.windows import tile_layout
    step = tile_layout(args.patch_size, args.tile_step)[0]
    print(f"host {platform.node()} ({os.cpu_count()} CPUs), device {args.device}, "
          f"arch {args.arch}, P={args.patch_size}, tile step {step}, "
          f"precision {args.precision}, scene {args.size}², crop {args.crop}²")
    print("| kind | area | classified px | encoder passes | passes/px | px/s | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        write_sample_scene(SampleSceneConfig(size=args.size, seed=42), folder)
        make_models(args.arch, args.patch_size, Path(folder))
        records = {}
        plan = [("pixel", args.crop), ("tile", args.crop)]
        if args.tile_crop and args.tile_crop != args.crop:
            plan.append(("tile", args.tile_crop))
        if args.whole:
            plan.append(("tile", 0))
        for kind, crop in plan:
            record = run(args, folder, kind, crop)
            records[(kind, crop)] = record
            area = f"crop {crop}²" if crop else f"whole {args.size}²"
            print(f"| {kind} | {area} | {record['classified']} | {record['passes']} | "
                  f"{record['passes'] / max(record['classified'], 1):.4f} | "
                  f"{record['pixels_per_second']:.1f} | {record['seconds']:.1f} |",
                  flush=True)
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
