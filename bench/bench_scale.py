"""Scaling under torchrun (issue 18): sharded classification and DDP training with 1, 2 and
4 gloo CPU processes on this machine (and, where CUDA is present, 1 process per GPU with
NCCL), printing throughput and the speed-up over one process.

Each run is the real engine (``torchrun --standalone --nproc-per-node N -m mamol …``, or
``python -m mamol …`` for one process), timed from start to exit, so process start-up,
imports, reading the scene and (classification) assembling the outputs are included; the
engine's own throughput (pixels/s of its classification loop; training samples/s from the
report) is printed beside it. Each rank gets cores // N torch threads
(``MAMOL_THREADS_PER_RANK`` to override). On a machine with few cores, expect little
speed-up: the processes share the cores one process already uses.

Usage:
    PYTHONPATH=.build/plugins .venv/bin/python bench/bench_scale.py
    PYTHONPATH=.build/plugins .venv/bin/python bench/bench_scale.py --size 256 \\
        --processes 1 2 4 --epochs 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

COLUMNS = [harness.Column("run", "run", number=False),
           harness.Column("device", "device", number=False),
           harness.Column("processes", "processes"), harness.Column("seconds", "wall s", ".1f"),
           harness.Column("rate", "end-to-end rate", number=False),
           harness.Column("loop_rate", "engine loop rate", number=False),
           harness.Column("speed_up", "speed-up (wall)", number=False)]


def _run(command, env, limit):
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n"
                         f"{done.stderr[-3000:]}")
    return seconds, done.stdout


def _launcher(processes: int):
    if processes == 1:
        return [sys.executable, "-m", "mamol"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), "-m", "mamol"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="sample scene side, px")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=3600, help="seconds per run")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-classify", action="store_true")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    env = harness.engine_env()
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(harness.host_banner(cores=cores, scene=f"{args.size}²", arch=args.arch,
                              P=args.patch_size))
    setups = [("cpu", n) for n in args.processes]
    if torch.cuda.is_available():
        setups.append(("cuda", torch.cuda.device_count()))
    with tempfile.TemporaryDirectory(prefix="mamol-scale-") as folder:
        folder = Path(folder)
        _run([sys.executable, "-m", "mamol", "scene", "--size", str(args.size),
              "--output-folder", str(folder / "scene"), "--progress", "none"], env, args.limit)
        scene = folder / "scene"
        rasters = ["--hs", str(scene / "hs.tif"), "--sar", str(scene / "sar.tif"),
                   "--lidar", str(scene / "lidar.tif")]
        train = rasters + [
            "--polygons", str(scene / "training_polygons.gpkg"), "--class-field", "class_id",
            "--arch", args.arch, "--weights", "random", "--patch-size", str(args.patch_size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--max-train-per-class", str(args.samples_per_class),
            "--max-validation-per-class", "20", "--missing-rate", "0.5", "--progress", "none"]
        model = folder / "model.mamol"
        _run(_launcher(1) + ["train"] + train + ["--device", "cpu", "--epochs", "1",
                                                  "--output", str(model)], env, args.limit)
        rows = []
        for device, processes in setups:
            run_env = dict(env)
            if not args.skip_train:
                out = folder / f"train-{device}-{processes}.mamol"
                seconds, _ = _run(_launcher(processes) + ["train"] + train + [
                    "--device", device, "--output", str(out), "--report",
                    str(out.with_suffix(".html"))], run_env, args.limit)
                timing = json.loads(out.with_suffix(".json").read_text())["timing"]
                rows.append(("train", device, processes, seconds,
                             timing["train_samples_seen"] / seconds,
                             timing["samples_per_second"], "samples/s"))
            if not args.skip_classify:
                out = folder / f"classify-{device}-{processes}"
                seconds, stdout = _run(_launcher(processes) + [
                    "classify", "--model", str(model)] + rasters + [
                    "--device", device, "--block-size", str(args.block_size),
                    "--output", str(out / "classes.tif"), "--probabilities",
                    str(out / "probabilities.tif"), "--progress", "none"], run_env, args.limit)
                result = dict(line.split(": ", 1) for line in stdout.splitlines()
                              if ": " in line)
                rows.append(("classify", device, processes, seconds,
                             args.size * args.size / seconds,
                             float(result["pixels_per_second"]), "px/s"))
    table = harness.Table("scale", COLUMNS, args.json_lines)
    table.header()
    for what, device, processes, seconds, rate, loop, unit in rows:
        base = next(r for r in rows if r[0] == what and r[2] == min(
            x[2] for x in rows if x[0] == what and x[1] == "cpu") and r[1] == "cpu")
        table.row({"run": what, "device": device, "processes": processes, "seconds": seconds,
                   "unit": unit, "rate_value": rate, "loop_rate_value": loop,
                   "speed_up_value": base[3] / seconds, "rate": f"{rate:.0f} {unit}",
                   "loop_rate": f"{loop:.0f} {unit}", "speed_up": f"{base[3] / seconds:.2f}×"})


if __name__ == "__main__":
    main()
