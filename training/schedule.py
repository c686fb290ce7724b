"""What each optimiser step of training sees (DESIGN §5): the samples an epoch draws, each
rank's share of a batch under torchrun, and the learning rate of the step.

Pure NumPy and arithmetic, no torch: the same seeded order on every rank is what lets
:func:`shard_bounds` cut one batch among them.
"""
import math
from typing import Tuple

import numpy as np


def epoch_length(class_index: np.ndarray, class_count: int, balance: bool) -> int:
    """Samples per epoch: all of them, or (balanced) the largest class's count per class
    that has samples."""
    if not balance:
        return int(class_index.size)
    counts = np.bincount(class_index, minlength=class_count)
    return int(counts.max() * np.count_nonzero(counts))


def epoch_order(class_index: np.ndarray, class_count: int, balance: bool,
                rng: np.random.Generator) -> np.ndarray:
    """Sample indices for one epoch. Balanced: every class contributes as many samples as
    the largest one (smaller classes are repeated, each repeat in a new random order)."""
    if not balance:
        return rng.permutation(class_index.size)
    members = [np.flatnonzero(class_index == k) for k in range(class_count)]
    largest = max(m.size for m in members)
    parts = []
    for indices in members:
        if indices.size == 0:
            continue
        repeats = -(-largest // indices.size)
        drawn = np.concatenate([rng.permutation(indices) for _ in range(repeats)])[:largest]
        parts.append(drawn)
    return rng.permutation(np.concatenate(parts))


def shard_bounds(count: int, rank: int, size: int) -> Tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous share of a batch of ``count`` samples
    among ``size`` ranks: ``ceil(count / size)`` samples each, the last ranks taking what
    is left (possibly nothing). The shares are then exactly the micro-batches one process
    makes with ``micro_batch_size = ceil(count / size)``, so the two runs sum the same
    gradients in the same order (see ``tests/engine/test_distributed.py``)."""
    share = -(-count // size)
    start = min(count, rank * share)
    return start, min(count, start + share)


def rank_share(count: int, rank: int, size: int) -> Tuple[int, int, float]:
    """Rank ``rank``'s share of a batch of ``count`` samples and the weight of its loss.

    DDP averages the ranks' gradients, so a rank's loss (its share of the batch's mean) is
    weighted by ``size`` to make the average the whole batch's gradient. A rank without a
    sample (fewer samples than ranks) still joins the gradient exchange, with the batch's
    first sample at weight 0, so it touches no parameter that sample's owner does not."""
    start, stop = shard_bounds(count, rank, size)
    if start == stop:
        return 0, 1, 0.0
    return start, stop, float(size)


def steps_per_epoch(epoch_size: int, batch_size: int) -> int:
    """Optimiser steps of an epoch: the last batch may be short."""
    return -(-epoch_size // batch_size)


def warmup_length(warmup_fraction: float, total_steps: int) -> int:
    """Steps of linear warm-up: ``warmup_fraction`` of all steps, rounded up, at least 1
    unless the fraction is 0."""
    if warmup_fraction <= 0:
        return 0
    return max(1, math.ceil(warmup_fraction * total_steps))


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up from
    1/warmup to 1 over ``warmup_steps``, then linear decay reaching 0 after the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


__all__ = ["epoch_length", "epoch_order", "shard_bounds", "rank_share", "steps_per_epoch",
           "warmup_length", "lr_factor"]
