"""Declared argument checks: one line per rule, one message format ("<name> must be <rule>, got <value>").

Every config and public function validates its arguments through these, before any work, so a bad value
is one clear ``ValueError`` naming the parameter and what is allowed. ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def _fail(name: str, rule: str, value: Any, note: str) -> None:
    raise ValueError(f"{name} must be {rule}{f' ({note})' if note else ''}, got {value!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not inf or nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, optional: bool = False, note: str = "") -> None:
    """``value`` is an int in ``[low, high]`` (either bound may be None), or None when ``optional``."""
    if optional and value is None:
        return
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        rule = "an int" + (f" >= {low}" if low is not None and high is None else "")
        rule += f" in [{low}, {high}]" if low is not None and high is not None else ""
        rule += f" <= {high}" if high is not None and low is None else ""
        _fail(name, rule + (" or None" if optional else ""), value, note)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    note: str = "",
) -> None:
    """``value`` is a finite number within the bounds (``*_open``: the bound itself is excluded), or None when ``optional``."""
    if optional and value is None:
        return
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            rule = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            rule = f"a number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            rule = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            rule = "a finite number"
        _fail(name, rule + (" or None" if optional else ""), value, note)


def check_bool(name: str, value: Any, *, optional: bool = False, note: str = "") -> None:
    """``value`` is True or False (or None when ``optional``)."""
    if optional and value is None:
        return
    if value is not True and value is not False:
        _fail(name, "True or False" + (" or None" if optional else ""), value, note)


def check_choice(name: str, value: Any, choices: Iterable[Any], *, note: str = "") -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices if c == value):
        _fail(name, f"one of {choices}", value, note)


def check_power_of_two(name: str, value: Any, *, note: str = "") -> None:
    """``value`` is a positive power-of-two int (block sizes)."""
    if not is_int(value) or value < 1 or value & (value - 1):
        _fail(name, "a power of two (e.g. 64, 128)", value, note)
