"""KEY=VALUE settings from a command line (``--param`` of the CLI, ``--set`` of training): one parser for both.

Values are YAML scalars or lists; malformed YAML, a missing ``=`` and non-finite numbers (``.inf``, ``.nan``) are a
one-line ``ValueError`` naming the option and the key. :func:`check_field_types` then checks the values against the
annotations of the dataclass they configure (``decay=true`` for a float field is an error, not ``decay=1.0``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def parse_key_values(pairs: list[str] | None, option: str = "--param", tuples: bool = False) -> dict[str, Any]:
    """``["decay=0.2", "chunk=[4, 13]"]`` -> ``{"decay": 0.2, "chunk": [4, 13]}`` (lists as tuples with ``tuples``).

    Keys are stripped and ``-`` becomes ``_``; a key given twice keeps its last value.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{option} must look like KEY=VALUE (e.g. decay=0.2), got {pair!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{option} {key}: {text!r} is not a valid YAML value ({problem}); quote strings, write lists as [a, b]") from None
        if not _finite(value):
            raise ValueError(f"{option} {key}: {text!r} is not a finite number; give a finite value")
        out[key] = tuple(value) if tuples and isinstance(value, list) else value
    return out


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (read from YAML) fits the type annotation ``hint``; unknown hints accept anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if origin is tuple and (len(args) != 2 or args[1] is not Ellipsis):
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in args
    return True


def _describe(hint: Any) -> str:
    named = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in named:
        return named[hint]
    text = str(hint).replace("typing.", "").replace("NoneType", "None")
    return getattr(hint, "__name__", text) if typing.get_origin(hint) is None else text


def check_field_types(config_cls: type, values: dict[str, Any], what: str, option: str = "--param") -> None:
    """Raise ``ValueError`` for the first value in ``values`` whose type does not fit ``config_cls``'s field.

    Unknown keys are left to the config class (which names the allowed ones).
    """
    if not dataclasses.is_dataclass(config_cls):
        return
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an annotation we cannot resolve: leave the check to the class itself
        return
    for key, value in values.items():
        if key in hints and not _matches(value, hints[key]):
            shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            raise ValueError(f"{option} {key}={shown}: {what}'s {key} must be {_describe(hints[key])}")
