"""Synapse and connectivity tables: reading, validating and writing CSV files.

Three formats are supported, each read into a list of frozen dataclass rows:

``cnapse``
    One row per synaptic connection, ``syn_id, pre, pre_id, post, post_id,
    x_pos, y_pos, z_pos, size`` (:class:`CnapseRow`).
``cave``
    A CAVE-style synapse table with root ids and three points per synapse
    (:class:`CaveRow`).
``edges``
    An aggregated wiring diagram between named cells, ``pre, post, type,
    synapses`` (:class:`EdgeRow`).

Conventions shared by all parsers
---------------------------------
* Files are UTF-8 (a leading byte-order mark is ignored), comma-separated and
  start with a header line. Bytes that are not UTF-8 are an error naming the
  file, the line and the byte. Header names are matched after stripping
  whitespace and ignoring case; columns that a format does not use are
  ignored. Values are stripped of surrounding whitespace, so ``a, b`` reads
  like ``a,b``. Blank lines are skipped.
* A header without data rows is a valid, empty table. A file with no header
  at all is an error.
* Every problem raises :class:`TableFormatError` whose message names the
  file, the 1-based physical line number (the header is line 1) and the field.
* Positions are returned in nm as ``(z, y, x)`` tuples whatever the order of
  the columns in the file.
* Segment ids are unsigned 64-bit integers: written as plain decimal digits
  (no sign, no exponent) with ``0 <= id < 2**64``.
* Coordinates must be finite; negative coordinates are allowed because a
  table may use a frame whose origin is not the volume corner. Sizes must be
  finite and ``>= 0``.
* Self-contacts (``pre == post``) are accepted: whether they are artefacts
  is decided downstream, not by the file reader.

Writers take the rows and produce a file the matching reader accepts; floats
are written in their shortest round-tripping form, so ``read(write(rows)) ==
rows`` holds exactly.
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import TextIO

import numpy as np

from detection.errors import InputError
from detection.io.text import format_number, format_numbers, header_text, quote

logger = logging.getLogger(__name__)

__all__ = [
    "CaveRow",
    "CnapseRow",
    "EdgeRow",
    "TableFormatError",
    "cave_header",
    "decode_error_message",
    "utf8_errors",
    "read_cave",
    "read_cnapse",
    "read_edges",
    "sniff_table_format",
    "write_cave",
    "write_cnapse",
    "write_edges",
]

Source = str | os.PathLike | TextIO
Point = tuple[float, float, float]

_UINT64_LIMIT = 2**64
_OTHER_DELIMITERS = (";", "\t", "|")


class TableFormatError(InputError):
    """A table file that cannot be read as the requested format.

    Attributes
    ----------
    source : str
        The file name (or stream name) as given by the caller.
    line : int or None
        1-based physical line number (the header is line 1), if known.
    field : str or None
        The column concerned, if a single one is.
    """

    def __init__(self, message: str, *, source: str, line: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.source = source
        self.line = line
        self.field = field


# --------------------------------------------------------------------------
# Row records


@dataclass(frozen=True, slots=True)
class CnapseRow:
    """One synaptic connection of a Cnapse table.

    Attributes
    ----------
    syn_id : int
        Connection id, unique within a table.
    pre, post : int
        Presynaptic and postsynaptic cell (segment) ids, uint64 range.
    pre_id : int
        Presynaptic site id. Polyadic synapses share one ``pre_id`` across
        several rows, each with its own ``post``.
    post_id : int
        Postsynaptic site id.
    position : tuple of float
        Connection position in nm, ``(z, y, x)``.
    size : int or float
        Size in voxels, ``>= 0``; an integer when the file holds an integer.
    """

    syn_id: int
    pre: int
    pre_id: int
    post: int
    post_id: int
    position: Point
    size: int | float


@dataclass(frozen=True, slots=True)
class CaveRow:
    """One synapse of a CAVE-style table.

    Attributes
    ----------
    pre, post : int
        Presynaptic and postsynaptic root (segment) ids, uint64 range.
    pre_point, post_point, center : tuple of float
        Presynaptic point, postsynaptic point and cleft centre in nm,
        ``(z, y, x)``.
    size : int or float
        Synapse size as given by the table, ``>= 0``.
    id : int or None
        Annotation id, or None where the table has no ``id`` column (or the
        cell is empty).
    """

    pre: int
    post: int
    pre_point: Point
    post_point: Point
    center: Point
    size: int | float
    id: int | None = None


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One edge of an aggregated wiring diagram between named cells.

    Attributes
    ----------
    pre, post : str
        Cell names, e.g. ``"ADAL"``.
    type : str
        ``"chemical"`` or ``"electrical"`` (always lower case).
    synapses : int
        Number of synapses, ``>= 1``.
    """

    pre: str
    post: str
    type: str
    synapses: int


# --------------------------------------------------------------------------
# Shared reading machinery


def _source_name(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def _first_undecodable(path) -> tuple[int, int, bytes] | None:
    """(line, byte offset, bytes) of the first bytes of ``path`` that are not UTF-8.

    Reads the file in pieces through an incremental decoder, so memory stays bounded.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file fed to the decoder so far
    lines = 1
    with open(path, "rb") as stream:
        while True:
            piece = stream.read(1 << 20)
            pending = decoder.getstate()[0]
            try:
                decoder.decode(piece, final=not piece)
            except UnicodeDecodeError as exc:
                data = exc.object  # the pending bytes followed by this piece
                at = offset - len(pending) + exc.start
                return (lines + data[len(pending):exc.start].count(b"\n"), at,
                        data[exc.start:exc.end])
            if not piece:
                return None
            lines += piece.count(b"\n")
            offset += len(piece)


def decode_error_message(path, exc: UnicodeDecodeError | None = None) -> tuple[str, int | None]:
    """A sentence naming the file, the line and the byte that is not UTF-8, and the line."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else _source_name(path)
    found = None
    if isinstance(path, (str, os.PathLike)):
        try:
            found = _first_undecodable(path)
        except OSError:
            found = None
    if found is None:
        reason = f" ({exc.reason})" if exc is not None else ""
        return f"{name}: not UTF-8 text{reason}; save it as UTF-8", None
    line, at, bad = found
    shown = " ".join(f"0x{b:02x}" for b in bad[:4])
    hint = ""
    with open(path, "rb") as stream:
        if stream.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            hint = " (it starts with a UTF-16 byte-order mark)"
    return (f"{name} line {line}: not UTF-8 text{hint}: byte {shown} at byte {at} of the file; "
            "save it as UTF-8 (in a spreadsheet: CSV UTF-8)", line)


@contextmanager
def utf8_errors(path) -> Iterator[None]:
    """Turn a UnicodeDecodeError raised while reading ``path`` into a TableFormatError that
    names the file, the line and the byte."""
    try:
        yield
    except UnicodeDecodeError as exc:
        message, line = decode_error_message(path, exc)
        raise TableFormatError(message, source=_source_name(path), line=line) from None


@contextmanager
def _open_text(source: Source, mode: str) -> Iterator[TextIO]:
    if isinstance(source, (str, os.PathLike)):
        # utf-8-sig drops the byte-order mark that spreadsheet exports add.
        encoding = "utf-8-sig" if mode == "r" else "utf-8"
        with utf8_errors(source), open(source, mode, newline="", encoding=encoding) as stream:
            yield stream
    else:
        with utf8_errors(source):
            yield source


class _Table:
    """A csv reader positioned after the header, with error helpers."""

    def __init__(self, stream: TextIO, name: str):
        self.name = name
        self.reader = csv.reader(stream)
        self.header = self._read_header()
        self.index = {column: i for i, column in enumerate(self.header)}

    def _read_header(self) -> list[str]:
        for row in self.reader:
            if any(cell.strip() for cell in row):
                header = [cell.strip().lower() for cell in row]
                break
        else:
            raise TableFormatError(f"{self.name}: file is empty, expected a header line",
                                   source=self.name, line=1)
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise TableFormatError(
                    f"{self.name} line {self.reader.line_num}: column {column!r} appears twice "
                    "in the header", source=self.name, line=self.reader.line_num, field=column)
            seen.add(column)
        return header

    @property
    def line(self) -> int:
        return self.reader.line_num

    def error(self, message: str, *, field: str | None = None,
              line: int | None = None) -> TableFormatError:
        line = self.line if line is None else line
        where = f"{self.name} line {line}"
        if field is not None:
            where += f", field {field!r}"
        return TableFormatError(f"{where}: {message}", source=self.name, line=line, field=field)

    def missing_columns(self, missing: Sequence[str], expected: Sequence[str]) -> TableFormatError:
        message = (f"{self.name}: missing required column(s) {', '.join(missing)}; "
                   f"found {header_text(self.header)}; expected {list(expected)}")
        hint = _delimiter_hint(self.header)
        if hint:
            message += f"; {hint}"
        return TableFormatError(message, source=self.name, line=1)

    def rows(self, *, strip: bool = True) -> Iterator[list[str]]:
        """Yield data rows, checking the field count.

        With ``strip=False`` cells keep surrounding whitespace, for callers
        that strip only when a fast parse fails.
        """
        width = len(self.header)
        for row in self.reader:
            if len(row) != width:
                if not any(cell.strip() for cell in row):
                    continue
                raise self.error(f"expected {width} fields as in the header, found {len(row)}"
                                 + _delimiter_suffix(row))
            yield [cell.strip() for cell in row] if strip else row


def _delimiter_hint(header: Sequence[str]) -> str:
    if len(header) == 1:
        for delimiter in _OTHER_DELIMITERS:
            if delimiter in header[0]:
                return (f"the header looks {delimiter!r}-delimited, "
                        "but tables must be comma-separated")
    return ""


def _delimiter_suffix(row: Sequence[str]) -> str:
    hint = _delimiter_hint(row)
    return f" ({hint})" if hint else ""


def _parse_uint64(table: _Table, text: str, field: str) -> int:
    # Digits only: a sign or an exponent means the id went through a float
    # (pandas does that to id columns with gaps) and may have lost precision.
    if text.isascii() and text.isdigit():
        value = int(text)
        if value < _UINT64_LIMIT:
            return value
    raise table.error(f"{quote(text)} is not an unsigned 64-bit integer", field=field)


def _parse_float(table: _Table, text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise table.error(f"{quote(text)} is not a number", field=field) from None
    if not math.isfinite(value):
        raise table.error(f"{quote(text)} is not a finite number", field=field)
    return value


def _parse_size(table: _Table, text: str, field: str) -> int | float:
    # Digits alone make an int; anything else ("+5", "1e3", "2.0") a float.
    value = int(text) if text.isdigit() else _parse_float(table, text, field)
    if value < 0:
        raise table.error(f"{quote(text)} is negative; sizes must be >= 0", field=field)
    return value


def _format_float(value: float) -> str:
    # repr is the shortest string that reads back to the same double; the
    # trailing ".0" adds nothing for columns that are always floats.
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _format_size(value: int | float) -> str:
    # Sizes keep their int/float distinction so that a round trip is exact.
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))


def _first_conflict(keys: np.ndarray, values: np.ndarray) -> tuple[int, int] | None:
    """Indices of two rows with equal key but different value, if any.

    The key is that of the conflict closing earliest in the file; the rows
    returned are that key's first row and the first row that contradicts it.
    """
    if keys.size < 2:
        return None
    order = np.lexsort((values, keys))
    same_key = keys[order[1:]] == keys[order[:-1]]
    differs = same_key & (values[order[1:]] != values[order[:-1]])
    hits = np.flatnonzero(differs)
    if hits.size == 0:
        return None
    closing = np.maximum(order[hits], order[hits + 1])
    rows = np.flatnonzero(keys == keys[closing.min()])
    first = rows[0]
    second = rows[values[rows] != values[first]][0]
    return int(first), int(second)


def _first_duplicate(keys: np.ndarray) -> tuple[int, int] | None:
    """Indices of two rows with the same key, if any."""
    return _first_conflict(keys, np.arange(keys.size))


def _check_uint64_for_write(value: object, where: str, field: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
            or not 0 <= int(value) < _UINT64_LIMIT:
        raise InputError(f"{where}, field {field!r}: {format_number(value)} is not an unsigned "
                         "64-bit integer")


def _check_point_for_write(point: Sequence[float], where: str, field: str) -> None:
    if len(point) != 3 or not all(math.isfinite(float(c)) for c in point):
        raise InputError(f"{where}, field {field!r}: {format_numbers(point)} is not a finite "
                         "(z, y, x) point")


def _check_size_for_write(size: float, where: str, field: str) -> None:
    if not math.isfinite(float(size)) or size < 0:
        raise InputError(f"{where}, field {field!r}: {format_number(size)} is not a finite "
                         "size >= 0")


# --------------------------------------------------------------------------
# Cnapse


CNAPSE_COLUMNS = ("syn_id", "pre", "pre_id", "post", "post_id", "x_pos", "y_pos", "z_pos", "size")


def read_cnapse(source: Source) -> list[CnapseRow]:
    """Read a Cnapse synapse table.

    Parameters
    ----------
    source : str, os.PathLike or text stream
        CSV file with the columns ``syn_id, pre, pre_id, post, post_id,
        x_pos, y_pos, z_pos, size`` in any order (further columns are
        ignored). Positions are in nm.

    Returns
    -------
    list of CnapseRow
        One row per data line, in file order.

    Raises
    ------
    TableFormatError
        If a column is missing, a value does not parse or is out of range
        (ids must fit uint64, positions must be finite, sizes ``>= 0``),
        ``syn_id`` repeats, or one ``pre_id`` (``post_id``) is given two
        different ``pre`` (``post``) cells: a site lies in a single cell.
    """
    name = _source_name(source)
    with _open_text(source, "r") as stream:
        table = _Table(stream, name)
        missing = [c for c in CNAPSE_COLUMNS if c not in table.index]
        if missing:
            raise table.missing_columns(missing, CNAPSE_COLUMNS)
        i_syn, i_pre, i_pre_id, i_post, i_post_id, i_x, i_y, i_z, i_size = (
            table.index[c] for c in CNAPSE_COLUMNS)

        columns = (i_syn, i_pre, i_pre_id, i_post, i_post_id, i_x, i_y, i_z, i_size)
        rows: list[CnapseRow] = []
        lines: list[int] = []
        for cells in table.rows(strip=False):
            try:
                row = _cnapse_row_fast(cells, columns)
            except ValueError:
                row = None
            if row is None:
                row = _cnapse_row_checked(table, cells, columns)
            rows.append(row)
            lines.append(table.line)

    _check_cnapse_consistency(table, rows, lines)
    logger.debug("read %d Cnapse rows from %s", len(rows), name)
    return rows


def _cnapse_row_fast(cells: list[str], columns: Sequence[int]) -> CnapseRow | None:
    """Parse one row without error reporting; None (or ValueError) if in doubt.

    Accepts exactly what :func:`_cnapse_row_checked` accepts, with the same
    values; it only exists because per-field checks dominate read time on
    tables with millions of rows.
    """
    i_syn, i_pre, i_pre_id, i_post, i_post_id, i_x, i_y, i_z, i_size = columns
    ids = (cells[i_syn], cells[i_pre], cells[i_pre_id], cells[i_post], cells[i_post_id])
    joined = "".join(ids)
    if not (joined.isascii() and joined.isdigit()) or "" in ids:
        return None
    syn_id, pre, pre_id, post, post_id = (int(text) for text in ids)
    position = (float(cells[i_z]), float(cells[i_y]), float(cells[i_x]))
    text = cells[i_size]
    if text.isdigit():
        size: int | float = int(text)
    elif text.strip().isdigit():
        return None  # a padded integer: the checked path keeps it an int
    else:
        size = float(text)
    if (max(syn_id, pre, pre_id, post, post_id) >= _UINT64_LIMIT
            or not all(map(math.isfinite, position))
            or not (math.isfinite(size) and size >= 0)):
        return None
    return CnapseRow(syn_id=syn_id, pre=pre, pre_id=pre_id, post=post, post_id=post_id,
                     position=position, size=size)


def _cnapse_row_checked(table: _Table, cells: list[str], columns: Sequence[int]) -> CnapseRow:
    cells = [cell.strip() for cell in cells]
    i_syn, i_pre, i_pre_id, i_post, i_post_id, i_x, i_y, i_z, i_size = columns
    return CnapseRow(
        syn_id=_parse_uint64(table, cells[i_syn], "syn_id"),
        pre=_parse_uint64(table, cells[i_pre], "pre"),
        pre_id=_parse_uint64(table, cells[i_pre_id], "pre_id"),
        post=_parse_uint64(table, cells[i_post], "post"),
        post_id=_parse_uint64(table, cells[i_post_id], "post_id"),
        position=(_parse_float(table, cells[i_z], "z_pos"),
                  _parse_float(table, cells[i_y], "y_pos"),
                  _parse_float(table, cells[i_x], "x_pos")),
        size=_parse_size(table, cells[i_size], "size"),
    )


def _check_cnapse_consistency(table: _Table, rows: Sequence[CnapseRow],
                              lines: Sequence[int]) -> None:
    # Checked once over whole columns: per-row dictionaries would cost far
    # more memory on tables with millions of rows.
    if len(rows) < 2:
        return
    def column(field: str) -> np.ndarray:
        return np.fromiter(map(attrgetter(field), rows), dtype=np.uint64, count=len(rows))

    syn_id = column("syn_id")
    pair = _first_duplicate(syn_id)
    if pair is not None:
        first, second = pair
        raise table.error(f"syn_id {rows[second].syn_id} repeats the one on line {lines[first]}",
                          field="syn_id", line=lines[second])
    for site, cell in (("pre_id", "pre"), ("post_id", "post")):
        pair = _first_conflict(column(site), column(cell))
        if pair is not None:
            first, second = pair
            raise table.error(
                f"{site} {getattr(rows[second], site)} lies in {cell} cell "
                f"{getattr(rows[second], cell)} here but in {getattr(rows[first], cell)} "
                f"on line {lines[first]}", field=cell, line=lines[second])


def write_cnapse(target: Source, rows: Iterable[CnapseRow]) -> None:
    """Write a Cnapse synapse table.

    Parameters
    ----------
    target : str, os.PathLike or text stream
        Output file; overwritten if it exists.
    rows : iterable of CnapseRow
        Rows in the order to write.

    Raises
    ------
    ValueError
        If a row holds a value :func:`read_cnapse` would reject (ids outside
        the uint64 range, non-finite positions, negative sizes). Nothing is
        checked across rows.
    """
    count = 0
    with _open_text(target, "w") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(CNAPSE_COLUMNS)
        for count, row in enumerate(rows, start=1):
            if not _cnapse_row_plainly_valid(row):
                _check_cnapse_row_for_write(row, f"row {count}")
            z, y, x = row.position
            writer.writerow((row.syn_id, row.pre, row.pre_id, row.post, row.post_id,
                             _format_float(x), _format_float(y), _format_float(z),
                             _format_size(row.size)))
    logger.debug("wrote %d Cnapse rows to %s", count, _source_name(target))


def _cnapse_row_plainly_valid(row: CnapseRow) -> bool:
    """Cheap check for the common case of Python ints and floats in range."""
    ids = (row.syn_id, row.pre, row.pre_id, row.post, row.post_id)
    try:
        return (all(type(v) is int for v in ids) and min(ids) >= 0
                and max(ids) < _UINT64_LIMIT and len(row.position) == 3
                and all(map(math.isfinite, row.position))
                and math.isfinite(row.size) and row.size >= 0)
    except TypeError:
        return False


def _check_cnapse_row_for_write(row: CnapseRow, where: str) -> None:
    for field in ("syn_id", "pre", "pre_id", "post", "post_id"):
        _check_uint64_for_write(getattr(row, field), where, field)
    _check_point_for_write(row.position, where, "position")
    _check_size_for_write(row.size, where, "size")


# --------------------------------------------------------------------------
# CAVE

# Canonical column first, then accepted aliases.
CAVE_ID_COLUMNS = {
    "pre": ("pre_pt_root_id", "pre"),
    "post": ("post_pt_root_id", "post"),
}
CAVE_POINT_COLUMNS = {
    "pre_point": ("pre_pt_position", "pre_pt"),
    "post_point": ("post_pt_position", "post_pt"),
    "center": ("ctr_pt_position", "ctr_pt"),
}
_AXES_IN_FILE = ("x", "y", "z")
_POSITION_UNITS = ("nm", "voxel")


@dataclass(frozen=True, slots=True)
class _PointColumns:
    """Where one CAVE point lives: a text column or three axis columns."""

    name: str
    text: int | None = None
    xyz: tuple[int, int, int] | None = None


def _resolve_cave_columns(table: _Table) -> tuple[dict[str, tuple[str, int]],
                                                 dict[str, _PointColumns],
                                                 int | None]:
    ids: dict[str, tuple[str, int]] = {}
    points: dict[str, _PointColumns] = {}
    missing: list[str] = []
    for key, names in CAVE_ID_COLUMNS.items():
        found = next((n for n in names if n in table.index), None)
        if found is None:
            missing.append(" or ".join(names))
        else:
            ids[key] = (found, table.index[found])
    for key, names in CAVE_POINT_COLUMNS.items():
        resolved = _resolve_point(table, names)
        if resolved is None:
            missing.append(" or ".join(f"{n} (or {n}_x/_y/_z)" for n in names))
        else:
            points[key] = resolved
    if "size" not in table.index:
        missing.append("size")
    if missing:
        raise table.missing_columns(missing, _cave_expected())
    return ids, points, table.index.get("id")


def _resolve_point(table: _Table, names: Sequence[str]) -> _PointColumns | None:
    for name in names:
        if name in table.index:
            return _PointColumns(name=name, text=table.index[name])
        axis_columns = [f"{name}_{axis}" for axis in _AXES_IN_FILE]
        if all(c in table.index for c in axis_columns):
            x, y, z = (table.index[c] for c in axis_columns)
            return _PointColumns(name=name, xyz=(x, y, z))
    return None


def _cave_expected() -> list[str]:
    return ([names[0] for names in CAVE_ID_COLUMNS.values()]
            + [names[0] for names in CAVE_POINT_COLUMNS.values()] + ["size", "id (optional)"])


def _parse_point_text(table: _Table, text: str, field: str) -> tuple[float, float, float]:
    """``"[x y z]"``, ``"[x, y, z]"`` or ``"(x, y, z)"`` -> ``(x, y, z)``."""
    inner = text
    if inner[:1] in "[(" and inner[-1:] in "])":
        inner = inner[1:-1]
    parts = inner.replace(",", " ").split()
    if len(parts) != 3:
        raise table.error(f"{quote(text)} is not an [x y z] point", field=field)
    x, y, z = (_parse_float(table, part, field) for part in parts)
    return x, y, z


def _checked_unit(position_unit: str, voxel_size: Sequence[float] | None) -> Point:
    """Per-axis nm factors in file order (x, y, z)."""
    if position_unit not in _POSITION_UNITS:
        raise InputError(f"position_unit must be one of {_POSITION_UNITS}, got {position_unit!r}")
    if position_unit == "nm":
        if voxel_size is not None:
            raise InputError("voxel_size is only used with position_unit='voxel'")
        return 1.0, 1.0, 1.0
    if voxel_size is None or len(voxel_size) != 3:
        raise InputError("position_unit='voxel' needs voxel_size as (z, y, x) in nm")
    vz, vy, vx = (float(v) for v in voxel_size)
    if not all(math.isfinite(v) and v > 0 for v in (vz, vy, vx)):
        raise InputError("voxel_size must be three positive numbers, got "
                         f"{format_numbers(voxel_size)}")
    return vx, vy, vz


def read_cave(source: Source, *, position_unit: str = "nm",
              voxel_size: Sequence[float] | None = None) -> list[CaveRow]:
    """Read a CAVE-style synapse table.

    Parameters
    ----------
    source : str, os.PathLike or text stream
        CSV file. Column names, canonical first and accepted aliases after:

        ============  ===================================
        field         columns
        ============  ===================================
        ``pre``       ``pre_pt_root_id``, ``pre``
        ``post``      ``post_pt_root_id``, ``post``
        pre_point     ``pre_pt_position``, ``pre_pt``
        post_point    ``post_pt_position``, ``post_pt``
        center        ``ctr_pt_position``, ``ctr_pt``
        size          ``size``
        id            ``id`` (optional)
        ============  ===================================

        A point is either one column holding ``"[x y z]"`` or ``"[x, y, z]"``
        text, as CAVE and pandas dump it, or three columns ``<name>_x``,
        ``<name>_y``, ``<name>_z``. Where several candidates exist, the first
        in the table above wins, and a single text column wins over split
        columns of the same name.
    position_unit : {"nm", "voxel"}
        Unit of the positions in the file.
    voxel_size : sequence of 3 floats, optional
        Voxel size in nm as ``(z, y, x)`` (the project's order, not the
        file's); required with ``position_unit="voxel"`` and rejected
        otherwise.

    Returns
    -------
    list of CaveRow
        One row per data line with points converted to nm ``(z, y, x)``.

    Raises
    ------
    TableFormatError
        If a required column is missing, a value does not parse, an id is
        outside uint64, a coordinate is not finite, a size is negative, or
        an ``id`` repeats.
    ValueError
        If ``position_unit``/``voxel_size`` are inconsistent.
    """
    vx, vy, vz = _checked_unit(position_unit, voxel_size)
    name = _source_name(source)
    with _open_text(source, "r") as stream:
        table = _Table(stream, name)
        ids, points, i_id = _resolve_cave_columns(table)
        (pre_name, i_pre), (post_name, i_post) = ids["pre"], ids["post"]
        point_columns = [points[k] for k in ("pre_point", "post_point", "center")]
        i_size = table.index["size"]

        def point(cells: list[str], columns: _PointColumns) -> Point:
            if columns.text is not None:
                x, y, z = _parse_point_text(table, cells[columns.text], columns.name)
            else:
                x, y, z = (_parse_float(table, cells[i], f"{columns.name}_{axis}")
                           for i, axis in zip(columns.xyz, _AXES_IN_FILE))
            return z * vz, y * vy, x * vx

        rows: list[CaveRow] = []
        lines: list[int] = []
        for cells in table.rows():
            pre_point, post_point, center = (point(cells, c) for c in point_columns)
            row_id = None
            if i_id is not None and cells[i_id]:
                row_id = _parse_uint64(table, cells[i_id], "id")
            rows.append(CaveRow(
                pre=_parse_uint64(table, cells[i_pre], pre_name),
                post=_parse_uint64(table, cells[i_post], post_name),
                pre_point=pre_point, post_point=post_point, center=center,
                size=_parse_size(table, cells[i_size], "size"),
                id=row_id,
            ))
            lines.append(table.line)

    with_id = [i for i, r in enumerate(rows) if r.id is not None]
    pair = _first_duplicate(np.array([rows[i].id for i in with_id], dtype=np.uint64))
    if pair is not None:
        first, second = (with_id[i] for i in pair)
        raise table.error(f"id {rows[second].id} repeats the one on line {lines[first]}",
                          field="id", line=lines[second])
    logger.debug("read %d CAVE rows from %s", len(rows), name)
    return rows


def cave_header(*, with_id: bool) -> list[str]:
    """The columns :func:`write_cave` writes: ``id`` first when ``with_id``."""
    header = (["id"] if with_id else []) + ["pre_pt_root_id", "post_pt_root_id"]
    for names in CAVE_POINT_COLUMNS.values():
        header += [f"{names[0]}_{axis}" for axis in _AXES_IN_FILE]
    return [*header, "size"]


def write_cave(target: Source, rows: Iterable[CaveRow], *, position_unit: str = "nm",
               voxel_size: Sequence[float] | None = None) -> None:
    """Write a CAVE-style synapse table with split ``_x/_y/_z`` point columns.

    Columns: ``id`` (only when at least one row has an id; rows without
    one get an empty cell), ``pre_pt_root_id, post_pt_root_id``, then
    ``pre_pt_position_x/_y/_z``, ``post_pt_position_x/_y/_z``,
    ``ctr_pt_position_x/_y/_z`` and ``size``.

    Parameters
    ----------
    target : str, os.PathLike or text stream
        Output file; overwritten if it exists.
    rows : iterable of CaveRow
        Rows with points in nm ``(z, y, x)``.
    position_unit : {"nm", "voxel"}
        Unit to write positions in.
    voxel_size : sequence of 3 floats, optional
        Voxel size in nm ``(z, y, x)``, required with ``position_unit="voxel"``.
        Positions are divided by it, which is exact for positions that are
        whole multiples of the voxel size.

    Raises
    ------
    ValueError
        If a row holds a value :func:`read_cave` would reject.
    """
    vx, vy, vz = _checked_unit(position_unit, voxel_size)
    rows = list(rows)
    has_id = any(r.id is not None for r in rows)
    header = cave_header(with_id=has_id)

    with _open_text(target, "w") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        for number, row in enumerate(rows, start=1):
            where = f"row {number}"
            _check_uint64_for_write(row.pre, where, "pre")
            _check_uint64_for_write(row.post, where, "post")
            if row.id is not None:
                _check_uint64_for_write(row.id, where, "id")
            cells: list[str] = ([] if not has_id else ["" if row.id is None else str(row.id)])
            cells += [str(row.pre), str(row.post)]
            for field in ("pre_point", "post_point", "center"):
                point = getattr(row, field)
                _check_point_for_write(point, where, field)
                z, y, x = point
                cells += [_format_float(x / vx), _format_float(y / vy), _format_float(z / vz)]
            _check_size_for_write(row.size, where, "size")
            cells.append(_format_size(row.size))
            writer.writerow(cells)
    logger.debug("wrote %d CAVE rows to %s", len(rows), _source_name(target))


# --------------------------------------------------------------------------
# Edges

EDGE_COLUMNS = ("pre", "post", "type", "synapses")
EDGE_TYPES = ("chemical", "electrical")


def read_edges(source: Source) -> list[EdgeRow]:
    """Read an edge table between named cells.

    Parameters
    ----------
    source : str, os.PathLike or text stream
        CSV file with columns ``pre, post, type, synapses``: cell names,
        ``chemical`` or ``electrical`` (any case), and a synapse count.

    Returns
    -------
    list of EdgeRow
        One row per data line, in file order, ``type`` in lower case.

    Raises
    ------
    TableFormatError
        If a column is missing, a name is empty, a type is unknown, a count
        is not an integer ``>= 1``, or a ``(pre, post, type)`` edge repeats:
        an edge table is already aggregated, so a repeat would double-count.
    """
    name = _source_name(source)
    with _open_text(source, "r") as stream:
        table = _Table(stream, name)
        missing = [c for c in EDGE_COLUMNS if c not in table.index]
        if missing:
            raise table.missing_columns(missing, EDGE_COLUMNS)
        i_pre, i_post, i_type, i_count = (table.index[c] for c in EDGE_COLUMNS)

        rows: list[EdgeRow] = []
        first_line: dict[tuple[str, str, str], int] = {}
        for cells in table.rows():
            pre, post = cells[i_pre], cells[i_post]
            for field, value in (("pre", pre), ("post", post)):
                if not value:
                    raise table.error("cell name is empty", field=field)
            kind = cells[i_type].lower()
            if kind not in EDGE_TYPES:
                raise table.error(f"{quote(cells[i_type])} is not one of {list(EDGE_TYPES)}",
                                  field="type")
            text = cells[i_count]
            if not (text.isascii() and text.isdigit()) or int(text) < 1:
                raise table.error(f"{quote(text)} is not a positive integer", field="synapses")
            key = (pre, post, kind)
            if key in first_line:
                raise table.error(f"edge {pre} -> {post} ({kind}) repeats the one on line "
                                  f"{first_line[key]}", field="pre")
            first_line[key] = table.line
            rows.append(EdgeRow(pre=pre, post=post, type=kind, synapses=int(text)))
    logger.debug("read %d edges from %s", len(rows), name)
    return rows


def write_edges(target: Source, rows: Iterable[EdgeRow]) -> None:
    """Write an edge table: header ``pre,post,type,synapses``, ``\\n`` line ends.

    Parameters
    ----------
    target : str, os.PathLike or text stream
        Output file; overwritten if it exists.
    rows : iterable of EdgeRow
        Rows in the order to write; ``type`` is written in lower case.

    Raises
    ------
    ValueError
        If a row holds a value :func:`read_edges` would reject.
    """
    count = 0
    with _open_text(target, "w") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(EDGE_COLUMNS)
        for count, row in enumerate(rows, start=1):
            kind = row.type.lower()
            if not row.pre.strip() or not row.post.strip():
                raise InputError(f"row {count}: cell names must not be empty")
            if kind not in EDGE_TYPES:
                raise InputError(f"row {count}, field 'type': {quote(row.type)} is not one of "
                                 f"{list(EDGE_TYPES)}")
            if not isinstance(row.synapses, (int, np.integer)) or row.synapses < 1:
                raise InputError(f"row {count}, field 'synapses': {format_number(row.synapses)} is not a "
                                 "positive integer")
            writer.writerow((row.pre, row.post, kind, int(row.synapses)))
    logger.debug("wrote %d edges to %s", count, _source_name(target))


# --------------------------------------------------------------------------
# Format detection


def sniff_table_format(source: Source) -> str:
    """Tell the table format from the header line.

    Parameters
    ----------
    source : str, os.PathLike or text stream
        A table file. Only the header is read (a stream is left after it).

    Returns
    -------
    str
        ``"cnapse"``, ``"cave"`` or ``"edges"``, checked in that order: the
        first format whose required columns are all present.

    Raises
    ------
    TableFormatError
        If the file is empty or no format matches; the message lists the
        columns found and those each format expects.
    """
    name = _source_name(source)
    with _open_text(source, "r") as stream:
        table = _Table(stream, name)
    if all(c in table.index for c in CNAPSE_COLUMNS):
        return "cnapse"
    try:
        _resolve_cave_columns(table)
    except TableFormatError:
        pass
    else:
        return "cave"
    if all(c in table.index for c in EDGE_COLUMNS):
        return "edges"
    message = (f"{name}: header matches no known table format; found "
               f"{header_text(table.header)}; expected cnapse {list(CNAPSE_COLUMNS)}, cave {_cave_expected()} "
               f"or edges {list(EDGE_COLUMNS)}")
    hint = _delimiter_hint(table.header)
    if hint:
        message += f"; {hint}"
    raise TableFormatError(message, source=name, line=1)

