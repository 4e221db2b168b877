"""Tests for the synthetic EM phantom (detection.synthetic.phantom)."""

from __future__ import annotations

import functools
import json
import logging

import h5py
import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from detection.synthetic.phantom import (
    CELL_TYPES,
    Phantom,
    PhantomSynapse,
    make_phantom,
    synapse_table,
    write_phantom_h5,
)

ANISO = (40.0, 8.0, 8.0)
ISO = (8.0, 8.0, 8.0)
# ~0.5-0.8 um^3 each, about a second to generate
SMALL = {
    ANISO: dict(shape=(20, 128, 128), voxel_size=ANISO, n_cells=10, n_synapses=8, seed=1),
    ISO: dict(shape=(64, 128, 128), voxel_size=ISO, n_cells=10, n_synapses=8, seed=1),
}
MAX_CLOUD_RADIUS_NM = 145.0


@functools.lru_cache(maxsize=None)
def _cached(voxel_size, **overrides) -> Phantom:
    kw = dict(SMALL[voxel_size])
    kw.update(overrides)
    return make_phantom(**kw)


def small(voxel_size=ANISO, **overrides) -> Phantom:
    """Shared phantom per parameter set; tests must not modify it."""
    return _cached(voxel_size, **overrides)


def voxel_of(point_nm, voxel_size):
    return tuple(int(i) for i in np.rint(np.asarray(point_nm) / np.asarray(voxel_size)))


both_voxel_sizes = pytest.mark.parametrize("vs", [ANISO, ISO], ids=["aniso", "iso"])


# --------------------------------------------------------------------------
# arrays


@both_voxel_sizes
def test_shapes_and_dtypes(vs):
    p = small(vs)
    shape = SMALL[vs]["shape"]
    expected = {
        "em": np.uint8,
        "segmentation": np.uint64,
        "synapse_labels": np.uint32,
        "mitochondria": np.bool_,
        "vesicles": np.bool_,
    }
    for name, dtype in expected.items():
        arr = getattr(p, name)
        assert arr.shape == shape, name
        assert arr.dtype == dtype, name
    assert p.shape == shape
    assert p.voxel_size == vs
    assert p.seed == 1
    json.dumps(p.params)  # must be JSON-serialisable
    assert p.params["n_synapses_placed"] == len(p.synapses)
    assert p.params["section_jitter"] == (1.0 if vs == ANISO else 0.0)


def test_deterministic_for_a_seed_and_different_across_seeds():
    kw = dict(shape=(8, 64, 64), voxel_size=ANISO, n_cells=6, n_synapses=3, seed=5)
    a = make_phantom(**kw)
    b = make_phantom(**kw)
    for name in ("em", "segmentation", "synapse_labels", "mitochondria", "vesicles"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.synapses == b.synapses
    assert a.cell_types == b.cell_types
    assert a.params == b.params

    c = make_phantom(**{**kw, "seed": 6})
    assert not np.array_equal(a.segmentation, c.segmentation)
    assert not np.array_equal(a.em, c.em)
    assert a.synapses != c.synapses


# --------------------------------------------------------------------------
# cells and membranes


@both_voxel_sizes
def test_all_cells_present_and_separated_by_membrane(vs):
    p = small(vs)
    seg = p.segmentation
    n = SMALL[vs]["n_cells"]
    assert p.params["n_cells_generated"] == n
    np.testing.assert_array_equal(np.unique(seg), np.arange(n + 1))
    assert sorted(p.cell_types) == list(range(1, n + 1))
    assert set(p.cell_types.values()) <= set(CELL_TYPES)
    # no two different cells may touch across a voxel face
    for axis in range(3):
        a = np.moveaxis(seg, axis, 0)
        lo, hi = a[:-1], a[1:]
        clash = (lo != hi) & (lo != 0) & (hi != 0)
        assert not clash.any(), f"cells touch along axis {axis}"
    # membranes are a thin minority of the volume, not a background
    membrane = np.mean(seg == 0)
    assert 0.02 < membrane < 0.3


def test_membrane_thickness_is_physical():
    thin = make_phantom((24, 96, 96), voxel_size=ISO, n_cells=8, n_synapses=0, membrane_nm=16.0)
    thick = make_phantom((24, 96, 96), voxel_size=ISO, n_cells=8, n_synapses=0, membrane_nm=40.0)
    f_thin = np.mean(thin.segmentation == 0)
    f_thick = np.mean(thick.segmentation == 0)
    # band volume scales with thickness (same seed, same cell boundaries)
    assert 1.8 < f_thick / f_thin < 3.2
    # in-plane runs of membrane across a boundary are ~thickness / voxel long
    runs = []
    for row in thick.segmentation[12, ::8]:
        edges = np.flatnonzero(np.diff(np.r_[0, (row == 0).astype(int), 0]))
        runs.extend(edges[1::2] - edges[::2])
    assert 3 <= np.median(runs) <= 8  # 40 nm at 8 nm/voxel, allowing oblique cuts


def test_cells_are_isotropic_in_nm_for_anisotropic_voxels():
    p = make_phantom((32, 128, 128), voxel_size=ANISO, n_cells=40, n_synapses=0, seed=3)
    seg = p.segmentation
    spreads = []
    for cid in range(1, 41):
        idx = np.argwhere(seg == cid) * np.asarray(ANISO)
        # cells truncated by the thin z extent would bias the comparison
        if idx[:, 0].min() == 0 or idx[:, 0].max() >= (32 - 1) * ANISO[0]:
            continue
        spreads.append(idx.std(axis=0))
    spreads = np.asarray(spreads)
    assert len(spreads) >= 5
    z, y, x = np.median(spreads, axis=0)
    # in voxel units z would be 5x smaller than y/x
    assert 0.6 < z / y < 1.6
    assert 0.6 < z / x < 1.6


def test_vanished_cells_are_renumbered(caplog):
    with caplog.at_level(logging.WARNING, logger="detection.synthetic.phantom"):
        p = make_phantom((6, 24, 24), voxel_size=ISO, n_cells=200, n_synapses=0)
    k = p.params["n_cells_generated"]
    assert 1 < k < 200
    assert "have no voxel" in caplog.text
    np.testing.assert_array_equal(np.unique(p.segmentation), np.arange(k + 1))
    assert sorted(p.cell_types) == list(range(1, k + 1))


# --------------------------------------------------------------------------
# synapses


@both_voxel_sizes
def test_requested_number_of_synapses_is_placed(vs):
    p = small(vs)
    n = SMALL[vs]["n_synapses"]
    assert len(p.synapses) == n
    assert [s.synapse_id for s in p.synapses] == list(range(1, n + 1))
    np.testing.assert_array_equal(np.unique(p.synapse_labels), np.arange(n + 1))
    counts = np.bincount(p.synapse_labels.ravel(), minlength=n + 1)
    assert [s.size_voxels for s in p.synapses] == counts[1:].tolist()


@both_voxel_sizes
def test_synapse_points_lie_in_the_right_cells(vs):
    p = small(vs)
    seg = p.segmentation
    v = np.asarray(vs)
    reach = np.ceil((24.0 + v.max()) / v).astype(int)  # membrane + one voxel, per axis
    for s in p.synapses:
        assert isinstance(s, PhantomSynapse)
        assert s.pre_id > 0 and s.post_id > 0 and s.pre_id != s.post_id
        assert seg[voxel_of(s.pre_point, vs)] == s.pre_id
        assert seg[voxel_of(s.post_point, vs)] == s.post_id
        c = voxel_of(s.center, vs)
        assert seg[c] == 0, "center must lie on the cleft membrane"
        assert p.synapse_labels[c] == s.synapse_id
        # pre and post cells touch at the center: both within a membrane of it
        box = tuple(slice(max(0, i - r), i + r + 1) for i, r in zip(c, reach))
        near = set(np.unique(seg[box]).tolist())
        assert {s.pre_id, s.post_id} <= near
        # points are close to the contact (nm), pre deeper than post
        assert np.linalg.norm(np.subtract(s.pre_point, s.center)) < 250.0
        assert np.linalg.norm(np.subtract(s.post_point, s.center)) < 150.0
        assert s.contact_area_nm2 > 0.25 * np.pi * 45.0**2
        assert s.contact_area_nm2 < np.pi * 160.0**2


@both_voxel_sizes
def test_synapse_labels_are_cleft_and_postsynaptic_psd(vs):
    p = small(vs)
    seg = p.segmentation
    for s in p.synapses:
        owners = seg[p.synapse_labels == s.synapse_id]
        cleft = np.count_nonzero(owners == 0)
        psd = np.count_nonzero(owners == s.post_id)
        assert cleft > 0 and psd > 0
        # nothing in the presynaptic cell or in bystander cells
        assert cleft + psd == owners.size
        # the post point sits just behind this synapse's PSD
        psd_nm = np.argwhere((p.synapse_labels == s.synapse_id) & (seg > 0)) * np.asarray(vs)
        gap = np.min(np.linalg.norm(psd_nm - np.asarray(s.post_point), axis=1))
        assert 0 < gap <= 2 * max(vs) + 1e-6


@both_voxel_sizes
def test_psd_and_membrane_are_darker_than_cytoplasm(vs):
    p = small(vs)
    seg, em = p.segmentation, p.em.astype(float)
    psd = (p.synapse_labels > 0) & (seg > 0)
    cyto = (seg > 0) & (p.synapse_labels == 0) & ~p.vesicles & ~p.mitochondria
    membrane = (seg == 0) & (p.synapse_labels == 0)
    c = em[cyto].mean()
    assert 140 < c < 190
    assert em[psd].mean() < c - 60
    assert em[membrane].mean() < c - 40
    assert em[p.mitochondria].mean() < c - 25


@both_voxel_sizes
def test_vesicles_are_on_the_presynaptic_side(vs):
    p = small(vs)
    seg = p.segmentation
    v = np.asarray(vs)
    ves = np.argwhere(p.vesicles)
    assert len(ves) > 0
    assert np.all(seg[p.vesicles] > 0)
    sites = {}
    for s in p.synapses:
        sites[s.site_id] = (s.pre_id, s.pre_point)
        assert p.vesicles[voxel_of(s.pre_point, vs)], "pre_point must be in the vesicle cloud"
    pre_ids = np.array([sites[k][0] for k in sorted(sites)])
    tree = cKDTree(np.array([sites[k][1] for k in sorted(sites)]))
    ves_nm = ves * v
    owners = seg[tuple(ves.T)]
    # every cloud voxel belongs to the presynaptic cell of a site nearby
    for pos, owner in zip(ves_nm, owners):
        near = tree.query_ball_point(pos, MAX_CLOUD_RADIUS_NM + 1.0)
        assert any(pre_ids[i] == owner for i in near)
    # and each site's cloud is in its pre cell, never its partners'
    for s in p.synapses:
        d = np.linalg.norm(ves_nm - np.asarray(s.pre_point), axis=1)
        mine = owners[d <= 60.0]
        assert mine.size > 0
        assert np.all(mine == s.pre_id)


@both_voxel_sizes
def test_synapses_do_not_overlap(vs):
    p = small(vs)
    # one label per voxel is guaranteed by the array; check clouds and PSDs
    assert not np.any(p.vesicles & (p.synapse_labels > 0))
    assert not np.any(p.mitochondria & (p.synapse_labels > 0))
    assert not np.any(p.mitochondria & p.vesicles)
    # distinct synapse ids form their own components (no fused contacts)
    for s in p.synapses:
        _, n = ndi.label(p.synapse_labels == s.synapse_id, structure=np.ones((3, 3, 3)))
        assert n <= 2  # cleft + PSD, which touch; 2 only for a cut at the volume face


def test_polyadic_sites_share_pre_and_have_distinct_partners():
    p = make_phantom(
        (24, 160, 160), voxel_size=ANISO, n_cells=14, n_synapses=10, polyadic_fraction=0.6, seed=2
    )
    assert len(p.synapses) == 10
    groups = {}
    for s in p.synapses:
        groups.setdefault(s.site_id, []).append(s)
    poly = [g for g in groups.values() if len(g) > 1]
    assert poly, "polyadic_fraction > 0 must produce polyadic sites"
    assert sum(len(g) for g in poly) >= 4
    for g in poly:
        assert 2 <= len(g) <= 3
        assert len({s.pre_id for s in g}) == 1
        assert len({s.pre_point for s in g}) == 1
        posts = [s.post_id for s in g]
        assert len(set(posts)) == len(posts)
        assert g[0].pre_id not in posts
        # every partner has its own PSD in its own cell
        for s in g:
            owners = p.segmentation[p.synapse_labels == s.synapse_id]
            assert np.count_nonzero(owners == s.post_id) > 0


def test_no_polyadic_sites_when_fraction_is_zero():
    p = small(ANISO, polyadic_fraction=0.0)
    assert len(p.synapses) == 8
    assert len({s.site_id for s in p.synapses}) == 8


def test_too_many_synapses_logs_warning_and_returns_those_placed(caplog):
    with caplog.at_level(logging.WARNING, logger="detection.synthetic.phantom"):
        p = make_phantom((8, 64, 64), voxel_size=ANISO, n_cells=6, n_synapses=200, seed=0)
    assert 0 < len(p.synapses) < 200
    assert "placed %d of 200" % len(p.synapses) in caplog.text
    assert p.params["n_synapses_placed"] == len(p.synapses)
    np.testing.assert_array_equal(np.unique(p.synapse_labels), np.arange(len(p.synapses) + 1))


def test_synapse_table_convention():
    p = small(ANISO)
    rows = synapse_table(p)
    assert len(rows) == len(p.synapses)
    for row, s in zip(rows, p.synapses):
        assert set(row) == {"syn_id", "pre", "pre_id", "post", "post_id", "x_pos", "y_pos", "z_pos", "size"}
        assert row["syn_id"] == s.synapse_id
        assert (row["pre"], row["post"]) == (s.pre_id, s.post_id)
        assert row["pre_id"] == s.site_id
        assert row["post_id"] == s.synapse_id
        assert (row["z_pos"], row["y_pos"], row["x_pos"]) == s.center
        assert row["size"] == s.size_voxels
        assert type(row["pre"]) is int and type(row["x_pos"]) is float


# --------------------------------------------------------------------------
# mitochondria and image


@both_voxel_sizes
def test_mitochondria_stay_inside_single_cells(vs):
    p = small(vs)
    assert p.params["n_mitochondria_placed"] > 0
    assert p.mitochondria.any()
    seg = p.segmentation
    assert np.all(seg[p.mitochondria] > 0)
    comps, n = ndi.label(p.mitochondria)
    for i in range(1, n + 1):
        assert np.unique(seg[comps == i]).size == 1


def test_noise_sigma_controls_noise():
    kw = dict(shape=(6, 96, 96), voxel_size=ISO, n_cells=4, n_synapses=0, n_mitochondria=0, seed=4)
    quiet = make_phantom(**kw, noise_sigma=0.0)
    loud = make_phantom(**kw, noise_sigma=20.0)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = True
    inner = ndi.binary_erosion(quiet.segmentation > 0, structure=in_plane, iterations=3)
    assert inner.sum() > 10_000

    def hf(em):
        em = em.astype(float)
        return np.std((em - ndi.uniform_filter(em, size=(1, 3, 3)))[inner])

    assert hf(loud.em) > 3 * hf(quiet.em)
    assert 8 < hf(loud.em) < 25


def test_section_jitter_varies_section_brightness():
    kw = dict(shape=(24, 96, 96), voxel_size=ANISO, n_cells=8, n_synapses=0, seed=4)
    still = make_phantom(**kw, section_jitter=0.0)
    shaky = make_phantom(**kw, section_jitter=3.0)

    def spread(p):
        cyto = p.segmentation > 0
        return np.std([p.em[z][cyto[z]].mean() for z in range(p.em.shape[0])])

    assert spread(shaky) > 2 * spread(still) + 3
    # misalignment is in the geometry: it moves boundaries but keeps labels valid
    assert not np.array_equal(still.segmentation, shaky.segmentation)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_phantom((8, 32), n_synapses=0)
    with pytest.raises(ValueError):
        make_phantom((8, 32, 32), n_cells=1)
    with pytest.raises(ValueError):
        make_phantom((8, 32, 32), voxel_size=(0, 8, 8))
    with pytest.raises(ValueError):
        make_phantom((8, 32, 32), polyadic_fraction=1.5)
    with pytest.raises(ValueError):
        make_phantom((8, 32, 32), seed=-1)


# --------------------------------------------------------------------------
# HDF5


def test_write_phantom_h5_round_trip(tmp_path):
    p = small(ANISO)
    path = write_phantom_h5(p, tmp_path / "phantom.h5")
    assert path.exists()
    with h5py.File(path, "r") as f:
        assert "phantom" in f.attrs["description"].lower()
        assert json.loads(f.attrs["params"]) == p.params
        assert {int(k): v for k, v in json.loads(f.attrs["cell_types"]).items()} == p.cell_types
        raw = f["volumes/raw"]
        assert raw.dtype == np.uint8
        np.testing.assert_array_equal(raw[...], p.em)
        np.testing.assert_allclose(raw.attrs["resolution"], ANISO)
        ids = f["volumes/labels/neuron_ids"]
        assert ids.dtype == np.uint64
        np.testing.assert_array_equal(ids[...], p.segmentation)
        clefts = f["volumes/labels/clefts"]
        assert clefts.dtype == np.uint64
        np.testing.assert_array_equal(clefts[...], p.synapse_labels)
        mito = f["volumes/labels/mitochondria"]
        assert mito.dtype == np.uint8
        np.testing.assert_array_equal(mito[...].astype(bool), p.mitochondria)
        np.testing.assert_array_equal(f["volumes/labels/vesicles"][...].astype(bool), p.vesicles)

        table = f["annotations/synapses"][...]
        assert len(table) == len(p.synapses)
        for row, s in zip(table, p.synapses):
            assert row["synapse_id"] == s.synapse_id
            assert row["site_id"] == s.site_id
            assert (row["pre_id"], row["post_id"]) == (s.pre_id, s.post_id)
            np.testing.assert_allclose(row["pre_point"], s.pre_point)
            np.testing.assert_allclose(row["post_point"], s.post_point)
            np.testing.assert_allclose(row["center"], s.center)
            assert row["size_voxels"] == s.size_voxels

        # CREMI-style annotations: partners link pre (site) to post locations
        ann_ids = f["annotations/ids"][...]
        locs = f["annotations/locations"][...]
        types = [t.decode() if isinstance(t, bytes) else t for t in f["annotations/types"][...]]
        partners = f["annotations/presynaptic_site/partners"][...]
        assert len(ann_ids) == len(set(ann_ids.tolist())) == len(locs) == len(types)
        by_id = {int(i): (tuple(loc), t) for i, loc, t in zip(ann_ids, locs, types)}
        assert partners.shape == (len(p.synapses), 2)
        for (pre_a, post_a), s in zip(partners, p.synapses):
            assert by_id[int(pre_a)] == (s.pre_point, "presynaptic_site")
            assert by_id[int(post_a)] == (s.post_point, "postsynaptic_site")
