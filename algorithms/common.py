"""What every MaMOL algorithm shares: core errors become ``QgsProcessingException`` and
QGIS feedback becomes the core's plain progress/cancel/log callables."""
import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingParameterDefinition, QgsProcessingParameterEnum,
                       QgsProcessingParameterRasterLayer)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..core.errors import Cancelled, MamolInputError
from ..core.modalities import MODALITIES
from ..training.labels import PolygonSource

ICON_PATH = str(Path(__file__).resolve().parent.parent / "resources" / "icon.svg")
#: Processing setting (Options → Processing → Providers → MaMOL land cover): the folder
#: that keeps downloaded backbone weights; empty = MAMOL_WEIGHTS_CACHE or Hugging Face's.
WEIGHTS_CACHE_SETTING = "MAMOL_WEIGHTS_CACHE"


class MamolAlgorithm(QgsProcessingAlgorithm):
    """What every MaMOL algorithm shares: the icon, translation in the class's own context,
    a fresh instance of the same class, and the Toolbox group named by ``GROUP``/``GROUP_ID``.
    """

    GROUP = "Model"
    GROUP_ID = "model"

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

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        """QGIS's own checks, which load each raster given as a file as a layer: with GDAL's
        sidecar files off, so that the statistics QGIS computes for the layer's default
        style are not saved as an ``.aux.xml`` beside the user's input."""
        with no_sidecars_written():
            return super().checkParameterValues(parameters, context)


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


def field_default(config_class, name: str):
    """The default of a config dataclass's field: the one place a default is declared (the
    engine's options read it the same way)."""
    for item in dataclasses.fields(config_class):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            return item.default_factory()
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def add_parameter(algorithm, parameter, help_text: str, advanced: bool = False) -> None:
    """Add ``parameter`` to ``algorithm`` with its help text, flagged Advanced if asked."""
    parameter.setHelp(algorithm.tr(help_text))
    if advanced:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    algorithm.addParameter(parameter)


class RasterFileParameter(QgsProcessingParameterRasterLayer):
    """A raster layer parameter that accepts an existing file as it is, without loading it as
    a layer to check it. ``qgis_process`` checks every value before the algorithm runs, and
    loading a raster makes QGIS compute statistics for its default style, which GDAL saves as
    an ``.aux.xml`` beside the user's input; the engine checks the file itself."""

    def clone(self):
        optional = bool(self.flags() & QgsProcessingParameterDefinition.FlagOptional)
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


#: Options of the "Precision" and "Compile" parameters, in enum order (core names).
PRECISION_CHOICES = ("auto", "fp32", "bf16")
COMPILE_CHOICES = ("off", "default", "max-autotune")
PRECISION = "PRECISION"
COMPILE = "COMPILE"


def add_compute_parameters(algorithm, with_compile: bool = True) -> None:
    """The advanced "Precision" (and "Compile encoder") parameters, after "Device"."""
    add_parameter(algorithm, QgsProcessingParameterEnum(
        PRECISION, algorithm.tr("Precision of the frozen backbone"),
        options=[algorithm.tr("Automatic (bf16 on a GPU, fp32 on the CPU)"), "fp32", "bf16"],
        defaultValue=0),
        "Number format of the frozen CLIP tower and its activations; trainable weights, "
        "gates and class scores are always fp32. bf16 is about twice as fast on a GPU; on "
        "a CPU it is slower and only useful for checking results.", advanced=True)
    if with_compile:
        add_parameter(algorithm, QgsProcessingParameterEnum(
            COMPILE, algorithm.tr("Compile the encoder (torch.compile)"),
            options=[algorithm.tr("Off"), algorithm.tr("Default"),
                     algorithm.tr("Max-autotune")], defaultValue=0),
            "Compiles the encoder once per run before the first batch (minutes; "
            "max-autotune longer). Pays off on a GPU for long runs only (see the README).",
            advanced=True)


def compute_settings(algorithm, parameters, context, with_compile: bool = True):
    """``{"precision": ..., "compile_mode": ...}`` for the core config."""
    settings = {"precision": PRECISION_CHOICES[
        algorithm.parameterAsEnum(parameters, PRECISION, context)]}
    if with_compile:
        settings["compile_mode"] = COMPILE_CHOICES[
            algorithm.parameterAsEnum(parameters, COMPILE, context)]
    return settings


def compute_arguments(settings) -> List[str]:
    """The engine options of :func:`compute_settings`'s result."""
    arguments = ["--precision", settings["precision"]]
    if "compile_mode" in settings:
        arguments += ["--compile", settings["compile_mode"]]
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
