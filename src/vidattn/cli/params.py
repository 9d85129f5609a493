"""`--param KEY=VALUE` options: method settings from the command line, values read as YAML scalars/lists."""

from __future__ import annotations

import yaml


def parse_params(pairs: list[str] | None) -> dict:
    """``["decay=0.2", "spatial_chunk=[4, 13]", "sink=false"]`` -> ``{"decay": 0.2, "spatial_chunk": (4, 13), "sink": False}``."""
    params = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param must look like KEY=VALUE (e.g. decay=0.2), got {pair!r}")
        value = yaml.safe_load(text)
        params[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return params
