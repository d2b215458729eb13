"""Conformance checks of lesson 08 (prompt tuning), registered into `checks.CHECKS` with
lesson="lesson08". Expected values are computed here independently (float64 numpy or a
textbook construction), never by calling minift's reference adapters.
"""
from __future__ import annotations

from .checks import _adapter, _assert_close, _out, _register, _run, _t  # noqa: F401
