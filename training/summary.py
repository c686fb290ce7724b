"""What a training run records (:func:`training.trainer.train_model`): the training
summary stored in the model file and the content of the HTML and JSON reports
(rendered by :mod:`training.report`). Plain dictionaries built from the run's settings
and results; nothing here runs the model.
"""
import os
from typing import Dict

from .missing import pattern_counts


def training_record(config, train, validation, train_patterns, validation_patterns, history,
                    best_epoch, evaluation, names) -> Dict[str, object]:
    """The training summary stored in the model file (no timings or host details, so that
    seeded runs write identical files)."""
    best = history[best_epoch - 1] if best_epoch else {}
    record = {
        "rasters": {name: os.path.basename(path) for name, path in config.modalities},
        "polygons": os.path.basename(config.polygons.path),
        "class_field": getattr(config.polygons, "class_field", None),
        "train_samples": len(train), "validation_samples": len(validation),
        "epochs": config.epochs, "best_epoch": best_epoch,
        "batch_size": config.batch_size, "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay, "warmup_fraction": config.warmup_fraction,
        "balance_classes": config.balance_classes, "seed": config.seed,
        "max_missing_fraction": config.max_missing_fraction,
        "missing_simulation": config.simulation.to_json(),
        "validation_missing_simulation": config.validation_simulation.to_json(),
        "train_patterns": pattern_counts(train_patterns, names),
        "validation_patterns": pattern_counts(validation_patterns, names)
        if len(validation) else {},
        "validation_oa": best.get("validation_oa"),
        "validation_kappa": best.get("validation_kappa"),
        "validation_per_pattern": evaluation.get("per_pattern", []),
    }
    if config.mce is not None:   # plain MaMOL files keep exactly their old record
        record["mce"] = config.mce.to_json()
    if config.model_kind != "pixel":   # likewise for the model kind
        record["model_kind"] = config.model_kind
    return record


def training_summary(config, infos, classes, split, train_patterns, validation_patterns,
                     history, best_epoch, evaluation, timing, device, warnings,
                     names) -> Dict[str, object]:
    """The report's content (see :mod:`training.report`)."""
    settings = {
        "backbone": config.backbone.describe(), "patch size": config.patch_size,
        "epochs": config.epochs, "batch size": config.batch_size,
        "micro-batch size": config.micro_batch_size or "automatic",
        "learning rate": config.learning_rate, "weight decay": config.weight_decay,
        "warm-up fraction": config.warmup_fraction,
        "validation fraction": config.split.validation_fraction,
        "max training samples per class": config.split.max_train_per_class,
        "max validation samples per class": config.split.max_validation_per_class,
        "balance classes": config.balance_classes, "seed": config.seed,
        "max missing fraction of a window": config.max_missing_fraction,
        "validation missing simulation": config.validation_simulation.describe(names),
        "device": str(device),
    }
    if config.adapter:
        settings.update({f"adapter {k}": v for k, v in config.adapter.items()})
    settings["training mode"] = "MaMOL + MCE" if config.mce is not None else "MaMOL"
    if config.model_kind != "pixel":
        settings["model kind"] = config.model_kind
    if config.mce is not None:
        settings.update({"MCE factors": config.mce.factors,
                         "MCE λ_aux": config.mce.auxiliary, "MCE λ_sub": config.mce.subsets,
                         "MCE λ_rec": config.mce.completion})
    validation = None
    if evaluation:
        validation = {k: evaluation[k] for k in ("samples", "oa", "kappa", "confusion_matrix",
                                                 "per_class", "per_pattern")}
    return {
        "title": "MaMOL training report", "model_file": str(config.output_model),
        "created_by": "mamol training",
        "modalities": [{"name": name, "bands": info.bands, "path": info.path}
                       for name, info in zip(names, infos)],
        "classes": [{"value": c.value, "name": c.name, "colour": c.colour,
                     "train_pixels": counts[0], "validation_pixels": counts[1],
                     "train_polygons": counts[2], "validation_polygons": counts[3]}
                    for c, counts in zip(classes, split.class_counts)],
        "config": settings,
        "missing_simulation": {
            "description": config.simulation.describe(names),
            "train_patterns": pattern_counts(train_patterns, names),
            "validation_patterns": pattern_counts(validation_patterns, names)
            if validation_patterns.size else {}},
        "epochs": [{k: v for k, v in record.items() if k != "validation_per_pattern"}
                   for record in history],
        "best_epoch": best_epoch,
        "validation": validation,
        "forced_patterns": evaluation.get("forced_patterns", []) if evaluation else [],
        "timing": timing,
        "warnings": warnings,
    }


__all__ = ["training_record", "training_summary"]
