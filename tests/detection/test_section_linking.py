"""Tests for linking per-section profiles into 3D cells (detection.cells.section_linking)."""

from __future__ import annotations

import functools

import h5py
import numpy as np
import pytest
from skimage.measure import label as connected_regions
from skimage.segmentation import expand_labels

from detection.cells.section_linking import link_sections
from detection.synthetic.phantom import make_phantom
from tests.conftest import shared_file

VNC = (50.0, 4.6, 4.6)


@functools.lru_cache(maxsize=None)
def _phantom(voxel_size, shape, seed):
    return make_phantom(shape, voxel_size=voxel_size, n_cells=30, n_synapses=0, seed=seed)


def _per_section_profiles(segmentation, *, seed, dtype=np.uint64):
    """Every section's connected regions, each with a fresh random id (ids mean nothing in z)."""
    rng = np.random.default_rng(seed)
    profiles = np.zeros(segmentation.shape, dtype=dtype)
    for z, section in enumerate(segmentation):
        regions = connected_regions(section, background=0, connectivity=1)
        fresh = rng.choice(np.iinfo(np.int32).max, size=regions.max() + 1, replace=False) + 1
        profiles[z][regions > 0] = fresh[regions[regions > 0]].astype(dtype)
    return profiles


def _split_merge(truth, found):
    """Variation of information (bits) split into its split and merge parts, on truth > 0."""
    inside = truth > 0
    t = np.unique(truth[inside], return_inverse=True)[1].ravel()
    f = np.unique(found[inside], return_inverse=True)[1].ravel()
    n = t.size

    def entropy(counts):
        p = counts / n
        return float(-(p * np.log2(p)).sum())

    joint = entropy(np.unique(t * (f.max() + 1) + f, return_counts=True)[1])
    return joint - entropy(np.bincount(t)), joint - entropy(np.bincount(f))


def _whole_fraction(truth, found, *, share=0.95):
    """Fraction of true cells with at least `share` of their voxels in one found cell."""
    inside = truth > 0
    t, f = truth[inside], found[inside]
    pairs, counts = np.unique(np.stack([t, f]), axis=1, return_counts=True)
    cells, sizes = np.unique(t, return_counts=True)
    largest = np.zeros(cells.size)
    np.maximum.at(largest, np.searchsorted(cells, pairs[0]), counts)
    return float(np.mean(largest / sizes >= share))


@pytest.mark.parametrize(
    "voxel_size, shape", [(VNC, (16, 128, 128)), ((40.0, 8.0, 8.0), (16, 80, 80))]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_phantom_profiles_are_linked_back_into_its_cells(voxel_size, shape, seed):
    phantom = _phantom(voxel_size, shape, seed)
    truth = phantom.segmentation
    profiles = _per_section_profiles(truth, seed=seed)

    linked, report = link_sections(profiles, membrane=truth == 0, voxel_size=voxel_size)

    split, merge = _split_merge(truth, linked)
    unlinked_split, _ = _split_merge(truth, profiles)
    assert unlinked_split > 1.5  # the task is not trivial: unlinked profiles are far off
    assert merge < 0.01
    assert split < 0.05
    assert _whole_fraction(truth, linked) >= 0.85
    assert report.n_profiles == sum(np.unique(p[p > 0]).size for p in profiles)
    assert report.n_cells < report.n_profiles / 3
    assert report.mean_overlap_fraction > 0.8


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint64])
def test_output_is_consecutive_uint64_and_keeps_background(dtype):
    truth = _phantom(VNC, (16, 128, 128), 0).segmentation
    profiles = _per_section_profiles(truth, seed=3, dtype=dtype)

    linked, report = link_sections(profiles, membrane=truth == 0, voxel_size=VNC)

    assert linked.dtype == np.uint64 and linked.shape == profiles.shape
    np.testing.assert_array_equal(linked == 0, profiles == 0)
    np.testing.assert_array_equal(np.unique(linked[linked > 0]), np.arange(1, report.n_cells + 1))
    # Linking never cuts a profile: each (section, profile) has exactly one 3D id.
    z = np.broadcast_to(np.arange(truth.shape[0])[:, None, None], truth.shape)
    fg = profiles > 0
    profile_cell = np.unique(np.stack([z[fg], profiles[fg].astype(np.uint64), linked[fg]]), axis=1)
    assert profile_cell.shape[1] == report.n_profiles


def test_membrane_mask_makes_gapless_profiles_link_like_cut_ones():
    # Profiles that also cover the membrane (as a watershed without boundary gives them) must
    # link as if the membrane had been cut out when the membrane mask is given.
    truth = _phantom(VNC, (16, 128, 128), 1).segmentation
    profiles = _per_section_profiles(truth, seed=5)
    gapless = profiles.copy()
    for z in range(gapless.shape[0]):
        gapless[z] = expand_labels(profiles[z], distance=200)
    assert np.count_nonzero(gapless == 0) == 0

    cut, _ = link_sections(profiles, membrane=truth == 0, voxel_size=VNC)
    covered, _ = link_sections(gapless, membrane=truth == 0, voxel_size=VNC)

    fg = profiles > 0
    # Same partition of the cell pixels (ids may differ only by numbering).
    pairs = np.unique(np.stack([cut[fg], covered[fg]]), axis=1)
    assert pairs.shape[1] == np.unique(cut[fg]).size == np.unique(covered[fg]).size


def _rectangles(n_z, shape=(64, 64)):
    return np.zeros((n_z, *shape), dtype=np.uint32)


def test_branch_point_joins_both_branches_and_a_small_neighbour_stays_apart():
    profiles = _rectangles(3)
    profiles[0, 10:50, 10:50] = 7  # one profile ...
    profiles[1:, 10:50, 10:32] = 3  # ... that splits into two in the next sections
    profiles[1:, 10:50, 36:50] = 5
    profiles[1:, 52:60, 40:48] = 9  # a small profile that appears beside the cell
    profiles[2, 52:60, 40:48] = 4
    profiles[1, 44:49, 20:25] = 0  # and one lying over the cell's place in section 0 ...
    profiles[1, 45:48, 21:24] = 11  # ... with membrane around it
    profiles[2, 44:49, 20:25] = 3

    linked, report = link_sections(profiles, voxel_size=VNC, margin_nm=5.0)
    cell = linked[0, 30, 30]
    assert linked[1, 30, 20] == linked[1, 30, 40] == linked[2, 30, 20] == linked[2, 30, 40] == cell
    assert linked[1, 46, 22] != cell  # small: its share of the large profile is too small
    assert linked[1, 55, 44] == linked[2, 55, 44] != cell
    assert report.n_branch_points == 1
    assert report.n_cells == 3

    linked, report = link_sections(profiles, voxel_size=VNC, margin_nm=5.0, allow_branches=False)
    # Without branches the profile of section 0 keeps its best match (the wider left part).
    assert linked[1, 30, 20] == linked[0, 30, 30] != linked[1, 30, 40]
    assert report.n_branch_points == 0
    assert report.n_cells == 4


def test_blank_section_breaks_chains_only_there():
    profiles = _rectangles(6)
    for z in range(6):
        profiles[z, 10:30, 10 + z : 30 + z] = 100 + z  # a tube drifting in x
        profiles[z, 40:60, 40:60] = 200 + z
    profiles[2] = 0

    linked, report = link_sections(profiles, voxel_size=VNC)

    assert report.blank_sections == (2,)
    assert report.section_links == (2, 0, 0, 2, 2)
    assert np.isnan(report.section_overlap_fraction[1])
    assert report.n_cells == 4 and report.n_multi_section_cells == 4
    assert np.all(linked[2] == 0)
    tube = linked[:, 20, 25]
    assert tube[0] == tube[1] != tube[3] == tube[4] == tube[5]
    assert report.to_dict()["section_overlap_fraction"][1] is None


def test_a_profile_of_one_section_links_to_nothing():
    profiles = _rectangles(3)
    profiles[1, 5:20, 5:20] = 1
    linked, report = link_sections(profiles, voxel_size=VNC)
    assert (report.n_profiles, report.n_links, report.n_cells) == (1, 0, 1)
    assert report.n_multi_section_cells == report.n_branch_points == 0
    assert report.section_links == (0, 0)
    assert report.blank_sections == (0, 2)
    assert np.isnan(report.mean_overlap_fraction)
    assert linked.max() == 1


@pytest.mark.parametrize(
    "profiles, kwargs, message",
    [
        (np.ones((8, 8), np.uint32), {}, "3-D"),
        (np.ones((2, 8, 8), np.float32), {}, "integer labels.*float32"),
        (np.ones((2, 8, 8), bool), {}, "integer labels.*bool"),
        (-np.ones((2, 8, 8), np.int32), {}, "negative"),
        (np.ones((2, 8, 8), np.uint32), {"membrane": np.zeros((2, 8, 9), bool)}, "membrane"),
        (np.ones((2, 8, 8), np.uint32), {"voxel_size": (4.6, 4.6)}, "voxel_size"),
        (np.ones((2, 8, 8), np.uint32), {"min_overlap": 0.0}, "min_overlap"),
        (np.ones((2, 8, 8), np.uint32), {"min_branch_overlap": 1.5}, "min_branch_overlap"),
        (np.ones((2, 8, 8), np.uint32), {"margin_nm": -1.0}, "margin_nm"),
    ],
)
def test_bad_input_is_refused(profiles, kwargs, message):
    kwargs = {"voxel_size": VNC, **kwargs}
    with pytest.raises(ValueError, match=message):
        link_sections(profiles, **kwargs)


@pytest.fixture(scope="module")
def vnc_linked():
    path = shared_file("vnc_sstem_train.h5")
    with h5py.File(path, "r") as f:
        # Half of the stack in y keeps the test quick; all 20 sections.
        profiles = f["volumes/labels/neuron_ids_2d"][:, :512]
        membrane = f["volumes/labels/membrane_mask"][:, :512]
        voxel_size = tuple(f["volumes/raw"].attrs["resolution"])
    linked, report = link_sections(profiles, membrane=membrane, voxel_size=voxel_size)
    return profiles, linked, report


def test_real_serial_sections_link_into_plausible_cells(vnc_linked):
    profiles, linked, report = vnc_linked
    fg = profiles > 0
    np.testing.assert_array_equal(linked > 0, fg)
    assert report.blank_sections == ()
    assert report.n_cells < report.n_profiles / 3
    assert report.n_multi_section_cells > report.n_cells / 2
    assert report.mean_overlap_fraction > 0.8

    # Keys of (section, cell) and (section, profile) pairs; all ids here are small.
    n_z = linked.shape[0]
    z = np.broadcast_to(np.arange(n_z)[:, None, None], linked.shape)[fg].astype(np.int64)
    cell = linked[fg].astype(np.int64)
    profile = z * (int(profiles.max()) + 1) + profiles[fg].astype(np.int64)
    section_cell = np.unique(cell * n_z + z)
    sections_of = np.bincount(section_cell // n_z)
    assert np.count_nonzero(sections_of >= 10) >= 30  # many cells cross half the stack
    assert np.count_nonzero(sections_of == n_z) >= 15

    # No run-away merge: one-sided best matches without the branch condition
    # (min_branch_overlap=0) join a quarter of this crop's pixels into one cell; the largest
    # cell here, a thick process crossing the whole stack, holds about 12 %.
    assert np.bincount(cell).max() < 0.2 * cell.size

    # Every profile keeps a single id, and (section, cell) pairs made of more than one
    # profile (branch joins) are rare.
    assert np.unique(profile * (report.n_cells + 1) + cell).size == report.n_profiles
    assert report.n_profiles - section_cell.size < 0.05 * report.n_profiles
