"""The training schedule (training/schedule.py): the samples each epoch draws, each rank's
share of a batch under torchrun, and the learning rate of each step. Pure NumPy, fast."""
import numpy as np
import pytest

from mamol.training.schedule import (epoch_length, epoch_order, lr_factor, rank_share,
                                     shard_bounds, steps_per_epoch, warmup_length)


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(step, 100, 10) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(1 / 90) and lr_factor(100, 100, 10) == 0.0


def test_balanced_epochs_draw_every_class_equally():
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    order = epoch_order(labels, 3, True, np.random.default_rng(0))
    assert np.bincount(labels[order]).tolist() == [50, 50, 50]
    assert epoch_length(labels, 3, True) == order.size
    assert epoch_length(labels, 3, False) == labels.size
    assert sorted(epoch_order(labels, 3, False, np.random.default_rng(0))) == list(range(75))


def test_rank_shares_are_the_micro_batches_of_one_process():
    for count in range(0, 40):
        for size in (1, 2, 3, 4, 7):
            bounds = [shard_bounds(count, rank, size) for rank in range(size)]
            covered = [i for start, stop in bounds for i in range(start, stop)]
            assert covered == list(range(count)), (count, size)
            share = max(1, -(-count // size))
            starts = [start for start, stop in bounds if stop > start]
            assert starts == list(range(0, count, share)), (count, size)


def test_a_rank_without_samples_joins_at_weight_zero():
    # 15 samples on 2 ranks: 8 + 7, each loss weighted by the number of ranks
    assert rank_share(15, 0, 2) == (0, 8, 2.0) and rank_share(15, 1, 2) == (8, 15, 2.0)
    # 1 sample on 2 ranks: rank 1 borrows sample 0 at weight 0
    assert rank_share(1, 0, 2) == (0, 1, 2.0) and rank_share(1, 1, 2) == (0, 1, 0.0)
    assert rank_share(5, 0, 1) == (0, 5, 1.0)


def test_warm_up_is_a_rounded_up_share_of_the_steps():
    assert warmup_length(0.1, 100) == 10 and warmup_length(0.1, 95) == 10
    assert warmup_length(0.01, 5) == 1 and warmup_length(0.0, 100) == 0
    assert steps_per_epoch(150, 128) == 2 and steps_per_epoch(128, 128) == 1
