"""The whole synapse table of a dataset out as CSV or Parquet, in batches (never all in memory).

The ``export_synapse_table`` job writes one into its export folder and the API serves it for
download (``connectome/imports/paths.py``). Segment ids are written as unsigned 64-bit numbers
(Parquet ``uint64``).

:func:`synapse_table_chunks` gives the same Parquet table, or a Cnapse or CAVE-style CSV
(the formats of :mod:`detection.io.tables`, which the imports read back), as pieces for a
streamed download: one batch of rows in memory at a time.
"""

import csv
import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectome.datasets.models import Dataset
from connectome.synapses.exports import StreamSink
from connectome.synapses.models import Synapse
from detection.errors import InputError
from detection.io import tables

logger = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")
#: Formats of a downloaded synapse table.
DOWNLOAD_FORMATS = ("cnapse", "cave", "parquet")
BATCH = 100_000
#: Rows per batch of a download: what the server holds of a table at a time.
OBJECT_BATCH = 10_000
STREAM_BATCH = 20_000

#: (column, queryset field, Arrow type)
COLUMNS = [
    ("id", "id", pa.int64()),
    ("run_id", "run_id", pa.int64()),
    ("kind", "kind", pa.string()),
    ("pre_segment_id", "pre__segment_id", pa.uint64()),
    ("post_segment_id", "post__segment_id", pa.uint64()),
    ("pre_cell_id", "pre_id", pa.int64()),
    ("post_cell_id", "post_id", pa.int64()),
    ("site_id", "site_id", pa.int64()),
    ("pre_z", "pre_z", pa.float64()),
    ("pre_y", "pre_y", pa.float64()),
    ("pre_x", "pre_x", pa.float64()),
    ("post_z", "post_z", pa.float64()),
    ("post_y", "post_y", pa.float64()),
    ("post_x", "post_x", pa.float64()),
    ("ctr_z", "ctr_z", pa.float64()),
    ("ctr_y", "ctr_y", pa.float64()),
    ("ctr_x", "ctr_x", pa.float64()),
    ("size_nm3", "size_nm3", pa.float64()),
    ("contact_area_nm2", "contact_area_nm2", pa.float64()),
    ("confidence", "confidence", pa.float64()),
    ("weight", "weight", pa.float64()),
    ("flag", "flag", pa.string()),
    ("method", "method", pa.string()),
    ("review_state", "review_state", pa.string()),
]
SCHEMA = pa.schema([(name, kind) for name, _, kind in COLUMNS])


def _batches(synapses, batch: int = BATCH):
    """Rows in id order, ``batch`` at a time, by keyset: each batch one indexed query."""
    fields = [field for _, field, _ in COLUMNS]
    last = 0
    while True:
        rows = list(synapses.filter(id__gt=last).order_by("id").values_list(*fields)[:batch])
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _arrow_table(rows) -> pa.Table:
    arrays = [pa.array(values, type=kind) for values, (_, _, kind) in zip(zip(*rows), COLUMNS)]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def export_synapse_table(
    *, dataset: Dataset, target, table_format: str, runs=None, progress=None,
) -> int:
    """Write the dataset's synapses (all, or those of ``runs``) to ``target``; returns the rows.

    Every synapse, flagged and rejected ones included, with its review state.
    """
    if table_format not in FORMATS:
        raise InputError(f"unknown table format {table_format!r}; formats: {', '.join(FORMATS)}")
    synapses = Synapse.objects.filter(dataset=dataset)
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    target = Path(target)
    if progress is not None:
        progress.set_total(synapses.count(), message=f"writing the synapse table ({table_format})")
    written = 0
    if table_format == "csv":
        with open(target, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow([name for name, _, _ in COLUMNS])
            for rows in _batches(synapses):
                writer.writerows(("" if v is None else v for v in row) for row in rows)
                written += len(rows)
                if progress is not None:
                    progress.advance(len(rows))
    else:
        with pq.ParquetWriter(target, SCHEMA, compression="zstd") as writer:
            for rows in _batches(synapses):
                writer.write_table(_arrow_table(rows))
                written += len(rows)
                if progress is not None:
                    progress.advance(len(rows))
    logger.info("exported %d synapses of %s to %s", written, dataset.name, target)
    return written


def synapses_without_position(synapses) -> int | None:
    """The id of one of ``synapses`` without a centre (an imported edge table has none), or
    None: Cnapse and CAVE tables need the centre of every row."""
    return synapses.filter(ctr_z__isnull=True).values_list("id", flat=True).first()


def synapse_table_chunks(
    synapses, table_format: str, *, position_unit: str = "nm", voxel_size=None,
) -> Iterator[bytes | str]:
    """``synapses`` (any order; written in id order) as a table in pieces, one batch at a time.

    ``cnapse``: the Cnapse CSV of :func:`detection.io.tables.write_cnapse`; ``cave``: the
    CAVE-style CSV of :func:`detection.io.tables.write_cave` (``id`` is the synapse's id here,
    root ids are segment ids, positions in ``position_unit``: ``nm`` or ``voxel`` of
    ``voxel_size``); ``parquet``: the :data:`COLUMNS` of the ``export_synapse_table`` job.
    Rows are shaped as ``export_synapses`` shapes them; check
    :func:`synapses_without_position` first for the two CSV formats.
    """
    if table_format not in DOWNLOAD_FORMATS:
        raise InputError(f"unknown table format {table_format!r}; "
                         f"formats: {', '.join(DOWNLOAD_FORMATS)}")
    if table_format == "parquet":
        sink = StreamSink()
        with pq.ParquetWriter(sink, SCHEMA, compression="zstd") as writer:
            for rows in _batches(synapses, STREAM_BATCH):
                writer.write_table(_arrow_table(rows))
                yield sink.drain()
        yield sink.drain()
        return
    from connectome.imports.synapse_tables import _cave_row, _cnapse_row

    first = True
    for batch in _object_batches(synapses):
        buffer = io.StringIO()
        if table_format == "cnapse":
            tables.write_cnapse(buffer, [_cnapse_row(s) for s in batch])
        else:
            tables.write_cave(buffer, [dataclasses.replace(_cave_row(s), id=s.pk) for s in batch],
                              position_unit=position_unit,
                              voxel_size=voxel_size if position_unit == "voxel" else None)
        text = buffer.getvalue()
        yield text if first else text.split("\n", 1)[1]  # the header once
        first = False
    if first:  # no rows: the header alone
        buffer = io.StringIO()
        if table_format == "cnapse":
            tables.write_cnapse(buffer, [])
        else:
            buffer.write(",".join(tables.cave_header(with_id=True)) + "\n")
        yield buffer.getvalue()


#: What the Cnapse and CAVE rows of ``connectome.imports.synapse_tables`` read of a synapse.
_ROW_FIELDS = ("id", "external_id", "site_id", "post_site_id", "pre__segment_id",
               "post__segment_id", "pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x",
               "ctr_z", "ctr_y", "ctr_x", "size_voxels")


@dataclasses.dataclass(frozen=True, slots=True)
class _Cell:
    segment_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class _SynapseValues:
    """The attributes of a synapse those rows read, from one ``values_list`` row: a tenth of
    the cost of a model instance with its two cells."""

    pk: int
    external_id: int | None
    site_id: int | None
    post_site_id: int | None
    pre: _Cell | None
    post: _Cell | None
    pre_z: float | None
    pre_y: float | None
    pre_x: float | None
    post_z: float | None
    post_y: float | None
    post_x: float | None
    ctr_z: float | None
    ctr_y: float | None
    ctr_x: float | None
    size_voxels: float | None


def _object_batches(synapses) -> Iterator[list[_SynapseValues]]:
    """Synapses in id order, :data:`OBJECT_BATCH` at a time, by keyset."""
    last = 0
    while True:
        rows = list(synapses.filter(id__gt=last).order_by("id")
                    .values_list(*_ROW_FIELDS)[:OBJECT_BATCH])
        if not rows:
            return
        yield [_SynapseValues(pk, ext, site, post_site,
                              None if pre is None else _Cell(pre),
                              None if post is None else _Cell(post), *rest)
               for pk, ext, site, post_site, pre, post, *rest in rows]
        last = rows[-1][0]
