"""The one exception type for a user's mistake.

Anything raised as UserError reaches the terminal as a single line and exit code 2;
everything else is our bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(what: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}{did_you_mean(value, choices)}; choose one of: {', '.join(choices)}")
    return value
