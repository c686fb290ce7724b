"""A short speed probe of the device a run would use (``mamol doctor``, issue 32): encoder
passes per second of seeded, untrained MaMOL networks (no download), with the tiny backbone
and with ViT-B-16, turned into the time a classification and a training epoch would take.

What is measured, per backbone, on the sample scene's three modalities (all present):

* **inference**: windows per second through the whole model (three encoder passes each, the
  head, the softmax), the unit of a per-pixel classification: a pixel model classifies one
  window per pixel, a tile model one per tile, and a tile labels ``step²`` pixels
  (:func:`core.windows.tile_layout`; 10² at P = 14);
* **training**: samples per second of a forward and backward pass and an AdamW step.

Each measurement starts at batch 1 and doubles the batch while that still raises the rate
and a call twice as long fits in its time share (:func:`measure_rate`), so that a GPU is
measured at a useful size and a CPU with ViT-B-16 (about a second a window) stays within
the budget; warm-up calls are not timed (allocation, kernel choice). The estimates leave out reading and writing
rasters, and assume every modality present everywhere, so a real scene with gaps runs
somewhat faster.
"""
import math
import time
from typing import Callable, Dict, List, Optional

from . import torch_compat
from .backbone import DEFAULT_ARCH, TINY_ARCH, BackboneSpec, build_visual_tower
from .devices import dtype_name, prepare_model
from .feedback import Reporter
from .sample_scene import BAND_COUNTS, CLASS_STYLE
from .windows import tile_layout

#: The probed backbones and window sizes: the demo's (tiny, P = 7) and the default one's.
PROBES = ((TINY_ARCH, 7), (DEFAULT_ARCH, 14))
#: Seconds the whole probe aims at, and each backbone's share of them.
BUDGET_SECONDS = 20.0
SHARES = {TINY_ARCH: 0.25, DEFAULT_ARCH: 0.75}
#: Of a backbone's time after building it: the share spent on inference (the rest trains).
INFERENCE_SHARE = 0.4
#: The estimates are given for a square scene of this side (pixels) and for this many
#: training samples (one epoch).
SCENE_SIDE = 1000
TRAINING_SAMPLES = 1000
LARGEST_BATCH = 1024
#: A larger batch is tried while the last doubling raised the rate by this factor.
GAIN = 1.15


def _network(arch: str, device, precision: str):
    """A seeded, untrained MaMOL network for the sample scene's modalities and classes."""
    torch = torch_compat.import_torch()
    from .mamol_model import MamolModel, ModalitySpec
    visual = build_visual_tower(BackboneSpec(arch=arch, seed=0))
    torch.manual_seed(0)
    model = MamolModel([ModalitySpec(name, bands) for name, bands in BAND_COUNTS.items()],
                       len(CLASS_STYLE), visual)
    return prepare_model(model, device, precision)


def _inputs(model, batch: int, patch: int, device):
    torch = torch_compat.import_torch()
    windows = {name: torch.randn(batch, bands, patch, patch, device=device)
               for name, bands in BAND_COUNTS.items()}
    pattern = torch.full((batch,), model.full_pattern, device=device)
    return windows, pattern


def _timed(call: Callable[[int], None], batch: int, synchronize) -> float:
    started = time.perf_counter()
    call(batch)
    synchronize()
    return time.perf_counter() - started


def measure_rate(call: Callable[[int], None], seconds: float, synchronize,
                 check: Callable[[], None], warm_each: bool = False,
                 largest: int = LARGEST_BATCH) -> Dict[str, float]:
    """Items per second of ``call(batch)`` within about ``seconds`` (at least one warm-up
    and one timed call). The batch doubles from 1 while the rate still grows by
    :data:`GAIN` and a call twice as long still fits; the calls left in the time then run
    at that batch. ``warm_each``: a GPU, whose first call at each size chooses kernels,
    warms up at every size; a CPU only once."""
    deadline = time.perf_counter() + seconds
    batch, best = 1, 0.0
    _timed(call, batch, synchronize)   # allocations, first-call work
    while True:
        check()
        took = _timed(call, batch, synchronize)
        rate = batch / took
        grow = (rate > best * GAIN and batch < largest
                and time.perf_counter() + 4 * took < deadline)
        best = max(best, rate)
        if not grow:
            break
        batch *= 2
        if warm_each:
            _timed(call, batch, synchronize)
    total, calls = took, 1
    while time.perf_counter() + total / calls < deadline:
        check()
        total += _timed(call, batch, synchronize)
        calls += 1
    return {"batch": batch, "calls": calls, "per_second": batch * calls / total}


def _inference_call(model, patch: int, device) -> Callable[[int], None]:
    torch = torch_compat.import_torch()
    model.eval()

    def call(batch: int) -> None:
        windows, pattern = _inputs(model, batch, patch, device)
        with torch.no_grad():
            torch.softmax(model(windows, pattern), dim=1)
    return call


def _training_call(model, patch: int, device) -> Callable[[int], None]:
    torch = torch_compat.import_torch()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-4)

    def call(batch: int) -> None:
        windows, pattern = _inputs(model, batch, patch, device)
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        loss = torch.nn.functional.cross_entropy(model(windows, pattern), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return call


def probe_backbone(arch: str, patch: int, device, seconds: float, precision: str = "auto",
                   reporter: Optional[Reporter] = None) -> Dict[str, object]:
    """Build ``arch`` on ``device`` and measure it for about ``seconds``."""
    from .devices import synchronize
    reporter = reporter or Reporter()
    started = time.perf_counter()
    model = _network(arch, device, precision)
    built = time.perf_counter() - started
    left = max(seconds - built, 0.0)
    wait = lambda: synchronize(device)   # noqa: E731 - a one-line callable
    warm_each = device.type != "cpu"
    inference = measure_rate(_inference_call(model, patch, device), left * INFERENCE_SHARE,
                             wait, reporter.check, warm_each)
    training = measure_rate(_training_call(model, patch, device),
                            left * (1 - INFERENCE_SHARE), wait, reporter.check, warm_each)
    return {"arch": arch, "patch_size": patch, "precision": dtype_name(model.compute_dtype),
            "build_seconds": built, "windows_per_second": inference["per_second"],
            "inference_batch": inference["batch"],
            "training_samples_per_second": training["per_second"],
            "training_batch": training["batch"],
            "seconds": time.perf_counter() - started,
            **estimates(inference["per_second"], training["per_second"], patch)}


def estimates(windows_per_second: float, samples_per_second: float, patch: int,
              side: int = SCENE_SIDE, samples: int = TRAINING_SAMPLES) -> Dict[str, float]:
    """Seconds for a ``side`` × ``side`` three-modality scene with a pixel model and a tile
    model (automatic tile step), and for one epoch of ``samples`` training samples."""
    step = tile_layout(patch)[0]
    tiles = math.ceil(side / step) ** 2
    return {"pixel_scene_seconds": side * side / windows_per_second,
            "tile_scene_seconds": tiles / windows_per_second,
            "training_epoch_seconds": samples / samples_per_second,
            "scene_side": side, "training_samples": samples, "tile_step": step}


def probe(device, precision: str = "auto", budget: float = BUDGET_SECONDS,
          log: Optional[Callable[[str], None]] = None,
          reporter: Optional[Reporter] = None) -> List[Dict[str, object]]:
    """:func:`probe_backbone` for each of :data:`PROBES`, within about ``budget`` s."""
    results = []
    reporter = reporter or Reporter()
    for number, (arch, patch) in enumerate(PROBES):
        if log is not None:
            log(f"Probing {arch} (P = {patch}) on {device} …")
        reporter.begin_part(100 * number / len(PROBES), 100 * (number + 1) / len(PROBES))
        results.append(probe_backbone(arch, patch, device, budget * SHARES[arch], precision,
                                      reporter))
        reporter.report(100 * (number + 1) / len(PROBES))
    return results
