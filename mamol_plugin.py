"""The plugin object: registers the ``mamol`` Processing provider and removes it on unload."""
from qgis.core import QgsApplication

MENU = "&MaMOL"


class MamolPlugin:
    """Adds the MaMOL Processing provider, and in the GUI a menu entry Plugins → MaMOL →
    Install dependencies… that opens that algorithm's dialog.

    The provider is registered in :meth:`initProcessing`, which QGIS also calls when the
    plugin runs headless (``qgis_process``), so the algorithms are available everywhere.
    """

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None
        self.install_action = None

    def initProcessing(self) -> None:  # noqa: N802 - name fixed by QGIS
        from .algorithms.provider import MamolProvider
        if self.provider is None:
            self.provider = MamolProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - name fixed by QGIS
        self.initProcessing()
        if self.install_action is None:
            from qgis.PyQt.QtGui import QIcon
            from qgis.PyQt.QtWidgets import QAction

            from .algorithms.common import ICON_PATH
            self.install_action = QAction(QIcon(ICON_PATH), "Install dependencies…",
                                          self.iface.mainWindow())
            self.install_action.triggered.connect(self.open_install_dialog)
            self.iface.addPluginToMenu(MENU, self.install_action)

    @staticmethod
    def open_install_dialog() -> None:
        import processing
        processing.execAlgorithmDialog("mamol:installdependencies")

    def unload(self) -> None:
        if self.install_action is not None:
            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action.deleteLater()
            self.install_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
