"""The estimate of the time left (core.pace) on a fake clock: what it says, and when."""
import pytest

from mamol.core import pace as pace_module
from mamol.core.pace import (LONG_CPU_RUN, MEASURE_SECONDS, Pace, device_words,
                             human_duration, human_rate, pixel_classify_advice,
                             pixel_training_advice)


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Heard:
    def __init__(self) -> None:
        self.lines, self.warnings = [], []


def make(total, device="cpu", advice="Train a tile model.", processes=1):
    clock, heard = FakeClock(), Heard()
    pace = Pace(total, "pixels", device, heard.lines.append, heard.warnings.append, advice,
                processes, clock=clock)
    return pace, clock, heard


def run_units(pace, clock, seconds_each, units_each, count):
    for _ in range(count):
        clock.now += seconds_each
        pace.advance(units_each)


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (45.2, "45 s"), (59.4, "59 s"), (59.6, "1 min"), (12 * 60 + 10, "12 min"),
    (3599, "1 h"), (3 * 3600 + 10 * 60 + 20, "3 h 10 min"), (5 * 3600, "5 h"),
    (24 * 3600 - 10, "1 d"), (2 * 86400 + 4 * 3600 + 100, "2 d 4 h"), (3 * 86400, "3 d"),
    (-5, "0 s")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert human_duration(seconds) == text


def test_rates_keep_the_digits_that_mean_something():
    assert [human_rate(r) for r in (88.4, 1234.0, 3.42, 0.754, 0.0123)] == \
        ["88", "1234", "3.4", "0.75", "0.012"]


def test_the_device_is_named_for_any_kind_of_torch_device():
    torch = pytest.importorskip("torch")
    assert device_words(torch.device("cpu")) == "on the CPU"
    assert device_words(torch.device("cuda", 1)) == "on the GPU (cuda:1)"
    assert device_words("mps") == "on mps"


def test_the_first_estimate_skips_the_warm_up_and_waits_for_enough_measuring():
    pace, clock, heard = make(10_000)
    clock.now += 60                 # the first unit: compilation and all
    pace.advance(100)
    run_units(pace, clock, 2, 100, 4)   # 8 s measured: not yet
    assert heard.lines == []
    run_units(pace, clock, 2, 100, 1)   # 10 s: 500 units at 50/s after the warm-up
    # 9400 units left at 50/s; the slow first unit is not in the rate
    assert heard.lines == ["About 3 min left at 50 pixels/s on the CPU."]


def test_a_steady_run_says_it_once_and_a_slower_one_again_when_its_length_doubles():
    pace, clock, heard = make(100_000, advice=None)
    run_units(pace, clock, 1, 100, 50)
    assert len(heard.lines) == 1      # steady: no more lines however long
    run_units(pace, clock, 1, 100, 400)
    assert len(heard.lines) == 1
    # ten times slower: a new line each time the projected length of the run has doubled
    run_units(pace, clock, 10, 100, 300)
    assert heard.lines == ["About 16 min left at 100 pixels/s on the CPU.",
                           "About 17 min left at 50 pixels/s on the CPU.",
                           "About 22 min left at 25 pixels/s on the CPU."]


def test_no_estimate_for_a_short_run():
    pace, clock, heard = make(2000)
    run_units(pace, clock, 1, 100, 20)    # 20 s in all, under a minute left at any point
    assert heard.lines == [] and heard.warnings == []


def test_a_part_reports_progress_within_it():
    """A block of 100 000 pixels at 10 pixels/s: the estimate comes from the steps within
    the block, long before the block ends."""
    pace, clock, heard = make(400_000)
    pace.begin_part(100_000)
    for done in range(0, 5000, 500):        # batches of 500 pixels, 50 s each
        pace.step(done, 100_000)
        clock.now += 50
    assert heard.lines == ["About 11 h 5 min left at 10 pixels/s on the CPU."]
    pace.advance(100_000)
    assert pace.done == 100_000


def test_a_long_cpu_run_gets_the_advice_once():
    pace, clock, heard = make(1_000_000)
    run_units(pace, clock, 10, 100, 5)       # 10 pixels/s: a day left
    assert len(heard.warnings) == 1
    assert heard.warnings[0].startswith("At this pace the run needs about 1 d 4 h more on "
                                        "the CPU. Train a tile model.")
    run_units(pace, clock, 1000, 100, 1)    # far slower: a new estimate, not a new warning
    assert len(heard.lines) == 2 and len(heard.warnings) == 1


def test_the_advice_needs_the_cpu_and_something_to_advise_and_a_long_run(monkeypatch):
    for device, advice in (("cuda:0", "x"), ("cpu", None)):
        pace, clock, heard = make(1_000_000, device, advice)
        run_units(pace, clock, 10, 100, 5)
        assert heard.lines and heard.warnings == []
    pace, clock, heard = make(1_000_000)
    run_units(pace, clock, 10, 1000, 5)      # 100 pixels/s: 2 h 46 min
    assert heard.warnings
    monkeypatch.setattr(pace_module, "LONG_CPU_RUN", 3 * 3600.0)   # the one threshold
    pace, clock, heard = make(1_000_000)
    run_units(pace, clock, 10, 1000, 5)
    assert heard.lines and heard.warnings == []
    assert LONG_CPU_RUN == 30 * 60


def test_several_processes_say_the_runs_rate():
    pace, clock, heard = make(1_000_000, "cuda:0", None, processes=4)
    run_units(pace, clock, 1, 1000, 12)
    assert heard.lines == ["About 16 min left at 4000 pixels/s on the GPU (cuda:0), "
                           "4 processes."]


def test_the_module_clock_is_the_default(monkeypatch):
    """Without a clock argument the pace reads :func:`core.pace.clock` at each point, so a
    run's pace can be driven by a fake clock through the module."""
    clock, heard = FakeClock(), Heard()
    monkeypatch.setattr(pace_module, "clock", clock)
    pace = Pace(1e6, "samples", "cpu", heard.lines.append, heard.warnings.append)
    run_units(pace, clock, MEASURE_SECONDS, 100, 3)
    assert heard.lines == ["About 1 d 4 h left at 10 samples/s on the CPU."]


def test_the_advice_names_the_options_as_the_toolbox_and_the_engine_do():
    classify = pixel_classify_advice()
    assert "Model kind 'Tile (about 100× faster)' in the Toolbox" in classify
    assert "--model-kind tile" in classify and "--device cuda" in classify
    assert "--model-kind" in pixel_training_advice(True)
    mce = pixel_training_advice(False)
    assert "--device cuda" in mce and "--model-kind" not in mce
