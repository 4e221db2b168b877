"""Writes on synapses: storing the rows of a partner-assignment run."""

import logging
from collections.abc import Iterable

from django.db import transaction

from connectome.cells.selectors import cell_ids_by_segment
from connectome.datasets.models import Dataset
from connectome.synapses.models import Synapse, SynapseRun
from detection.errors import InputError
from detection.partners.records import FLAGS, PartnerRow

logger = logging.getLogger(__name__)

BATCH = 5000


@transaction.atomic
def synapse_run_store(
    *, dataset: Dataset, run_name: str, method: str, rows: Iterable[PartnerRow],
    parameters: dict | None = None, replace: bool = False, job=None, source_path: str = "",
) -> SynapseRun:
    """Store partner-assignment rows as a new synapse run of ``dataset``.

    Segment ids are mapped to the dataset's cells (segment 0, background, to no cell). Every
    row is checked before anything is written: an unknown segment id or flag raises
    ``ValueError`` naming the site, and the database is left as it was. With ``replace`` an
    existing run of that name and its synapses (and their reviews) are deleted in the same
    transaction that writes the new one, so a failure keeps the old run.
    """
    rows = list(rows)
    exists = SynapseRun.objects.filter(dataset=dataset, name=run_name).exists()
    if exists and not replace:
        raise InputError(
            f"dataset '{dataset.name}' already has a synapse run named '{run_name}'; "
            "choose another name or replace it"
        )
    for row in rows:
        if row.flag not in FLAGS:
            raise InputError(f"site {row.site_id}: unknown flag {row.flag!r}; flags: {FLAGS}")
    cells = _cells_by_segment(dataset, rows)

    if exists:
        SynapseRun.objects.filter(dataset=dataset, name=run_name).delete()
    run = SynapseRun.objects.create(
        dataset=dataset, name=run_name, method=method, parameters=parameters or {},
        source_path=str(source_path), job=job,
    )
    synapses = [_synapse(row, run, cells) for row in rows]
    for start in range(0, len(synapses), BATCH):
        Synapse.objects.bulk_create(synapses[start:start + BATCH])
    logger.info("stored %d partner rows as synapse run %s", len(synapses), run)
    return run


def _cells_by_segment(dataset, rows) -> dict[int, int]:
    """Cell id by segment id for every non-zero id of ``rows``; unknown ids are an error."""
    segment_ids = {int(s) for row in rows for s in (row.pre_id, row.post_id)} - {0}
    found, missing = cell_ids_by_segment(dataset=dataset, segment_ids=segment_ids)
    missing = set(missing)
    if missing:
        row, segment = next(
            (row, int(s)) for row in rows for s in (row.pre_id, row.post_id) if int(s) in missing
        )
        more = f" (and {len(missing) - 1} more unknown ids)" if len(missing) > 1 else ""
        raise InputError(
            f"site {row.site_id}: segment id {segment} is not a cell of dataset "
            f"'{dataset.name}'{more}; import the segmentation first"
        )
    return found


def _zyx(point):
    if point is None:
        return None, None, None
    z, y, x = (float(v) for v in point)
    return z, y, x


def _number(value, kind=float):
    return None if value is None else kind(value)


def _synapse(row: PartnerRow, run: SynapseRun, cells: dict[int, int]) -> Synapse:
    pre_z, pre_y, pre_x = _zyx(row.pre_point)
    post_z, post_y, post_x = _zyx(row.post_point)
    ctr_z, ctr_y, ctr_x = _zyx(row.center)
    return Synapse(
        dataset_id=run.dataset_id, run=run, method=row.method or run.method,
        pre_id=cells.get(int(row.pre_id)), post_id=cells.get(int(row.post_id)),
        site_id=int(row.site_id),
        pre_z=pre_z, pre_y=pre_y, pre_x=pre_x, post_z=post_z, post_y=post_y, post_x=post_x,
        ctr_z=ctr_z, ctr_y=ctr_y, ctr_x=ctr_x,
        size_voxels=_number(row.size_voxels), size_nm3=_number(row.size_nm3),
        contact_area_nm2=_number(row.contact_area_nm2), confidence=_number(row.confidence),
        weight=_number(row.weight), flag=row.flag,
    )
