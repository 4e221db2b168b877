"""Numbers as plain text for messages: ``(nan, 8, 8)``, never ``(np.float64(nan), ...)``.

A tuple of numpy scalars in an f-string shows each element's repr (``np.float64(8.0)``);
error messages that people read go through these helpers instead.
"""

from __future__ import annotations

import numpy as np


def format_number(value) -> str:
    """A number as plain text: ``8``, ``4.6``, ``nan``, ``inf``, ``1e+308``; integers exactly."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.10g}"


def format_numbers(values) -> str:
    """Numbers as plain text in parentheses: ``(nan, 8, 8)``."""
    if isinstance(values, (str, bytes)):
        return str(values)
    try:
        items = list(np.asarray(values, dtype=object).reshape(-1))
    except (TypeError, ValueError):
        return str(values)
    return "(" + ", ".join(format_number(v) for v in items) + ")"
