"""Skeletons from label volumes: frame, units, rooting and id handling."""

import numpy as np
import pytest

from detection.cells.skeletonize import skeletonize_segmentation
from detection.io.swc import validate_skeleton

BIG_ID = 2**64 - 5


def tube_volume(shape, voxel_size, *, radius_nm, x_range, label=1, dtype=np.uint64):
    """A cylinder along x through the (z, y) centre voxel of the volume."""
    vz, vy, _ = voxel_size
    z, y, x = np.indices(shape)
    centre_z, centre_y = shape[0] // 2, shape[1] // 2
    inside = (((z - centre_z) * vz) ** 2 + ((y - centre_y) * vy) ** 2 <= radius_nm**2)
    inside &= (x >= x_range[0]) & (x < x_range[1])
    labels = np.zeros(shape, dtype=dtype)
    labels[inside] = label
    return labels, (centre_z * vz, centre_y * vy)


@pytest.mark.parametrize(("shape", "voxel_size", "radius_nm"), [
    ((21, 21, 60), (4.0, 4.0, 4.0), 16.0),
    ((11, 31, 60), (40.0, 8.0, 8.0), 80.0),
])
def test_tube_through_volume_lies_on_axis(shape, voxel_size, radius_nm):
    # A tube cut by the volume faces ends at the centre of each face.
    labels, (axis_z, axis_y) = tube_volume(shape, voxel_size, radius_nm=radius_nm,
                                           x_range=(0, shape[2]), label=BIG_ID)
    skeletons = skeletonize_segmentation(labels, voxel_size=voxel_size, dust_threshold=10)
    assert list(skeletons) == [BIG_ID]
    nodes = skeletons[BIG_ID]
    vz, vy, vx = voxel_size
    assert np.abs(nodes.zyx[:, 0] - axis_z).max() <= vz
    assert np.abs(nodes.zyx[:, 1] - axis_y).max() <= vy
    assert nodes.zyx[:, 2].min() == pytest.approx(0.0, abs=vx)
    assert nodes.zyx[:, 2].max() == pytest.approx((shape[2] - 1) * vx, abs=vx)
    # Radii are nm: the distance from the axis to the first voxel outside.
    assert nodes.radius.max() == pytest.approx(radius_nm, abs=max(voxel_size))
    assert nodes.radius.min() > 0


@pytest.mark.parametrize(("shape", "voxel_size", "radius_nm"), [
    ((21, 21, 80), (4.0, 4.0, 4.0), 16.0),
    ((11, 31, 80), (40.0, 8.0, 8.0), 80.0),
])
def test_closed_tube_position_and_length(shape, voxel_size, radius_nm):
    x0, x1 = 12, 62  # 50 voxels
    labels, (axis_z, axis_y) = tube_volume(shape, voxel_size, radius_nm=radius_nm,
                                           x_range=(x0, x1), label=7, dtype=np.uint16)
    nodes = skeletonize_segmentation(labels, voxel_size=voxel_size, dust_threshold=10)[7]
    vz, vy, vx = voxel_size
    x = nodes.zyx[:, 2]
    assert x.min() == pytest.approx(x0 * vx, abs=vx)
    assert x.max() == pytest.approx((x1 - 1) * vx, abs=vx)
    # End points may sit on the rim of the flat caps; the rest follows the axis.
    inner = (x > x0 * vx + radius_nm) & (x < (x1 - 1) * vx - radius_nm)
    assert inner.sum() > 20
    assert np.abs(nodes.zyx[inner, 0] - axis_z).max() <= vz
    assert np.abs(nodes.zyx[inner, 1] - axis_y).max() <= vy
    assert np.abs(nodes.zyx[:, 0] - axis_z).max() <= radius_nm
    # Every node lies inside the cell.
    index = np.rint(nodes.zyx / np.asarray(voxel_size)).astype(int)
    assert (labels[index[:, 0], index[:, 1], index[:, 2]] == 7).all()


def test_tree_structure_root_and_node_ids():
    labels, _ = tube_volume((21, 21, 80), (4.0, 4.0, 4.0), radius_nm=16.0, x_range=(10, 70))
    nodes = skeletonize_segmentation(labels, voxel_size=(4, 4, 4), dust_threshold=10)[1]
    validate_skeleton(nodes)
    n = len(nodes)
    np.testing.assert_array_equal(nodes.node_id, np.arange(n))
    assert nodes.parent_id[0] == -1 and (nodes.parent_id == -1).sum() == 1
    # Breadth-first numbering: parents come before their children.
    assert (nodes.parent_id[1:] < np.arange(1, n)).all()
    assert nodes.radius[0] == nodes.radius.max()
    np.testing.assert_array_equal(nodes.compartment, np.zeros(n, dtype=np.int16))
    # Consecutive nodes along a tube are neighbouring voxels.
    step = np.linalg.norm(nodes.zyx[1:] - nodes.zyx[nodes.parent_id[1:]], axis=1)
    assert step.max() <= 4 * np.sqrt(3) + 1e-9


def test_disconnected_pieces_of_one_cell_get_one_root_each():
    labels = np.zeros((12, 12, 60), dtype=np.uint32)
    labels[2:5, 2:5, 5:25] = 9      # thin piece
    labels[5:12, 5:12, 35:58] = 9   # thick piece
    nodes = skeletonize_segmentation(labels, voxel_size=(10, 10, 10), dust_threshold=20)[9]
    validate_skeleton(nodes)
    roots = np.flatnonzero(nodes.parent_id == -1)
    assert len(roots) == 2
    # The thicker piece comes first, each piece rooted at its widest node.
    assert roots[0] == 0
    first_piece = nodes.zyx[: roots[1], 2]
    assert first_piece.min() >= 350 and nodes.zyx[roots[1]:, 2].max() <= 240
    assert nodes.radius[roots[0]] == nodes.radius.max()
    assert nodes.radius[roots[1]] == nodes.radius[roots[1]:].max()


def test_ids_filter_and_dust_threshold():
    labels = np.zeros((10, 10, 40), dtype=np.uint64)
    labels[1:5, 1:5, 2:38] = 3      # 576 voxels
    labels[6:9, 6:9, 2:38] = 4      # 324 voxels
    labels[6:8, 1:3, 1:3] = 5       # 8 voxels: dust
    found = skeletonize_segmentation(labels, voxel_size=(8, 8, 8), dust_threshold=100)
    assert sorted(found) == [3, 4]
    assert all(isinstance(cell, int) for cell in found)
    only = skeletonize_segmentation(labels, voxel_size=(8, 8, 8), ids=[4, 123],
                                    dust_threshold=100)
    assert list(only) == [4]
    np.testing.assert_allclose(only[4].zyx, found[4].zyx)
    assert skeletonize_segmentation(labels, voxel_size=(8, 8, 8), ids=[]) == {}
    assert skeletonize_segmentation(labels, voxel_size=(8, 8, 8), dust_threshold=400) \
        .keys() == {3}


def test_input_is_not_modified():
    labels, _ = tube_volume((9, 9, 30), (4.0, 4.0, 4.0), radius_nm=8.0, x_range=(2, 28))
    before = labels.copy()
    skeletonize_segmentation(labels, voxel_size=(4, 4, 4), dust_threshold=10)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize(("labels", "voxel_size", "message"), [
    (np.zeros((4, 4), dtype=np.uint8), (1, 1, 1), "3-D integer array"),
    (np.zeros((4, 4, 4), dtype=np.float32), (1, 1, 1), "3-D integer array"),
    (np.full((4, 4, 4), -1, dtype=np.int32), (1, 1, 1), "must not be negative"),
    (np.zeros((4, 4, 4), dtype=np.uint8), (1, 1), "three positive numbers"),
    (np.zeros((4, 4, 4), dtype=np.uint8), (1, 0, 1), "three positive numbers"),
])
def test_bad_arguments(labels, voxel_size, message):
    with pytest.raises(ValueError, match=message):
        skeletonize_segmentation(labels, voxel_size=voxel_size)
