"""Checks for config fields, so that a bad value fails when the config is built, in the user's terms:

    TypeError:  GPTConfig.bias='no' must be a bool (True or False)
    ValueError: GPTConfig.layer_norm_epsilon=0.0 must be a finite number > 0

A value of the wrong kind (a string where a number goes, 4.0 where an integer goes, 1 where a bool
goes) raises FieldTypeError; a value of the right kind out of range (0, -1, nan, inf) raises
ValueError. FieldTypeError is a TypeError and also a ValueError: configs raised ValueError for every
bad field before, and code that catches that keeps working.

Every config's __post_init__ uses these, each constraint declared once; `owner` is the config itself
(its class name is printed) or a name. Each check returns the value, so a line can check and keep it.
This module imports nothing from minift: every layer may use it. (What is left in a config by hand
relates two fields, e.g. TrainConfig.warmup_steps <= steps, and says why in its message.)
"""
from __future__ import annotations

import math
import numbers
import re
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


def check_multiple(owner, name: str, value: int, of: int, of_name: str = "", hint: str = ""):
    """An integer (already checked) divisible by `of`: 'even', or 'divisible by n_head=4' when `of_name`
    names where `of` comes from."""
    if value % of:
        what = f"divisible by {of_name}={of}" if of_name else "even" if of == 2 else f"a multiple of {of}"
        raise ValueError(f"{_where(owner, name, value)} must be {what}{hint}")
    return value


def check_token_ids(owner, name: str, value, n: int = None, n_name: str = "", optional: bool = True):
    """Token ids: a non-empty list (tuple, range) of integers >= 0, exactly n of them when n is given
    (`n_name` says which field sets n), returned as a tuple; None too when optional."""
    if optional and value is None:
        return None
    ids = list(value) if isinstance(value, (list, tuple, range)) else None
    if not ids or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in ids) \
            or (n is not None and len(ids) != n):
        how_many = f"{n_name}={n}" if n is not None else "a non-empty list of"
        raise ValueError(f"{_where(owner, name, value)} must be {how_many} token ids (integers >= 0)")
    return tuple(ids)


def check_regexes(owner, name: str, value, hint: str = ""):
    """One regular expression or several, each non-empty and valid, returned as a tuple."""
    regexes = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else value
    if not isinstance(regexes, tuple) or not regexes or not all(isinstance(t, str) and t for t in regexes):
        raise ValueError(f"{_where(owner, name, regexes)} must be non-empty regexes{hint}")
    for t in regexes:
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"{owner if isinstance(owner, str) else type(owner).__name__}.{name}: {t!r} is not a "
                             f"valid regular expression ({e})") from None
    return regexes


QKV = ("q", "k", "v")                          # the slices of GPT-2's fused attn.c_attn, in order


def check_qkv(owner, name: str, value):
    """None (the whole c_attn) or distinct slices of QKV, returned in q, k, v order."""
    if value is None:
        return None
    chosen = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not chosen or any(s not in QKV for s in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"{_where(owner, name, value)} must be None (the whole c_attn) or distinct "
                         f"slices from {QKV}, e.g. ('q', 'v')")
    return tuple(s for s in QKV if s in chosen)


def number_arg(text: str, convert, ok, what: str):
    """An argparse `type`: convert(text) if it converts and passes ok, else argparse's one-line error
    "'text' is not `what`" and exit status 2, before any work starts."""
    import argparse
    try:
        x = convert(text)
    except ValueError:
        x = None
    if x is None or not ok(x):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return x


def seconds_arg(text: str) -> float:
    """A time limit on a command line (`minift check --check-timeout S`, `minift grade --timeout S`):
    a finite number of seconds > 0."""
    return number_arg(text, float, lambda x: x > 0 and math.isfinite(x), "a time limit: a number of seconds > 0")


def count_arg(text: str) -> int:
    """A number of things on a command line (steps, tokens, ...): a whole number >= 1."""
    return number_arg(text, int, lambda x: x >= 1, "a count: a whole number >= 1")


def rate_arg(text: str) -> float:
    """A learning rate on a command line: a finite number > 0."""
    return number_arg(text, float, lambda x: x > 0 and math.isfinite(x), "a learning rate: a finite number > 0")


def seed_arg(text: str) -> int:
    """A random seed on a command line: a whole number from 0 to 2^32 - 1 (every seeder takes those)."""
    return number_arg(text, int, lambda x: 0 <= x < 2 ** 32, "a seed: a whole number from 0 to 2^32 - 1")


def share_arg(text: str) -> float:
    """A share of something on a command line (a replay fraction): a number in [0, 1)."""
    return number_arg(text, float, lambda x: 0 <= x < 1, "a share: a number in [0, 1)")
