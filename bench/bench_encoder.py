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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - puts the plugin on sys.path

import torch  # noqa: E402

from mamol.core import mamol_model as mm  # noqa: E402
from mamol.core.devices import dtype_name  # noqa: E402

COLUMNS = [harness.Column("batch", "batch"),
           harness.Column("backbone_samples_per_second", "backbone samples/s", ".1f"),
           harness.Column("mamol_samples_per_second", "mamol samples/s", ".1f"),
           harness.Column("full_samples_per_second", "mamol+embed samples/s", ".1f"),
           harness.Column("adapter_time_ratio", "adapter time ratio", ".3f"),
           harness.Column("backbone_peak_mib", "backbone peak MiB", ".0f"),
           harness.Column("full_peak_mib", "mamol+embed peak MiB", ".0f")]


def plain_backbone(encoder: mm.MamolEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's own blocks on ``tokens``: CLS, position embedding, ln_pre, the
    transformer, pooling and the projection — no adapters, no SDPA rewrite."""
    visual = encoder.visual
    patch = int(round(tokens.shape[1] ** 0.5))
    tokens = tokens.to(encoder.compute_dtype)
    cls = visual.class_embedding.expand(tokens.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, tokens], 1) + encoder.position_embedding(patch))
    pooled, _ = visual._pool(visual.transformer(x))
    return pooled @ visual.proj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--bands", type=int, default=harness.SAMPLE_BANDS["hs"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _ = harness.fixture_network(args.arch, device=device, precision=args.precision,
                                       hs_bands=args.bands)
    encoder = model.encoder
    bands = args.bands
    print(harness.host_banner(str(device), arch=args.arch, P=args.patch, **{
        "modality": f"HS ({bands} bands)", "tower": dtype_name(model.compute_dtype),
        "L_e": model.config.layers, "trainable": f"{model.trainable_parameter_count():,}"}))
    print("(backbone = open_clip's own blocks; mamol = ours: SDPA attention, fused experts)")
    table = harness.Table("encoder", COLUMNS, args.json_lines)
    table.header()
    for position, batch in enumerate(args.batch_sizes):
        # CUDA warms up at every size (kernel selection); on the CPU one warm-up is enough
        # and a second pass at batch 1024 would cost minutes.
        warmup = 1 if device.type == "cuda" or position == 0 else 0
        window = torch.randn(batch, bands, args.patch, args.patch, device=device)
        pattern = torch.full((batch,), model.full_pattern, device=device)
        with torch.inference_mode():
            tokens = model.token_embeddings["hs"](window)
            context = mm.RoutingContext(model.pattern_embedding(pattern),
                                        model.modality_embedding.weight[0], 0)
            plain = harness.measure(lambda: plain_backbone(encoder, tokens), device, warmup,
                                    calls=repeats)
            adapted = harness.measure(lambda: encoder(tokens, context), device, warmup,
                                      calls=repeats)
            full = harness.measure(lambda: model.encode(0, window, pattern), device, warmup,
                                   calls=repeats)
        table.row({"batch": batch, "backbone_samples_per_second": plain.rate(batch),
                   "mamol_samples_per_second": adapted.rate(batch),
                   "full_samples_per_second": full.rate(batch),
                   "adapter_time_ratio": adapted.seconds_per_call / plain.seconds_per_call,
                   "backbone_peak_mib": plain.peak_mib, "full_peak_mib": full.peak_mib})


if __name__ == "__main__":
    main()
