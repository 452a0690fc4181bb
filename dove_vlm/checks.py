"""Small checks of argument values, shared by every command's arguments (`dove train`, `dove llava-train`,
`dove report`, ...): each raises a `ValueError` that names the flag and says what is valid."""

from __future__ import annotations

import math
from typing import Any


def flag(name: str) -> str:
    """`learning_rate` -> `--learning-rate` (how the command line spells a field)."""
    return "--" + name.replace("_", "-")


def check_int(name: str, value: Any, low: int | None = 1, high: int | None = None, optional: bool = False) -> None:
    """`value` is an integer in `[low, high]` (`None` allowed with `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag(name)} must be an integer, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{flag(name)} must be {_range(low, high)}, got {value}.")


def _range(low, high) -> str:
    if high is None:
        return f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"in [{low}, {high}]"


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, low_open: bool = False,
                high_open: bool = False, optional: bool = False) -> None:
    """`value` is a finite number within the bounds (open or closed on each side; `None` allowed with `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{flag(name)} must be a number, got {value!r}.")
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            where = f"a finite number in {left}, {right}"
        elif low is not None:
            where = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            where = "a finite number"
        raise ValueError(f"{flag(name)} must be {where}, got {value!r}.")


def check_probability(name: str, value: Any) -> None:
    check_float(name, value, 0.0, 1.0)


def check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag(name)} must be one of {', '.join(map(str, choices))}; got {value!r}.")


MAX_SEED = 2**32 - 1


def check_seed(value: Any, name: str = "seed") -> None:
    check_int(name, value, 0, MAX_SEED)


def synthetic_count(spec: str, name: str = "data") -> int | None:
    """`N` of a `synthetic:N` data spec (`None` for plain `synthetic`); a clear error for `synthetic:0` or `:x`."""
    if spec == "synthetic":
        return None
    text = spec.split(":", 1)[1]
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{flag(name)} {spec!r}: synthetic:N needs a whole number of scenes N >= 1.")
    return int(text)


__all__ = ["MAX_SEED", "check_choice", "check_float", "check_int", "check_probability", "check_seed", "flag",
           "synthetic_count"]
