"""``mamol:removeenvironment`` — remove the model environment 'Install dependencies' made
(several GB that uninstalling the plugin leaves behind; see
:func:`algorithms.model_env.remove_environment`)."""
from pathlib import Path

from qgis.core import (QgsApplication, QgsProcessingOutputNumber, QgsProcessingOutputString,
                       QgsProcessingParameterFile, QgsSettings)

from . import model_env
from .common import FeedbackRelay, MamolAlgorithm, add_parameter, \
    core_errors_as_processing_exceptions
from .qgis_compat import FILE_BEHAVIOR_FOLDER


class RemoveEnvironmentAlgorithm(MamolAlgorithm):
    """Adapter: ENV_FOLDER -> ``model_env.remove_environment``; forgets the setting that
    pointed into a removed folder."""

    GROUP = "Setup"
    GROUP_ID = "setup"
    HELP_PAGE = "docs/install.md#removing-the-environment"

    ENV_FOLDER = "ENV_FOLDER"
    REMOVED = "REMOVED"
    FREED_GB = "FREED_GB"

    def name(self) -> str:
        return "removeenvironment"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return self.tr("Remove model environment")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return self.tr(
            "Removes the Python environment with PyTorch that 'Install dependencies' made "
            "(several GB; uninstalling the plugin leaves it behind), with what an "
            "interrupted install left next to it. Run it before uninstalling the plugin, or "
            "to start afresh. Only a folder 'Install dependencies' made is removed (it holds "
            f"{model_env.MARKER_FILE}); an existing Python environment you gave MaMOL is "
            "never touched. The log says what was removed and how many GB that freed.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        add_parameter(self, QgsProcessingParameterFile(
            self.ENV_FOLDER, self.tr("Environment folder"),
            behavior=FILE_BEHAVIOR_FOLDER, optional=True),
            "The environment to remove. Empty: mamol/python-env in the QGIS profile folder, "
            "and the environment MaMOL is set to use when 'Install dependencies' made it.")
        self.addOutput(QgsProcessingOutputString(self.REMOVED, self.tr("Removed folders")))
        self.addOutput(QgsProcessingOutputNumber(self.FREED_GB, self.tr("GB freed")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        relay = FeedbackRelay(feedback)
        settings = QgsSettings()
        setting = str(settings.value(model_env.SETTINGS_KEY, "") or "").strip()
        folder = self.parameterAsFile(parameters, self.ENV_FOLDER, context).strip()
        folders = [Path(folder)] if folder else \
            [model_env.default_env_dir(QgsApplication.qgisSettingsDirPath())]
        if not folder and setting and Path(setting) != folders[0]:
            if model_env.made_here(setting):
                folders.append(Path(setting))
            else:
                relay.info(self.tr(f"MaMOL is set to use {setting}, which 'Install "
                                   "dependencies' did not make: left alone."))
        removed, freed = [], 0
        with core_errors_as_processing_exceptions():
            for env_dir in folders:
                removal = model_env.remove_environment(env_dir)
                removed += removal.removed
                freed += removal.freed_bytes
                for path in removal.removed:
                    relay.info(self.tr(f"Removed {path}."))
                if not removal.removed:
                    relay.info(self.tr(f"No environment at {env_dir}: nothing to remove."))
        if setting and any(Path(setting) == path or path in Path(setting).parents
                           for path in removed):
            settings.remove(model_env.SETTINGS_KEY)
            relay.info(self.tr(f"Forgot the setting {model_env.SETTINGS_KEY} ({setting})."))
        relay.info(self.tr(f"{freed / 1e9:.2f} GB freed."))
        return {self.REMOVED: ";".join(str(path) for path in removed),
                self.FREED_GB: round(freed / 1e9, 3)}
