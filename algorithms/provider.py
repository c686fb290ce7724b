"""The ``mamol`` Processing provider."""
from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .checkenvironment import CheckEnvironmentAlgorithm
from .classify import ClassifyAlgorithm
from .common import (DEFAULT_MODELS_FOLDER_NAME, ICON_PATH, MODELS_FOLDER_SETTING,
                     WEIGHTS_CACHE_SETTING)
from .createsamplescene import CreateSampleSceneAlgorithm
from .evaluate import EvaluateAlgorithm
from .installdependencies import InstallDependenciesAlgorithm
from .removeenvironment import RemoveEnvironmentAlgorithm
from .trainmodel import TrainModelAlgorithm

#: The provider's folder settings (name, label), added by load() and removed by unload().
FOLDER_SETTINGS = (
    (WEIGHTS_CACHE_SETTING, "Backbone weights cache folder"),
    (MODELS_FOLDER_SETTING,
     f"Trained models folder (empty: '{DEFAULT_MODELS_FOLDER_NAME}' in your documents)"),
)


class MamolProvider(QgsProcessingProvider):
    """Provides every MaMOL algorithm under the id ``mamol``."""

    def id(self) -> str:
        return "mamol"

    def name(self) -> str:
        return "MaMOL land cover"

    def longName(self) -> str:  # noqa: N802 - QGIS API
        return "MaMOL: missing-modality robust land-cover classification"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def svgIconPath(self) -> str:  # noqa: N802 - QGIS API
        return ICON_PATH

    def load(self) -> bool:
        """Adds the provider's settings (Options → Processing → Providers) to Processing."""
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
        # unload() removes the setting from this same class: when QGIS exits it may unload
        # the Processing plugin first, which deletes its modules from sys.modules, and an
        # import in unload() would then load a fresh ProcessingConfig with no settings
        # (the KeyError 'MAMOL_WEIGHTS_CACHE' seen once at exit).
        self._config = ProcessingConfig
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        for name, label in FOLDER_SETTINGS:
            ProcessingConfig.addSetting(Setting(self.name(), name, label, "",
                                                valuetype=Setting.FOLDER))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        """Removes the settings that :meth:`load` added; safe to call more than once."""
        config = getattr(self, "_config", None)
        if config is None:
            return
        for name, _ in FOLDER_SETTINGS:
            if name in config.settings:
                config.removeSetting(name)

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        for algorithm in (CreateSampleSceneAlgorithm(), TrainModelAlgorithm(),
                          ClassifyAlgorithm(), EvaluateAlgorithm(),
                          InstallDependenciesAlgorithm(), CheckEnvironmentAlgorithm(),
                          RemoveEnvironmentAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API
        return ["tif"]
