"""Import EM volumes and segmentations into chunked storage, block by block.

The source is read one block at a time and written to a staging zarr group; the pyramid is
built from it; only then are the layer (and, for a segmentation, its cells) recorded and the
volume moved into place, in one transaction. A failure at any step leaves nothing behind.
"""

import logging
import math
from pathlib import Path

import numpy as np
from django.conf import settings

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer
from connectome.datasets.services import (
    check_volume_fits,
    layer_register,
    remove_staged,
    staging_path,
)
from detection.cells.segment_stats import SegmentStatistics, SegmentTable
from detection.errors import InputError
from detection.io.sources import VolumeFormatError, iter_blocks, open_volume
from detection.io.zarr_store import build_pyramid, create_multiscale, write_block

logger = logging.getLogger(__name__)

# Bytes of source data read per block; bounds the importer's memory whatever the volume size
# (settings.IMPORT_BLOCK_BYTES).
BLOCK_BYTES = 64 * 2**20

ALLOWED_DTYPES = {
    Layer.Kind.EM: ("uint8", "uint16"),
    Layer.Kind.SEGMENTATION: ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"),
    Layer.Kind.PREDICTION: ("uint8", "float32", "float64"),
    Layer.Kind.MASK: ("bool", "uint8"),
    # Labelled synapse candidates (clefts, junctions): one id per candidate, no cells.
    Layer.Kind.SYNAPSES: ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"),
}


def _describe(source: str, dataset_path: str | None) -> str:
    name = Path(source).name
    return f"{name} (dataset '{dataset_path}')" if dataset_path else name


def _block_shape(chunks, dtype) -> tuple[int, int, int]:
    """Whole chunks per block, growing y/x then z until a block holds about BLOCK_BYTES."""
    block = list(chunks)
    itemsize = np.dtype(dtype).itemsize
    limit = getattr(settings, "IMPORT_BLOCK_BYTES", BLOCK_BYTES)
    while np.prod(block) * itemsize * 2 <= limit:
        axis = 1 if block[1] <= block[2] else 2
        block[axis] *= 2
    return tuple(block)


class VolumeTooLarge(VolumeFormatError):
    """A volume larger than the ``IMPORT_MAX_VOXELS`` setting allows."""


def check_volume_size(shape, *, label: str) -> None:
    """Refuse an empty volume, or one of more than ``settings.IMPORT_MAX_VOXELS`` voxels."""
    shape = tuple(int(n) for n in shape)
    text = " x ".join(str(n) for n in shape)
    if 0 in shape:
        raise VolumeFormatError(f"{label}: the volume is empty (shape z, y, x {text})")
    voxels = math.prod(shape)
    limit = settings.IMPORT_MAX_VOXELS
    if voxels > limit:
        raise VolumeTooLarge(
            f"{label}: the volume is {text} voxels ({_count(voxels)}), more than the "
            f"{_count(limit)} voxels an import may hold (setting IMPORT_MAX_VOXELS)"
        )


def _count(n: int) -> str:
    return str(n) if n < 10**6 else f"{n:.3g}"


def check_source(volume, *, dataset: Dataset, kind: str, label: str) -> None:
    """Everything about an opened source that its header tells: size, data type, shape and
    voxel size against the dataset. Runs when the job is submitted and again when it runs."""
    check_volume_size(volume.shape, label=label)
    dtype = np.dtype(volume.dtype)
    if dtype.name not in ALLOWED_DTYPES[kind]:
        raise VolumeFormatError(
            f"{label}: a {kind} volume must be one of {', '.join(ALLOWED_DTYPES[kind])}, "
            f"but the file holds {dtype.name}"
        )
    check_volume_fits(dataset=dataset, shape=volume.shape, voxel_size=volume.voxel_size,
                      source=label)


def preflight_import_volume(
    *, dataset: Dataset, source: str, name: str, kind: str = Layer.Kind.EM,
    dataset_path: str | None = None, format: str | None = None, voxel_size=None,
    fill_missing: bool = False, **_,
) -> None:
    """The checks of :func:`import_volume` that need only the file's header (cheap): for
    refusing a job when it is submitted, before it is queued."""
    if kind not in Layer.Kind.values:
        raise InputError(f"unknown layer kind {kind!r}; kinds: {', '.join(Layer.Kind.values)}")
    label = _describe(source, dataset_path)
    with open_volume(source, dataset=dataset_path, format=format, voxel_size=voxel_size,
                     fill_missing=fill_missing) as volume:
        check_source(volume, dataset=dataset, kind=kind, label=label)


def _stored_dtype(kind: str, dtype: np.dtype) -> np.dtype:
    if kind in (Layer.Kind.SEGMENTATION, Layer.Kind.SYNAPSES) and dtype.kind == "i":
        return np.dtype(dtype.str.replace("i", "u"))
    if kind == Layer.Kind.PREDICTION and dtype == np.float64:
        return np.dtype(np.float32)
    if kind == Layer.Kind.MASK:
        return np.dtype(np.uint8)
    return dtype


def import_volume(
    *, dataset: Dataset, source: str, name: str, kind: str = Layer.Kind.EM,
    dataset_path: str | None = None, format: str | None = None,
    voxel_size: tuple[float, float, float] | None = None, chunks=None,
    background_id: int | None = 0, fill_missing: bool = False, job=None, progress=None,
) -> Layer:
    """Copy a TIFF, HDF5, zarr or precomputed volume into a new layer of ``dataset``.

    For a segmentation, one :class:`~connectome.cells.models.Cell` per id other than
    ``background_id`` (every id when it is None) is created with its size, bounding box and
    centroid, computed during the same pass over the data.

    ``voxel_size`` overrides what the file states (also a statement that is not a usable
    voxel size, which is otherwise an error); ``fill_missing`` reads missing zarr or
    precomputed chunks as the fill value instead of failing. A volume of more than
    ``settings.IMPORT_MAX_VOXELS`` voxels is refused before anything is written.
    """
    if kind not in Layer.Kind.values:
        raise InputError(f"unknown layer kind {kind!r}; kinds: {', '.join(Layer.Kind.values)}")
    label = _describe(source, dataset_path)
    if Layer.objects.filter(dataset=dataset, name=name).exists():
        raise InputError(f"dataset '{dataset.name}' already has a layer named '{name}'")
    if kind == Layer.Kind.SEGMENTATION and dataset.cells.filter(layer__isnull=False).exists():
        raise InputError(
            f"dataset '{dataset.name}' already has cells from a segmentation; "
            "delete that segmentation layer before importing another"
        )

    with open_volume(source, dataset=dataset_path, format=format, voxel_size=voxel_size,
                     fill_missing=fill_missing) as volume:
        check_source(volume, dataset=dataset, kind=kind, label=label)
        dtype = np.dtype(volume.dtype)
        stored = _stored_dtype(kind, dtype)
        staged = staging_path(dataset=dataset, job=job)
        try:
            group = create_multiscale(
                staged, shape=volume.shape, dtype=stored, voxel_size=dataset.voxel_size,
                kind=kind, **({"chunks": tuple(chunks)} if chunks else {}),
            )
            level0 = group["0"]
            stats = (
                SegmentStatistics(background=background_id)
                if kind == Layer.Kind.SEGMENTATION else None
            )
            boxes = list(iter_blocks(volume.shape, _block_shape(level0.chunks, stored)))
            if progress is not None:
                progress.set_total(len(boxes), message=f"copying {label}")
            for box in boxes:
                data = _checked_block(volume.read(box), kind=kind, label=label, box=box)
                write_block(group, box, data.astype(stored, copy=False))
                if stats is not None:
                    stats.add(data, offset=tuple(s.start for s in box))
                if progress is not None:
                    progress.advance()
            if progress is not None:
                progress.set_total(1, message="building the multiscale pyramid")
            build_pyramid(group, progress=progress)
            metadata = {
                "shape": volume.shape, "dtype": stored.name, "chunks": level0.chunks,
                "factors": group.attrs["downsample_factors"],
            }
        except BaseException:
            remove_staged(staged)
            raise

    table = stats.result() if stats is not None else None
    layer = layer_register(
        dataset=dataset, name=name, kind=kind, staged=staged, metadata=metadata,
        source_path=str(source), method="import",
        parameters={"dataset_path": dataset_path, "format": format, "background_id": background_id,
                    "source_voxel_size": (list(volume.file_voxel_size)
                                          if volume.file_voxel_size else None),
                    "voxel_size": list(voxel_size) if voxel_size is not None else None,
                    **({"voxel_size_overridden": volume.voxel_size_note}
                       if volume.voxel_size_note else {}),
                    "fill_missing": bool(fill_missing)},
        job=job,
        with_rows=(lambda layer: create_cells(layer, table)) if table is not None else None,
    )
    logger.info("imported %s as layer %s (%s)", label, layer, kind)
    return layer


def _checked_block(data: np.ndarray, *, kind: str, label: str, box) -> np.ndarray:
    labels = (Layer.Kind.SEGMENTATION, Layer.Kind.SYNAPSES)
    if kind in labels and data.dtype.kind == "i" and data.size and data.min() < 0:
        corner = tuple(s.start for s in box)
        raise VolumeFormatError(
            f"{label}: {kind} layer has negative ids (min {int(data.min())}) in the block at "
            f"(z, y, x) ({', '.join(str(int(c)) for c in corner)}); segment ids must be >= 0"
        )
    if kind == Layer.Kind.PREDICTION and data.dtype.kind == "f" and not np.isfinite(data).all():
        raise VolumeFormatError(f"{label}: prediction holds NaN or infinite values")
    return data


_CELL_STAT_FIELDS = [
    "layer", "size_voxels", "bbox_min_z", "bbox_min_y", "bbox_min_x",
    "bbox_max_z", "bbox_max_y", "bbox_max_x", "centroid_z", "centroid_y", "centroid_x",
]


def create_cells(layer: Layer, table: SegmentTable, *, batch_size: int = 5000) -> None:
    """One cell per segment; cells already known by id (e.g. from a synapse table) get the stats."""
    voxel = np.asarray(layer.dataset.voxel_size)
    centroids = table.centroid * voxel
    existing = {
        cell.segment_id: cell
        for cell in Cell.objects.filter(dataset_id=layer.dataset_id, layer__isnull=True)
    }
    new, updated = [], []
    for seg, size, lo, hi, c in zip(table.ids, table.sizes, table.bbox_min, table.bbox_max, centroids):
        cell = existing.get(int(seg)) or Cell(dataset_id=layer.dataset_id, segment_id=int(seg))
        cell.layer = layer
        cell.size_voxels = int(size)
        cell.bbox_min_z, cell.bbox_min_y, cell.bbox_min_x = (int(v) for v in lo)
        cell.bbox_max_z, cell.bbox_max_y, cell.bbox_max_x = (int(v) for v in hi)
        cell.centroid_z, cell.centroid_y, cell.centroid_x = (float(v) for v in c)
        (updated if cell.pk else new).append(cell)
    Cell.objects.bulk_create(new, batch_size=batch_size)
    Cell.objects.bulk_update(updated, _CELL_STAT_FIELDS, batch_size=batch_size)
