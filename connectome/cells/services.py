"""Writes on cells."""

import csv
from pathlib import Path

from django.db import transaction

from connectome.cells.models import Cell
from detection.errors import InputError


@transaction.atomic
def cells_annotate(*, dataset, annotations: dict[int, dict]) -> int:
    """Set ``cell_type`` and/or ``name`` of cells by segment id; every id must be a cell."""
    cells = {c.segment_id: c for c in Cell.objects.filter(dataset=dataset, segment_id__in=list(annotations))}
    unknown = sorted(set(annotations) - set(cells))
    if unknown:
        raise InputError(
            f"segment ids {unknown[:10]} are not cells of dataset '{dataset.name}'"
            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        )
    for seg, values in annotations.items():
        for field in ("cell_type", "name"):
            if field in values:
                setattr(cells[seg], field, values[field])
    Cell.objects.bulk_update(list(cells.values()), ["cell_type", "name"], batch_size=5000)
    return len(cells)


def read_cell_annotations(path) -> dict[int, dict]:
    """A CSV with ``segment_id`` and ``cell_type`` and/or ``name`` columns (UTF-8; names and
    types without control characters)."""
    from connectome.common.validators import name_problem
    from detection.io.tables import utf8_errors

    path = Path(path)
    with utf8_errors(path), open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = set(reader.fieldnames or [])
        if "segment_id" not in columns or not columns & {"cell_type", "name"}:
            raise InputError(
                f"{path.name}: needs a segment_id column and a cell_type and/or name column; "
                f"found {sorted(columns)}"
            )
        annotations = {}
        for line, row in enumerate(reader, start=2):
            text = (row["segment_id"] or "").strip()
            if not text.isdigit() or int(text) >= 2**64:
                raise InputError(f"{path.name} line {line}, field 'segment_id': '{text}' is not a uint64 id")
            annotations[int(text)] = {
                k: row[k].strip() for k in ("cell_type", "name") if k in columns and row[k] is not None
            }
            for field, value in annotations[int(text)].items():
                problem = name_problem(value)
                if problem is not None:
                    raise InputError(f"{path.name} line {line}, field '{field}': {problem}")
    return annotations
