"""The loss of one training step (DESIGN §5), chosen once before the training loop
(:func:`choose_step`): the paper's pixel cross-entropy, the tile kind's cross-entropy over
labelled tokens (issue 17, :mod:`training.tiles`) or MCE's losses (seed 001,
:mod:`training.mce`).

A step's :meth:`~PixelStep.loss` is one micro-batch's share of the whole batch's mean loss,
so that the micro-batches' gradients add up to the batch's. :func:`backward_batch` runs
them, the same for every step: under torchrun it takes this rank's share of the batch
(:func:`training.schedule.rank_share`), weights its loss so that DDP's average of the
ranks' gradients is the batch's gradient, and lets DDP exchange gradients after the rank's
last micro-batch only.
"""
import contextlib
import warnings
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..core.devices import to_device
from ..core.distributed import World
from .batches import Batches
from .dataset import SampleSet
from .mce import MceConfig, dataset_factors, mce_losses
from .schedule import rank_share
from .tiles import IGNORE_INDEX, label_tiles, tile_loss, tile_pixel_patterns


class PixelStep:
    """The paper's loss: cross-entropy of each window's class, summed over the micro-batch
    and divided by the whole batch's samples.

    Args:
        forward: ``forward(windows, codes)`` → logits (the model, or its DDP wrapper).
        batches: the training windows.
        patterns: (n,) simulated missing pattern of each training sample.
        labels: (n,) class index of each training sample, on the run's device.
        device: the run's device.
    """

    def __init__(self, forward: Callable, batches: Batches, patterns: np.ndarray,
                 labels: torch.Tensor, device) -> None:
        self.forward = forward
        self.batches = batches
        self.patterns = patterns
        self.labels = labels
        self.device = device

    def begin_epoch(self) -> None:
        """Called before an epoch's first batch."""

    def begin_batch(self, index: np.ndarray) -> None:
        """Called with a batch's sample indices before its micro-batches."""

    def loss(self, index: np.ndarray, start: int, stop: int) -> torch.Tensor:
        """The loss of micro-batch ``index[start:stop]`` of the batch ``index``."""
        chunk = index[start:stop]
        windows, codes = self.inputs(chunk)
        return torch.nn.functional.cross_entropy(
            self.forward(windows, codes), self.targets(chunk), reduction="sum") / index.size

    def epoch_record(self) -> Dict[str, object]:
        """What the epoch's record adds (nothing here)."""
        return {}

    def inputs(self, chunk: np.ndarray):
        """The normalised windows of samples ``chunk`` and their pattern codes."""
        pattern = self.patterns[chunk]
        return self.batches.windows(chunk, pattern), torch.from_numpy(pattern)

    def targets(self, chunk: np.ndarray) -> torch.Tensor:
        return self.labels.index_select(0, to_device(torch.from_numpy(chunk), self.device))


class TileStep(PixelStep):
    """The tile kind's loss: every training sample inside a tile is a label, the rest is
    ignored; each pixel's modalities are its valid ones among the tile's simulated pattern.
    The loss is the mean over the batch's labelled tokens (:func:`training.tiles.tile_loss`).
    """

    def __init__(self, forward: Callable, batches: Batches, patterns: np.ndarray,
                 samples: SampleSet, patch_size: int, device) -> None:
        self.tile_labels = label_tiles(samples, patch_size)
        super().__init__(forward, batches, patterns,
                         to_device(torch.from_numpy(self.tile_labels), device), device)
        self.presence = batches.pixel_presence()
        self.codes = np.zeros((0,), dtype=np.int64)
        self.labelled = 0

    def begin_batch(self, index: np.ndarray) -> None:
        self.codes = tile_pixel_patterns(self.presence[index], self.patterns[index])
        self.labelled = int(((self.tile_labels[index] != IGNORE_INDEX)
                             & (self.codes > 0)).sum())

    def loss(self, index: np.ndarray, start: int, stop: int) -> torch.Tensor:
        chunk = index[start:stop]
        windows = self.batches.windows(chunk, self.patterns[chunk])
        codes = torch.from_numpy(self.codes[start:stop])
        return tile_loss(self.forward(windows, codes), self.targets(chunk), codes,
                         self.labelled)


class MceStep(PixelStep):
    """MCE's losses (:func:`training.mce.mce_losses`) on the model's features, divided by
    the whole batch's samples; the epoch's record gets the factors (``mce``)."""

    def __init__(self, model, batches: Batches, patterns: np.ndarray, labels: torch.Tensor,
                 device, config: MceConfig, names: Sequence[str]) -> None:
        super().__init__(model.features, batches, patterns, labels, device)
        self.model = model
        self.config = config
        self.names = list(names)
        codes, counts = np.unique(patterns, return_counts=True)
        self.availability = dataset_factors(dict(zip(codes.tolist(), counts.tolist())),
                                            len(names))
        self.tally = MceTally(len(names))

    def begin_epoch(self) -> None:
        self.tally = MceTally(len(self.names))

    def loss(self, index: np.ndarray, start: int, stop: int) -> torch.Tensor:
        chunk = index[start:stop]
        windows, codes = self.inputs(chunk)
        loss, stats = mce_losses(self.model, self.forward(windows, codes), codes,
                                 self.targets(chunk), self.availability, self.config)
        self.tally.add(stats)
        return loss / index.size

    def epoch_record(self) -> Dict[str, object]:
        return {"mce": self.tally.record(self.names, self.availability)}


class MceTally:
    """One epoch's MCE statistics: per modality, the auxiliary head's accuracy and the mean
    φ over the samples that had it, the mean b and auxiliary weight over the batches."""

    def __init__(self, modalities: int) -> None:
        self.sums = {key: [0.0] * modalities for key in
                     ("present", "aux_correct", "phi", "b", "weight")}
        self.batches = 0

    def add(self, stats) -> None:
        self.batches += 1
        for key, values in self.sums.items():
            for m, value in enumerate(stats[key].tolist()):
                values[m] += value

    def record(self, names, availability) -> Dict[str, Dict[str, Optional[float]]]:
        out = {}
        for m, name in enumerate(names):
            present = self.sums["present"][m]
            out[name] = {
                "aux_accuracy": self.sums["aux_correct"][m] / present if present else None,
                "a": float(availability[m]),
                "b": self.sums["b"][m] / max(1, self.batches),
                "phi": self.sums["phi"][m] / present if present else None,
                "weight": self.sums["weight"][m] / max(1, self.batches)}
        return out


def choose_step(config, model, train: SampleSet, patterns: np.ndarray, batches: Batches,
                device, world: World, say: Callable[[str], None]) -> PixelStep:
    """The step of the run's model kind and training mode (``config``: a TrainingConfig):
    tile kind, MCE (one process only) or the paper's pixel loss. Under torchrun the model
    runs inside DistributedDataParallel (:func:`distributed_forward`)."""
    tiles = model.kind.value == "tile"
    if world.distributed:
        forward = distributed_forward(model, device, tiles)
    else:
        forward = model.forward_tiles if tiles else model
    if tiles:
        return TileStep(forward, batches, patterns, train, config.patch_size, device)
    labels = to_device(torch.from_numpy(train.class_index), device)
    if config.mce is None:
        return PixelStep(forward, batches, patterns, labels, device)
    if world.distributed:
        raise ValueError("MCE needs the whole batch in one process")
    step = MceStep(model, batches, patterns, labels, device, config.mce,
                   config.modality_names)
    say("MCE: dataset factors a_m = N / N_m: " + ", ".join(
        f"{name} {value:.2f}" for name, value in zip(step.names, step.availability.tolist())))
    return step


class LossScale:
    """The loss scaling an fp16 tower needs (MPS's automatic precision), chosen once per
    run; with any other compute dtype it only runs ``backward`` and the optimiser's step.

    Why: the gradients that flow back through the frozen tower to the adapters and token
    embeddings are tiny (ViT-B-16, a micro-batch of 8 of a batch of 128: median 1.4e-7),
    below fp16's smallest normal number (6.1e-5) nearly all of them and below its smallest
    subnormal (6e-8) a quarter, which fp16 flushes to zero. ``torch.amp.GradScaler``
    multiplies the loss before ``backward``, divides the trainable tensors' fp32 gradients
    again before the optimiser's step, skips a step whose gradients overflowed and halves
    the factor then (it doubles it after 2000 clean steps). bf16 has fp32's exponent range
    and needs none of this."""

    def __init__(self, dtype: torch.dtype, device) -> None:
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer) -> bool:
        """The optimiser's step, unless the scaled gradients overflowed; True when it
        stepped. With fp16, reading the factor waits for the device once per step."""
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before


def backward_batch(step: PixelStep, index: np.ndarray, micro_batch: int, world: World,
                   loss_sum: torch.Tensor, check: Callable[[], None],
                   scale: LossScale) -> None:
    """Accumulate the gradient of batch ``index`` (this rank's share of it, weighted for
    DDP's average) micro-batch by micro-batch, scaled by ``scale``, and add the (unscaled)
    loss to ``loss_sum`` (in place, on the device: it is read once per epoch). ``check``
    runs after each micro-batch (the cancel check)."""
    step.begin_batch(index)
    first, stop, weight = rank_share(index.size, world.rank, world.size)
    starts = list(range(first, stop, micro_batch))
    exchanging = isinstance(step.forward, torch.nn.parallel.DistributedDataParallel)
    for number, start in enumerate(starts):
        # DDP exchanges the gradients in the rank's last micro-batch only.
        deferred = exchanging and number < len(starts) - 1
        with step.forward.no_sync() if deferred else contextlib.nullcontext():
            # divided first (in the step), so that the weight (a power of two for 2, 4, …
            # ranks) scales exactly as DDP's average unscales it
            loss = step.loss(index, start, min(start + micro_batch, stop)) * weight
            scale.backward(loss)
        loss_sum += loss.detach() * (index.size / world.size)
        check()


class _KindForward(torch.nn.Module):
    """``forward(windows, codes)`` of the pixel or the tile kind, as one module for DDP."""

    def __init__(self, inner, tiles: bool) -> None:
        super().__init__()
        self.inner = inner
        self.tiles = tiles

    def forward(self, windows, codes):
        return self.inner.forward_tiles(windows, codes) if self.tiles else \
            self.inner(windows, codes)


def distributed_forward(model, device, tiles: bool):
    """The model wrapped in DistributedDataParallel over its trainable tensors only: the
    frozen tower (parameters and buffers) is neither broadcast nor reduced, since every
    rank builds the same one (checked by fingerprint). Unused parameters are expected: a
    batch routes its tokens to some experts only and may lack a modality."""
    from torch.nn.parallel import DistributedDataParallel
    module = _KindForward(model, tiles)
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    # The shared expert's lora_B is (1, width, rank): its gradient's stride in the size-1
    # dimension differs from the bucket's, which is the same memory layout (every mismatch
    # was checked to lie in a size-1 dimension), yet DDP warns once on every rank.
    warnings.filterwarnings("ignore", category=UserWarning,
                            message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True)


__all__ = ["PixelStep", "TileStep", "MceStep", "MceTally", "choose_step", "LossScale",
           "backward_batch", "distributed_forward"]
