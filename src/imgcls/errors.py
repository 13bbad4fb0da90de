"""The one exception type for a user's mistake: a UserError reaches the terminal as one line and exit code 2;
everything else is our bug and keeps its traceback."""

import difflib
import reprlib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


SHOWN_LENGTH = 80

# reprlib stops after a few items at each of a few levels: a value read from a user's file may be a structure of
# billions of items sharing a few objects (YAML aliases), whose full repr would take minutes and gigabytes.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple, _SHORT_REPR.maxdict = 3, 4, 4, 4
_SHORT_REPR.maxstring, _SHORT_REPR.maxlong, _SHORT_REPR.maxother = SHOWN_LENGTH, 40, SHOWN_LENGTH


def shown(value: object) -> str:
    """A value as a message shows it: its repr, cut to about SHOWN_LENGTH characters."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_LENGTH else text[:SHOWN_LENGTH - 3] + "..."


def validation_problem(error, where: str) -> str:
    """pydantic's first objection to a file's contents in a message's words, about `where` (a file, a line of one)."""
    first = error.errors()[0]
    key, value = "'" + ".".join(map(str, first["loc"])) + "'", _described(first["input"])
    if not first["loc"]:
        return f"{where} is {value}, not a JSON object"
    if first["type"] == "missing":
        return f"{where} lacks {key}"
    return f"{where}: {key} is {value} ({first['msg'][0].lower()}{first['msg'][1:]})"


def _described(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), shown(value))


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choice_problem(what: str, value: str, choices: Iterable[str]) -> str | None:
    """'unknown <what> <value> (did you mean ...); choose one of: ...', or None for one of the choices."""
    choices = list(choices)
    if value in choices:
        return None
    return f"unknown {what} {shown(value)}{did_you_mean(str(value), choices)}; choose one of: {', '.join(choices)}"


def check_choice(what: str, value: str, choices: Iterable[str]) -> str:
    problem = choice_problem(what, value, choices)
    if problem:
        raise UserError(problem)
    return value
