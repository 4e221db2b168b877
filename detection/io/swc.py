"""SWC skeleton files: reading, validating and writing.

An SWC file holds one node per line, seven whitespace-separated columns::

    n  T  x  y  z  R  P

node id, structure type, position, radius and parent id (``-1`` for a
root). Lines starting with ``#`` are comments, and anything after a ``#``
on a data line is a comment too; blank lines are skipped.

In memory a skeleton is a :class:`SkeletonNodes` of column arrays with
positions in nm as ``(z, y, x)``: the reader swaps the file's x, y, z order.
Nodes need not be listed parents-first, and a file may hold several trees
(several roots). Radii must be ``>= 0`` and coordinates finite.

Reading and writing are vectorised: a 100,000-node skeleton takes a fraction
of a second each way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detection.errors import InputError
from detection.io.text import quote

logger = logging.getLogger(__name__)

__all__ = ["SkeletonNodes", "SwcFormatError", "read_swc", "validate_skeleton", "write_swc"]

# File columns, in file order.
_COLUMNS = ("n", "T", "x", "y", "z", "R", "P")
_COLUMN_NAMES = {
    "n": "node id", "T": "structure type", "x": "x", "y": "y", "z": "z",
    "R": "radius", "P": "parent id",
}
_INT16 = np.iinfo(np.int16)


class SwcFormatError(InputError):
    """An SWC file or skeleton that breaks the format.

    Attributes
    ----------
    source : str or None
        File name, or None for a skeleton checked in memory.
    line : int or None
        1-based line number in the file, if known.
    field : str or None
        The SWC column concerned (``n T x y z R P``), if a single one is.
    """

    def __init__(self, message: str, *, source: str | None = None,
                 line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.source = source
        self.line = line
        self.field = field


@dataclass(eq=False)
class SkeletonNodes:
    """Skeleton nodes as column arrays of equal length N.

    Construction converts the arrays to the documented dtypes and checks
    their shapes; it does not check the tree structure (see
    :func:`validate_skeleton`).

    Attributes
    ----------
    node_id : numpy.ndarray
        int64 node ids, ``>= 0``.
    parent_id : numpy.ndarray
        int64 parent node ids, ``-1`` for roots.
    zyx : numpy.ndarray
        (N, 3) float64 positions in nm, ``(z, y, x)``.
    radius : numpy.ndarray
        float32 radii in nm.
    compartment : numpy.ndarray
        int16 SWC structure type: 0 undefined, 1 soma, 2 axon, 3 basal
        dendrite, 4 apical dendrite, 5 and above custom.
    """

    node_id: np.ndarray
    parent_id: np.ndarray
    zyx: np.ndarray
    radius: np.ndarray
    compartment: np.ndarray

    def __post_init__(self) -> None:
        self.node_id = np.asarray(self.node_id, dtype=np.int64)
        self.parent_id = np.asarray(self.parent_id, dtype=np.int64)
        self.zyx = np.asarray(self.zyx, dtype=np.float64)
        self.radius = np.asarray(self.radius, dtype=np.float32)
        self.compartment = np.asarray(self.compartment, dtype=np.int16)
        n = self.node_id.shape[0] if self.node_id.ndim == 1 else -1
        if n == 0 and self.zyx.size == 0:
            self.zyx = self.zyx.reshape(0, 3)
        shapes_ok = (
            n >= 0
            and self.parent_id.shape == (n,)
            and self.zyx.shape == (n, 3)
            and self.radius.shape == (n,)
            and self.compartment.shape == (n,)
        )
        if not shapes_ok:
            raise InputError(
                "SkeletonNodes needs node_id, parent_id, radius, compartment of shape (N,) and "
                f"zyx of shape (N, 3); got {self.node_id.shape}, {self.parent_id.shape}, "
                f"{self.radius.shape}, {self.compartment.shape} and {self.zyx.shape}")

    def __len__(self) -> int:
        return int(self.node_id.shape[0])


def read_swc(path: str | os.PathLike, *, scale: float = 1.0) -> SkeletonNodes:
    """Read an SWC file.

    Parameters
    ----------
    path : str or os.PathLike
        The SWC file.
    scale : float
        Factor from file units to nm, applied to positions and radii
        (e.g. 1000 for a file in micrometres).

    Returns
    -------
    SkeletonNodes
        Nodes in file order, positions in nm ``(z, y, x)``.

    Raises
    ------
    SwcFormatError
        If the file has no nodes, a line does not have seven fields, a value
        does not parse (ids and types must be integers), a coordinate is not
        finite, a radius is negative, or the structure is not a forest (see
        :func:`validate_skeleton`). The message names the file, the line and
        the column.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be a positive finite number, got {float(scale):g}")
    name = os.fspath(path)
    with open(path, "rb") as stream:
        raw = stream.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SwcFormatError(
            f"{name} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
            f"{exc.start} of the file); SWC files are plain text", source=name, line=line,
        ) from None

    lines = text.splitlines()
    content = [line.partition("#")[0] for line in lines] if "#" in text else lines
    kept = [i for i, line in enumerate(content) if line and not line.isspace()]
    if not kept:
        raise SwcFormatError(f"{name}: file holds no nodes", source=name)
    line_numbers = np.array(kept, dtype=np.int64) + 1
    columns = _parse_columns([content[i] for i in kept], name=name, line_numbers=line_numbers)
    node_id, compartment_wide, parent_id = columns["n"], columns["T"], columns["P"]
    xyz = np.stack([columns["x"], columns["y"], columns["z"]], axis=1)
    radius_file = columns["R"]

    def fail(row: int, field: str, message: str) -> SwcFormatError:
        return SwcFormatError(
            f"{name} line {line_numbers[row]}, field {field!r} ({_COLUMN_NAMES[field]}): {message}",
            source=name, line=int(line_numbers[row]), field=field)

    bad = np.flatnonzero((compartment_wide < _INT16.min) | (compartment_wide > _INT16.max))
    if bad.size:
        raise fail(bad[0], "T", f"{compartment_wide[bad[0]]} is outside the int16 range")
    for axis, index in (("x", 0), ("y", 1), ("z", 2)):
        bad = np.flatnonzero(~np.isfinite(xyz[:, index]))
        if bad.size:
            raise fail(bad[0], axis, f"{xyz[bad[0], index]} is not a finite number")
    bad = np.flatnonzero(~(radius_file >= 0))
    if bad.size:
        raise fail(bad[0], "R", f"{radius_file[bad[0]]} is not a finite radius >= 0")

    # Scaling in float64 before narrowing keeps the radius the nearest float32.
    nodes = SkeletonNodes(
        node_id=node_id,
        parent_id=parent_id,
        zyx=xyz[:, ::-1] * scale,
        radius=(radius_file * scale).astype(np.float32),
        compartment=compartment_wide.astype(np.int16),
    )
    _check_structure(nodes, source=name, line_numbers=line_numbers)
    logger.debug("read %d SWC nodes from %s", len(nodes), name)
    return nodes


_FILE_DTYPE = np.dtype([("n", np.int64), ("T", np.int64), ("x", np.float64),
                        ("y", np.float64), ("z", np.float64), ("R", np.float64),
                        ("P", np.int64)])


def _parse_columns(data: list[str], *, name: str,
                   line_numbers: np.ndarray) -> dict[str, np.ndarray]:
    """Parse comment-free, non-blank data lines into the seven SWC columns."""
    try:
        # numpy's C parser is stricter than int()/float(), so the checked
        # path below never rejects what it accepted; that path runs only to
        # explain a failure (or to accept the odd "1_000").
        table = np.loadtxt(data, dtype=_FILE_DTYPE, comments=None, ndmin=1)
        return {column: np.ascontiguousarray(table[column]) for column in _COLUMNS}
    except ValueError:
        pass

    tokens = " ".join(data).split()
    if len(tokens) != len(_COLUMNS) * len(data):
        for line, text in zip(line_numbers.tolist(), data):
            found = len(text.split())
            if found != len(_COLUMNS):
                raise SwcFormatError(
                    f"{name} line {line}: expected 7 fields 'n T x y z R P', found {found}",
                    source=name, line=line)
    columns = {}
    for k, column in enumerate(_COLUMNS):
        values = tokens[k::len(_COLUMNS)]
        kind = float if _FILE_DTYPE[column].kind == "f" else int
        try:
            columns[column] = np.array([kind(v) for v in values], dtype=_FILE_DTYPE[column])
        except (ValueError, OverflowError):
            _raise_first_bad(values, kind, name, line_numbers, column)
    return columns


def _raise_first_bad(values: Sequence[str], kind: type, name: str, line_numbers: np.ndarray,
                     field: str) -> None:
    what = "an integer" if kind is int else "a number"
    int64 = np.iinfo(np.int64)
    for row, value in enumerate(values):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or (kind is int and not int64.min <= number <= int64.max):
            line = int(line_numbers[row])
            reason = f"is not {what}" if number is None else "is outside the int64 range"
            raise SwcFormatError(
                f"{name} line {line}, field {field!r} ({_COLUMN_NAMES[field]}): "
                f"{quote(value)} {reason}", source=name, line=line, field=field)
    raise AssertionError("a column failed to convert but no value is bad")


def write_swc(path: str | os.PathLike, nodes: SkeletonNodes, *, header: str = "") -> None:
    """Write an SWC file.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; overwritten if it exists.
    nodes : SkeletonNodes
        The skeleton, positions in nm ``(z, y, x)``; written in nm, x y z
        order, in the order of the arrays.
    header : str
        Free text written as ``#`` comment lines at the top, one per line of
        the text; a column legend follows it.

    Raises
    ------
    SwcFormatError
        If the skeleton is empty, not a forest, holds non-finite coordinates
        or negative radii (nothing is written then).

    Notes
    -----
    Values are written in their shortest round-tripping form (float32 for
    radii), so :func:`read_swc` gives back identical arrays.
    """
    text = swc_text(nodes, header=header)
    with open(path, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(text)
    logger.debug("wrote %d SWC nodes to %s", len(nodes), os.fspath(path))


def swc_text(nodes: SkeletonNodes, *, header: str = "") -> str:
    """The text of the SWC file :func:`write_swc` writes (same arguments, same errors)."""
    if len(nodes) == 0:
        raise SwcFormatError("cannot write a skeleton without nodes")
    validate_skeleton(nodes)

    comment = [f"# {line}".rstrip() for line in header.splitlines()]
    comment.append("# n T x y z R P (positions and radius in nm)")
    # repr is the shortest round-tripping text of a double; for float32
    # radii numpy's str cast does the same at float32 precision ("0.3", not
    # the float64 expansion of the float32 value).
    columns = [
        map(str, nodes.node_id.tolist()),
        map(str, nodes.compartment.tolist()),
        map(repr, nodes.zyx[:, 2].tolist()),
        map(repr, nodes.zyx[:, 1].tolist()),
        map(repr, nodes.zyx[:, 0].tolist()),
        nodes.radius.astype(str).tolist(),
        map(str, nodes.parent_id.tolist()),
    ]
    body = list(map(" ".join, zip(*columns)))
    return "\n".join(comment + body) + "\n"


def validate_skeleton(nodes: SkeletonNodes) -> None:
    """Check that the nodes form a forest.

    Node ids must be unique and ``>= 0``; every parent id must be ``-1`` or
    an existing node id; following parents from any node must reach a root
    (no cycles, including a node that is its own parent). Coordinates must
    be finite and radii ``>= 0``.

    Parameters
    ----------
    nodes : SkeletonNodes
        The skeleton to check.

    Raises
    ------
    SwcFormatError
        Naming the first offending node id.
    """
    _check_structure(nodes, source=None, line_numbers=None)


def _check_structure(nodes: SkeletonNodes, *, source: str | None,
                     line_numbers: np.ndarray | None) -> None:
    """Forest checks shared by :func:`validate_skeleton` and :func:`read_swc`.

    With ``line_numbers`` (one per node) messages point at file lines.
    """

    def fail(row: int, field: str | None, message: str) -> SwcFormatError:
        node = f"node {nodes.node_id[row]}"
        if line_numbers is None:
            return SwcFormatError(f"{node} {message}", field=field)
        line = int(line_numbers[row])
        where = f"{source} line {line}"
        if field is not None:
            where += f", field {field!r} ({_COLUMN_NAMES[field]})"
        return SwcFormatError(f"{where}: {node} {message}", source=source, line=line, field=field)

    node_id, parent_id = nodes.node_id, nodes.parent_id
    n = len(nodes)
    if n == 0:
        return
    bad = np.flatnonzero(node_id < 0)
    if bad.size:
        raise fail(bad[0], "n", "has a negative id")
    if line_numbers is None:
        # Read files were checked with their own text in the message.
        bad = np.flatnonzero(~np.isfinite(nodes.zyx).all(axis=1))
        if bad.size:
            raise fail(bad[0], None, f"has a non-finite position {nodes.zyx[bad[0]].tolist()}")
        bad = np.flatnonzero(~(nodes.radius >= 0))
        if bad.size:
            raise fail(bad[0], "R", f"has radius {nodes.radius[bad[0]]}, not a finite value >= 0")

    order = np.argsort(node_id, kind="stable")
    sorted_ids = node_id[order]
    repeats = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if repeats.size:
        # Report the repeat that comes first in the file, pointing back.
        pairs = np.sort(np.stack([order[repeats], order[repeats + 1]], axis=1), axis=1)
        first, second = pairs[np.argmin(pairs[:, 1])]
        earlier = (f"line {line_numbers[first]}" if line_numbers is not None
                   else f"position {first}")
        raise fail(second, "n", f"repeats the id at {earlier}")

    is_root = parent_id == -1
    slot = np.searchsorted(sorted_ids, parent_id)
    slot_clipped = np.minimum(slot, n - 1)
    found = sorted_ids[slot_clipped] == parent_id
    bad = np.flatnonzero(~is_root & ~found)
    if bad.size:
        raise fail(bad[0], "P", f"has parent {parent_id[bad[0]]}, which is neither -1 nor a node")

    bad = np.flatnonzero(parent_id == node_id)
    if bad.size:
        raise fail(bad[0], "P", "is its own parent")

    # Pointer jumping: after ceil(log2 n) squarings every node points at the
    # end of its parent chain, which is a root unless the chain loops.
    parent_row = np.where(is_root, np.arange(n), order[slot_clipped])
    ancestor = parent_row
    for _ in range(max(1, int(np.ceil(np.log2(n))) + 1)):
        ancestor = ancestor[ancestor]
    bad = np.flatnonzero(~is_root[ancestor])
    if bad.size:
        cycle = _cycle_from(int(bad[0]), parent_row)
        first = min(cycle, key=lambda row: (line_numbers[row] if line_numbers is not None
                                            else row))
        members = " -> ".join(str(nodes.node_id[row]) for row in _rotate(cycle, first))
        raise fail(first, "P", f"lies on a parent cycle {members} -> {nodes.node_id[first]}")


def _cycle_from(start: int, parent_row: np.ndarray) -> list[int]:
    """Rows of the cycle reached by following parents from ``start``."""
    seen: dict[int, int] = {}
    path: list[int] = []
    row = start
    while row not in seen:
        seen[row] = len(path)
        path.append(row)
        row = int(parent_row[row])
    return path[seen[row]:]


def _rotate(cycle: Sequence[int], first: int) -> list[int]:
    k = list(cycle).index(first)
    return list(cycle[k:]) + list(cycle[:k])
