"""Training throughput of the same run in two hosts: plain Python and ``qgis_process``.

The model is the same code in both, so any gap is the host's: the libraries QGIS loads
before PyTorch can take over PyTorch's calls. On Debian 13, ``qgis_process`` brings
Debian's reference BLAS (``libblas.so.3``) into the process's global symbol scope and
PyTorch's CPU GEMM resolves to it (several times slower); plain Python, where GDAL's
libraries are loaded privately by the ``osgeo`` extension, keeps PyTorch's own. The fix is
to run the model in its own process; this script measures the gap.

It writes one sample scene, then trains the same configuration (random seeded tiny
backbone, HS + SAR + LiDAR, missing rate 50 %, CPU, fp32) twice: here with ``train_model``,
and through ``qgis_process run mamol:trainmodel``. It prints the optimiser's samples/s of
each (from the training report; data preparation and validation excluded) and the BLAS
libraries mapped into each process.

Run it with the QGIS environment of the Makefile (``make bench-host``), which sets
QGIS_PLUGINPATH and the profile the plugin is enabled in; ``.ci/debian13 bench-host`` runs
it on Debian 13.
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

from mamol.core.backbone import BackboneSpec  # noqa: E402
from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene  # noqa: E402
from mamol.training.labels import PolygonSource, SplitConfig  # noqa: E402
from mamol.training.missing import MissingSimulation, SimulationMode  # noqa: E402
from mamol.training.trainer import TrainingConfig, train_model  # noqa: E402

BLAS_NAMES = ("blas", "lapack", "mkl", "gomp", "iomp")


def blas_libraries(pid) -> set:
    """File names of the BLAS/OpenMP-like libraries mapped into process ``pid``."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    names = {Path(line.split()[-1]).name for line in text.splitlines() if "/" in line}
    return {name for name in names if any(key in name.lower() for key in BLAS_NAMES)}


def plain_python(args, scene, folder: Path) -> dict:
    config = TrainingConfig(
        modalities=(("hs", str(scene.hs)), ("sar", str(scene.sar)),
                    ("lidar", str(scene.lidar))),
        polygons=PolygonSource(str(scene.training_polygons), "class_id",
                               name_field="class_name"),
        output_model=str(folder / "plain.mamol"),
        backbone=BackboneSpec(arch=args.arch), patch_size=args.patch_size,
        epochs=args.epochs, batch_size=args.batch_size,
        split=SplitConfig(max_train_per_class=args.samples_per_class),
        simulation=MissingSimulation(SimulationMode.RATE, 0.5), device="cpu",
        precision="fp32", seed=0)
    started = time.perf_counter()
    result = train_model(config, log=lambda line: None)
    timing = dict(result.summary["timing"])
    timing["wall"] = time.perf_counter() - started
    timing["libraries"] = blas_libraries("self")
    return timing


def in_qgis_process(args, scene, folder: Path) -> dict:
    report = folder / "qgis.html"
    command = [args.qgis_process, "run", "mamol:trainmodel", "--",
               f"HS={scene.hs}", f"SAR={scene.sar}", f"LIDAR={scene.lidar}",
               f"POLYGONS={scene.training_polygons}", "CLASS_FIELD=class_id",
               "CLASS_NAME_FIELD=class_name", f"BACKBONE={args.arch}", "WEIGHTS=2",
               f"PATCH_SIZE={args.patch_size}", f"EPOCHS={args.epochs}",
               f"BATCH_SIZE={args.batch_size}",
               f"MAX_SAMPLES_PER_CLASS={args.samples_per_class}", "MISSING_MODE=1",
               "MISSING_RATE=0.5", "DEVICE=cpu", "PRECISION=1", "SEED=0",
               f"OUTPUT_MODEL={folder / 'qgis.mamol'}", f"OUTPUT_REPORT={report}"]
    started = time.perf_counter()
    libraries = set()
    with open(folder / "qgis_process.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            libraries |= blas_libraries(process.pid)
            time.sleep(0.5)
    if process.returncode != 0:
        sys.exit(f"qgis_process failed ({process.returncode}):\n"
                 + (folder / "qgis_process.log").read_text()[-4000:])
    timing = dict(json.loads(report.with_suffix(".json").read_text())["timing"])
    timing["wall"] = time.perf_counter() - started
    timing["libraries"] = libraries
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=150)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--qgis-process", default="qgis_process.bin")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        scene = write_sample_scene(SampleSceneConfig(size=args.scene_size, seed=42),
                                   folder / "scene")
        rows = [("plain Python", plain_python(args, scene, folder)),
                ("qgis_process", in_qgis_process(args, scene, folder))]
    release = Path("/etc/debian_version")
    print(f"host: {platform.node()} ({os.cpu_count()} CPUs), Debian "
          f"{release.read_text().strip() if release.exists() else '?'}, "
          f"Python {platform.python_version()}")
    print(f"arch {args.arch}, P={args.patch_size}, batch {args.batch_size}, "
          f"{args.epochs} epoch(s), CPU fp32")
    print("| host | training samples/s (all epochs) | steady (after epoch 1) | whole run s "
          "| BLAS/OpenMP libraries mapped |")
    print("|---|---:|---:|---:|---|")
    for host, timing in rows:
        steady = timing.get("steady_samples_per_second")
        print(f"| {host} | {timing['samples_per_second']:.1f} | "
              f"{'-' if steady is None else f'{steady:.1f}'} | {timing['wall']:.0f} | "
              f"{', '.join(sorted(timing['libraries'])) or '-'} |")
    plain, qgis = rows[0][1]["samples_per_second"], rows[1][1]["samples_per_second"]
    print(f"qgis_process / plain Python: {qgis / plain:.2f}")


if __name__ == "__main__":
    main()
