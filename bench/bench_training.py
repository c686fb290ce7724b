"""Training throughput: samples per second of the real training loop (``train_model``).

Writes a sample scene into a temporary folder, trains on it with a seeded random backbone
(HS + SAR + LiDAR, missing rate η = 50 %, balanced classes) and prints the optimiser's
samples/s (forward, backward and AdamW step over the training epochs; data preparation and
validation excluded) over all epochs and steady (after the first epoch), the validation
time, and the wall time of the whole run. The frozen tower is bf16 on CUDA and fp32 on the
CPU unless ``--precision`` says otherwise; ``--compile`` compiles the encoder.

Usage:
    .venv/bin/python bench/bench_training.py --arch mamol-tiny-vit --patch-size 14
    .venv/bin/python bench/bench_training.py --arch ViT-B-16 --patch-size 14 --epochs 1 \\
        --samples-per-class 20
    .venv/bin/python bench/bench_training.py --arch ViT-B-16 --device cuda --samples-per-class 2000
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

from mamol.core.backbone import BackboneSpec  # noqa: E402
from mamol.training.labels import PolygonSource, SplitConfig  # noqa: E402
from mamol.training.missing import MissingSimulation, SimulationMode  # noqa: E402
from mamol.training.trainer import TrainingConfig, train_model  # noqa: E402

COLUMNS = [harness.Column("arch", "arch", number=False), harness.Column("patch_size", "P"),
           harness.Column("samples_per_second", "samples/s (all epochs)", ".1f"),
           harness.Column("steady_samples_per_second", "steady (after epoch 1)", ".1f"),
           harness.Column("validation_seconds", "validation s", ".1f"),
           harness.Column("seconds", "whole run s", ".1f"),
           harness.Column("peak_rss_mib", "peak RSS MiB", ".0f"),
           harness.Column("validation_oa", "validation OA", ".4f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=150)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    parser.add_argument("--compile", default="off", help="off, default, max-autotune")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    result, wall = run(args)
    timing = result.summary["timing"]
    print(harness.host_banner(timing["device"], tower=timing["precision"],
                              compile=args.compile, batch=args.batch_size,
                              epochs=args.epochs,
                              **{"training samples seen": timing["train_samples_seen"]}))
    table = harness.Table("training", COLUMNS, args.json_lines)
    table.header()
    table.row({"arch": args.arch, "patch_size": args.patch_size,
               "samples_per_second": timing["samples_per_second"],
               "steady_samples_per_second": timing["steady_samples_per_second"],
               "training_seconds": timing["training_seconds"],
               "validation_seconds": timing["validation_seconds"], "seconds": wall,
               "peak_rss_mib": harness.own_peak_rss_mib(),
               "validation_oa": result.summary["validation"]["oa"]})


def run(args):
    """Train on a fresh sample scene; (result, wall seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        scene = harness.sample_scene(args.scene_size, folder)
        config = TrainingConfig(
            modalities=(("hs", str(scene.hs)), ("sar", str(scene.sar)),
                        ("lidar", str(scene.lidar))),
            polygons=PolygonSource(str(scene.training_polygons), "class_id",
                                   name_field="class_name"),
            output_model=str(Path(folder) / "bench.mamol"),
            backbone=BackboneSpec(arch=args.arch), patch_size=args.patch_size,
            epochs=args.epochs, batch_size=args.batch_size,
            split=SplitConfig(max_train_per_class=args.samples_per_class,
                              max_validation_per_class=args.samples_per_class),
            simulation=MissingSimulation(SimulationMode.RATE, 0.5), device=args.device,
            precision=args.precision, compile_mode=args.compile)
        started = time.perf_counter()
        result = train_model(config, log=lambda line: None)
        return result, time.perf_counter() - started


if __name__ == "__main__":
    main()
