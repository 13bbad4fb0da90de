"""The flags of train, sweep and lr-find, one per config field, made from the fields' declarations (config.py):
typer reads a command's parameters from its `__signature__`, so the signature is built rather than written out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Optional

import typer

from imgcls.config import settings


def with_config_flags(command: Callable, grid: bool = False) -> Callable:
    """`command(<its own parameters>, **options)` gets a flag per config field, in the order of Config, each None
    when not given (a flag overrides the file only when given); `grid`: each takes text (a sweep's values)."""
    own = inspect.signature(command, eval_str=True)
    parameters = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in own.parameters.values()
                  if parameter.kind is not parameter.VAR_KEYWORD]  # typer passes every value by name
    fields = []
    for setting in settings().values():
        switch = setting.cli_type() is bool  # a switch in every command (one name, one meaning): one value a sweep
        decls = (f"{setting.flag}/--no-{setting.flag[2:]}",) if switch else (setting.flag,)
        flag = typer.Option(*decls, help=setting.help_text(), rich_help_panel=setting.option.panel)
        kind = str if grid and not switch else setting.cli_type()
        fields.append(inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[kind], flag]))
    command.__signature__ = own.replace(parameters=[*fields, *parameters])
    return command
