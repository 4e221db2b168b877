"""CloudVolume reads the served precomputed layers bit for bit, and the served meshes."""

import numpy as np
import pytest

from connectome.imports.volumes import import_volume
from connectome.jobs.models import Job
from connectome.jobs.services import job_run_inline
from detection.cells.meshes import mesh_area, mesh_block
from detection.io.zarr_store import open_multiscale
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import DatasetFactory

cloudvolume = pytest.importorskip("cloudvolume", reason="cloud-volume is not installed "
                                  "(pip install cloud-volume; it is in the test extra)")

pytestmark = pytest.mark.django_db(transaction=True)

VOXEL = (40.0, 8.0, 8.0)
# y and x above 256: the layers get a downsampled level 1, which CloudVolume reads too.
SHAPE = (12, 300, 280)


@pytest.fixture(autouse=True)
def close_connections():
    """CloudVolume keeps its HTTP connections open; each holds a live-server thread and its
    database connection, which would keep the test database in use. Close them at the end."""
    yield
    from cloudfiles.interfaces import HttpInterface

    from tests.browser.conftest import _wait_for_request_threads

    HttpInterface.adaptor.close()
    _wait_for_request_threads()


@pytest.fixture
def phantom_layers(data_root, tmp_path):
    phantom = make_phantom(SHAPE, voxel_size=VOXEL, n_cells=10, n_synapses=4, seed=9)
    path = write_phantom_h5(phantom, tmp_path / "phantom.h5")
    dataset = DatasetFactory(is_public=True, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2])
    em = import_volume(dataset=dataset, source=str(path), name="em",
                       dataset_path="volumes/raw", chunks=(4, 64, 64))
    seg = import_volume(dataset=dataset, source=str(path), name="segmentation",
                        kind="segmentation", dataset_path="volumes/labels/neuron_ids",
                        chunks=(4, 64, 64))
    return dataset, em, seg, phantom


def _volume(live_server, layer, mip=0):
    return cloudvolume.CloudVolume(
        f"precomputed://{live_server.url}/viewer/layers/{layer.pk}", mip=mip, progress=False,
        fill_missing=False, cache=False, parallel=1)


@pytest.mark.parametrize("which", ["em", "segmentation"])
def test_cloudvolume_reads_every_level_bit_for_bit(live_server, phantom_layers, which):
    _, em, seg, _ = phantom_layers
    layer = em if which == "em" else seg
    group, meta = open_multiscale(layer.path)
    assert meta["levels"] >= 2
    for mip in range(meta["levels"]):
        stored = group[meta["paths"][mip]][...]
        volume = _volume(live_server, layer, mip)
        assert tuple(volume.shape[:3]) == stored.shape[::-1]
        assert tuple(volume.resolution) == tuple(
            v * f for v, f in zip(VOXEL[::-1], meta["factors"][mip][::-1]))
        read = np.asarray(volume[:, :, :])[..., 0]          # x, y, z
        assert read.dtype == (np.uint64 if which == "segmentation" else np.uint8)
        np.testing.assert_array_equal(read.transpose(2, 1, 0), stored)
    # A box that cuts through chunks, too.
    volume = _volume(live_server, layer)
    part = np.asarray(volume[10:150, 70:260, 3:9])[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(part, group[meta["paths"][0]][3:9, 70:260, 10:150])


def test_cloudvolume_reads_the_meshes(live_server, phantom_layers):
    dataset, _, seg, phantom = phantom_layers
    job = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                         parameters={"segmentation_layer": seg.pk, "block_shape": [6, 128, 128],
                                     "simplification_factor": 0})
    assert job.state == Job.State.DONE, job.error
    volume = _volume(live_server, seg)
    segment = int(np.bincount(phantom.segmentation.ravel().astype(np.int64))[1:].argmax() + 1)
    mesh = volume.mesh.get(segment)
    mesh = mesh[segment] if isinstance(mesh, dict) else mesh
    whole = {f.segment_id: f for f in mesh_block(np.pad(phantom.segmentation, 1),
                                                 voxel_size=VOXEL, offset=(-1, -1, -1))}
    expected = whole[segment]
    assert len(mesh.faces) == len(expected.faces)
    assert mesh_area(mesh.vertices, mesh.faces) == pytest.approx(
        mesh_area(expected.vertices, expected.faces), rel=1e-6)
    where = np.argwhere(phantom.segmentation == segment)
    np.testing.assert_allclose(mesh.vertices.min(axis=0),
                               where.min(axis=0)[::-1] * np.array(VOXEL[::-1]), atol=1e-3)
