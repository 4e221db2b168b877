"""Cell hulls from skeletons by ray casting (detection.cells.hulls)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import ndimage as ndi

from detection.blockwise import with_halo
from detection.cells.hulls import (
    CellSkeleton,
    HullPoints,
    RayParameters,
    hull_block,
    hull_points,
    skeleton_hulls,
)
from detection.errors import InputError
from detection.io.sources import iter_blocks
from detection.io.swc import SkeletonNodes
from tests.conftest import shared_file


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def z_tubes(shape, voxel_size, tubes, *, membrane_nm):
    """Cylinders along z: (centre y, centre x, radius nm, id) each. Inside: the id; a membrane
    of ``membrane_nm`` around each (1 in the boundary map); two tubes may share a membrane."""
    y, x = np.indices(shape[1:])
    truth = np.zeros(shape, dtype=np.uint64)
    boundary = np.zeros(shape, dtype=np.float32)
    for cy, cx, radius, cell in tubes:
        r = np.hypot((y - cy) * voxel_size[1], (x - cx) * voxel_size[2])
        truth[:, r < radius] = cell
        boundary[:, (r >= radius) & (r < radius + membrane_nm)] = 1.0
    truth[boundary == 1] = 0
    skeletons = [CellSkeleton(cell, nodes=[[0, cy, cx], [shape[0] - 1, cy, cx]], edges=[[0, 1]])
                 for cy, cx, _, cell in tubes]
    return truth, boundary, skeletons


@pytest.mark.parametrize("voxel_size", [(40.0, 8.0, 8.0), (50.0, 4.0, 4.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_tubes_along_z_become_their_hulls(voxel_size, dtype):
    vy = voxel_size[1]
    # Radii 120-300 nm; tubes 1 and 2 touch, sharing one membrane.
    tubes = [(40, 40, 30 * vy, 7), (40, 40 + 61, 30 * vy, 2**64 - 3), (105, 60, 15 * vy, 12),
             (100, 110, 25 * vy, 5)]
    truth, boundary, skeletons = z_tubes((7, 140, 140), voxel_size, tubes,
                                         membrane_nm=2 * vy)
    hulls = skeleton_hulls(boundary.astype(dtype), skeletons, voxel_size=voxel_size,
                           parameters=RayParameters(max_radius_nm=400 * vy / 8))
    assert hulls.dtype == np.uint64
    for _, _, _, cell in tubes:
        assert _iou(hulls == cell, truth == cell) > 0.9, cell
    assert not hulls[boundary == 1].any()            # membrane stays 0
    assert set(np.unique(hulls)) == {0} | {cell for *_, cell in tubes}


def x_tube(shape, voxel_size, *, centre, radius_nm, direction):
    """A cylinder through ``centre`` (voxels) along ``direction`` (nm space), its membrane a
    shell of two voxels, and a skeleton of two nodes on its axis."""
    voxel = np.asarray(voxel_size)
    position = np.indices(shape).reshape(3, -1).T * voxel
    axis = np.asarray(direction, float) / np.linalg.norm(direction)
    along = (position - np.asarray(centre) * voxel) @ axis
    distance = np.linalg.norm(position - np.asarray(centre) * voxel - along[:, None] * axis,
                              axis=1).reshape(shape)
    truth = distance < radius_nm
    boundary = ((distance >= radius_nm) & (distance < radius_nm + 2 * voxel.min()))
    ends = [np.asarray(centre) + t * axis / voxel for t in (-1e9, 1e9)]
    # The axis's ends, clipped to the volume along the axis.
    span = []
    for end in ends:
        step = (end - np.asarray(centre))
        scale = min(((np.where(step > 0, np.asarray(shape) - 1, 0) - np.asarray(centre))
                     / np.where(step == 0, np.inf, step))[step != 0])
        span.append(np.asarray(centre) + scale * step)
    return truth, boundary.astype(np.float32), np.array(span)


@pytest.mark.parametrize("direction", [(0, 0, 1), (1, 1, 1), (2, 1, 0)])
def test_tubes_in_any_direction_with_3d_rays_on_isotropic_data(direction):
    voxel_size = (10.0, 10.0, 10.0)
    shape = (40, 40, 40)
    truth, boundary, ends = x_tube(shape, voxel_size, centre=(20, 20, 20), radius_nm=80,
                                   direction=direction)
    skeleton = CellSkeleton(3, nodes=ends, edges=[[0, 1]])
    hulls = skeleton_hulls(boundary, [skeleton], voxel_size=voxel_size,
                           parameters=RayParameters(mode="3d", n_rays=200, max_radius_nm=150))
    assert _iou(hulls == 3, truth) > 0.9


def test_the_nearest_point_wins_and_ties_go_to_the_smaller_id():
    voxel_size = (40.0, 8.0, 8.0)
    boundary = np.zeros((1, 11, 41), dtype=np.float32)
    skeletons = [CellSkeleton(9, nodes=[[0, 5, 10]]), CellSkeleton(4, nodes=[[0, 5, 30]])]
    hulls = skeleton_hulls(boundary, skeletons, voxel_size=voxel_size,
                           parameters=RayParameters(max_radius_nm=1000))
    x = np.arange(41)
    expected = np.broadcast_to(np.where(x < 20, 9, 4), (11, 41))  # x == 20: the smaller id
    painted = hulls[0] > 0
    # Rays stop where they leave the volume, so the far corners lie outside both stars.
    assert painted[1:-1].all() and painted.sum() == 11 * 41 - 4
    np.testing.assert_array_equal(hulls[0][painted], expected[painted])


def test_a_ray_stops_at_the_membrane_and_max_radius_bounds_the_region():
    voxel_size = (40.0, 8.0, 8.0)
    _, y, x = np.indices((1, 61, 61))
    r = np.hypot(y - 30, x - 30) * 8.0
    boundary = ((r >= 160) & (r < 176)).astype(np.float32)
    skeleton = [CellSkeleton(1, nodes=[[0, 30, 30]])]
    inside = skeleton_hulls(boundary, skeleton, voxel_size=voxel_size,
                            parameters=RayParameters(n_rays=64, max_radius_nm=400))
    assert _iou(inside == 1, r < 160) > 0.97
    short = skeleton_hulls(boundary, skeleton, voxel_size=voxel_size,
                           parameters=RayParameters(n_rays=64, max_radius_nm=80))
    assert _iou(short == 1, r < 80) > 0.9 and not short[r >= 88].any()


def test_no_skeletons_give_zeros_and_a_skeleton_without_nodes_paints_nothing():
    boundary = np.zeros((3, 20, 20), dtype=np.float32)
    assert not skeleton_hulls(boundary, [], voxel_size=(40, 8, 8)).any()
    empty = CellSkeleton(5, nodes=np.zeros((0, 3)))
    assert not skeleton_hulls(boundary, [empty], voxel_size=(40, 8, 8)).any()


def test_bad_input_is_named():
    boundary = np.zeros((3, 20, 20), dtype=np.float32)
    outside = CellSkeleton(12, nodes=[[1, 5, 5], [1, 5, 19.4], [1, 5, 19.6]], edges=[[0, 1]],
                           skeleton_id=77)
    with pytest.raises(InputError, match=r"skeleton 77 \(cell 12\), node 2 at .* outside"):
        skeleton_hulls(boundary, [outside], voxel_size=(40, 8, 8))
    with pytest.raises(InputError, match=r"skeleton of cell 3, node 0 .* outside"):
        skeleton_hulls(boundary, [CellSkeleton(3, nodes=[[-1, 5, 5]])], voxel_size=(40, 8, 8))
    with pytest.raises(InputError, match="edge 1 .* names a node that does not exist"):
        CellSkeleton(3, nodes=[[1, 1, 1], [1, 2, 2]], edges=[[0, 1], [1, 2]])
    with pytest.raises(InputError, match="cell id must be from 1"):
        CellSkeleton(0, nodes=[[1, 1, 1]])
    with pytest.raises(InputError, match="not finite"):
        skeleton_hulls(boundary, [CellSkeleton(3, nodes=[[1, np.nan, 1]])],
                       voxel_size=(40, 8, 8))
    with pytest.raises(InputError, match=r"values in \[0, 1\]"):
        skeleton_hulls(boundary + 2, [], voxel_size=(40, 8, 8))
    with pytest.raises(InputError, match="float probabilities"):
        skeleton_hulls(boundary.astype(np.uint8), [], voxel_size=(40, 8, 8))
    with pytest.raises(InputError, match="voxel_size"):
        skeleton_hulls(boundary, [], voxel_size=(40, 8))
    with pytest.raises(InputError, match="n_rays"):
        RayParameters(n_rays=2)
    with pytest.raises(InputError, match="mode"):
        RayParameters(mode="sphere")
    parameters = RayParameters(max_radius_nm=80)
    box = (slice(0, 3), slice(0, 10), slice(0, 10))
    with pytest.raises(InputError, match="halo of .* is less than"):
        hull_block(boundary, [], box=box, halo=(0, 5, 5), shape=boundary.shape,
                   voxel_size=(40, 8, 8), parameters=parameters)
    with pytest.raises(InputError, match="the boundary block has shape"):
        hull_block(boundary[:, :15], [], box=box, halo=(0, 21, 21), shape=boundary.shape,
                   voxel_size=(40, 8, 8), parameters=parameters)


def test_skeleton_from_nm_nodes_with_parents():
    nodes = SkeletonNodes(node_id=[10, 11, 12], parent_id=[-1, 10, 11],
                          zyx=[[0, 0, 0], [40, 80, 8], [80, 80, 16]], radius=[5, 5, 5],
                          compartment=[0, 0, 0])
    skeleton = CellSkeleton.from_nodes(4, nodes, voxel_size=(40, 8, 8), skeleton_id=9)
    np.testing.assert_allclose(skeleton.nodes, [[0, 0, 0], [1, 10, 1], [2, 10, 2]])
    assert skeleton.edges.tolist() == [[0, 1], [1, 2]]
    nodes.parent_id[2] = 99
    with pytest.raises(InputError, match=r"skeleton 9 \(cell 4\), node 2 .*parent 99"):
        CellSkeleton.from_nodes(4, nodes, voxel_size=(40, 8, 8), skeleton_id=9)


def test_points_cover_every_section_an_edge_crosses_and_are_thinned():
    # One edge across 9 sections, 40 nm each, short in-plane: a point in each section.
    skeleton = CellSkeleton(1, nodes=[[0, 10, 10], [8, 12, 10]], edges=[[0, 1]])
    points = hull_points([skeleton], shape=(9, 30, 30), voxel_size=(40, 8, 8),
                         parameters=RayParameters(node_spacing_nm=1000))
    assert sorted(points.zyx[:, 0].tolist()) == list(range(9))
    # An in-plane edge of 800 nm sampled every 100 nm keeps about one point per 100 nm.
    flat = CellSkeleton(1, nodes=[[0, 5, 0], [0, 5, 100]], edges=[[0, 1]])
    points = hull_points([flat], shape=(1, 10, 101), voxel_size=(40, 8, 8),
                         parameters=RayParameters(node_spacing_nm=100))
    assert 8 <= len(points) <= 10
    assert np.diff(np.sort(points.zyx[:, 2])).max() * 8 <= 2 * 100


def _random_scene(shape, seed, n_cells):
    """Blobby membranes (smoothed noise) and random skeletons of a few nodes each."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random(shape), sigma=(0.5, 2, 2))
    boundary = np.clip((noise - noise.min()) / np.ptp(noise), 0, 1).astype(np.float32)
    skeletons = []
    for cell in range(1, n_cells + 1):
        nodes = rng.uniform(0, np.asarray(shape) - 1, size=(4, 3))
        skeletons.append(CellSkeleton(cell * 1000, nodes=nodes,
                                      edges=[[0, 1], [1, 2], [1, 3]]))
    return boundary, skeletons


@pytest.mark.parametrize(("mode", "voxel_size", "block"), [
    ("plane", (40.0, 8.0, 8.0), (2, 17, 23)),
    ("3d", (10.0, 10.0, 10.0), (7, 9, 11)),
])
def test_blocks_with_the_halo_equal_the_whole_volume(mode, voxel_size, block):
    shape = (6, 60, 70) if mode == "plane" else (24, 30, 34)
    boundary, skeletons = _random_scene(shape, seed=3, n_cells=12)
    parameters = RayParameters(mode=mode, max_radius_nm=120 if mode == "plane" else 60,
                               n_rays=24 if mode == "plane" else 60, threshold=0.55)
    whole = skeleton_hulls(boundary, skeletons, voxel_size=voxel_size, parameters=parameters)
    assert len(np.unique(whole)) > 8             # most cells painted something
    halo = parameters.halo(voxel_size)
    points = hull_points(skeletons, shape=shape, voxel_size=voxel_size, parameters=parameters)
    stitched = np.zeros_like(whole)
    for box in iter_blocks(shape, block):
        outer, _ = with_halo(box, halo, shape)
        source = points if box[0].start % 2 else skeletons      # both kinds of input
        stitched[box] = hull_block(boundary[outer], source, box=box, halo=halo, shape=shape,
                                   voxel_size=voxel_size, parameters=parameters)
    np.testing.assert_array_equal(stitched, whole)


def test_hull_points_round_trip(tmp_path):
    skeleton = CellSkeleton(2**64 - 1, nodes=[[0, 1, 1], [2, 5, 5]], edges=[[0, 1]])
    points = hull_points([skeleton], shape=(3, 8, 8), voxel_size=(40, 8, 8))
    points.save(tmp_path / "points.npz")
    loaded = HullPoints.load(tmp_path / "points.npz")
    np.testing.assert_array_equal(loaded.zyx, points.zyx)
    assert loaded.cell.dtype == np.uint64 and int(loaded.cell[0]) == 2**64 - 1


def test_real_data_cardona_hulls_from_ground_truth_skeletons():
    """Skeletons of Cardona's dense labels (a crop), the smoothed membrane mask as boundary:
    the hulls recover most of each cell and paint almost nothing into other cells."""
    from detection.cells.skeletonize import skeletonize_segmentation

    path = shared_file("cardona_l1vnc_train.h5")
    with h5py.File(path, "r") as f:
        crop = (slice(0, 12), slice(0, 224), slice(0, 256))
        ids = f["volumes/labels/neuron_ids"][crop]
        membrane = f["volumes/labels/membrane_mask"][crop]
    voxel_size = (50.0, 4.0, 4.0)
    skeletons = skeletonize_segmentation(ids, voxel_size=voxel_size, dust_threshold=200)
    cells = [CellSkeleton.from_nodes(c, n, voxel_size=voxel_size) for c, n in skeletons.items()]
    boundary = ndi.gaussian_filter(membrane.astype(np.float32), sigma=(0, 1, 1))
    hulls = skeleton_hulls(boundary, cells, voxel_size=voxel_size,
                           parameters=RayParameters(max_radius_nm=1000))
    recovered = [np.count_nonzero((hulls == c) & (ids == c)) / np.count_nonzero(ids == c)
                 for c in skeletons]
    painted = hulls > 0
    assert len(cells) >= 30
    assert np.median(recovered) > 0.85
    assert np.mean(hulls[painted] == ids[painted]) > 0.98
