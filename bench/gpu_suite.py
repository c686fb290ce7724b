"""One GPU benchmark, one process, all rows: what the plugin does on a GPU, next to the
bare hardware, the bare backbone and the peer a user would otherwise run.

Rows (ViT-B-16, P = 14, frozen tower in bf16 on CUDA unless ``--precision`` says otherwise):

* ``matmul``: bf16 matrix product TFLOP/s (8192³), the hardware's ceiling here;
* ``backbone``: the frozen tower alone (our SDPA blocks, no adapters) in sequences/s of
  P² + 1 tokens — the rate every MaMOL pass is measured against;
* ``encoder``: the product's encoder, one modality: token embedding + adapted tower, passes/s;
* ``classify NNN²``: ``core.inference.classify`` end to end on a sample scene (HS + SAR +
  LiDAR; and HS + LiDAR only, the peer's two modalities): px/s, encoder passes/s, peak GPU
  memory, and encoder passes/s ÷ backbone sequences/s;
* ``training``: ``train_model`` samples/s steady (after the first epoch), 3 modalities,
  missing rate η = 0.5;
* ``peer``: ``naive_peer.py`` (copied by ``make gpu-wheels`` into the ignored ``.peer/``), its
  fp32 per-pixel px/s and its bf16 GPU-window px/s, run as a child process;
* ``compile MODE`` (``--compile-modes default max-autotune``): the encoder row again after
  ``torch.compile``, with the compile time.

Usage on the GPU machine (``bench/gpu_machine.sh`` sets up the environment and runs it):
    python bench/gpu_suite.py --out gpu_suite.json
On a CPU, a smoke run of every row but the peer:
    .venv/bin/python bench/gpu_suite.py --device cpu --arch mamol-tiny-vit --sizes 128 \\
        --train-scene 128 --train-samples-per-class 20 --seconds 1
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402 - puts the plugin on sys.path

import torch  # noqa: E402

from mamol.core.devices import (model_inference_batch, resolve_device,  # noqa: E402
                                resolve_precision, synchronize)

PEER = ROOT / ".peer" / "naive_peer.py"
COLUMNS = [harness.Column("row", "row", number=False), harness.Column("value", "value", ",.1f"),
           harness.Column("unit", "unit", number=False),
           harness.Column("note", "note", number=False)]


def rate(step, items: int, device, seconds: float) -> float:
    """items/s of ``step``, called for about ``seconds`` after one warm-up call."""
    return harness.measure(step, device, seconds=seconds).rate(items)


def matmul_tflops(device, dtype, seconds: float) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per_second = rate(lambda: a @ b, 1, device, seconds)
    return per_second * 2 * n ** 3 / 1e12


def encoder_rows(args, device, seconds: float, compile_mode: str = "off"):
    """(backbone sequences/s, encoder passes/s, compile seconds or None, batch)."""
    model, _ = harness.fixture_network(args.arch, device=device, precision=args.precision)
    encoder = model.encoder
    batch = args.batch_size or model_inference_batch(model, device, args.patch_size)
    windows = torch.randn(batch, harness.SAMPLE_BANDS["hs"], args.patch_size, args.patch_size,
                          device=device)
    pattern = torch.full((batch,), model.full_pattern, device=device)
    compile_seconds = None
    with torch.inference_mode():
        backbone = None
        if compile_mode == "off":
            plain, context = harness.plain_tower(args.arch, device, model.compute_dtype)
            tokens = torch.randn(batch, args.patch_size ** 2, encoder.width, device=device)
            backbone = rate(lambda: plain(tokens, context), batch, device, seconds)
            del plain, tokens
        else:
            encoder.set_compile_mode(compile_mode)
            started = time.perf_counter()
            model.encode(0, windows, pattern)
            synchronize(device)
            compile_seconds = time.perf_counter() - started
        passes = rate(lambda: model.encode(0, windows, pattern), batch, device, seconds)
    return backbone, passes, compile_seconds, batch


def classify_row(args, device, size: int, names, folder: Path):
    """End-to-end classification of a ``size``² sample scene with the given modalities."""
    from mamol.core.inference import ClassifyConfig, classify
    scene_folder = folder / f"scene{size}"
    if not (scene_folder / "hs.tif").exists():
        harness.sample_scene(size, scene_folder)
        harness.fixture_model(args.arch, args.patch_size, scene_folder / "model.mamol")
    tag = "-".join(names)
    config = ClassifyConfig(
        model_path=str(scene_folder / "model.mamol"),
        rasters=harness.scene_rasters(scene_folder, names),
        output_classes=str(folder / f"classes{size}-{tag}.tif"),
        output_modalities=str(folder / f"used{size}-{tag}.tif"),
        batch_size=args.batch_size, device=str(device), precision=args.precision)
    peaks = harness.PeakMemory(device)
    peaks.reset()
    result = classify(config, log=lambda line: None)
    counted = harness.encoder_passes(config.output_modalities)
    peak = peaks.read()["cuda_mib"]
    return {"px_per_s": result.pixels_per_second,
            "passes_per_s": counted["passes"] / result.seconds,
            "peak_mib": float("nan") if peak is None else peak,
            "pixels": counted["classified"], "seconds": result.seconds}


def training_row(args, device):
    from bench_training import run
    settings = SimpleNamespace(
        arch=args.arch, patch_size=args.patch_size, epochs=args.train_epochs,
        batch_size=128, samples_per_class=args.train_samples_per_class,
        scene_size=args.train_scene, device=str(device), precision=args.precision,
        compile="off")
    result, wall = run(settings)
    timing = result.summary["timing"]
    return {"steady": timing["steady_samples_per_second"], "all": timing["samples_per_second"],
            "validation_seconds": timing["validation_seconds"], "wall_seconds": wall}


def peer_row(device):
    if device.type != "cuda":
        return None, "needs CUDA"
    if not PEER.exists():
        return None, f"{PEER} is missing: run 'make gpu-wheels' first"
    done = subprocess.run([sys.executable, str(PEER)], capture_output=True, text=True)
    if done.returncode != 0:
        return None, done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
    numbers = {}
    for line in done.stdout.splitlines():
        match = re.search(r"([\d.]+)\s*px/s", line)
        if match:
            numbers["naive" if line.startswith("naive") else "fast"] = float(match.group(1))
    return numbers, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = automatic")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024],
                        help="sample scene sizes to classify")
    parser.add_argument("--train-scene", type=int, default=512)
    parser.add_argument("--train-samples-per-class", type=int, default=600)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per timed rate")
    parser.add_argument("--compile-modes", nargs="*", default=[],
                        help="also time the encoder compiled: default, max-autotune")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["classify", "training", "peer"], help="rows to leave out")
    parser.add_argument("--out", help="also write the rows as one JSON list here")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    print(harness.host_banner(str(device), arch=args.arch, P=args.patch_size,
                              tower=str(dtype).replace("torch.", "")), flush=True)
    table = harness.Table("gpu_suite", COLUMNS, args.json_lines)

    def row(what, value, unit, note=""):
        table.row({"row": what, "value": value, "unit": unit, "note": note})

    table.header()
    row("bf16 matmul" if dtype is torch.bfloat16 else "fp32 matmul",
        matmul_tflops(device, dtype, args.seconds), "TFLOP/s")
    backbone, passes, _, batch = encoder_rows(args, device, args.seconds)
    row("backbone alone (SDPA)", backbone, "sequences/s", f"batch {batch}, "
        f"{args.patch_size ** 2 + 1} tokens")
    row("encoder (embedding + adapters)", passes, "passes/s", f"batch {batch}")
    for mode in args.compile_modes:
        _, compiled, seconds, _ = encoder_rows(args, device, args.seconds, mode)
        row(f"encoder, torch.compile {mode}", compiled, "passes/s",
            f"{compiled / passes:.2f}x uncompiled; compile {seconds:.0f} s")
    classify_rows = {}
    if "classify" not in args.skip:
        with tempfile.TemporaryDirectory() as folder:
            for size in args.sizes:
                for names in (("hs", "sar", "lidar"), ("hs", "lidar")):
                    record = classify_row(args, device, size, names, Path(folder))
                    classify_rows[(size, names)] = record
                    label = f"classify {size}², {'+'.join(names)}"
                    row(label, record["px_per_s"], "px/s",
                        f"{record['pixels']} px in {record['seconds']:.1f} s; peak "
                        f"{record['peak_mib']:.0f} MiB")
                    row(label, record["passes_per_s"], "encoder passes/s",
                        f"{record['passes_per_s'] / backbone:.2f} of the backbone alone")
    if "training" not in args.skip:
        record = training_row(args, device)
        row("training, steady (after epoch 1)", record["steady"], "samples/s",
            f"all epochs {record['all']:.1f}/s; validation {record['validation_seconds']:.1f}"
            f" s; wall {record['wall_seconds']:.0f} s")
    if "peer" not in args.skip:
        numbers, why = peer_row(device)
        if numbers is None:
            row("naive peer (fp32, CPU-cut windows)", None, "px/s", why)
        else:
            row("naive peer (fp32, CPU-cut windows)", numbers.get("naive"), "px/s",
                "2 modalities (HS 144 bands + LiDAR)")
            row("peer in bf16, GPU-cut windows", numbers.get("fast"), "px/s", "2 modalities")
            two = [r for (size, names), r in classify_rows.items() if names == ("hs", "lidar")]
            if two and numbers.get("naive"):
                best = max(r["px_per_s"] for r in two)
                row("classify 2-modality px/s ÷ naive peer", best / numbers["naive"], "x")
    if args.out:
        Path(args.out).write_text(json.dumps(table.records, indent=2))


if __name__ == "__main__":
    main()
