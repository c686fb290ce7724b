"""``mamol:installdependencies`` — set up the Python environment with PyTorch that runs
MaMOL's engine (see :mod:`algorithms.model_env`)."""
import os

from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingOutputFile,
                       QgsProcessingParameterEnum, QgsProcessingParameterFile,
                       QgsProcessingParameterString, QgsSettings)

from . import model_env
from .common import FeedbackRelay, MamolAlgorithm, add_parameter, \
    core_errors_as_processing_exceptions
from .qgis_compat import FILE_BEHAVIOR_FILE, FILE_BEHAVIOR_FOLDER

#: Options of the "Build" parameter, in enum order (core names).
BUILD_CHOICES = ("auto", "cpu", "cuda")


class InstallDependenciesAlgorithm(MamolAlgorithm):
    """Adapter: BUILD, TORCH_INDEX, ENV_FOLDER, EXISTING_PYTHON -> ``model_env``."""

    GROUP = "Setup"
    GROUP_ID = "setup"
    HELP_PAGE = "docs/install.md"

    BUILD = "BUILD"
    TORCH_INDEX = "TORCH_INDEX"
    ENV_FOLDER = "ENV_FOLDER"
    EXISTING_PYTHON = "EXISTING_PYTHON"
    PYTHON = "PYTHON"

    def name(self) -> str:
        return "installdependencies"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Install dependencies")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Installs PyTorch and the other packages MaMOL's models need into a Python "
            "environment of their own, outside QGIS: a virtual environment made from "
            "QGIS's Python (it keeps QGIS's GDAL and NumPy), by default in the QGIS "
            "profile folder (mamol/python-env). It takes about 1 GB of disk for the CPU build "
            "and about 5 GB for the CUDA build; run it again to repair or update the "
            "environment. If it fails or is cancelled, the previous environment is kept "
            "as it was, and the error says why pip failed. 'Remove model environment' "
            "removes it again.\n\n"
            "<b>Build</b>: Automatic installs the CUDA build when an NVIDIA driver is "
            "found (nvidia-smi), else the CPU build.\n"
            "<b>Torch package index</b> (advanced): where torch and torchvision come from. "
            "Empty: PyTorch's own index for the chosen build (PyPI on macOS); 'pypi': "
            "pip's configured index (PyPI or your mirror); or an index URL.\n"
            "<b>Environment folder</b> (advanced): another folder for the environment.\n"
            f"<b>{model_env.EXISTING_PYTHON_LABEL}</b> (advanced): installs "
            "nothing; checks that this Python (an executable, or a virtual or conda "
            "environment's folder) imports torch, open_clip, safetensors and GDAL's "
            "osgeo, and makes MaMOL use it.\n\n"
            "The environment variable MAMOL_PYTHON, when set, overrides all of these.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_parameter(self, QgsProcessingParameterEnum(
            self.BUILD, self.tr("Build"),
            options=[self.tr("Automatic"), self.tr("CPU"), self.tr("CUDA")], defaultValue=0),
            "Which PyTorch build to install. Automatic: CUDA when an NVIDIA driver is "
            "found, else the CPU build. The CUDA build needs an NVIDIA GPU and driver; the "
            "CPU build runs everywhere.")
        add_parameter(self, QgsProcessingParameterString(
            self.TORCH_INDEX, self.tr("Torch package index"), defaultValue="",
            optional=True),
            "Package index for torch and torchvision. Empty: automatic (PyTorch's CPU "
            "or CUDA index; PyPI on macOS). 'pypi': pip's configured index. Or a URL.",
            advanced=True)
        add_parameter(self, QgsProcessingParameterFile(
            self.ENV_FOLDER, self.tr("Environment folder"),
            behavior=FILE_BEHAVIOR_FOLDER, optional=True),
            "Folder of the environment (new, empty, or an environment made here before). "
            "Empty: mamol/python-env in the QGIS profile folder.", advanced=True)
        add_parameter(self, QgsProcessingParameterFile(
            self.EXISTING_PYTHON, self.tr(model_env.EXISTING_PYTHON_LABEL),
            behavior=FILE_BEHAVIOR_FILE, optional=True,
            fileFilter="All files (*)"),   # the default "*.*" refuses bin/python
            "A Python executable (bin/python, Scripts\\python.exe) or an environment "
            "folder that already has PyTorch, open_clip and GDAL's Python bindings. "
            "Nothing is installed; MaMOL uses it once it passes a check.", advanced=True)
        self.addOutput(QgsProcessingOutputFile(self.PYTHON, self.tr("Python executable")))

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback):  # noqa: N802
        relay = FeedbackRelay(feedback)
        settings = QgsSettings()
        existing = self.parameterAsFile(parameters, self.EXISTING_PYTHON, context).strip()
        with core_errors_as_processing_exceptions():
            if existing:
                relay.info(self.tr(f"Checking {existing} ..."))
                versions = model_env.check_existing(existing, relay.info,
                                                    relay.is_cancelled)
                relay.info(self.tr("It has torch {torch}, open_clip {open_clip}, "
                                   "safetensors {safetensors}, NumPy {numpy}, GDAL {gdal}.")
                           .format(**versions))
                python = versions["python_executable"]
                settings.setValue(model_env.SETTINGS_KEY, existing)
                relay.info(self.tr(f"MaMOL will use {python}."))
            else:
                python = self._install(parameters, context, relay, settings)
        if os.environ.get(model_env.PYTHON_VARIABLE, "").strip():
            relay.warning(self.tr(
                f"The environment variable {model_env.PYTHON_VARIABLE} is set "
                f"({os.environ[model_env.PYTHON_VARIABLE]}): it overrides this setting "
                "while it is set."))
        return {self.PYTHON: python}

    def _install(self, parameters, context, relay: FeedbackRelay, settings) -> str:
        build = BUILD_CHOICES[self.parameterAsEnum(parameters, self.BUILD, context)]
        gpus = model_env.detect_nvidia()
        if gpus:
            for gpu in gpus:
                relay.info(self.tr(f"NVIDIA GPU: {gpu.name}, driver {gpu.driver_version}"))
        else:
            relay.info(self.tr("No NVIDIA driver found (nvidia-smi)."))
        index = self.parameterAsString(parameters, self.TORCH_INDEX, context).strip()
        default_folder = model_env.default_env_dir(QgsApplication.qgisSettingsDirPath())
        folder = self.parameterAsFile(parameters, self.ENV_FOLDER, context).strip()
        env_dir = folder or str(default_folder)
        base = model_env.base_python()
        relay.info(self.tr(f"Environment: {env_dir} (from {base})"))
        marker = model_env.create_or_update(
            env_dir, base, build=build, torch_index=index or None, log=relay.info,
            progress=relay.progress, is_cancelled=relay.is_cancelled, gpus=gpus,
            warn=relay.warning)
        # the last environment made here is the one MaMOL uses: a folder of one's own is
        # remembered, the default one is found without a setting
        if folder:
            settings.setValue(model_env.SETTINGS_KEY, env_dir)
        elif settings.value(model_env.SETTINGS_KEY, ""):
            relay.info(self.tr(f"Forgetting the earlier choice "
                               f"{settings.value(model_env.SETTINGS_KEY)}."))
            settings.remove(model_env.SETTINGS_KEY)
        return marker["python"]
