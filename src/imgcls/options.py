"""How a config field declares itself as an option: its help, its panel in `imgcls train --help`, its choices,
its checks and its parser, beside its default (dataclass field metadata). config.py declares every field with
`option(...)`; validation, the train command's flags and their --help are all read from these declarations.

A check is a function (value, name) -> the message of what is wrong, or None. `name` is where the value came
from: the flag (`--lr`) or the YAML key (`optim.lr in cifar10.yaml`), so that the message points at what to fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imgcls.errors import choice_problem, shown

Check = Callable[[Any, str], "str | None"]
Choices = Sequence[str] | Callable[[], Sequence[str]]  # a callable for choices known only where they live (datasets)

# the panels of `imgcls train --help`, in the order they are shown
DATA, MODEL, OPTIMIZATION, RUN = "Data", "Model and loss", "Optimization", "Run"


@dataclass(frozen=True)
class Option:
    help: str  # "{default}" marks where --help shows the default, else it follows the help
    panel: str
    choices: Choices | None = None
    what: str | None = None  # the name in "unknown <what> 'x'"; the field's name unless given
    checks: tuple[Check, ...] = ()
    parse: Callable[[str], Any] | None = None  # the flag's text to the value (the flag is then a string)
    shown_default: str | None = None  # the default as --help says it, where the value itself would not say it


def option(default: Any, help: str, panel: str, *, choices: Choices | None = None, what: str | None = None,
           check: Check | tuple[Check, ...] = (), parse: Callable[[str], Any] | None = None,
           shown_default: str | None = None) -> Any:
    """A dataclass field with its option's declaration (read back by `declared`)."""
    checks = check if isinstance(check, tuple) else (check,)
    return dataclasses.field(default=default, metadata={"option": Option(help, panel, choices, what, checks, parse,
                                                                         shown_default)})


def must(test: Callable[[Any], bool], phrase: str) -> Check:
    """A check whose message is '<name> must be <phrase>, not <value>'."""
    return lambda value, name: None if test(value) else f"{name} must be {phrase}, not {shown(value)}"


FINITE = must(math.isfinite, "a finite number")  # first: the range checks of a NaN would say something odd


@dataclass(frozen=True)
class Setting:
    """One declared field: where it is in the config, and its option."""

    section: str
    name: str
    default: Any
    annotation: Any
    option: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def choices(self) -> Sequence[str] | None:
        choices = self.option.choices
        return choices() if callable(choices) else choices

    def problem(self, value: Any, name: str | None = None) -> str | None:
        """What is wrong with this value (None when nothing is; None, 'not set', is never wrong), named as
        `name` says (the flag by default). A message that names no one (unknown loss 'x') is prefixed with a
        YAML key, so that the user knows which line of which file to fix."""
        name = name or self.flag
        if value is None:
            return None
        choices = self.choices()
        message = None
        if choices is not None:
            message = choice_problem(self.option.what or self.name, value, choices)
        for check in self.option.checks:
            message = message or check(value, name)
        if message and name != self.flag and name not in message:
            message = f"{name}: {message}"
        return message

    def cli_type(self) -> type:
        """The type of the flag's value: text where the field parses it, else the field's type without None."""
        if self.option.parse is not None:
            return str
        kinds = typing.get_args(self.annotation) if is_union(self.annotation) else (self.annotation,)
        (kind,) = [k for k in kinds if k is not type(None)]
        return kind

    def help_text(self) -> str:
        """The help with its default, escaped for rich ('\\[' is a bracket, not a style tag)."""
        default = self.option.shown_default or str(self.default)
        shown_default = f"\\[default: {default}]"
        if "{default}" in self.option.help:
            return self.option.help.replace("{default}", " " + shown_default)
        return f"{self.option.help} {shown_default}"


def declared(sections: dict[str, type]) -> list[Setting]:
    """Every field of these dataclasses (section name -> class), in order."""
    settings = []
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            settings.append(Setting(section, f.name, f.default, hints[f.name], f.metadata["option"]))
    return settings


def is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def or_list(names: Sequence[str]) -> str:
    """'a, b or c'."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
