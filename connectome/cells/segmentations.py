"""What the jobs that make a segmentation layer share: reading a boundary or membrane layer,
the output zarr group, its segment statistics, the layer row and the cells' measures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from django.conf import settings

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer
from connectome.jobs.models import Job
from connectome.jobs.services import JobConflict
from detection.cells.segment_stats import SegmentStatistics, SegmentTable
from detection.errors import InputError
from detection.io.sources import read_box
from detection.io.zarr_store import DEFAULT_CHUNKS

#: Layer kinds that can serve as a boundary (probability) or membrane map.
BOUNDARY_KINDS = (Layer.Kind.PREDICTION, Layer.Kind.MASK)


def job_folder(job: Job) -> Path:
    """Where a job's volumes and files live, relative to DATA_ROOT."""
    return Path("datasets") / str(job.dataset_id) / "jobs" / str(job.pk)


def dataset_layer(dataset: Dataset, layer_id, *, kinds, what: str) -> Layer:
    """Layer ``layer_id`` of ``dataset`` if it is of one of ``kinds``, else InputError."""
    layer = Layer.objects.filter(dataset=dataset, pk=layer_id).first()
    if layer is None:
        raise InputError(f"dataset '{dataset.name}' has no layer {layer_id} (the {what})")
    if layer.kind not in kinds:
        raise InputError(f"layer {layer.pk} '{layer.name}' is a {layer.kind} layer; the {what} "
                         f"must be a {' or '.join(str(k) for k in kinds)} layer")
    if dataset.shape is not None and layer.shape != dataset.shape:
        raise InputError(f"layer {layer.pk} '{layer.name}' has shape {layer.shape}, not the "
                         f"dataset's {dataset.shape}")
    return layer


def refuse_existing_layer(kind: str, dataset: Dataset, name: str) -> None:
    if Layer.objects.filter(dataset=dataset, name=name).exists():
        raise JobConflict(kind, f"dataset '{dataset.name}' already has a layer named '{name}'")


def read_boundary(layer: Layer, array, box) -> np.ndarray:
    """A box of a boundary layer as float32 in [0, 1] (1 = membrane).

    A mask counts as 1 where it is non-zero; a uint8 prediction is scaled by 1/255 (how the
    detection jobs store probabilities); a float prediction is taken as it is and must lie in
    [0, 1].
    """
    data = read_box(array, box)
    if layer.kind == Layer.Kind.MASK or data.dtype == bool:
        return (data != 0).astype(np.float32)
    if data.dtype == np.uint8:
        return data.astype(np.float32) / np.float32(255)
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32, copy=False)
        if data.size and (float(data.min()) < 0 or float(data.max()) > 1):
            corner = ", ".join(str(s.start) for s in box)
            raise InputError(f"layer '{layer.name}' holds values outside [0, 1] (from "
                             f"{float(data.min()):g} to {float(data.max()):g}) in the box at "
                             f"(z, y, x) ({corner}); a boundary map is a probability")
        return data
    raise InputError(f"layer '{layer.name}' holds {data.dtype} values; a boundary map is a "
                     "float probability, a uint8 probability (0-255) or a mask")


def label_dtype(largest_id: int) -> np.dtype:
    """uint32 when every id fits, else uint64."""
    return np.dtype(np.uint32 if largest_id < 2**32 else np.uint64)


def block_chunks(block_shape) -> tuple[int, int, int]:
    """Chunks that tile every block of ``block_shape``: along each axis the largest divisor of
    the block's extent that is not above the default chunk's (blocks written in parallel must
    not share a chunk)."""
    return tuple(max(d for d in range(1, min(b, c) + 1) if b % d == 0)
                 for b, c in zip(block_shape, DEFAULT_CHUNKS))


def segment_table(array, boxes) -> SegmentTable:
    """Sizes, bounding boxes and centroids of the segments of ``array``, read box by box."""
    stats = SegmentStatistics(background=0)
    for box in boxes:
        stats.add(read_box(array, box), offset=tuple(s.start for s in box))
    return stats.result()


def layer_row(*, dataset: Dataset, name: str, meta: dict, path: Path, job: Job, method: str,
              parameters: dict, source_path: str = "",
              kind: str = Layer.Kind.SEGMENTATION) -> Layer:
    """The layer row (a segmentation unless ``kind`` says otherwise) of a group a job wrote
    under its folder."""
    shape, chunks = meta["shape"], meta["chunks"]
    return Layer.objects.create(
        dataset=dataset, name=name, kind=kind, dtype=str(meta["dtype"]),
        shape_z=shape[0], shape_y=shape[1], shape_x=shape[2],
        chunk_z=chunks[0], chunk_y=chunks[1], chunk_x=chunks[2], storage_path=str(path),
        downsample_factors=[list(f) for f in meta["factors"]], source_path=source_path,
        method=method, parameters=parameters, job=job,
    )


def measure(cell: Cell, *, layer: Layer, table: SegmentTable, row: int) -> Cell:
    """Set ``cell``'s layer, size, bounding box and centroid (nm) from row ``row`` of
    ``table``."""
    voxel = np.asarray(layer.dataset.voxel_size)
    cell.layer = layer
    cell.size_voxels = int(table.sizes[row])
    cell.bbox_min_z, cell.bbox_min_y, cell.bbox_min_x = (int(v) for v in table.bbox_min[row])
    cell.bbox_max_z, cell.bbox_max_y, cell.bbox_max_x = (int(v) for v in table.bbox_max[row])
    cell.centroid_z, cell.centroid_y, cell.centroid_x = (
        float(v) for v in table.centroid[row] * voxel)
    return cell


MEASURED_FIELDS = [
    "layer", "size_voxels", "bbox_min_z", "bbox_min_y", "bbox_min_x",
    "bbox_max_z", "bbox_max_y", "bbox_max_x", "centroid_z", "centroid_y", "centroid_x",
]


def write_whole(path: Path, write) -> None:
    """Write a file by ``write(stream)`` into a temporary name beside it, then rename it into
    place: a reader (or a block run again) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def data_path(relative: Path) -> Path:
    return settings.DATA_ROOT / relative
