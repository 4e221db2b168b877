"""Reads for the viewer: the objects a user may see, and what a layer shows of its cells.

A layer, cell or synapse is visible exactly when its dataset is (public datasets to everyone,
the others to members and staff), as in the API; the views answer 404 otherwise.
"""

from pathlib import Path

from django.db.models import Q, QuerySet

from connectome.cells.models import Cell, Skeleton
from connectome.cells.selectors import layer_mesh_path
from connectome.datasets.models import Dataset, Layer
from connectome.datasets.selectors import datasets_visible_to
from connectome.synapses.models import Synapse, SynapseRun
from detection.cells.meshes import FRAGMENT_NAME, MANIFEST_NAME


def visible_dataset(*, dataset_id: int, user) -> Dataset | None:
    return datasets_visible_to(user).filter(pk=dataset_id).first()


def visible_layer(*, layer_id: int, user) -> Layer | None:
    return (
        Layer.objects.select_related("dataset")
        .filter(pk=layer_id, dataset__in=datasets_visible_to(user))
        .first()
    )


def visible_cell(*, cell_id: int, user) -> Cell | None:
    return (
        Cell.objects.select_related("dataset", "layer")
        .filter(pk=cell_id, dataset__in=datasets_visible_to(user))
        .first()
    )


def visible_synapse(*, synapse_id: int, user) -> Synapse | None:
    return (
        Synapse.objects.select_related("dataset", "run", "pre", "post", "pre__layer")
        .filter(pk=synapse_id, dataset__in=datasets_visible_to(user))
        .first()
    )


def layer_cells(layer: Layer) -> QuerySet:
    """(segment_id, name, cell_type) of the cells measured in ``layer``, by segment id."""
    return (
        Cell.objects.filter(layer=layer).order_by("segment_id")
        .values_list("segment_id", "name", "cell_type")
    )


def layer_has_skeletons(layer: Layer) -> bool:
    return Skeleton.objects.filter(cell__layer=layer).exists()


def segment_skeleton(*, layer: Layer, segment_id: int) -> Skeleton | None:
    """The newest skeleton of the cell with ``segment_id`` in ``layer``."""
    return (
        Skeleton.objects.filter(cell__layer=layer, cell__segment_id=segment_id)
        .order_by("-created_at", "-id")
        .first()
    )


def segmentation_layer(dataset: Dataset, *, cell: Cell | None = None) -> Layer | None:
    """The layer segment ids refer to: the cell's own, else the dataset's first segmentation."""
    if cell is not None and cell.layer_id is not None:
        return cell.layer
    return dataset.layers.filter(kind=Layer.Kind.SEGMENTATION).order_by("id").first()


def cell_synapses(cell: Cell, *, limit: int, runs=None) -> list[Synapse]:
    """Up to ``limit`` connections (unflagged synapses) in or out of ``cell``, oldest first;
    of ``runs`` (runs or ids) when given, else of every run."""
    synapses = Synapse.objects.filter(Q(pre=cell) | Q(post=cell), flag=Synapse.Flag.NONE)
    if runs is not None:
        synapses = synapses.filter(run__in=runs)
    return list(synapses.select_related("pre", "post").order_by("id")[:limit])


def layer_has_meshes(layer: Layer) -> bool:
    return layer_mesh_path(layer) is not None


def mesh_file(layer: Layer, name: str) -> tuple[Path, str] | None:
    """A file of the layer's meshes and what it is ("manifest" or "fragment"); None when the
    name is neither or the file is not there (a segment without a mesh, an older job's)."""
    folder = layer_mesh_path(layer)
    if folder is None:
        return None
    if MANIFEST_NAME.fullmatch(name):
        what = "manifest"
    elif FRAGMENT_NAME.fullmatch(name):
        what = "fragment"
    else:
        return None
    path = folder / name
    return (path, what) if path.is_file() else None


def visible_run(*, run_id: int, user) -> SynapseRun | None:
    return (
        SynapseRun.objects.select_related("dataset")
        .filter(pk=run_id, dataset__in=datasets_visible_to(user))
        .first()
    )
