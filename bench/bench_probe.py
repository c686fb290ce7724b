"""The doctor's speed probe against a real classification (issue 32): does the probe's
estimate come within a factor of 2 of the measured time of the demo's classification?

1. ``python -m mamol doctor`` in a child process, as *Check environment* runs it, with the
   device and probe time given here;
2. the demo's classification (``make demo``): the sample scene of 256² pixels (seed 42) and
   a model of the demo's settings, the tiny backbone at P = 7, per pixel (seeded and
   untrained: speed does not depend on training), classified from all three rasters by
   ``python -m mamol classify`` in a child process, timed from its start to its exit;
3. the probe's estimate for that scene (:func:`core.probe.estimates` of its tiny-backbone
   rate, every pixel with three modalities, as the doctor's report assumes).

Usage:
    .venv/bin/python bench/bench_probe.py --device cpu
    .venv/bin/python bench/bench_probe.py --device cuda --size 1024
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

from mamol.core.backbone import TINY_ARCH  # noqa: E402
from mamol.core.probe import estimates  # noqa: E402

DEMO_PATCH = 7


def engine(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mamol", *arguments, "--progress", "json"],
                          capture_output=True, text=True, env=harness.engine_env())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=256, help="the scene's side (pixels)")
    parser.add_argument("--probe-seconds", default="20")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        doctor = engine("doctor", "--device", args.device, "--probe-seconds",
                        args.probe_seconds)
        doctor_seconds = time.perf_counter() - started
        if doctor.returncode != 0:
            sys.exit(f"doctor failed: {doctor.stderr}")
        facts = json.loads(doctor.stdout)
        tiny = next(p for p in facts["probe"] if p["arch"] == TINY_ARCH)
        guess = estimates(tiny["windows_per_second"], tiny["training_samples_per_second"],
                          DEMO_PATCH, side=args.size)["pixel_scene_seconds"]
        harness.sample_scene(args.size, folder / "scene")
        model = harness.fixture_model(TINY_ARCH, DEMO_PATCH, folder / "demo.mamol")
        rasters = [part for name, path in harness.scene_rasters(folder / "scene")
                   for part in (f"--{name}", path)]
        started = time.perf_counter()
        done = engine("classify", "--model", str(model), *rasters, "--device", args.device,
                      "--output", str(folder / "classes.tif"))
        measured = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"classify failed: {done.stderr}")
        result = json.loads(done.stdout)
    print(harness.host_banner(facts["device"]["chosen"], size=f"{args.size}²",
                              model=f"{TINY_ARCH} P={DEMO_PATCH} pixel"))
    print(f"doctor: {doctor_seconds:.1f} s in all, the tiny probe "
          f"{tiny['windows_per_second']:.1f} windows/s (batch {tiny['inference_batch']})")
    print(f"estimate for the demo's classification: {guess:.1f} s")
    print(f"measured: {measured:.1f} s from start to exit, {result['seconds']:.1f} s "
          f"classifying ({result['pixels_per_second']:.1f} pixels/s)")
    print(f"measured / estimate: {measured / guess:.2f}")


if __name__ == "__main__":
    main()
