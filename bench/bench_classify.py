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
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plugin_path  # noqa: E402,F401 - puts the plugin on sys.path
from mamol.core.raster_io import DEFAULT_GDAL_CACHE_MB  # noqa: E402


def make_model(arch: str, patch: int, path: Path) -> None:
    import torch

    from mamol.core.backbone import BackboneSpec, build_visual_tower, fingerprint
    from mamol.core.mamol_model import MamolModel, ModalitySpec
    from mamol.core.model_file import ClassInfo, ModalityInfo, ModelHeader, save_model
    from mamol.core.sample_scene import CLASS_STYLE
    spec = BackboneSpec(arch=arch)
    visual = build_visual_tower(spec)
    torch.manual_seed(0)
    bands = {"hs": 48, "sar": 2, "lidar": 1}
    model = MamolModel([ModalitySpec(n, b) for n, b in bands.items()], 7, visual)
    # Rough per-band statistics of the sample scene, so windows are near unit scale.
    stats = {"hs": (2000.0, 1500.0), "sar": (0.1, 0.1), "lidar": (200.0, 10.0)}
    header = ModelHeader(
        modalities=tuple(ModalityInfo(n, b, (stats[n][0],) * b, (stats[n][1],) * b)
                         for n, b in bands.items()),
        classes=tuple(ClassInfo(int(k), v[0], v[1]) for k, v in CLASS_STYLE.items()),
        patch_size=patch, backbone=spec, backbone_fingerprint=fingerprint(visual),
        adapter=model.config.to_json(), training={"max_missing_fraction": 0.5})
    save_model(path, model, header)


def backbone_rate(arch: str, patch: int, batch: int, device: str, precision: str,
                  seconds: float = 20.0):
    """Plain frozen backbone samples/s on random tokens of the run's shape (the same SDPA
    blocks and precision as the product, no adapters)."""
    import torch

    from mamol.core.backbone import BackboneSpec, build_visual_tower
    from mamol.core.devices import resolve_device, resolve_precision, synchronize
    from mamol.core.mamol_model import AdapterConfig, ExpertSet, MamolEncoder, RoutingContext
    target = resolve_device(device)
    encoder = MamolEncoder(build_visual_tower(BackboneSpec(arch=arch)), 1,
                           AdapterConfig(experts=ExpertSet.NONE)).to(target).eval()
    encoder.set_compute_dtype(resolve_precision(precision, target))
    tokens = torch.randn(batch, patch * patch, encoder.width, device=target)
    context = RoutingContext(None, None, 0)
    done, started = 0, time.perf_counter()
    with torch.no_grad():
        while True:
            encoder(tokens, context)
            synchronize(target)
            done += batch
            if time.perf_counter() - started > seconds and done >= 2 * batch:
                break
    return done / (time.perf_counter() - started)


def own_peak_mib() -> float:
    """This process's own peak resident memory. Linux's ``ru_maxrss`` is not: a child
    started by fork + exec inherits as its maximum the parent's resident size at the fork
    (kept across exec), so every run here reported at least what the parent had just used
    to write the sample scene, which grows with the scene. ``VmHWM`` belongs to the
    process's own address space, which exec replaces."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def single(args) -> None:
    """One classification in this process; prints one JSON line."""
    from osgeo import gdal

    from mamol.core.inference import ClassifyConfig, classify
    folder = Path(args.folder)
    config = ClassifyConfig(
        model_path=str(folder / "model.mamol"),
        rasters=tuple((n, str(folder / f"{n}.tif")) for n in ("hs", "sar", "lidar")),
        output_classes=str(folder / "classes.tif"),
        output_modalities=str(folder / "used.tif"), stride=args.stride,
        gdal_cache_mb=args.gdal_cache_mb,
        batch_size=args.batch_size, device=args.device, precision=args.precision)
    lines = []
    started = time.perf_counter()
    result = classify(config, log=lines.append)
    batch = int(lines[0].split("batches of ")[1].split(",")[0])
    wall = time.perf_counter() - started
    used = gdal.Open(config.output_modalities).ReadAsArray()
    anchors = used[args.stride // 2::args.stride, args.stride // 2::args.stride]
    passes = int(sum(((anchors >> bit) & 1).sum() for bit in range(3)))
    record = {"pixels_per_second": result.pixels_per_second, "seconds": wall,
              "classified": int((anchors > 0).sum()), "encoder_passes": passes,
              "encoder_passes_per_second": passes / result.seconds}
    if args.device.startswith("cuda"):
        import torch
        record["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        record["peak_mib"] = own_peak_mib()
    record["batch"] = batch
    record["backbone_samples_per_second"] = backbone_rate(
        args.arch, args.patch_size, batch, args.device, args.precision)
    print(json.dumps(record))


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
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args)
        return
    from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene
    print(f"host {platform.node()} ({os.cpu_count()} CPUs), device {args.device}, "
          f"arch {args.arch}, P={args.patch_size}, batch {args.batch_size or 'automatic'}, "
          f"precision {args.precision}, GDAL cache {args.gdal_cache_mb} MiB")
    print("| scene | stride | batch | classified px | px/s | encoder passes/s "
          "| backbone samples/s | ratio | peak MiB | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        size, stride = (int(v) for v in run.split(":"))
        with tempfile.TemporaryDirectory() as folder:
            write_sample_scene(SampleSceneConfig(size=size, seed=42), folder)
            make_model(args.arch, args.patch_size, Path(folder) / "model.mamol")
            done = subprocess.run(
                [sys.executable, __file__, "--single", "--folder", folder, "--stride",
                 str(stride), "--arch", args.arch, "--patch-size", str(args.patch_size),
                 "--batch-size", str(args.batch_size), "--device", args.device,
                 "--precision", args.precision, "--gdal-cache-mb", str(args.gdal_cache_mb)],
                capture_output=True, text=True, check=True)
            record = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = record["encoder_passes_per_second"] / record["backbone_samples_per_second"]
        print(f"| {size}² | {stride} | {record['batch']} | {record['classified']} | "
              f"{record['pixels_per_second']:.1f} | {record['encoder_passes_per_second']:.1f} | "
              f"{record['backbone_samples_per_second']:.1f} | {ratio:.2f} | "
              f"{record['peak_mib']:.0f} | {record['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
