"""What the tests of every tier share, importable by name (``from support import REPO``):
tests/ is on ``sys.path`` because the root conftest.py lives there. Nothing here imports
QGIS; the QGIS tiers' helpers are in qgis_session.py."""
import contextlib
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PLUGINS_DIR = Path(os.environ.get("QGIS_PLUGINPATH", "").split(os.pathsep)[0]
                   or REPO / ".build" / "plugins")
SHARED_DATA = REPO.parent / "shared" / "data"
# Set by .ci/pip-root: the pure tiers then test the pip-installed engine (its wheel), not the
# clone's sources; nothing is linked into the clone and PLUGINS_DIR is not used.
INSTALLED = os.environ.get("MAMOL_TEST_INSTALLED") == "1"


def tiny_training_config(scene, output, **changes):
    """Quick training settings on a sample scene: tiny random backbone, P = 5, 2 epochs,
    η = 50 %, CPU; ``changes`` override any field."""
    from mamol.core.backbone import TINY_ARCH, BackboneSpec
    from mamol.training.labels import PolygonSource, SplitConfig
    from mamol.training.missing import MissingSimulation, SimulationMode
    from mamol.training.trainer import TrainingConfig
    config = TrainingConfig(
        modalities=(("hs", str(scene.hs)), ("sar", str(scene.sar)),
                    ("lidar", str(scene.lidar))),
        polygons=PolygonSource(str(scene.training_polygons), "class_id",
                               name_field="class_name"),
        output_model=str(output), backbone=BackboneSpec(arch=TINY_ARCH),
        patch_size=5, epochs=2, split=SplitConfig(max_train_per_class=40,
                                                  max_validation_per_class=20),
        simulation=MissingSimulation(SimulationMode.RATE, 0.5, seed=2), device="cpu")
    return replace(config, **changes)


def scaled_copy(source: Path, target: Path, factor: float) -> Path:
    """``source`` with every value multiplied by ``factor`` (nodata kept)."""
    from osgeo import gdal
    dataset = gdal.GetDriverByName("GTiff").CreateCopy(str(target), gdal.Open(str(source)))
    for index in range(1, dataset.RasterCount + 1):
        band = dataset.GetRasterBand(index)
        values = band.ReadAsArray().astype(np.float64)
        nodata = band.GetNoDataValue()
        keep = values == nodata if nodata is not None else np.zeros(values.shape, bool)
        band.WriteArray(np.where(keep, values, values * factor))
    dataset = None
    return target


@contextlib.contextmanager
def small_disk(folder: Path, size_bytes: int = 3 << 20, leave_free: Optional[int] = None):
    """A tmpfs of ``size_bytes`` mounted on ``folder`` (a full disk on demand): with
    ``leave_free``, a ballast file fills it but for that many bytes. Skips where this user
    cannot mount (not root, or no mount in this root)."""
    import pytest
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        if leave_free is not None:
            ballast = folder / "ballast"
            free = shutil.disk_usage(folder).free
            with open(ballast, "wb") as stream:
                stream.write(b"\0" * max(0, free - leave_free))
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


#: What the faked ``nvidia-smi`` lists by default (name, driver, memory in MiB).
FAKE_GPU = "NVIDIA H200, 570.86.15, 143771"


def fake_nvidia_smi(folder: Path, gpus=(FAKE_GPU,), cuda: str = "12.8") -> str:
    """Write a ``nvidia-smi`` into ``folder`` that lists ``gpus`` for the GPU query and
    prints a table header with the driver's CUDA version otherwise (a shell script: not on
    Windows); returns a PATH with ``folder`` first."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    listing = "\n".join(f"echo '{gpu}'" for gpu in gpus)
    script.write_text("#!/bin/sh\n"
                      'case "$1" in --query-gpu=*)\n'
                      f"{listing}\n"
                      "exit 0;; esac\n"
                      "echo '| NVIDIA-SMI 570.86.15  Driver Version: 570.86.15  "
                      f"CUDA Version: {cuda}  |'\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


class TickingClock:
    """A fake clock for :mod:`core.pace` (``monkeypatch.setattr(pace, "clock", …)``):
    ``tick`` seconds pass at every reading, so that a run looks slow however fast this
    machine is."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def idle_gpu_words(torch_build: str) -> str:
    """What the idle-GPU message says, with :func:`fake_nvidia_smi`'s driver (CUDA 12.8),
    for the engine's torch build ("CPU", or "CUDA 13.0" as PyPI's Linux wheel is): a CPU
    build must be replaced, a CUDA build newer than the driver needs a newer driver."""
    return "is a CPU build" if torch_build.startswith("CPU") else "Update the NVIDIA driver"
