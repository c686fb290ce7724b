"""How far the input lies from the data a model was trained on, judged by the only thing
about that data the model file keeps: each modality's per-band mean and standard
deviation over the training pixels (:class:`core.model_file.ModalityInfo`).

**Far.** A pixel of a modality is *far* from the training data when the root mean square of
its bands' z-scores, z_b = (x_b − mean_b) / std_b, exceeds :data:`FAR_RMS_Z` (5). Over the
training pixels themselves the mean of z_b² is exactly 1 for every band (the stored std is
their population std), so by Markov's inequality at most 1/25 = 4 % of the training pixels
can be that far, whatever their distribution; for roughly normal bands practically none is.

**Flat.** A modality whose values hardly vary over the run's pixels — the root mean square
over the bands of their standard deviation is below :data:`FLAT_RATIO` (1 %) of the
training data's — is warned about too: a constant raster (a fill value, a failed export)
lies close to the training mean at every pixel, so no pixel is far, yet it carries no
information and comes out as one class.

**Warning.** When more than :data:`WARN_SHARE` (5 %) of a modality's valid pixels are far —
more than the training data itself could have — the run warns for that modality and goes
on: the classes there may be wrong (other units or scaling, another sensor, a broken
raster), but only the analyst can tell. The share is logged for every modality and
written into the outputs in any case.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from .modalities import modality_label

#: RMS z-score over a modality's bands above which a pixel counts as far.
FAR_RMS_Z = 5.0
#: Share of far pixels above which a run warns (the training data can have at most 4 %).
WARN_SHARE = 0.05
#: Spread (relative to the training data's) below which a modality counts as flat.
FLAT_RATIO = 0.01
#: Fewest pixels of a modality for the flatness test to speak.
FLAT_MIN_PIXELS = 100


def z_scores(values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(bands, ...) raw values -> float32 z-scores with the model's statistics."""
    values = np.asarray(values, dtype=np.float32)
    shape = (-1,) + (1,) * (values.ndim - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        return (values - np.asarray(mean, np.float32).reshape(shape)) / \
            np.asarray(std, np.float32).reshape(shape)


def far_mask(z: np.ndarray) -> np.ndarray:
    """(bands, ...) z-scores of valid pixels -> bool (...): far from the training data."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.mean(np.square(z, dtype=np.float32), axis=0) > FAR_RMS_Z ** 2


class FarTally:
    """Counts valid and far pixels, and the spread of the z-scores, per modality over a run."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.valid = {name: 0 for name in self.names}
        self.far = {name: 0 for name in self.names}
        self._sum: Dict[str, np.ndarray] = {}
        self._square: Dict[str, np.ndarray] = {}

    def add(self, name: str, z: np.ndarray) -> None:
        """Count the valid pixels ``z`` (bands, n) — z-scores, every band finite."""
        z = np.asarray(z, dtype=np.float32)
        if z.shape[1] == 0:
            return
        self.valid[name] += int(z.shape[1])
        self.far[name] += int(far_mask(z).sum())
        with np.errstate(over="ignore"):
            total = z.sum(axis=1, dtype=np.float64)
            square = np.einsum("bn,bn->b", z, z, dtype=np.float64)
        self._sum[name] = self._sum.get(name, 0.0) + total
        self._square[name] = self._square.get(name, 0.0) + square

    def merge(self, other: "FarTally") -> None:
        for name in other.names:
            if other.valid[name]:
                self.valid[name] += other.valid[name]
                self.far[name] += other.far[name]
                self._sum[name] = self._sum.get(name, 0.0) + other._sum[name]
                self._square[name] = self._square.get(name, 0.0) + other._square[name]

    def shares(self) -> Dict[str, Optional[float]]:
        """Modality -> share of its valid pixels that are far (None: no valid pixel)."""
        return {name: (self.far[name] / self.valid[name] if self.valid[name] else None)
                for name in self.names}

    def spread(self, name: str) -> Optional[float]:
        """RMS over the bands of the z-scores' standard deviation: about 1 for data like
        the training data, 0 for a constant raster (None: no valid pixel)."""
        count = self.valid[name]
        if not count:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            variance = self._square[name] / count - (self._sum[name] / count) ** 2
        return float(np.sqrt(np.mean(np.maximum(variance, 0.0))))

    def line(self) -> str:
        """One log line with every modality's share."""
        parts = [f"{modality_label(name)} {_percent(share)}"
                 for name, share in self.shares().items()]
        return (f"Pixels far from the training data (RMS z-score over the bands > "
                f"{FAR_RMS_Z:g}): " + ", ".join(parts) + ".")

    def warnings(self) -> List[str]:
        """A warning per modality that is far from the training data at more than
        :data:`WARN_SHARE` of its pixels, or flat (see the module docstring)."""
        messages = []
        for name, share in self.shares().items():
            label = modality_label(name)
            remedy = (f"check that this raster is the same kind of data, in the same units "
                      f"and scaling, as the {label} raster the model was trained with")
            if share is not None and share > WARN_SHARE:
                messages.append(
                    f"{_percent(share)} of the {label} pixels lie far from the values the "
                    f"model was trained on (more than {FAR_RMS_Z:g} standard deviations from "
                    f"the training mean, over the bands; the training data can have at most "
                    f"{100 / FAR_RMS_Z ** 2:g} % that far). The classes there may be wrong: "
                    f"{remedy}.")
            spread = self.spread(name)
            if (spread is not None and self.valid[name] >= FLAT_MIN_PIXELS
                    and spread < FLAT_RATIO):
                messages.append(
                    f"The {label} raster hardly varies over the {self.valid[name]} pixels "
                    f"it covers here (its spread is {100 * spread:.2g} % of the training "
                    f"data's): a constant or broken raster gives the same class everywhere; "
                    f"{remedy}.")
        return messages


def _percent(share: Optional[float]) -> str:
    return "no valid pixel" if share is None else f"{100 * share:.1f} %"
