"""What a run counts over its blocks."""
from typing import Sequence

import numpy as np

from ..value_range import FarTally


class RunTally:
    """What a run counts over its blocks (per rank, summed over ranks at the end)."""

    def __init__(self, class_count: int, pattern_codes: int, order: Sequence[str]) -> None:
        self.class_counts = np.zeros(class_count, dtype=np.int64)
        self.pattern_counts = np.zeros(pattern_codes, dtype=np.int64)
        self.classified = 0
        self.passes = 0
        self.far = FarTally(order)

    def merge(self, other: "RunTally") -> None:
        self.class_counts += other.class_counts
        self.pattern_counts += other.pattern_counts
        self.classified += other.classified
        self.passes += other.passes
        self.far.merge(other.far)
