"""The whole synapse table of a dataset out as CSV or Parquet, in batches (never all in memory).

The ``export_synapse_table`` job writes one into its export folder and the API serves it for
download (``connectome/imports/paths.py``). Segment ids are written as unsigned 64-bit numbers
(Parquet ``uint64``).
"""

import csv
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse
from detection.errors import InputError

logger = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")
BATCH = 100_000

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


def _batches(synapses):
    """Rows in id order, ``BATCH`` at a time, by keyset: each batch one indexed query."""
    fields = [field for _, field, _ in COLUMNS]
    last = 0
    while True:
        rows = list(synapses.filter(id__gt=last).order_by("id").values_list(*fields)[:BATCH])
        if not rows:
            return
        yield rows
        last = rows[-1][0]


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
                arrays = [pa.array(values, type=kind)
                          for values, (_, _, kind) in zip(zip(*rows), COLUMNS)]
                writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
                written += len(rows)
                if progress is not None:
                    progress.advance(len(rows))
    logger.info("exported %d synapses of %s to %s", written, dataset.name, target)
    return written
