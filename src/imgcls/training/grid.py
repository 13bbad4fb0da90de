"""A sweep's grid: each option of `imgcls train` given one value, a list (a,b; 'a;b' where values hold commas) or
a log range START:STOP:COUNT, each value parsed and checked by its option's declaration, and their product.
Points that differ only in what each model keeps (MODEL_OWN) train stacked in one pass over the data."""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy

from imgcls.config import GIVEN_NONE, Config, Setting, is_number, kinds, settings
from imgcls.errors import UserError, shown

# What each stacked model keeps for itself: its update rule, its schedule, its loss and its start. Everything else
# (batch size, epochs, seed, the data and how it is read) decides the batches, which a group shares.
MODEL_OWN = frozenset({"lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs", "step_epochs",
                       "step_gamma", "loss", "class_weights", "init", "init_std", "patience"})
MAX_POINTS = 10_000  # a grid beyond this is a typo (1e-4:1:1000000), refused before anything is built
# One value in a sweep: where it runs and writes, and what decides the validation set the points are compared on
# (another seed, split, limit or dataset would compare them on other images).
SINGLE = frozenset({"out", "device", "threads", "tensorboard", "download", "stream", "skip_bad_images", "precision",
                    "gradient", "dataset", "data_dir", "val_split", "limit", "seed"})
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Point:
    """One model of the sweep: its number (from 0, in grid order) and the options the grid set for it."""

    index: int
    values: dict[str, Any]

    def label(self) -> str:
        """'lr=0.01 weight_decay=0.001': what tells this point apart, for tables and folder names."""
        return " ".join(f"{name}={describe(value)}" for name, value in self.values.items()) or "base"


def describe(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(describe(item) for item in value) + "]"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def parse_axes(flags: dict[str, str | None]) -> dict[str, list[Any]]:
    """Option name -> its values, for every flag given; each value checked by the option's declaration."""
    axes = {}
    for name, text in flags.items():
        if text is not None:
            axes[name] = parse_values(settings()[name], str(text))
            if name in SINGLE and len(axes[name]) > 1:
                raise UserError(f"{settings()[name].flag} takes one value in a sweep (its points are compared on one "
                                f"validation split, run in one place); run a sweep for each value")
            if len(axes[name]) > 1 and "auto" in axes[name]:  # 'auto' is a search, not one point of a grid
                flag = settings()[name].flag
                raise UserError(f"{flag} 'auto' cannot be one value of a list: alone it sweeps the default search's "
                                f"values; give {flag} auto, or numbers only (e.g. {flag} {_example(settings()[name])})")
    return axes


def parse_values(setting: Setting, text: str) -> list[Any]:
    flag = setting.flag
    parts = text.split(":")  # START:STOP:COUNT
    if len(parts) == 3 and "," not in text and (_takes_decimals(setting) or all(map(is_number, parts))):
        values = _log_range(setting, text)
    else:
        values = [_parse_one(setting, item.strip()) for item in _items(setting, text)]
    for value in values:
        if problem := setting.problem(value, flag):
            raise UserError(problem)
    if len(set(map(repr, values))) < len(values):
        raise UserError(f"{flag} lists a value twice ({text}); give each value once")
    return values


def _items(setting: Setting, text: str) -> list[str]:
    """Values split on ';' when the text has one (values that hold commas), else on ','."""
    if ";" not in text and setting.name == "class_weights" and all(map(is_number, text.split(","))):
        return [text]  # one weight per class is a single value: a grid of them is --class-weights none,balanced
    items = text.split(";" if ";" in text else ",")
    if any(not item.strip() for item in items):
        raise UserError(f"{setting.flag} has an empty value in {shown(text)}; separate values with single commas, "
                        f"e.g. {setting.flag} {_example(setting)}")
    return items


def _parse_one(setting: Setting, item: str) -> Any:
    if item.lower() == "none" and setting.default is None:
        return None
    if setting.option.parse is not None:
        return setting.option.parse(item)
    kind = setting.cli_type()
    if kind is str:
        return item
    with contextlib.suppress(ValueError):
        if kind is bool and item.lower() in TRUE + FALSE:
            return item.lower() in TRUE
        if kind is not bool and math.isfinite(value := kind(item)):
            return value
    kind_name = {bool: "true or false", int: "whole number", float: "number"}[kind]
    raise UserError(f"{setting.flag} takes {kind_name}s, not {shown(item)}; e.g. {setting.flag} {_example(setting)}")


def _log_range(setting: Setting, text: str) -> list[float]:
    """'a:b:n': n values from a to b, evenly spaced on a log scale (a and b included)."""
    if not _takes_decimals(setting):
        raise UserError(f"{setting.flag} takes a list ({setting.flag} {_example(setting)}); a:b:n log ranges are for "
                        f"decimal options such as --lr and --weight-decay")
    low, high, count = text.split(":")
    try:
        low_value, high_value, number = float(low), float(high), int(count)
    except ValueError:
        low_value = high_value = math.nan  # not a log range
    if not (0 < low_value < math.inf and 0 < high_value < math.inf):
        raise UserError(f"{setting.flag} {shown(text)} is not a log range: write START:STOP:COUNT with START and STOP "
                        f"above 0, e.g. {setting.flag} 1e-4:1:9")
    if number > MAX_POINTS:
        raise UserError(f"{setting.flag} {shown(text)} asks for {number:,} values, more than {MAX_POINTS:,}; give a "
                        f"smaller COUNT")
    if number < 1:
        raise UserError(f"{setting.flag} {shown(text)} asks for {number} values: the grid would be empty; give a "
                        f"COUNT of 1 or more")
    exact = numpy.geomspace(low_value, high_value, number)
    # rounded to 6 significant digits (config.yaml and the tables then show 0.001, not 0.0010000000000000002),
    # or to as many more as keep a narrow range's values apart
    for digits in range(6, 18):
        values = [float(f"{value:.{digits}g}") for value in exact]
        if len(set(values)) == len(values):
            return values
    raise UserError(f"{setting.flag} {shown(text)} gives {number} values that are not distinct (START and STOP "
                    f"are equal, or too close for {number} points); widen the range or lower COUNT")


def _takes_decimals(setting: Setting) -> bool:
    return float in kinds(setting.annotation)


def _example(setting: Setting) -> str:
    if _takes_decimals(setting):
        return "0.001,0.01"
    choices = setting.choices()
    return ",".join(list(choices)[:2]) if choices else {bool: "true,false", int: "5,10"}.get(setting.cli_type(), "a,b")


def grid_points(axes: dict[str, list[Any]]) -> list[Point]:
    """The product of the axes, in order (the last axis varies fastest)."""
    count = math.prod(len(values) for values in axes.values())
    if count > MAX_POINTS:
        raise UserError(f"the grid has {count:,} points, more than {MAX_POINTS:,}; give fewer values")
    names = list(axes)
    return [Point(index, dict(zip(names, combo))) for index, combo in enumerate(itertools.product(*axes.values()))]


def point_config(base: Config, point: Point) -> Config:
    """The base config (defaults, --config file, single-valued flags) with this point's values, validated."""
    unknown = [name for name in point.values if name not in settings()]
    if unknown:
        raise UserError(f"the sweep's grid names {shown(unknown[0])}, which is not an option; fix sweep.yaml's grid "
                        f"or start a new sweep")
    values = {name: getattr(getattr(base, setting.section), name) for name, setting in settings().items()}
    flags = {name: GIVEN_NONE if value is None else value for name, value in (values | point.values).items()}
    try:  # every value as a flag, so that a message names it as the command line does
        return Config.from_dict({}, "the sweep's grid", flags=flags)
    except UserError as error:
        raise UserError(f"point {point.index} ({point.label()}): {error}; leave that combination out (run two "
                        f"sweeps)") from None


def group_key(config: Config) -> tuple:
    """What the batches depend on: points with the same key can train stacked, on the same batches."""
    return tuple(sorted((name, repr(getattr(getattr(config, setting.section), name)))
                        for name, setting in settings().items() if name not in MODEL_OWN))
