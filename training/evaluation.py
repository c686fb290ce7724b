"""Evaluate a trained model against reference labels (the core call behind ``mamol:evaluate``).

Reference labels come from polygons with a class field or from a label raster, on the grid
of the first given raster in model order (as in training). Each labelled pixel becomes one
sample: its P×P windows are cut from the given rasters exactly as in training, its real
missing pattern follows the model's window rule, and the model predicts it with the
normalisation stored in the model file. The result is OA, Cohen's kappa, per-class
producer's/user's accuracy and F1 and the confusion matrix, overall and for each missing
pattern.

Forced missingness answers "what does a missing sensor cost me?":

* ``absent``: evaluate as if these modalities had not been given at all;
* ``availability`` (per-modality availability rates a_m, paper §4.1 and Table 3):
  modality m is hidden from a seeded share 1 − a_m of the samples on top of the real
  missingness — the test side of the paper's Table 1 and Table 3 protocols.

Pixels where none of the evaluated modalities has valid data cannot be classified; they are
counted and left out of the metrics (reported as a warning). Reference classes the model
does not know are an error, since no prediction could ever match them. The share of
reference pixels whose values lie far from the training data is reported per modality
and warned about above 5 % (:mod:`core.value_range`).
"""
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..core import metrics, runs, torch_compat
from ..core.devices import (CPU_INFERENCE_BATCH, device_field, dtype_name, model_inference_batch,
                            parse_precision, precision_field, prepare_model, resolve_device)
from ..core.errors import MamolInputError
from ..core.options import option
from ..core.feedback import CancelCheck, ProgressCallback, Reporter
from ..core.grid import AlignedRaster, inspect_raster, reference_grid
from ..core.modalities import modality_label
from ..core.model_file import check_inputs, load_model, read_header
from ..core.disk import ensure_writable_folder
from ..core.staging import staged_files
from ..core.value_range import FarTally, z_scores
from ..core.windows import max_missing_fraction_field, pattern_name, window_offset
from .batches import Batches, predict
from .dataset import Normalisation, extract_samples, scratch_folder
from .labels import (LabelledPixels, LabelRasterSource, PolygonSource, cap_indices,
                     labels_from_raster, rasterise_polygons)
from .missing import MissingSimulation, SimulationMode, apply_simulation, pattern_counts
from .report import write_report

LOG = logging.getLogger(__name__)

PREDICTION_CHUNK = 8  # batches between two progress reports


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything one evaluation needs."""

    model_path: str
    rasters: Tuple[Tuple[str, str], ...]          # (modality name, raster path), any order
    labels: Union[PolygonSource, LabelRasterSource]
    report_html: Optional[str] = None
    report_json: Optional[str] = None
    absent: Tuple[str, ...] = ()                  # modalities to treat as not given
    availability: Mapping[str, float] = field(default_factory=dict)  # name -> a_m (< 1 forces)
    simulation_seed: int = 0                      # chooses the samples that lose a modality
    independent: bool = option(
        False, flag="--independent", key="FORCE_INDEPENDENTLY",
        label="Force each modality on its own", advanced=True,
        help="With availabilities below 1: each modality is dropped independently of the "
             "others, so patterns combine (the shares lost may then add up to more than 1).")
    max_samples_per_class: int = option(
        0, flag="--max-samples-per-class", key="MAX_SAMPLES_PER_CLASS",
        label="Samples per class (0 = all)", minimum=0, advanced=True,
        help="Evaluate a seeded random subset of each class (faster on large maps).")
    max_missing_fraction: Optional[float] = max_missing_fraction_field()
    batch_size: int = option(
        0, flag="--batch-size", key="BATCH_SIZE", label="Batch size (0 = automatic)",
        minimum=0, maximum=65536, advanced=True,
        help=f"Samples per model call. Automatic: from free GPU memory on a GPU, "
             f"{CPU_INFERENCE_BATCH} on the CPU.")
    device: str = device_field()
    precision: str = precision_field()   # frozen tower: auto | fp32 | bf16 | fp16
    seed: int = option(0, flag="--seed", key="SEED", label="Random seed", minimum=0,
                       advanced=True, help="Chooses the samples of the per-class cap and of "
                                           "the availability forcing.")

    def validate(self) -> None:
        names = [name for name, _ in self.rasters]
        if not names:
            raise MamolInputError(
                "Give at least one raster (hyperspectral, SAR or LiDAR) to evaluate on.")
        if len(set(names)) != len(names):
            raise MamolInputError(f"Each modality may be given once, got {names}.")
        if self.batch_size < 0:
            raise MamolInputError(
                f"The batch size must be 0 (automatic) or positive, got {self.batch_size}.")
        if self.max_samples_per_class < 0:
            raise MamolInputError("The samples-per-class cap must be 0 (no cap) or positive.")
        if self.max_missing_fraction is not None and not 0 <= self.max_missing_fraction <= 1:
            raise MamolInputError("The missing fraction of a window must be in [0, 1].")
        resolve_device(self.device)
        parse_precision(self.precision)


@dataclass
class EvaluationResult:
    summary: Dict[str, object]
    report_html: Optional[Path]
    report_json: Optional[Path]

    @property
    def oa(self) -> Optional[float]:
        return self.summary["evaluation"]["oa"]

    @property
    def kappa(self) -> Optional[float]:
        return self.summary["evaluation"]["kappa"]


def availability_simulation(model_names: Sequence[str], rates: Mapping[str, float],
                            seed: int = 0, independent: bool = False) -> MissingSimulation:
    """A per-modality availability simulation in model order from ``{name: rate}``
    (unnamed modalities stay at 100 %; ``independent``: each modality dropped on its own);
    no simulation when every rate is 1."""
    if all(rate >= 1.0 for rate in rates.values()):
        rates = {}
    if not rates:
        return MissingSimulation()
    unknown = sorted(set(rates) - set(model_names))
    if unknown:
        raise MamolInputError(
            f"Availability given for {', '.join(unknown)}, which the model does not use "
            f"(it uses {', '.join(model_names)}).")
    return MissingSimulation(SimulationMode.INDEPENDENT if independent
                             else SimulationMode.AVAILABILITY,
                             availability=tuple(float(rates.get(n, 1.0)) for n in model_names),
                             seed=seed)


def remap_patterns(patterns: np.ndarray, given: Sequence[str],
                   model_names: Sequence[str]) -> np.ndarray:
    """Patterns whose bit i refers to ``given[i]`` -> bits in the model's modality order."""
    result = np.zeros_like(patterns)
    for bit, name in enumerate(given):
        result |= ((patterns >> bit) & 1) << model_names.index(name)
    return result


def match_classes(pixels: LabelledPixels, header) -> np.ndarray:
    """Model class index of each reference pixel, matched by class value."""
    model_index = {c.value: i for i, c in enumerate(header.classes)}
    unknown = [c for c in pixels.classes if c.value not in model_index]
    if unknown:
        known = ", ".join(f"{c.value} {c.name}" for c in header.classes)
        listed = ", ".join(f"{c.value} '{c.name}'" for c in unknown)
        raise MamolInputError(
            f"The reference labels hold class value(s) the model does not know: {listed}. "
            f"The model's classes are {known}. Give reference labels with the model's class "
            "values (or remove the other classes).")
    lookup = np.array([model_index[c.value] for c in pixels.classes], dtype=np.int64)
    return lookup[pixels.class_index]


def evaluate(config: EvaluationConfig, progress: Optional[ProgressCallback] = None,
             is_cancelled: Optional[CancelCheck] = None,
             log: Optional[Callable[[str], None]] = None,
             warn: Optional[Callable[[str], None]] = None) -> EvaluationResult:
    """Score the model on the reference labels; write the reports if asked. See the module
    docstring. ``log`` receives progress lines, ``warn`` each warning (they are in the
    reports too). A cancel or an error leaves no report behind."""
    torch_compat.import_torch()
    reporter = Reporter(progress, is_cancelled)
    say = log or LOG.info
    caution = warn or LOG.warning
    config.validate()
    model_path = Path(config.model_path)
    header = read_header(model_path)
    model_names = header.modality_names
    infos, present, used = _inspect_rasters(config, header)
    simulation = availability_simulation(model_names, config.availability,
                                         config.simulation_seed, config.independent)
    simulation.validate(model_names)
    threshold = header.training.get("max_missing_fraction", 0.5) \
        if config.max_missing_fraction is None else config.max_missing_fraction

    grid = reference_grid([infos[n] for n in present])
    say(f"Reference grid: {grid.width} × {grid.height} pixels of "
        f"{grid.pixel_width:g} × {grid.pixel_height:g} from the {infos[present[0]].role} "
        "raster.")
    pixels = _reference_pixels(config, header, grid)
    say(f"{len(pixels)} reference pixel(s) to evaluate"
        + (f" (at most {config.max_samples_per_class} per class)"
           if config.max_samples_per_class else "") + ".")
    reporter.report(3)

    warnings: List[str] = list(pixels.warnings)
    started = time.perf_counter()
    with scratch_folder() as scratch:
        aligned = [(name, AlignedRaster(infos[name], grid)) for name in used]
        try:
            samples, dropped = extract_samples(aligned, pixels, header.patch_size, threshold,
                                               Path(scratch), "evaluation", reporter, (3, 25))
        finally:
            for _, raster in aligned:
                raster.close()
        if dropped:
            warnings.append(
                f"{dropped} reference pixel(s) lie where none of the evaluated modalities "
                f"({', '.join(used)}) has valid data; they cannot be classified and are "
                "not counted.")
        if not len(samples):
            raise MamolInputError(
                "No reference pixel has valid data in the evaluated rasters; check that the "
                "labels and rasters cover the same area.")
        real = remap_patterns(samples.pattern, used, model_names)
        far = _far_from_training(samples, used, header)
        say(far.line())
        warnings.extend(far.warnings())
        patterns = apply_simulation(real, simulation, len(model_names))
        forcing = describe_forcing(config.absent, simulation, model_names)
        say("Forced missingness: " + forcing)

        device = resolve_device(config.device)
        model, _ = load_model(model_path, log=say)
        model = prepare_model(model, device, config.precision).eval()
        predicted = _predict(config, header, model, samples, patterns, device, reporter)
        reference = samples.class_index
    seconds = time.perf_counter() - started

    result = score(reference, predicted, patterns, [c.name for c in header.classes],
                   model_names)
    _say_scores(result, say)
    for message in warnings:
        caution(message)
    summary = _summary(config, header, infos, used, simulation, forcing, result, real,
                       patterns, warnings, far.shares(),
                       {"device": str(device),
                        "precision": dtype_name(model.compute_dtype),
                        "seconds": seconds,
                        "samples_per_second": len(samples) / max(seconds, 1e-9)})
    reporter.report(97)
    html = Path(config.report_html) if config.report_html else None
    json_path = Path(config.report_json) if config.report_json else None
    if html or json_path:
        _write(summary, html, json_path)
    reporter.report(100)
    return EvaluationResult(summary, html, json_path)


def _inspect_rasters(config: EvaluationConfig, header):
    """The given rasters inspected and checked against the model: their infos by modality,
    the model's modalities given (model order) and those of them evaluated (not absent)."""
    model_names = header.modality_names
    given = dict(config.rasters)
    for path in (config.report_html, config.report_json):
        if path:
            ensure_writable_folder(Path(path).parent)
    unknown_absent = sorted(set(config.absent) - set(model_names))
    if unknown_absent:
        raise MamolInputError(
            f"Cannot force {', '.join(unknown_absent)} absent: the model uses "
            f"{', '.join(model_names)}.")
    infos = {name: inspect_raster(path, modality_label(name)) for name, path in given.items()}
    check_inputs(header, {name: info.bands for name, info in infos.items()})
    present = [n for n in model_names if n in given]
    used = [n for n in present if n not in config.absent]
    if not used:
        raise MamolInputError(
            "Every given raster is forced absent; leave at least one modality to evaluate.")
    return infos, present, used


def _reference_pixels(config: EvaluationConfig, header, grid) -> LabelledPixels:
    """The reference labels on ``grid``, with the model's class index, capped per class."""
    if isinstance(config.labels, LabelRasterSource):
        pixels = labels_from_raster(config.labels, grid)
    else:
        pixels = rasterise_polygons(config.labels, grid)
    model_class = match_classes(pixels, header)
    # From here on class_index is the model's class index; pixels.classes is not used.
    pixels = replace(pixels, class_index=model_class)
    return _cap_per_class_model(pixels, len(header.classes), config.max_samples_per_class,
                                config.seed)


def _predict(config: EvaluationConfig, header, model, samples, patterns: np.ndarray, device,
             reporter: Reporter) -> np.ndarray:
    """The model's class index for every sample, with the normalisation of its file."""
    batch_size = config.batch_size or model_inference_batch(model, device, header.patch_size)
    statistics = {m.name: Normalisation(np.asarray(m.mean, dtype=np.float64),
                                        np.asarray(m.std, dtype=np.float64))
                  for m in header.modalities}
    batches = Batches(samples, header.modality_names, statistics, device)
    predicted = np.empty(len(samples), dtype=np.int64)
    chunk = PREDICTION_CHUNK * batch_size
    for start in range(0, len(samples), chunk):
        index = np.arange(start, min(start + chunk, len(samples)))
        predicted[index] = predict(model, batches, patterns, batch_size,
                                   reporter, samples=index)
        reporter.report(25 + 70 * index[-1] / len(samples))
    return predicted


def _say_scores(result: Dict[str, object], say) -> None:
    say(f"Overall: OA {_pct(result['oa'])}, kappa {_num(result['kappa'])} over "
        f"{result['samples']} samples.")
    for record in result["per_pattern"]:
        say(f"  {record['pattern']}: OA {_pct(record['oa'])}, kappa {_num(record['kappa'])} "
            f"({record['samples']} samples){metrics.one_class_flag(record)}")


def _cap_per_class_model(pixels: LabelledPixels, class_count: int, cap: int,
                         seed: int) -> LabelledPixels:
    if not cap:
        return pixels
    rng = np.random.default_rng(seed)
    keep = [cap_indices(np.flatnonzero(pixels.class_index == index), cap, rng)
            for index in range(class_count)]
    return pixels.subset(np.sort(np.concatenate(keep)))


def score(reference: np.ndarray, predicted: np.ndarray, patterns: np.ndarray,
          class_names: Sequence[str], modality_names: Sequence[str]) -> Dict[str, object]:
    """Metrics overall and per missing pattern (each with the full per-class summary)."""
    count = len(class_names)
    result = metrics.summarise(metrics.confusion_matrix(reference, predicted, count),
                               class_names)
    per_pattern = []
    for code in sorted(set(patterns.tolist()), reverse=True):
        members = patterns == code
        record = {"pattern": pattern_name(code, modality_names), "code": int(code)}
        record.update(metrics.summarise(
            metrics.confusion_matrix(reference[members], predicted[members], count),
            class_names))
        per_pattern.append(record)
    result["per_pattern"] = per_pattern
    return result


def describe_forcing(absent: Sequence[str], simulation: MissingSimulation,
                     model_names: Sequence[str]) -> str:
    parts = []
    if absent:
        parts.append(f"{', '.join(absent)} treated as absent")
    if simulation.mode is not SimulationMode.NONE:
        parts.append(simulation.describe(model_names))
    return "; ".join(parts) or "none (only the real missingness of the rasters)"


def _counts_full_first(patterns: np.ndarray, names: Sequence[str]) -> Dict[str, int]:
    """Samples per pattern, most complete pattern first (the order of ``per_pattern``)."""
    return dict(reversed(list(pattern_counts(patterns, names).items())))


def _far_from_training(samples, used: Sequence[str], header) -> FarTally:
    """Valid and far reference pixels per evaluated modality (:mod:`core.value_range`),
    judged on each sample's own pixel where the modality is present."""
    tally = FarTally(used)
    stats = {m.name: m for m in header.modalities}
    for bit, name in enumerate(used):
        present = np.flatnonzero((samples.pattern >> bit) & 1)
        cube = samples.windows[name]
        centre = window_offset(cube.shape[-1])
        for start in range(0, present.size, 65536):
            values = np.asarray(cube[present[start:start + 65536], :, centre, centre]).T
            valid = np.isfinite(values).all(axis=0)
            tally.add(name, z_scores(values[:, valid], stats[name].mean, stats[name].std))
    return tally


def _summary(config, header, infos, used, simulation, forcing, result, real, patterns,
             warnings, far_shares, timing) -> Dict[str, object]:
    names = header.modality_names
    settings = {
        "labels": config.labels.path,
        "label source": "label raster" if isinstance(config.labels, LabelRasterSource)
        else f"polygons, class field {config.labels.class_field}",
        "modalities evaluated": ", ".join(used),
        "forced missingness": forcing,
        "max samples per class": config.max_samples_per_class or "all",
        "max missing fraction of a window": config.max_missing_fraction
        if config.max_missing_fraction is not None else "model's",
        "batch size": config.batch_size or "automatic", "seed": config.seed,
    }
    return {
        "title": "MaMOL evaluation report", "model_file": str(config.model_path),
        "created_by": "mamol evaluation",
        "modalities": [{"name": n, "bands": infos[n].bands, "path": infos[n].path,
                        "used": n in used, "far_share": far_shares.get(n)}
                       for n in names if n in infos],
        "classes": [{"value": c.value, "name": c.name, "colour": c.colour,
                     "reference_samples": row["reference_samples"]}
                    for c, row in zip(header.classes, result["per_class"])],
        "config": settings,
        "forcing": {"absent": list(config.absent), "simulation": simulation.to_json(),
                    "description": forcing},
        "missing_patterns": {"real": _counts_full_first(real, names),
                             "evaluated": _counts_full_first(patterns, names)},
        "evaluation": result,
        "timing": timing,
        "warnings": warnings,
    }


def _write(summary: Dict[str, object], html: Optional[Path], json_path: Optional[Path]) -> None:
    """Both reports appear together or not at all (a missing one goes to this run's scratch
    folder); they are staged in this run's folder beside them, and a full disk is named."""
    finals = [p for p in (html, json_path) if p is not None]
    with staged_files(finals) as staged, runs.scratch_folder("evaluation-") as folder:
        write_report(summary, staged[html] if html else folder / "report.html",
                     staged[json_path] if json_path else folder / "report.json")


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _num(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


__all__ = ["EvaluationConfig", "EvaluationResult", "evaluate", "score",
           "availability_simulation", "remap_patterns", "match_classes"]
