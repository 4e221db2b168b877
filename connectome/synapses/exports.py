"""The wiring matrix out: a CSV edge list and a GraphML graph.

GraphML integers are signed 64-bit (``long``) at most, and segment ids use the full uint64
range, so segment ids are written as strings in both formats.
"""

import csv
from pathlib import Path

import networkx as nx

from connectome.synapses.wiring import WiringMatrix

CELL_COLUMNS = [
    "pre_segment_id", "post_segment_id", "pre_name", "post_name", "pre_type", "post_type",
    "synapses", "contact_area_nm2", "weight", "mean_confidence",
]
CELL_TYPE_COLUMNS = [
    "pre_type", "post_type", "synapses", "contact_area_nm2", "weight", "mean_confidence",
]
NUMBERS = ("synapses", "contact_area_nm2", "weight", "mean_confidence")
#: Node id of the cells without a type in a cell-type graph; the node's ``cell_type`` is "".
UNTYPED_NODE = "(no type)"


def export_wiring_csv(matrix: WiringMatrix, target) -> int:
    """Write the matrix as one CSV row per pair; returns the number of rows.

    Columns are :data:`CELL_COLUMNS` or, grouped by cell type, :data:`CELL_TYPE_COLUMNS`. A
    sum or mean without any value is an empty field.
    """
    columns = CELL_COLUMNS if matrix.group_by == "cell" else CELL_TYPE_COLUMNS
    with open(Path(target), "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        for pair in matrix.pairs:
            writer.writerow(["" if getattr(pair, c) is None else getattr(pair, c) for c in columns])
    return len(matrix.pairs)


def wiring_graph(matrix: WiringMatrix) -> nx.DiGraph:
    """The matrix as a directed graph with the pair numbers on the edges.

    Grouped by cell, nodes are the cells (id: the segment id as a string) with ``segment_id``
    (string), ``name`` and ``cell_type`` attributes; grouped by cell type, nodes are the types
    (id: the type, :data:`UNTYPED_NODE` for cells without one) with a ``cell_type`` attribute.
    Edges carry ``synapses``, ``contact_area_nm2``, ``weight`` and ``mean_confidence``, the
    last three left out where they have no value.
    """
    graph = nx.DiGraph(group_by=matrix.group_by)
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
        graph.add_edge(*ends, **numbers)
    return graph


def export_wiring_graphml(matrix: WiringMatrix, target) -> nx.DiGraph:
    """Write :func:`wiring_graph` of the matrix as GraphML; returns the graph."""
    graph = wiring_graph(matrix)
    nx.write_graphml(graph, Path(target))
    return graph
