"""Section linking slab by slab equals linking the whole stack (detection.cells.slab_linking)."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from detection.cells.section_linking import link_sections
from detection.cells.slab_linking import (
    SlabProfiles,
    join_slabs,
    link_by_slabs,
    link_slab,
    read_start,
    slab_ranges,
)
from detection.errors import InputError
from tests.conftest import shared_file
from tests.detection.test_section_linking import _per_section_profiles, _phantom

VNC = (50.0, 4.6, 4.6)


def _assert_same(slabbed, whole):
    (labels, report), (expected, expected_report) = slabbed, whole
    np.testing.assert_array_equal(labels, expected)
    got, want = report.to_dict(), expected_report.to_dict()
    mean, want_mean = got.pop("mean_overlap_fraction"), want.pop("mean_overlap_fraction")
    assert got == want
    assert (mean is None and want_mean is None) or mean == pytest.approx(want_mean, rel=1e-12)


@pytest.fixture(scope="module")
def stack():
    phantom = _phantom(VNC, (16, 96, 96), 4)
    profiles = _per_section_profiles(phantom.segmentation, seed=1)
    membrane = phantom.segmentation == 0
    profiles[6] = 0                       # a blank section breaks every chain there
    return profiles, membrane


@pytest.mark.parametrize("slab_sections", [1, 2, 3, 5, 15, 16, 40])
@pytest.mark.parametrize("allow_branches", [True, False])
def test_slabs_equal_the_whole_stack(stack, slab_sections, allow_branches):
    profiles, membrane = stack
    options = {"voxel_size": VNC, "membrane": membrane, "allow_branches": allow_branches,
               "min_overlap": 0.4}
    whole = link_sections(profiles, **options)
    assert whole[1].n_cells < whole[1].n_profiles / 2 and whole[1].blank_sections == (6,)
    _assert_same(link_by_slabs(profiles, slab_sections=slab_sections, **options), whole)


def test_a_branch_across_a_slab_border_is_joined():
    # One profile in section 1 splits into two in section 2; slabs of one section each.
    profiles = np.zeros((3, 20, 40), dtype=np.uint32)
    profiles[0, 2:18, 2:38] = 5
    profiles[1, 2:18, 2:38] = 9
    profiles[2, 2:18, 2:19] = 1
    profiles[2, 2:18, 21:38] = 2
    whole = link_sections(profiles, voxel_size=(40, 8, 8), margin_nm=8)
    assert whole[1].n_cells == 1 and whole[1].n_branch_points == 1
    _assert_same(link_by_slabs(profiles, slab_sections=1, voxel_size=(40, 8, 8), margin_nm=8),
                 whole)


def test_slab_profiles_round_trip_and_bad_slabs_are_refused(stack, tmp_path):
    profiles, membrane = stack
    slab = link_slab(profiles[3:9], start=3, membrane=membrane[3:9], voxel_size=VNC)
    slab.save(tmp_path / "slab.npz")
    loaded = SlabProfiles.load(tmp_path / "slab.npz")
    for name in ("z", "ids", "cell"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(slab, name))
    assert loaded.start == 3 and loaded.report.to_dict() == slab.report.to_dict()
    assert math.isnan(loaded.report.section_overlap_fraction[2])      # blank section 6

    slabs = [link_slab(profiles[read_start(a):b], start=read_start(a), voxel_size=VNC)
             for a, b in slab_ranges(16, 4)]
    with pytest.raises(InputError, match="does not continue"):
        join_slabs([slabs[0], slabs[2], slabs[3]], n_sections=16)
    with pytest.raises(InputError, match="not all 16"):
        join_slabs(slabs[:3], n_sections=16)
    cells, _ = join_slabs(slabs, n_sections=16)
    with pytest.raises(InputError, match="section 0: profile 123456789 is not one"):
        cells.relabel(np.full((2, 2), 123456789), z=0)


def test_real_vnc_profiles_slab_by_slab():
    path = shared_file("vnc_sstem_train.h5")
    with h5py.File(path, "r") as f:
        profiles = f["volumes/labels/neuron_ids_2d"][:, :256]
        membrane = f["volumes/labels/membrane_mask"][:, :256]
    whole = link_sections(profiles, membrane=membrane, voxel_size=VNC)
    assert whole[1].n_links > 500
    _assert_same(link_by_slabs(profiles, slab_sections=6, membrane=membrane, voxel_size=VNC),
                 whole)
