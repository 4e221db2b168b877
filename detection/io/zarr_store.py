"""Chunked multiscale volumes on disk: OME-Zarr 0.4 layout in zarr v2 format.

Every layer is a zarr group holding level ``"0"`` at full resolution and a downsampled pyramid
``"1"``, ``"2"``, ... for display (Neuroglancer opens the group as ``zarr2://``). Typical use::

    group = create_multiscale(path, shape=src.shape, dtype=src.dtype,
                              voxel_size=src.voxel_size, kind="em")
    for box in iter_blocks(src.shape, (64, 1024, 1024)):
        write_block(group, box, src.read(box))
    build_pyramid(group)

Every step works block by block, so memory stays bounded whatever the volume size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import zarr
from numcodecs import Blosc

from detection.errors import InputError
from detection.io.sources import iter_blocks, normalize_box

logger = logging.getLogger(__name__)

KINDS = ("em", "segmentation", "prediction", "mask", "synapses")
# Label-like layers are downsampled by mode (ids must stay ids), intensities by mean.
MODE_KINDS = ("segmentation", "mask", "synapses")
DEFAULT_CHUNKS = (32, 256, 256)
# The pyramid stops once a level fits in one display tile in y and x.
PYRAMID_STOP_EXTENT = 256
# Default cap on the source bytes read per pyramid block.
_PYRAMID_BLOCK_BYTES = 64 * 2**20


# --------------------------------------------------------------------------------------------
# Geometry


def level_shape(shape: Sequence[int], factor: Sequence[int]) -> tuple[int, int, int]:
    """Shape of a level downsampled by ``factor`` (ceil division: partial cells count)."""
    return tuple(-(-int(n) // int(f)) for n, f in zip(shape, factor))


def downsample_factors(
    shape: Sequence[int],
    *,
    voxel_size: Sequence[float],
    levels: int | None = None,
    stop_extent: int = PYRAMID_STOP_EXTENT,
) -> list[tuple[int, int, int]]:
    """Cumulative (z, y, x) downsampling factor of every pyramid level, level 0 first.

    Each level halves the axes whose current voxel size is below twice the smallest current
    voxel size among axes that can still shrink (extent > 1); anisotropic data (50 x 4.6 x 4.6
    nm) thus first halves y and x only, until they approach z. Levels are added while the
    largest y/x extent exceeds ``stop_extent``, up to ``levels`` levels in all (level 0
    included).

    Parameters
    ----------
    shape : (3,) ints
        Level-0 shape (z, y, x).
    voxel_size : (3,) floats
        Level-0 voxel size in nm (z, y, x).
    levels : int, optional
        Maximum number of levels, level 0 included (>= 1).
    stop_extent : int
        No further level once max(y, x extent) <= this.

    Returns
    -------
    list of (3,) tuples of int
        ``[(1, 1, 1), ...]``, each entry 1 or 2 times the previous one per axis.
    """
    if levels is not None and levels < 1:
        raise InputError(f"levels must be >= 1, got {levels}")
    factors = [(1, 1, 1)]
    while levels is None or len(factors) < levels:
        current = factors[-1]
        extent = level_shape(shape, current)
        if max(extent[1], extent[2]) <= stop_extent:
            break
        size = [v * f for v, f in zip(voxel_size, current)]
        shrinkable = [a for a in range(3) if extent[a] > 1]
        smallest = min(size[a] for a in shrinkable)
        step = [2 if a in shrinkable and size[a] < 2 * smallest else 1 for a in range(3)]
        factors.append(tuple(c * s for c, s in zip(current, step)))
    return factors


# --------------------------------------------------------------------------------------------
# Creating and opening


def _compressor(dtype: np.dtype) -> Blosc:
    # Bit-shuffle suits 8-bit data; byte-shuffle groups the bytes of wider words.
    shuffle = Blosc.BITSHUFFLE if dtype.itemsize == 1 else Blosc.SHUFFLE
    return Blosc(cname="zstd", clevel=3, shuffle=shuffle)


def _check_voxel_size(voxel_size) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in voxel_size)
    except TypeError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"voxel_size must be 3 positive nm values (z, y, x), got {voxel_size!r}")
    return values


def create_multiscale(
    path,
    *,
    shape: Sequence[int],
    dtype,
    voxel_size: Sequence[float],
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    kind: str,
    levels: int | None = None,
    overwrite: bool = False,
) -> zarr.Group:
    """Create an empty multiscale group (no voxel data written).

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the new zarr group.
    shape : (3,) ints
        Level-0 shape (z, y, x), all > 0.
    dtype : numpy dtype
        Data type of every level; integer or bool for "segmentation" and "mask".
    voxel_size : (3,) floats
        Level-0 voxel size in nm (z, y, x).
    chunks : (3,) ints
        Chunk shape (z, y, x) of every level, clipped to the level's shape.
    kind : {"em", "segmentation", "prediction", "mask", "synapses"}
        Layer kind; selects mean or mode downsampling.
    levels : int, optional
        Maximum number of levels, level 0 included; see :func:`downsample_factors`.
    overwrite : bool
        Replace an existing group at ``path`` instead of raising FileExistsError.

    Returns
    -------
    zarr.Group
        Writable group with arrays "0", "1", ... (fill value 0, Blosc zstd level 3, nested
        "/" chunk keys so huge levels do not put millions of files in one folder).

    Notes
    -----
    Attributes: OME-Zarr 0.4 ``multiscales`` (axes z, y, x of type space in nanometer; per
    level a scale of voxel size * factor and a translation of (factor - 1) / 2 * voxel size,
    which keeps voxel centres of all levels aligned), plus ``kind`` and
    ``downsample_factors`` (list of [z, y, x] cumulative factors).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape must be 3 positive extents (z, y, x), got {shape}")
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"dtype must be bool, integer or float, got {dtype}")
    if kind in MODE_KINDS and dtype.kind not in "biu":
        raise InputError(f"a {kind} layer needs an integer or bool dtype, got {dtype}")
    voxel_size = _check_voxel_size(voxel_size)
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise InputError(f"chunks must be 3 positive extents (z, y, x), got {chunks}")

    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    factors = downsample_factors(shape, voxel_size=voxel_size, levels=levels)
    group = zarr.open_group(path, mode="w")
    datasets = []
    for index, factor in enumerate(factors):
        extent = level_shape(shape, factor)
        group.create_dataset(
            str(index),
            shape=extent,
            chunks=tuple(min(c, n) for c, n in zip(chunks, extent)),
            dtype=dtype,
            compressor=_compressor(dtype),
            fill_value=0,
            dimension_separator="/",
            write_empty_chunks=False,
        )
        datasets.append(
            {
                "path": str(index),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [v * f for v, f in zip(voxel_size, factor)]},
                    {
                        "type": "translation",
                        "translation": [(f - 1) / 2 * v for v, f in zip(voxel_size, factor)],
                    },
                ],
            }
        )
    method = "mode" if kind in MODE_KINDS else "mean"
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "name": os.path.basename(os.path.normpath(path)),
                    "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                    "datasets": datasets,
                    "type": method,
                    "metadata": {
                        "description": f"{method} of each 2x2(x2) cell per level; "
                        "factors are cumulative (z, y, x)",
                    },
                }
            ],
            "kind": kind,
            "downsample_factors": [list(f) for f in factors],
        }
    )
    logger.info(
        "created %s: %s %s, %d levels, factors %s", path, shape, dtype, len(factors), factors
    )
    return group


def _metadata(group: zarr.Group, where: str) -> dict:
    multiscales = group.attrs.get("multiscales")
    if not multiscales:
        raise InputError(f"{where}: not a multiscale group (no 'multiscales' attribute)")
    ms = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    if axes != ["z", "y", "x"]:
        raise InputError(f"{where}: expected axes z, y, x, got {axes}")
    paths = [d["path"] for d in ms["datasets"]]
    scales = []
    for d in ms["datasets"]:
        scale = next(
            t["scale"] for t in d["coordinateTransformations"] if t.get("type") == "scale"
        )
        scales.append(tuple(float(v) for v in scale))
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms["axes"]]
    to_nm = {None: 1.0, "nanometer": 1.0, "micrometer": 1e3}
    if any(u not in to_nm for u in units):
        raise InputError(f"{where}: unsupported axis units {units}")
    voxel_size = tuple(s * to_nm[u] for s, u in zip(scales[0], units))
    factors = group.attrs.get("downsample_factors")
    if factors is None:
        # Foreign OME-Zarr: recover the factors from the scale ratios.
        factors = [[round(s / s0) for s, s0 in zip(scale, scales[0])] for scale in scales]
    level0 = group[paths[0]]
    return {
        "shape": tuple(level0.shape),
        "dtype": level0.dtype,
        "voxel_size": voxel_size,
        "chunks": tuple(level0.chunks),
        "kind": group.attrs.get("kind"),
        "levels": len(paths),
        "factors": [tuple(int(v) for v in f) for f in factors],
        "paths": paths,
        "level_shapes": [tuple(group[p].shape) for p in paths],
    }


def open_multiscale(path, *, mode: str = "r") -> tuple[zarr.Group, dict]:
    """Open a multiscale group and parse its metadata.

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the group.
    mode : {"r", "r+"}
        "r+" to write blocks or rebuild the pyramid.

    Returns
    -------
    group : zarr.Group
    meta : dict
        ``shape`` (level 0, z, y, x), ``dtype``, ``voxel_size`` (nm, z, y, x), ``chunks``
        (level 0), ``kind`` (None for groups written elsewhere), ``levels`` (number of
        levels), ``factors`` (cumulative (z, y, x) factor per level), ``paths`` (array name
        per level), ``level_shapes``.
    """
    if mode not in ("r", "r+"):
        raise InputError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = os.fspath(path)
    try:
        group = zarr.open_group(path, mode=mode)
    except Exception as exc:  # zarr raises several types for missing/invalid stores
        raise InputError(f"{path}: not a zarr group ({exc})") from exc
    return group, _metadata(group, path)


# --------------------------------------------------------------------------------------------
# Writing


def _cast_for(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast ``data`` to ``dtype`` if no value changes meaning, else raise."""
    if data.dtype == dtype or np.can_cast(data.dtype, dtype, casting="safe"):
        return data.astype(dtype, copy=False)
    if data.dtype.kind in "biu" and dtype.kind in "biu":
        if data.size:
            info = np.iinfo(dtype) if dtype.kind != "b" else None
            lo, hi = (0, 1) if info is None else (info.min, info.max)
            if int(data.min()) < lo or int(data.max()) > hi:
                raise InputError(
                    f"values {int(data.min())}..{int(data.max())} do not fit in {dtype}"
                )
        return data.astype(dtype)
    if data.dtype.kind == "f" and dtype.kind == "f":
        return data.astype(dtype)
    raise TypeError(f"cannot store {data.dtype} data in a {dtype} volume without losing values")


def write_block(group: zarr.Group, box, data) -> None:
    """Write one block into level 0.

    Parameters
    ----------
    group : zarr.Group
        Writable multiscale group from :func:`create_multiscale` / :func:`open_multiscale`.
    box : tuple of 3 slices
        Half-open (z, y, x) box inside level 0.
    data : array_like
        Block of the box's shape. Integer data of another integer type is accepted when every
        value fits; float data only into float volumes.

    Notes
    -----
    Blocks that are not aligned to the chunk grid rewrite the chunks they share, so parallel
    writers must use chunk-aligned boxes. The pyramid is not updated: call
    :func:`build_pyramid` after the last block.
    """
    array = group["0"]
    box = normalize_box(box, array.shape)
    data = np.asarray(data)
    expected = tuple(s.stop - s.start for s in box)
    if data.shape != expected:
        raise InputError(f"data shape {data.shape} does not match box shape {expected}")
    array[box] = _cast_for(data, array.dtype)


# --------------------------------------------------------------------------------------------
# Downsampling


def _pad_to_multiple(block: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Edge-replicate up to a multiple of ``factor``.

    With factors of 1 or 2 a partial cell at the volume edge holds one voxel per padded axis,
    so replication repeats every real voxel of the cell equally often: its mean and its mode
    are exactly those of the real voxels.
    """
    pad = [(0, -n % f) for n, f in zip(block.shape, factor)]
    if any(p for _, p in pad):
        return np.pad(block, pad, mode="edge")
    return block


def _check_factor(factor) -> tuple[int, int, int]:
    factor = tuple(int(f) for f in factor)
    if len(factor) != 3 or any(f not in (1, 2) for f in factor):
        raise InputError(f"factor must be 3 entries of 1 or 2, got {factor}")
    return factor


def downsample_mean(block: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean of each ``factor`` cell, rounded back to the block's dtype.

    Parameters
    ----------
    block : (Z, Y, X) ndarray
        Numeric data; a partial cell at the far edges averages its real voxels only.
    factor : (3,) ints, each 1 or 2

    Returns
    -------
    (ceil(Z/fz), ceil(Y/fy), ceil(X/fx)) ndarray of ``block.dtype``
        Integer results are rounded half to even and clipped to the dtype's range.
    """
    factor = _check_factor(factor)
    padded = _pad_to_multiple(np.asarray(block), factor)
    dtype = padded.dtype
    # float32 holds sums of up to 8 values of <= 16-bit integers exactly; wider needs float64.
    exact_in_f32 = dtype.kind in "biu" and dtype.itemsize <= 2
    acc_dtype = np.float32 if exact_in_f32 else np.float64
    acc = np.zeros(level_shape(padded.shape, factor), dtype=acc_dtype)
    fz, fy, fx = factor
    for dz in range(fz):
        for dy in range(fy):
            for dx in range(fx):
                acc += padded[dz::fz, dy::fy, dx::fx]
    acc /= fz * fy * fx
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        np.rint(acc, out=acc)
        np.clip(acc, info.min, info.max, out=acc)
    elif dtype.kind == "b":
        np.rint(acc, out=acc)
    return acc.astype(dtype)


def downsample_mode(block: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Most frequent value of each ``factor`` cell, for label volumes.

    Ties go to a nonzero value over 0 (background), then to the smallest value. The result
    only ever holds values present in the cell, so no label is invented.

    Parameters
    ----------
    block : (Z, Y, X) integer or bool ndarray
    factor : (3,) ints, each 1 or 2

    Returns
    -------
    (ceil(Z/fz), ceil(Y/fy), ceil(X/fx)) ndarray of ``block.dtype``
    """
    factor = _check_factor(factor)
    padded = _pad_to_multiple(np.asarray(block), factor)
    out_shape = level_shape(padded.shape, factor)
    fz, fy, fx = factor
    cell = fz * fy * fx
    # One row per position within the cell, so each row is a contiguous image of the output.
    values = (
        padded.reshape(out_shape[0], fz, out_shape[1], fy, out_shape[2], fx)
        .transpose(1, 3, 5, 0, 2, 4)
        .reshape(cell, -1)
    )
    best = values[0].copy()
    best_score = None
    for j in range(cell):
        count = np.ones(values.shape[1], dtype=np.uint8)
        for i in range(cell):
            if i != j:
                count += values[i] == values[j]
        # Doubling the count leaves the low bit to rank nonzero above 0 among equal counts.
        score = count * np.uint8(2) + (values[j] != 0)
        if best_score is None:
            best_score = score
            continue
        better = (score > best_score) | ((score == best_score) & (values[j] < best))
        np.copyto(best, values[j], where=better)
        np.copyto(best_score, score, where=better)
    return best.reshape(out_shape)


def _default_output_block(chunks, factor, itemsize) -> tuple[int, int, int]:
    """Output chunk shape, halved (largest axis first) until its source fits the byte cap."""
    block = list(chunks)
    while math.prod(b * f for b, f in zip(block, factor)) * itemsize > _PYRAMID_BLOCK_BYTES:
        axis = int(np.argmax(block))
        if block[axis] == 1:
            break
        block[axis] = -(-block[axis] // 2)
    return tuple(block)


def build_pyramid(
    group: zarr.Group,
    *,
    block_shape: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill levels 1..n from level 0, block by block.

    Each level is computed from the one above it: mean of each cell for "em" and
    "prediction" layers (:func:`downsample_mean`), mode for "segmentation" and "mask"
    (:func:`downsample_mode`). Source blocks are aligned to the downsampling factor, so the
    result equals downsampling whole levels at once.

    Parameters
    ----------
    group : zarr.Group
        Writable multiscale group with level 0 written.
    block_shape : (3,) ints, optional
        Source block shape (z, y, x) read per step, rounded up to a multiple of each level's
        factor. Default: a block producing one output chunk, capped at 64 MiB of source.
    progress : callable, optional
        Called as ``progress(done, total)`` after each block, counting blocks over all levels.
    """
    meta = _metadata(group, getattr(group.store, "path", str(group.store)))
    kind = meta["kind"]
    reduce = downsample_mode if kind in MODE_KINDS else downsample_mean
    paths, factors = meta["paths"], meta["factors"]
    plan = []
    for level in range(1, len(paths)):
        source, target = group[paths[level - 1]], group[paths[level]]
        factor = tuple(b // a for a, b in zip(factors[level - 1], factors[level]))
        if block_shape is None:
            out_block = _default_output_block(target.chunks, factor, source.dtype.itemsize)
        else:
            out_block = tuple(max(1, -(-int(b) // f)) for b, f in zip(block_shape, factor))
        plan.append((source, target, factor, list(iter_blocks(target.shape, out_block))))
    total = sum(len(boxes) for *_, boxes in plan)
    done = 0
    for level, (source, target, factor, boxes) in enumerate(plan, start=1):
        logger.info(
            "pyramid level %d: %s from %s by %s (%s), %d blocks",
            level, target.shape, source.shape, factor, reduce.__name__, len(boxes),
        )
        for out_box in boxes:
            in_box = tuple(
                slice(s.start * f, min(s.stop * f, n))
                for s, f, n in zip(out_box, factor, source.shape)
            )
            target[out_box] = reduce(source[in_box], factor)
            done += 1
            if progress is not None:
                progress(done, total)
