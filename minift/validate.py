"""Checks for config fields, so that a bad value fails when the config is built, in the user's terms:

    TypeError:  GPTConfig.bias='no' must be a bool (True or False)
    ValueError: GPTConfig.layer_norm_epsilon=0.0 must be a finite number > 0

A value of the wrong kind (a string where a number goes, 4.0 where an integer goes, 1 where a bool
goes) raises FieldTypeError; a value of the right kind out of range (0, -1, nan, inf) raises
ValueError. FieldTypeError is a TypeError and also a ValueError: configs raised ValueError for every
bad field before, and code that catches that keeps working.

Every config's __post_init__ uses these; `owner` is the config itself (its class name is printed)
or a name. Each check returns the value, so a line can check and keep it. This module imports
nothing from minift: every layer may use it.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


class FieldTypeError(TypeError, ValueError):
    """A config field of the wrong type (see the module docstring for why it is a ValueError too)."""


def _where(owner, name: str, value) -> str:
    return f"{owner if isinstance(owner, str) else type(owner).__name__}.{name}={value!r}"


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    """' > 0', ' >= 1', ' <= 8', ' in [0, 1)', or '' when there are no bounds."""
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    return "" if hi is None else f" {'<' if hi_open else '<='} {hi}"


def check_int(owner, name: str, value, lo=None, hi=None, optional: bool = False, hint: str = ""):
    """An integer (not a bool, not 4.0) with lo <= value <= hi; None too when optional."""
    if optional and value is None:
        return None
    expected = f"an integer{_bounds(lo, hi)}{' or None' if optional else ''}{hint}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldTypeError(f"{_where(owner, name, value)} must be {expected}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{_where(owner, name, value)} must be {expected}")
    return value


def check_float(owner, name: str, value, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                finite: bool = True, optional: bool = False, hint: str = ""):
    """A real number (an int will do; a bool, a string or nan will not) in the given range, finite
    unless finite=False (then +-inf passes if the range allows it); None too when optional."""
    if optional and value is None:
        return None
    both = lo is not None and hi is not None                  # a bounded range says "finite" by itself
    expected = (f"{'a finite' if finite and not both else 'a'} number{_bounds(lo, hi, lo_open, hi_open)}"
                f"{' or None' if optional else ''}{hint}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldTypeError(f"{_where(owner, name, value)} must be {expected}")
    if math.isnan(value) or (finite and math.isinf(value)) \
            or (lo is not None and (value <= lo if lo_open else value < lo)) \
            or (hi is not None and (value >= hi if hi_open else value > hi)):
        raise ValueError(f"{_where(owner, name, value)} must be {expected}")
    return value


def check_bool(owner, name: str, value, optional: bool = False):
    """True or False (not 1, not 'yes'); None too when optional."""
    if not (isinstance(value, bool) or (optional and value is None)):
        raise FieldTypeError(f"{_where(owner, name, value)} must be a bool (True or False"
                             f"{', or None' if optional else ''})")
    return value


def check_choice(owner, name: str, value, choices, hint: str = ""):
    """One of `choices` (strings)."""
    if not isinstance(value, str):
        raise FieldTypeError(f"{_where(owner, name, value)} must be one of {tuple(choices)}{hint}")
    if value not in choices:
        raise ValueError(f"{_where(owner, name, value)} must be one of {tuple(choices)}{hint}")
    return value


def check_str(owner, name: str, value):
    """A string."""
    if not isinstance(value, str):
        raise FieldTypeError(f"{_where(owner, name, value)} must be a string")
    return value


def check_ints(owner, name: str, value, optional: bool = False, hint: str = ""):
    """A list, tuple or range of integers, returned as a tuple (JSON gives lists); None too when optional."""
    if optional and value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        raise FieldTypeError(f"{_where(owner, name, value)} must be a list of integers"
                             f"{' or None' if optional else ''}{hint}")
    return tuple(value)
