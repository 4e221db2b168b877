"""Surface meshes of the segments of a label volume, block by block, for Neuroglancer.

Each block is meshed on its own (zmesh's marching cubes) from its labels grown by one voxel at
its far faces, so the block holds the cubes between its last voxel plane and the next block's
first: the fragments of neighbouring blocks meet without a gap. At the volume's edges the block
is padded with background, so every segment's surface is closed there, as a mesh of the whole
volume made with ``close=True`` is.

Geometry: vertices are in nm, x, y, z, in Neuroglancer's corner convention (voxel ``i`` covers
``[i, i + 1) * voxel_size``), so a mesh lies exactly on the voxel faces of its segment and
inside its bounding box times the voxel size.

Output is Neuroglancer's precomputed *legacy* mesh format: one fragment file per (segment,
block) holding ``uint32`` vertex count, ``float32`` (N, 3) vertices and ``uint32`` (M, 3)
triangle indices, little-endian; a manifest ``<segment>:0`` per segment naming its fragments
(``{"fragments": [...]}``); and an ``info`` of ``{"@type": "neuroglancer_legacy_mesh"}``.

Specification: https://github.com/google/neuroglancer/blob/master/src/datasource/precomputed/meshes.md
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detection.errors import InputError

logger = logging.getLogger(__name__)

MESH_INFO = {"@type": "neuroglancer_legacy_mesh"}
#: A manifest's name (``<segment>:0``) and a fragment's (``<segment>:0:<x0-x1_y0-y1_z0-z1>``,
#: optionally followed by ``:<tag>``).
MANIFEST_NAME = re.compile(r"(\d{1,20}):0")
FRAGMENT_NAME = re.compile(r"(\d{1,20}):0:(\d+-\d+_\d+-\d+_\d+-\d+)(?::([A-Za-z0-9]{1,32}))?")

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Fragment:
    """The part of one segment's surface that one block holds.

    ``vertices`` : (N, 3) float32 ndarray, x, y, z in nm; ``faces`` : (M, 3) uint32 ndarray of
    vertex indices.
    """

    segment_id: int
    vertices: np.ndarray
    faces: np.ndarray


# --------------------------------------------------------------------------------------------
# Meshing


def read_box(box: Box, shape: Sequence[int]) -> tuple[Box, tuple[tuple[int, int], ...]]:
    """The box to read for meshing ``box`` and the background padding to add after reading.

    The box grows by one voxel at each far face inside the volume; at the volume's edges one
    voxel of background is padded on instead (``((before, after), ...)`` per axis, z, y, x).
    """
    grown, pad = [], []
    for s, n in zip(box, shape):
        start, stop, n = int(s.start), int(s.stop), int(n)
        if not 0 <= start < stop <= n:
            raise InputError(f"block {start}-{stop} does not fit in an axis of {n} voxels")
        grown.append(slice(start, min(stop + 1, n)))
        pad.append((1 if start == 0 else 0, 1 if stop >= n else 0))
    return tuple(grown), tuple(pad)


def mesh_block(labels: np.ndarray, *, voxel_size: Sequence[float], offset: Sequence[int] = (0, 0, 0),
               segment_ids: Iterable[int] | None = None, reduction_factor: int = 0,
               max_error_nm: float | None = None) -> list[Fragment]:
    """Mesh every segment (or those of ``segment_ids``) of a label block.

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray
        Labels, 0 the background; the block as :func:`read_box` grew and padded it.
    voxel_size : (3,) floats
        nm, (z, y, x): the meshing's anisotropy.
    offset : (3,) ints
        Voxel (z, y, x) of ``labels[0, 0, 0]`` in the volume (-1 on a padded axis).
    segment_ids : iterable of int, optional
        Mesh only these segments (the others count as background, which does not change the
        surfaces of these).
    reduction_factor : int
        Simplify each fragment to about 1 / ``reduction_factor`` of its triangles; 0: none.
    max_error_nm : float, optional
        How far simplification may move a vertex, nm; zmesh's default (about one voxel) when
        None.

    Returns
    -------
    list of Fragment
        One per segment with any surface in the block, by segment id.
    """
    import zmesh

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be a 3D integer array, got {labels.ndim}D {labels.dtype}")
    if reduction_factor < 0:
        raise InputError(f"reduction_factor must be 0 or more, got {reduction_factor}")
    if labels.dtype.kind == "i":
        if labels.size and labels.min() < 0:
            raise InputError("labels must not be negative")
        labels = labels.astype(np.dtype(f"u{labels.dtype.itemsize}"))
    if segment_ids is not None:
        wanted = np.fromiter((int(s) for s in segment_ids), dtype=np.uint64)
        labels = np.where(np.isin(labels, wanted), labels, 0).astype(labels.dtype)
    vz, vy, vx = (float(v) for v in voxel_size)
    # zmesh takes x, y, z: the (z, y, x) C-order array transposed is a Fortran-order x, y, z.
    mesher = zmesh.Mesher((vx, vy, vz))
    mesher.mesh(np.asfortranarray(labels.transpose(2, 1, 0)))
    shift = np.array([offset[2] * vx, offset[1] * vy, offset[0] * vz], dtype=np.float64)
    fragments = []
    for segment in sorted(int(s) for s in mesher.ids()):
        if segment == 0:
            continue
        # Voxel-centred: voxel i's centre at i + 0.5, the faces of the segment's voxels on
        # integers, as Neuroglancer draws the segmentation.
        mesh = mesher.get(segment, normals=False, reduction_factor=int(reduction_factor),
                          max_error=max_error_nm, voxel_centered=True)
        if len(mesh.faces) == 0:
            continue
        vertices = (mesh.vertices.astype(np.float64) + shift).astype("<f4")
        fragments.append(Fragment(segment, vertices, np.asarray(mesh.faces, dtype="<u4")))
    mesher.clear()
    return fragments


def mesh_box(labels, box: Box, *, voxel_size: Sequence[float], **options) -> list[Fragment]:
    """Read the block ``box`` of a (Z, Y, X) label array (zarr or numpy) and mesh it.

    Keyword arguments go to :func:`mesh_block`.
    """
    grown, pad = read_box(box, labels.shape)
    block = np.pad(np.asarray(labels[grown]), pad)
    offset = [s.start - before for s, (before, _) in zip(grown, pad)]
    return mesh_block(block, voxel_size=voxel_size, offset=offset, **options)


def mesh_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Surface area of a triangle mesh, in the square of the vertices' unit."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if not len(f):
        return 0.0
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)


# --------------------------------------------------------------------------------------------
# The precomputed legacy format


def box_name(box: Box) -> str:
    """``x0-x1_y0-y1_z0-z1`` of a (z, y, x) box, as precomputed names chunks."""
    z, y, x = box
    return f"{x.start}-{x.stop}_{y.start}-{y.stop}_{z.start}-{z.stop}"


def manifest_name(segment_id: int) -> str:
    return f"{int(segment_id)}:0"


def fragment_name(segment_id: int, box: Box, *, tag: str = "") -> str:
    """``<segment>:0:<x0-x1_y0-y1_z0-z1>[:<tag>]``; a tag (e.g. which run made it) makes the
    names of a later run differ, so clients may cache fragments for good."""
    name = f"{manifest_name(segment_id)}:{box_name(box)}"
    if tag:
        if not re.fullmatch(r"[A-Za-z0-9]{1,32}", tag):
            raise InputError(f"a fragment tag is 1 to 32 letters or digits, got {tag!r}")
        name += f":{tag}"
    return name


def encode_fragment(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Legacy fragment bytes: uint32 vertex count, float32 (N, 3) x, y, z, uint32 (M, 3)."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype="<u4").reshape(-1, 3)
    if len(faces) and int(faces.max()) >= len(vertices):
        raise InputError(f"a face names vertex {int(faces.max())} of {len(vertices)}")
    return np.array([len(vertices)], dtype="<u4").tobytes() + vertices.tobytes() + faces.tobytes()


def decode_fragment(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (N, 3) float32, faces (M, 3) uint32) of legacy fragment bytes."""
    if len(data) < 4:
        raise InputError(f"a mesh fragment has at least 4 bytes, got {len(data)}")
    n = int(np.frombuffer(data[:4], dtype="<u4")[0])
    rest = len(data) - 4 - 12 * n
    if rest < 0 or rest % 12:
        raise InputError(f"a fragment of {len(data)} bytes cannot hold {n} vertices and whole "
                         "triangles")
    vertices = np.frombuffer(data, dtype="<f4", count=3 * n, offset=4).reshape(n, 3)
    faces = np.frombuffer(data, dtype="<u4", offset=4 + 12 * n).reshape(-1, 3)
    return vertices, faces


def manifest(fragment_names: Iterable[str]) -> dict:
    return {"fragments": sorted(fragment_names)}


def write_file(path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a repeat overwrites it with the same bytes)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def write_fragments(folder, fragments: Iterable[Fragment], box: Box, *, tag: str = "") -> list[int]:
    """Write a block's fragments into ``folder``; returns their segment ids."""
    folder = Path(folder)
    written = []
    for fragment in fragments:
        write_file(folder / fragment_name(fragment.segment_id, box, tag=tag),
                   encode_fragment(fragment.vertices, fragment.faces))
        written.append(fragment.segment_id)
    return written


def write_manifests(folder, fragments: dict[int, list[str]]) -> int:
    """Write ``<segment>:0`` for each segment's fragment names and the mesh ``info``."""
    folder = Path(folder)
    for segment, names in fragments.items():
        write_file(folder / manifest_name(segment),
                   json.dumps(manifest(names), separators=(",", ":")).encode())
    write_file(folder / "info", json.dumps(MESH_INFO).encode())
    return len(fragments)


def read_mesh(folder, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole mesh of a segment from its manifest and fragments (vertices not merged)."""
    folder = Path(folder)
    names = json.loads((folder / manifest_name(segment_id)).read_text())["fragments"]
    vertices, faces, count = [], [], 0
    for name in names:
        v, f = decode_fragment((folder / name).read_bytes())
        vertices.append(v)
        faces.append(f.astype(np.int64) + count)
        count += len(v)
    if not names:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(vertices), np.concatenate(faces)
