"""The model environment (``algorithms.model_env``) and ``mamol:installdependencies``.

The slow tests install the pinned packages for real, once per module, from pip's configured
index (here the local wheels), into a folder under pytest's tmp_path.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsSettings

import qgis_session
from qgis_session import recording_feedback
from support import PLUGINS_DIR, REPO
from mamol.algorithms import model_env
from mamol.core.errors import Cancelled, MamolInputError

ALGORITHM = "mamol:installdependencies"


# ---- pins -----------------------------------------------------------------------------

def test_pins_match_requirements():
    names = {pin.split("==")[0] for pin in model_env.PINNED_PACKAGES}
    required = [line.split("#")[0].strip() for line in
                (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(line for line in required if line.split("==")[0] in names) == \
        sorted(model_env.PINNED_PACKAGES)
    assert not [line for line in required if line.startswith("numpy")], \
        "NumPy is held at the base Python's version, never pinned"


def test_the_environment_takes_the_tested_range_and_ci_pins_lie_in_it():
    from packaging.requirements import Requirement
    wanted = {Requirement(line).name: Requirement(line) for line in model_env.requirements({})}
    assert str(wanted["torch"].specifier) == "<2.14,>=2.11"
    assert str(wanted["torchvision"].specifier) == "<0.29,>=0.26"
    for pin in model_env.PINNED_PACKAGES:       # requirements.txt's pins, CI's versions
        pinned = Requirement(pin)
        version = next(iter(pinned.specifier)).version
        assert wanted[pinned.name].specifier.contains(version), pin
        if pinned.name not in model_env.TORCH_RANGE:
            assert wanted[pinned.name] == pinned     # the rest stays pinned exactly
    # the oldest torch of the range is pyproject.toml's lower bound (the GPU machine's)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.11",' in pyproject and model_env.TORCH_RANGE["torch"].startswith(">=2.11,")


def test_torch_pin_test_hook():
    wanted = model_env.requirements({"MAMOL_TORCH_PIN": "torch==0.0.0"})
    assert wanted[0] == "torch==0.0.0" and wanted[1:] == model_env.requirements({})[1:]
    assert model_env.requirement_name("torch>=2.11,<2.14") == "torch"
    assert model_env.requirement_name("open_clip_torch==3.3.0") == "open_clip_torch"


# ---- which platforms ------------------------------------------------------------------

def _base(python="3.11.2", platform="linux", machine="x86_64", mac="", bits=64):
    return {"python": python, "platform": platform, "machine": machine, "mac": mac,
            "bits": bits}


def test_supported_platforms_pass_without_a_word():
    for info in (_base(), _base("3.13.5", machine="aarch64"),
                 _base("3.12.7", "win32", "AMD64"), _base("3.10.11", "darwin", "arm64", "14.5")):
        assert model_env.check_platform(info) == [], info


@pytest.mark.parametrize("info, says", [
    (_base("3.9.18", "darwin", "arm64", "14.1"),
     r"QGIS's Python is 3\.9\.18; .* need Python 3\.10 or newer: install a newer QGIS"),
    (_base("3.12.4", "win32", "x86", bits=32), r"32-bit build.*install the 64-bit QGIS"),
    (_base("3.12.4", "darwin", "x86_64", "13.6"),
     r"Intel \(x86_64\) macOS build.*since torch 2\.2.*Apple-silicon build \(this one runs "
     r"under Rosetta\)"),
])
def test_known_unsupported_platforms_are_refused_with_what_to_do(info, says):
    with pytest.raises(MamolInputError, match=says) as error:
        model_env.check_platform(info)
    assert "torch>=2.11,<2.14" in str(error.value)
    assert f"'{model_env.EXISTING_PYTHON_LABEL}'" in str(error.value)


def test_untested_platforms_are_warned_about():
    older_mac = model_env.check_platform(_base("3.11.9", "darwin", "arm64", "13.6.1"))
    assert older_mac == ["macOS 13.6.1: torch 2.13 has builds for macOS 14 or later only, so "
                         "pip will look for an older torch of torch>=2.11,<2.14; if it finds "
                         "none, update macOS."]
    assert "ppc64le" in model_env.check_platform(_base(machine="ppc64le"))[0]


@pytest.mark.subprocess
def test_an_unsupported_base_python_is_refused_before_pip_runs(tmp_path):
    """The check runs on what the base Python reports: a Python 3.9 is refused before any
    venv or pip (here a stand-in that reports 3.9 and has NumPy)."""
    fake = tmp_path / "python3.9"
    report = dict(_base("3.9.18"), numpy="1.24.2", missing=[])
    fake.write_text(f"#!/bin/sh\necho 'MAMOL-BASE {json.dumps(report)}'\n")
    fake.chmod(0o755)
    lines = []
    with pytest.raises(MamolInputError, match="need Python 3.10 or newer"):
        model_env.create_or_update(tmp_path / "env", str(fake), "cpu", "", log=lines.append)
    assert not any(line.startswith(("Creating a virtual", "pip install")) for line in lines)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["python3.9"]


# ---- which build was installed, and why -----------------------------------------------

def test_cpu_from_pypi_on_linux_x86_64_is_warned_about_before_installing():
    warning = model_env.cpu_build_warning("cpu", None, _base())
    assert "PyPI’s torch for Linux x86_64 is a CUDA build" in warning
    assert model_env.CPU_INDEX in warning and "'Torch package index' empty" in warning
    for build, index, info in (("cuda", None, _base()), ("cpu", model_env.CPU_INDEX, _base()),
                               ("cpu", None, _base(machine="aarch64")),
                               ("cpu", None, _base("3.12.4", "win32", "AMD64")),
                               ("cpu", None, _base("3.12.4", "darwin", "arm64", "14.2"))):
        assert model_env.cpu_build_warning(build, index, info) is None, (build, index, info)


def test_the_installed_build_is_named_with_the_reason_for_the_index():
    reason = model_env.index_reason("cpu", "pypi", "linux")
    line, warning = model_env.describe_build({"torch": "2.13.0+cu130", "cuda": "13.0"}, "cpu",
                                             None, reason)
    assert line == ("PyTorch build installed: CUDA 13.0 (torch 2.13.0+cu130), from pip’s "
                    "configured index (PyPI or your mirror): the Torch package index was set "
                    "to 'pypi'.")
    assert warning.startswith("The CPU build was asked for, but this index gave torch's "
                              "CUDA 13.0 build.")
    line, warning = model_env.describe_build(
        {"torch": "2.13.0+cpu", "cuda": None}, "cpu", model_env.CPU_INDEX,
        model_env.index_reason("cpu", None, "linux"))
    assert line == ("PyTorch build installed: CPU (torch 2.13.0+cpu), from "
                    f"{model_env.CPU_INDEX}: automatic for the CPU build.")
    assert warning is None
    assert model_env.index_reason("cuda", "https://mirror/whl", "linux") == \
        "it was given as the Torch package index"
    assert model_env.index_reason("cpu", None, "darwin").startswith("automatic on macOS")


# ---- QGIS's Python --------------------------------------------------------------------

def test_base_python_linux_inside_qgis():
    found = model_env.base_python("/usr/bin/qgis", "/usr", (3, 11), "linux",
                                  exists={"/usr/bin/python3.11", "/usr/bin/python3"}.__contains__)
    assert found == "/usr/bin/python3.11"


def test_base_python_osgeo4w():
    python = r"C:\OSGeo4W\apps\Python312\python.exe"
    found = model_env.base_python(r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312",
                                  (3, 12), "win32", exists={python}.__contains__)
    assert found == python


def test_base_python_macos_bundle():
    python = "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    found = model_env.base_python("/Applications/QGIS.app/Contents/MacOS/QGIS",
                                  "/Applications/QGIS.app/Contents/Frameworks", (3, 9),
                                  "darwin", exists={python}.__contains__)
    assert found == python


def test_base_python_is_the_executable_when_it_is_a_python():
    found = model_env.base_python("/opt/py/bin/python3.12", "/elsewhere", (3, 12), "linux",
                                  exists={"/opt/py/bin/python3.12"}.__contains__)
    assert found == "/opt/py/bin/python3.12"


def test_base_python_not_found_is_a_clear_error():
    with pytest.raises(MamolInputError, match="Cannot find QGIS's Python interpreter"):
        model_env.base_python("/usr/bin/qgis", "/usr", (3, 11), "linux",
                              exists=lambda path: False)


def test_base_python_here_is_the_venvs_base():
    found = model_env.base_python()
    assert Path(found).is_file()
    assert Path(found).parent == Path(sys.base_exec_prefix) / "bin"


# ---- which Python runs the engine -----------------------------------------------------

def _fake_env(folder: Path, marker: bool = False, windows: bool = False) -> Path:
    python = folder / ("Scripts/python.exe" if windows else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")
    if marker:
        (folder / model_env.MARKER_FILE).write_text("{}")
    return python


def test_engine_python_order(tmp_path):
    variable = _fake_env(tmp_path / "variable")
    setting = _fake_env(tmp_path / "setting")
    managed = _fake_env(tmp_path / "managed", marker=True)
    environ = {"MAMOL_PYTHON": str(tmp_path / "variable")}
    assert model_env.engine_python(environ, str(setting), tmp_path / "managed") == str(variable)
    assert model_env.engine_python({"MAMOL_PYTHON": str(variable)}, "", None) == str(variable)
    assert model_env.engine_python({}, str(tmp_path / "setting"), tmp_path / "managed") == \
        str(setting)
    assert model_env.engine_python({"MAMOL_PYTHON": " "}, "", tmp_path / "managed") == \
        str(managed)


def test_engine_python_windows_env_folder(tmp_path):
    python = _fake_env(tmp_path / "env", windows=True)
    assert model_env.engine_python({}, str(tmp_path / "env"), None, "win32") == str(python)


def test_engine_python_nothing_set_up(tmp_path):
    _fake_env(tmp_path / "managed")              # no marker: not completed
    for managed in (None, tmp_path / "managed", tmp_path / "absent"):
        with pytest.raises(MamolInputError, match="PyTorch is not set up for MaMOL yet: run "
                           r"'Install dependencies' \(Processing Toolbox → MaMOL land cover "
                           r"→ Setup\)") as error:
            model_env.engine_python({}, "", managed)
        assert "MAMOL_PYTHON" in str(error.value)


def test_engine_python_bad_variable_or_setting_is_an_error(tmp_path):
    _fake_env(tmp_path / "managed", marker=True)
    with pytest.raises(MamolInputError, match="environment variable MAMOL_PYTHON names .*nope"):
        model_env.engine_python({"MAMOL_PYTHON": str(tmp_path / "nope")}, "", tmp_path / "managed")
    with pytest.raises(MamolInputError, match="setting 'mamol/python' names .*empty"):
        (tmp_path / "empty").mkdir()
        model_env.engine_python({}, str(tmp_path / "empty"), tmp_path / "managed")


def test_default_env_dir():
    assert model_env.default_env_dir("/home/me/.local/share/QGIS/QGIS3/profiles/default/") == \
        Path("/home/me/.local/share/QGIS/QGIS3/profiles/default/mamol/python-env")


# ---- which build ----------------------------------------------------------------------

@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """An empty folder as the whole PATH; returns it (tests may put programs there)."""
    folder = tmp_path / "path"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def _fake_nvidia_smi(folder: Path, body: str) -> Path:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'arguments'}\n{body}\n")
    script.chmod(0o755)
    return script


def test_detect_nvidia_without_nvidia_smi(fake_path):
    assert model_env.detect_nvidia() is None


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for nvidia-smi")
def test_detect_nvidia_parses_nvidia_smi(fake_path):
    _fake_nvidia_smi(fake_path, "echo 'NVIDIA H200, 570.86.15, 143771'\n"
                                "echo 'NVIDIA RTX A6000, 570.86.15, [N/A]'\n"
                                "echo 'Tesla, Inc. T4, 535.1'\necho")
    assert model_env.detect_nvidia() == (("NVIDIA H200", "570.86.15", 143771),
                                         ("NVIDIA RTX A6000", "570.86.15", None),
                                         ("Tesla, Inc. T4", "535.1", None))
    assert (fake_path / "arguments").read_text().split() == [
        "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for nvidia-smi")
@pytest.mark.parametrize("body", ["echo 'NVIDIA-SMI has failed' >&2; exit 9", "true",
                                  "sleep 30"])
def test_detect_nvidia_failing_nvidia_smi(fake_path, body):
    _fake_nvidia_smi(fake_path, body)
    started = time.monotonic()
    assert model_env.detect_nvidia(timeout=2) is None
    assert time.monotonic() - started < 20


def test_build_and_index_choice():
    gpus = (model_env.NvidiaGpu("NVIDIA H200", "570.86.15"),)
    assert model_env.resolve_build("auto", gpus, "linux") == "cuda"
    assert model_env.resolve_build("auto", None, "linux") == "cpu"
    assert model_env.resolve_build("auto", gpus, "darwin") == "cpu"
    assert model_env.resolve_build("CPU", gpus, "win32") == "cpu"
    with pytest.raises(MamolInputError, match="no CUDA build for macOS"):
        model_env.resolve_build("cuda", gpus, "darwin")
    with pytest.raises(MamolInputError, match="Unknown build 'rocm'"):
        model_env.resolve_build("rocm", None, "linux")
    assert model_env.resolve_torch_index("cpu", None, "linux") == model_env.CPU_INDEX
    assert model_env.resolve_torch_index("cuda", None, "win32") == model_env.CUDA_INDEX
    assert model_env.resolve_torch_index("cpu", None, "darwin") is None
    # Automatic on a Mac: PyPI's default wheel, the one with Apple's GPU (MPS)
    mac_build = model_env.resolve_build("auto", None, "darwin")
    assert model_env.resolve_torch_index(mac_build, None, "darwin") is None
    for configured in ("", "pypi", " PyPI "):
        assert model_env.resolve_torch_index("cuda", configured, "linux") is None
    assert model_env.resolve_torch_index("cpu", "https://mirror/whl/", "linux") == \
        "https://mirror/whl/"


# ---- running pip ----------------------------------------------------------------------

@pytest.mark.subprocess
@pytest.mark.skipif(os.name == "nt", reason="checks the process group through /proc")
def test_cancel_stops_the_command_and_its_children():
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(child.pid, flush=True); time.sleep(60)")
    lines = []

    def check():
        if lines:
            raise Cancelled("Cancelled by the user; nothing was written.")

    started = time.monotonic()
    with pytest.raises(Cancelled):
        model_env.run_streaming([sys.executable, "-c", script], lines.append, check)
    assert time.monotonic() - started < 30
    grandchild = Path(f"/proc/{int(lines[0])}/status")
    deadline = time.monotonic() + 10
    while grandchild.exists() and "\nState:\tZ" not in grandchild.read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not grandchild.exists() or "\nState:\tZ" in grandchild.read_text()


PIP_NOT_FOUND = [
    "Looking in indexes: https://pypi.org/simple",
    "ERROR: Could not find a version that satisfies the requirement torch==0.0.0 "
    "(from versions: 2.12.0)",
    "ERROR: No matching distribution found for torch==0.0.0",
    "[notice] A new release of pip is available: 23.0.1 -> 26.0"]
PIP_CONFLICT = [
    "ERROR: Cannot install torch==0.0.0 because these package versions have conflicting "
    "dependencies.",
    "The conflict is caused by:",
    "    The user requested torch==0.0.0",
    "    The user requested (constraint) torch<=2.14.1,==0.0.0",
    "To fix this you could try to:",
    "1. loosen the range of package versions you've specified",
    "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/"]


def test_pips_meaningful_error_line():
    assert model_env._last_error(PIP_NOT_FOUND) == "No matching distribution found for torch==0.0.0"
    assert model_env._last_error(PIP_CONFLICT) == (
        "Cannot install torch==0.0.0 because these package versions have conflicting "
        "dependencies. The conflict is caused by: The user requested torch==0.0.0; The user "
        "requested (constraint) torch<=2.14.1,==0.0.0.")
    assert model_env._last_error(["Traceback (most recent call last):", "  File 'x'",
                                  "ModuleNotFoundError: No module named 'torch'"]) == \
        "ModuleNotFoundError: No module named 'torch'"
    assert model_env._last_error([]) == "no output"


def test_child_environment_drops_the_parents_python_path():
    env = model_env.child_environment({"PYTHONPATH": "/x", "PYTHONHOME": "/y", "PATH": "/bin",
                                       "PIP_INDEX_URL": "https://mirror"})
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert env["PATH"] == "/bin" and env["PIP_INDEX_URL"] == "https://mirror"


def test_refuses_a_folder_that_is_not_an_environment(tmp_path):
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "thesis.odt").write_text("keep me")
    with pytest.raises(MamolInputError, match="exists and is not a Python environment"):
        model_env.create_or_update(tmp_path / "documents", model_env.base_python(), "cpu", "")
    assert (tmp_path / "documents" / "thesis.odt").read_text() == "keep me"
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    with pytest.raises(MamolInputError, match="did not make, so it is left alone"):
        model_env.create_or_update(tmp_path / "venv", model_env.base_python(), "cpu", "")
    assert (tmp_path / "venv" / "pyvenv.cfg").is_file()


# ---- the algorithm --------------------------------------------------------------------

def run(parameters, feedback=None):
    import processing
    return processing.run(ALGORITHM, parameters, feedback=feedback)


@pytest.fixture
def kept_setting():
    """The user's 'mamol/python' setting as it was before the test, restored after it."""
    with qgis_session.kept_setting(model_env.SETTINGS_KEY) as settings:
        yield settings


def test_registered_with_metadata(mamol_provider):
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    assert algorithm is not None
    assert algorithm.displayName() == "Install dependencies"
    assert (algorithm.group(), algorithm.groupId()) == ("Setup", "setup")
    assert "MAMOL_PYTHON" in algorithm.shortHelpString()
    for name in ("BUILD", "TORCH_INDEX", "ENV_FOLDER", "EXISTING_PYTHON"):
        assert algorithm.parameterDefinition(name).help()
    assert algorithm.parameterDefinition("BUILD").options()[0].startswith("Automatic")


@pytest.mark.subprocess
def test_existing_python_without_torch_is_refused(mamol_provider, kept_setting):
    base = model_env.base_python()
    if subprocess.run([base, "-c", "import torch"], env=model_env.child_environment(),
                      capture_output=True).returncode == 0:
        pytest.skip("the base Python has torch itself")
    kept_setting.setValue(model_env.SETTINGS_KEY, "/earlier/choice")
    with pytest.raises(QgsProcessingException, match="No module named 'torch'"):
        run({"EXISTING_PYTHON": base})
    assert kept_setting.value(model_env.SETTINGS_KEY) == "/earlier/choice"


def _siblings(folder: Path):
    return sorted(path.name for path in folder.parent.iterdir() if path != folder)


@pytest.fixture(scope="module")
def installed_env(mamol_provider, tmp_path_factory):
    """One environment installed through the algorithm (CPU build, pip's configured index)
    into a folder of its own: (folder, results, feedback, setting after the run)."""
    folder = tmp_path_factory.mktemp("model-env") / "python-env"
    settings = QgsSettings()
    before = settings.value(model_env.SETTINGS_KEY, None)
    feedback = recording_feedback()
    started = time.monotonic()
    try:
        results = run({"BUILD": 1, "TORCH_INDEX": "pypi", "ENV_FOLDER": str(folder)},
                      feedback)
        setting = settings.value(model_env.SETTINGS_KEY, "")
    finally:
        if before is None:
            settings.remove(model_env.SETTINGS_KEY)
        else:
            settings.setValue(model_env.SETTINGS_KEY, before)
    print(f"installed in {time.monotonic() - started:.0f} s")
    return folder, results, feedback, setting


def _probe(python) -> dict:
    """What the engine would import, run by ``python`` (open_clip through the plugin's
    torch_compat, as the engine does)."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
              "from mamol.core import torch_compat; torch_compat.import_open_clip(); "
              "import numpy, safetensors, torch; from osgeo import gdal; "
              "print(json.dumps({'prefix': sys.prefix, 'torch': torch.__version__, "
              "'cuda': torch.version.cuda or '', "
              "'numpy': numpy.__version__, 'torch_file': torch.__file__}))")
    done = subprocess.run([str(python), "-c", script, str(PLUGINS_DIR)], capture_output=True,
                          text=True, env=model_env.child_environment(), timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.subprocess
@pytest.mark.slow
def test_install_makes_a_working_environment(installed_env):
    folder, results, feedback, setting = installed_env
    python = folder / "bin" / "python"
    assert results["PYTHON"] == str(python)
    marker = json.loads((folder / model_env.MARKER_FILE).read_text())
    assert marker["build"] == "cpu" and marker["versions"]["torch"].startswith("2.13.0")
    probe = _probe(python)
    assert Path(probe["prefix"]) == folder          # works from its final place
    assert Path(probe["torch_file"]).is_relative_to(folder)   # its own torch, not the venv's
    import numpy
    assert probe["numpy"] == numpy.__version__      # QGIS's NumPy kept
    assert _siblings(folder) == []                  # no *.new-*, no *.old-*
    assert ".new-" not in (folder / "pyvenv.cfg").read_text()
    pip = subprocess.run([str(folder / "bin" / "pip"), "--version"], capture_output=True,
                         text=True, env=model_env.child_environment())
    assert pip.returncode == 0 and str(folder) in pip.stdout   # scripts fixed up too
    assert any(line.startswith("Successfully installed") for line in feedback.info)
    # which build, from where and why; CPU from pip's configured index is warned about. That
    # index gives the CPU build on Debian 12 here (a local CPU wheel) and PyPI's CUDA build in
    # the Debian 13 root, where the CPU build was asked for: said as a warning too.
    cuda = probe["cuda"]
    kind = f"CUDA {cuda}" if cuda else "CPU"
    assert f"PyTorch build installed: {kind} (torch {probe['torch']}), from pip’s configured " \
        "index (PyPI or your mirror): the Torch package index was set to 'pypi'." \
        in feedback.info
    assert [warning for warning in feedback.warnings if "Linux x86_64 is a CUDA build" in warning]
    assert bool(cuda) == any(f"this index gave torch's {kind} build" in warning
                             for warning in feedback.warnings)
    assert marker["requirements"][:2] == ["torch>=2.11,<2.14", "torchvision>=0.26,<0.29"]
    assert not model_env.pip_log_path(folder).exists()        # kept only when pip fails
    assert any("NVIDIA" in line for line in feedback.info)     # the driver check is reported
    # a folder of one's own is remembered, and the launcher finds it
    assert setting == str(folder)
    assert model_env.engine_python({}, setting, None) == str(python)
    assert model_env.engine_python({}, "", folder) == str(python)


@pytest.mark.subprocess
@pytest.mark.slow
def test_failed_update_keeps_the_environment(installed_env, monkeypatch, kept_setting):
    folder = installed_env[0]
    marker = (folder / model_env.MARKER_FILE).read_text()
    monkeypatch.setenv("MAMOL_TORCH_PIN", "torch==0.0.0")
    # pip says "No matching distribution found for torch==0.0.0", or, where its
    # configuration constrains torch too (as here), that torch==0.0.0 cannot be installed
    with pytest.raises(QgsProcessingException,
                       match=r"Installing PyTorch failed: the (requirements conflict|index has "
                       r"no build of these versions).* pip said: “.*torch==0\.0\.0") as error:
        run({"BUILD": 1, "TORCH_INDEX": "pypi", "ENV_FOLDER": str(folder)})
    assert (folder / model_env.MARKER_FILE).read_text() == marker
    assert _probe(folder / "bin" / "python")["torch"].startswith("2.13.0")
    # pip's full log is kept next to the folder, and the message says where
    log_path = model_env.pip_log_path(folder)
    assert str(error.value).endswith(f"pip's full log: {log_path}.")
    assert _siblings(folder) == [log_path.name]


@pytest.mark.subprocess
@pytest.mark.slow
def test_cancel_keeps_the_environment(installed_env, kept_setting):
    folder = installed_env[0]
    marker = (folder / model_env.MARKER_FILE).read_text()
    feedback = recording_feedback()
    original = feedback.pushInfo

    def cancel_at_first_pip_line(info):
        original(info)
        if info.startswith(("Collecting", "Processing", "Looking in", "Requirement")):
            feedback.cancel()

    feedback.pushInfo = cancel_at_first_pip_line
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run({"BUILD": 1, "TORCH_INDEX": "pypi", "ENV_FOLDER": str(folder)}, feedback)
    assert any(line.startswith("pip install") for line in feedback.info)
    assert (folder / model_env.MARKER_FILE).read_text() == marker
    assert _siblings(folder) == []


@pytest.mark.subprocess
@pytest.mark.slow
def test_use_an_existing_environment(installed_env, kept_setting):
    folder = installed_env[0]
    kept_setting.remove(model_env.SETTINGS_KEY)
    feedback = recording_feedback()
    results = run({"EXISTING_PYTHON": str(folder)}, feedback)
    assert results["PYTHON"] == str(folder / "bin" / "python")
    assert kept_setting.value(model_env.SETTINGS_KEY) == str(folder)
    assert any("torch 2.13.0" in line for line in feedback.info)


@pytest.mark.subprocess
@pytest.mark.slow
def test_train_and_classify_through_the_installed_environment(installed_env, kept_setting,
                                                               small_scene, tmp_path,
                                                               monkeypatch):
    """The algorithms find the environment through the setting alone (no MAMOL_PYTHON) and
    the engine trains and classifies the sample scene in it."""
    import processing
    folder = installed_env[0]
    monkeypatch.delenv("MAMOL_PYTHON", raising=False)
    kept_setting.setValue(model_env.SETTINGS_KEY, str(folder))
    feedback = recording_feedback()
    common = {"HS": str(small_scene.hs), "LIDAR": str(small_scene.lidar), "DEVICE": "cpu"}
    model = processing.run("mamol:trainmodel", dict(
        common, POLYGONS=str(small_scene.training_polygons), CLASS_FIELD="class_id",
        BACKBONE="mamol-tiny-vit", WEIGHTS=2, PATCH_SIZE=5, EPOCHS=1,
        MAX_SAMPLES_PER_CLASS=20, OUTPUT_MODEL=str(tmp_path / "m.mamol"),
        OUTPUT_REPORT=str(tmp_path / "r.html")), feedback=feedback)
    classes = processing.run("mamol:classify", dict(
        common, MODEL=model["OUTPUT_MODEL"], STRIDE=8, OUTPUT=str(tmp_path / "c.tif")),
        feedback=feedback)
    assert Path(classes["OUTPUT"]).is_file()
    engines = [line for line in feedback.debug if line.startswith("Engine: ")]
    assert len(engines) == 2
    assert all(line.startswith(f"Engine: {folder / 'bin' / 'python'} -m mamol ")
               for line in engines)
    assert any(line.startswith("epoch 1") for line in feedback.info)


# ---- removing the environment ---------------------------------------------------------

def _made_env(folder: Path, payload: int = 3_000_000) -> Path:
    """A stand-in for an environment 'Install dependencies' made: a venv's pyvenv.cfg, a
    python link to the base Python (not counted, not followed), the marker, and
    ``payload`` bytes of packages."""
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (folder / "bin" / "python").symlink_to(sys.executable)
    (folder / model_env.MARKER_FILE).write_text("{}")
    site = folder / "lib" / "site-packages" / "torch"
    site.mkdir(parents=True)
    (site / "lib.so").write_bytes(b"\0" * payload)
    return folder


def test_remove_environment_removes_what_install_made(tmp_path):
    env = _made_env(tmp_path / "python-env")
    size = model_env.folder_size(env)
    assert 3_000_000 < size < 3_001_000                  # the link to Python not followed
    interrupted = tmp_path / "python-env.new-0a1b2c3d"   # an install killed half-way
    (interrupted / "lib").mkdir(parents=True)
    (interrupted / "lib" / "part").write_bytes(b"\0" * 1000)
    model_env.pip_log_path(env).write_text("pip's log of a failed run\n")
    keep = [tmp_path / "python-env.bak", tmp_path / "python-env.new-notours", tmp_path / "notes"]
    for folder in keep:
        folder.mkdir()
    removal = model_env.remove_environment(env)
    assert removal.removed == (env, interrupted)
    assert removal.freed_bytes == size + 1000 + len("pip's log of a failed run\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f.name for f in keep)
    assert Path(sys.executable).is_file()                # the link's target is untouched
    assert model_env.remove_environment(env) == (((), 0))   # nothing there: nothing removed


def test_remove_environment_never_removes_an_environment_it_did_not_make(tmp_path):
    own = _made_env(tmp_path / "my-conda-env")
    (own / model_env.MARKER_FILE).unlink()               # the user's own environment
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.odt").write_text("keep me")
    link = tmp_path / "link-to-env"
    link.symlink_to(_made_env(tmp_path / "made"))
    for folder in (own, documents, link):
        with pytest.raises(MamolInputError, match="was not made by 'Install dependencies' "
                           r"\(it has no mamol-env.json\), so it is left alone"):
            model_env.remove_environment(folder)
    assert (own / "pyvenv.cfg").is_file() and (documents / "thesis.odt").is_file()
    assert (tmp_path / "made" / model_env.MARKER_FILE).is_file() and link.is_symlink()
