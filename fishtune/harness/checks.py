"""Bad input and the typed reading of config values: torch-free, shared by the config checks.

`ConfigError` is what every check raises: one line naming the key, the bad value and what is allowed
(fishtune.run prints it and exits with code 2). The readers below (`check_int`, `check_float`,
`check_choice`) return a value as the run will use it, or raise ConfigError; validate.py and the
MethodSpecs' own checks (methods.py) use them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping


class ConfigError(ValueError):
    """Bad input (a config value, a GLUE file, a hub id that cannot be had): one line, exit code 2."""


MISSING = object()


def get(config: Mapping[str, Any], key: str, default: Any = MISSING) -> Any:
    """config["a"]["b"] for key "a.b"; `default` when absent, else an error naming the key."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not MISSING:
                return default
            raise ConfigError(f"{key} is missing from the config")
        node = node[part]
    return node


def show(value: Any) -> str:
    return "null" if value is None else repr(value)


def as_int(value: Any) -> int | None:
    """An integer as the run will use it (int(), so "42" from an environment variable counts); not a bool
    or float: a fractional count would be truncated without a word."""
    if isinstance(value, bool) or isinstance(value, float):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# Keys the code reads with a default (peft.*, mask.*) may be absent: `optional` skips those. null is a
# value of its own, allowed where `null` says what it means.
ABSENT = object()


def check_int(config: Mapping[str, Any], key: str, lo: int, hi: int | None = None, null: str = "",
         why: str = "", optional: bool = False) -> int | None:
    """config[key] as an integer in lo..hi; `null` (the text saying what null means) allows null."""
    value = get(config, key, ABSENT if optional else MISSING)
    if value is ABSENT or (value is None and null):
        return None
    n = as_int(value)
    if n is None or n < lo or (hi is not None and n > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer {lo}..{hi}"
        raise ConfigError(f"{key}={show(value)}: must be {allowed}{f', or null ({null})' if null else ''}{why}")
    return n


def check_float(config: Mapping[str, Any], key: str, lo: float, *, above: bool, hi: float | None = None,
           below: bool = False, null: str = "", optional: bool = False) -> float | None:
    """config[key] as a finite number > lo (above) or >= lo, and < hi (below) or <= hi."""
    value = get(config, key, ABSENT if optional else MISSING)
    if value is ABSENT or (value is None and null):
        return None
    x = as_float(value)
    if x is None or (x <= lo if above else x < lo) or (hi is not None and (x >= hi if below else x > hi)):
        allowed = f"a finite number {'>' if above else '>='} {lo:g}"
        if hi is not None:
            allowed += f" and {'<' if below else '<='} {hi:g}"
        raise ConfigError(f"{key}={show(value)}: must be {allowed}{f', or null ({null})' if null else ''}")
    return x


def check_choice(config: Mapping[str, Any], key: str, choices: tuple[str, ...], optional: bool = False) -> str | None:
    value = get(config, key, ABSENT if optional else MISSING)
    if value is ABSENT:
        return None
    if value not in choices:
        raise ConfigError(f"{key}={show(value)}: choose one of: {', '.join(choices)}")
    return value
