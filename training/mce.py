"""MCE's capability factors for imbalanced missing rates (seed 001, DESIGN §5): the numbers
that say how much each modality's auxiliary loss should weigh.

Patterns are bitmasks over the model's M modalities (bit m set = modality m present), as
everywhere in the plugin; a subset S of modalities is a bitmask too, so the 2^M subsets of
M ≤ 3 modalities index small tables.

* **Dataset level** a_m = N / N_m: the inverse availability of modality m over the training
  samples' patterns (real and simulated). A rarely present modality gets a large a_m.
* **Sample level**, the standard Shapley value of each present modality: with v(S) = 1 when
  the fused model, fed only the features of S (the others zeroed), classifies the sample
  correctly, else 0, and v(∅) = 0,

      φ_m = Σ_{S ⊆ P∖{m}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {m}) − v(S)),

  over the sample's present modalities P (n = |P|); φ_m = 0 for an absent m. Efficiency:
  Σ_m φ_m = v(P) − v(∅) = v(P). (The MCE authors' own variant degenerates to v(P)/2 for
  two modalities; the issue asks for the standard value.)
* **Under-learning** b_m = mean over the samples that have m of max(0, c_m − φ_m), where
  c_m = 1 when modality m's auxiliary head alone classifies the sample correctly: a
  modality whose head knows more than its share of the fused decision shows is
  under-used by the fused model.

The auxiliary loss of m is weighted by a_m · b_m (or one of them), normalised so that the
weights average 1 over the modalities present in the batch.
"""
import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Mapping, Sequence, Tuple

import torch

#: Which factors weight the auxiliary losses.
FACTOR_MODES = ("both", "a", "b")


def popcount(value: int) -> int:
    return bin(value).count("1")


def nonempty_subsets(pattern: int) -> Tuple[int, ...]:
    """The non-empty subsets of ``pattern`` (bitmasks), lowest first."""
    return tuple(s for s in range(1, pattern + 1) if s & pattern == s)


def proper_subsets(pattern: int) -> Tuple[int, ...]:
    """The non-empty subsets of ``pattern`` other than ``pattern`` itself: what the subset
    prediction loss feeds the fused head (nothing for a single-modality pattern)."""
    return tuple(s for s in nonempty_subsets(pattern) if s != pattern)


@lru_cache(maxsize=None)
def _shapley_table(modalities: int) -> torch.Tensor:
    """W[p, m, S]: the weight of v(S ∪ {m}) − v(S) in φ_m of a sample with pattern p."""
    size = 1 << modalities
    table = torch.zeros(size, modalities, size, dtype=torch.float64)
    for pattern in range(size):
        n = popcount(pattern)
        for m in range(modalities):
            bit = 1 << m
            if not pattern & bit:
                continue
            rest = pattern & ~bit
            for subset in range(size):
                if subset & rest == subset:
                    k = popcount(subset)
                    table[pattern, m, subset] = (math.factorial(k) *
                                                 math.factorial(n - k - 1) /
                                                 math.factorial(n))
    return table


def shapley_values(values: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """φ of every modality for every sample.

    Args:
        values: [B, 2^M] with values[b, S] = v(S) for the sample's subsets S ⊆ its pattern
            (entries of other subsets, and v(∅) at index 0, are ignored: v(∅) = 0).
        patterns: [B] integer bitmasks of the present modalities.
    Returns:
        [B, M] float32; 0 for absent modalities.
    """
    size = values.shape[1]
    modalities = size.bit_length() - 1
    if size != 1 << modalities:
        raise ValueError(f"values must have 2^M columns, got {size}")
    table = _shapley_table(modalities).to(values.device)
    weights = table[patterns.long()]                                  # [B, M, 2^M]
    v = values.to(torch.float64).clone()
    v[:, 0] = 0.0
    subsets = torch.arange(size, device=values.device)
    with_m = subsets.unsqueeze(0) | (1 << torch.arange(modalities, device=values.device)
                                     ).unsqueeze(1)                   # [M, 2^M]
    gain = v[:, with_m] - v[:, None, :]                               # [B, M, 2^M]
    return (weights * gain).sum(dim=2).to(torch.float32)


def dataset_factors(pattern_counts: Mapping[int, int], modalities: int) -> torch.Tensor:
    """a_m = N / N_m from the training samples' pattern counts (code -> samples); 0 for a
    modality no sample has (it has no auxiliary loss to weigh)."""
    total = sum(pattern_counts.values())
    factors = []
    for m in range(modalities):
        present = sum(n for code, n in pattern_counts.items() if code & (1 << m))
        factors.append(total / present if present else 0.0)
    return torch.tensor(factors, dtype=torch.float32)


def under_learning(correct_alone: torch.Tensor, phi: torch.Tensor,
                   patterns: torch.Tensor) -> torch.Tensor:
    """b_m = mean over the samples with m of max(0, c_m − φ_m); 0 where no sample has m.

    Args:
        correct_alone: [B, M] c_m (1 when modality m's auxiliary head is right).
        phi: [B, M] Shapley values.
        patterns: [B] bitmasks.
    """
    modalities = phi.shape[1]
    bits = 1 << torch.arange(modalities, device=phi.device)
    present = (patterns.long().unsqueeze(1) & bits) != 0              # [B, M]
    excess = (correct_alone.to(phi.dtype) - phi).clamp(min=0) * present
    count = present.sum(dim=0)
    return torch.where(count > 0, excess.sum(dim=0) / count.clamp(min=1),
                       torch.zeros_like(excess[0]))


def auxiliary_weights(a: torch.Tensor, b: torch.Tensor, patterns: torch.Tensor,
                      mode: str = "both") -> torch.Tensor:
    """The auxiliary-loss weight of each modality: a·b, a or b, normalised so the weights
    average 1 over the modalities present in the batch (all 0 when every factor is 0)."""
    if mode not in FACTOR_MODES:
        raise ValueError(f"mode must be one of {FACTOR_MODES}, got {mode!r}")
    raw = a * b if mode == "both" else (a if mode == "a" else b)
    modalities = raw.shape[0]
    bits = 1 << torch.arange(modalities, device=raw.device)
    present = ((patterns.long().unsqueeze(1) & bits) != 0).any(dim=0)
    if not present.any():
        return torch.zeros_like(raw)
    mean = raw[present].mean()
    if mean <= 0:
        return torch.zeros_like(raw)
    return torch.where(present, raw / mean, torch.zeros_like(raw))


def subset_masks(patterns: Sequence[int], modalities: int) -> torch.Tensor:
    """[B, 2^M] booleans: which subsets of each sample's pattern are non-empty subsets of it
    (the columns of ``values`` that :func:`shapley_values` reads)."""
    size = 1 << modalities
    rows = [[s != 0 and s & p == s for s in range(size)] for p in patterns]
    return torch.tensor(rows, dtype=torch.bool)


# ---- the losses -------------------------------------------------------------------------

@dataclass(frozen=True)
class MceConfig:
    """MCE's loss weights: loss = CE(fused) + λ_aux · weighted auxiliary CE + λ_sub · subset
    CE + λ_rec · completion L1."""

    factors: str = "both"        # what weights the auxiliary losses: a·b, a only, b only
    auxiliary: float = 1.0       # λ_aux
    subsets: float = 1.0         # λ_sub
    completion: float = 1.0      # λ_rec

    def validate(self) -> None:
        from ..core.errors import MamolInputError
        if self.factors not in FACTOR_MODES:
            raise MamolInputError(f"MCE factors must be one of {', '.join(FACTOR_MODES)}, "
                                  f"got '{self.factors}'.")
        for name in ("auxiliary", "subsets", "completion"):
            if getattr(self, name) < 0:
                raise MamolInputError(f"MCE's λ_{name} must not be negative.")

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def _subset_mask(subset: int, modalities: int, like: torch.Tensor) -> torch.Tensor:
    """(1, M, 1) multiplier keeping the features of ``subset`` only."""
    keep = [(subset >> m) & 1 for m in range(modalities)]
    return like.new_tensor(keep).view(1, modalities, 1)


def mce_losses(model, features: torch.Tensor, patterns: torch.Tensor, targets: torch.Tensor,
               availability: torch.Tensor, config: MceConfig) -> Tuple[torch.Tensor, Dict]:
    """The MCE loss of one (micro-)batch, summed over its samples (the caller divides by the
    batch size, as for the plain loss), and the batch's statistics.

    Args:
        model: a MamolModel built with ``AdapterConfig(mce=True)``.
        features: (B, M, D) fp32 features f_m, zeros where missing (``model.features``).
        patterns: (B,) int64 bitmasks (any device).
        targets: (B,) class indices on the features' device.
        availability: (M,) the dataset factors a_m (:func:`dataset_factors`).
    Returns:
        (loss, stats): stats hold per-modality sums over the batch for the report:
        ``present`` (samples with m), ``aux_correct``, ``phi`` and the batch's ``b`` and
        ``weight`` (M values each, detached, on the CPU).
    """
    functional = torch.nn.functional
    batch, modalities, _ = features.shape
    device = features.device
    patterns = patterns.to(device).long()
    bits = 1 << torch.arange(modalities, device=device)
    present = (patterns.unsqueeze(1) & bits) != 0                            # (B, M)

    loss = functional.cross_entropy(model.classify_features(features), targets,
                                    reduction="sum")

    # auxiliary heads on each f_m alone, for the samples that have m
    aux_ce = torch.stack([functional.cross_entropy(head(features[:, m]), targets,
                                                   reduction="none")
                          for m, head in enumerate(model.auxiliary_heads)], dim=1)
    with torch.no_grad():
        aux_correct = torch.stack([head(features[:, m]).argmax(dim=1) == targets
                                   for m, head in enumerate(model.auxiliary_heads)], dim=1)
        # v(S): the fused model fed the features of S alone is right (no re-encoding)
        values = torch.zeros(batch, 1 << modalities, device=device)
        for subset in range(1, 1 << modalities):
            masked = features * _subset_mask(subset, modalities, features)
            values[:, subset] = (model.classify_features(masked).argmax(dim=1)
                                 == targets).float()
        phi = shapley_values(values, patterns)
        b = under_learning(aux_correct, phi, patterns)
        weights = auxiliary_weights(availability.to(device), b, patterns, config.factors)
    counts = present.sum(dim=0)
    per_modality = (aux_ce * present).sum(dim=0) / counts.clamp(min=1)       # mean CE of m
    used = counts > 0
    auxiliary = (weights * per_modality)[used].sum() / used.sum().clamp(min=1)
    loss = loss + config.auxiliary * auxiliary * batch

    # subset prediction over each sample's proper non-empty subsets
    if config.subsets > 0:
        subset_sum = features.new_zeros(batch)
        subset_count = features.new_zeros(batch)
        for subset in range(1, (1 << modalities) - 1):
            inside = ((patterns & subset) == subset) & (patterns != subset)
            if not bool(inside.any()):
                continue
            masked = features * _subset_mask(subset, modalities, features)
            ce = functional.cross_entropy(model.classify_features(masked), targets,
                                          reduction="none")
            subset_sum = subset_sum + ce * inside
            subset_count = subset_count + inside
        has = subset_count > 0
        if bool(has.any()):
            loss = loss + config.subsets * (subset_sum[has] / subset_count[has]).sum()

    # cross-modal completion: f_m from the fused tokens of the others, for subsets that
    # omit m; L1 to the detached f_m where m is present
    if config.completion > 0 and model.completion is not None:
        target_features = features.detach()
        for m in range(modalities):
            others = [k for k in range(modalities) if k != m]
            l1_sum = features.new_zeros(batch)
            l1_count = features.new_zeros(batch)
            for subset in range(1, 1 << modalities):
                if subset & (1 << m):
                    continue
                inside = present[:, m] & ((patterns & subset) == subset)
                if not bool(inside.any()):
                    continue
                fused = model.fusion(features * _subset_mask(subset, modalities, features))
                predicted = model.completion[m](fused[:, others])
                l1 = (predicted - target_features[:, m]).abs().mean(dim=1)
                l1_sum = l1_sum + l1 * inside
                l1_count = l1_count + inside
            has = l1_count > 0
            if bool(has.any()):
                loss = loss + config.completion * (l1_sum[has] / l1_count[has]).sum() \
                    / modalities

    stats = {"present": counts.float().cpu(),
             "aux_correct": (aux_correct & present).sum(dim=0).float().cpu(),
             "phi": (phi * present).sum(dim=0).float().cpu(),
             "b": b.detach().float().cpu(), "weight": weights.detach().float().cpu()}
    return loss, stats
