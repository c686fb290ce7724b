"""The QGIS enum values the plugin uses, each reached by its scoped name, so one source runs
on QGIS 3.22 (Debian 12), 3.40 (Debian 13), 3.44 (Debian sid) and QGIS 4 (Qt6).

QGIS 4 drops unscoped references such as ``QgsProcessingParameterNumber.Integer`` (and
plugins.qgis.org's Qt6 check flags them). QGIS 3.36 moved these enums to ``Qgis``
(``Qgis.ProcessingNumberParameterType.Integer``); QGIS 3.22 lacks those names but has the
same values through their enum type (``QgsProcessingParameterNumber.Type.Integer``). Each
value below names both: the ``Qgis`` one where this QGIS has it, else the 3.22 one, which
is only read when the first is missing (a QGIS 4 may lack it). Qt's own enums need no entry
here: their scoped names (``QImage.Format.Format_Indexed8``) work with PyQt5 and PyQt6.
tests/qgis/test_scoped_enums.py fails on an unscoped enum anywhere in the plugin.
"""
from qgis import core


def scoped(new: str, old: str):
    """The enum value at the dotted path ``new`` in ``qgis.core`` (QGIS >= 3.36) where this
    QGIS has it, else the one at ``old`` (QGIS 3.22's scoped name)."""
    for path in (new, old):
        value = _resolve(path)
        if value is not None:
            return value
    raise AttributeError(f"this QGIS ({core.Qgis.QGIS_VERSION}) has neither {new} nor {old}: "
                         "MaMOL needs QGIS 3.22 or later")


def _resolve(path: str):
    value = core
    for name in path.split("."):
        value = getattr(value, name, None)
        if value is None:
            return None
    return value


NUMBER_INTEGER = scoped("Qgis.ProcessingNumberParameterType.Integer",
                        "QgsProcessingParameterNumber.Type.Integer")
NUMBER_DOUBLE = scoped("Qgis.ProcessingNumberParameterType.Double",
                       "QgsProcessingParameterNumber.Type.Double")
FLAG_ADVANCED = scoped("Qgis.ProcessingParameterFlag.Advanced",
                       "QgsProcessingParameterDefinition.Flag.FlagAdvanced")
FLAG_OPTIONAL = scoped("Qgis.ProcessingParameterFlag.Optional",
                       "QgsProcessingParameterDefinition.Flag.FlagOptional")
SOURCE_VECTOR_POLYGON = scoped("Qgis.ProcessingSourceType.VectorPolygon",
                               "QgsProcessing.SourceType.TypeVectorPolygon")
FILE_BEHAVIOR_FILE = scoped("Qgis.ProcessingFileParameterBehavior.File",
                            "QgsProcessingParameterFile.Behavior.File")
FILE_BEHAVIOR_FOLDER = scoped("Qgis.ProcessingFileParameterBehavior.Folder",
                              "QgsProcessingParameterFile.Behavior.Folder")
