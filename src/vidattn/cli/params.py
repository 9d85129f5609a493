"""`--param KEY=VALUE` options: method settings from the command line, values read as YAML scalars/lists.

The parsing is :func:`vidattn.params.parse_key_values` (shared with training's ``--set``); here lists become tuples
and, for a method, values are checked against its config dataclass and the CLI's defaults are filled in.
"""

from __future__ import annotations

from ..params import check_field_types, parse_key_values
from ..processors.registry import METHODS


def parse_params(pairs: list[str] | None) -> dict:
    """``["decay=0.2", "spatial_chunk=[4, 13]", "sink=false"]`` -> ``{"decay": 0.2, "spatial_chunk": (4, 13), "sink": False}``."""
    return parse_key_values(pairs, option="--param", tuples=True)


def method_settings(method: str, pairs: list[str] | None) -> dict:
    """``--param`` values for ``method`` over its registry ``generate`` defaults (radial: the paper's decay 0.2, what
    `generate`, `demo`, `bench` and `mask` all use), type-checked against the method's config class."""
    params = parse_params(pairs)
    config = METHODS[method].config if method in METHODS else None
    if config is None and params:
        raise ValueError(f"--param: method {method!r} takes no parameters, got {sorted(params)}")
    if config is not None:
        known = set(config.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"--param: unknown {method} parameter(s) {unknown}; allowed: {sorted(known)}")
        check_field_types(config, params, what=method)
    return {**(METHODS[method].generate if method in METHODS else {}), **params}


def config_default(method: str, name: str, params: dict | None = None):
    """``params[name]`` or the method's config default for field ``name`` (None if it has no such field)."""
    if params and name in params:
        return params[name]
    config = METHODS[method].config
    field = None if config is None else config.__dataclass_fields__.get(name)
    return None if field is None else field.default
