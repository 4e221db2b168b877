"""The annotated volumes a detector is trained on: checked at submission, read by the job.

A source names a dataset, its EM layer, a label layer of the same shape, the label convention
(``ccboost``: 255 synapse, 0 not, anything else unknown; ``binary``: nonzero synapse;
``instances``: nonzero ids, each one annotated synapse), an optional ignore layer (nonzero:
neither synapse nor not) and an optional region (z0, y0, x0, z1, y1, x1, voxels, half-open).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectome.datasets.models import Dataset, Layer, Membership
from connectome.datasets.selectors import datasets_visible_to, has_role
from detection.errors import InputError
from detection.io.sources import format_numbers
from detection.io.zarr_store import MODE_KINDS, open_multiscale
from detection.synapses.resample import common_voxel_size

CONVENTIONS = ("ccboost", "binary", "instances")
#: Kinds a label or ignore layer may be: volumes of ids or classes, downsampled by mode.
LABEL_KINDS = (Layer.Kind.MASK, Layer.Kind.SEGMENTATION, Layer.Kind.SYNAPSES)
#: Bytes of labels read at once when a label layer is read at full resolution.
READ_BYTES = 256 * 2**20


@dataclass
class Source:
    """One training source with its rows looked up."""

    dataset: Dataset
    em: Layer
    labels: Layer
    convention: str
    ignore: Layer | None = None
    roi: tuple[int, int, int, int, int, int] | None = None

    @property
    def name(self) -> str:
        return f"dataset '{self.dataset.name}' layer '{self.labels.name}'"

    @property
    def region(self) -> tuple[slice, slice, slice]:
        roi = self.roi or (0, 0, 0, *self.em.shape)
        return tuple(slice(a, b) for a, b in zip(roi[:3], roi[3:]))

    def to_json(self) -> dict:
        """What the detector's record keeps of it."""
        return {
            "dataset": self.dataset.pk, "dataset_name": self.dataset.name,
            "em_layer": self.em.pk, "em_layer_name": self.em.name,
            "labels_layer": self.labels.pk, "labels_layer_name": self.labels.name,
            "ignore_layer": self.ignore.pk if self.ignore else None,
            "ignore_layer_name": self.ignore.name if self.ignore else None,
            "convention": self.convention, "roi": list(self.roi) if self.roi else None,
            "voxel_size": list(self.dataset.voxel_size),
        }


def source_layer(dataset: Dataset, layer_id: int, *, role: str, kinds) -> Layer:
    """Layer ``layer_id`` of ``dataset``, of one of ``kinds``, or InputError naming the dataset,
    the layer and the ``role`` it was given for."""
    layer = Layer.objects.filter(pk=layer_id).select_related("dataset").first()
    if layer is None or layer.dataset_id != dataset.pk:
        where = "" if layer is None else f" (it is layer '{layer.name}' of another dataset)"
        raise InputError(f"dataset '{dataset.name}' has no layer {layer_id}{where}; the "
                         f"{role} layer must be one of its own")
    if layer.kind not in kinds:
        wanted = ", ".join(str(k) for k in kinds)
        raise InputError(f"layer '{layer.name}' of dataset '{dataset.name}' is of kind "
                         f"{layer.kind}; the {role} layer must be of kind {wanted}")
    return layer


def resolve_source(spec: dict, *, user=None, label_kinds=LABEL_KINDS) -> Source:
    """The rows of one source, or InputError naming the dataset and layer.

    ``user`` (None: the shell) must be an admin of the dataset; the label layer must be of one
    of ``label_kinds`` (a cell model's labels are a segmentation).
    """
    visible = Dataset.objects.all() if user is None else datasets_visible_to(user)
    dataset = visible.filter(pk=spec["dataset"]).first()
    if dataset is None:
        raise InputError(f"there is no dataset {spec['dataset']} that you can see")
    if user is not None and not has_role(dataset=dataset, user=user, role=Membership.Role.ADMIN):
        raise InputError(f"training on dataset '{dataset.name}' needs the admin role on it")
    em = source_layer(dataset, spec["em_layer"], role="EM", kinds=(Layer.Kind.EM,))
    labels = source_layer(dataset, spec["labels_layer"], role="label", kinds=label_kinds)
    ignore = None
    if spec.get("ignore_layer") is not None:
        ignore = source_layer(dataset, spec["ignore_layer"], role="ignore", kinds=LABEL_KINDS)
    for other, role in ((labels, "label"), (ignore, "ignore")):
        if other is not None and other.shape != em.shape:
            raise InputError(
                f"dataset '{dataset.name}': the {role} layer '{other.name}' is "
                f"{format_numbers(other.shape)} voxels (z, y, x) but the EM layer '{em.name}' is "
                f"{format_numbers(em.shape)}")
    roi = spec.get("roi")
    if roi is not None:
        roi = tuple(int(v) for v in roi)
        if any(a >= b for a, b in zip(roi[:3], roi[3:])) or any(
                b > n for b, n in zip(roi[3:], em.shape)):
            raise InputError(f"dataset '{dataset.name}' layer '{em.name}': region {list(roi)} "
                             f"is empty or outside the volume {format_numbers(em.shape)}")
    return Source(dataset=dataset, em=em, labels=labels, convention=spec["convention"],
                  ignore=ignore, roi=roi)


def training_voxel_size(sources: list[Source]) -> tuple[float, float, float]:
    """The voxel size the sources are trained at, or InputError naming those that cannot be
    brought to one pixel."""
    return common_voxel_size([s.dataset.voxel_size for s in sources],
                             names=[f"dataset '{s.dataset.name}'" for s in sources])


def _classes(values: np.ndarray, convention: str) -> tuple[bool, bool]:
    """Whether ``values`` hold a synapse voxel and a non-synapse voxel under ``convention``."""
    if convention == "ccboost":
        return bool((values == 255).any()), bool((values == 0).any())
    return bool((values != 0).any()), bool((values == 0).any())


def _slabs(shape, region, dtype) -> list[tuple[slice, slice, slice]]:
    per_plane = int(np.prod([r.stop - r.start for r in region[1:]])) * np.dtype(dtype).itemsize
    depth = max(1, READ_BYTES // max(per_plane, 1))
    z = region[0]
    return [(slice(a, min(a + depth, z.stop)), *region[1:]) for a in range(z.start, z.stop, depth)]


def check_labels(source: Source) -> None:
    """Refuse a label layer without a synapse voxel or without a non-synapse voxel (in its
    region), saying which pyramid level was read.

    Without a region, the coarsest level is read first: label layers are downsampled by mode,
    which keeps values, so both classes found there are found. Otherwise (a class that is rare
    may vanish from a coarse level) the full-resolution level is read in slabs, stopping once
    both classes are seen.
    """
    group, meta = open_multiscale(source.labels.path)
    coarse = None
    if source.roi is None and source.labels.kind in MODE_KINDS and meta["levels"] > 1:
        coarse = meta["paths"][-1]
        positive, negative = _classes(np.asarray(group[coarse][...]), source.convention)
        if positive and negative:
            return
    level0 = group[meta["paths"][0]]
    positive = negative = False
    for box in _slabs(level0.shape, source.region, level0.dtype):
        found = _classes(np.asarray(level0[box]), source.convention)
        positive, negative = positive or found[0], negative or found[1]
        if positive and negative:
            return
    read = "the full-resolution level, read in slabs"
    if coarse is not None:
        read += f" (the coarsest level, {coarse}, showed only one class)"
    missing = "synapse" if not positive else "non-synapse"
    meaning = {"ccboost": "255 synapse, 0 not", "binary": "nonzero synapse, 0 not",
               "instances": "nonzero ids synapses, 0 not"}[source.convention]
    where = "" if source.roi is None else f" in region {list(source.roi)}"
    raise InputError(
        f"dataset '{source.dataset.name}' layer '{source.labels.name}' has no {missing} voxel"
        f"{where} under the {source.convention} convention ({meaning}); checked {read}")


def training_volume(source: Source):
    """The :class:`~detection.synapses.training.TrainingVolume` of a source (its region read
    whole: training holds its volumes in memory)."""
    from detection.synapses.classify import labels_to_targets
    from detection.synapses.training import TrainingVolume

    region = source.region
    em = np.asarray(open_multiscale(source.em.path)[0]["0"][region])
    labels = np.asarray(open_multiscale(source.labels.path)[0]["0"][region])
    sites = None
    if source.convention == "instances":
        targets = (labels != 0).astype(np.int8)
        if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:
            # Ids beyond 32 bits (uint64 segmentations): numbered again, 0 staying 0.
            _, labels = np.unique(labels, return_inverse=True)
            labels = labels.reshape(targets.shape)
        sites = labels.astype(np.uint32)
    else:
        targets = labels_to_targets(labels, convention=source.convention)
    ignore = None
    if source.ignore is not None:
        ignore = np.asarray(open_multiscale(source.ignore.path)[0]["0"][region]) != 0
    return TrainingVolume(name=source.name, em=em, voxel_size=source.dataset.voxel_size,
                          targets=targets, sites=sites, ignore=ignore)
