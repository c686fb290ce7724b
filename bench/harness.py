"""What every bench script shares, so that each one only says what it measures.

Importing this module puts the folder holding the plugin (as the package ``mamol``) on
``sys.path``: the first entry of ``QGIS_PLUGINPATH`` when it is set (the Makefile's
``QGIS_ENV``, also inside ``.ci/debian13``'s root), else ``.build/plugins`` beside this
folder (``make setup`` and ``bench/gpu_machine.sh`` make it).

* :func:`host_banner` — one line naming the host, its CPU and GPU, torch / NumPy / GDAL
  versions and torch's thread count (also returned as a dict, for JSON records);
* :func:`measure` — call a function after a warm-up, for a number of calls or seconds,
  and give seconds per call with the peak memory of the timed calls (:class:`Timing`);
* :class:`PeakMemory` — peak resident memory of this process (``VmHWM``, reset through
  ``/proc/self/clear_refs``) and, on CUDA, the peak allocation;
* :class:`Table` — a record printed as a markdown table row on stdout and written as a
  JSON line (stderr, or the file of ``--json-lines``);
* :func:`fixture_model` / :func:`fixture_network` / :func:`plain_tower` — the seeded,
  untrained models the scripts time (speed does not depend on the weights): the sample
  scene's three modalities (HS 48 bands, SAR 2, LiDAR 1) and 7 classes;
* :func:`sample_scene`, :func:`encoder_passes`, :func:`run_child`, :func:`engine_env` —
  the sample scene of a size, the encoder passes a classification made, a run of this
  script in a fresh process, and the environment an engine child needs.
"""
import contextlib
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TextIO

PLUGINS = Path(os.environ.get("QGIS_PLUGINPATH", "").split(os.pathsep)[0]
               or Path(__file__).resolve().parents[1] / ".build" / "plugins")
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))

#: The sample scene's modalities (name, band count) and rough per-band mean and spread,
#: so that a fixture model's windows are near unit scale.
SAMPLE_BANDS = {"hs": 48, "sar": 2, "lidar": 1}
SAMPLE_STATS = {"hs": (2000.0, 1500.0), "sar": (0.1, 0.1), "lidar": (200.0, 10.0)}
SAMPLE_CLASSES = 7
SAMPLE_SEED = 42


# ---- The host -------------------------------------------------------------------------

def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_info(device: Optional[str] = None) -> Dict[str, object]:
    """The host as a dict: name, cores, CPU, GPU (when CUDA is there), library versions,
    torch threads. Libraries that do not import are left out."""
    info: Dict[str, object] = {
        "host": platform.node(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
        "python": platform.python_version()}
    release = Path("/etc/debian_version")
    if release.exists():
        info["debian"] = release.read_text().strip()
    with contextlib.suppress(ImportError):
        import numpy
        info["numpy"] = numpy.__version__
    with contextlib.suppress(ImportError):
        from osgeo import gdal
        info["gdal"] = gdal.__version__
    with contextlib.suppress(ImportError):
        import torch
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(
                torch.device(device) if device and device.startswith("cuda") else None)
    if device:
        info["device"] = device
    return info


def host_banner(device: Optional[str] = None, **settings) -> str:
    """One line for the head of a script's output: the host, then ``settings``
    (``arch="ViT-B-16", P=14`` → ``arch ViT-B-16, P 14``)."""
    info = host_info(device)
    parts = [f"host {info['host']} ({info['cpus']} CPUs: {info['cpu']})"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    parts += [f"{name} {info[name]}" for name in ("debian", "python", "torch", "numpy", "gdal",
                                                   "threads", "device") if name in info]
    parts += [f"{name} {value}" for name, value in settings.items()]
    return "# " + ", ".join(parts)


# ---- Peak memory and timing ---------------------------------------------------------

def own_peak_rss_mib() -> float:
    """This process's own peak resident memory, MiB. Not ``ru_maxrss``: a child started by
    fork + exec inherits as its maximum the parent's resident size at the fork, so a run in
    a fresh process would report at least what its parent had used (e.g. to write a large
    sample scene). ``VmHWM`` belongs to the address space, which exec replaces."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory from :meth:`reset` on: resident memory of this process, and the CUDA
    allocator's peak on ``device`` when it is a GPU."""

    def __init__(self, device=None) -> None:
        self.cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
        self.device = device

    def reset(self) -> None:
        with contextlib.suppress(OSError):   # "5" resets VmHWM to the current RSS (Linux)
            Path("/proc/self/clear_refs").write_text("5")
        if self.cuda:
            import torch
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> Dict[str, Optional[float]]:
        """{"rss_mib": …, "cuda_mib": … or None}."""
        cuda = None
        if self.cuda:
            import torch
            cuda = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        return {"rss_mib": own_peak_rss_mib(), "cuda_mib": cuda}

    def main_mib(self) -> float:
        """The peak that matters on this device: CUDA's on a GPU, else resident memory."""
        peaks = self.read()
        return peaks["cuda_mib"] if self.cuda else peaks["rss_mib"]


@dataclasses.dataclass
class Timing:
    """What :func:`measure` saw."""

    seconds_per_call: float
    calls: int
    peak_rss_mib: float
    peak_cuda_mib: Optional[float]

    def rate(self, items_per_call: float) -> float:
        """Items per second when each call handles ``items_per_call``."""
        return items_per_call / self.seconds_per_call

    @property
    def peak_mib(self) -> float:
        """The device's peak: CUDA's when measured there, else resident memory."""
        return self.peak_rss_mib if self.peak_cuda_mib is None else self.peak_cuda_mib


def _wait(device) -> None:
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch
        torch.cuda.synchronize(device)


def measure(step: Callable[[], object], device=None, warmup: int = 1,
            calls: Optional[int] = None, seconds: Optional[float] = None,
            min_calls: int = 1) -> Timing:
    """Time ``step``: ``warmup`` untimed calls, then ``calls`` timed calls, or as many as
    fit in ``seconds`` (at least ``min_calls``); queued GPU work is waited for, so it
    counts. Peak memory is that of the timed calls."""
    if calls is None and seconds is None:
        raise ValueError("measure needs calls or seconds")
    for _ in range(warmup):
        step()
    _wait(device)
    peaks = PeakMemory(device)
    peaks.reset()
    done, started = 0, time.perf_counter()
    while True:
        step()
        done += 1
        if calls is not None and done >= calls:
            break
        if calls is None and done >= min_calls and time.perf_counter() - started >= seconds:
            break
    _wait(device)
    elapsed = time.perf_counter() - started
    peak = peaks.read()
    return Timing(elapsed / done, done, peak["rss_mib"], peak["cuda_mib"])


# ---- Records: a markdown row and a JSON line ----------------------------------------

@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a :class:`Table`: the record's key, its title, how a value is shown
    (a format spec, or a callable) and whether it is a number (right-aligned)."""

    key: str
    title: str
    format: object = ""
    number: bool = True

    def show(self, value) -> str:
        if value is None:
            return "not measured"
        if callable(self.format):
            return self.format(value)
        return format(value, self.format)


def add_record_arguments(parser) -> None:
    """The option every bench script takes for its JSON lines."""
    parser.add_argument("--json-lines", metavar="FILE",
                        help="append each record as a JSON line to FILE "
                             "(default: stderr)")


class Table:
    """Records printed as markdown rows on stdout (the form ``bench/RESULTS.md`` keeps)
    and as JSON lines, one per record, with the table's name, to ``json_lines`` (a path;
    stderr when None). A record may hold more keys than the table shows: the JSON line
    keeps them all."""

    def __init__(self, name: str, columns: Sequence[Column],
                 json_lines: Optional[str] = None, out: TextIO = None) -> None:
        self.name = name
        self.columns = list(columns)
        self.json_lines = json_lines
        self.out = out or sys.stdout
        self.records: List[Dict[str, object]] = []

    def header(self) -> None:
        titles = " | ".join(column.title for column in self.columns)
        rules = "|".join("---:" if column.number else "---" for column in self.columns)
        print(f"| {titles} |\n|{rules}|", file=self.out, flush=True)

    def row(self, record: Dict[str, object]) -> None:
        self.records.append(record)
        cells = " | ".join(column.show(record.get(column.key)) for column in self.columns)
        print(f"| {cells} |", file=self.out, flush=True)
        line = json.dumps({"table": self.name, **record}, default=str)
        if self.json_lines:
            with open(self.json_lines, "a", encoding="utf-8") as stream:
                stream.write(line + "\n")
        else:
            print(line, file=sys.stderr, flush=True)


# ---- Fixtures: models and scenes -----------------------------------------------------

def fixture_network(arch: str, kind: str = "pixel", device=None, precision: str = "auto",
                    seed: int = 0, hs_bands: int = SAMPLE_BANDS["hs"]):
    """A seeded, untrained MaMOL network for the sample scene's modalities, in eval mode:
    (model, its visual tower's spec). With a ``device`` (a name or a ``torch.device``) it
    is moved there with the product's precision rule (``prepare_model``). ``hs_bands``
    changes the HS band count (the encoder bench's ``--bands``)."""
    import torch

    from mamol.core.backbone import BackboneSpec, build_visual_tower
    from mamol.core.devices import prepare_model, resolve_device
    from mamol.core.mamol_model import AdapterConfig, MamolModel, ModalitySpec, ModelKind
    spec = BackboneSpec(arch=arch, seed=seed)
    visual = build_visual_tower(spec)
    torch.manual_seed(seed)
    bands = dict(SAMPLE_BANDS, hs=hs_bands)
    model = MamolModel([ModalitySpec(name, count) for name, count in bands.items()],
                       SAMPLE_CLASSES, visual, AdapterConfig(kind=ModelKind(kind)))
    if device is not None:
        target = resolve_device(device) if isinstance(device, str) else device
        model = prepare_model(model, target, precision)
    return model.eval(), spec


def fixture_model(arch: str, patch_size: int, path: Path, kind: str = "pixel",
                  seed: int = 0) -> Path:
    """Write a seeded, untrained ``.mamol`` model file for the sample scene (its classes,
    names and colours; rough normalisation statistics) and return its path."""
    from mamol.core.backbone import fingerprint
    from mamol.core.model_file import ClassInfo, ModalityInfo, ModelHeader, save_model
    from mamol.core.sample_scene import CLASS_STYLE
    model, spec = fixture_network(arch, kind, seed=seed)
    modalities = tuple(
        ModalityInfo(name, bands, (SAMPLE_STATS[name][0],) * bands,
                     (SAMPLE_STATS[name][1],) * bands)
        for name, bands in SAMPLE_BANDS.items())
    header = ModelHeader(
        modalities=modalities,
        classes=tuple(ClassInfo(int(value), style[0], style[1])
                      for value, style in CLASS_STYLE.items()),
        patch_size=patch_size, backbone=spec,
        backbone_fingerprint=fingerprint(model.encoder.visual),
        adapter=model.config.to_json(), training={"max_missing_fraction": 0.5})
    save_model(Path(path), model, header)
    return Path(path)


def plain_tower(arch: str, device, dtype):
    """The frozen tower alone — the same SDPA blocks and precision as the product, no
    adapters — as a callable encoder ``(tokens, context)``, with the context it takes."""
    from mamol.core.backbone import BackboneSpec, build_visual_tower
    from mamol.core.mamol_model import AdapterConfig, ExpertSet, MamolEncoder, RoutingContext
    encoder = MamolEncoder(build_visual_tower(BackboneSpec(arch=arch)), 1,
                           AdapterConfig(experts=ExpertSet.NONE)).to(device).eval()
    encoder.set_compute_dtype(dtype)
    return encoder, RoutingContext(None, None, 0)


def sample_scene(size: int, folder) -> object:
    """The sample scene of ``size``² pixels (seed 42) written into ``folder``."""
    from mamol.core.sample_scene import SampleSceneConfig, write_sample_scene
    return write_sample_scene(SampleSceneConfig(size=size, seed=SAMPLE_SEED), folder)


def scene_rasters(folder, names: Sequence[str] = tuple(SAMPLE_BANDS)):
    """(modality, path) pairs of a sample scene's rasters, as ``ClassifyConfig`` takes them."""
    return tuple((name, str(Path(folder) / f"{name}.tif")) for name in names)


def encoder_passes(modalities_raster, stride: int = 1) -> Dict[str, int]:
    """From a classification's modalities-used raster: the pixels classified (one per
    s×s cell with a stride s) and the per-pixel encoder passes they took (one per modality
    present), as {"classified": …, "passes": …}."""
    from osgeo import gdal
    used = gdal.Open(str(modalities_raster)).ReadAsArray()
    anchors = used[stride // 2::stride, stride // 2::stride]
    passes = sum(int(((anchors >> bit) & 1).sum()) for bit in range(len(SAMPLE_BANDS)))
    return {"classified": int((anchors > 0).sum()), "passes": passes}


# ---- Child processes -----------------------------------------------------------------

def print_child_record(record: Dict[str, object]) -> None:
    """A run in a child process reports with one JSON line on stdout (see run_child)."""
    print(json.dumps(record), flush=True)


def run_child(script: str, arguments: Sequence[str], timeout: Optional[float] = None
              ) -> Dict[str, object]:
    """Run ``script`` (a bench script's own file) with ``arguments`` in a fresh Python, so
    that its memory peak is its own, and return the JSON record it printed last."""
    done = subprocess.run([sys.executable, script, *arguments], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{Path(script).name} {' '.join(arguments)} failed "
                         f"({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def engine_env(**extra: str) -> Dict[str, str]:
    """This environment with the plugin folder first on PYTHONPATH, so that a child
    ``python -m mamol`` finds the engine; ``extra`` variables added."""
    paths = [str(PLUGINS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                              if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **extra)
