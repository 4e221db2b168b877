"""Synapse tables in and out: Cnapse tables, CAVE-style tables and cell-to-cell edge tables.

A table is parsed and checked whole (every id known, every point inside the dataset) before a
single row is written; then the run and all its synapses go in in one transaction.
"""

import logging
from pathlib import Path

import numpy as np
from django.db import transaction
from django.db.models import Count, F, Max

from connectome.cells.models import Cell
from connectome.cells.selectors import cell_ids_by_segment
from connectome.common.validators import check_name, printable
from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse, SynapseRun
from detection.errors import InputError
from detection.io import tables
from detection.io.text import format_numbers

logger = logging.getLogger(__name__)

BATCH = 5000


def import_synapses(
    *, dataset: Dataset, source: str, run_name: str, table_format: str | None = None,
    method: str = "", create_missing_cells: bool = False, position_unit: str = "nm",
    replace: bool = False, job=None, progress=None,
) -> SynapseRun:
    name = Path(source).name
    table_format = table_format or tables.sniff_table_format(source)
    if SynapseRun.objects.filter(dataset=dataset, name=run_name).exists() and not replace:
        raise InputError(f"dataset '{dataset.name}' already has a synapse run named '{run_name}'")
    if progress is not None:
        progress.set_total(3, message=f"reading {name} as a {table_format} table")

    if table_format == "cnapse":
        rows = tables.read_cnapse(source)
        ids = [(r.pre, r.post) for r in rows]
        labels = [f"data row {i + 1} (syn_id {r.syn_id})" for i, r in enumerate(rows)]
    elif table_format == "cave":
        voxel = dataset.voxel_size if position_unit == "voxel" else None
        rows = tables.read_cave(source, position_unit=position_unit, voxel_size=voxel)
        ids = [(r.pre, r.post) for r in rows]
        labels = [f"data row {i + 1}" for i in range(len(rows))]
    elif table_format == "edges":
        rows = tables.read_edges(source)
    else:
        raise InputError(f"unknown table format {table_format!r}; formats: cnapse, cave, edges")
    if progress is not None:
        progress.advance(message=f"checking {len(rows)} rows against dataset '{dataset.name}'")

    if table_format == "edges":
        names = {n for r in rows for n in (r.pre, r.post)}
        cells_by_key, missing = _cells_by_name(dataset, names)

        def row_of(key):
            return next(f"data row {i + 1}" for i, r in enumerate(rows) if key in (r.pre, r.post))

        _refuse_unknown(name, dataset, missing, create_missing_cells, row_of, what="cell name")
        for key in missing:  # names that become cells must be names
            try:
                check_name(key, what="cell name")
            except ValueError as exc:
                raise InputError(f"{name} {row_of(key)}: {exc}") from None
    else:
        segment_ids = {s for pair in ids for s in pair if s != 0}
        cells_by_key, missing = cell_ids_by_segment(dataset=dataset, segment_ids=segment_ids)
        _refuse_unknown(name, dataset, missing, create_missing_cells,
                        lambda key: next(labels[i] for i, pair in enumerate(ids) if key in pair),
                        what="segment id")
        _check_points_inside(name, dataset, rows, labels, table_format)

    with transaction.atomic():
        if job is not None:
            from connectome.jobs.services import job_hold

            job_hold(job, stores=True)  # a run sent again meanwhile stores nothing
        if replace:
            SynapseRun.objects.filter(dataset=dataset, name=run_name).delete()
        if missing:
            cells_by_key.update(_create_cells(dataset, missing, by_name=table_format == "edges"))
        run = SynapseRun.objects.create(
            dataset=dataset, name=run_name, method=method or f"import:{table_format}",
            source_path=str(source), job=job,
            parameters={"table_format": table_format, "position_unit": position_unit},
        )
        if progress is not None:
            progress.advance(message=f"writing {len(rows)} rows")
        builder = {"cnapse": _cnapse_synapses, "cave": _cave_synapses, "edges": _edge_synapses}
        synapses = builder[table_format](rows, run, cells_by_key)
        created = 0
        for start in range(0, len(synapses), BATCH):
            Synapse.objects.bulk_create(synapses[start:start + BATCH])
            created += len(synapses[start:start + BATCH])
        if progress is not None:
            progress.advance()
    logger.info("imported %d synapses from %s into run %s", created, name, run)
    return run


def _cells_by_name(dataset, names):
    found = dict(
        Cell.objects.filter(dataset=dataset, name__in=names).values_list("name", "id")
    )
    return found, sorted(names - set(found))


def _refuse_unknown(name, dataset, missing, create, where, *, what):
    if missing and not create:
        key = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(
            f"{name} {where(key)}: {what} {printable(str(key))} is not a cell of dataset "
            f"'{dataset.name}'{more}; "
            "import the segmentation first, or allow creating missing cells"
        )


def _create_cells(dataset, keys, *, by_name):
    if by_name:
        start = (Cell.objects.filter(dataset=dataset).aggregate(m=Max("segment_id"))["m"] or 0) + 1
        cells = [Cell(dataset=dataset, segment_id=start + i, name=key) for i, key in enumerate(keys)]
    else:
        cells = [Cell(dataset=dataset, segment_id=key) for key in keys]
    Cell.objects.bulk_create(cells, batch_size=BATCH)
    lookup = "name" if by_name else "segment_id"
    return dict(
        Cell.objects.filter(dataset=dataset, **{f"{lookup}__in": keys}).values_list(lookup, "id")
    )


def _check_points_inside(name, dataset, rows, labels, table_format):
    if dataset.shape is None or not rows:
        return
    extent = np.asarray(dataset.shape) * np.asarray(dataset.voxel_size)
    if table_format == "cnapse":
        points = {"position": np.array([r.position for r in rows])}
    else:
        points = {k: np.array([getattr(r, k) for r in rows])
                  for k in ("pre_point", "post_point", "center")}
    for field, zyx in points.items():
        outside = np.flatnonzero(((zyx < 0) | (zyx >= extent)).any(axis=1))
        if outside.size:
            i = int(outside[0])
            raise InputError(
                f"{name} {labels[i]}: {field} (z, y, x) {format_numbers(zyx[i])} nm lies outside "
                f"dataset '{dataset.name}' (extent {format_numbers(extent)} nm); "
                f"{outside.size} row(s) are outside — wrong units or wrong dataset?"
            )


def _cell(cells_by_key, key):
    return cells_by_key.get(key) if key != 0 else None


def _cnapse_synapses(rows, run, cells):
    out = []
    for r in rows:
        z, y, x = r.position
        out.append(Synapse(
            dataset_id=run.dataset_id, run=run, method=run.method,
            pre_id=_cell(cells, r.pre), post_id=_cell(cells, r.post),
            external_id=r.syn_id, site_id=r.pre_id, post_site_id=r.post_id,
            ctr_z=z, ctr_y=y, ctr_x=x, size_voxels=r.size,
        ))
    return out


def _cave_synapses(rows, run, cells):
    out = []
    for r in rows:
        out.append(Synapse(
            dataset_id=run.dataset_id, run=run, method=run.method,
            pre_id=_cell(cells, r.pre), post_id=_cell(cells, r.post), external_id=r.id,
            pre_z=r.pre_point[0], pre_y=r.pre_point[1], pre_x=r.pre_point[2],
            post_z=r.post_point[0], post_y=r.post_point[1], post_x=r.post_point[2],
            ctr_z=r.center[0], ctr_y=r.center[1], ctr_x=r.center[2], size_voxels=r.size,
        ))
    return out


def _edge_synapses(rows, run, cells):
    out = []
    for r in rows:
        out.extend(
            Synapse(dataset_id=run.dataset_id, run=run, method=run.method, kind=r.type,
                    pre_id=cells[r.pre], post_id=cells[r.post])
            for _ in range(r.synapses)
        )
    return out


# --- export ----------------------------------------------------------------------------------

def export_synapses(
    *, dataset: Dataset, target: str, table_format: str, run_name: str | None = None,
    progress=None,
) -> int:
    """Write the dataset's synapses (or one run's) as a table; returns the number of rows."""
    synapses = Synapse.objects.filter(dataset=dataset)
    if run_name:
        run = SynapseRun.objects.filter(dataset=dataset, name=run_name).first()
        if run is None:
            raise InputError(f"dataset '{dataset.name}' has no synapse run named '{run_name}'")
        synapses = synapses.filter(run=run)
    if progress is not None:
        progress.set_total(1, message=f"writing the {table_format} table")
    if table_format == "edges":
        rows = _edge_rows(synapses)
        tables.write_edges(target, rows)
    elif table_format == "cnapse":
        rows = [_cnapse_row(s) for s in _with_segments(synapses)]
        tables.write_cnapse(target, rows)
    elif table_format == "cave":
        rows = [_cave_row(s) for s in _with_segments(synapses)]
        tables.write_cave(target, rows)
    else:
        raise InputError(f"unknown table format {table_format!r}; formats: cnapse, cave, edges")
    if progress is not None:
        progress.advance()
    return len(rows)


def _edge_rows(synapses):
    counts = (
        synapses.filter(pre__isnull=False, post__isnull=False)
        .values(pre_name=F("pre__name"), post_name=F("post__name"), synapse_kind=F("kind"))
        .annotate(n=Count("id"))
    )
    rows = [
        tables.EdgeRow(pre=c["pre_name"], post=c["post_name"], type=c["synapse_kind"],
                       synapses=c["n"])
        for c in counts
    ]
    unnamed = [r for r in rows if not r.pre or not r.post]
    if unnamed:
        raise InputError("edge tables name cells; some synapses connect cells without a name")
    # Edge tables list edges case-insensitively sorted by pre, post, type.
    return sorted(rows, key=lambda r: (r.pre.lower(), r.post.lower(), r.type))


def _with_segments(synapses):
    return synapses.select_related("pre", "post").order_by("id").iterator(chunk_size=BATCH)


def _segment(cell):
    return cell.segment_id if cell is not None else 0


def _centre(s):
    if s.ctr_z is None:
        raise InputError(f"synapse {s.pk} has no position; export it as an edge table instead")
    return (s.ctr_z, s.ctr_y, s.ctr_x)


def _cnapse_row(s):
    size = s.size_voxels if s.size_voxels is not None else 0
    return tables.CnapseRow(
        syn_id=s.external_id if s.external_id is not None else s.pk,
        pre=_segment(s.pre), pre_id=s.site_id if s.site_id is not None else s.pk,
        post=_segment(s.post), post_id=s.post_site_id if s.post_site_id is not None else s.pk,
        position=_centre(s), size=int(size) if float(size).is_integer() else size,
    )


def _cave_row(s):
    centre = _centre(s)
    pre = (s.pre_z, s.pre_y, s.pre_x) if s.pre_z is not None else centre
    post = (s.post_z, s.post_y, s.post_x) if s.post_z is not None else centre
    size = s.size_voxels if s.size_voxels is not None else 0
    return tables.CaveRow(
        pre=_segment(s.pre), post=_segment(s.post), pre_point=pre, post_point=post,
        center=centre, size=int(size) if float(size).is_integer() else size, id=s.external_id,
    )
