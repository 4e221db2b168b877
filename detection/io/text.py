"""Values as plain text for messages: numbers as ``(nan, 8, 8)``, never
``(np.float64(nan), ...)``, and text read from a file quoted short.

A tuple of numpy scalars in an f-string shows each element's repr (``np.float64(8.0)``);
error messages that people read go through these helpers instead. A message quotes what it
read from a file only as far as the reader needs to find it (:func:`quote`), and a header only
when it holds column names (:func:`header_text`): an error about a file that is no table at all
must not copy the file into a message that others read.
"""

from __future__ import annotations

import re

import numpy as np

#: The most characters of a value read from a file that a message quotes.
QUOTE_CHARS = 24
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ .()\-]{0,39}")


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


def quote(text, limit: int = QUOTE_CHARS) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (``'abcdef...' (120
    characters)``), control characters escaped."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def header_text(header) -> str:
    """What a table reader found in a header, for a message: ``columns [...]`` when they look
    like column names, else only how many fields the first line holds."""
    header = list(header)
    if header and len(header) <= 100 and all(_COLUMN_NAME.fullmatch(c) for c in header):
        return f"columns {header}"
    return f"a first line of {len(header)} field(s) that are not column names"
