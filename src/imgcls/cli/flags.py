"""The train command's flags, one per config field, made from the fields' declarations (config.py): typer
reads a command's parameters from its `__signature__`, so the signature is built rather than written out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Optional

import typer

from imgcls.config import settings
from imgcls.options import Setting


def with_config_flags(command: Callable, grid: bool = False) -> Callable:
    """`command(<its own typer parameters>, **options)` gets a flag per config field in `options`, each None
    when not given (so that a flag overrides the file only when given). The fields' flags come first, in the
    order of Config: the command's own parameters then follow them in the panels they name."""
    own = inspect.signature(command, eval_str=True)
    parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in own.parameters.values()
                  if parameter.kind is not parameter.VAR_KEYWORD]  # typer passes every value by name
    fields = [_parameter(setting, grid) for setting in settings().values()]
    command.__signature__ = own.replace(parameters=[*fields, *parameters])
    return command


def with_grid_flags(command: Callable) -> Callable:
    """with_config_flags for `imgcls sweep`: every flag takes text, one value or several (grid.py reads it)."""
    return with_config_flags(command, grid=True)


def _parameter(setting: Setting, grid: bool = False) -> inspect.Parameter:
    switch = setting.cli_type() is bool  # a switch in every command (one name, one meaning): one value a sweep
    decls = (f"{setting.flag}/--no-{setting.flag[2:]}",) if switch else (setting.flag,)
    flag = typer.Option(*decls, help=setting.help_text(), rich_help_panel=setting.option.panel)
    kind = str if grid and not switch else setting.cli_type()
    return inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], flag])
