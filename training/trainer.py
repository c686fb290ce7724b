"""Train a MaMOL model on labelled polygons (DESIGN §5): the one core call behind
``mamol:trainmodel`` and the command line.

Steps: inspect the rasters → reference grid (first modality's) → polygons rasterised and
split by polygon → windows cut from GDAL VRTs → normalisation statistics → missing-modality
simulation → AdamW with linear warm-up/decay (paper §4.1: lr 2e-3, weight decay 2e-2,
batch 128) → validation each epoch, overall and per missing pattern → the best epoch's
weights saved to a model file, with an HTML and a JSON report.

Nothing is written until training has finished: a cancel or an error leaves no model file
and no report behind.
"""
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:   # training.mce imports torch, which this module imports lazily
    from .mce import MceConfig

from ..core import metrics, runs, torch_compat
from ..core.backbone import BackboneSpec, build_visual_tower, fingerprint
from ..core.devices import (GPU_TYPES, auto_training_micro_batch, dtype_name,
                            free_gpu_bytes, compile_field, device_field,
                            model_inference_batch, parse_compile_mode, parse_precision,
                            precision_field, prepare_model, require_finite_scores,
                            resolve_device, synchronize)
from ..core.distributed import SINGLE, World
from ..core.errors import MamolInputError
from ..core.feedback import CancelCheck, ProgressCallback, Reporter
from ..core.modalities import NAMES, modality_label
from ..core.grid import (AlignedRaster, RasterInfo, ReferenceGrid, inspect_raster,
                         reference_grid)
from ..core.model_file import (
    EXTENSION,
    ClassInfo,
    ModalityInfo,
    ModelHeader,
    save_model,
    software_versions,
)
from ..core.disk import ensure_writable_folder
from ..core.model_kinds import ModelKind, model_kind_field
from ..core.options import option
from ..core.pace import Pace, pixel_training_advice
from ..core.staging import staged_files
from ..core.windows import DEFAULT_MAX_MISSING_FRACTION, pattern_name
from .batches import Batches, predict
from .dataset import SampleSet, extract_samples, normalisation_statistics, scratch_folder
from .labels import (LabelledClass, LabelRasterSource, PolygonSource, Split, SplitConfig,
                     labels_from_raster, rasterise_polygons, split_by_polygon)
from .missing import MissingSimulation, SimulationMode, apply_simulation, pattern_counts
from .report import write_report
from .schedule import epoch_length, epoch_order, lr_factor, steps_per_epoch, warmup_length
from .summary import training_record, training_summary

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything one training run needs. Defaults follow the paper (§4.1)."""

    modalities: Tuple[Tuple[str, str], ...]   # (name, raster path) in model order
    polygons: Union[PolygonSource, LabelRasterSource]  # labelled polygons or a label raster
    output_model: str                         # path of the .mamol file to write
    report_html: Optional[str] = None         # optional HTML report
    report_json: Optional[str] = None         # optional JSON report
    backbone: BackboneSpec = BackboneSpec()
    patch_size: int = option(
        14, flag="--patch-size", key="PATCH_SIZE", label="Window size (pixels)",
        minimum=1, maximum=64, advanced=True,
        help="Side P of the window around each pixel (and of a tile); 14 matches "
             "ViT-B/16's position grid. Smaller is faster and sees less context.")
    adapter: Dict[str, object] = field(default_factory=dict)  # AdapterConfig fields to override
    epochs: int = option(20, flag="--epochs", key="EPOCHS", label="Training passes (epochs)",
                         minimum=1, maximum=10000,
                         help="Passes over the training samples; the best one is kept.")
    batch_size: int = option(128, flag="--batch-size", key="BATCH_SIZE", label="Batch size",
                             minimum=1, maximum=65536, advanced=True,
                             help="Samples per step.")
    micro_batch_size: int = option(
        0, flag="--micro-batch-size", key="MICRO_BATCH_SIZE",
        label="Micro-batch size (0 = automatic)", minimum=0, maximum=65536, advanced=True,
        help="Samples per forward/backward pass; gradients are accumulated over the batch. "
             "Automatic: the whole batch on a GPU when its free memory holds it, 16 on the "
             "CPU for ViT-B and larger.")
    learning_rate: float = option(2e-3, flag="--lr", key="LEARNING_RATE",
                                  label="Learning rate", minimum=1e-8, maximum=10.0,
                                  advanced=True, help="Peak learning rate.")
    weight_decay: float = option(2e-2, flag="--weight-decay", key="WEIGHT_DECAY",
                                 label="Weight decay", minimum=0.0, maximum=10.0,
                                 advanced=True, help="Decoupled weight decay (AdamW).")
    warmup_fraction: float = option(
        0.1, flag="--warmup-fraction", key="WARMUP_FRACTION",
        label="Warm-up share of the steps", minimum=0.0, maximum=0.99, advanced=True,
        help="Linear learning-rate warm-up over this share of all steps, then linear decay "
             "to 0 (the paper: 10 %).")
    split: SplitConfig = SplitConfig()
    balance_classes: bool = option(
        True, flag="--no-balance", negate=True, key="BALANCE_CLASSES",
        label="Balance classes in every epoch", advanced=True,
        help="Every class seen equally often per epoch (the paper's protocol); off: each "
             "sample once per epoch.")
    simulation: MissingSimulation = MissingSimulation()             # on training samples
    validation_simulation: MissingSimulation = MissingSimulation()  # on validation samples
    max_missing_fraction: float = DEFAULT_MAX_MISSING_FRACTION
    device: str = device_field()
    precision: str = precision_field()    # frozen tower: auto | fp32 | bf16 | fp16
    compile_mode: str = compile_field()   # torch.compile: off | default | max-autotune
    mce: Optional["MceConfig"] = None         # MCE training mode (seed 001); None = plain MaMOL
    seed: int = option(0, flag="--seed", key="SEED", label="Random seed", minimum=0,
                       advanced=True, help="Same seed and inputs give the same model file.")
    model_kind: str = model_kind_field()

    @property
    def modality_names(self) -> List[str]:
        return [name for name, _ in self.modalities]

    def validate(self) -> None:
        """Cheap checks of the settings (no file is opened)."""
        if not self.modalities:
            raise MamolInputError(
                "Give at least one raster (hyperspectral, SAR or LiDAR) to train on.")
        names = self.modality_names
        if len(set(names)) != len(names):
            raise MamolInputError(f"Each modality may be given once, got {names}.")
        if not str(self.output_model).endswith(EXTENSION):
            raise MamolInputError(
                f"The model file must end in '{EXTENSION}', got '{self.output_model}'.")
        checks = ((self.patch_size >= 1, f"The patch size must be at least 1, got "
                                         f"{self.patch_size}."),
                  (self.epochs >= 1, f"Train for at least 1 epoch, got {self.epochs}."),
                  (self.batch_size >= 1, f"The batch size must be at least 1, got "
                                         f"{self.batch_size}."),
                  (self.micro_batch_size >= 0, "The micro-batch size must be 0 (automatic) "
                                               "or positive."),
                  (self.learning_rate > 0, "The learning rate must be positive."),
                  (self.weight_decay >= 0, "The weight decay must not be negative."),
                  (0 <= self.warmup_fraction < 1, "The warm-up fraction must be in [0, 1)."),
                  (0 <= self.max_missing_fraction <= 1,
                   "The missing fraction of a window must be in [0, 1]."))
        for ok, message in checks:
            if not ok:
                raise MamolInputError(message)
        self.split.validate()
        if self.model_kind not in {kind.value for kind in ModelKind}:
            raise MamolInputError(
                f"The model kind must be 'pixel' or 'tile', got '{self.model_kind}'.")
        if self.mce is not None:
            if self.model_kind != ModelKind.PIXEL:
                raise MamolInputError("MCE is available for the pixel model kind only.")
            self.mce.validate()
        self.simulation.validate(names)
        self.validation_simulation.validate(names)
        resolve_device(self.device)
        parse_precision(self.precision)
        parse_compile_mode(self.compile_mode)


@dataclass
class TrainingResult:
    model_path: Path
    report_html: Optional[Path]
    report_json: Optional[Path]
    summary: Dict[str, object]


#: CPU micro-batch for wide backbones: ViT-B-16 keeps about 160 MB of activations per
#: sample for the backward pass (measured: 18 GB peak RSS at batch 112), so a batch of 128
#: would not fit most desktops.
CPU_MICRO_BATCH = 16
WIDE_BACKBONE = 512


def resolve_micro_batch(requested: int, batch_size: int, width: int, device,
                        free_bytes: Optional[int] = None, blocks: int = 12,
                        element_bytes: int = 2, modalities: int = 3,
                        tokens: int = 197) -> int:
    """Samples per forward/backward pass. ``requested`` 0 = automatic: on a GPU (CUDA or
    MPS, with ``free_bytes`` of its memory) the whole batch when it fits, else the largest
    power of two that does; on the CPU the whole batch with a narrow backbone and
    :data:`CPU_MICRO_BATCH` for backbones of width >= 512 (ViT-B and larger)."""
    if requested > 0:
        return min(requested, batch_size)
    if device.type in GPU_TYPES:
        return auto_training_micro_batch(free_bytes, batch_size, tokens, width, blocks,
                                         element_bytes, modalities)
    if width >= WIDE_BACKBONE:
        return min(CPU_MICRO_BATCH, batch_size)
    return batch_size


def pattern_metrics(reference: np.ndarray, predicted: np.ndarray, patterns: np.ndarray,
                    class_count: int, names: Sequence[str],
                    class_names: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    """OA and kappa for each missing pattern present in ``patterns``; with ``class_names``
    also each class's F1 (``per_class``, for the report's heat map)."""
    rows = []
    for code in sorted(set(patterns.tolist())):
        members = patterns == code
        matrix = metrics.confusion_matrix(reference[members], predicted[members], class_count)
        rows.append({"pattern": pattern_name(code, names), "code": int(code),
                     "samples": int(members.sum()),
                     "oa": _finite(metrics.overall_accuracy(matrix)),
                     "kappa": _finite(metrics.cohen_kappa(matrix)),
                     "reference_classes": metrics.reference_class_count(matrix)})
        if class_names is not None:
            rows[-1]["per_class"] = [
                {"name": row["name"], "f1": row["f1"]}
                for row in metrics.summarise(matrix, class_names)["per_class"]]
    return rows


def _finite(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def _wavelengths(info: RasterInfo) -> Tuple[float, ...]:
    """Band centre wavelengths in nm if the band names carry them ("… 412.5 nm")."""
    values = []
    for name in info.band_names:
        parts = name.replace("nm", " nm").split()
        try:
            values.append(float(parts[parts.index("nm") - 1]))
        except (ValueError, IndexError):
            return ()
    return tuple(values)


def train_model(config: TrainingConfig, progress: Optional[ProgressCallback] = None,
                is_cancelled: Optional[CancelCheck] = None,
                log: Optional[Callable[[str], None]] = None,
                warn: Optional[Callable[[str], None]] = None,
                world: Optional[World] = None) -> TrainingResult:
    """Train, validate, and write the model file (and reports). See the module docstring.

    Args:
        config: the run's settings.
        progress: receives percent done (0–100).
        is_cancelled: checked every batch; True stops the run with :class:`Cancelled` and
            nothing written.
        log: receives one line per stage and per epoch (default: this module's logger).
        warn: receives each warning as it arises (default: this module's logger); the
            reports list them too.
        world: under torchrun, this process's rank (:mod:`core.distributed`): every rank
            reads the data and draws the same seeded sample order, trains on its shard of
            each batch with DistributedDataParallel over the trainable tensors, and rank 0
            alone validates and writes the model file and the reports. A failure on any
            rank fails the run on every rank.
    """
    world = world or SINGLE
    torch_compat.import_torch()  # fail before any work if PyTorch is missing
    reporter = Reporter(progress, is_cancelled)
    say, alert = log or LOG.info, warn or LOG.warning
    warnings: List[str] = []

    def caution(text: str) -> None:
        warnings.append(text)
        alert(text)

    with world.agreed():   # every rank reads the inputs; one that cannot stops them all
        inputs = _read_inputs(config, world, say)
    _say_split(inputs.classes, inputs.split, say, caution)
    reporter.report(2)
    names, classes, device = inputs.names, inputs.classes, inputs.device

    with scratch_folder() as scratch:
        with world.agreed():
            train, validation = _extract(config, inputs, Path(scratch), reporter, caution)
        _say_validation(config, validation, say, caution)
        statistics = normalisation_statistics(train, names)
        # Every rank simulates the same patterns for the same samples (the simulation's own
        # seed, over the whole training set), so missingness does not depend on the ranks.
        train_patterns = apply_simulation(train.pattern, config.simulation, len(names))
        validation_patterns = apply_simulation(validation.pattern,
                                               config.validation_simulation, len(names))
        say("Missing simulation: " + config.simulation.describe(names))
        say("Training patterns: " + ", ".join(
            f"{k} {v}" for k, v in pattern_counts(train_patterns, names).items()))

        with world.agreed():
            model, spec_fingerprint = _build_model(config, inputs.infos, len(classes), device,
                                                   say)
        _same_backbone(world, spec_fingerprint)
        history, best_epoch, best_state, timing = _fit(
            config, model, train, train_patterns, validation, validation_patterns,
            statistics, len(classes), device, reporter, say, alert, world)
        if world.is_main:
            model.load_state_dict(best_state, strict=False)
            evaluation = _final_evaluation(config, model, validation, validation_patterns,
                                           statistics, classes, device, reporter)

    if not world.is_main:
        # Rank 0 alone writes; the others wait for its outcome, so they fail if it fails.
        world.agree(None)
        return TrainingResult(inputs.output, _optional_path(config.report_html),
                              _optional_path(config.report_json), {})
    with world.agreed():
        reporter.report(97)
        record = training_record(config, train, validation, train_patterns,
                                 validation_patterns, history, best_epoch, evaluation, names)
        header = _header(config, inputs, statistics, model, spec_fingerprint, record)
        if world.distributed:
            timing["processes"] = world.size
            timing["backend"] = world.backend
        summary = training_summary(config, inputs.infos, classes, inputs.split,
                                   train_patterns, validation_patterns, history, best_epoch,
                                   evaluation, timing, device, warnings, names)
        reports = _write_outputs(model, header, summary, inputs.output, config, caution)
    reporter.report(100)
    say(f"Model written to {inputs.output}.")
    for path in reports:
        say(f"Report written to {path}.")
    written = {str(p) for p in reports}
    return TrainingResult(
        inputs.output, *(_optional_path(p) if p and str(p) in written else None
                         for p in (config.report_html, config.report_json)), summary)


@dataclass
class _Inputs:
    """What every rank reads before training: the rasters, their grid and the split."""

    names: List[str]
    device: object
    output: Path
    infos: List[RasterInfo]
    grid: ReferenceGrid
    split: Split
    classes: Tuple[LabelledClass, ...]


def _read_inputs(config: TrainingConfig, world: World, say) -> _Inputs:
    """The settings checked, the rasters inspected, the labels rasterised and split."""
    config.validate()
    if world.distributed and config.mce is not None:
        raise MamolInputError(
            "MCE training runs in one process: its batch-level Shapley factors need "
            "the whole batch in one place. Start it with 'python -m mamol train', not "
            "torchrun.")
    names = config.modality_names
    for name in names:
        if name not in NAMES:
            raise MamolInputError(
                f"Unknown modality '{name}'; use {', '.join(NAMES)}.")
    device = world.device if world.distributed else resolve_device(config.device)
    output = Path(config.output_model)
    for path in (output, config.report_html, config.report_json):
        if path is not None:
            ensure_writable_folder(Path(path).parent)

    infos = [inspect_raster(path, modality_label(name)) for name, path in config.modalities]
    grid = reference_grid(infos)
    say(f"Reference grid: {grid.width} × {grid.height} pixels of "
        f"{grid.pixel_width:g} × {grid.pixel_height:g} from the {infos[0].role} raster.")
    if isinstance(config.polygons, LabelRasterSource):
        pixels = labels_from_raster(config.polygons, grid)
    else:
        pixels = rasterise_polygons(config.polygons, grid)
    split = split_by_polygon(pixels, replace(config.split, seed=config.seed))
    classes = pixels.classes
    if len(classes) < 2:
        raise MamolInputError(
            f"The polygons hold only one class ({classes[0].name}); a classifier needs "
            "at least two.")
    return _Inputs(names, device, output, infos, grid, split, classes)


def _say_split(classes, split: Split, say, caution) -> None:
    for labelled, (tr, va, tp, vp) in zip(classes, split.class_counts):
        # a class without a name field is named "class <value>": say it once
        named = labelled.name if labelled.name == f"class {labelled.value}" else \
            f"class {labelled.value} {labelled.name}"
        say(f"  {named}: {tr} training px from {tp} polygon(s),"
            f" {va} validation px from {vp} polygon(s)")
    for text in split.warnings:
        caution(text)


def _extract(config: TrainingConfig, inputs: _Inputs, scratch: Path, reporter: Reporter,
             caution) -> Tuple[SampleSet, SampleSet]:
    """The training and validation windows, cut into ``scratch``; a class left without a
    training pixel on valid data is an error."""
    aligned = [(name, AlignedRaster(info, inputs.grid)) for (name, _), info in
               zip(config.modalities, inputs.infos)]
    try:
        train, dropped_train = extract_samples(
            aligned, inputs.split.train, config.patch_size, config.max_missing_fraction,
            scratch, "train", reporter, (2, 7))
        validation, dropped_validation = extract_samples(
            aligned, inputs.split.validation, config.patch_size,
            config.max_missing_fraction, scratch, "validation", reporter, (7, 10))
    finally:
        for _, raster in aligned:
            raster.close()
    for dropped, side in ((dropped_train, "training"), (dropped_validation, "validation")):
        if dropped:
            caution(f"{dropped} {side} pixel(s) lie where no raster has valid data "
                    "and were not used.")
    counts = np.bincount(train.class_index, minlength=len(inputs.classes))
    for labelled, count in zip(inputs.classes, counts):
        if count == 0:
            raise MamolInputError(
                f"Class {labelled.value} '{labelled.name}' has no training pixel "
                "with valid raster data. Draw its polygons where the rasters have "
                "data.")
    return train, validation


def _say_validation(config: TrainingConfig, validation: SampleSet, say, caution) -> None:
    """Say which epoch is kept when there is nothing to validate on."""
    if not len(validation) and config.split.validation_fraction == 0:
        say(f"No validation (validation fraction 0): the last epoch ({config.epochs}) is "
            "kept.")
    elif not len(validation):
        caution(f"No validation pixels (each class's polygons all went to training: the "
                f"split is by polygon, so a class needs at least 2 polygons to lend one to "
                f"validation). Nothing tells the epochs apart, so the last one "
                f"({config.epochs}) is kept, and the reports have no accuracy.")


def _header(config: TrainingConfig, inputs: _Inputs, statistics, model,
            spec_fingerprint: str, record: Dict[str, object]) -> ModelHeader:
    return ModelHeader(
        modalities=tuple(ModalityInfo(
            name=name, bands=info.bands,
            mean=tuple(float(v) for v in statistics[name].mean),
            std=tuple(float(v) for v in statistics[name].std),
            band_names=info.band_names,
            wavelengths_nm=_wavelengths(info)) for name, info in zip(inputs.names,
                                                                      inputs.infos)),
        classes=tuple(ClassInfo(c.value, c.name, c.colour) for c in inputs.classes),
        patch_size=config.patch_size, backbone=config.backbone,
        backbone_fingerprint=spec_fingerprint, adapter=model.config.to_json(),
        training=record, reference_grid=inputs.grid.to_json(),
        software=software_versions())


def _same_backbone(world: World, spec_fingerprint: str) -> None:
    """Each rank builds the frozen tower itself (nothing of it crosses the network); this
    proves they all built the same one."""
    if not world.distributed:
        return
    prints = world.gather(spec_fingerprint)
    if len(set(prints)) > 1:
        odd = [rank for rank, value in enumerate(prints) if value != prints[0]]
        raise MamolInputError(
            f"The ranks built different backbones (rank(s) {odd} differ from rank 0's "
            "fingerprint): every node must see the same backbone weights file.")


def _optional_path(path) -> Optional[Path]:
    return Path(path) if path else None


def _build_model(config: TrainingConfig, infos: Sequence[RasterInfo], class_count: int,
                 device, say=None):
    torch = torch_compat.import_torch()
    from ..core.mamol_model import AdapterConfig, MamolModel, ModalitySpec
    record = dict(AdapterConfig().to_json(), **config.adapter,
                  **({"mce": True} if config.mce else {}))
    if config.model_kind != "pixel":
        record["kind"] = config.model_kind
    adapter = AdapterConfig.from_json(record)
    visual = build_visual_tower(config.backbone, log=say)
    spec_fingerprint = fingerprint(visual)
    # The trainable initialisation is drawn from the run's seed.
    torch.manual_seed(config.seed)
    model = MamolModel([ModalitySpec(name, info.bands) for (name, _), info in
                        zip(config.modalities, infos)], class_count, visual, adapter)
    return prepare_model(model, device, config.precision, config.compile_mode), \
        spec_fingerprint


def _fit(config, model, train: SampleSet, train_patterns, validation: SampleSet,
         validation_patterns, statistics, class_count, device, reporter: Reporter, say,
         alert, world: World = SINGLE):
    """The training loop. Per step the host only enqueues work: batches are gathered on the
    device (:class:`Batches`), labels live there, the loss is summed there and read once
    per epoch, so the GPU never waits for the host between steps.

    The step's loss (pixel, tile or MCE) is chosen once here (:func:`training.steps.
    choose_step`). Under torchrun every rank draws the same epoch order from the seed and
    takes its share of each batch (:func:`training.steps.backward_batch`). Only rank 0
    validates. ``say`` and ``alert`` receive the info lines and warnings; the estimate of
    the time left (:class:`~core.pace.Pace`) goes to them, so its warning stays out of the
    report."""
    torch = torch_compat.import_torch()
    from .steps import LossScale, choose_step   # import torch, which this module imports lazily
    names = config.modality_names
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    epoch_size = epoch_length(train.class_index, class_count, config.balance_classes)
    pace = _training_pace(config, epoch_size, device, world, say, alert)
    total_steps = steps_per_epoch(epoch_size, config.batch_size) * config.epochs
    optimizer, scheduler = _optimiser(config, model, device, total_steps)
    scale = LossScale(model.compute_dtype, device)
    micro_batch = _micro_batch(config, model, device, world, say)
    train_batches = Batches(train, names, statistics, device)
    step = choose_step(config, model, train, train_patterns, train_batches, device, world,
                       say)
    validation_batches = Batches(validation, names, statistics, device)
    validation_batch = _validation_batch(config, model, device)
    history: List[Dict[str, object]] = []
    best_key, best_epoch, best_state = None, None, None
    done = 0
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        order = epoch_order(train.class_index, class_count, config.balance_classes, rng)
        model.train()
        loss_sum, done = _train_epoch(step, order, config.batch_size, micro_batch, optimizer,
                                      scheduler, world, reporter, done, total_steps, pace,
                                      scale)
        world.sum_(loss_sum)   # every rank's share of the epoch's loss
        train_loss = float(loss_sum) / max(1, order.size)   # the one wait per epoch
        require_finite_scores(math.isfinite(train_loss), model.compute_dtype)
        synchronize(device)
        train_seconds = time.perf_counter() - started
        record = {"epoch": epoch, "train_loss": train_loss,
                  "learning_rate": optimizer.param_groups[0]["lr"],
                  "validation_oa": None, "validation_kappa": None,
                  "samples": order.size, "train_seconds": train_seconds,
                  "samples_per_second": order.size / max(train_seconds, 1e-9)}
        record.update(step.epoch_record())
        if len(validation) and world.is_main:   # rank 0 alone validates
            predicted = predict(model, validation_batches, validation_patterns,
                                validation_batch, reporter)
            key = _validation_scores(record, validation.class_index, predicted,
                                     validation_patterns, class_count, names)
        else:
            key = (epoch, 0.0)  # no validation set: the last epoch is kept
        record["seconds"] = time.perf_counter() - started
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        history.append(record)
        say(_epoch_line(record, config.epochs, best_epoch == epoch))
    return history, best_epoch, best_state, _timing(history, device, model)


def _optimiser(config: TrainingConfig, model, device, total_steps: int):
    """AdamW over the trainable tensors and its warm-up/decay schedule (paper §4.1)."""
    torch = torch_compat.import_torch()
    parameters = [p for p in model.parameters() if p.requires_grad]
    # Trainable tensors and the optimiser state are fp32 whatever the tower's precision.
    # Fused on CUDA only: MPS's fused kernel ignored a step skipped for overflowing fp16
    # gradients (pytorch/pytorch#186360).
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate,
                                  weight_decay=config.weight_decay,
                                  fused=device.type == "cuda" or None)
    warmup = warmup_length(config.warmup_fraction, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup))
    return optimizer, scheduler


def _micro_batch(config: TrainingConfig, model, device, world: World, say) -> int:
    """Samples per forward/backward pass of this rank (:func:`resolve_micro_batch`)."""
    rank_batch = -(-config.batch_size // world.size)   # the largest share of a batch
    micro_batch = resolve_micro_batch(
        config.micro_batch_size, rank_batch, model.encoder.width, device,
        free_gpu_bytes(device), len(model.encoder.visual.transformer.resblocks),
        model.compute_dtype.itemsize, len(config.modality_names), config.patch_size ** 2 + 1)
    if world.distributed:
        say(f"Each batch of {config.batch_size} is shared by {world.size} processes "
            f"(at most {rank_batch} samples each).")
    if micro_batch < rank_batch:
        say(f"Each batch of {rank_batch} runs as micro-batches of {micro_batch} "
            "(gradients accumulated; the same optimiser step, less memory).")
    return micro_batch


def _training_pace(config: TrainingConfig, epoch_size: int, device, world: World, say,
                   alert) -> Pace:
    """The estimate of the time left, in samples of the training steps (rank 0 speaks; the
    ranks step together). Validation is not counted as work, but once an epoch has been
    validated its time is in the measured pace."""
    def quiet(_text: str) -> None:
        pass
    pixel = config.model_kind == ModelKind.PIXEL.value
    return Pace(epoch_size * config.epochs, "samples", device,
                say if world.is_main else quiet, alert if world.is_main else quiet,
                pixel_training_advice(config.mce is None) if pixel else None)


def _train_epoch(step, order: np.ndarray, batch_size: int, micro_batch: int, optimizer,
                 scheduler, world: World, reporter: Reporter, done: int, total_steps: int,
                 pace: Pace, scale):
    """One epoch's optimiser steps over the samples ``order``, each counted into ``pace``.
    Returns the epoch's summed loss (on the device, this rank's share) and the number of
    steps done so far. A step that ``scale`` (:class:`training.steps.LossScale`) skips
    leaves the schedule where it is."""
    from .steps import backward_batch
    torch = torch_compat.import_torch()
    step.begin_epoch()
    loss_sum = torch.zeros((), dtype=torch.float32, device=step.device)
    for start in range(0, order.size, batch_size):
        reporter.check()
        index = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        backward_batch(step, index, micro_batch, world, loss_sum, reporter.check, scale)
        if scale.step(optimizer):
            scheduler.step()
        done += 1
        if done == 1:
            world.fault("step")
        pace.advance(index.size)
        reporter.report(10 + 85 * done / total_steps)
    return loss_sum, done


def _validation_scores(record: Dict[str, object], reference: np.ndarray,
                       predicted: np.ndarray, patterns: np.ndarray, class_count: int,
                       names: Sequence[str]) -> Tuple[float, float]:
    """An epoch's validation OA, kappa and per-pattern scores into ``record``; returns what
    ranks the epochs (OA, then kappa)."""
    matrix = metrics.confusion_matrix(reference, predicted, class_count)
    record["validation_oa"] = _finite(metrics.overall_accuracy(matrix))
    record["validation_kappa"] = _finite(metrics.cohen_kappa(matrix))
    record["validation_per_pattern"] = pattern_metrics(reference, predicted, patterns,
                                                       class_count, names)
    return (record["validation_oa"] or 0.0, record["validation_kappa"] or 0.0)


def _timing(history: Sequence[Dict[str, object]], device, model) -> Dict[str, object]:
    seen = sum(r["samples"] for r in history)
    busy = sum(r["train_seconds"] for r in history)
    return {"device": str(device), "precision": dtype_name(model.compute_dtype),
            "training_seconds": busy, "train_samples_seen": seen,
            "samples_per_second": seen / max(busy, 1e-9),
            "steady_samples_per_second": steady_rate(history),
            "validation_seconds": sum(r["seconds"] - r["train_seconds"] for r in history)}


def steady_rate(history: Sequence[Dict[str, object]]) -> Optional[float]:
    """Training samples/s after the first epoch (which pays for warm-up: allocations,
    kernel selection, compilation); None with a single epoch."""
    steady = history[1:]
    seconds = sum(r["train_seconds"] for r in steady)
    if not steady or seconds <= 0:
        return None
    return sum(r["samples"] for r in steady) / seconds


def _validation_batch(config: TrainingConfig, model, device) -> int:
    """Samples per validation call: validation is inference, so on a GPU as many as free
    memory allows; on the CPU twice the training batch."""
    if device.type in GPU_TYPES:
        return model_inference_batch(model, device, config.patch_size)
    return 2 * config.batch_size


def _epoch_line(record: Dict[str, object], epochs: int, best: bool) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, "
            f"lr {record['learning_rate']:.2e}, {record['samples_per_second']:.0f} samples/s")
    if record["validation_oa"] is None:
        return text   # nothing to compare: the last epoch is kept, as the log said before
    kappa = record["validation_kappa"]
    text += (f", validation OA {100 * record['validation_oa']:.2f} % kappa "
             f"{'—' if kappa is None else format(kappa, '.4f')}")
    return text + (" (best so far)" if best else "")


def _final_evaluation(config, model, validation: SampleSet, validation_patterns, statistics,
                      classes, device, reporter) -> Dict[str, object]:
    """The kept model on the validation set: confusion matrix, per class, per real pattern,
    and with modalities removed (every non-empty subset)."""
    names = config.modality_names
    class_count = len(classes)
    if not len(validation):
        return {}
    batches = Batches(validation, names, statistics, device)
    batch = _validation_batch(config, model, device)
    predicted = predict(model, batches, validation_patterns, batch, reporter)
    matrix = metrics.confusion_matrix(validation.class_index, predicted, class_count)
    result = metrics.summarise(matrix, [c.name for c in classes])
    result["per_pattern"] = pattern_metrics(validation.class_index, predicted,
                                            validation_patterns, class_count, names,
                                            [c.name for c in classes])
    forced = []
    for subset in range(2 ** len(names) - 1, 0, -1):
        patterns = validation_patterns & subset
        usable = np.flatnonzero(patterns)
        if usable.size == 0:
            continue
        guess = predict(model, batches, patterns, batch, reporter, samples=usable)
        sub_matrix = metrics.confusion_matrix(validation.class_index[usable], guess,
                                              class_count)
        forced.append({"pattern": pattern_name(subset, names), "code": subset,
                       "samples": int(usable.size),
                       "oa": _finite(metrics.overall_accuracy(sub_matrix)),
                       "kappa": _finite(metrics.cohen_kappa(sub_matrix)),
                       "reference_classes": metrics.reference_class_count(sub_matrix)})
    result["forced_patterns"] = forced
    return result


def _write_outputs(model, header: ModelHeader, summary: Dict[str, object], output: Path,
                   config: TrainingConfig, caution: Callable[[str], None]) -> List[Path]:
    """The model first, atomically and after a free-space check: it is the run's work. Then
    the reports, both or neither; a report that cannot be written (a full disk, a folder
    gone) is a warning, never a lost model. Returns the reports written."""
    tensors_bytes = sum(t.numel() * 4 for t in model.trainable_state_dict().values())
    with staged_files([output], tensors_bytes) as staged:
        save_model(staged[output], model.cpu(), header)
    html = Path(config.report_html) if config.report_html else None
    json_path = Path(config.report_json) if config.report_json else None
    reports = [p for p in (html, json_path) if p is not None]
    if not reports:
        return []
    try:
        with staged_files(reports) as staged, runs.scratch_folder("report-") as scratch:
            write_report(summary, staged[html] if html else scratch / "report.html",
                         staged[json_path] if json_path else scratch / "report.json")
    except (OSError, RuntimeError, MamolInputError) as exc:
        caution(f"The model was saved to '{output}', but the training report could not be "
                f"written: {_one_line(exc)}")
        return []
    return reports


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = ["TrainingConfig", "TrainingResult", "train_model", "resolve_device",
           "SimulationMode"]
