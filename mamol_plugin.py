"""The plugin object: registers the ``mamol`` Processing provider and removes it on unload."""
from qgis.core import QgsApplication


class MamolPlugin:
    """Adds the MaMOL Processing provider; the plugin has no other GUI.

    The provider is registered in :meth:`initProcessing`, which QGIS also calls when the
    plugin runs headless (``qgis_process``), so the algorithms are available everywhere.
    """

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None

    def initProcessing(self) -> None:  # noqa: N802 - name fixed by QGIS
        from .algorithms.provider import MamolProvider
        if self.provider is None:
            self.provider = MamolProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - name fixed by QGIS
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
