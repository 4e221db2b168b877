"""The wiring matrix out: a CSV edge list, a Parquet table and a GraphML graph, as files (the
``wiring_matrix`` command) or as chunks for a streamed download (the API).

GraphML integers are signed 64-bit (``long``) at most, and segment ids use the full uint64
range, so segment ids are written as strings in CSV and GraphML (Parquet has ``uint64``).
"""

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pyarrow as pa
import pyarrow.parquet as pq

from connectome.synapses.models import Synapse
from connectome.synapses.wiring import ALL_KINDS, WiringMatrix

CELL_COLUMNS = [
    "pre_segment_id", "post_segment_id", "pre_name", "post_name", "pre_type", "post_type",
    "synapses", "contact_area_nm2", "weight", "mean_confidence", "kind",
]
CELL_TYPE_COLUMNS = [
    "pre_type", "post_type", "synapses", "contact_area_nm2", "weight", "mean_confidence",
    "kind",
]
#: Arrow types of the columns for Parquet.
ARROW_TYPES = {
    "pre_segment_id": pa.uint64(), "post_segment_id": pa.uint64(), "pre_name": pa.string(),
    "post_name": pa.string(), "pre_type": pa.string(), "post_type": pa.string(),
    "synapses": pa.int64(), "contact_area_nm2": pa.float64(), "weight": pa.float64(),
    "mean_confidence": pa.float64(), "kind": pa.string(),
}
#: Pairs per chunk of a streamed download.
CHUNK = 2_000
NUMBERS = ("synapses", "contact_area_nm2", "weight", "mean_confidence")
#: Node id of the cells without a type in a cell-type graph; the node's ``cell_type`` is "".
UNTYPED_NODE = "(no type)"


def _columns(matrix: WiringMatrix) -> list[str]:
    return CELL_COLUMNS if matrix.group_by == "cell" else CELL_TYPE_COLUMNS


def wiring_csv_chunks(matrix: WiringMatrix, chunk: int = CHUNK) -> Iterator[str]:
    """The matrix as CSV text, one row per pair, :data:`CHUNK` pairs at a time.

    Columns are :data:`CELL_COLUMNS` or, grouped by cell type, :data:`CELL_TYPE_COLUMNS`. A
    sum or mean without any value is an empty field.
    """
    columns = _columns(matrix)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for start in range(0, len(matrix.pairs), chunk):
        writer.writerows(["" if getattr(pair, c) is None else getattr(pair, c) for c in columns]
                         for pair in matrix.pairs[start:start + chunk])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def export_wiring_csv(matrix: WiringMatrix, target) -> int:
    """Write :func:`wiring_csv_chunks` of the matrix to ``target``; returns the number of rows."""
    with open(Path(target), "w", newline="", encoding="utf-8") as stream:
        stream.writelines(wiring_csv_chunks(matrix))
    return len(matrix.pairs)


def wiring_parquet_chunks(matrix: WiringMatrix, chunk: int = CHUNK) -> Iterator[bytes]:
    """The matrix as a Parquet file, one row group per :data:`CHUNK` pairs, in pieces as they
    are written (the columns of :func:`wiring_csv_chunks`, segment ids as ``uint64``)."""
    columns = _columns(matrix)
    schema = pa.schema([(c, ARROW_TYPES[c]) for c in columns])
    sink = StreamSink()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for start in range(0, max(1, len(matrix.pairs)), chunk):
            pairs = matrix.pairs[start:start + chunk]
            writer.write_table(pa.Table.from_arrays(
                [pa.array([getattr(p, c) for p in pairs], type=ARROW_TYPES[c]) for c in columns],
                schema=schema))
            yield sink.drain()
    yield sink.drain()


class StreamSink(io.RawIOBase):
    """A write-only file for pyarrow whose bytes are taken out as they come (:meth:`drain`),
    so a Parquet file is sent while it is written; ``tell`` counts every byte written, as the
    file's footer needs."""

    def __init__(self):
        super().__init__()
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def wiring_graph(matrix: WiringMatrix) -> nx.Graph:
    """The matrix as a graph with the pair numbers on the edges.

    Chemical synapses make a directed graph (``nx.DiGraph``), electrical ones an undirected
    one (``nx.Graph``); a matrix of both kinds (``kind="all"``) is an ``nx.MultiDiGraph`` whose
    edges are keyed by their kind, an electrical pair one edge from its first cell to its
    second. Grouped by cell, nodes are the cells (id: the segment id as a string) with
    ``segment_id`` (string), ``name`` and ``cell_type`` attributes; grouped by cell type, nodes
    are the types (id: the type, :data:`UNTYPED_NODE` for cells without one) with a
    ``cell_type`` attribute. Edges carry ``kind``, ``synapses``, ``contact_area_nm2``,
    ``weight`` and ``mean_confidence``, the last three left out where they have no value.
    """
    graph_class = {Synapse.Kind.CHEMICAL: nx.DiGraph, Synapse.Kind.ELECTRICAL: nx.Graph,
                   ALL_KINDS: nx.MultiDiGraph}[matrix.kind]
    graph = graph_class(group_by=matrix.group_by, kind=matrix.kind)
    for pair in matrix.pairs:
        ends = []
        for side in ("pre", "post"):
            cell_type = getattr(pair, f"{side}_type")
            if matrix.group_by == "cell":
                node = str(getattr(pair, f"{side}_segment_id"))
                graph.add_node(node, segment_id=node, name=getattr(pair, f"{side}_name"),
                               cell_type=cell_type)
            else:
                node = cell_type or UNTYPED_NODE
                graph.add_node(node, cell_type=cell_type)
            ends.append(node)
        numbers = {k: getattr(pair, k) for k in NUMBERS if getattr(pair, k) is not None}
        if graph.is_multigraph():
            graph.add_edge(*ends, key=pair.kind, kind=pair.kind, **numbers)
        else:
            graph.add_edge(*ends, kind=pair.kind, **numbers)
    return graph


def wiring_graphml_chunks(matrix: WiringMatrix, lines: int = CHUNK) -> Iterator[str]:
    """:func:`wiring_graph` of the matrix as GraphML text, ``lines`` lines at a time."""
    batch = []
    for line in nx.generate_graphml(wiring_graph(matrix)):
        batch.append(line + "\n")
        if len(batch) >= lines:
            yield "".join(batch)
            batch = []
    yield "".join(batch)


def export_wiring_graphml(matrix: WiringMatrix, target) -> nx.Graph:
    """Write :func:`wiring_graph` of the matrix as GraphML; returns the graph."""
    graph = wiring_graph(matrix)
    nx.write_graphml(graph, Path(target))
    return graph
