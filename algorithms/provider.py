"""The ``mamol`` Processing provider."""
from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .common import ICON_PATH, WEIGHTS_CACHE_SETTING
from .classify import ClassifyAlgorithm
from .createsamplescene import CreateSampleSceneAlgorithm
from .evaluate import EvaluateAlgorithm
from .installdependencies import InstallDependenciesAlgorithm
from .removeenvironment import RemoveEnvironmentAlgorithm
from .trainmodel import TrainModelAlgorithm


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
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), WEIGHTS_CACHE_SETTING, "Backbone weights cache folder", "",
            valuetype=Setting.FOLDER))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        from processing.core.ProcessingConfig import ProcessingConfig
        ProcessingConfig.removeSetting(WEIGHTS_CACHE_SETTING)

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        for algorithm in (CreateSampleSceneAlgorithm(), TrainModelAlgorithm(),
                          ClassifyAlgorithm(), EvaluateAlgorithm(),
                          InstallDependenciesAlgorithm(), RemoveEnvironmentAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API
        return ["tif"]
