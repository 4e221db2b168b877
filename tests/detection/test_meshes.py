"""Block-wise meshes: fragments per block, the legacy encoding, geometry in nm, joins."""

import json

import numpy as np
import pytest
from skimage.draw import ellipsoid

from detection.cells.meshes import (
    decode_fragment,
    encode_fragment,
    fragment_name,
    mesh_area,
    mesh_block,
    mesh_box,
    read_box,
    read_mesh,
    write_fragments,
    write_manifests,
)
from detection.errors import InputError
from detection.io.sources import iter_blocks

SHAPE = (20, 60, 70)


def _labels(dtype=np.uint32):
    """An ellipsoid (segment 3) inside, a box (segment 5) against three volume faces."""
    labels = np.zeros(SHAPE, dtype=dtype)
    blob = ellipsoid(6, 20, 25).astype(dtype)
    z, y, x = blob.shape
    labels[2:2 + z, 5:5 + y, 8:8 + x] = blob * 3
    labels[10:20, 50:60, 0:30] = 5
    return labels


def _whole(labels, voxel_size, **options):
    # The whole volume padded with background: every surface closed at the edges.
    return {f.segment_id: f for f in mesh_block(np.pad(labels, 1), voxel_size=voxel_size,
                                                offset=(-1, -1, -1), **options)}


def _blockwise_areas(labels, voxel_size, block_shape, **options):
    areas, counts = {}, {}
    for box in iter_blocks(labels.shape, block_shape):
        for fragment in mesh_box(labels, box, voxel_size=voxel_size, **options):
            s = fragment.segment_id
            areas[s] = areas.get(s, 0.0) + mesh_area(fragment.vertices, fragment.faces)
            counts[s] = counts.get(s, 0) + 1
    return areas, counts


@pytest.mark.parametrize("voxel_size", [(40.0, 8.0, 8.0), (10.0, 10.0, 10.0)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64, np.int64])
def test_blocks_fragments_join_into_the_whole_volume_mesh(voxel_size, dtype):
    labels = _labels(dtype)
    whole = _whole(labels, voxel_size)
    assert sorted(whole) == [3, 5]
    areas, counts = _blockwise_areas(labels, voxel_size, (8, 24, 24))
    assert counts[3] > 4 and counts[5] > 1     # the segments span several blocks
    for segment, fragment in whole.items():
        # Without simplification the blocks' triangles are the whole mesh's, cut at the faces.
        assert areas[segment] == pytest.approx(mesh_area(fragment.vertices, fragment.faces),
                                               rel=1e-6)
    # The box's area is about its six faces' in nm^2 (marching cubes bevels the edges).
    vz, vy, vx = voxel_size
    dz, dy, dx = 10 * vz, 10 * vy, 30 * vx
    faces = 2 * (dz * dy + dz * dx + dy * dx)
    assert 0.9 * faces < areas[5] < faces


def test_simplified_blocks_stay_close_to_the_whole_mesh():
    labels = _labels()
    voxel_size = (40.0, 8.0, 8.0)
    whole = _whole(labels, voxel_size)
    areas, _ = _blockwise_areas(labels, voxel_size, (8, 24, 24), reduction_factor=10)
    simplified = _whole(labels, voxel_size, reduction_factor=10)
    assert len(simplified[3].faces) < len(whole[3].faces) / 4
    for segment, fragment in whole.items():
        assert areas[segment] == pytest.approx(mesh_area(fragment.vertices, fragment.faces),
                                               rel=0.05)


def test_vertices_are_nm_on_the_faces_of_the_segment_bounding_box():
    labels = _labels()
    voxel_size = (40.0, 8.0, 8.0)
    xyz_size = np.array(voxel_size[::-1])
    for box in iter_blocks(labels.shape, (8, 24, 24)):
        for fragment in mesh_box(labels, box, voxel_size=voxel_size):
            where = np.argwhere(labels == fragment.segment_id)
            lo = where.min(axis=0)[::-1] * xyz_size
            hi = (where.max(axis=0)[::-1] + 1) * xyz_size
            assert np.all(fragment.vertices >= lo - 1e-3)
            assert np.all(fragment.vertices <= hi + 1e-3)
    # The whole mesh touches every face of the box: corner convention, voxel i is [i, i+1).
    whole = _whole(labels, voxel_size)
    np.testing.assert_allclose(whole[5].vertices.min(axis=0), [0, 50 * 8, 10 * 40])
    np.testing.assert_allclose(whole[5].vertices.max(axis=0), [30 * 8, 60 * 8, 20 * 40])


def test_segment_ids_limit_what_is_meshed_without_changing_it():
    labels = _labels()
    box = (slice(0, 10), slice(0, 30), slice(0, 40))
    only = mesh_box(labels, box, voxel_size=(40, 8, 8), segment_ids=[3])
    every = {f.segment_id: f for f in mesh_box(labels, box, voxel_size=(40, 8, 8))}
    assert [f.segment_id for f in only] == [3]
    np.testing.assert_array_equal(only[0].vertices, every[3].vertices)


def test_read_box_grows_far_faces_and_pads_at_the_edges():
    grown, pad = read_box((slice(0, 8), slice(24, 48), slice(48, 70)), SHAPE)
    assert grown == (slice(0, 9), slice(24, 49), slice(48, 70))
    assert pad == ((1, 0), (0, 0), (0, 1))
    with pytest.raises(InputError, match="does not fit"):
        read_box((slice(0, 8), slice(0, 8), slice(60, 80)), SHAPE)


def test_fragment_bytes_round_trip_in_the_legacy_layout(tmp_path):
    labels = _labels()
    box = (slice(0, 8), slice(0, 24), slice(0, 24))
    fragments = mesh_box(labels, box, voxel_size=(40, 8, 8))
    fragment = fragments[0]
    data = encode_fragment(fragment.vertices, fragment.faces)
    n = len(fragment.vertices)
    assert np.frombuffer(data[:4], "<u4")[0] == n
    assert len(data) == 4 + 12 * n + 12 * len(fragment.faces)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3 * n, 4).reshape(-1, 3),
                                  fragment.vertices)
    vertices, faces = decode_fragment(data)
    np.testing.assert_array_equal(vertices, fragment.vertices)
    np.testing.assert_array_equal(faces, fragment.faces)
    with pytest.raises(InputError, match="cannot hold"):
        decode_fragment(data[:-4])
    with pytest.raises(InputError, match="names vertex"):
        encode_fragment(fragment.vertices[:2], fragment.faces)

    assert fragment_name(3, box, tag="j7") == "3:0:0-24_0-24_0-8:j7"
    with pytest.raises(InputError, match="tag"):
        fragment_name(3, box, tag="../x")


def test_manifests_name_every_block_fragment_and_read_back_the_whole_mesh(tmp_path):
    labels = _labels()
    voxel_size = (40.0, 8.0, 8.0)
    names = {}
    for box in iter_blocks(labels.shape, (8, 24, 24)):
        for segment in write_fragments(tmp_path, mesh_box(labels, box, voxel_size=voxel_size),
                                       box, tag="j1"):
            names.setdefault(segment, []).append(fragment_name(segment, box, tag="j1"))
    assert write_manifests(tmp_path, names) == 2
    assert json.loads((tmp_path / "info").read_text()) == {"@type": "neuroglancer_legacy_mesh"}
    manifest = json.loads((tmp_path / "3:0").read_text())
    assert manifest["fragments"] == sorted(names[3])
    vertices, faces = read_mesh(tmp_path, 3)
    whole = _whole(labels, voxel_size)[3]
    assert mesh_area(vertices, faces) == pytest.approx(mesh_area(whole.vertices, whole.faces),
                                                       rel=1e-6)
    assert not list(tmp_path.glob("*.partial"))
