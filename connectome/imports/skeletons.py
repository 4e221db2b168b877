"""Skeletons: SWC files in and out, and skeletonization of a segmentation layer."""

import logging
import zipfile
from pathlib import Path

import numpy as np
from django.db import transaction

from connectome.cells.models import Cell, Skeleton
from connectome.datasets.models import Dataset, Layer
from detection.cells.skeletonize import skeletonize_segmentation
from detection.errors import InputError
from detection.io.swc import SkeletonNodes, read_swc, swc_text
from detection.io.zarr_store import open_multiscale

logger = logging.getLogger(__name__)


def cable_length(nodes: SkeletonNodes) -> float:
    """Summed length (nm) of the edges from each node to its parent."""
    if len(nodes.node_id) == 0:
        return 0.0
    index = {int(n): i for i, n in enumerate(nodes.node_id)}
    children = [i for i, p in enumerate(nodes.parent_id) if p >= 0]
    parents = [index[int(nodes.parent_id[i])] for i in children]
    return float(np.linalg.norm(nodes.zyx[children] - nodes.zyx[parents], axis=1).sum())


def _skeleton_row(cell: Cell, nodes: SkeletonNodes, *, source: str, **extra) -> Skeleton:
    return Skeleton(
        cell=cell, source=source, n_nodes=len(nodes.node_id), cable_length_nm=cable_length(nodes),
        nodes=Skeleton.pack(nodes.node_id, nodes.parent_id, nodes.zyx, nodes.radius,
                            nodes.compartment),
        **extra,
    )


def skeleton_nodes(skeleton: Skeleton) -> SkeletonNodes:
    return SkeletonNodes(**skeleton.unpack())


@transaction.atomic
def _replace_skeletons(rows: list[Skeleton], *, source: str) -> list[Skeleton]:
    Skeleton.objects.filter(cell__in=[r.cell for r in rows], source=source).delete()
    return Skeleton.objects.bulk_create(rows, batch_size=200)


def _cell_for_file(dataset: Dataset, path: Path) -> Cell:
    stem = path.stem
    cell = None
    if stem.isdigit() and int(stem) < 2**64:
        cell = Cell.objects.filter(dataset=dataset, segment_id=int(stem)).first()
    if cell is None:
        cell = Cell.objects.filter(dataset=dataset, name=stem).first()
    if cell is None:
        raise InputError(
            f"{path.name}: no cell with segment id or name '{stem}' in dataset '{dataset.name}' "
            "(SWC files are matched to cells by file name: <segment id>.swc or <cell name>.swc)"
        )
    return cell


def import_skeletons(
    *, dataset: Dataset, source: str, source_name: str = "swc", scale: float = 1.0,
    progress=None,
) -> list[Skeleton]:
    """Import one SWC file or a folder of them; all files are parsed before anything is saved."""
    path = Path(source)
    files = sorted(path.glob("*.swc")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: no .swc files in this folder")
    if progress is not None:
        progress.set_total(len(files), message=f"reading {len(files)} SWC file(s)")
    rows = []
    for file in files:
        cell = _cell_for_file(dataset, file)
        nodes = read_swc(file, scale=scale)
        rows.append(_skeleton_row(cell, nodes, source=source_name, source_path=str(file),
                                  parameters={"scale": scale}))
        if progress is not None:
            progress.advance()
    return _replace_skeletons(rows, source=source_name)


def export_skeletons(*, dataset: Dataset, target, source: str | None = None,
                     progress=None) -> int:
    """Write every skeleton of the dataset (or of one ``source``) into the zip file ``target``
    as ``<segment id>.swc`` files; returns how many.

    A cell's second skeleton (another source) is ``<segment id>-<source>-<skeleton id>.swc``.
    """
    skeletons = Skeleton.objects.filter(cell__dataset=dataset).select_related("cell")
    if source:
        skeletons = skeletons.filter(source=source)
    if progress is not None:
        progress.set_total(skeletons.count(), message="writing SWC files")
    names = set()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for skeleton in skeletons.order_by("id").iterator(chunk_size=100):
            segment = skeleton.cell.segment_id
            header = f"cell {segment} {skeleton.cell.name} ({skeleton.source}); nm"
            name = f"{segment}.swc"
            if name in names:
                name = f"{segment}-{skeleton.source}-{skeleton.pk}.swc"
            names.add(name)
            archive.writestr(name, swc_text(skeleton_nodes(skeleton), header=header))
            if progress is not None:
                progress.advance()
    return len(names)


def skeletonize_layer(
    *, layer: Layer, segment_ids=None, min_size_voxels: int = 1000, scale: float = 4.0,
    const: float = 500.0, progress=None,
) -> list[Skeleton]:
    """Skeletonize each cell of a segmentation layer from its bounding-box crop.

    Each cell is read alone (its bounding box plus one voxel), so memory is bounded by the
    largest cell's box, not by the volume.
    """
    if layer.kind != Layer.Kind.SEGMENTATION:
        raise InputError(f"layer '{layer.name}' is a {layer.kind} layer, not a segmentation")
    group, _ = open_multiscale(layer.path)
    volume = group["0"]
    cells = layer.cells.filter(size_voxels__gte=min_size_voxels)
    if segment_ids:
        cells = cells.filter(segment_id__in=segment_ids)
        missing = set(segment_ids) - set(cells.values_list("segment_id", flat=True))
        if missing:
            raise InputError(
                f"segment ids {sorted(missing)[:10]} are not cells of layer '{layer.name}' "
                f"with at least {min_size_voxels} voxels"
            )
    cells = list(cells.order_by("id"))
    if progress is not None:
        progress.set_total(len(cells), message=f"skeletonizing {len(cells)} cells")
    voxel_size = np.asarray(layer.dataset.voxel_size)
    rows = []
    for cell in cells:
        lo = np.maximum(np.array([cell.bbox_min_z, cell.bbox_min_y, cell.bbox_min_x]) - 1, 0)
        hi = np.minimum(np.array([cell.bbox_max_z, cell.bbox_max_y, cell.bbox_max_x]) + 1,
                        layer.shape)
        crop = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        mask = (crop == np.asarray(cell.segment_id, dtype=crop.dtype)).astype(np.uint32)
        skeletons = skeletonize_segmentation(
            mask, voxel_size=tuple(voxel_size), ids=[1], scale=scale, const=const
        )
        nodes = skeletons.get(1)
        if nodes is not None and len(nodes.node_id):
            nodes.zyx = nodes.zyx + lo * voxel_size
            rows.append(_skeleton_row(
                cell, nodes, source="kimimaro",
                parameters={"scale": scale, "const": const, "layer": layer.name},
            ))
        if progress is not None:
            progress.advance()
    logger.info("skeletonized %d of %d cells of %s", len(rows), len(cells), layer)
    return _replace_skeletons(rows, source="kimimaro")
