"""Block-by-block application of a voxel classifier to volumes of any size.

Each block is read with the classifier's halo (clipped at the volume border, where the filters
reflect exactly as on the whole volume), scored, and only its core is written, so the result
does not depend on the blocking and memory is bounded by one block.
"""

import logging
from collections.abc import Callable, Iterator

import numpy as np

from detection.errors import InputError
from detection.io.sources import iter_blocks, read_box

logger = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


def with_halo(box: Box, halo, shape) -> tuple[Box, Box]:
    """The box grown by ``halo`` (clipped to ``shape``) and where the original sits in it."""
    outer = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(box, halo, shape)
    )
    core = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
    return outer, core


def default_block_shape(shape, halo, *, step=(1, 1, 1), voxels: int = 8 * 2**20) -> tuple[int, int, int]:
    """Blocks of about ``voxels`` voxels, thicker along axes with a larger halo, and a
    multiple of ``step`` along each axis so every block starts on the classifier's grid."""
    block = [max(1, min(n, 4 * h)) for n, h in zip(shape, halo)]
    while np.prod(block) < voxels and any(b < n for b, n in zip(block, shape)):
        axis = int(np.argmin([b / n if b < n else np.inf for b, n in zip(block, shape)]))
        block[axis] = min(shape[axis], block[axis] * 2)
    return tuple(int(-(-b // g) * g) for b, g in zip(block, step))


def iter_probability_blocks(
    source, model, *, block_shape=None, roi: Box | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Box, np.ndarray]]:
    """Yield (box, probability) for every block of ``source`` (or of ``roi`` within it)."""
    shape = tuple(int(n) for n in source.shape)
    halo = model.halo_voxels()
    step = model.grid_step
    block_shape = tuple(block_shape or default_block_shape(shape, halo, step=step))
    if any(b % g for b, g in zip(block_shape, step)):
        raise InputError(f"block shape {block_shape} must be a multiple of the grid step {step}")
    if roi:
        # Start the region on the grid, so every block does.
        roi = tuple(slice(((s.start or 0) // g) * g, s.stop) for s, g in zip(roi, step))
    offset = tuple(s.start or 0 for s in roi) if roi else (0, 0, 0)
    extent = tuple((s.stop or n) - (s.start or 0) for s, n in zip(roi, shape)) if roi else shape
    boxes = [
        tuple(slice(o + b.start, o + b.stop) for o, b in zip(offset, box))
        for box in iter_blocks(extent, block_shape)
    ]
    for i, box in enumerate(boxes):
        outer, core = with_halo(box, halo, shape)
        region = read_box(source, outer)
        yield box, model.predict_region(region, core=core, offset=tuple(s.start for s in outer))
        if progress is not None:
            progress(i + 1, len(boxes))


def _check_heads(model, heads) -> tuple[str, ...]:
    have = tuple(getattr(model, "heads", ("synapse",)))
    for head in heads:
        if head not in have:
            kind = "network" if hasattr(model, "heads") else "voxel classifier"
            raise InputError(f"the model ({kind} with heads {have}) has no {head!r} head: use a "
                             f"network trained with {head.rstrip('s')} labels")
    return tuple(heads)


def _maps(model, region, core, offset, heads) -> dict[str, np.ndarray]:
    if heads == ("synapse",):
        return {"synapse": model.predict_region(region, core=core, offset=offset)}
    maps = model.predict_maps(region, core=core, offset=offset)
    return {head: maps[head] for head in heads}


def block_maps(source, model, box: Box, *, heads=("synapse", "vesicles")) -> dict[str, np.ndarray]:
    """The maps of ``heads`` (see :meth:`detection.synapses.cnn.SynapseCnn.predict_maps`) over
    one block of ``source``, read with the model's halo, each stored as uint8 ``round(255 * p)``
    as the synapse probability layer is; by head, in the order asked.

    A detection job writes each to its own layer (the vesicle map next to the probability, for
    the vesicle method of partner assignment). Raises InputError when the model has no such head.
    """
    heads = _check_heads(model, heads)
    outer, core = with_halo(box, model.halo_voxels(), tuple(int(n) for n in source.shape))
    maps = _maps(model, read_box(source, outer), core, tuple(s.start for s in outer), heads)
    return {head: np.rint(maps[head] * 255).astype(np.uint8) for head in heads}


def predict_map_layers(source, model, *, outputs: dict, block_shape=None, roi=None,
                       progress=None) -> dict:
    """Write the map of every head named in ``outputs`` (head -> array-like of the source's
    shape, e.g. ``{"synapse": zarr_a, "vesicles": zarr_b}``) block by block, as
    :func:`predict_probability` writes the synapse probability: uint8 outputs get
    ``round(255 * p)``, others the probability. Returns ``outputs``."""
    heads = _check_heads(model, tuple(outputs))
    shape = tuple(int(n) for n in source.shape)
    halo, step = model.halo_voxels(), model.grid_step
    block_shape = tuple(block_shape or default_block_shape(shape, halo, step=step))
    if any(b % g for b, g in zip(block_shape, step)):
        raise InputError(f"block shape {block_shape} must be a multiple of the grid step {step}")
    if roi:
        roi = tuple(slice(((s.start or 0) // g) * g, s.stop) for s, g in zip(roi, step))
    offset = tuple(s.start or 0 for s in roi) if roi else (0, 0, 0)
    extent = tuple((s.stop or n) - (s.start or 0) for s, n in zip(roi, shape)) if roi else shape
    boxes = [tuple(slice(o + b.start, o + b.stop) for o, b in zip(offset, box))
             for box in iter_blocks(extent, block_shape)]
    for i, box in enumerate(boxes):
        outer, core = with_halo(box, halo, shape)
        maps = _maps(model, read_box(source, outer), core, tuple(s.start for s in outer), heads)
        for head, out in outputs.items():
            quantised = np.dtype(out.dtype) == np.uint8
            out[box] = np.rint(maps[head] * 255).astype(np.uint8) if quantised else maps[head]
        if progress is not None:
            progress(i + 1, len(boxes))
    return outputs


def predict_probability(source, model, *, out=None, block_shape=None, roi=None, progress=None):
    """Synapse probability of every voxel of ``source``.

    Parameters
    ----------
    source : (Z, Y, X) array-like or VolumeSource
    model : VoxelClassifier
    out : array-like, optional
        Where to write (e.g. a zarr array of the same shape, float32 or uint8; uint8 stores
        ``round(255 * p)``). A new float32 ndarray when omitted.
    """
    if out is None:
        out = np.zeros(tuple(source.shape), dtype=np.float32)
    scale = 255.0 if np.dtype(out.dtype) == np.uint8 else None
    for box, probability in iter_probability_blocks(
        source, model, block_shape=block_shape, roi=roi, progress=progress
    ):
        out[box] = np.rint(probability * scale).astype(np.uint8) if scale else probability
    return out
