"""One declaration per option: a config field carries its command-line and Toolbox facts.

A field declared with :func:`option` holds, besides its default, an :class:`Option` in its
metadata: the engine's flag, the Processing parameter's name and label, the help text,
bounds, choices and whether the parameter is advanced. The engine builds its argparse
options from these fields (``engine/options.py``), the algorithms build their plain
number, choice and yes/no parameters from them and turn the values back into engine
arguments with one function (``algorithms/common.py``). Adding a numeric option is two
edits: the field, and its use.

Values stay plain ``str``/``int``/``float``/``bool`` in the configs: the enums that name
choices (:class:`~mamol.core.devices.Precision`, ``CompileMode``, ``ModelKind``) are
``str`` mix-ins, given here as ``choices`` so that the valid values are declared once.
"""
import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Tuple

METADATA_KEY = "mamol_option"


@dataclass(frozen=True)
class Option:
    """The outside facts of one config field."""

    flag: str                       # the engine's option, e.g. "--lr"
    key: str                        # the Processing parameter's name, e.g. "LEARNING_RATE"
    label: str                      # the Processing parameter's label
    help: str                       # one help text for both
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    # (value, Toolbox label) of each choice, in the Toolbox's enum order
    choices: Tuple[Tuple[str, str], ...] = ()
    advanced: bool = False
    negate: bool = False            # a yes/no field whose flag turns it off (--no-balance)
    kind: Optional[type] = None     # the value type where the default is None
    unset: Any = None               # the Toolbox value that means "not given" (the default)
    output: bool = False            # a raster the run writes: a GeoTIFF path, None = not

    @property
    def values(self) -> Tuple[str, ...]:
        return tuple(value for value, _ in self.choices)


def option(default: Any, **facts) -> Any:
    """A dataclass field with ``default`` and its :class:`Option` (keyword arguments)."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: Option(**facts)})


def choices(values, labels: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``(value, label)`` pairs from an enum (or a sequence of values) and their labels."""
    names = [v.value if isinstance(v, enum.Enum) else v for v in values]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} choices but {len(labels)} labels")
    return tuple(zip(names, labels))


@dataclass(frozen=True)
class Declared:
    """One field declared with :func:`option`: its name, default, type and facts."""

    name: str
    default: Any
    kind: type
    option: Option


def declared(config_class, names: Optional[Sequence[str]] = None) -> Iterator[Declared]:
    """The option fields of ``config_class`` (all, or ``names`` in that order)."""
    found = {}
    for item in dataclasses.fields(config_class):
        facts = item.metadata.get(METADATA_KEY)
        if facts is not None:
            default = item.default
            kind = facts.kind or type(default)
            found[item.name] = Declared(item.name, default, kind, facts)
    for name in (names if names is not None else list(found)):
        if name not in found:
            raise KeyError(f"{config_class.__name__}.{name} is not declared with option()")
        yield found[name]


def default(config_class, name: str) -> Any:
    """The default of a config dataclass's field: the one place a default is declared."""
    for item in dataclasses.fields(config_class):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            return item.default_factory()
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def choosing(field: dataclasses.Field, value: str) -> str:
    """How a user sets the option ``field`` (a field made by :func:`option`) to ``value``,
    in the Toolbox and on the command line: for messages that say what to do."""
    facts = field.metadata[METADATA_KEY]
    shown = dict(facts.choices).get(value, value)
    return f"{facts.label} '{shown}' in the Toolbox, {facts.flag} {value} on the command line"
