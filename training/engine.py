"""The engine: ``python -m mamol {scene,train,evaluate,classify}``.

One command line for every front end. Each subcommand makes the same core call as its
Processing algorithm; the algorithms of ``mamol:trainmodel``, ``mamol:classify`` and
``mamol:evaluate`` run this command in the model environment as a child process, so that
PyTorch never loads into QGIS's own process (DESIGN §1). It lives in ``training/`` because
it is the top of the QGIS-free stack: it imports ``core`` and ``training`` and nothing of
QGIS.

Progress goes to stderr, in one of four forms (``--progress``):

* ``bar``: a progress bar on the current line, log lines and warnings above it;
* ``plain``: log lines and warnings only (the default when stderr is not a terminal);
* ``json``: one JSON object per line, for a calling program (the Processing algorithms):
  ``{"event": "progress", "percent": 12.5, "stage": "train"}``,
  ``{"event": "log", "text": ...}``, ``{"event": "warning", "text": ...}``,
  ``{"event": "staging", "path": ...}`` (a run folder or output lock about to be made,
  which the caller removes if the engine dies: :mod:`core.runs`),
  ``{"event": "result", "command": ..., "result": {...}}`` and, on failure,
  ``{"event": "error", "kind": "input" | "cancelled" | "internal", "message": ...}``;
* ``none``: errors only.

The result is also printed on stdout (as JSON with ``--progress json``, as text otherwise).

Under ``torchrun`` (several processes), ``train`` and ``classify`` join one process group
and share the work (:mod:`core.distributed`; README "Beyond one machine"): only rank 0
shows progress and prints the result; every rank prints its errors as ``error: rank R: …``
(JSON errors carry ``"rank"``), and a failure on any rank fails every rank. ``--cog``
writes classification outputs as Cloud-Optimized GeoTIFFs.

Exit status: 0 on success; 2 for bad input (a bad argument included), with a one-line
message that says what to fix (the traceback only with ``--debug``); 1 for an internal error;
130 when interrupted (Ctrl-C) and 143 on SIGTERM, SIGHUP or the loss of the calling program —
all cancel the run, and nothing is written.

A calling program that must not leave an engine behind starts it with
``MAMOL_LIFELINE=stdin`` and a pipe as its stdin that it never writes to: when the caller
dies, however it dies (SIGKILL included), the pipe closes and the engine cancels itself; if
it has not stopped :data:`LIFELINE_GRACE_SECONDS` later it removes what it staged and exits.
That works alike on Linux, macOS and Windows (no ``PR_SET_PDEATHSIG``, no job object needed).
Every output path is locked for the whole run (:mod:`core.runs`): a second run on the same
outputs stops at once and names the first.
"""
import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

from ..core.distributed import PeerFailed, finish, launched_world_size, start
from ..core.errors import Cancelled, MamolInputError

PROGRESS_MODES = ("auto", "bar", "plain", "json", "none")
#: Seconds a run may take to stop after its caller is gone before it exits at once.
LIFELINE_GRACE_SECONDS = 20.0
#: File name endings of the GeoTIFF outputs of ``classify``.
GEOTIFF_SUFFIXES = (".tif", ".tiff")
EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


def program_name() -> str:
    """How the user started the engine: ``mamol`` (the command ``pip install`` makes) or
    ``python -m mamol`` (the plugin's engine, and torchrun's ``-m mamol``)."""
    return "mamol" if Path(sys.argv[0] or "").name == "mamol" else "python -m mamol"


class Channel:
    """Where the engine's progress, log lines, warnings, result and error go (stderr)."""

    def __init__(self, mode: str, stage: str, stream: Optional[TextIO] = None,
                 rank: Optional[int] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        if rank:   # under torchrun only rank 0 shows progress; every rank shows its errors
            mode = "json-errors" if mode == "json" else "none"
        self.mode = mode
        self.stage = stage
        self.rank = rank   # None: a single process
        self._percent = -1.0
        self._bar_shown = False
        self._last_bar = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _json(self, record: Dict[str, object]) -> None:
        self._write(json.dumps(record, ensure_ascii=False) + "\n")

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self._write("\r\033[K")
            self._bar_shown = False

    def _draw_bar(self) -> None:
        width = 30
        filled = int(round(width * self._percent / 100.0))
        self._write(f"\r{self.stage} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{self._percent:5.1f} %")
        self._bar_shown = True

    def progress(self, percent: float) -> None:
        percent = round(float(percent), 1)
        if percent == self._percent:
            return
        self._percent = percent
        if self.mode == "json":
            self._json({"event": "progress", "percent": percent, "stage": self.stage})
        elif self.mode == "bar":
            now = time.monotonic()
            if now - self._last_bar >= 0.1 or percent >= 100:
                self._last_bar = now
                self._draw_bar()

    def log(self, text: str) -> None:
        if self.mode == "json":
            self._json({"event": "log", "text": text})
        elif self.mode in ("bar", "plain"):
            self._clear_bar()
            self._write(text + "\n")
            if self.mode == "bar" and self._percent >= 0:
                self._draw_bar()

    def warning(self, text: str) -> None:
        if self.mode == "json":
            self._json({"event": "warning", "text": text})
        elif self.mode in ("bar", "plain"):
            self._clear_bar()
            self._write(f"warning: {text}\n")
            if self.mode == "bar" and self._percent >= 0:
                self._draw_bar()

    def result(self, command: str, result: Dict[str, object], out: TextIO) -> None:
        if self.mode == "json":
            self._json({"event": "result", "command": command, "result": result})
        self._clear_bar()
        if self.mode == "json":
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            for key, value in result.items():
                out.write(f"{key}: {json.dumps(value, ensure_ascii=False)}\n")
        out.flush()

    def staging(self, path: Path) -> None:
        """A path this run is about to create (a run folder, an output lock): the calling
        program removes it if the engine dies before it could (:mod:`core.runs`)."""
        if self.mode == "json":
            self._json({"event": "staging", "path": str(path)})

    def error(self, kind: str, message: str) -> None:
        self._clear_bar()
        if self.mode in ("json", "json-errors"):
            record = {"event": "error", "kind": kind, "message": message}
            if self.rank is not None:
                record["rank"] = self.rank
            self._json(record)
        else:
            where = "" if self.rank is None else f"rank {self.rank}: "
            self._write(f"error: {where}{message}\n")


class Stop:
    """SIGTERM (and SIGINT) as a cancel request the core polls between blocks and batches;
    a second Ctrl-C interrupts at once (the core's staging still removes what it wrote)."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def install(self) -> None:
        def handler(number, _frame):
            if self.signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self.signal = number
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        if hasattr(signal, "SIGHUP"):    # the terminal closed
            signal.signal(signal.SIGHUP, handler)
        if hasattr(signal, "SIGBREAK"):  # Windows: what the plugin sends to cancel
            signal.signal(signal.SIGBREAK, handler)

    def watch_lifeline(self, stream) -> None:
        """Cancel when ``stream`` (a pipe from the calling program) closes: the caller is
        gone. If the run has not stopped after a grace period, remove what it staged and
        exit at once."""
        descriptor = stream.fileno()

        def wait() -> None:
            try:   # the raw descriptor: a buffered reader's lock would block shutdown
                while os.read(descriptor, 65536):
                    pass
            except OSError:
                pass
            if self.signal is None:
                self.signal = signal.SIGTERM
            time.sleep(LIFELINE_GRACE_SECONDS)
            from ..core import runs
            runs.remove_own()
            runs.end()
            os._exit(EXIT_TERMINATED)
        threading.Thread(target=wait, name="mamol-lifeline", daemon=True).start()

    def __call__(self) -> bool:
        return self.signal is not None


# ---- subcommands: arguments -> config -> one core call -> result -------------------------

def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                        help="how progress is shown on stderr: a bar on a terminal, log "
                             "lines only, JSON lines for a calling program, or nothing "
                             "(default: a bar on a terminal, else plain)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error")
    parser.add_argument("--quiet", action="store_true", help="the same as --progress none")


def _add_rasters(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("rasters (at least one)")
    group.add_argument("--hs", help=f"hyperspectral raster {what}")
    group.add_argument("--sar", help=f"SAR raster {what}")
    group.add_argument("--lidar", help=f"LiDAR / DSM raster {what}")


def _rasters(args) -> tuple:
    return tuple((name, getattr(args, name)) for name in ("hs", "sar", "lidar")
                 if getattr(args, name))


def _add_compute(parser, with_compile: bool = True) -> None:
    group = parser.add_argument_group("device")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N "
                       "(auto: a CUDA GPU when there is one)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="number format of the frozen backbone: auto = bf16 on a GPU, "
                            "fp32 on the CPU (trainable weights stay fp32)")
    if with_compile:
        group.add_argument("--compile", choices=["off", "default", "max-autotune"],
                           default="off", help="torch.compile the encoder once per run "
                                               "(pays off on a GPU for long runs only)")
    group.add_argument("--weights-cache", metavar="FOLDER",
                       help="where downloaded backbone weights are kept (default: "
                            "MAMOL_WEIGHTS_CACHE, else the Hugging Face cache)")


def _apply_weights_cache(args) -> None:
    if getattr(args, "weights_cache", None):
        import os
        os.environ["MAMOL_WEIGHTS_CACHE"] = args.weights_cache


SCENE_HELP = (
    "Write the built-in synthetic scene: a hyperspectral raster (48 bands, 1 m) with a "
    "cloud-shaped hole, a SAR raster covering the eastern part, a LiDAR DSM in another CRS, "
    "training polygons and separate reference labels (the same as mamol:createsamplescene).")


def _scene_parser(sub) -> None:
    from ..core import sample_scene
    parser = sub.add_parser("scene", help="write the built-in sample scene",
                            description=SCENE_HELP)
    parser.add_argument("--size", type=int, default=256,
                        help=f"pixels per side of the HS grid ({sample_scene.MIN_SIZE}–"
                             f"{sample_scene.MAX_SIZE}, default 256)")
    parser.add_argument("--seed", type=int, default=42,
                        help="the same size and seed always give the same scene (default 42)")
    parser.add_argument("--output-folder", required=True,
                        help="folder that receives hs.tif, sar.tif, lidar.tif, "
                             "training_polygons.gpkg, reference_labels.tif and scene.json")
    _add_common(parser)


def run_scene(args, channel: Channel, is_cancelled) -> Dict[str, object]:
    from ..core import sample_scene
    config = sample_scene.SampleSceneConfig(size=args.size, seed=args.seed)
    config.validate()
    scene = sample_scene.write_sample_scene(config, Path(args.output_folder),
                                            channel.progress, is_cancelled)
    manifest = sample_scene.read_manifest(scene.manifest)
    channel.log(f"Sample scene written to {scene.folder}")
    return {"folder": str(scene.folder), "hs": str(scene.hs), "sar": str(scene.sar),
            "lidar": str(scene.lidar), "training_polygons": str(scene.training_polygons),
            "reference_labels": str(scene.reference_labels), "manifest": str(scene.manifest),
            "classes": manifest["classes"]}


def _train_parser(sub) -> None:
    from . import cli
    parser = sub.add_parser("train", help="train a model on labelled polygons or a label raster",
                            description=cli.DESCRIPTION)
    cli.add_arguments(parser)
    _add_common(parser)


def run_train(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from . import cli
    from .missing import SimulationMode
    from .trainer import train_model
    _apply_weights_cache(args)
    config = cli.config_from_args(args)
    if len(config.modality_names) == 1 and config.simulation.mode is SimulationMode.NONE:
        channel.log("One modality given: there is nothing to hide, so no missing-modality "
                    "simulation.")
    result = train_model(config, channel.progress, is_cancelled, log=channel.log,
                         warn=channel.warning, world=world)
    return {"model": str(result.model_path),
            "report_html": str(result.report_html) if result.report_html else None,
            "report_json": str(result.report_json) if result.report_json else None}


EVALUATE_HELP = (
    "Score a model against reference labels it was not trained on: OA, Cohen's kappa, "
    "per-class accuracy, F1 and the confusion matrix, overall and per missing pattern, "
    "optionally with modalities forced absent or present at an availability rate; an HTML "
    "report and a JSON twin (the same as mamol:evaluate).")


def _availability(text: str):
    name, _, rate = text.partition("=")
    try:
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RATE (e.g. hs=0.5), got '{text}'")
    if name not in ("hs", "sar", "lidar"):
        raise argparse.ArgumentTypeError(f"unknown modality '{name}' (hs, sar or lidar)")
    return name, value


def _add_labels(parser) -> None:
    group = parser.add_argument_group("reference labels (a label raster or polygons)")
    group.add_argument("--labels", help="label raster (class values, 0 = unlabelled)")
    group.add_argument("--polygons", help="labelled polygons (any OGR format, any CRS)")
    group.add_argument("--layer", help="layer name inside the polygon file (default: first)")
    group.add_argument("--class-field", help="integer class field of the polygons")


def _evaluate_parser(sub) -> None:
    parser = sub.add_parser("evaluate", help="score a model against reference labels",
                            description=EVALUATE_HELP)
    parser.add_argument("--model", required=True, help="the .mamol model file")
    _add_rasters(parser, "(at least one of the model's modalities)")
    _add_labels(parser)
    forced = parser.add_argument_group("forced missingness")
    forced.add_argument("--absent", nargs="+", choices=["hs", "sar", "lidar"], default=[],
                        help="evaluate as if these modalities were absent")
    forced.add_argument("--availability", nargs="+", type=_availability, default=[],
                        metavar="NAME=RATE", help="share of samples that keep a modality, "
                        "e.g. hs=0.5 (the others lose it, chosen with the seed)")
    forced.add_argument("--independent", action="store_true",
                        help="with --availability: force each modality on its own "
                             "(patterns combine)")
    options = parser.add_argument_group("options")
    options.add_argument("--max-samples-per-class", type=int, default=0,
                         help="evaluate a seeded subset of each class (0 = all)")
    options.add_argument("--max-missing-fraction", type=float,
                         help="share of a window that may be missing before its modality "
                              "counts as missing (default: the model's)")
    options.add_argument("--batch-size", type=int, default=0,
                         help="samples per model call (0 = automatic)")
    options.add_argument("--seed", type=int, default=0,
                         help="chooses the per-class subset and the forced samples")
    _add_compute(parser, with_compile=False)
    parser.add_argument("--report", required=True,
                        help="HTML report; a JSON twin is written next to it")
    _add_common(parser)


def _label_source(args):
    from .labels import LabelRasterSource, PolygonSource
    if bool(args.labels) == bool(args.polygons):
        raise MamolInputError("Give either --labels (a label raster) or --polygons (with "
                              "--class-field).")
    if args.labels:
        return LabelRasterSource(args.labels)
    if not args.class_field:
        raise MamolInputError("--polygons needs --class-field.")
    return PolygonSource(path=args.polygons, class_field=args.class_field, layer=args.layer)


def run_evaluate(args, channel: Channel, is_cancelled) -> Dict[str, object]:
    from .evaluation import EvaluationConfig, evaluate
    _apply_weights_cache(args)
    report = Path(args.report)
    config = EvaluationConfig(
        model_path=args.model, rasters=_rasters(args), labels=_label_source(args),
        report_html=str(report), report_json=str(report.with_suffix(".json")),
        absent=tuple(args.absent), availability=dict(args.availability),
        simulation_seed=args.seed, independent=args.independent,
        max_samples_per_class=args.max_samples_per_class,
        max_missing_fraction=args.max_missing_fraction, batch_size=args.batch_size,
        device=args.device, precision=args.precision, seed=args.seed)
    result = evaluate(config, channel.progress, is_cancelled, log=channel.log,
                      warn=channel.warning)
    return {"oa": result.oa, "kappa": result.kappa,
            "report_html": str(result.report_html) if result.report_html else None,
            "report_json": str(result.report_json) if result.report_json else None}


CLASSIFY_HELP = (
    "Classify land cover with a trained model from whichever of its modalities you have: "
    "each pixel from the modalities valid there. Rasters may differ in CRS, pixel size and "
    "extent; everything is aligned onto the reference grid. Writes a class raster (GeoTIFF "
    "with colour table, class names and a .qml style) and, if asked, class probabilities, "
    "confidence, normalised entropy and the modalities used (the same as mamol:classify).")


def _classify_parser(sub) -> None:
    from ..core.raster_io import DEFAULT_GDAL_CACHE_MB
    parser = sub.add_parser("classify", help="classify a scene with a trained model",
                            description=CLASSIFY_HELP)
    parser.add_argument("--model", required=True, help="the .mamol model file")
    _add_rasters(parser, "(at least one of the model's modalities)")
    outputs = parser.add_argument_group("outputs (GeoTIFF)")
    outputs.add_argument("--output", required=True, help="class raster (.tif)")
    outputs.add_argument("--probabilities", help="class probabilities, one band per class")
    outputs.add_argument("--confidence", help="highest class probability")
    outputs.add_argument("--entropy", help="normalised entropy (0 certain, 1 undecided)")
    outputs.add_argument("--modalities-used", help="bitmask of the modalities used per pixel")
    outputs.add_argument("--cog", action="store_true",
                         help="write every output as a Cloud-Optimized GeoTIFF (internal "
                              "overviews; for serving over HTTP or object storage)")
    area = parser.add_argument_group("area and grid")
    area.add_argument("--reference", choices=["hs", "sar", "lidar"],
                      help="whose grid the outputs get (default: the first raster given)")
    area.add_argument("--pixel-size", type=float, default=0.0,
                      help="output pixel size in the reference CRS (0 = the raster's)")
    area.add_argument("--extent", type=float, nargs=4,
                      metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                      help="classify only this area (reference CRS unless --extent-crs)")
    area.add_argument("--extent-crs", help="CRS of --extent (WKT or EPSG:N)")
    area.add_argument("--mask", help="polygons outside which nothing is classified")
    area.add_argument("--mask-layer", help="layer name inside the mask file")
    options = parser.add_argument_group("options")
    options.add_argument("--max-missing-fraction", type=float,
                         help="share of a window that may be missing before its modality "
                              "counts as missing (default: the model's)")
    options.add_argument("--stride", type=int, default=1,
                         help="classify every s-th pixel and fill the s×s cell (preview)")
    options.add_argument("--tile-step", type=int, default=0,
                         help="tile models: start a tile every N pixels (0 = automatic, "
                              "P − 2·(P // 7): 10 for P = 14; at most P); larger is "
                              "faster, each pixel then sits nearer its tile's edge")
    options.add_argument("--tile-blend", choices=["central", "weighted"], default="central",
                         help="tile models: take each pixel from the tile where it is most "
                              "central, or average the covering tiles weighted towards "
                              "their centres")
    options.add_argument("--block-size", type=int, default=0,
                         help="pixels per block side (0 = automatic); memory, not results")
    options.add_argument("--batch-size", type=int, default=0,
                         help="pixels per model call (0 = automatic)")
    options.add_argument("--gdal-cache-mb", type=int, default=DEFAULT_GDAL_CACHE_MB,
                         help=f"GDAL block cache for the run, MiB (default "
                              f"{DEFAULT_GDAL_CACHE_MB})")
    _add_compute(parser)
    _add_common(parser)


def _crs_wkt(text: Optional[str]) -> Optional[str]:
    if not text:
        return None
    from osgeo import osr
    reference = osr.SpatialReference()
    try:
        failed = reference.SetFromUserInput(text)
    except RuntimeError:
        failed = True
    if failed:
        raise MamolInputError(f"--extent-crs: cannot understand the CRS '{text}' (give WKT "
                              "or EPSG:N).")
    return reference.ExportToWkt()


def run_classify(args, channel: Channel, is_cancelled, world=None) -> Dict[str, object]:
    from ..core.inference import ClassifyConfig, MaskSource, classify
    _apply_weights_cache(args)
    config = ClassifyConfig(
        model_path=args.model, rasters=_rasters(args), output_classes=args.output,
        output_probabilities=args.probabilities, output_confidence=args.confidence,
        output_entropy=args.entropy, output_modalities=args.modalities_used,
        reference=args.reference, pixel_size=args.pixel_size,
        extent=tuple(args.extent) if args.extent else None,
        extent_crs_wkt=_crs_wkt(args.extent_crs),
        mask=MaskSource(args.mask, args.mask_layer) if args.mask else None,
        max_missing_fraction=args.max_missing_fraction, stride=args.stride,
        tile_step=args.tile_step, tile_blend=args.tile_blend,
        block_size=args.block_size, batch_size=args.batch_size,
        gdal_cache_mb=args.gdal_cache_mb, device=args.device, precision=args.precision,
        compile_mode=args.compile, cog=args.cog)
    result = classify(config, channel.progress, is_cancelled, log=channel.log,
                      warn=channel.warning, world=world)
    return {"outputs": {key: str(path) for key, path in result.outputs.items()},
            "class_counts": [{"value": int(value), "name": result.class_names[value],
                              "pixels": int(count)}
                             for value, count in result.class_counts.items()],
            "far_shares": {name: (None if share is None or math.isnan(share) else share)
                           for name, share in result.far_shares.items()},
            "pattern_counts": {str(code): int(n) for code, n in result.pattern_counts.items()},
            "seconds": result.seconds, "pixels_per_second": result.pixels_per_second}


COMMANDS = {"scene": (_scene_parser, run_scene), "train": (_train_parser, run_train),
            "evaluate": (_evaluate_parser, run_evaluate),
            "classify": (_classify_parser, run_classify)}


class ArgumentsError(Exception):
    """A command line the engine cannot run: the reason in one line."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: {message}")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises :class:`ArgumentsError` with argparse's reason
    instead of printing the whole usage message and exiting."""

    def error(self, message: str):
        raise ArgumentsError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=program_name(),
        description="MaMOL land cover without QGIS: the engine behind the Processing "
                    "algorithms. Each command is the same core call as its algorithm.",
        epilog=f"Run '{program_name()} COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for make, _ in COMMANDS.values():
        make(sub)
    return parser


def output_paths(args) -> List[Path]:
    """The files a command's arguments ask it to write that the run locks from its start."""
    if args.command == "scene":
        from ..core.sample_scene import OUTPUT_FILES
        return [Path(args.output_folder) / name for name in OUTPUT_FILES]
    if args.command == "classify":
        from ..core.class_style import qml_path
        given = [args.output, args.probabilities, args.confidence, args.entropy,
                 args.modalities_used]
        return [Path(p) for p in given if p] + [qml_path(Path(args.output))]
    if args.command == "train":
        # the reports are locked when they are written: one that cannot be written is a
        # warning after training, never a reason to lose the model
        return [Path(args.output)]
    return [Path(args.report), Path(args.report).with_suffix(".json")]


def check_outputs(args) -> None:
    """Refuse output names the command cannot honour (before any work)."""
    if args.command == "classify":
        for option in ("output", "probabilities", "confidence", "entropy", "modalities_used"):
            value = getattr(args, option)
            if value and not value.lower().endswith(GEOTIFF_SUFFIXES):
                flag = "--" + option.replace("_", "-")
                raise MamolInputError(
                    f"{flag}: '{value}' must end in .tif or .tiff: every classification "
                    "output is a GeoTIFF.")


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    """Run one engine command; returns the exit status (see the module's docstring)."""
    from ..core import runs
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help
        return EXIT_INPUT if exc.code else 0
    except ArgumentsError as exc:
        if _json_requested(argv):
            Channel("json", "arguments", stderr).error("input", _one_line(str(exc)))
        else:
            stderr.write(f"error: {exc} (see '{exc.prog} --help')\n")
        return EXIT_INPUT
    mode = "none" if args.quiet else args.progress
    size = launched_world_size()
    rank = int(os.environ.get("RANK", "0")) if size > 1 else None
    channel = Channel(mode, args.command, stderr, rank)
    stop = Stop()
    stop.install()
    if os.environ.get(runs.LIFELINE_VARIABLE) == "stdin" and sys.stdin is not None:
        stop.watch_lifeline(sys.stdin)
    runs.begin(f"{program_name()} {args.command}")
    runs.announce = channel.staging
    _, run = COMMANDS[args.command]
    world = None
    try:
        check_outputs(args)
        with runs.locked_outputs([p for p in output_paths(args) if p.parent.is_dir()]
                                 if rank in (None, 0) else []):
            if size > 1:
                world = _join_world(args)
                result = run(args, channel, stop, world)
            else:
                result = run(args, channel, stop)
    except PeerFailed as exc:
        channel.error(exc.kind, _one_line(str(exc)))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INTERNAL
    except MamolInputError as exc:
        if stop():
            return _cancelled(channel, stop)
        channel.error("input", _one_line(str(exc)))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INPUT
    except (Cancelled, KeyboardInterrupt):
        return _cancelled(channel, stop)
    except Exception as exc:  # noqa: BLE001 - the engine's last line of defence
        if world is not None and _lost_peer(exc):   # e.g. inside a DDP gradient exchange
            channel.error("internal", "another process of the run stopped or did not "
                          "answer (see its own error); " + _one_line(str(exc)))
            return EXIT_INTERNAL
        channel.error("internal", _one_line(f"{type(exc).__name__}: {exc}") +
                      ("" if args.debug else " (run with --debug for the traceback)"))
        if args.debug:
            stderr.write(traceback.format_exc())
        return EXIT_INTERNAL
    finally:
        if world is not None:
            # The outcome is decided and reported: torchrun's agent, seeing another rank
            # exit, sends SIGTERM to this one, which must still exit with its own status.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            finish(world)
        runs.end()
        runs.announce = None
    channel.progress(100.0)
    if world is None or world.is_main:
        channel.result(args.command, result, stdout)
    return 0


#: The commands that run across the processes torchrun starts (DESIGN §6).
DISTRIBUTED_COMMANDS = ("train", "classify")


def _join_world(args):
    """Under torchrun: join the process group (see :mod:`core.distributed`)."""
    if args.command not in DISTRIBUTED_COMMANDS:
        raise MamolInputError(
            f"'{args.command}' runs in one process: start it with '{program_name()} "
            f"{args.command}', not torchrun (train and classify run across processes).")
    world = start(getattr(args, "device", "auto"))
    if world.faulty("input"):   # test hook: this rank cannot read its rasters
        for name in ("hs", "sar", "lidar"):
            if getattr(args, name, None):
                setattr(args, name, getattr(args, name) + ".not-on-this-node")
    return world


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.distributed's report of a peer gone or silent."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"DistBackendError", "DistNetworkError"}) or any(
        text in str(exc) for text in ("Connection closed by peer", "Connection reset by peer",
                                      "timed out", "Timed out"))


def _json_requested(argv: List[str]) -> bool:
    return "json" in [argv[i + 1] for i, value in enumerate(argv[:-1])
                      if value == "--progress"] or "--progress=json" in argv


def _cancelled(channel: Channel, stop: Stop) -> int:
    channel.error("cancelled", "Cancelled; nothing was written.")
    return EXIT_TERMINATED if stop.signal == signal.SIGTERM else EXIT_INTERRUPTED


def _one_line(text: str) -> str:
    return " ".join(text.split())
