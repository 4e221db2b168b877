"""Skeletons: SWC in and out, one-query loads, skeletonization of a segmentation layer."""

import numpy as np
import pytest
from django.core.management import call_command

from connectome.cells.models import Skeleton
from connectome.imports.skeletons import (
    export_skeletons,
    import_skeletons,
    skeleton_nodes,
    skeletonize_layer,
)
from connectome.imports.volumes import import_volume
from detection.io.swc import SkeletonNodes, SwcFormatError, read_swc, write_swc
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import CellFactory, DatasetFactory

pytestmark = pytest.mark.django_db


def _chain(n, *, seed=0):
    rng = np.random.default_rng(seed)
    parent = np.arange(-1, n - 1, dtype=np.int64)
    parent[1:] += 1  # node ids start at 1; node i's parent is i - 1
    return SkeletonNodes(
        node_id=np.arange(1, n + 1, dtype=np.int64), parent_id=parent,
        zyx=np.cumsum(rng.normal(0, 10, size=(n, 3)), axis=0),
        radius=rng.uniform(10, 100, n).astype(np.float32),
        compartment=rng.integers(0, 4, n).astype(np.int16),
    )


def test_100k_node_skeleton_round_trips_and_loads_in_one_query(tmp_path, django_assert_num_queries):
    dataset = DatasetFactory()
    cell = CellFactory(dataset=dataset, segment_id=2**63 + 9)
    nodes = _chain(100_000)
    write_swc(tmp_path / f"{cell.segment_id}.swc", nodes)
    (stored,) = import_skeletons(dataset=dataset, source=str(tmp_path / f"{cell.segment_id}.swc"))
    assert stored.n_nodes == 100_000
    steps = np.linalg.norm(np.diff(nodes.zyx, axis=0), axis=1).sum()
    assert stored.cable_length_nm == pytest.approx(steps, rel=1e-9)

    with django_assert_num_queries(1):
        loaded = skeleton_nodes(Skeleton.objects.get(cell=cell))
    np.testing.assert_array_equal(loaded.parent_id, nodes.parent_id)
    np.testing.assert_allclose(loaded.zyx, nodes.zyx, rtol=1e-12)

    out = tmp_path / "out"
    call_command("export_skeletons", str(dataset.pk), str(out))
    again = read_swc(out / f"{cell.segment_id}.swc")
    np.testing.assert_array_equal(again.node_id, nodes.node_id)
    np.testing.assert_allclose(again.zyx, nodes.zyx, rtol=1e-12)
    np.testing.assert_array_equal(again.compartment, nodes.compartment)


def test_folder_with_one_bad_file_imports_nothing(tmp_path):
    dataset = DatasetFactory()
    for seg in (3, 4):
        CellFactory(dataset=dataset, segment_id=seg)
    write_swc(tmp_path / "3.swc", _chain(5))
    (tmp_path / "4.swc").write_text("1 0 0 0 0 1 -1\n2 0 1 x 0 1 1\n")
    with pytest.raises(SwcFormatError, match=r"4\.swc.*line 2.*y"):
        import_skeletons(dataset=dataset, source=str(tmp_path))
    assert not Skeleton.objects.exists()


def test_swc_for_an_unknown_cell_is_refused(tmp_path):
    dataset = DatasetFactory()
    write_swc(tmp_path / "99.swc", _chain(3))
    with pytest.raises(ValueError, match=r"99\.swc: no cell with segment id or name '99'"):
        import_skeletons(dataset=dataset, source=str(tmp_path / "99.swc"))
    assert not Skeleton.objects.exists()


def test_skeletonize_a_segmentation_layer(data_root, tmp_path):
    phantom = make_phantom((24, 160, 160), voxel_size=(40.0, 8.0, 8.0), n_cells=6,
                           n_synapses=4, seed=3)
    path = write_phantom_h5(phantom, tmp_path / "phantom.h5")
    dataset = DatasetFactory()
    layer = import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation",
                          dataset_path="volumes/labels/neuron_ids")
    skeletons = skeletonize_layer(layer=layer, min_size_voxels=500, const=200.0)
    assert len(skeletons) == layer.cells.filter(size_voxels__gte=500).count() > 0
    for skeleton in skeletons:
        nodes = skeleton_nodes(skeleton)
        voxels = np.round(nodes.zyx / np.array(dataset.voxel_size)).astype(int)
        voxels = np.clip(voxels, 0, np.array(phantom.segmentation.shape) - 1)
        inside = phantom.segmentation[tuple(voxels.T)] == skeleton.cell.segment_id
        assert inside.mean() > 0.9, (skeleton.cell.segment_id, inside.mean())
        assert (nodes.parent_id == -1).sum() >= 1
