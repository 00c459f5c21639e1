"""Range checks of the numbers users give, with the unit in the message.

Every public analysis checks its numeric arguments here before anything runs, so a mistake
(``density_g_cm3=-2.7``, ``collection_angle_mrad=0``) is one clear :class:`InputError` naming the
argument, its unit, the value and what is allowed, never a NaN store or a NumPy warning. The CLI
calls the same checks on its options (``eelsgpu.cli._common``), naming the flag instead.

Examples
--------
>>> positive("density_g_cm3", 2.7, "g/cm3")
2.7
>>> positive("density_g_cm3", -2.7, "g/cm3")
Traceback (most recent call last):
...
eelsgpu.errors.InputError: density_g_cm3 must be a positive number in g/cm3, not -2.7
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import InputError

__all__ = ["at_least", "in_range", "optional", "positive", "positive_int"]


def _number(name: str, value: Any, unit: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number{_in(unit)}, not {value!r}") from None
    if isinstance(value, complex) or math.isnan(x):
        raise InputError(f"{name} must be a number{_in(unit)}, not {value!r}")
    return x


def _in(unit: str) -> str:
    return f" in {unit}" if unit else ""


def positive(name: str, value: Any, unit: str = "") -> float:
    """``value`` as a float > 0 (finite), else :class:`InputError` naming ``name`` and ``unit``."""
    x = _number(name, value, unit)
    if not (x > 0 and math.isfinite(x)):
        raise InputError(f"{name} must be a positive number{_in(unit)}, not {value!r}")
    return x


def at_least(name: str, value: Any, low: float, unit: str = "") -> float:
    """``value`` as a finite float >= ``low``."""
    x = _number(name, value, unit)
    if not (x >= low and math.isfinite(x)):
        raise InputError(f"{name} must be at least {low:g}{_in(unit)}, not {value!r}")
    return x


def in_range(name: str, value: Any, low: float, high: float, unit: str = "") -> float:
    """``value`` as a float with ``low <= value <= high``."""
    x = _number(name, value, unit)
    if not (low <= x <= high):
        raise InputError(f"{name} must lie between {low:g} and {high:g}{_in(unit)}, not {value!r}")
    return x


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (a float with a fraction is refused)."""
    try:
        i = int(value)
        whole = float(value) == i
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a whole number >= {minimum}, not {value!r}") from None
    if not whole or i < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return i


def optional(check: Any, name: str, value: Any, *args: Any) -> Any:
    """``check(name, value, *args)`` unless ``value`` is None (then None)."""
    return None if value is None else check(name, value, *args)
