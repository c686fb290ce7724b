"""Missing-modality simulation on top of the real missingness (paper §4.1, DESIGN §5).

Two ways to say how many samples lose which modality, both from the paper:

* **Missing rate η** (paper §4.1, after MMP): a share η of the samples is incomplete and
  each of the 2^M − 2 incomplete, non-empty patterns gets η / (2^M − 2) of them; 1 − η
  stay complete. (The paper prints "M^2 − 2"; with M = 2 both give 2, and 2^M − 2 is the
  number of incomplete non-empty patterns, so that is what is meant.)
* **Independent availability** a_m (for imbalanced missing rates, MCE's setting): each
  modality m is dropped from a share 1 − a_m of the samples independently of the others,
  so patterns combine (HS 20 % / SAR 60 % / LiDAR 100 % leaves HS + SAR + LiDAR on 12 %,
  SAR + LiDAR on 48 %, HS + LiDAR on 8 % and LiDAR alone on 32 %); the pattern shares are
  the products Π a_m or (1 − a_m), assigned in exact proportions like the others. A sample
  whose every modality is dropped keeps its real pattern (as below).
* **Per-modality availability** a_m (paper Table 3, and Table 1's "Train/Test HS other"
  columns): an incomplete sample lacks exactly one modality, modality m is dropped from
  a share 1 − a_m of the samples, and the rest stay complete. This reproduces the paper's
  numbers: Table 3's "75 % overall missing rate" rows (HS/SAR/LiDAR 100/75/50,
  75/75/75, 50/100/75, 75/50/100) all have Σ(1 − a_m) = 0.75, and Table 1's rows at
  η = 50 % are HS/other 100/50, 50/100 and 75/75. :func:`table1_availability` gives
  those pairs for any η. The shares must add up to at most 1.

Patterns are assigned in exact proportions (rounded counts, shuffled with the seed), once
per sample. A simulated pattern only removes modalities: a sample's pattern is
``real & simulated``; where that would leave nothing, the sample keeps its real pattern
(a modality that is not there cannot be removed twice, and an empty sample cannot be
learnt from). The realised pattern counts are reported.
"""
import enum
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from ..core.errors import MamolInputError
from ..core.windows import pattern_name


class SimulationMode(str, enum.Enum):
    NONE = "none"                  # only the real missingness
    RATE = "rate"                  # missing rate η over all incomplete patterns
    AVAILABILITY = "availability"  # per-modality availability rates, one missing per sample
    INDEPENDENT = "independent"    # per-modality availability, each modality on its own


class Table1Case(str, enum.Enum):
    """The three rows of the paper's Table 1 for one missing rate η (HS vs other)."""

    MISSING_OTHER = "missing_other"  # HS 100 %, other 1 − η
    MISSING_HS = "missing_hs"        # HS 1 − η, other 100 %
    MISSING_BOTH = "missing_both"    # each 1 − η/2


def table1_availability(missing_rate: float, case: Table1Case) -> Tuple[float, float]:
    """(HS availability, other availability) of a Table 1 row."""
    if not 0.0 <= missing_rate <= 1.0:
        raise MamolInputError(f"A missing rate must be in [0, 1], got {missing_rate}.")
    case = Table1Case(case)
    if case is Table1Case.MISSING_OTHER:
        return 1.0, 1.0 - missing_rate
    if case is Table1Case.MISSING_HS:
        return 1.0 - missing_rate, 1.0
    return 1.0 - missing_rate / 2, 1.0 - missing_rate / 2


@dataclass(frozen=True)
class MissingSimulation:
    """Which modalities to hide from which samples (seeded)."""

    mode: SimulationMode = SimulationMode.NONE
    missing_rate: float = 0.0                # η, for mode=rate
    availability: Tuple[float, ...] = ()     # a_m per model modality, for mode=availability
    seed: int = 0

    def validate(self, modality_names: Sequence[str]) -> None:
        count = len(modality_names)
        if self.mode is SimulationMode.RATE:
            if not 0.0 <= self.missing_rate <= 1.0:
                raise MamolInputError(
                    f"The missing rate must be between 0 and 1, got {self.missing_rate}.")
            if count < 2 and self.missing_rate > 0:
                raise MamolInputError(
                    "Missing-modality simulation needs at least two modalities; only "
                    f"{', '.join(modality_names)} was given.")
        if self.mode in (SimulationMode.AVAILABILITY, SimulationMode.INDEPENDENT):
            if len(self.availability) != count:
                raise MamolInputError(
                    f"Give one availability rate per modality ({', '.join(modality_names)}), "
                    f"got {len(self.availability)}.")
            for name, rate in zip(modality_names, self.availability):
                if not 0.0 <= rate <= 1.0:
                    raise MamolInputError(
                        f"The availability of {name} must be between 0 and 1, got {rate}.")
            dropped = sum(1.0 - rate for rate in self.availability)
            if count < 2 and dropped > 0:
                raise MamolInputError(
                    "An availability below 100 % needs at least two modalities.")
            if self.mode is SimulationMode.INDEPENDENT:
                return
            if dropped > 1.0 + 1e-9:
                rates = ", ".join(f"{n} {r:.0%}" for n, r in zip(modality_names,
                                                                  self.availability))
                raise MamolInputError(
                    f"Availabilities {rates} would remove a modality from {dropped:.0%} of "
                    "the samples, but each incomplete sample lacks exactly one modality, so "
                    "the missing shares (1 − availability) must add up to at most 100 % "
                    "(independent availability has no such limit).")

    def shares(self, modality_count: int) -> Dict[int, float]:
        """Pattern code -> share of samples given that pattern (sums to 1)."""
        full = 2 ** modality_count - 1
        if self.mode is SimulationMode.RATE and self.missing_rate > 0:
            incomplete = [p for p in range(1, full)]
            each = self.missing_rate / len(incomplete)
            shares = {p: each for p in incomplete}
            shares[full] = 1.0 - self.missing_rate
            return shares
        if self.mode is SimulationMode.INDEPENDENT:
            shares = {}
            for pattern in range(full + 1):
                share = 1.0
                for m, rate in enumerate(self.availability):
                    share *= rate if pattern & (1 << m) else 1.0 - rate
                if share > 0:
                    shares[pattern] = share
            return shares
        if self.mode is SimulationMode.AVAILABILITY:
            shares = {full & ~(1 << m): 1.0 - rate for m, rate in enumerate(self.availability)
                      if rate < 1.0}
            shares[full] = 1.0 - sum(shares.values())
            return shares
        return {full: 1.0}

    def describe(self, modality_names: Sequence[str]) -> str:
        if self.mode is SimulationMode.RATE:
            count = 2 ** len(modality_names) - 2
            return (f"missing rate η = {self.missing_rate:.0%}: each of the {count} incomplete "
                    f"patterns on {self.missing_rate / max(count, 1):.1%} of the samples, "
                    f"{1 - self.missing_rate:.0%} complete (seed {self.seed})")
        if self.mode is SimulationMode.INDEPENDENT:
            rates = ", ".join(f"{n} {r:.0%}" for n, r in zip(modality_names, self.availability))
            return (f"independent per-modality availability {rates}; each modality dropped "
                    f"on its own (seed {self.seed})")
        if self.mode is SimulationMode.AVAILABILITY:
            rates = ", ".join(f"{n} {r:.0%}" for n, r in zip(modality_names, self.availability))
            return (f"per-modality availability {rates}; each incomplete sample lacks one "
                    f"modality (seed {self.seed})")
        return "none (only the real missingness of the rasters)"

    def to_json(self) -> Dict[str, object]:
        return {"mode": self.mode.value, "missing_rate": self.missing_rate,
                "availability": list(self.availability), "seed": self.seed}


def simulated_patterns(simulation: MissingSimulation, count: int,
                       modality_count: int) -> np.ndarray:
    """(count,) int64 target pattern per sample, in exact proportions, shuffled by seed."""
    shares = simulation.shares(modality_count)
    patterns = sorted(shares)
    exact = np.array([shares[p] * count for p in patterns])
    counts = np.floor(exact).astype(np.int64)
    # Hand the rounding remainder to the largest fractional parts (ties: lower code first).
    remainder = count - int(counts.sum())
    for position in np.argsort(-(exact - counts), kind="stable")[:remainder]:
        counts[position] += 1
    codes = np.repeat(np.array(patterns, dtype=np.int64), counts)
    rng = np.random.default_rng(simulation.seed)
    return codes[rng.permutation(count)]


def apply_simulation(real: np.ndarray, simulation: MissingSimulation,
                     modality_count: int) -> np.ndarray:
    """Effective patterns: ``real & simulated``, or ``real`` where that would be empty."""
    target = simulated_patterns(simulation, real.size, modality_count)
    effective = real & target
    return np.where(effective == 0, real, effective)


def pattern_counts(patterns: np.ndarray, names: Sequence[str]) -> Dict[str, int]:
    """Samples per missing pattern, by pattern name (e.g. "hs+lidar"), lowest code first."""
    codes, counts = np.unique(patterns, return_counts=True)
    return {pattern_name(c, names): int(n) for c, n in zip(codes, counts)}
