"""Encoder throughput and peak memory: MaMOL adapters vs the plain frozen backbone.

For each batch size, one modality's windows (HS, 48 bands, P x P) are encoded three ways:

* ``backbone``: tokens through the plain frozen open_clip tower (CLS, position embedding,
  ln_pre, all blocks, ln_post, proj) — no adapters;
* ``mamol``: the same tokens through the MaMOL encoder (adapters in the last L_e blocks);
* ``mamol+embed``: the window through the modality token embedding and the MaMOL encoder,
  i.e. what one (sample, modality) pair costs in the full model.

Throughput is modality-samples per second (inference mode; frozen tower in fp32 on the CPU
and bf16 on CUDA unless ``--precision`` says otherwise). Peak memory is the process's peak
RSS (CPU; reset between runs through /proc/self/clear_refs) or the peak CUDA allocation.

Usage:
    .venv/bin/python bench/bench_encoder.py --device cpu --batch-sizes 32 128
    .venv/bin/python bench/bench_encoder.py --device cuda --batch-sizes 32 128 512 1024
"""
import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plugin_path  # noqa: E402,F401 - puts the plugin on sys.path

import torch  # noqa: E402

from mamol.core import backbone as bb  # noqa: E402
from mamol.core import mamol_model as mm  # noqa: E402
from mamol.core.devices import dtype_name, prepare_model  # noqa: E402


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_backbone(encoder: mm.MamolEncoder, tokens: torch.Tensor) -> torch.Tensor:
    visual = encoder.visual
    patch = int(round(tokens.shape[1] ** 0.5))
    tokens = tokens.to(encoder.compute_dtype)
    cls = visual.class_embedding.expand(tokens.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, tokens], 1) + encoder.position_embedding(patch))
    pooled, _ = visual._pool(visual.transformer(x))
    return pooled @ visual.proj


def measure(fn, device: torch.device, repeats: int, warm_up: bool):
    """(seconds per call, peak memory MiB) of ``fn``, after one untimed call if ``warm_up``."""
    if warm_up:
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mib()
    return (time.perf_counter() - start) / repeats, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--bands", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    if args.threads:
        torch.set_num_threads(args.threads)

    visual = bb.build_visual_tower(bb.BackboneSpec(arch=args.arch, seed=0))
    modalities = [mm.ModalitySpec("hs", args.bands), mm.ModalitySpec("sar", 2),
                  mm.ModalitySpec("lidar", 1)]
    model = prepare_model(mm.MamolModel(modalities, 7, visual), device,
                          args.precision).eval()
    encoder = model.encoder
    dtype = dtype_name(model.compute_dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# {args.arch}, P={args.patch}, {args.bands}-band modality, {dtype} on {device} "
          f"({name or platform.machine()}, {torch.get_num_threads()} CPU threads), "
          f"torch {torch.__version__}, L_e={model.config.layers}, "
          f"trainable={model.trainable_parameter_count():,}")
    print("(backbone = open_clip's own blocks; mamol = ours: SDPA attention, fused experts)")
    print("| batch | backbone samples/s | mamol samples/s | mamol+embed samples/s | "
          "adapter time ratio | backbone peak MiB | mamol+embed peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for position, batch in enumerate(args.batch_sizes):
        # CUDA warms up at every size (kernel selection); on the CPU one warm-up is enough
        # and a second pass at batch 1024 would cost minutes.
        warm = device.type == "cuda" or position == 0
        window = torch.randn(batch, args.bands, args.patch, args.patch, device=device)
        pattern = torch.full((batch,), model.full_pattern, device=device)
        with torch.inference_mode():
            tokens = model.token_embeddings["hs"](window)
            context = mm.RoutingContext(model.pattern_embedding(pattern),
                                        model.modality_embedding.weight[0], 0)
            t_plain, m_plain = measure(lambda: plain_backbone(encoder, tokens), device,
                                       repeats, warm)
            t_mamol, _ = measure(lambda: encoder(tokens, context), device, repeats, warm)
            t_full, m_full = measure(lambda: model.encode(0, window, pattern), device,
                                     repeats, warm)
        print(f"| {batch} | {batch / t_plain:.1f} | {batch / t_mamol:.1f} | "
              f"{batch / t_full:.1f} | {t_mamol / t_plain:.3f} | {m_plain:.0f} | "
              f"{m_full:.0f} |", flush=True)


if __name__ == "__main__":
    main()
