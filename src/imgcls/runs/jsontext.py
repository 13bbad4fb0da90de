"""Strict JSON for other programs to read: a number that is not finite (Python's json writes NaN, Infinity) becomes
null, and "null_because" says where and what it was ({"test.loss": "nan: ..."}): missing and unwritable differ."""

from __future__ import annotations

import json
import math


def dumps(value: dict) -> str:
    """`value` (a JSON object) as one line of strict JSON."""
    reasons: dict[str, str] = {}
    cleaned = _finite(value, "", reasons)
    if reasons:
        cleaned["null_because"] = {path: f"{why}: not a finite number" for path, why in reasons.items()}
    return json.dumps(cleaned, allow_nan=False)


def _finite(value, path: str, reasons: dict[str, str]):
    if isinstance(value, float) and not math.isfinite(value):
        reasons[path] = str(value)
        return None
    if isinstance(value, dict):
        return {key: _finite(item, f"{path}.{key}".lstrip("."), reasons) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item, f"{path}[{index}]", reasons) for index, item in enumerate(value)]
    return value
