"""MaMOL for QGIS: QGIS plugin entry point.

QGIS calls :func:`classFactory` when the plugin is loaded. The import happens inside the
function so that merely scanning the plugin folder imports nothing heavy.
"""


def classFactory(iface):  # noqa: N802 - name fixed by QGIS
    """Return the plugin object QGIS manages (``iface`` is the QGIS interface)."""
    from .mamol_plugin import MamolPlugin
    return MamolPlugin(iface)
