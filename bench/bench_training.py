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
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plugin_path  # noqa: E402,F401 - puts the plugin on sys.path

from mamol.core.backbone import BackboneSpec  # noqa: E402
from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene  # noqa: E402
from mamol.training.labels import PolygonSource, SplitConfig  # noqa: E402
from mamol.training.missing import MissingSimulation, SimulationMode  # noqa: E402
from mamol.training.trainer import TrainingConfig, train_model  # noqa: E402


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
    args = parser.parse_args()
    result, wall = run(args)
    timing = result.summary["timing"]
    print(f"host: {platform.node()} ({os.cpu_count()} CPUs), device {timing['device']}, "
          f"tower {timing['precision']}, compile {args.compile}")
    print(f"arch {args.arch}, P={args.patch_size}, batch {args.batch_size}, "
          f"{args.epochs} epoch(s), {timing['train_samples_seen']} training samples seen")
    steady = timing["steady_samples_per_second"]
    print(f"training samples/s: {timing['samples_per_second']:.1f} over all epochs, "
          f"steady (after epoch 1) {'-' if steady is None else f'{steady:.1f}'} "
          f"(optimiser steps {timing['training_seconds']:.1f} s, validation "
          f"{timing['validation_seconds']:.1f} s; whole run {wall:.1f} s)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {peak:.0f} MiB")
    print(f"validation OA of the kept epoch: {result.summary['validation']['oa']:.4f}")


def run(args):
    """Train on a fresh sample scene; (result, wall seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        scene = write_sample_scene(SampleSceneConfig(size=args.scene_size, seed=42), folder)
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
