"""Missing-modality simulation (training/missing.py): exact pattern shares, the paper's
Table 1/Table 3 settings, seeding, and how simulation combines with real missingness."""
import itertools

import numpy as np
import pytest

from mamol.core.errors import MamolInputError
from mamol.training.missing import (
    MissingSimulation,
    SimulationMode,
    Table1Case,
    apply_simulation,
    simulated_patterns,
    table1_availability,
)

NAMES = ("hs", "sar", "lidar")
FULL = 0b111


def rate(eta, seed=0):
    return MissingSimulation(SimulationMode.RATE, missing_rate=eta, seed=seed)


def availability(*rates, seed=0):
    return MissingSimulation(SimulationMode.AVAILABILITY, availability=tuple(rates), seed=seed)


def counts(patterns, modalities=3):
    return np.bincount(patterns, minlength=2 ** modalities).tolist()


# ------------------------------------------------------------------ missing rate η

def test_rate_gives_exact_counts_per_incomplete_pattern():
    simulation = rate(0.6, seed=4)
    simulation.validate(NAMES)
    patterns = simulated_patterns(simulation, 1400, 3)
    assert patterns.dtype == np.int64 and patterns.shape == (1400,)
    # η / (2^M − 2) = 0.6 / 6 -> 140 samples in each of the six incomplete patterns.
    assert counts(patterns) == [0, 140, 140, 140, 140, 140, 140, 560]


@pytest.mark.parametrize("modalities,eta,count", [(2, 0.5, 1000), (2, 1.0, 10), (3, 0.3, 600),
                                                  (4, 0.7, 1400), (3, 0.25, 97)])
def test_rate_shares_and_never_the_empty_pattern(modalities, eta, count):
    simulation = rate(eta, seed=1)
    shares = simulation.shares(modalities)
    full = 2 ** modalities - 1
    assert 0 not in shares
    assert sorted(shares) == list(range(1, full + 1))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares[full] == pytest.approx(1 - eta)
    each = eta / (2 ** modalities - 2)
    assert all(shares[p] == pytest.approx(each) for p in range(1, full))
    patterns = simulated_patterns(simulation, count, modalities)
    realised = np.bincount(patterns, minlength=full + 1)
    assert realised[0] == 0 and realised.sum() == count
    # Rounded, never off by more than one sample per pattern.
    for pattern in range(1, full + 1):
        assert abs(realised[pattern] - shares[pattern] * count) < 1.0


def test_rate_zero_and_mode_none_keep_everything_complete():
    assert counts(simulated_patterns(rate(0.0), 50, 3)) == [0] * 7 + [50]
    assert counts(simulated_patterns(MissingSimulation(), 50, 3)) == [0] * 7 + [50]
    assert MissingSimulation().shares(2) == {3: 1.0}


# ------------------------------------------------------------------ per-modality availability

TABLE3_ROWS = [(1.0, 0.75, 0.5), (0.75, 0.75, 0.75), (0.5, 1.0, 0.75), (0.75, 0.5, 1.0)]


@pytest.mark.parametrize("rates", TABLE3_ROWS)
def test_availability_reproduces_table3_rows(rates):
    simulation = availability(*rates, seed=2)
    simulation.validate(NAMES)
    count = 1200
    patterns = simulated_patterns(simulation, count, 3)
    assert patterns.size == count
    realised = counts(patterns)
    # An incomplete sample lacks exactly one modality: only 0b011, 0b101, 0b110 and 0b111.
    allowed = {FULL} | {FULL & ~(1 << m) for m in range(3)}
    assert {p for p, n in enumerate(realised) if n} <= allowed
    for m, a in enumerate(rates):
        assert realised[FULL & ~(1 << m)] == round((1 - a) * count)
        # Modality m is available on a share a_m of the samples.
        assert ((patterns >> m) & 1).sum() == round(a * count)
    # "75 % overall missing rate": a quarter of the samples stays complete.
    assert realised[FULL] == count // 4


def test_table1_availability_pairs():
    assert table1_availability(0.7, Table1Case.MISSING_OTHER) == pytest.approx((1.0, 0.3))
    assert table1_availability(0.7, Table1Case.MISSING_HS) == pytest.approx((0.3, 1.0))
    assert table1_availability(0.7, Table1Case.MISSING_BOTH) == pytest.approx((0.65, 0.65))
    # By value too, and the paper's η = 50 % rows.
    assert table1_availability(0.5, "missing_other") == pytest.approx((1.0, 0.5))
    assert table1_availability(0.5, "missing_hs") == pytest.approx((0.5, 1.0))
    assert table1_availability(0.5, "missing_both") == pytest.approx((0.75, 0.75))
    with pytest.raises(MamolInputError, match="missing rate"):
        table1_availability(1.5, Table1Case.MISSING_HS)


@pytest.mark.parametrize("case", list(Table1Case))
def test_table1_rows_simulate_the_missing_rate(case):
    hs, other = table1_availability(0.7, case)
    simulation = availability(hs, other, seed=3)
    simulation.validate(("hs", "lidar"))
    patterns = simulated_patterns(simulation, 1000, 2)
    realised = counts(patterns, 2)
    assert realised[0] == 0 and realised[3] == 300     # 1 − η complete
    assert realised[2] == round((1 - hs) * 1000)       # HS missing (only LiDAR)
    assert realised[1] == round((1 - other) * 1000)


# ------------------------------------------------------------------ seeding

@pytest.mark.parametrize("make", [lambda seed: rate(0.5, seed),
                                  lambda seed: availability(0.75, 0.75, 0.75, seed=seed)])
def test_patterns_are_seeded(make):
    first = simulated_patterns(make(9), 500, 3)
    assert np.array_equal(first, simulated_patterns(make(9), 500, 3))
    other = simulated_patterns(make(10), 500, 3)
    assert not np.array_equal(first, other)
    assert counts(first) == counts(other)              # same proportions, other samples


# ------------------------------------------------------------------ applying to real patterns

def test_apply_simulation_only_removes_and_never_empties():
    rng = np.random.default_rng(0)
    real = rng.integers(1, FULL + 1, size=3000).astype(np.int64)  # every non-empty pattern
    for simulation in (rate(0.8, seed=1), availability(0.5, 0.75, 0.75, seed=2),
                       rate(1.0, seed=3)):
        effective = apply_simulation(real, simulation, 3)
        assert effective.shape == real.shape and effective.dtype == np.int64
        assert (effective != 0).all()
        assert (effective & ~real == 0).all()            # nothing added: effective ⊆ real
        target = simulated_patterns(simulation, real.size, 3)
        expected = np.where(real & target == 0, real, real & target)
        assert np.array_equal(effective, expected)
        assert (effective != real).any()


def test_apply_simulation_on_complete_samples_is_the_simulation():
    real = np.full(1400, FULL, dtype=np.int64)
    simulation = rate(0.6, seed=5)
    effective = apply_simulation(real, simulation, 3)
    assert np.array_equal(effective, simulated_patterns(simulation, 1400, 3))
    assert counts(effective) == [0, 140, 140, 140, 140, 140, 140, 560]


def test_apply_simulation_keeps_the_real_pattern_where_nothing_would_be_left():
    real = np.array([0b001] * 6 + [0b010] * 6, dtype=np.int64)
    simulation = availability(0.5, 0.5, seed=0)        # half lack HS, half lack SAR
    effective = apply_simulation(real, simulation, 2)
    assert np.array_equal(effective, real)


# ------------------------------------------------------------------ validation

def test_availabilities_missing_more_than_everything_are_refused():
    with pytest.raises(MamolInputError, match="add up to at most 100") as error:
        availability(0.5, 0.5, 0.75).validate(NAMES)
    assert "125%" in str(error.value)
    availability(0.5, 0.75, 0.75).validate(NAMES)      # exactly 100 % is fine
    patterns = simulated_patterns(availability(0.5, 0.75, 0.75), 8, 3)
    assert counts(patterns) == [0, 0, 0, 2, 0, 2, 4, 0]


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_rate_outside_unit_interval_is_refused(eta):
    with pytest.raises(MamolInputError, match="missing rate must be between 0 and 1"):
        rate(eta).validate(NAMES)


def test_availability_outside_unit_interval_is_refused():
    with pytest.raises(MamolInputError, match="availability of sar"):
        availability(1.0, 1.2, 1.0).validate(NAMES)


def test_simulation_with_one_modality_is_refused():
    with pytest.raises(MamolInputError, match="at least two modalities"):
        rate(0.3).validate(("hs",))
    with pytest.raises(MamolInputError, match="at least two modalities"):
        availability(0.7).validate(("hs",))
    # Nothing to simulate with one modality is fine.
    rate(0.0).validate(("hs",))
    availability(1.0).validate(("hs",))


@pytest.mark.parametrize("rates", [(0.5, 0.5), (0.9, 0.9, 0.9, 0.9), ()])
def test_wrong_number_of_availabilities_is_refused(rates):
    with pytest.raises(MamolInputError, match="one availability rate per modality") as error:
        availability(*rates).validate(NAMES)
    assert f"got {len(rates)}" in str(error.value)


def test_valid_settings_pass_and_describe_themselves():
    for rates in itertools.chain(TABLE3_ROWS, [(1.0, 1.0, 1.0)]):
        availability(*rates).validate(NAMES)
    rate(0.6).validate(NAMES)
    assert "each of the 6 incomplete patterns on 10.0%" in rate(0.6).describe(NAMES)
    assert rate(0.6, seed=3).to_json() == {"mode": "rate", "missing_rate": 0.6,
                                           "availability": [], "seed": 3}


def test_independent_availability_combines_per_modality_drops():
    """HS 20 % / SAR 60 % / LiDAR 100 %: more missing than one-per-sample allows (120 %),
    each modality present on exactly its share, patterns in product proportions."""
    simulation = MissingSimulation(SimulationMode.INDEPENDENT,
                                   availability=(0.2, 0.6, 1.0), seed=3)
    simulation.validate(["hs", "sar", "lidar"])
    with pytest.raises(MamolInputError, match="at most 100 %"):
        MissingSimulation(SimulationMode.AVAILABILITY, availability=(0.2, 0.6, 1.0)
                          ).validate(["hs", "sar", "lidar"])
    shares = simulation.shares(3)
    assert shares == pytest.approx({0b111: 0.12, 0b110: 0.48, 0b101: 0.08, 0b100: 0.32})
    patterns = simulated_patterns(simulation, 1000, 3)
    for bit, rate in enumerate((0.2, 0.6, 1.0)):
        assert int(((patterns >> bit) & 1).sum()) == round(1000 * rate)
    assert "independent" in simulation.describe(["hs", "sar", "lidar"])
    assert simulation.to_json()["mode"] == "independent"


def test_independent_availability_keeps_the_real_pattern_when_all_would_go():
    simulation = MissingSimulation(SimulationMode.INDEPENDENT, availability=(0.5, 0.5),
                                   seed=1)
    assert simulation.shares(2)[0] == pytest.approx(0.25)
    real = np.full(400, 0b11)
    effective = apply_simulation(real, simulation, 2)
    assert (effective != 0).all()
    assert int((effective == 0b11).sum()) == 100 + 100   # complete, plus the emptied ones
