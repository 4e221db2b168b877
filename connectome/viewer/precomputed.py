"""Neuroglancer *precomputed* views of our zarr layers, computed per request.

A layer is an OME-Zarr group with levels "0", "1", ... of (z, y, x) arrays; Neuroglancer's
precomputed format describes the same pyramid with x, y, z ordered lists, and wants each chunk
as raw bytes with x varying fastest (the C order of a (z, y, x) array). Everything here is
(z, y, x) until the moment a JSON list or a byte string is produced.

Geometry: scale ``k`` has the resolution ``voxel_size * factor_k`` and a voxel offset of 0, so
voxel ``i`` of level ``k`` covers ``[i * r_k, (i + 1) * r_k)`` nm in Neuroglancer, the corner
convention. Our mean and mode pyramids reduce exactly those cells of level 0, so the levels line
up without any translation.

Specification: https://github.com/google/neuroglancer/tree/master/src/datasource/precomputed
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from detection.errors import InputError

# Label-like kinds are served as uint64 segmentations whatever their stored integer type:
# Neuroglancer's segmentation layers read uint32 or uint64 ids only.
SEGMENTATION_KINDS = ("segmentation", "synapses", "mask")
# Bytes of one served chunk at most (a 256 x 256 x 32 uint8 chunk); larger store chunks are
# served in halves, so one request never reads and sends tens of megabytes.
MAX_CHUNK_BYTES = 2 * 2**20
THIN_CHUNK_BYTES = 256 * 2**10
THIN_CHUNK_SECTIONS = 4

_CHUNK_NAME = re.compile(r"(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)")


class ChunkNotFound(LookupError):
    """A well-formed chunk name that is not a chunk of the level (off the grid or outside)."""


@dataclass(frozen=True)
class Level:
    """One pyramid level as served: (z, y, x) shape, served chunk shape and factor."""

    key: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    factor: tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Types and geometry


def volume_type(kind: str) -> str:
    return "segmentation" if kind in SEGMENTATION_KINDS else "image"


def served_dtype(*, kind: str, dtype) -> np.dtype:
    """The dtype Neuroglancer receives for a layer of ``kind`` stored as ``dtype``."""
    if kind in SEGMENTATION_KINDS:
        return np.dtype("<u8")
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype("<f4")
    return dtype.newbyteorder("<")


def served_chunks(store_chunks: Sequence[int], *, itemsize: int,
                  max_bytes: int = MAX_CHUNK_BYTES) -> tuple[int, int, int]:
    """(z, y, x) chunk shape to serve: the store's, made thin in z, then halved on its longest
    axis while too big.

    People look at sections (xy): a chunk 32 sections deep costs 32 times the bytes of what a
    section shows, to fetch and to upload to the GPU. So z is halved first while a chunk holds
    more than :data:`THIN_CHUNK_BYTES`, down to :data:`THIN_CHUNK_SECTIONS` sections (on the
    demo this took the review page's first synapse from 2.9 s to 1.6 s). Halving keeps served
    chunks inside store chunks when the store's are powers of two, so a request decompresses
    one store chunk.
    """
    chunks = [int(c) for c in store_chunks]
    while (int(np.prod(chunks)) * itemsize > THIN_CHUNK_BYTES
           and chunks[0] > THIN_CHUNK_SECTIONS):
        chunks[0] = -(-chunks[0] // 2)
    while int(np.prod(chunks)) * itemsize > max_bytes and max(chunks) > 1:
        axis = int(np.argmax(chunks))
        chunks[axis] = -(-chunks[axis] // 2)
    return tuple(chunks)


def open_level(path, *, index: int, factor: Sequence[int], itemsize: int) -> Level:
    """Level ``index`` of the zarr group at ``path``, as served (one metadata read)."""
    array = zarr.open_array(str(path / str(index)), mode="r")
    return Level(
        key=str(index), shape=tuple(int(n) for n in array.shape),
        chunks=served_chunks(array.chunks, itemsize=itemsize),
        factor=tuple(int(f) for f in factor),
    )


def open_levels(path, *, factors: Sequence[Sequence[int]], itemsize: int) -> list[Level]:
    """Every level of the zarr group at ``path``, level 0 first."""
    return [open_level(path, index=i, factor=f, itemsize=itemsize) for i, f in enumerate(factors)]


def _xyz(values) -> list:
    z, y, x = values
    return [x, y, z]


def volume_info(*, kind: str, dtype, voxel_size: Sequence[float], levels: Sequence[Level],
                segment_properties: bool = False, skeletons: bool = False,
                mesh: bool = False) -> dict:
    """The ``info`` JSON of a precomputed volume.

    Parameters
    ----------
    kind : str
        Layer kind; see :data:`SEGMENTATION_KINDS`.
    dtype : numpy dtype
        Stored dtype.
    voxel_size : (3,) floats
        Level-0 voxel size in nm (z, y, x).
    levels : list of Level
        Level 0 first.
    segment_properties, skeletons, mesh : bool
        Point Neuroglancer at ``segment_properties/``, ``skeletons/`` and ``mesh/`` beside
        ``info``.
    """
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": volume_type(kind),
        "data_type": served_dtype(kind=kind, dtype=dtype).name,
        "num_channels": 1,
        "scales": [
            {
                "key": level.key,
                "resolution": _xyz([float(v) * f for v, f in zip(voxel_size, level.factor)]),
                "size": _xyz(level.shape),
                "chunk_sizes": [_xyz(level.chunks)],
                "encoding": "raw",
                "voxel_offset": [0, 0, 0],
            }
            for level in levels
        ],
    }
    if segment_properties:
        info["segment_properties"] = "segment_properties"
    if skeletons:
        info["skeletons"] = "skeletons"
    if mesh:
        info["mesh"] = "mesh"
    return info


# --------------------------------------------------------------------------------------------
# Chunks


def parse_chunk_name(name: str) -> tuple[slice, slice, slice]:
    """``x0-x1_y0-y1_z0-z1`` as a (z, y, x) box of slices; ValueError if malformed."""
    match = _CHUNK_NAME.fullmatch(name)
    if match is None:
        raise InputError(f"not a chunk name (x0-x1_y0-y1_z0-z1): {name!r}")
    x0, x1, y0, y1, z0, z1 = (int(v) for v in match.groups())
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


def check_chunk_box(box: Sequence[slice], *, shape: Sequence[int],
                    chunks: Sequence[int]) -> None:
    """Raise ChunkNotFound unless ``box`` is exactly one chunk of the grid, clipped at the edge."""
    for s, n, c in zip(box, shape, chunks):
        if s.start % c or s.start >= n or s.stop != min(s.start + c, n):
            raise ChunkNotFound(
                f"{s.start}-{s.stop} is not a chunk of an axis of {n} in chunks of {c}"
            )


def encode_chunk(block: np.ndarray, *, dtype) -> bytes:
    """Raw precomputed encoding of a (Z, Y, X) block: little-endian ``dtype``, x fastest.

    Precomputed stores an [x, y, z] array in Fortran order; that is the C order of the same
    data indexed (z, y, x), so the block's own C-order bytes are the answer (transposing to
    (x, y, z) first would make z vary fastest and scramble the image).
    """
    return np.ascontiguousarray(block, dtype=dtype).tobytes()


def read_chunk(path, *, kind: str, level: Level, name: str) -> bytes:
    """Bytes of the chunk ``name`` of ``level`` of the zarr group at ``path``.

    Raises ValueError for a malformed name and ChunkNotFound for one not on the grid.
    """
    box = parse_chunk_name(name)
    check_chunk_box(box, shape=level.shape, chunks=level.chunks)
    array = zarr.open_array(str(path / level.key), mode="r")
    block = array[box]
    return encode_chunk(block, dtype=served_dtype(kind=kind, dtype=array.dtype))


# --------------------------------------------------------------------------------------------
# Segment properties and skeletons


def segment_properties(segment_ids: Sequence[int], *, names: Sequence[str],
                       cell_types: Sequence[str]) -> dict:
    """``neuroglancer_segment_properties`` with a label per segment and its cell type.

    The label is the cell's name, else its type, followed by the segment id in brackets; the
    type is also a tag, so ``#type`` in the segment query selects every cell of a type.
    """
    labels = []
    for segment, name, cell_type in zip(segment_ids, names, cell_types):
        title = name or cell_type
        labels.append(f"{title} ({segment})" if title else str(int(segment)))
    tags = sorted({t for t in cell_types if t})
    tag_index = {t: i for i, t in enumerate(tags)}
    return {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(int(s)) for s in segment_ids],
            "properties": [
                {"id": "label", "type": "label", "values": labels},
                {"id": "cell_type", "type": "string", "values": [t or "" for t in cell_types]},
                {"id": "tags", "type": "tags", "tags": [_tag(t) for t in tags],
                 "values": [[tag_index[t]] if t else [] for t in cell_types]},
            ],
        },
    }


def _tag(cell_type: str) -> str:
    # Tags are matched as "#tag" words in the segment query.
    return re.sub(r"\s+", "_", cell_type.strip())


def skeleton_info(*, voxel_size: Sequence[float]) -> dict:
    """``neuroglancer_skeletons`` info for vertices stored in our nm convention.

    Our positions put voxel ``i``'s centre at ``i * voxel_size``; Neuroglancer puts it at
    ``(i + 0.5) * voxel_size``. The transform adds that half voxel, so skeletons lie on the
    voxels they were traced through.
    """
    vz, vy, vx = (float(v) for v in voxel_size)
    return {
        "@type": "neuroglancer_skeletons",
        "transform": [1, 0, 0, vx / 2, 0, 1, 0, vy / 2, 0, 0, 1, vz / 2],
        "vertex_attributes": [{"id": "radius", "data_type": "float32", "num_components": 1}],
        "spatial_index": None,
    }


def encode_skeleton(*, node_id: np.ndarray, parent_id: np.ndarray, zyx: np.ndarray,
                    radius: np.ndarray) -> bytes:
    """Precomputed skeleton encoding of a node table.

    Parameters
    ----------
    node_id, parent_id : (N,) int ndarrays
        Parent -1 (or an id not in ``node_id``) marks a root.
    zyx : (N, 3) float ndarray
        Node positions in nm (z, y, x).
    radius : (N,) float ndarray
        nm, written as the ``radius`` vertex attribute.

    Returns
    -------
    bytes
        uint32 vertex count, uint32 edge count, float32 (N, 3) x, y, z positions, uint32
        (E, 2) edges (child, parent vertex index), float32 (N,) radius; little-endian.
    """
    node_id = np.asarray(node_id, dtype=np.int64)
    parent_id = np.asarray(parent_id, dtype=np.int64)
    edges = np.empty((0, 2), dtype="<u4")
    if len(node_id):
        order = np.argsort(node_id, kind="stable")
        where = np.minimum(np.searchsorted(node_id, parent_id, sorter=order), len(node_id) - 1)
        parent = order[where]
        child = np.flatnonzero((parent_id >= 0) & (node_id[parent] == parent_id))
        edges = np.stack([child, parent[child]], axis=1).astype("<u4")
    positions = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)[:, ::-1].astype("<f4")
    header = np.array([len(node_id), len(edges)], dtype="<u4")
    return b"".join([
        header.tobytes(), positions.tobytes(), edges.tobytes(),
        np.asarray(radius, dtype="<f4").tobytes(),
    ])
