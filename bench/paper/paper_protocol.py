"""The paper's evaluation protocol (MaMOL §4, Tables 1, 3 and 5) on any dataset given as
rasters plus disjoint training and test label maps; prints and writes markdown tables.

* Table 1 — two modalities (HS + one other): missing rate η ∈ {50, 70, 90} % × the three
  train/test availability rows of HS / other: (100, 100−η) "missing other",
  (100−η, 100) "missing HS", (100−η/2, 100−η/2) "missing both". The same availability is
  simulated on the training and (with another seed) on the test samples, as in the paper.
* Table 3 — three modalities (HS / SAR / LiDAR) at a 75 % overall missing rate:
  availability rows 75/75/75, 100/75/50, 50/100/75, 75/50/100.
* Table 5 — expert ablations (none = baseline, no_dynamic, no_static,
  no_modality_specific, full = MaMOL) × η on the Table 1 pair, "missing both" rows.

Each run trains a model on the training map (no validation split: every training pixel is
used and the last epoch is kept) and evaluates it on the test map with
``training.evaluation.evaluate``. Everything a run needs — settings, seeds, dataset files —
is recorded in ``protocol.json`` next to ``results.md``; each run's model, metrics and
patterns are kept under ``runs/`` and a rerun with the same output folder skips runs that
are already done.

``--model-kind tile`` trains every run as a tile model (issue 17: one encoder pass labels a
whole P × P tile) instead of the paper's per-pixel kind; its run keys end in ``_tile`` and it
writes ``results_tile.md`` / ``protocol_tile.json``, so both kinds share one output folder.
``--seeds S1 S2 …`` repeats each row of Tables 1 and 5 once per training seed (test
simulation seed + 1) and shows mean ± standard deviation; without it they run once with
``--seed`` (the imbalance table always uses the seeds, 0 1 2 by default).

Settings: ``quick`` (tiny seeded-random ViT, P = 7, few epochs, capped samples per class;
minutes on a CPU) and ``full`` (ViT-B-16 with pretrained CLIP weights, P = 14, the paper's
optimiser: AdamW lr 2e-3, weight decay 2e-2, 10 % warm-up then linear decay, batch 128;
every training and test pixel; for a GPU).

Usage:
    .venv/bin/python bench/paper/paper_protocol.py --dataset sample --settings quick --out /tmp/pp
    .venv/bin/python bench/paper/paper_protocol.py --dataset trento --settings quick --out /tmp/pt
    .venv/bin/python bench/paper/paper_protocol.py --dataset augsburg --source ~/data/Augsburg \\
        --settings full --device cuda --out runs/augsburg
"""
import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]   # protocol_datasets; bench/harness
import harness  # noqa: E402,F401 - puts the plugin on sys.path

from mamol.core.backbone import TINY_ARCH, BackboneSpec, WeightsSource  # noqa: E402
from mamol.core.errors import MamolInputError  # noqa: E402
from mamol.core.modalities import modality_label  # noqa: E402
from mamol.core.model_file import read_header, software_versions  # noqa: E402
from mamol.training.evaluation import (EvaluationConfig, availability_simulation,  # noqa: E402
                                       evaluate)
from mamol.training.labels import SplitConfig  # noqa: E402
from mamol.training.mce import MceConfig  # noqa: E402
from mamol.training.missing import (Table1Case,  # noqa: E402
                                    table1_availability)
from mamol.training.trainer import TrainingConfig, train_model  # noqa: E402

import protocol_datasets  # noqa: E402

LOG = logging.getLogger("paper_protocol")

TABLE1_CASES = (Table1Case.MISSING_OTHER, Table1Case.MISSING_HS, Table1Case.MISSING_BOTH)
TABLE3_ROWS = ((0.75, 0.75, 0.75), (1.0, 0.75, 0.5), (0.5, 1.0, 0.75), (0.75, 0.5, 1.0))
ABLATIONS = (("none", "Baseline (frozen backbone)"), ("no_dynamic", "w/o dynamic experts"),
             ("no_static", "w/o static experts"),
             ("no_modality_specific", "w/o modality-specific experts"),
             ("full", "MaMOL (full)"))
DEFAULT_OTHER = {"sample": "lidar", "trento": "lidar", "houston2013": "lidar",
                 "trento-original": "lidar", "augsburg": "sar"}


@dataclasses.dataclass(frozen=True)
class Settings:
    arch: str
    weights: str            # "random", "pretrained:<tag>" or "checkpoint:<path>"
    patch_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    train_per_class: int    # 0 = every training pixel
    test_per_class: int     # 0 = every test pixel
    device: str

    def backbone(self) -> BackboneSpec:
        if self.weights == "random":
            return BackboneSpec(arch=self.arch, source=WeightsSource.RANDOM, seed=0)
        kind, _, value = self.weights.partition(":")
        if kind == "pretrained":
            return BackboneSpec(arch=self.arch, source=WeightsSource.PRETRAINED,
                                pretrained_tag=value)
        if kind == "checkpoint":
            return BackboneSpec(arch=self.arch, source=WeightsSource.CHECKPOINT,
                                checkpoint_path=value)
        raise MamolInputError(f"Weights must be random, pretrained:TAG or checkpoint:PATH, "
                              f"got {self.weights!r}.")


PRESETS = {
    "quick": Settings(TINY_ARCH, "random", 7, 6, 128, 2e-3, 2e-2, 0.1, 200, 500, "cpu"),
    "full": Settings("ViT-B-16", "pretrained:openai", 14, 20, 128, 2e-3, 2e-2, 0.1, 0, 0,
                     "auto"),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training + evaluation: modalities, availability (train = test) and experts."""

    modalities: Tuple[str, ...]
    availability: Tuple[float, ...]   # per modality in ``modalities``
    experts: str = "full"
    independent: bool = False         # each modality dropped on its own (imbalance table)
    mce: bool = False                 # MaMOL + MCE (imbalance table)
    seed: Optional[int] = None        # None: the command's --seed
    kind: str = "pixel"               # model kind: pixel (the paper's) or tile (issue 17)

    @property
    def key(self) -> str:
        rates = "-".join(f"{m}{round(100 * a)}" for m, a in zip(self.modalities,
                                                                  self.availability))
        key = f"{self.experts}_{rates}"
        if self.independent:
            key += "_independent"
        if self.mce:
            key += "_mce"
        if self.seed is not None:
            key += f"_seed{self.seed}"
        if self.kind != "pixel":
            key += f"_{self.kind}"
        return key


#: The imbalance table's availabilities (issue 16): three modalities, and HS against the rest.
IMBALANCE_THREE = ((0.2, 0.6, 1.0), (0.1, 1.0, 1.0))
IMBALANCE_PAIR = ((0.2, 1.0), (0.1, 1.0))


def planned_runs(tables: Sequence[int], names: Sequence[str], other: str,
                 rates: Sequence[float], seeds: Sequence[int] = (0, 1, 2),
                 kind: str = "pixel", table_seeds: Optional[Sequence[int]] = None
                 ) -> Dict[str, List[Tuple[str, Run]]]:
    """The runs of each table, as (row label, run); a run shared by two tables runs once.

    ``seeds`` are the imbalance table's training seeds; ``table_seeds`` repeat each row of
    Tables 1 and 5 once per seed (None: one run with the command's --seed, as before).
    ``kind`` is the model kind of every run.
    """
    if kind not in ("pixel", "tile"):
        raise MamolInputError(f"The model kind must be pixel or tile, got {kind!r}.")
    if 6 in tables and kind != "pixel":
        raise MamolInputError("The imbalance table (6) compares MaMOL with MaMOL + MCE, which "
                              "is available for the pixel model kind only.")
    plan: Dict[str, List[Tuple[str, Run]]] = {}
    pair = ("hs", other)
    repeats: List[Optional[int]] = list(table_seeds) if table_seeds else [None]
    if 1 in tables or 5 in tables:
        for needed in pair:
            if needed not in names:
                raise MamolInputError(f"Tables 1 and 5 need HS and {other}; the dataset has "
                                      f"{', '.join(names)}.")
    if 1 in tables:
        plan["1"] = [(f"{eta}|{case.value}", Run(pair, table1_availability(eta, case),
                                                  seed=seed, kind=kind))
                     for eta in rates for case in TABLE1_CASES for seed in repeats]
    if 3 in tables:
        if tuple(names) != ("hs", "sar", "lidar"):
            raise MamolInputError("Table 3 needs three modalities (HS, SAR, LiDAR); the "
                                  f"dataset has {', '.join(names)}.")
        plan["3"] = [("|".join(map(str, row)), Run(("hs", "sar", "lidar"), row, kind=kind))
                     for row in TABLE3_ROWS]
    if 5 in tables:
        plan["5"] = [(f"{experts}|{eta}", Run(pair, table1_availability(
            eta, Table1Case.MISSING_BOTH), experts, seed=seed, kind=kind))
            for experts, _ in ABLATIONS for eta in rates for seed in repeats]
    if 6 in tables:
        three = tuple(names) == ("hs", "sar", "lidar")
        modalities = ("hs", "sar", "lidar") if three else pair
        rows = IMBALANCE_THREE if three else IMBALANCE_PAIR
        plan["6"] = [(f"{'|'.join(map(str, row))}|{'mce' if mce else 'mamol'}|{seed}",
                      Run(modalities, row, independent=True, mce=mce, seed=seed))
                     for row in rows for mce in (False, True) for seed in seeds]
    return plan


def run_once(run: Run, dataset: protocol_datasets.Dataset, settings: Settings, seed: int,
             folder: Path) -> Dict[str, object]:
    """Train and evaluate one run (or read its earlier result)."""
    seed = seed if run.seed is None else run.seed
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rasters = dict(dataset.modalities)
    modalities = tuple((name, rasters[name]) for name in run.modalities)
    training_simulation = availability_simulation(run.modalities, dict(
        zip(run.modalities, run.availability)), seed, run.independent)
    started = time.perf_counter()
    trained = train_model(TrainingConfig(
        modalities=modalities, polygons=dataset.train,
        output_model=str(folder / "model.mamol"), backbone=settings.backbone(),
        patch_size=settings.patch_size, adapter={"experts": run.experts},
        epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        warmup_fraction=settings.warmup_fraction,
        split=SplitConfig(validation_fraction=0.0, max_train_per_class=settings.train_per_class,
                          min_pixels_per_class=1, seed=seed),
        simulation=training_simulation, device=settings.device,
        mce=MceConfig() if run.mce else None, seed=seed, model_kind=run.kind),
        log=lambda line: LOG.debug(line))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluated = evaluate(EvaluationConfig(
        model_path=str(trained.model_path), rasters=modalities, labels=dataset.test,
        report_json=str(folder / "evaluation.json"),
        report_html=str(folder / "evaluation.html"),
        availability=dict(zip(run.modalities, run.availability)), simulation_seed=seed + 1,
        independent=run.independent,
        max_samples_per_class=settings.test_per_class, device=settings.device, seed=seed),
        log=lambda line: LOG.debug(line))
    evaluation = evaluated.summary["evaluation"]
    record = {
        "run": dataclasses.asdict(run), "key": run.key,
        "oa": evaluation["oa"], "kappa": evaluation["kappa"],
        "test_samples": evaluation["samples"],
        "per_pattern": [{k: r[k] for k in ("pattern", "samples", "oa", "kappa")}
                        for r in evaluation["per_pattern"]],
        "train_samples": sum(c["train_pixels"] for c in trained.summary["classes"]),
        "train_patterns": trained.summary["missing_simulation"]["train_patterns"],
        "test_patterns": evaluated.summary["missing_patterns"]["evaluated"],
        "train_seconds": round(train_seconds, 1),
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "train_seed": seed, "test_seed": seed + 1,
        "model_kind": read_header(trained.model_path).model_kind,  # as the model file says
    }
    (folder / "model.mamol").unlink()  # models are not kept: reruns come from the seed
    result_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def _cell(record: Optional[Dict[str, object]]) -> str:
    if not record or record.get("oa") is None:
        return "—"
    kappa = "—" if record.get("kappa") is None else f"{100 * record['kappa']:.2f}"
    return f"{100 * record['oa']:.2f} / {kappa}"


def _pct(value: float) -> str:
    return f"{round(100 * value)}%"


def _rows(rows: List[Tuple[str, Run]]) -> List[Tuple[str, List[Run]]]:
    """The table's rows in plan order, each with its runs (one per seed)."""
    grouped: Dict[str, List[Run]] = {}
    for label, run in rows:
        grouped.setdefault(label, []).append(run)
    return list(grouped.items())


def _done(runs: Sequence[Run], results) -> Optional[List[Dict[str, object]]]:
    """The records of every run of a row, or None until all of them are done."""
    records = [results.get(run.key) for run in runs]
    if any(not r or r.get("oa") is None for r in records):
        return None
    return records


def _seeded_cell(runs: Sequence[Run], results) -> str:
    """OA % / κ × 100 of a row: a single run as before, several seeds as mean ± std."""
    if len(runs) == 1:
        return _cell(results.get(runs[0].key))
    records = _done(runs, results)
    if records is None:
        return "—"
    kappas = [r["kappa"] for r in records if r.get("kappa") is not None]
    return (f"{_spread([r['oa'] for r in records])} / "
            f"{_spread(kappas) if len(kappas) == len(records) else '—'}")


def _labels(rows: List[Tuple[str, Run]]) -> Tuple[str, str]:
    """(method column, title note) of a table: the model kind and the seeds, where they are
    not the defaults (per pixel, one seed) whose tables stay as they were."""
    runs = [run for _, run in rows]
    kind = runs[0].kind
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    method = "MaMOL" if kind == "pixel" else f"MaMOL ({kind})"
    notes = [] if kind == "pixel" else [f"{kind} model kind"]
    if seeds:
        notes.append(f"mean ± std over seeds {', '.join(map(str, seeds))}")
    return method, "".join(f"; {note}" for note in notes)


def markdown(plan: Dict[str, List[Tuple[str, Run]]], results: Dict[str, Dict[str, object]],
             other: str) -> str:
    """The tables, in the paper's layout."""
    other = modality_label(other)
    parts = []
    if "1" in plan:
        method, note = _labels(plan["1"])
        lines = ["### Table 1 — missing rate × train/test availability "
                 f"(HS + {other}; OA % / κ × 100{note})", "",
                 f"| Missing rate | Train/Test HS | Train/Test {other} | Case | {method} |",
                 "|---:|---:|---:|---|---:|"]
        for label, runs in _rows(plan["1"]):
            eta, case = label.split("|")
            lines.append(f"| {_pct(float(eta))} | {_pct(runs[0].availability[0])} | "
                         f"{_pct(runs[0].availability[1])} | {case} | "
                         f"{_seeded_cell(runs, results)} |")
        parts.append("\n".join(lines))
    if "3" in plan:
        method, note = _labels(plan["3"])
        lines = ["### Table 3 — three modalities, 75 % overall missing rate "
                 f"(OA % / κ × 100{note})", "",
                 f"| Missing rate | HS | SAR | LiDAR | {method} |", "|---:|---:|---:|---:|---:|"]
        for _, run in plan["3"]:
            hs, sar, lidar = run.availability
            lines.append(f"| 75% | {_pct(hs)} | {_pct(sar)} | {_pct(lidar)} | "
                         f"{_cell(results.get(run.key))} |")
        parts.append("\n".join(lines))
    if "5" in plan:
        rates = sorted({float(label.split("|")[1]) for label, _ in plan["5"]})
        _, note = _labels(plan["5"])
        rows = dict(_rows(plan["5"]))
        lines = [f"### Table 5 — expert ablations, missing both (HS + {other}; OA %{note})",
                 "", "| Method | " + " | ".join(_pct(r) for r in rates) + " | Avg. |",
                 "|---|" + "---:|" * (len(rates) + 1)]
        for experts, title in ABLATIONS:
            values, cells = [], []
            for eta in rates:
                records = _done(rows[f"{experts}|{eta}"], results)
                oas = [r["oa"] for r in records] if records else []
                values.append(100 * sum(oas) / len(oas) if oas else None)
                cells.append(_spread(oas) if len(oas) > 1 else
                             "—" if values[-1] is None else f"{values[-1]:.2f}")
            done = [v for v in values if v is not None]
            average = f"{sum(done) / len(done):.2f}" if len(done) == len(values) else "—"
            lines.append(f"| {title} (`{experts}`) | " + " | ".join(cells) +
                         f" | {average} |")
        parts.append("\n".join(lines))
    if "6" in plan:
        parts.append(_imbalance_markdown(plan["6"], results))
    return "\n\n".join(parts) + "\n"


def _spread(values: Sequence[float]) -> str:
    """mean ± sample standard deviation, in percent; "—" when nothing is there."""
    if not values:
        return "—"
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _imbalance_markdown(rows: List[Tuple[str, Run]], results) -> str:
    """MaMOL against MaMOL + MCE per availability row: OA and κ as mean ± standard deviation
    over the seeds, OA per missing pattern, and whether the gap exceeds the spread."""
    names = rows[0][1].modalities
    lines = ["### Imbalanced availability — MaMOL vs MaMOL + MCE (independent per-modality "
             "availability, train = test; OA % / κ × 100, mean ± std over seeds)", "",
             "| " + " | ".join(modality_label(n) for n in names) +
             " | Method | Seeds | OA | κ | OA per pattern |",
             "|" + "---:|" * len(names) + "---|---:|---:|---:|---|"]
    groups: Dict[Tuple, List[Dict[str, object]]] = {}
    for _, run in rows:
        groups.setdefault((run.availability, run.mce), [])
        record = results.get(run.key)
        if record and record.get("oa") is not None:
            groups[(run.availability, run.mce)].append(record)
    verdicts = []
    for (availability, mce), records in groups.items():
        patterns: Dict[str, List[float]] = {}
        for record in records:
            for entry in record["per_pattern"]:
                if entry.get("oa") is not None:
                    patterns.setdefault(entry["pattern"], []).append(entry["oa"])
        per_pattern = ", ".join(f"{p} {_spread(v)}" for p, v in sorted(patterns.items()))
        lines.append("| " + " | ".join(_pct(a) for a in availability) +
                     f" | {'MaMOL + MCE' if mce else 'MaMOL'} | {len(records)} | "
                     f"{_spread([r['oa'] for r in records])} | "
                     f"{_spread([r['kappa'] for r in records if r.get('kappa') is not None])}"
                     f" | {per_pattern or '—'} |")
        if mce and groups.get((availability, False)):
            plain = [r["oa"] for r in groups[(availability, False)]]
            ours = [r["oa"] for r in records]
            if len(plain) > 1 and len(ours) > 1:
                gap = sum(ours) / len(ours) - sum(plain) / len(plain)
                spread = max(max(plain) - min(plain), max(ours) - min(ours))
                verdicts.append(
                    f"- {' / '.join(_pct(a) for a in availability)}: MCE − MaMOL = "
                    f"{100 * gap:+.2f} OA points; the larger seed range is "
                    f"{100 * spread:.2f} points, so the gap "
                    f"{'exceeds' if abs(gap) > spread else 'does not exceed'} the spread.")
    return "\n".join(lines + [""] + verdicts)


def prepare_dataset(args, folder: Path) -> protocol_datasets.Dataset:
    if args.dataset == "sample":
        return protocol_datasets.sample_dataset(folder, args.scene_size, args.scene_seed)
    if args.dataset == "trento":
        return protocol_datasets.trento_dataset(folder, Path(args.source or
                                                             protocol_datasets.SHARED_TRENTO))
    if not args.source:
        raise MamolInputError(f"--source FOLDER is needed for {args.dataset}: the folder "
                              "with the original files.")
    return protocol_datasets.original_dataset(args.dataset, Path(args.source), folder)


def settings_from(args) -> Settings:
    settings = PRESETS[args.settings]
    changes = {name: getattr(args, name) for name in
               ("arch", "weights", "patch_size", "epochs", "train_per_class",
                "test_per_class", "device") if getattr(args, name) is not None}
    return dataclasses.replace(settings, **changes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True,
                        choices=["sample", "trento", *protocol_datasets.LAYOUTS])
    parser.add_argument("--source", help="folder of the original files (houston2013, "
                        "trento-original, augsburg) or the Trento npz (trento)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--settings", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--tables", type=int, nargs="+", default=None,
                        help="which of 1 3 5 6 (6: the imbalance table, MaMOL vs MaMOL + "
                             "MCE; default: every paper table the dataset allows)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="training seeds: the imbalance table's (default 0 1 2), and, "
                             "when given, Tables 1 and 5 run each row once per seed and show "
                             "mean ± std (default: one run with --seed)")
    parser.add_argument("--model-kind", choices=["pixel", "tile"], default="pixel",
                        help="model kind of every run: pixel (one window per pixel, the "
                             "paper's) or tile (one pass labels a P x P tile); tile runs' "
                             "keys end in _tile, so both kinds can share one --out folder, "
                             "and a tile run writes results_tile.md and protocol_tile.json")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--other", help="the non-HS modality of Tables 1 and 5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--scene-seed", type=int, default=42)
    for name, kind in (("arch", str), ("weights", str), ("patch-size", int), ("epochs", int),
                       ("train-per-class", int), ("test-per-class", int), ("device", str)):
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help="override the preset's value")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    for name in ("mamol",):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return _run(args)
    except MamolInputError as exc:
        LOG.error("error: %s", exc)
        return 2


def _run(args) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_from(args)
    dataset = prepare_dataset(args, out / "data")
    names = dataset.names()
    other = args.other or DEFAULT_OTHER.get(args.dataset, names[-1])
    if other not in names or other == "hs":
        raise MamolInputError(f"--other must be one of the dataset's non-HS modalities "
                              f"({', '.join(n for n in names if n != 'hs')}), got {other}.")
    tables = args.tables or ([1, 3, 5] if tuple(names) == ("hs", "sar", "lidar") else [1, 5])
    plan = planned_runs(tables, names, other, args.rates, args.seeds or (0, 1, 2),
                        kind=args.model_kind, table_seeds=args.seeds)
    runs = {run.key: run for rows in plan.values() for _, run in rows}
    LOG.info("%s: %d runs (%s settings: %s, P=%d, %d epochs, %s model kind) into %s",
             dataset.name, len(runs), args.settings, settings.arch, settings.patch_size,
             settings.epochs, args.model_kind, out)
    suffix = "" if args.model_kind == "pixel" else f"_{args.model_kind}"
    protocol = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dataset": dataset.describe(), "settings_preset": args.settings,
        "settings": dataclasses.asdict(settings), "seed": args.seed,
        "seeds": {"training (split, simulation, initialisation)": args.seed,
                  "test simulation": args.seed + 1, "backbone (random weights)": 0},
        "model_kind": args.model_kind,
        "table_seeds": {"1 and 5": args.seeds, "6": list(args.seeds or (0, 1, 2))},
        "tables": tables, "rates": args.rates, "other": other,
        "plan": {table: [{"row": label, "key": run.key} for label, run in rows]
                 for table, rows in plan.items()},
        "software": software_versions(), "machine": {"python": platform.python_version(),
                                                     "cpus": os.cpu_count()},
    }
    (out / f"protocol{suffix}.json").write_text(json.dumps(protocol, indent=2) + "\n")
    results: Dict[str, Dict[str, object]] = {}
    started = time.perf_counter()
    for number, (key, run) in enumerate(runs.items(), 1):
        record = run_once(run, dataset, settings, args.seed, out / "runs" / key)
        results[key] = record
        LOG.info("[%d/%d] %s: OA %.2f %%, kappa %.4f (train %.0f s, test %.0f s)", number,
                 len(runs), key, 100 * record["oa"], record["kappa"],
                 record["train_seconds"], record["evaluation_seconds"])
        (out / f"results{suffix}.md").write_text(_document(dataset, settings, args, plan,
                                                           results, other))
    LOG.info("done in %.0f s", time.perf_counter() - started)
    print(markdown(plan, results, other))
    return 0


def _document(dataset, settings, args, plan, results, other) -> str:
    header = [f"# Paper protocol on `{dataset.name}` ({args.settings} settings)", "",
              f"Backbone {settings.arch} ({settings.weights} weights), P = "
              f"{settings.patch_size}, {settings.epochs} epochs, batch {settings.batch_size}, "
              f"AdamW lr {settings.learning_rate:g} wd {settings.weight_decay:g}, warm-up "
              f"{settings.warmup_fraction:.0%}; training pixels per class: "
              f"{settings.train_per_class or 'all'}, test pixels per class: "
              f"{settings.test_per_class or 'all'}; seed {args.seed} (test simulation "
              f"seed {args.seed + 1}); device {settings.device}" +
              ("." if args.model_kind == "pixel" else
               f"; {args.model_kind} model kind (issue 17)."), ""]
    header += [f"- {note}" for note in dataset.notes] + [""]
    return "\n".join(header) + markdown(plan, results, other)


if __name__ == "__main__":
    sys.exit(main())
