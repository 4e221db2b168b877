"""Reads on cells."""

from pathlib import Path

from django.conf import settings

from connectome.cells.models import Cell
from detection.cells.meshes import MESH_INFO

BATCH = 5000


def cell_ids_by_segment(*, dataset, segment_ids) -> tuple[dict[int, int], list[int]]:
    """Cell id of each segment id that is a cell of `dataset`, and the sorted ids that are not.

    Looked up in batches, so a table of millions of ids never makes one huge IN list.
    """
    wanted = sorted({int(s) for s in segment_ids})
    found = {}
    for start in range(0, len(wanted), BATCH):
        found.update(
            (segment, cell_id) for cell_id, segment in Cell.objects.filter(
                dataset=dataset, segment_id__in=wanted[start:start + BATCH]
            ).values_list("id", "segment_id")
        )
    return found, [s for s in wanted if s not in found]


#: What a mesh job records as its format: the mesh ``info``'s type.
MESH_FORMAT = MESH_INFO["@type"]


def layer_mesh_path(layer) -> Path | None:
    """The folder of a layer's meshes (a mesh_segmentation job recorded it), or None."""
    record = (layer.parameters or {}).get("mesh")
    if not record or record.get("format") != MESH_FORMAT:
        return None
    path = settings.DATA_ROOT / record["path"]
    return path if path.is_dir() else None
