"""The same training and classification run directly as an engine command and through
``qgis_process``, which launches the same engine command as a child process.

Before the engine ran in its own process, the gap was the host's: on Debian 13,
``qgis_process`` brought Debian's reference BLAS (``libblas.so.3``) into its global symbol
scope before PyTorch, whose CPU GEMM then resolved to it (about 6× slower), and with
OpenBLAS 0.3.29 installed (``libopenblas0-pthread``) it crashed in ``cblas_sgemm_batch``.
Now PyTorch loads only in the engine's process, so both rows should match; this script
measures that.

It writes one sample scene, then, in each host: trains the same configuration (random seeded
tiny backbone, HS + SAR + LiDAR, missing rate 50 %, CPU, fp32) and classifies the scene with
the trained model. It prints the optimiser's samples/s (from the training report: data
preparation and validation excluded), the classification's pixels/s (the engine's own
"Classified …" line), the wall time of each run, and the BLAS/OpenMP libraries mapped into
the process that ran PyTorch (for ``qgis_process``: its engine child).

Run it with the QGIS environment of the Makefile (``make bench-host``), which sets
QGIS_PLUGINPATH, the profile the plugin is enabled in and MAMOL_PYTHON; ``.ci/debian13
bench-host`` runs it on Debian 13.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

BLAS_NAMES = ("blas", "lapack", "mkl", "gomp", "iomp")
CLASSIFIED = re.compile(r"Classified (\d+) pixels in ([\d.]+) s \(([\d.]+) pixels/s\)")
COLUMNS = [harness.Column("host", "host", number=False),
           harness.Column("samples_per_second", "training samples/s", ".1f"),
           harness.Column("train_wall", "training run s", ".0f"),
           harness.Column("pixels_per_second", "classification px/s", ".0f"),
           harness.Column("classify_wall", "classification run s", ".0f"),
           harness.Column("libraries", "BLAS/OpenMP libraries in the torch process",
                          lambda names: ", ".join(sorted(names)) or "-", number=False)]


def blas_libraries(pid) -> set:
    """File names of the BLAS/OpenMP-like libraries mapped into process ``pid``."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    names = {Path(line.split()[-1]).name for line in text.splitlines() if "/" in line}
    return {name for name in names if any(key in name.lower() for key in BLAS_NAMES)}


def descendants(pid: int) -> list:
    """Process ids whose parent chain leads to ``pid``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, up in parents.items() if up == parent]
        found += children
        frontier += children
    return found


def watch(command, log_path: Path, env) -> dict:
    """Run ``command``; return its wall time, output and the libraries of its torch process
    (itself, or a descendant that mapped libtorch)."""
    started = time.perf_counter()
    libraries = set()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            for pid in [process.pid] + descendants(process.pid):
                try:
                    maps = Path(f"/proc/{pid}/maps").read_text()
                except OSError:
                    continue
                if "libtorch" in maps:
                    libraries |= blas_libraries(pid)
            time.sleep(0.5)
    wall = time.perf_counter() - started
    output = log_path.read_text()
    if process.returncode != 0:
        sys.exit(f"{command[0]} failed ({process.returncode}):\n{output[-4000:]}")
    return {"wall": wall, "output": output, "libraries": libraries}


def engine_commands(args, scene, folder: Path, python: str):
    train = [python, "-m", "mamol", "train", "--hs", str(scene.hs), "--sar", str(scene.sar),
             "--lidar", str(scene.lidar), "--polygons", str(scene.training_polygons),
             "--class-field", "class_id", "--name-field", "class_name", "--arch", args.arch,
             "--weights", "random", "--patch-size", str(args.patch_size), "--epochs",
             str(args.epochs), "--batch-size", str(args.batch_size), "--max-train-per-class",
             str(args.samples_per_class), "--missing-rate", "0.5", "--device", "cpu",
             "--precision", "fp32", "--seed", "0", "--output", str(folder / "engine.mamol"),
             "--report", str(folder / "engine.html"), "--progress", "plain"]
    classify = [python, "-m", "mamol", "classify", "--model", str(folder / "engine.mamol"),
                "--hs", str(scene.hs), "--sar", str(scene.sar), "--lidar", str(scene.lidar),
                "--stride", str(args.stride), "--device", "cpu", "--precision", "fp32",
                "--output", str(folder / "engine.tif"), "--progress", "plain"]
    return train, classify


def qgis_commands(args, scene, folder: Path):
    train = [args.qgis_process, "run", "mamol:trainmodel", "--",
             f"HS={scene.hs}", f"SAR={scene.sar}", f"LIDAR={scene.lidar}",
             f"POLYGONS={scene.training_polygons}", "CLASS_FIELD=class_id",
             "CLASS_NAME_FIELD=class_name", f"BACKBONE={args.arch}", "WEIGHTS=2",
             f"PATCH_SIZE={args.patch_size}", f"EPOCHS={args.epochs}",
             f"BATCH_SIZE={args.batch_size}",
             f"MAX_SAMPLES_PER_CLASS={args.samples_per_class}", "MISSING_MODE=1",
             "MISSING_RATE=0.5", "DEVICE=cpu", "PRECISION=1", "SEED=0",
             f"OUTPUT_MODEL={folder / 'qgis.mamol'}", f"OUTPUT_REPORT={folder / 'qgis.html'}"]
    classify = [args.qgis_process, "run", "mamol:classify", "--",
                f"MODEL={folder / 'qgis.mamol'}", f"HS={scene.hs}", f"SAR={scene.sar}",
                f"LIDAR={scene.lidar}", f"STRIDE={args.stride}", "DEVICE=cpu", "PRECISION=1",
                f"OUTPUT={folder / 'qgis.tif'}"]
    return train, classify


def measure(name: str, commands, folder: Path, env) -> dict:
    train = watch(commands[0], folder / f"{name}-train.log", env)
    report = json.loads((folder / f"{name}.json").read_text())
    classify = watch(commands[1], folder / f"{name}-classify.log", env)
    found = CLASSIFIED.search(classify["output"])
    if not found:
        sys.exit(f"no 'Classified …' line in the {name} run:\n{classify['output'][-2000:]}")
    return {"samples_per_second": report["timing"]["samples_per_second"],
            "train_wall": train["wall"], "pixels_per_second": float(found.group(3)),
            "classify_wall": classify["wall"],
            "libraries": train["libraries"] | classify["libraries"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mamol-tiny-vit")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=150)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--stride", type=int, default=4,
                        help="classify every s-th pixel (keeps the run short)")
    parser.add_argument("--qgis-process", default="qgis_process.bin")
    parser.add_argument("--python", default=os.environ.get("MAMOL_PYTHON", sys.executable),
                        help="the engine's Python (default: MAMOL_PYTHON, else this one)")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    env = harness.engine_env(MAMOL_PYTHON=args.python)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        scene = harness.sample_scene(args.scene_size, folder / "scene")
        rows = [("engine command", measure("engine", engine_commands(
                    args, scene, folder, args.python), folder, env)),
                ("qgis_process", measure("qgis", qgis_commands(args, scene, folder), folder,
                                         env))]
    print(harness.host_banner("cpu", arch=args.arch, P=args.patch_size,
                              batch=args.batch_size, epochs=args.epochs, precision="fp32",
                              classification=f"{args.scene_size}² at stride {args.stride}"))
    table = harness.Table("host", COLUMNS, args.json_lines)
    table.header()
    for host, row in rows:
        table.row(dict(row, host=host, libraries=sorted(row["libraries"])))
    engine, qgis = rows[0][1], rows[1][1]
    print(f"qgis_process / engine command: training "
          f"{qgis['samples_per_second'] / engine['samples_per_second']:.2f}, classification "
          f"{qgis['pixels_per_second'] / engine['pixels_per_second']:.2f}")


if __name__ == "__main__":
    main()
