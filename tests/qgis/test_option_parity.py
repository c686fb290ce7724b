"""Toolbox parity: every option of the engine's train, classify and evaluate commands is
reachable from its Processing algorithm, or is listed below as engine-only with the reason.
An engine option added without either fails here."""
import pytest

#: Engine options no Toolbox parameter gives, by command, each with the reason.
ENGINE_ONLY = {
    "train": {
        "--layer": "the Toolbox passes the chosen layer itself (a layer inside a file is "
                   "exported or named by Processing)",
        "--class-styles": "comes from the polygon layer's categorised style, not a parameter",
        "--weights-cache": "the Processing setting MAMOL_WEIGHTS_CACHE, via the environment",
        "--experts": "ablation switch of the paper's Table 5 (research use)",
        "--table1": "the paper's Table 1 protocol (bench/paper/paper_protocol.py)",
    },
    "classify": {
        "--weights-cache": "the Processing setting MAMOL_WEIGHTS_CACHE, via the environment",
        "--mask-layer": "the Toolbox passes the chosen mask layer itself",
    },
    "evaluate": {
        "--weights-cache": "the Processing setting MAMOL_WEIGHTS_CACHE, via the environment",
        "--layer": "the Toolbox passes the chosen layer itself",
    },
}
#: Options of every command that are about the engine's own output, not the run.
COMMON = {"-h", "--help", "--progress", "--debug", "--quiet"}


def engine_options(command: str) -> set:
    from mamol.engine.main import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {flag for action in sub._actions for flag in action.option_strings
            if flag.startswith("--")} - COMMON


def flags(arguments) -> set:
    return {a for a in arguments if isinstance(a, str) and a.startswith("--")}


def reached(algorithm_id: str, variants, context, feedback) -> set:
    from qgis.core import QgsApplication
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    found = set()
    for parameters in variants:
        arguments = algorithm.engine_arguments(parameters, context, feedback)
        found |= flags(arguments[0] if isinstance(arguments, tuple) else arguments)
    return found


@pytest.fixture
def context():
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback
    return QgsProcessingContext(), QgsProcessingFeedback()


def test_every_train_option_is_in_the_toolbox_or_listed(mamol_provider, small_scene,
                                                        tiny_model, tmp_path, context):
    base = {"HS": str(small_scene.hs), "SAR": str(small_scene.sar),
            "LIDAR": str(small_scene.lidar), "POLYGONS": str(small_scene.training_polygons),
            "CLASS_FIELD": "class_id", "CLASS_NAME_FIELD": "class_name",
            "BACKBONE": "mamol-tiny-vit", "WEIGHTS": 1, "CHECKPOINT": str(tiny_model),
            "MISSING_MODE": 1, "SIMULATE_VALIDATION": True, "TRAINING_MODE": 1,
            "MODEL_KIND": 1, "BALANCE_CLASSES": False, "PRECISION": 2, "COMPILE": 1,
            "DEVICE": "cpu",
            "OUTPUT_MODEL": str(tmp_path / "m.mamol"),
            "OUTPUT_REPORT": str(tmp_path / "r.html")}
    other = dict(base, POLYGONS=None, CLASS_FIELD=None, CLASS_NAME_FIELD=None,
                 LABEL_RASTER=str(small_scene.reference_labels), WEIGHTS=0, MISSING_MODE=3)
    found = reached("mamol:trainmodel", [base, other], *context)
    assert_parity("train", found)


def test_every_classify_option_is_in_the_toolbox_or_listed(mamol_provider, small_scene,
                                                           tiny_model, tmp_path, context):
    parameters = {"MODEL": str(tiny_model), "HS": str(small_scene.hs),
                  "SAR": str(small_scene.sar), "LIDAR": str(small_scene.lidar), "REFERENCE": 1,
                  "COG": True, "DEVICE": 1, "TILE_BLEND": 1, "PRECISION": 2, "COMPILE": 1,
                  "EXTENT": "0,1,0,1 [EPSG:32632]",
                  "MASK": str(small_scene.training_polygons), "MAX_MISSING_FRACTION": 0.5,
                  "OUTPUT": str(tmp_path / "c.tif")}
    for key in ("OUTPUT_PROBABILITIES", "OUTPUT_CONFIDENCE", "OUTPUT_ENTROPY",
                "OUTPUT_MODALITIES"):
        parameters[key] = str(tmp_path / f"{key.lower()}.tif")
    found = reached("mamol:classify", [parameters], *context)
    assert_parity("classify", found)


def test_every_evaluate_option_is_in_the_toolbox_or_listed(mamol_provider, small_scene,
                                                           tiny_model, tmp_path, context):
    base = {"MODEL": str(tiny_model), "HS": str(small_scene.hs), "SAR": str(small_scene.sar),
            "LIDAR": str(small_scene.lidar), "LABEL_RASTER": str(small_scene.reference_labels), "ABSENT": [1],
            "HS_AVAILABILITY": 0.5, "FORCE_INDEPENDENTLY": True, "MAX_MISSING_FRACTION": 0.5,
            "PRECISION": 2, "DEVICE": "CUDA:1",
            "OUTPUT_REPORT": str(tmp_path / "e.html")}
    polygons = dict(base, LABEL_RASTER=None, POLYGONS=str(small_scene.training_polygons),
                    CLASS_FIELD="class_id")
    found = reached("mamol:evaluate", [base, polygons], *context)
    assert_parity("evaluate", found)


def assert_parity(command: str, found: set) -> None:
    options = engine_options(command)
    listed = set(ENGINE_ONLY[command])
    assert not listed - options, f"listed but not an engine option: {listed - options}"
    assert not found & listed, f"listed as engine-only but in the Toolbox: {found & listed}"
    missing = options - found - listed
    assert not missing, f"engine options neither in the Toolbox nor listed: {missing}"


def declared_configs():
    """Each command's config classes whose declared fields both sides build from."""
    from mamol.core.inference import ClassifyConfig
    from mamol.training.evaluation import EvaluationConfig
    from mamol.training.labels import SplitConfig
    from mamol.training.trainer import TrainingConfig
    return {("train", "mamol:trainmodel"): (TrainingConfig, SplitConfig),
            ("classify", "mamol:classify"): (ClassifyConfig,),
            ("evaluate", "mamol:evaluate"): (EvaluationConfig,)}


def test_every_declared_config_field_is_an_engine_option_and_a_parameter(mamol_provider):
    """A field declared with core.options.option() that one side forgot fails here: the
    engine's option and the Toolbox's parameter both come from the field."""
    from qgis.core import QgsApplication
    from mamol.core.options import declared
    for (command, algorithm_id), classes in declared_configs().items():
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        parameters = {d.name(): d for d in algorithm.parameterDefinitions()}
        options = engine_options(command)
        for config_class in classes:
            for item in declared(config_class):
                facts = item.option
                assert facts.flag in options, (command, item.name)
                assert facts.key in parameters, (algorithm_id, item.name)
                definition = parameters[facts.key]
                assert definition.description() == facts.label, (algorithm_id, item.name)
                expected = facts.values.index(item.default) if facts.choices else \
                    (facts.unset if item.default is None else item.default)
                assert definition.defaultValue() == expected, (algorithm_id, item.name)
