"""The backbone and the device are choices listing the valid values (issue 31), and a choice
also takes its value as text: saved models (.model3) and qgis_process command lines gave
the backbone and the device as free text, and keep working."""
import pytest


def definition(algorithm_id, key):
    from qgis.core import QgsApplication
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    return algorithm, algorithm.parameterDefinition(key)


@pytest.mark.parametrize("algorithm_id", ["mamol:trainmodel", "mamol:classify",
                                          "mamol:evaluate"])
def test_the_device_is_a_choice_of_the_declared_devices(mamol_provider, algorithm_id):
    from mamol.algorithms.common import ChoiceParameter
    from mamol.core.devices import DEVICE_CHOICES
    _, device = definition(algorithm_id, "DEVICE")
    assert isinstance(device, ChoiceParameter)
    assert device.metadata()[ChoiceParameter.VALUES][:3] == ["auto", "cpu", "cuda"]
    assert device.metadata()[ChoiceParameter.VALUES] == [v for v, _ in DEVICE_CHOICES]
    assert device.options()[1] == "CPU"
    assert device.defaultValue() == 0


def test_the_backbone_is_a_choice_of_the_offered_architectures(mamol_provider):
    from mamol.algorithms.common import ChoiceParameter
    from mamol.core.backbone import ARCH_CHOICES, DEFAULT_ARCH, TINY_ARCH
    _, backbone = definition("mamol:trainmodel", "BACKBONE")
    values = backbone.metadata()[ChoiceParameter.VALUES]
    assert values == [value for value, _ in ARCH_CHOICES]
    assert values[backbone.defaultValue()] == DEFAULT_ARCH
    assert {"ViT-B-16", TINY_ARCH} <= set(values)


@pytest.mark.parametrize("given, accepted", [
    ("cpu", True), ("CPU", True), (" cuda:1 ", True), (1, True), ("2", True),
    ("cuda:99", False), ("gpu", False), (99, False)])
def test_a_choice_takes_its_value_or_its_index(mamol_provider, given, accepted):
    from qgis.core import QgsProcessingContext
    _, device = definition("mamol:trainmodel", "DEVICE")
    assert device.checkValueIsAcceptable(given, QgsProcessingContext()) is accepted
    assert device.clone().checkValueIsAcceptable(given) is accepted


@pytest.mark.parametrize("given, arch", [("mamol-tiny-vit", "mamol-tiny-vit"),
                                         ("vit-b-32", "ViT-B-32"), (0, "ViT-B-16"),
                                         (None, "ViT-B-16")])
def test_the_engine_gets_the_same_values_as_before(mamol_provider, small_scene, tmp_path,
                                                   given, arch):
    """``--arch`` and ``--device`` carry the engine's names whether the Toolbox was given a
    name or an index (the values the engine took when these were text fields)."""
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback
    algorithm, _ = definition("mamol:trainmodel", "BACKBONE")
    parameters = {"HS": str(small_scene.hs), "POLYGONS": str(small_scene.training_polygons),
                  "CLASS_FIELD": "class_id", "BACKBONE": given, "WEIGHTS": 2,
                  "DEVICE": "cpu" if given else 4,
                  "OUTPUT_MODEL": str(tmp_path / "m.mamol")}
    arguments = algorithm.engine_arguments(parameters, QgsProcessingContext(),
                                           QgsProcessingFeedback())
    assert arguments[arguments.index("--arch") + 1] == arch
    assert arguments[arguments.index("--device") + 1] == ("cpu" if given else "cuda:1")


def test_an_unlisted_device_is_refused_with_the_parameter_named(mamol_provider, small_scene,
                                                                tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match="DEVICE|Device"):
        processing.run("mamol:classify", {
            "MODEL": str(tmp_path / "m.mamol"), "HS": str(small_scene.hs),
            "DEVICE": "tpu", "OUTPUT": str(tmp_path / "c.tif")})
    assert list(tmp_path.iterdir()) == []


def test_the_engine_takes_the_declared_devices_only():
    """One list of devices: the engine's ``--device`` choices are the Toolbox's."""
    from mamol.core.devices import DEVICE_CHOICES
    from mamol.engine.main import ArgumentsError, build_parser
    parser = build_parser()
    arguments = parser.parse_args(["classify", "--model", "m.mamol", "--hs", "h.tif",
                                   "--output", "c.tif", "--device", "cuda:1"])
    assert arguments.device == "cuda:1"
    with pytest.raises(ArgumentsError, match="invalid choice: 'tpu'"):
        parser.parse_args(["classify", "--model", "m.mamol", "--hs", "h.tif",
                           "--output", "c.tif", "--device", "tpu"])
    assert ("cuda:7", "GPU 7 (cuda:7)") in DEVICE_CHOICES
