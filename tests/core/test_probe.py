"""The doctor's speed probe (issue 32): how it chooses a batch and when it stops, on a fake
clock; its estimates; and one real probe of the tiny backbone on the CPU. Whether its
estimate comes within 2× of a real classification is measured by bench/bench_probe.py."""
import pytest

from mamol.core import probe


class FakeClock:
    """``time.perf_counter`` for the probe: a call of batch b takes ``overhead + b * cost``."""

    def __init__(self, overhead=0.01, cost=0.001):
        self.now, self.overhead, self.cost, self.batches = 0.0, overhead, cost, []

    def __call__(self):
        return self.now

    def call(self, batch):
        self.batches.append(batch)
        self.now += self.overhead + batch * self.cost


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(probe.time, "perf_counter", fake)
    return fake


def test_the_batch_grows_while_the_rate_does(clock):
    measured = probe.measure_rate(clock.call, 10.0, lambda: None, lambda: None)
    # rates 91, 167, 286, 444, 615, 762, 865 items/s: 32 -> 64 gained less than 15 %
    assert measured["batch"] == 64
    assert measured["per_second"] == pytest.approx(64 / 0.074)
    assert clock.batches[:8] == [1, 1, 2, 4, 8, 16, 32, 64]
    assert clock.now <= 10.0 + 0.074


def test_a_short_budget_stops_early_but_times_one_call(clock):
    measured = probe.measure_rate(clock.call, 0.001, lambda: None, lambda: None)
    assert measured == {"batch": 1, "calls": 1, "per_second": pytest.approx(1 / 0.011)}
    assert clock.batches == [1, 1]   # a warm-up and a timed call


def test_a_gpu_warms_up_at_every_size(clock):
    probe.measure_rate(clock.call, 10.0, lambda: None, lambda: None, warm_each=True)
    assert clock.batches[:6] == [1, 1, 2, 2, 4, 4]


def test_estimates_for_a_scene_and_an_epoch():
    made = probe.estimates(windows_per_second=100.0, samples_per_second=10.0, patch=14)
    assert made["pixel_scene_seconds"] == 10_000            # 1,000² windows at 100/s
    assert made["tile_step"] == 10 and made["tile_scene_seconds"] == 100   # 100² tiles
    assert made["training_epoch_seconds"] == 100            # 1,000 samples at 10/s


def test_a_real_probe_of_the_tiny_backbone():
    torch = pytest.importorskip("torch")
    measured = probe.probe_backbone(probe.TINY_ARCH, 7, torch.device("cpu"), seconds=1.0)
    assert measured["windows_per_second"] > 0 and measured["training_samples_per_second"] > 0
    assert measured["precision"] == "float32" and measured["tile_step"] == 5
    assert measured["pixel_scene_seconds"] == pytest.approx(
        1e6 / measured["windows_per_second"])
