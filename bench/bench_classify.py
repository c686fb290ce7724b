"""End-to-end classification throughput and peak memory, next to the plain frozen backbone.

For each scene size a sample scene (HS + SAR + LiDAR) is written, a model file with the
requested backbone is made (seeded, untrained: speed does not depend on the weights), and
``core.inference.classify`` runs on the whole scene in a fresh process, so that the peak
RSS is that run's alone. Printed per run:

* end-to-end pixels/s (classified target pixels; with a stride s, one per s×s cell) and
  encoder passes/s (target pixels × modalities present there),
* the plain frozen backbone's samples/s on random tokens of the same count (P² + CLS) and
  batch, measured in the same process right after, and the ratio of the two,
* peak RSS (CPU) or peak CUDA memory. The runs' default sizes classify the same number of
  pixels on ever larger scenes, so a peak that grows with the scene shows up; GDAL's
  block cache is capped per run (``--gdal-cache-mb``, the product's default).

Usage:
    .venv/bin/python bench/bench_classify.py --arch mamol-tiny-vit --runs 512:4 2048:16 4096:32
    .venv/bin/python bench/bench_classify.py --arch ViT-B-16 --runs 512:32
    .venv/bin/python bench/bench_classify.py --arch ViT-B-16 --device cuda --runs 512:1 2048:1
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

from mamol.core.raster_io import DEFAULT_GDAL_CACHE_MB  # noqa: E402

COLUMNS = [harness.Column("scene", "scene", number=False), harness.Column("stride", "stride"),
           harness.Column("batch", "batch"), harness.Column("classified", "classified px"),
           harness.Column("pixels_per_second", "px/s", ".1f"),
           harness.Column("encoder_passes_per_second", "encoder passes/s", ".1f"),
           harness.Column("backbone_samples_per_second", "backbone samples/s", ".1f"),
           harness.Column("ratio", "ratio", ".2f"), harness.Column("peak_mib", "peak MiB", ".0f"),
           harness.Column("seconds", "wall s", ".1f")]


def backbone_rate(arch: str, patch: int, batch: int, device: str, precision: str,
                  seconds: float = 20.0) -> float:
    """Plain frozen backbone samples/s on random tokens of the run's shape (the same SDPA
    blocks and precision as the product, no adapters)."""
    import torch

    from mamol.core.devices import resolve_device, resolve_precision
    target = resolve_device(device)
    encoder, context = harness.plain_tower(arch, target, resolve_precision(precision, target))
    tokens = torch.randn(batch, patch * patch, encoder.width, device=target)
    with torch.no_grad():
        timing = harness.measure(lambda: encoder(tokens, context), target, seconds=seconds,
                                 min_calls=2)
    return timing.rate(batch)


def single(args) -> None:
    """One classification in this process; prints one JSON line."""
    import time

    from mamol.core.inference import ClassifyConfig, classify
    folder = Path(args.folder)
    config = ClassifyConfig(
        model_path=str(folder / "model.mamol"), rasters=harness.scene_rasters(folder),
        output_classes=str(folder / "classes.tif"),
        output_modalities=str(folder / "used.tif"), stride=args.stride,
        gdal_cache_mb=args.gdal_cache_mb,
        batch_size=args.batch_size, device=args.device, precision=args.precision)
    lines = []
    peaks = harness.PeakMemory(args.device)
    started = time.perf_counter()
    result = classify(config, log=lines.append)
    wall = time.perf_counter() - started
    batch = int(lines[0].split("batches of ")[1].split(",")[0])
    counted = harness.encoder_passes(config.output_modalities, args.stride)
    harness.print_child_record({
        "pixels_per_second": result.pixels_per_second, "seconds": wall,
        "classified": counted["classified"], "encoder_passes": counted["passes"],
        "encoder_passes_per_second": counted["passes"] / result.seconds,
        "peak_mib": peaks.main_mib(), "batch": batch,
        "backbone_samples_per_second": backbone_rate(
            args.arch, args.patch_size, batch, args.device, args.precision)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=0, help="0 = automatic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    parser.add_argument("--gdal-cache-mb", type=int, default=DEFAULT_GDAL_CACHE_MB,
                        help="GDAL block cache of each run, MiB")
    parser.add_argument("--runs", nargs="+", default=["512:4", "2048:16", "4096:32"],
                        help="SIZE:STRIDE pairs")
    harness.add_record_arguments(parser)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args)
        return
    print(harness.host_banner(args.device, arch=args.arch, P=args.patch_size,
                              batch=args.batch_size or "automatic", precision=args.precision,
                              **{"GDAL cache MiB": args.gdal_cache_mb}))
    table = harness.Table("classify", COLUMNS, args.json_lines)
    table.header()
    for run in args.runs:
        size, stride = (int(v) for v in run.split(":"))
        with tempfile.TemporaryDirectory() as folder:
            harness.sample_scene(size, folder)
            harness.fixture_model(args.arch, args.patch_size, Path(folder) / "model.mamol")
            record = harness.run_child(__file__, [
                "--single", "--folder", folder, "--stride", str(stride), "--arch", args.arch,
                "--patch-size", str(args.patch_size), "--batch-size", str(args.batch_size),
                "--device", args.device, "--precision", args.precision,
                "--gdal-cache-mb", str(args.gdal_cache_mb)])
        record.update(scene=f"{size}²", stride=stride, ratio=record[
            "encoder_passes_per_second"] / record["backbone_samples_per_second"])
        table.row(record)


if __name__ == "__main__":
    main()
