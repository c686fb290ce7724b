"""What every MaMOL algorithm shares: core errors become ``QgsProcessingException`` and
QGIS feedback becomes the core's plain progress/cancel/log callables."""
import configparser
import contextlib
import functools
import json
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsProcessingUtils, QgsSettings)
from qgis.PyQt.QtCore import QCoreApplication, QStandardPaths
from qgis.PyQt.QtGui import QIcon

from ..core.errors import Cancelled, MamolInputError
from ..core.modalities import MODALITIES
from ..core.options import Declared, declared
from ..training.labels import PolygonSource
from .qgis_compat import FLAG_ADVANCED, FLAG_OPTIONAL, NUMBER_DOUBLE, NUMBER_INTEGER

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")
#: Processing setting (Options → Processing → Providers → MaMOL land cover): the folder
#: that keeps downloaded backbone weights; empty = MAMOL_WEIGHTS_CACHE or Hugging Face's.
WEIGHTS_CACHE_SETTING = "MAMOL_WEIGHTS_CACHE"
#: Processing setting: the folder trained models go to when the user names no file; empty =
#: "MaMOL models" in the user's documents folder.
MODELS_FOLDER_SETTING = "MAMOL_MODELS_FOLDER"
DEFAULT_MODELS_FOLDER_NAME = "MaMOL models"


def provider_setting(name: str) -> str:
    """A value of the provider's Processing settings (Options → Processing → Providers)."""
    return str(QgsSettings().value(f"Processing/Configuration/{name}", "") or "")


def models_folder() -> Path:
    """Where a trained model goes when the user names no file: a folder that outlives QGIS
    (QGIS deletes its temporary folder when it closes, and a model takes hours to train)."""
    chosen = provider_setting(MODELS_FOLDER_SETTING)
    if chosen:
        return Path(chosen)
    documents = QStandardPaths.writableLocation(
        QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(documents or Path.home()) / DEFAULT_MODELS_FOLDER_NAME


def new_model_path(extension: str) -> Path:
    """A model file name in :func:`models_folder` that no file has yet, dated to the second:
    ``model-20261204-231502.mamol`` (``-2``, ``-3`` … when that is taken)."""
    folder = models_folder()
    stem = f"model-{time.strftime('%Y%m%d-%H%M%S')}"
    path, number = folder / f"{stem}{extension}", 1
    while path.exists():
        number += 1
        path = folder / f"{stem}-{number}{extension}"
    return path


def in_qgis_temporary_folder(path: str) -> bool:
    """Whether ``path`` lies in the temporary folder QGIS deletes when it closes (where
    "Save to temporary file" puts outputs)."""
    temporary = Path(QgsProcessingUtils.tempFolder()).resolve()
    return temporary in Path(path).resolve().parents


@functools.lru_cache(maxsize=None)
def plugin_metadata() -> dict:
    """``metadata.txt``'s [general] section: the one place the plugin's version and links
    (homepage, repository, tracker) are declared."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(Path(__file__).resolve().parent.parent / "metadata.txt", encoding="utf-8")
    return dict(parser["general"])


class MamolAlgorithm(QgsProcessingAlgorithm):
    """What every MaMOL algorithm shares: the icon, translation in the class's own context,
    a fresh instance of the same class, the Toolbox group named by ``GROUP``/``GROUP_ID`` and
    the Help button's page ``HELP_PAGE``.
    """

    GROUP = "Model"
    GROUP_ID = "model"
    #: The page the dialog's Help button opens, a path in the repository (docs are read
    #: there, rendered, rather than shipped in the ZIP).
    HELP_PAGE = "README.md"

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def group(self) -> str:
        return self.tr(self.GROUP)

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return self.GROUP_ID

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def helpUrl(self) -> str:  # noqa: N802 - QGIS API
        return f"{plugin_metadata()['repository']}/blob/main/{self.HELP_PAGE}"

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        """QGIS's own checks, which load each raster given as a file as a layer: with GDAL's
        sidecar files off, so that the statistics QGIS computes for the layer's default
        style are not saved as an ``.aux.xml`` beside the user's input."""
        with no_sidecars_written():
            return super().checkParameterValues(parameters, context)


#: Post-processors must outlive the algorithm instance that registers them (QGIS keeps no
#: reference to a Python one).
_POST_PROCESSORS = []


class LoadStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies a written ``.qml`` to an output layer once it is loaded: Processing loads
    outputs without their default style (the ``.qml`` beside the file), so a class raster
    would show the 256 entries of its GeoTIFF colour table instead of its classes."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        if layer is not None and Path(self.style).is_file():
            layer.loadNamedStyle(self.style)
            layer.triggerRepaint()


def set_post_processor(context, path: str, post_processor) -> None:
    """Give the output at ``path`` that QGIS loads on completion its post-processor (kept
    alive here); nothing when the output is not loaded."""
    if context.willLoadLayerOnCompletion(path):
        _POST_PROCESSORS.append(post_processor)
        context.layerToLoadOnCompletionDetails(path).setPostProcessor(post_processor)


@contextlib.contextmanager
def no_sidecars_written() -> Iterator[None]:
    """GDAL's ``.aux.xml`` sidecars off for the rasters this thread opens in the block."""
    from osgeo import gdal
    before = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", before)


@contextlib.contextmanager
def core_errors_as_processing_exceptions() -> Iterator[None]:
    """Re-raise the core's user-facing errors as ``QgsProcessingException``."""
    try:
        yield
    except (MamolInputError, Cancelled) as exc:
        raise QgsProcessingException(str(exc)) from exc


class FeedbackRelay:
    """The core's progress, cancel check, log lines and warnings, forwarded to a Processing
    feedback (which may be None: then progress and lines go nowhere).

    ``qgis_process`` prints progress as dots and tens on the current line ("0...10...20")
    and each message as a line of its own, so a message after some dots ran into them
    ("0...10Missing simulation", "0...10WARNING:"). There an empty line ends the dots
    before a message; the Toolbox (whose log shows no dots) and ``qgis_process --json`` get
    the messages alone.
    """

    def __init__(self, feedback: Optional[QgsProcessingFeedback]) -> None:
        self.feedback = feedback
        arguments = QCoreApplication.arguments()
        self.console = (feedback is not None and QgsApplication.platform() == "qgis_process"
                        and "--json" not in arguments)
        self._tick = -1        # the console's last tick: 40 ticks per 100 %, "0" is the first
        self._dots = False     # the console printed ticks since the last message

    def progress(self, percent: float) -> None:
        if self.feedback is None:
            return
        # the console's rule: a tick per 2.5 %, printed only when it passes the last one;
        # the 40th ends the line itself (" - done.")
        tick = min(40, max(0, int(percent * 0.4)))
        if tick > self._tick:
            self._tick = tick
            self._dots = tick < 40
        self.feedback.setProgress(percent)

    def is_cancelled(self) -> bool:
        return self.feedback is not None and self.feedback.isCanceled()

    def _end_dots(self) -> None:
        """End the console's line of dots (qgis_process prints a message and a newline)."""
        if self.console and self._dots:
            self._dots = False
            self.feedback.pushInfo("")

    def info(self, text: str) -> None:
        if self.feedback is not None:
            self._end_dots()
            self.feedback.pushInfo(text)

    def warning(self, text: str) -> None:
        if self.feedback is not None:
            self._end_dots()
            self.feedback.pushWarning(text)


def as_whole_number(value):
    """``value`` as an int if it is one (int, integral float or such a string), else None.

    Processing hands parameters over as Python numbers from ``processing.run`` and as
    strings from ``qgis_process``; both must be checked before the core sees them.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


#: The model's raster inputs: (parameter key, modality name, label), in model order, from
#: the one modality table (core/modalities.py).
RASTER_INPUTS = tuple((m.key, m.name, m.description[:1].upper() + m.description[1:])
                      for m in MODALITIES)
#: Each modality's availability parameter (training simulation, evaluation forcing), by
#: modality name: ``HS_AVAILABILITY`` …, with its label.
AVAILABILITY_PARAMETERS = {m.name: (f"{m.key}_AVAILABILITY", f"{m.label} availability")
                           for m in MODALITIES}
NO_RASTER_MESSAGE = "Give at least one raster (hyperspectral, SAR or LiDAR)."


def add_parameter(algorithm, parameter, help_text: str, advanced: bool = False) -> None:
    """Add ``parameter`` to ``algorithm`` with its help text, flagged Advanced if asked."""
    parameter.setHelp(algorithm.tr(help_text))
    if advanced:
        parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
    algorithm.addParameter(parameter)


class RasterFileParameter(QgsProcessingParameterRasterLayer):
    """A raster layer parameter that accepts an existing file as it is, without loading it as
    a layer to check it. ``qgis_process`` checks every value before the algorithm runs, and
    loading a raster makes QGIS compute statistics for its default style, which GDAL saves as
    an ``.aux.xml`` beside the user's input; the engine checks the file itself."""

    def clone(self):
        optional = bool(self.flags() & FLAG_OPTIONAL)
        copy = RasterFileParameter(self.name(), self.description(), self.defaultValue(),
                                   optional)
        copy.setFlags(self.flags())
        copy.setHelp(self.help())
        copy.setMetadata(self.metadata())
        return copy

    def checkValueIsAcceptable(self, value, context=None):  # noqa: N802 - QGIS API
        if isinstance(value, str) and os.path.isfile(value):
            return True
        with no_sidecars_written():
            return super().checkValueIsAcceptable(value, context)


class ChoiceParameter(QgsProcessingParameterEnum):
    """A choice that also takes its values ("cpu", "ViT-B-16"; any case) besides their
    indices: the device and the backbone were free text before they became choices, and
    saved models (.model3) and ``qgis_process`` command lines give them so; a value also
    reads better in a script than an index. (String-valued enums came with QGIS 3.24.)
    The values travel in the parameter's metadata, so that a clone keeps them."""

    VALUES = "mamol_values"

    def __init__(self, name: str, description: str, values: Sequence[str],
                 labels: Sequence[str], default: str) -> None:
        super().__init__(name, description, options=list(labels),
                         defaultValue=list(values).index(default))
        self.setMetadata(dict(self.metadata(), **{self.VALUES: list(values)}))

    def clone(self):
        values = self.metadata()[self.VALUES]
        copy = ChoiceParameter(self.name(), self.description(), values, self.options(),
                               values[self.defaultValue()])
        copy.setFlags(self.flags())
        copy.setHelp(self.help())
        copy.setMetadata(self.metadata())
        return copy

    def checkValueIsAcceptable(self, value, context=None):  # noqa: N802 - QGIS API
        if isinstance(value, str) and \
                named_choice(value, self.metadata()[self.VALUES]) is not None:
            return True
        return super().checkValueIsAcceptable(value, context)


def named_choice(text: str, values: Sequence[str]) -> Optional[str]:
    """The one of ``values`` that ``text`` names (any case, outer spaces ignored), or None."""
    wanted = text.strip().lower()
    return next((value for value in values if value.lower() == wanted), None)


def choice_value(algorithm, parameters, key: str, context, values: Sequence[str]) -> str:
    """The value a :class:`ChoiceParameter` holds, given by value or by index."""
    given = parameters.get(key)
    if isinstance(given, str):
        named = named_choice(given, values)
        if named is not None:
            return named
    return values[algorithm.parameterAsEnum(parameters, key, context)]


def add_raster_inputs(algorithm, help_text: str) -> None:
    """The optional HS, SAR and LiDAR raster parameters."""
    for key, _, label in RASTER_INPUTS:
        add_parameter(algorithm, RasterFileParameter(
            key, algorithm.tr(label), optional=True), help_text)


def has_raster_input(parameters) -> bool:
    return any(parameters.get(key) for key, _, _ in RASTER_INPUTS)


def raster_file(algorithm, parameters, key: str, context, what: str) -> str:
    """The file behind a raster parameter. A file path is handed over as it is: loading it
    as a QGIS layer would compute statistics that GDAL then saves as an ``.aux.xml`` beside
    the user's input (600 KB beside a 63-band raster). A layer of the project gives its
    source; it must be file-based (GDAL)."""
    value = parameters.get(key)
    if isinstance(value, str) and os.path.isfile(value):
        return os.path.abspath(value)
    with no_sidecars_written():
        layer = algorithm.parameterAsRasterLayer(parameters, key, context)
    if layer is None:
        raise QgsProcessingException(algorithm.tr(f"Cannot read {what}."))
    if layer.providerType() != "gdal":
        raise QgsProcessingException(algorithm.tr(
            f"{what[0].upper()}{what[1:]} must be a file-based (GDAL) raster."))
    return layer.source()


def raster_inputs(algorithm, parameters, context) -> Tuple[Tuple[str, str], ...]:
    """(modality name, file path) of each raster given, in model order."""
    rasters = []
    for key, name, label in RASTER_INPUTS:
        if not parameters.get(key):
            continue
        rasters.append((name, raster_file(algorithm, parameters, key, context,
                                          f"the {label.lower()}")))
    if not rasters:
        raise QgsProcessingException(algorithm.tr(NO_RASTER_MESSAGE))
    return tuple(rasters)


def polygon_source(algorithm, parameters, context, feedback, polygons_key: str,
                   class_field_key: str, name_field_key: Optional[str] = None) -> PolygonSource:
    """The labelled polygons of ``polygons_key`` as a file the core can read (exported to a
    GeoPackage when the layer is not one; the selection is honoured), with class names and
    colours from the layer's categorised style when it styles the class field."""
    source = algorithm.parameterAsSource(parameters, polygons_key, context)
    if source is None:
        raise QgsProcessingException(algorithm.tr("Cannot read the polygon layer."))
    if source.featureCount() == 0:
        raise QgsProcessingException(algorithm.tr(
            "The polygon layer has no features (or none selected). Draw labelled "
            "polygons first."))
    class_field = algorithm.parameterAsString(parameters, class_field_key, context)
    if not class_field:
        raise QgsProcessingException(algorithm.tr("Choose the polygons' class field."))
    name_field = (algorithm.parameterAsString(parameters, name_field_key, context) or None) \
        if name_field_key else None
    path, layer_name = algorithm.parameterAsCompatibleSourceLayerPathAndLayerName(
        parameters, polygons_key, context, ["gpkg", "shp"], "gpkg", feedback)
    styled = None
    layer = algorithm.parameterAsVectorLayer(parameters, polygons_key, context)
    renderer = layer.renderer() if layer is not None else None
    if isinstance(renderer, QgsCategorizedSymbolRenderer) and \
            renderer.classAttribute() == class_field:
        styled = {}
        for category in renderer.categories():
            try:
                value = int(float(category.value()))
            except (TypeError, ValueError):
                continue
            styled[value] = (category.label() or str(value), category.symbol().color().name())
    choice = None
    if name_field_key:
        choice = f"a '{algorithm.parameterDefinition(name_field_key).description()}'"
    return PolygonSource(path=path, class_field=class_field, layer=layer_name or None,
                         name_field=name_field, styled_classes=styled or None,
                         name_field_choice=choice)


def config_parameter(algorithm, declared_field: Declared):
    """The Processing parameter of a config field declared with ``core.options.option``:
    a number (integer or double, with its bounds), a choice, a yes/no or a text."""
    facts, kind = declared_field.option, declared_field.kind
    label = algorithm.tr(facts.label)
    if facts.output:
        return QgsProcessingParameterRasterDestination(facts.key, label, optional=True,
                                                       createByDefault=False)
    if facts.choices:
        return ChoiceParameter(facts.key, label, facts.values,
                               [algorithm.tr(text) for _, text in facts.choices],
                               declared_field.default)
    if kind is bool:
        return QgsProcessingParameterBoolean(facts.key, label,
                                             defaultValue=declared_field.default)
    if kind in (int, float):
        number = NUMBER_INTEGER if kind is int else NUMBER_DOUBLE
        bounds = {name: kind(value) for name, value in (("minValue", facts.minimum),
                                                         ("maxValue", facts.maximum))
                  if value is not None}
        default = facts.unset if declared_field.default is None else declared_field.default
        return QgsProcessingParameterNumber(facts.key, label, number, defaultValue=default,
                                            **bounds)
    return QgsProcessingParameterString(facts.key, label, defaultValue=declared_field.default)


def add_config_parameters(algorithm, config_class,
                          names: Optional[Sequence[str]] = None) -> None:
    """The parameters of ``config_class``'s declared fields (``names`` in that order; None:
    every declared field the algorithm lacks so far, so that a new field reaches the
    Toolbox without an edit here)."""
    for item in declared(config_class, names):
        if names is None and algorithm.parameterDefinition(item.option.key) is not None:
            continue
        add_parameter(algorithm, config_parameter(algorithm, item), item.option.help,
                      advanced=item.option.advanced)


def config_value(algorithm, parameters, context, declared_field: Declared):
    """The config value a field's parameter holds (None where it holds ``unset``)."""
    facts, kind, key = declared_field.option, declared_field.kind, declared_field.option.key
    if facts.output:
        return algorithm.parameterAsOutputLayer(parameters, key, context) or None
    if facts.choices:
        return choice_value(algorithm, parameters, key, context, facts.values)
    if kind is bool:
        return algorithm.parameterAsBoolean(parameters, key, context)
    if kind is int:
        value = algorithm.parameterAsInt(parameters, key, context)
    elif kind is float:
        value = algorithm.parameterAsDouble(parameters, key, context)
    else:
        return (algorithm.parameterAsString(parameters, key, context) or "").strip() \
            or declared_field.default
    return None if facts.unset is not None and value == facts.unset else value


def field_value(algorithm, parameters, context, config_class, name: str):
    """The config value the parameter of ``config_class``'s declared field ``name`` holds."""
    return config_value(algorithm, parameters, context, next(declared(config_class, (name,))))


def config_arguments(algorithm, parameters, context, config_class,
                     names: Optional[Sequence[str]] = None,
                     exclude: Sequence[str] = ()) -> List[str]:
    """The engine options that give the declared fields (all but ``exclude``, or
    ``names``) their parameters' values: ``--flag VALUE`` for numbers and texts; a choice
    or a yes/no only where it differs from the default, and nothing for an unset value (the
    engine's default, the same declaration, applies)."""
    arguments = []
    for item in declared(config_class, names):
        if item.name in exclude:
            continue
        value = config_value(algorithm, parameters, context, item)
        if (item.kind is bool or item.option.choices) and value == item.default:
            continue
        if item.kind is bool:
            arguments.append(item.option.flag)
        elif value is not None:
            arguments += [item.option.flag, repr(value) if isinstance(value, float)
                          else str(value)]
    return arguments


def raster_arguments(rasters: Sequence[Tuple[str, str]]) -> List[str]:
    """``--hs PATH --sar PATH ...`` for (modality name, path) pairs."""
    arguments = []
    for name, path in rasters:
        arguments += [f"--{name}", path]
    return arguments


def polygon_arguments(source: PolygonSource, with_names: bool = True) -> List[str]:
    """The engine options of a :class:`PolygonSource`."""
    arguments = ["--polygons", source.path, "--class-field", source.class_field]
    if source.layer:
        arguments += ["--layer", source.layer]
    if with_names:
        if source.name_field:
            arguments += ["--name-field", source.name_field]
        if source.styled_classes:
            arguments += ["--class-styles", json.dumps(
                {str(value): list(pair) for value, pair in source.styled_classes.items()})]
        if source.name_field_choice:
            arguments += ["--name-field-choice", source.name_field_choice]
    return arguments
