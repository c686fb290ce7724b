"""The model environment: a Python virtual environment with PyTorch for MaMOL's engine.

PyTorch does not run inside QGIS's process: the engine (``python -m mamol ...``) runs in a
child Python, and this module says which one and how to make it. The managed environment
is a venv made from QGIS's own Python with ``--system-site-packages`` (so it sees QGIS's
``osgeo`` and NumPy, which are built against each other) plus PyTorch of a tested range
(:data:`TORCH_RANGE`) and the pinned packages besides.

Only the plugin uses it (``mamol:installdependencies``, and the engine runner to find the
engine's Python), so it lives with the algorithms, not in the pip package's ``core/``; yet it
imports no QGIS, so that its tests need none: progress, log lines and cancellation are plain
callables (see :mod:`core.feedback`), errors the user can act on are
:class:`~core.errors.MamolInputError`, and pip and the probes run through
:mod:`algorithms.child_process`.

Test hook: the environment variable ``MAMOL_TORCH_PIN`` (e.g. ``torch==0.0.0``) replaces
the torch requirement (:func:`requirements`) when an environment is created, so a test can
make pip fail for certain. It is meant for tests only.
"""
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..core.errors import MamolInputError
from ..core.feedback import CancelCheck, ProgressCallback, Reporter
from ..core.system import CUDA_INDEX, NvidiaGpu, detect_nvidia  # noqa: F401 - the installer's
from . import child_process

#: The engine's packages, pinned exactly (the same pins as requirements.txt): what CI and
#: the Makefile install, and the newest release of :data:`TORCH_RANGE`.
PINNED_PACKAGES = ("torch==2.13.0", "torchvision==0.28.0", "open_clip_torch==3.3.0",
                   "safetensors==0.8.0")
#: The PyTorch releases a model environment accepts instead of the exact pins: those the
#: tests ran on, from the GPU machine's torch 2.11 (pyproject.toml's lower bound) to CI's
#: 2.13.0. pip takes the newest one with a build for the platform and Python, so a Mac or
#: a Python that 2.13.0 has no build for can still get an older tested one. torchvision
#: follows torch (0.26 pairs with 2.11, 0.28 with 2.13).
#: Install dependencies' parameter that takes a Python instead of installing one (messages
#: here name it).
EXISTING_PYTHON_LABEL = "Existing Python to use instead"
TORCH_RANGE = {"torch": ">=2.11,<2.14", "torchvision": ">=0.26,<0.29"}
#: The oldest Python the engine runs on (pyproject.toml's requires-python; torch 2.11 has
#: no build for an older one either).
MIN_PYTHON = (3, 10)
#: The machines (``platform.machine()``, lower case) PyTorch publishes builds of
#: :data:`TORCH_RANGE` for, by ``sys.platform``; Linux x86_64 is the one CI tests.
SUPPORTED_MACHINES = {"linux": ("x86_64", "aarch64"), "win32": ("amd64",),
                      "darwin": ("arm64",)}
#: Packages the engine needs that the base Python usually has already (Debian's and
#: OSGeo4W's QGIS ship them); installed only when the base Python cannot import them.
OPTIONAL_BASE_PACKAGES = (("jinja2", "jinja2"), ("matplotlib", "matplotlib"))
#: Test hook (see the module's docstring): replaces the torch pin.
TORCH_PIN_VARIABLE = "MAMOL_TORCH_PIN"
#: Environment variable naming the engine's Python (an executable or an environment
#: folder); it overrides every setting.
PYTHON_VARIABLE = "MAMOL_PYTHON"
#: The QgsSettings key of a user-chosen Python (an executable or an environment folder).
SETTINGS_KEY = "mamol/python"
#: Written into an environment once it is complete and checked.
MARKER_FILE = "mamol-env.json"
#: The package indexes of PyTorch's own builds (torch and torchvision only; CUDA_INDEX is
#: declared with the GPU facts in core.system).
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Values of ``torch_index`` that mean "pip's own configured index" (PyPI or a mirror).
CONFIGURED_INDEX = ("", "pypi")
BUILDS = ("auto", "cpu", "cuda")
#: Seconds pip or a probe may take to stop after a cancel before it is killed.
STOP_GRACE_SECONDS = 5.0

SETUP_HINT = ("run 'Install dependencies' (Processing Toolbox → MaMOL land cover → Setup), "
              "or set an existing Python environment in its 'Use an existing Python "
              "environment instead' parameter or in the environment variable MAMOL_PYTHON")

LogCallback = Callable[[str], None]

# Python's own variables that would make a child Python see the parent's packages or
# home; everything else (PATH for GDAL's DLLs, proxies, PIP_* configuration) is kept.
_PARENT_PYTHON_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                            "PYTHONUSERBASE", "PYTHONSAFEPATH", "__PYVENV_LAUNCHER__",
                            "VIRTUAL_ENV", "CONDA_PREFIX")


def _is_windows(platform: Optional[str]) -> bool:
    return (platform or sys.platform).startswith("win")


def child_environment(environ: Optional[Mapping[str, str]] = None) -> dict:
    """``environ`` (default ``os.environ``) without the variables that would make a child
    Python import the parent's packages (``PYTHONPATH``, ``PYTHONHOME``, ...), with
    unbuffered UTF-8 output. For pip, the checks, and the engine's launcher."""
    env = dict(os.environ if environ is None else environ)
    for name in _PARENT_PYTHON_VARIABLES:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# ---- which Python ----------------------------------------------------------------------

def base_python(executable: Optional[str] = None, exec_prefix: Optional[str] = None,
                version_info: Optional[Sequence[int]] = None,
                platform: Optional[str] = None,
                exists: Callable[[str], bool] = os.path.isfile) -> str:
    """The path of QGIS's own Python interpreter, the base of the managed environment.

    Inside QGIS ``sys.executable`` may be the QGIS binary, so the interpreter is looked
    for under ``exec_prefix`` (default ``sys.base_exec_prefix``, which is QGIS's Python
    even when this runs in a venv): ``<prefix>/python.exe`` on Windows (OSGeo4W:
    ``<root>/apps/Python312``), ``<prefix>/bin/python3.X`` elsewhere; then the executable
    itself if it is a Python; then, in a macOS app bundle, ``Contents/MacOS/bin/python3``.
    ``exists`` is the file test (replaceable for tests of the path logic).
    """
    executable = sys.executable if executable is None else executable
    exec_prefix = sys.base_exec_prefix if exec_prefix is None else exec_prefix
    version_info = sys.version_info if version_info is None else version_info
    windows = _is_windows(platform)
    path_type = PureWindowsPath if windows else PurePosixPath
    major, minor = int(version_info[0]), int(version_info[1])
    names = ["python.exe"] if windows else [f"python{major}.{minor}", f"python{major}",
                                            "python"]
    candidates: List[str] = []
    if exec_prefix:
        prefix = path_type(exec_prefix)
        folder = prefix if windows else prefix / "bin"
        candidates += [str(folder / name) for name in names]
    if executable:
        exe = path_type(executable)
        stem = exe.name.lower()
        if stem.endswith(".exe"):
            stem = stem[:-4]
        if re.fullmatch(r"python(\d+(\.\d+)?)?", stem):
            candidates.append(str(exe))
        parts = exe.parts
        for index, part in enumerate(parts):
            if part.endswith(".app") and parts[index + 1:index + 2] == ("Contents",):
                bundle_bin = path_type(*parts[:index + 1]) / "Contents" / "MacOS" / "bin"
                candidates += [str(bundle_bin / name) for name in names]
                break
    for candidate in candidates:
        if exists(candidate):
            return candidate
    raise MamolInputError(
        f"Cannot find QGIS's Python interpreter (looked for {', '.join(candidates) or '-'}). "
        "Set an existing Python environment with PyTorch instead, or the environment "
        "variable MAMOL_PYTHON.")


def env_python(env_dir, platform: Optional[str] = None) -> Path:
    """The Python executable of the virtual environment ``env_dir``."""
    env_dir = Path(env_dir)
    if _is_windows(platform):
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def default_env_dir(profile_folder) -> Path:
    """The managed environment's folder: ``<QGIS profile folder>/mamol/python-env`` (the
    algorithm passes ``QgsApplication.qgisSettingsDirPath()``)."""
    return Path(profile_folder) / "mamol" / "python-env"


def read_marker(env_dir) -> Optional[dict]:
    """The marker of a completed environment (versions, build, ...), or None."""
    try:
        return json.loads((Path(env_dir) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def python_of(path, platform: Optional[str] = None) -> Optional[Path]:
    """The Python executable that ``path`` names: the file itself, or the executable of an
    environment folder (``bin/python``, ``Scripts/python.exe``, or a conda env's
    ``python.exe``); None if there is none."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [env_python(path, platform)]
        if _is_windows(platform):
            candidates.append(path / "python.exe")
        else:
            candidates.append(path / "bin" / "python3")
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    return None


def engine_python(environ: Optional[Mapping[str, str]] = None, setting: str = "",
                  managed_env=None, platform: Optional[str] = None) -> str:
    """The Python executable that runs MaMOL's engine (:func:`engine_python_choice`)."""
    return engine_python_choice(environ, setting, managed_env, platform)[0]


def engine_python_choice(environ: Optional[Mapping[str, str]] = None, setting: str = "",
                         managed_env=None, platform: Optional[str] = None) -> Tuple[str, str]:
    """(the Python executable that runs MaMOL's engine, how it was chosen), in this order:

    1. the environment variable ``MAMOL_PYTHON`` in ``environ`` (default ``os.environ``):
       an executable or an environment folder;
    2. ``setting``, the user's choice (QgsSettings ``mamol/python``): the same;
    3. the managed environment ``managed_env`` (see :func:`default_env_dir`) once
       'Install dependencies' completed it (its marker file exists).

    A variable or setting that names nothing usable is an error (not skipped); with
    nothing set up the error says how to set it up.
    """
    environ = os.environ if environ is None else environ
    for value, origin in ((environ.get(PYTHON_VARIABLE, ""), "The environment variable "
                           "MAMOL_PYTHON"),
                          (setting or "", "The MaMOL setting 'mamol/python'")):
        value = str(value).strip()
        if not value:
            continue
        python = python_of(value, platform)
        if python is None:
            raise MamolInputError(
                f"{origin} names {value}, which is neither a Python executable nor a "
                f"Python environment folder. Correct it, or {SETUP_HINT}.")
        return str(python), f"{origin[0].lower()}{origin[1:]} ({value})"
    if managed_env is not None and read_marker(managed_env) is not None:
        python = env_python(managed_env, platform)
        if python.is_file():
            return str(python), f"the environment 'Install dependencies' made ({managed_env})"
    raise MamolInputError(f"PyTorch is not set up for MaMOL yet: {SETUP_HINT}.")


# ---- which build ----------------------------------------------------------------------

def resolve_build(build: str, gpus: Optional[Sequence[NvidiaGpu]] = None,
                  platform: Optional[str] = None) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda' ('auto' is CUDA when ``gpus`` is not
    empty; there are no CUDA builds for macOS)."""
    text = (build or "auto").strip().lower()
    if text not in BUILDS:
        raise MamolInputError(f"Unknown build '{build}': choose one of {', '.join(BUILDS)}.")
    mac = (platform or sys.platform) == "darwin"
    if text == "auto":
        return "cuda" if gpus and not mac else "cpu"
    if text == "cuda" and mac:
        raise MamolInputError("PyTorch has no CUDA build for macOS: choose the CPU build "
                              "(it uses Apple's GPU through MPS where there is one).")
    return text


def resolve_torch_index(build: str, torch_index: Optional[str] = None,
                        platform: Optional[str] = None) -> Optional[str]:
    """The index for torch and torchvision, or None for pip's configured index.

    ``torch_index`` None means automatic: PyTorch's CPU or CUDA index on Linux and
    Windows, pip's configured index (PyPI) on macOS. "" or "pypi" means pip's configured
    index; anything else is the index URL itself."""
    if torch_index is not None:
        text = torch_index.strip()
        return None if text.lower() in CONFIGURED_INDEX else text
    if (platform or sys.platform) == "darwin":
        return None
    return CUDA_INDEX if build == "cuda" else CPU_INDEX


def index_reason(build: str, torch_index: Optional[str] = None,
                 platform: Optional[str] = None) -> str:
    """Why :func:`resolve_torch_index` chose the index it did, for the log."""
    if torch_index is not None:
        if torch_index.strip().lower() in CONFIGURED_INDEX:
            return "the Torch package index was set to 'pypi'"
        return "it was given as the Torch package index"
    if (platform or sys.platform) == "darwin":
        return "automatic on macOS, where PyPI's build is the one (it uses Apple's GPU)"
    return f"automatic for the {build.upper()} build"


def index_name(index: Optional[str]) -> str:
    """An index URL, or what None stands for."""
    return index or "pip’s configured index (PyPI or your mirror)"


def cpu_build_warning(build: str, index: Optional[str],
                      info: Mapping[str, object]) -> Optional[str]:
    """A warning, before installing, when the CPU build is asked for from pip's configured
    index on Linux x86_64, where PyPI's torch is a CUDA build; else None. ``info``: the
    base Python's ``platform`` and ``machine`` (see :func:`check_platform`)."""
    on_linux_x86 = str(info["platform"]).startswith("linux") and \
        str(info["machine"]).lower() in ("x86_64", "amd64")
    if build != "cpu" or index is not None or not on_linux_x86:
        return None
    return ("The CPU build was asked for, but torch comes from pip’s configured index, and "
            "PyPI’s torch for Linux x86_64 is a CUDA build (about 4.7 GB with its NVIDIA "
            "libraries; it runs on a CPU too). For the CPU build (about 1 GB), leave "
            f"'Torch package index' empty (PyTorch’s CPU index, {CPU_INDEX}).")


def describe_build(versions: Mapping[str, object], build: str, index: Optional[str],
                   reason: str) -> Tuple[str, Optional[str]]:
    """(a log line saying which torch build was installed, from where and why; a warning
    when it is a CUDA build though the CPU build was asked for, else None)."""
    kind = f"CUDA {versions['cuda']}" if versions.get("cuda") else "CPU"
    line = (f"PyTorch build installed: {kind} (torch {versions['torch']}), from "
            f"{index_name(index)}: {reason}.")
    warning = None
    if build == "cpu" and versions.get("cuda"):
        warning = (f"The CPU build was asked for, but this index gave torch's {kind} build. "
                   "It runs on a CPU too, but it is several GB larger; for the CPU build, "
                   "run 'Install dependencies' again with 'Torch package index' empty "
                   f"(PyTorch’s CPU index, {CPU_INDEX}).")
    return line, warning


def requirement_name(requirement: str) -> str:
    """The project name a requirement line starts with (``torch`` of ``torch>=2.11``)."""
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)


def requirements(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
    """What a model environment installs: :data:`PINNED_PACKAGES` with torch and
    torchvision widened to :data:`TORCH_RANGE`, and the torch requirement replaced by the
    test hook ``MAMOL_TORCH_PIN`` when it is set."""
    environ = os.environ if environ is None else environ
    override = environ.get(TORCH_PIN_VARIABLE, "").strip()
    wanted = []
    for pin in PINNED_PACKAGES:
        name = requirement_name(pin)
        if name == "torch" and override:
            wanted.append(override)
        else:
            wanted.append(name + TORCH_RANGE[name] if name in TORCH_RANGE else pin)
    return tuple(wanted)


# ---- which platforms -------------------------------------------------------------------

def check_platform(info: Mapping[str, object]) -> List[str]:
    """Refuse a base Python that no PyTorch build of :data:`TORCH_RANGE` exists for, before
    pip runs, saying what to do; return warnings for a platform that is merely untested.

    ``info``: what the base Python reports (see ``_BASE_SCRIPT``): ``python`` ("3.11.2"),
    ``platform`` (``sys.platform``), ``machine`` (``platform.machine()``), ``bits`` (of a
    pointer) and ``mac`` (the macOS version, "" elsewhere)."""
    python = tuple(int(part) for part in str(info["python"]).split(".")[:2])
    system, machine = str(info["platform"]), str(info["machine"]).lower()
    system = "win32" if system.startswith("win") else system
    own = (f"use a Python environment of your own with PyTorch ({_range_text()}) through "
           f"Install dependencies' '{EXISTING_PYTHON_LABEL}' or MAMOL_PYTHON")
    if python < MIN_PYTHON:
        raise MamolInputError(
            f"QGIS's Python is {info['python']}; MaMOL's engine and PyTorch ({_range_text()}) "
            f"need Python {'.'.join(map(str, MIN_PYTHON))} or newer: install a newer QGIS "
            f"(its Python is the base of the environment), or {own}.")
    if int(info.get("bits") or 64) != 64:
        raise MamolInputError(f"QGIS's Python is a 32-bit build, and PyTorch has 64-bit "
                              f"builds only: install the 64-bit QGIS, or {own}.")
    if system == "darwin" and machine == "x86_64":
        raise MamolInputError(
            "QGIS's Python is an Intel (x86_64) macOS build, and PyTorch has published no "
            f"Intel macOS builds since torch 2.2, older than MaMOL's {_range_text()}. On an "
            "Apple-silicon Mac, install QGIS's Apple-silicon build (this one runs under "
            f"Rosetta); on an Intel Mac, {own}.")
    warnings = []
    if machine not in SUPPORTED_MACHINES.get(system, ()):
        warnings.append(f"{system} on {machine} is not a platform PyTorch publishes builds "
                        "of MaMOL's tested versions for; pip may find none.")
    mac = tuple(int(part) for part in str(info.get("mac") or "0").split(".")[:1])
    if system == "darwin" and mac < (14,):
        warnings.append(f"macOS {info['mac']}: torch 2.13 has builds for macOS 14 or later "
                        f"only, so pip will look for an older torch of {_range_text()}; "
                        "if it finds none, update macOS.")
    return warnings


def _range_text() -> str:
    return "torch" + TORCH_RANGE["torch"]


# ---- running programs -----------------------------------------------------------------

def run_streaming(command: Sequence[str], on_line: Callable[[str], None],
                  check: CancelCheck, env: Optional[Mapping[str, str]] = None) -> int:
    """Run ``command``, hand each line of its output (stdout and stderr) to ``on_line`` as
    it comes, and return its exit status. ``check`` is called often and may raise
    :class:`~core.errors.Cancelled`: then the command and its children are stopped first
    (asked to, then killed after :data:`STOP_GRACE_SECONDS`)."""
    def relay(_stream: str, line: str) -> None:
        line = line.rstrip()
        if line:
            on_line(line)

    # ``check`` raises rather than answers: the runner stops the child, then re-raises
    return child_process.run(list(command), relay, STOP_GRACE_SECONDS, is_cancelled=check,
                             env=dict(env) if env is not None else child_environment(),
                             merge_stderr=True).status


def _last_error(lines: Sequence[str]) -> str:
    """pip's meaningful error ("No matching distribution found for torch==0.0.0"; for a
    conflict, what conflicts and why), else the last line of output."""
    errors = [line[len("ERROR:"):].strip() for line in lines if line.startswith("ERROR:")]
    for error in reversed(errors):
        if error.startswith("Cannot install"):
            # the lines after "The conflict is caused by:" say which requirements clash
            start = next((i for i, line in enumerate(lines)
                          if line.strip() == "The conflict is caused by:"), None)
            causes = []
            for line in lines[start + 1:] if start is not None else ():
                if not line.startswith((" ", "\t")):
                    break
                causes.append(line.strip())
            return error + (" The conflict is caused by: " + "; ".join(causes) + "."
                            if causes else "")
    errors = [error for error in errors if not error.startswith("ResolutionImpossible")]
    if errors:
        return errors[-1]
    for line in reversed(lines):
        text = line.strip()
        if text and not text.startswith(("[notice]", "WARNING:")):
            return text
    return "no output"


class PipCause(NamedTuple):
    """One reason pip fails: its lines match ``pattern``; ``summary`` and ``advice`` are
    what the user reads."""
    name: str
    pattern: str
    summary: str
    advice: str


_INDEX_SETTING = ("'Torch package index', or pip’s index-url (pip.conf or PIP_INDEX_URL) for "
                  "the other packages")

#: The causes of a failed ``pip install``, most specific first: a network failure makes
#: pip say "No matching distribution" (or report a conflict) as well, so it is looked for
#: first; pip logs some of them (an HTTP status of the index page) only in its log file.
PIP_CAUSES = (
    PipCause("disk-full", r"No space left on device|\[Errno 28\]|not enough space on the disk",
             "the disk is full",
             "Free some space (the CUDA build needs about 5 GB in the environment folder, "
             "and pip's cache as much again; 'pip cache purge' empties the cache), or choose "
             "an 'Environment folder' on another disk."),
    PipCause("certificate", r"CERTIFICATE_VERIFY_FAILED|SSLCertVerificationError|certificate "
             r"verify failed|problem confirming the ssl certificate|SSLError",
             "the package index's TLS certificate could not be verified",
             "A proxy or security software that inspects HTTPS usually causes this: give pip "
             "your organisation's CA certificate bundle (PIP_CERT, or 'cert = <file>' in "
             "pip.conf), or ask your IT which package index to use."),
    PipCause("proxy", r"ProxyError|Cannot connect to proxy|407 Proxy Authentication",
             "the proxy could not be reached or refused the connection",
             "Check the proxy settings pip uses (HTTPS_PROXY and HTTP_PROXY, or 'proxy = ' in "
             "pip.conf), with the user name and password where the proxy needs them."),
    PipCause("http", r"\b(?!404)[45]\d\d (?:Client|Server) Error|HTTP error (?!404)[45]\d\d",
             "the package index answered HTTP {status}",
             "401 or 403: the index refuses access (a firewall, or a mirror that needs a "
             f"login); 5xx: the index has a fault, try later. Check {_INDEX_SETTING}."),
    PipCause("unreachable", r"NewConnectionError|Failed to establish a new connection|"
             r"Connection refused|Network is unreachable|Name or service not known|"
             r"Temporary failure in name resolution|nodename nor servname|getaddrinfo failed|"
             r"ConnectTimeoutError|ReadTimeoutError|Read timed out|timed out",
             "the package index could not be reached",
             "Check the internet connection and that the index is reachable from here "
             "(pypi.org, files.pythonhosted.org and download.pytorch.org, unless you use a "
             f"mirror); behind a proxy, set HTTPS_PROXY. Check {_INDEX_SETTING}."),
    PipCause("conflict", r"ResolutionImpossible|conflicting dependencies",
             "the requirements conflict",
             "pip's lines above say which packages clash; a constraint in pip's own "
             "configuration (PIP_CONSTRAINT, 'constraint =' in pip.conf) or a package of the "
             "base Python is a usual cause."),
    PipCause("not-found", r"\b404 Client Error|HTTP error 404",
             "the package index answered HTTP 404 (not found)",
             f"The address is not a package index, or it lacks these packages: check "
             f"{_INDEX_SETTING}."),
    PipCause("no-match", r"No matching distribution found|Could not find a version that "
             r"satisfies",
             "the index has no build of these versions for this platform and Python",
             f"PyTorch ({_range_text()}) has builds for 64-bit Python "
             f"{'.'.join(map(str, MIN_PYTHON))} or newer on Linux (x86_64, aarch64), Windows "
             "(x86_64) and Apple-silicon Macs (torch 2.13: macOS 14 or later); with your own "
             "index, check that it has them."),
)

_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.,]+ ")


def classify_pip(lines: Sequence[str], log_text: str = "") -> Tuple[Optional[PipCause], str]:
    """(the cause of a failed pip run, or None; pip's own line that shows it) from pip's
    output ``lines`` and the text of its ``--log`` file (which has what pip logs at debug
    level only, e.g. "Could not fetch URL ...: 403 Client Error")."""
    logged = [_LOG_STAMP.sub("", line).strip() for line in log_text.splitlines()]
    seen = [line.strip() for line in [*lines, *logged]]
    # pip's "Could not fetch URL <url>: <why>" names the address too: quoted when it shows
    seen = [line for line in seen if line.startswith("Could not fetch URL")] + seen
    for cause in PIP_CAUSES:
        pattern = re.compile(cause.pattern, re.IGNORECASE)
        found = next((line for line in seen if pattern.search(line)), None)
        if found is None:
            continue
        if cause.name in ("conflict", "no-match"):
            found = _last_error(lines)
        found = re.sub(r"^(ERROR|WARNING): | - skipping$", "", found)
        found = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>: ", "", found)   # urllib3's noise
        return cause, found if len(found) <= 400 else found[:400] + " …"
    return None, _last_error(lines)


def pip_failure(lines: Sequence[str], log_text: str = "", log_path=None) -> str:
    """What to tell the user when pip failed: the cause, pip's own line, what to do."""
    cause, line = classify_pip(lines, log_text)
    where = f" pip's full log: {log_path}." if log_path else ""
    if cause is None:
        return f"{line}.{where}"
    status = re.search(r"\b([45]\d\d)\b", line)
    summary = cause.summary.format(status=status.group(1) if status else "an error")
    return f"{summary}. pip said: “{line}”. {cause.advice}{where}"


# What the engine imports, through the plugin's own torch_compat (argv: the folder that
# holds the plugin's package, and the package's name), which copes with a CUDA torchvision
# next to CPU torch.
_CHECK_SCRIPT = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
torch_compat = importlib.import_module(sys.argv[2] + ".core.torch_compat")
open_clip = torch_compat.import_open_clip()
import numpy, safetensors, torch, torchvision
from osgeo import gdal
sys.stdout.write("MAMOL-ENV " + json.dumps({
    "prefix": sys.prefix, "python": sys.version.split()[0], "torch": torch.__version__,
    "torchvision": torchvision.__version__, "open_clip": open_clip.__version__,
    "safetensors": safetensors.__version__, "numpy": numpy.__version__,
    "gdal": gdal.__version__, "cuda": torch.version.cuda,
    "cuda_available": bool(torch.cuda.is_available())}) + "\\n")
"""


def _plugin_location() -> List[str]:
    """[folder holding the plugin's package, the package's name] (``mamol`` when installed),
    as the check script's arguments."""
    package = __name__.split(".")[0]
    folder = os.path.dirname(os.path.abspath(sys.modules[package].__path__[0]))
    return [folder, package]


_BASE_SCRIPT = """
import importlib.util, json, platform, struct, sys
try:
    import numpy
    version = numpy.__version__
except ImportError:
    version = None
sys.stdout.write("MAMOL-BASE " + json.dumps({
    "numpy": version, "python": sys.version.split()[0], "platform": sys.platform,
    "machine": platform.machine(), "mac": platform.mac_ver()[0],
    "bits": 8 * struct.calcsize("P"),
    "missing": [n for n in sys.argv[1:] if importlib.util.find_spec(n) is None]}) + "\\n")
"""


def _probe(python, script: str, tag: str, check: CancelCheck, log: LogCallback,
           arguments: Sequence[str] = (), what: str = "") -> dict:
    """Run ``script`` with ``python`` and return the JSON it printed after ``tag``."""
    output: List[str] = []
    status = run_streaming([str(python), "-c", script, *arguments], output.append, check)
    for line in output:
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    for line in output:
        log(line)
    raise MamolInputError(f"{what} failed (exit status {status}): {_last_error(output)}")


# ---- making the environment -----------------------------------------------------------

class _Progress:
    """Maps pip's lines to progress steps within [start, end] percent."""

    def __init__(self, reporter: Reporter, start: float, end: float) -> None:
        self.reporter, self.start, self.end = reporter, start, end
        self.fraction = 0.0

    def line(self, text: str) -> None:
        text = text.strip()
        if text.startswith(("Collecting ", "Downloading ", "Using cached ", "Processing ")):
            self.fraction = min(0.6, self.fraction + 0.03)
        elif text.startswith("Installing collected packages"):
            self.fraction = 0.7
        elif text.startswith("Successfully installed"):
            self.fraction = 1.0
        self.reporter.report(self.start + (self.end - self.start) * self.fraction)


def _fix_paths(env_dir: Path, old: str, new: str) -> None:
    """Replace the temporary folder's path ``old`` with ``new`` in the environment's
    text files that record it: ``pyvenv.cfg`` and the scripts in ``bin/``/``Scripts/``
    (shebangs, ``activate``). Windows' ``.exe`` launchers keep the old path; MaMOL runs
    ``python -m ...`` only."""
    files = [env_dir / "pyvenv.cfg"]
    for folder in (env_dir / "bin", env_dir / "Scripts"):
        if folder.is_dir():
            files += [path for path in folder.iterdir()
                      if path.is_file() and not path.is_symlink()]
    for path in files:
        try:
            if path.stat().st_size > 1_000_000:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data or old.encode() not in data:
            continue
        text = data.decode("utf-8", errors="surrogateescape")
        path.write_bytes(text.replace(old, new).encode("utf-8", errors="surrogateescape"))


def _remove(folder: Path) -> None:
    """Remove ``folder``; retried briefly (Windows may hold files of a process just
    stopped)."""
    for attempt in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.5 * (attempt + 1))


def _looks_like_env(folder: Path) -> bool:
    return (folder / "pyvenv.cfg").is_file()


def create_or_update(env_dir, base_python: str, build: str = "auto",
                     torch_index: Optional[str] = None,
                     log: Optional[LogCallback] = None,
                     progress: Optional[ProgressCallback] = None,
                     is_cancelled: Optional[CancelCheck] = None,
                     gpus: Optional[Sequence[NvidiaGpu]] = None,
                     platform: Optional[str] = None,
                     warn: Optional[LogCallback] = None) -> dict:
    """Make (or remake) the environment ``env_dir`` and return its marker (a dict with the
    installed versions, the build, the index, and ``"python"``, the executable's path).

    A venv is made from ``base_python`` with ``--system-site-packages`` in a new sibling
    folder; pip installs :func:`requirements` there (NumPy held at the base Python's
    version), the result is checked (``import torch, open_clip, safetensors; from osgeo
    import gdal``), and only then it replaces ``env_dir`` (the old one is renamed aside,
    then removed). ``env_dir`` must be new, empty, or an environment made here before
    (with the marker): nothing else is ever replaced.
    On failure or cancel the new folder is removed and ``env_dir`` is untouched.

    ``build``: 'auto' (CUDA when ``gpus`` — default :func:`detect_nvidia` — finds an
    NVIDIA driver), 'cpu' or 'cuda'. ``torch_index``: see :func:`resolve_torch_index`.
    ``warn`` (default ``log``) gets what the user should not miss: an untested platform, a
    CUDA build where the CPU build was asked for. pip's failures name their cause
    (:func:`pip_failure`); its full log is kept next to ``env_dir`` when it fails.
    """
    log = log or (lambda line: None)
    warn = warn or log
    reporter = Reporter(progress, is_cancelled)
    env_dir = Path(env_dir).expanduser().absolute()
    if env_dir.exists() and not (env_dir.is_dir() and (read_marker(env_dir) is not None
                                                       or not any(env_dir.iterdir()))):
        if _looks_like_env(env_dir):
            raise MamolInputError(
                f"{env_dir} is a Python environment that 'Install dependencies' did not "
                "make, so it is left alone: to use it as it is, give it as an existing "
                "Python environment; to install, choose a new or empty folder.")
        raise MamolInputError(
            f"{env_dir} exists and is not a Python environment: choose a new or empty "
            "folder for the environment.")
    if build.strip().lower() == "auto" and gpus is None:
        gpus = detect_nvidia()
    chosen = resolve_build(build, gpus, platform)
    index = resolve_torch_index(chosen, torch_index, platform)
    wanted = requirements()
    reason = index_reason(chosen, torch_index, platform)
    log(f"Build: {chosen}; torch and torchvision from {index_name(index)} ({reason}).")
    reporter.report(0)
    try:
        env_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MamolInputError(f"Cannot create the folder {env_dir.parent}: {exc}") from exc
    new_dir = env_dir.with_name(f"{env_dir.name}.new-{secrets.token_hex(4)}")
    try:
        marker = _build(new_dir, env_dir, base_python, chosen, index, wanted,
                        _Messages(log, warn, reason), reporter, platform)
        _swap(new_dir, env_dir, log, reporter, platform)
    except BaseException:
        _remove(new_dir)
        raise
    reporter.report(100)
    log(f"MaMOL's Python environment is ready: {marker['python']}")
    return marker


class _Messages(NamedTuple):
    """Where an install's lines go: the log, warnings, and why the index was chosen."""
    log: LogCallback
    warn: LogCallback
    reason: str


def pip_log_path(env_dir) -> Path:
    """Where pip's full log of an install into ``env_dir`` is kept when it fails."""
    env_dir = Path(env_dir)
    return env_dir.with_name(f"{env_dir.name}-pip.log")


def _build(new_dir: Path, env_dir: Path, base: str, build: str, index: Optional[str],
           wanted: Sequence[str], say: _Messages, reporter: Reporter,
           platform: Optional[str]) -> dict:
    """Make the venv in ``new_dir``, install, check, and write the marker."""
    base_info = _probe_base(base, say, reporter)
    warning = cpu_build_warning(build, index, base_info)
    if warning:
        say.warn(warning)
    extras = [package for module, package in OPTIONAL_BASE_PACKAGES
              if module in base_info["missing"]]
    reporter.report(2)

    say.log(f"Creating a virtual environment in {new_dir} ...")
    output: List[str] = []
    status = run_streaming([base, "-m", "venv", "--system-site-packages", str(new_dir)],
                           lambda line: (output.append(line), say.log(line)), reporter.check)
    if status != 0:
        raise MamolInputError(f"Creating the virtual environment failed: "
                              f"{_last_error(output)}")
    python = env_python(new_dir, platform)
    constraints = new_dir / "mamol-constraints.txt"
    constraints.write_text("\n".join([*wanted, f"numpy=={base_info['numpy']}"]) + "\n",
                           encoding="utf-8")
    reporter.report(5)
    _pip_install(python, constraints, wanted, extras, index, pip_log_path(env_dir), say.log,
                 reporter)
    reporter.report(85)

    versions = _check_new(python, build, index, base_info, say, reporter)
    marker = {
        "build": build, "torch_index": index, "base_python": base,
        "python": str(env_python(env_dir, platform)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "requirements": list(wanted),
        "versions": {key: versions[key] for key in ("python", "torch", "torchvision",
                                                     "open_clip", "safetensors", "numpy",
                                                     "gdal", "cuda")},
        "extras": extras,
    }
    (new_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n",
                                       encoding="utf-8")
    return marker


def _probe_base(base: str, say: _Messages, reporter: Reporter) -> dict:
    """What the base Python is (version, platform, NumPy, missing optional packages);
    refuses a platform PyTorch has no build for before anything is installed."""
    say.log(f"Probing the base Python {base} ...")
    info = _probe(base, _BASE_SCRIPT, "MAMOL-BASE", reporter.check, say.log,
                  [module for module, _ in OPTIONAL_BASE_PACKAGES],
                  what=f"Running the base Python {base}")
    if not info["numpy"]:
        raise MamolInputError(f"The base Python {base} has no NumPy, so it cannot be "
                              "QGIS's Python (GDAL's Python bindings need NumPy).")
    for warning in check_platform(info):
        say.warn(warning)
    say.log(f"Base Python {info['python']} ({info['platform']}, {info['machine']}) with "
            f"NumPy {info['numpy']} (kept).")
    return info


def _pip_install(python: Path, constraints: Path, wanted: Sequence[str],
                 extras: Sequence[str], index: Optional[str], log_path: Path,
                 log: LogCallback, reporter: Reporter) -> None:
    """pip-install ``wanted`` (torch and torchvision from ``index`` when there is one) and
    ``extras``; a failure names its cause (:func:`pip_failure`) and keeps pip's full log
    in ``log_path``, which a success removes."""
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "off", "--no-input",
           "--disable-pip-version-check", "--log", str(log_path), "-c", str(constraints)]
    torch_part = [item for item in wanted if requirement_name(item) in TORCH_RANGE]
    other_part = [item for item in wanted if item not in torch_part] + list(extras)
    calls = ([(torch_part, ["--index-url", index]), (other_part, [])] if index
             else [(torch_part + other_part, [])])
    log_path.unlink(missing_ok=True)
    start, span = 5.0, 80.0 / len(calls)
    output: List[str] = []
    for packages, options in calls:
        log("pip install " + " ".join(options + packages))
        steps = _Progress(reporter, start, start + span)
        output.clear()
        try:
            status = run_streaming(pip + options + packages,
                                   lambda line: (output.append(line), log(line),
                                                 steps.line(line)), reporter.check)
        except BaseException:          # cancelled: no failure to look into
            log_path.unlink(missing_ok=True)
            raise
        if status != 0:
            try:
                log_text = log_path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                log_text = ""
            raise MamolInputError("Installing PyTorch failed: " +
                                  pip_failure(output, log_text,
                                              log_path if log_text else None))
        start += span
    log_path.unlink(missing_ok=True)


def _check_new(python: Path, build: str, index: Optional[str],
               base_info: Mapping[str, object], say: _Messages, reporter: Reporter) -> dict:
    """The new environment's versions, once it imports what the engine imports, kept
    QGIS's NumPy, and has the build asked for (a CUDA build for CPU: a warning)."""
    say.log("Checking the new environment ...")
    versions = _probe(python, _CHECK_SCRIPT, "MAMOL-ENV", reporter.check, say.log,
                      _plugin_location(), what="Checking the new environment")
    if versions["numpy"] != base_info["numpy"]:
        raise MamolInputError(
            f"The new environment has NumPy {versions['numpy']} instead of QGIS's "
            f"{base_info['numpy']}; a package must have replaced it.")
    if build == "cuda" and not versions["cuda"]:
        raise MamolInputError(f"A CUDA build was asked for, but pip installed "
                              f"torch {versions['torch']}, a CPU build. Check the index.")
    say.log("Installed: " + ", ".join(f"{name} {versions[name]}" for name in
                                      ("torch", "torchvision", "open_clip", "safetensors",
                                       "numpy", "gdal")))
    line, warning = describe_build(versions, build, index, say.reason)
    say.log(line)
    if warning:
        say.warn(warning)
    if versions["cuda"]:
        say.log(f"CUDA {versions['cuda']}; GPU usable: "
                f"{'yes' if versions['cuda_available'] else 'no (check the NVIDIA driver)'}.")
    reporter.report(95)
    return versions


def _swap(new_dir: Path, env_dir: Path, log: LogCallback, reporter: Reporter,
          platform: Optional[str]) -> None:
    """Put ``new_dir`` in ``env_dir``'s place; the previous environment is removed only
    once the new one answers from its final place."""
    reporter.check()
    _fix_paths(new_dir, str(new_dir), str(env_dir))
    old_dir = None
    if env_dir.exists():
        old_dir = env_dir.with_name(f"{env_dir.name}.old-{secrets.token_hex(4)}")
        try:
            env_dir.rename(old_dir)
        except OSError as exc:
            raise MamolInputError(
                f"Cannot replace {env_dir} ({exc}); close whatever uses it (a running "
                "MaMOL job) and try again.") from exc
    try:
        new_dir.rename(env_dir)
        done = subprocess.run([str(env_python(env_dir, platform)), "-c",
                               "import sys, torch; print(sys.prefix)"],
                              capture_output=True, text=True, timeout=300,
                              env=child_environment(), stdin=subprocess.DEVNULL,
                              **child_process.spawn_options())
        if done.returncode != 0 or Path(done.stdout.strip()).resolve() != env_dir.resolve():
            raise MamolInputError(
                f"The environment does not work from {env_dir} after moving it there: "
                f"{_last_error(done.stderr.splitlines() + done.stdout.splitlines())}")
    except BaseException:
        if env_dir.exists() and not new_dir.exists():
            env_dir.rename(new_dir)        # the caller removes it
        if old_dir is not None:
            old_dir.rename(env_dir)
        raise
    if old_dir is not None:
        log(f"Removing the previous environment {old_dir} ...")
        _remove(old_dir)


def check_existing(python, log: Optional[LogCallback] = None,
                   is_cancelled: Optional[CancelCheck] = None) -> dict:
    """Check that an existing Python (an executable or an environment folder) can run
    MaMOL's engine (imports torch, open_clip, safetensors and GDAL's osgeo); return the
    versions it reports (and ``"python"``, the executable)."""
    log = log or (lambda line: None)
    executable = python_of(python)
    if executable is None:
        raise MamolInputError(f"{python} is neither a Python executable nor a Python "
                              "environment folder.")
    reporter = Reporter(None, is_cancelled)
    versions = _probe(executable, _CHECK_SCRIPT, "MAMOL-ENV", reporter.check, log,
                      _plugin_location(), what=f"Checking {executable}")
    versions["python_executable"] = str(executable)
    return versions


# ---- removing the environment ---------------------------------------------------------

class Removal(NamedTuple):
    """What :func:`remove_environment` removed and how many bytes that freed."""
    removed: Tuple[Path, ...]
    freed_bytes: int


def folder_size(folder) -> int:
    """The bytes of the files under ``folder``, links not followed (a venv's ``python``
    is a link to QGIS's)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def made_here(folder) -> bool:
    """Whether ``folder`` is an environment that 'Install dependencies' made: a real folder
    (not a link) with a venv's ``pyvenv.cfg`` and the marker it writes last."""
    folder = Path(folder)
    return (folder.is_dir() and not folder.is_symlink() and _looks_like_env(folder)
            and read_marker(folder) is not None)


def remove_environment(env_dir) -> Removal:
    """Remove the environment ``env_dir`` that 'Install dependencies' made, with what an
    interrupted install left next to it (``<name>.new-*``/``<name>.old-*`` folders and
    pip's log); nothing else.

    A folder without the marker (an environment of the user's own, or anything else) is
    refused with :class:`MamolInputError`, never removed. Nothing there: nothing removed."""
    env_dir = Path(env_dir).expanduser().absolute()
    if env_dir.is_symlink() or (env_dir.exists() and not made_here(env_dir)):
        raise MamolInputError(
            f"{env_dir} was not made by 'Install dependencies' (it has no {MARKER_FILE}), "
            "so it is left alone; remove it yourself if you mean to.")
    leftover = re.compile(re.escape(env_dir.name) + r"\.(new|old)-[0-9a-f]{8}")
    targets = [env_dir] if env_dir.exists() else []
    if env_dir.parent.is_dir():
        targets += sorted(path for path in env_dir.parent.iterdir()
                          if leftover.fullmatch(path.name) and path.is_dir()
                          and not path.is_symlink())
    freed = 0
    for folder in targets:
        size = folder_size(folder)
        _remove(folder)
        if folder.exists():
            raise MamolInputError(
                f"Could not remove all of {folder}: close whatever uses it (a running MaMOL "
                "job, a terminal in it) and run this again.")
        freed += size
    log_path = pip_log_path(env_dir)
    if log_path.is_file():
        freed += log_path.stat().st_size
        log_path.unlink()
    return Removal(tuple(targets), freed)
