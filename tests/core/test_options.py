"""Options declared once (core/options.py): each declared config field is consistent, and
the engine's command line built from the fields gives the configs back."""
import argparse

import pytest

from mamol.core.inference import ClassifyConfig
from mamol.core.options import declared, default, option
from mamol.core.sample_scene import SampleSceneConfig
from mamol.engine.options import add_config_options, config_values
from mamol.training.evaluation import EvaluationConfig
from mamol.training.labels import SplitConfig
from mamol.training.trainer import TrainingConfig

CONFIGS = (TrainingConfig, SplitConfig, ClassifyConfig, EvaluationConfig, SampleSceneConfig)


@pytest.mark.parametrize("config_class", CONFIGS, ids=lambda c: c.__name__)
def test_every_declared_field_is_consistent(config_class):
    fields = list(declared(config_class))
    assert fields, "no declared field"
    for item in fields:
        facts = item.option
        assert facts.flag.startswith("--") and facts.key.isupper() and facts.label, item.name
        assert facts.help.endswith((".", ")")), item.name
        if facts.output:
            assert item.default is None and facts.kind is str, item.name
        elif item.default is None:
            assert facts.kind is not None and facts.unset is not None, item.name
        else:
            assert isinstance(item.default, item.kind), item.name
        if facts.choices:
            assert item.default in facts.values, item.name
        value = facts.unset if item.default is None else item.default
        assert value is None or facts.minimum is None or facts.minimum <= value, item.name
        assert value is None or facts.maximum is None or value <= facts.maximum, item.name
    assert len({i.option.flag for i in fields}) == len(fields)
    assert len({i.option.key for i in fields}) == len(fields)


def parser_for(*classes):
    parser = argparse.ArgumentParser()
    for config_class in classes:
        add_config_options(parser, config_class)
    return parser


def test_the_command_line_gives_the_declared_defaults_back():
    args = parser_for(TrainingConfig, SplitConfig).parse_args([])
    assert config_values(args, TrainingConfig) == {
        i.name: default(TrainingConfig, i.name) for i in declared(TrainingConfig)}
    assert SplitConfig(**config_values(args, SplitConfig)) == SplitConfig()


def test_numbers_choices_and_negated_flags_reach_the_config():
    args = parser_for(TrainingConfig).parse_args(
        ["--lr", "0.01", "--epochs", "3", "--no-balance", "--model-kind", "tile",
         "--precision", "bf16"])
    values = config_values(args, TrainingConfig)
    assert values["learning_rate"] == 0.01 and values["epochs"] == 3
    assert values["balance_classes"] is False
    assert values["model_kind"] == "tile" and values["precision"] == "bf16"


def test_a_choice_outside_the_declared_values_is_refused(capsys):
    with pytest.raises(SystemExit):
        parser_for(ClassifyConfig).parse_args(["--tile-blend", "median"])
    assert "invalid choice" in capsys.readouterr().err


def test_fields_the_parser_already_has_are_not_added_twice():
    parser = argparse.ArgumentParser()
    add_config_options(parser, ClassifyConfig, ("cog", "stride"))
    add_config_options(parser, ClassifyConfig)           # the rest
    args = parser.parse_args(["--cog", "--stride", "2", "--max-missing-fraction", "0.3"])
    values = config_values(args, ClassifyConfig)
    assert values["cog"] is True and values["stride"] == 2
    assert values["max_missing_fraction"] == 0.3


def test_an_undeclared_name_is_an_error():
    with pytest.raises(KeyError, match="not declared"):
        list(declared(ClassifyConfig, ("model_path",)))


def test_option_keeps_the_default():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Example:
        size: int = option(3, flag="--size", key="SIZE", label="Size", help="A size.")

    assert Example().size == 3 and default(Example, "size") == 3
    assert [i.name for i in declared(Example)] == ["size"]
