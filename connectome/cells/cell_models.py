"""Cell models trained in the app: the labelled volumes a ``train_cell_model`` job reads,
checked when it is submitted, and the training that stores the model.

A source names a dataset, its EM layer, a segmentation layer of dense cell labels of the same
shape (0: boundary, i.e. membrane or no cell), an optional ignore layer (nonzero voxels are
left out of the loss and of the validation scores) and an optional region (z0, y0, x0, z1, y1,
x1, voxels, half-open). The merge threshold is chosen on validation volumes the network never
learns from: validation sources of the same form, or, with ``validation_fraction``, the last
slab of z of every source (the first part trains, the rest validates).

The model is :class:`~detection.cells.boundaries.AffinityNet`, trained and calibrated by
:func:`detection.cells.training.train_cell_model`, and stored as a
:class:`~connectome.detectors.models.DetectorModel` of kind ``affinities``: its figures are the
validation table (VOI split and merge, adapted Rand error per threshold) and the threshold
chosen on it; its calibration is the agglomeration settings the model carries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np

from connectome.datasets.models import Layer
from connectome.datasets.services import remove_staged, staging_path
from connectome.detectors.models import DetectorModel
from connectome.detectors.services import detector_store
from connectome.detectors.sources import Source, resolve_source
from detection.cells.boundaries import AffinityParameters, LabelVolume, z_pools
from detection.errors import InputError
from detection.io.sources import format_numbers
from detection.io.zarr_store import open_multiscale
from detection.synapses.cnn import downsample_factor

logger = logging.getLogger(__name__)

#: What a cell model's label layer is: dense cell ids.
CELL_LABELS = "cells"
#: The training parameters a job may set (the rest keep AffinityParameters' defaults).
NETWORK_FIELDS = tuple(f.name for f in fields(AffinityParameters))
#: Bytes of labels read at once when looking for a cell.
READ_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CellVolume:
    """One labelled volume to train or validate on: a source and the region of it read."""

    source: Source
    region: tuple[slice, slice, slice]
    part: str = ""  # "training part" / "validation part" when a source is split along z

    @property
    def name(self) -> str:
        where = f" {self.part}" if self.part else ""
        box = ", ".join(f"{r.start}:{r.stop}" for r in self.region)
        return f"{self.source.name}{where} (z, y, x {box})"

    def to_json(self) -> dict:
        return {**self.source.to_json(), "region": [[r.start, r.stop] for r in self.region],
                "part": self.part or None}


def resolve_cell_source(spec: dict, *, user=None) -> Source:
    """The rows of one source whose labels are a segmentation, or InputError naming the
    dataset and the layer."""
    return resolve_source({**spec, "convention": CELL_LABELS}, user=user,
                          label_kinds=(Layer.Kind.SEGMENTATION,))


def split_volumes(sources: list[Source], validation: list[Source],
                  fraction: float | None) -> tuple[list[CellVolume], list[CellVolume]]:
    """The training and validation volumes: every source whole and every validation source
    whole, or, with ``fraction``, each source cut along z: its last ``fraction`` of sections
    validates, the rest trains."""
    if fraction is None:
        return ([CellVolume(s, s.region) for s in sources],
                [CellVolume(s, s.region) for s in validation])
    training, held_out = [], []
    for source in sources:
        z, y, x = source.region
        depth = z.stop - z.start
        cut = z.start + round(depth * (1.0 - fraction))
        if cut <= z.start or cut >= z.stop:
            raise InputError(
                f"{source.name}: holding out {fraction:g} of its {depth} "
                f"section{'s' * (depth != 1)} leaves "
                f"{'no section to train on' if cut <= z.start else 'no section to validate on'}"
                "; give a region with more sections, another validation_fraction, or "
                "validation sources")
        training.append(CellVolume(source, (slice(z.start, cut), y, x), "training part"))
        held_out.append(CellVolume(source, (slice(cut, z.stop), y, x), "validation part"))
    return training, held_out


def common_voxel_size(sources: list[Source]) -> tuple[float, float, float]:
    """The one voxel size every source has, or InputError naming two that differ: the network
    trains at one voxel size (its pixels are never resampled)."""
    first = sources[0]
    voxel_size = tuple(float(v) for v in first.dataset.voxel_size)
    for other in sources[1:]:
        theirs = tuple(float(v) for v in other.dataset.voxel_size)
        if not np.allclose(theirs, voxel_size, rtol=1e-3):
            raise InputError(
                f"dataset '{other.dataset.name}' has voxels of {format_numbers(theirs)} nm "
                f"(z, y, x) but dataset '{first.dataset.name}' {format_numbers(voxel_size)} nm; "
                "a cell model is trained at one voxel size: give sources of one voxel size")
    return voxel_size


def network_parameters(parameters: dict) -> AffinityParameters:
    """The network's parameters: those the job was given, the defaults for the others."""
    given = {k: parameters[k] for k in NETWORK_FIELDS if parameters.get(k) is not None}
    if "patch" in given:
        given["patch"] = tuple(int(v) for v in given["patch"])
    return AffinityParameters(**given)


def smallest_region(voxel_size, parameters: AffinityParameters) -> tuple[int, int, int]:
    """Input voxels per axis of the network's deepest pooling cell: a smaller volume cannot
    hold one training patch."""
    factor = downsample_factor(voxel_size, parameters.pixel_nm)
    pools_z = 2 if z_pools(voxel_size, parameters.pixel_nm) else 1
    cell = 2 ** parameters.depth
    return (pools_z ** parameters.depth, cell * factor, cell * factor)


def check_region_size(volume: CellVolume, minimum: tuple[int, int, int]) -> None:
    shape = tuple(r.stop - r.start for r in volume.region)
    if any(n < m for n, m in zip(shape, minimum)):
        raise InputError(f"{volume.name} is {format_numbers(shape)} voxels (z, y, x); the "
                         f"network needs at least {format_numbers(minimum)}")


def _slabs(region, dtype, shape) -> list[tuple[slice, slice, slice]]:
    per_plane = int(np.prod([r.stop - r.start for r in region[1:]])) * np.dtype(dtype).itemsize
    depth = max(1, READ_BYTES // max(per_plane, 1))
    z = region[0]
    return [(slice(a, min(a + depth, z.stop)), *region[1:]) for a in range(z.start, z.stop, depth)]


def check_has_cells(volume: CellVolume) -> None:
    """Refuse labels that are all 0 (boundary) in the volume's region, saying what was read.

    A region that is the whole layer is looked at on the coarsest level first (segmentations
    are downsampled by mode, which keeps ids, so a cell seen there is there); otherwise, or
    when that level shows none, the full-resolution level is read in slabs until a cell
    shows.
    """
    labels = volume.source.labels
    group, meta = open_multiscale(labels.path)
    whole = all(r.start == 0 and r.stop == n for r, n in zip(volume.region, labels.shape))
    if whole and meta["levels"] > 1 and np.any(group[meta["paths"][-1]][...]):
        return
    level0 = group[meta["paths"][0]]
    for box in _slabs(volume.region, level0.dtype, level0.shape):
        if np.any(level0[box]):
            return
    raise InputError(f"{volume.name}: the label layer holds no cell (every voxel is 0, which "
                     "means boundary); checked the full-resolution level")


def check_model_name(name: str) -> None:
    """Refuse a name that synapse detectors use: versions count per name, across kinds."""
    other = (DetectorModel.objects.filter(name=name)
             .exclude(kind=DetectorModel.Kind.AFFINITIES).first())
    if other is not None:
        raise InputError(f"'{name}' is the name of a synapse detector ({other.kind}, version "
                         f"{other.version}); choose another name for a cell model")


def label_volume(volume: CellVolume) -> LabelVolume:
    """The region of a volume read whole (training holds its volumes in memory)."""
    source, region = volume.source, volume.region
    em = np.asarray(open_multiscale(source.em.path)[0]["0"][region])
    labels = np.asarray(open_multiscale(source.labels.path)[0]["0"][region])
    ignore = None
    if source.ignore is not None:
        ignore = np.asarray(open_multiscale(source.ignore.path)[0]["0"][region]) != 0
    return LabelVolume(name=volume.name, em=em, voxel_size=source.dataset.voxel_size,
                       labels=labels, ignore=ignore)


def model_figures(model) -> dict:
    """What the record shows of a trained cell model: the chosen threshold with its row of
    the validation table, the whole table, the validation volumes and the training run."""
    settings = model.agglomeration
    table = settings.get("table", [])
    chosen = next((row for row in table if row["threshold"] == settings["threshold"]), None)
    return {"threshold": settings["threshold"], "chosen": chosen, "table": table,
            "validation": settings.get("validation", []), "training": model.training}


def train_and_store(*, job, parameters: dict, progress) -> DetectorModel:
    """Train a cell model on a job's sources, choose its threshold on the validation volumes
    and store it as the next version of its name."""
    from detection.cells.training import train_cell_model

    sources = [resolve_cell_source(spec) for spec in parameters["sources"]]
    validation = [resolve_cell_source(spec) for spec in parameters.get("validation") or []]
    training, held_out = split_volumes(sources, validation,
                                       parameters.get("validation_fraction"))
    voxel_size = common_voxel_size(sources + validation)
    network = network_parameters(parameters)
    progress.update(0, network.iterations,
                    f"reading {len(training)} training and {len(held_out)} validation volumes")
    train = [label_volume(v) for v in training]
    validate = [label_volume(v) for v in held_out]

    def report(done, total):
        # The count goes on every report; the message every twentieth of the way.
        message = None
        if done >= total:
            message = f"choosing the merge threshold on {len(held_out)} validation volumes"
        elif done == 1 or done % max(1, total // 20) == 0:
            message = f"training: step {done} / {total}"
        progress.update(done, total, message)  # raises JobCancelled on a cancel

    model = train_cell_model(train, validate, voxel_size=voxel_size, parameters=network,
                             progress=report)
    del train, validate
    staged = staging_path(dataset=job.dataset, job=job)
    try:
        staged.mkdir()
        path = model.save(staged / "model.bin")
        recorded = {k: v for k, v in parameters.items() if not k.startswith("_")}
        return detector_store(
            name=parameters["name"], kind=DetectorModel.Kind.AFFINITIES, model=model,
            staged=path, sources=[v.to_json() for v in training],
            datasets=sorted({s.dataset.pk for s in sources + validation}),
            parameters={**recorded, "network": network.to_dict(),
                        "validation_volumes": [v.to_json() for v in held_out]},
            user=job.created_by, job=job, figures=model_figures(model),
            calibration=model.agglomeration)
    finally:
        remove_staged(staged)
