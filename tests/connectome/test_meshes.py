"""The mesh_segmentation job: blocks, the final step, serving, permissions, cancel, resume."""

import gzip
import json
from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from connectome.cells.models import Cell
from connectome.datasets.models import Layer, Membership
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import (
    block_execute,
    blocks_finish,
    blocks_recover_stale,
    job_resume,
)
from connectome.jobs.models import Job, JobBlock, JobLock
from connectome.jobs.services import (
    JobConflict,
    JobParameterError,
    job_cancel,
    job_create,
    job_execute,
    job_run_inline,
)
from connectome.viewer.state import cell_state, synapse_state
from detection.cells.meshes import decode_fragment, mesh_area, mesh_block
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import (
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
BLOCK = [8, 64, 64]


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    phantom = make_phantom((16, 128, 128), voxel_size=VOXEL, n_cells=8, n_synapses=4, seed=5)
    path = tmp_path_factory.mktemp("phantom") / "phantom.h5"
    write_phantom_h5(phantom, path)
    return phantom, path


@pytest.fixture
def segmentation(data_root, phantom_file):
    phantom, path = phantom_file
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2],
                             is_public=True)
    layer = import_volume(dataset=dataset, source=str(path), name="segmentation",
                          kind="segmentation", dataset_path="volumes/labels/neuron_ids",
                          chunks=(8, 64, 64))
    return dataset, layer, phantom.segmentation


def _parameters(layer, **extra):
    return {"segmentation_layer": layer.pk, "block_shape": BLOCK, **extra}


def _url(layer, path):
    return reverse("viewer:layer-data", kwargs={"layer_id": layer.pk, "path": path})


def _get(client, layer, path):
    response = client.get(_url(layer, path))
    body = response.content
    if response.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return response, body


def _served_mesh(client, layer, segment):
    """Vertices and faces of a segment's mesh, read as Neuroglancer does, and the manifest."""
    response, body = _get(client, layer, f"mesh/{segment}:0")
    assert response.status_code == 200, body
    names = json.loads(body)["fragments"]
    vertices, faces, count = [], [], 0
    for name in names:
        response, body = _get(client, layer, f"mesh/{name}")
        assert response.status_code == 200
        assert response["Content-Type"] == "application/octet-stream"
        assert "max-age" in response["Cache-Control"]
        v, f = decode_fragment(body)
        vertices.append(v)
        faces.append(f.astype(np.int64) + count)
        count += len(v)
    return np.concatenate(vertices), np.concatenate(faces), names


def test_the_job_meshes_every_cell_and_the_viewer_serves_them(client, segmentation):
    dataset, layer, labels = segmentation
    assert client.get(_url(layer, "mesh/info")).status_code == 404   # none yet
    _, body = _get(client, layer, "info")
    assert "mesh" not in json.loads(body)

    job = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                         parameters=_parameters(layer, simplification_factor=0))
    assert job.state == Job.State.DONE, job.error
    assert job.progress_done == job.progress_total == 2 * 2 * 2
    segments = sorted(int(s) for s in np.unique(labels) if s)
    assert job.result["segments"] == len(segments)
    layer.refresh_from_db()
    record = layer.parameters["mesh"]
    assert record["job"] == job.pk and record["path"] == f"datasets/{dataset.pk}/jobs/{job.pk}/mesh"
    assert not JobLock.objects.exists()

    _, body = _get(client, layer, "info")
    assert json.loads(body)["mesh"] == "mesh"
    response, body = _get(client, layer, "mesh/info")
    assert json.loads(body) == {"@type": "neuroglancer_legacy_mesh"}

    cell = Cell.objects.get(dataset=dataset, segment_id=segments[0])
    vertices, faces, names = _served_mesh(client, layer, cell.segment_id)
    assert all(name.endswith(f":j{job.pk}") for name in names)
    # In nm, inside the cell's bounding box (the corner convention: voxel i is [i, i + 1)).
    lo = np.array(cell.bbox[0][::-1]) * np.array(VOXEL[::-1])
    hi = np.array(cell.bbox[1][::-1]) * np.array(VOXEL[::-1])
    assert np.all(vertices >= lo - 1e-3) and np.all(vertices <= hi + 1e-3)
    np.testing.assert_allclose(vertices.min(axis=0), lo, atol=VOXEL[0])
    # The blocks' fragments together are the mesh of the whole volume.
    whole = {f.segment_id: f for f in mesh_block(np.pad(labels, 1), voxel_size=VOXEL,
                                                 offset=(-1, -1, -1))}[cell.segment_id]
    assert mesh_area(vertices, faces) == pytest.approx(mesh_area(whole.vertices, whole.faces),
                                                       rel=1e-6)
    # A manifest is revalidated (it changes with the next job); names that are not there 404.
    response = client.get(_url(layer, f"mesh/{cell.segment_id}:0"))
    assert response["Cache-Control"] == "private, no-cache"
    assert response["Content-Type"] == "application/json"
    for bad in ("mesh/999999:0", "mesh/..%2Finfo", f"mesh/{cell.segment_id}:0:1-2_3-4_5-6:j0",
                "mesh/info:0"):
        response = client.get(_url(layer, bad))
        assert response.status_code == 404 and response["Content-Type"] == "application/json"


def test_a_viewer_of_another_dataset_gets_404(client, segmentation):
    dataset, layer, _ = segmentation
    dataset.is_public = False
    dataset.save()
    job_run_inline(kind="mesh_segmentation", dataset=dataset, parameters=_parameters(layer))
    segment = Cell.objects.filter(dataset=dataset).values_list("segment_id", flat=True)[0]
    outsider = UserFactory()
    MembershipFactory(user=outsider, role=Membership.Role.ADMIN)   # of another dataset
    outsider.save()
    client.force_login(outsider)
    for path in ("info", "mesh/info", f"mesh/{segment}:0"):
        assert client.get(_url(layer, path)).status_code == 404
    member = UserFactory()
    MembershipFactory(user=member, dataset=dataset)
    member.save()
    client.force_login(member)
    assert client.get(_url(layer, f"mesh/{segment}:0")).status_code == 200


def test_cancel_leaves_the_old_meshes_and_a_resume_replaces_them(
        client, segmentation, django_capture_on_commit_callbacks):
    dataset, layer, _ = segmentation
    first = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                           parameters=_parameters(layer))
    segment = int(Cell.objects.filter(dataset=dataset).values_list("segment_id", flat=True)[0])
    _, before = _get(client, layer, f"mesh/{segment}:0")
    old_folder = settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{first.pk}/mesh"

    job = job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                     parameters=_parameters(layer, simplification_factor=0))
    job_execute(job_id=job.pk)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    job = job_cancel(job=Job.objects.get(pk=job.pk))
    assert job.state == Job.State.CANCELLED
    assert block_execute(job_id=job.pk, index=1).status == "skipped"
    assert blocks_finish(job_id=job.pk).state == Job.State.CANCELLED
    layer.refresh_from_db()
    assert layer.parameters["mesh"]["job"] == first.pk
    _, after = _get(client, layer, f"mesh/{segment}:0")
    assert after == before

    # Resumed, block 0 is not run again; the new meshes replace the old, whose folder goes.
    assert job_resume(job=job, enqueue=False) == 7
    for index in range(1, 8):
        assert block_execute(job_id=job.pk, index=index).status == "done"
    with django_capture_on_commit_callbacks(execute=True):
        job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    assert job.result["block_attempts"] == 8
    layer.refresh_from_db()
    assert layer.parameters["mesh"]["job"] == job.pk
    _, after = _get(client, layer, f"mesh/{segment}:0")
    assert after != before and f":j{job.pk}".encode() in after
    assert not old_folder.exists()


def test_a_block_whose_worker_died_is_computed_again_to_the_same_files(
        segmentation, settings, monkeypatch):
    dataset, layer, _ = segmentation
    sent = []
    monkeypatch.setattr("connectome.jobs.tasks.run_block.apply_async",
                        lambda args, queue=None, **kw: sent.append(args[1]))
    settings.JOB_STALE_S = 30
    job = job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                     parameters=_parameters(layer))
    job_execute(job_id=job.pk)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    folder = settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{job.pk}/mesh"
    written = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert written
    # Its worker died after writing, before marking it done: the sweep sends it again.
    then = timezone.now() - timedelta(seconds=90)
    JobBlock.objects.filter(job=job, index=0).update(
        state=JobBlock.State.RUNNING, worker="gone:1", started_at=then, heartbeat_at=then)
    Job.objects.filter(pk=job.pk).update(progress_done=0)
    assert blocks_recover_stale(job_id=job.pk) == {job.pk: [0]}
    assert block_execute(job_id=job.pk, index=0).status == "done"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == written
    assert JobBlock.objects.get(job=job, index=0).attempts == 2


def test_segment_ids_remesh_those_and_keep_the_others(client, segmentation):
    dataset, layer, _ = segmentation
    first = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                           parameters=_parameters(layer))
    a, b = (int(s) for s in Cell.objects.filter(dataset=dataset)
            .values_list("segment_id", flat=True)[:2])
    _, kept_before = _get(client, layer, f"mesh/{b}:0")
    job = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                         parameters=_parameters(layer, segment_ids=[a],
                                                simplification_factor=0))
    assert job.state == Job.State.DONE, job.error
    assert job.result["carried_over"] == first.result["segments"] - 1
    _, remeshed = _get(client, layer, f"mesh/{a}:0")
    assert f":j{job.pk}".encode() in remeshed
    _, kept = _get(client, layer, f"mesh/{b}:0")
    assert kept == kept_before     # the first job's fragments, linked into the new folder
    _, faces, _ = _served_mesh(client, layer, b)
    assert len(faces) > 0


def test_bad_parameters_and_a_second_job_on_the_layer_are_refused(segmentation, data_root,
                                                                  tmp_path):
    dataset, layer, _ = segmentation
    em = Layer.objects.create(dataset=dataset, name="em", kind="em", dtype="uint8", shape_z=1,
                              shape_y=1, shape_x=1, chunk_z=1, chunk_y=1, chunk_x=1,
                              storage_path="nowhere")
    with pytest.raises(JobParameterError, match="not a segmentation") as error:
        job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                   parameters=_parameters(em))
    assert "segmentation_layer" in error.value.errors
    with pytest.raises(JobParameterError, match="levels 0 to") as error:
        job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                   parameters=_parameters(layer, level=5))
    assert "level" in error.value.errors
    with pytest.raises(JobParameterError) as error:
        job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                   parameters=_parameters(layer, segment_ids=[0]))
    assert "segment_ids" in error.value.errors
    job = job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                     parameters=_parameters(layer))
    with pytest.raises(JobConflict, match=f"being written by mesh_segmentation job {job.pk}"):
        job_create(kind="mesh_segmentation", dataset=dataset, enqueue=False,
                   parameters=_parameters(layer))


def test_the_api_and_the_admin_start_a_mesh_job(client, segmentation,
                                                django_capture_on_commit_callbacks):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    dataset, layer, _ = segmentation
    api = APIClient()
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    api.force_authenticate(user)
    body = {"kind": "mesh_segmentation", "dataset": dataset.pk,
            "parameters": _parameters(layer, block_shape=[8, 64, 1])}
    response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 400 and "block_shape" in str(response.json())
    body["parameters"]["block_shape"] = BLOCK
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/api/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    assert len(callbacks) == 1
    Job.objects.filter(pk=response.json()["id"]).delete()   # its lock goes with it

    admin = get_user_model().objects.create_superuser("boss", "boss@example.org", "pw")
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/admin/jobs/job/add/", {
            "kind": "mesh_segmentation", "dataset": dataset.pk,
            "parameters": json.dumps(_parameters(layer, level=0))})
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get(kind="mesh_segmentation")
    assert job.created_by == admin and job.parameters["simplification_factor"] == 10


def test_the_cell_and_synapse_states_show_the_meshes_in_3d(segmentation):
    dataset, layer, _ = segmentation
    job_run_inline(kind="mesh_segmentation", dataset=dataset, parameters=_parameters(layer))
    cells = list(Cell.objects.filter(dataset=dataset)[:2])
    state = cell_state(cells[0], base_url="http://testserver")
    assert "3d" in state["layout"] or state["layout"] == "4panel"
    seg = next(item for item in state["layers"] if item["name"] == "segmentation")
    assert seg["segments"] == [str(cells[0].segment_id)]
    assert seg["source"]["url"] == f"precomputed://http://testserver/viewer/layers/{layer.pk}"
    assert seg["source"]["subsources"]["mesh"] is True
    synapse = SynapseFactory(run__dataset=dataset, pre=cells[0], post=cells[1])
    state = synapse_state(synapse, base_url="http://testserver")
    seg = next(item for item in state["layers"] if item["name"] == "segmentation")
    assert seg["source"]["subsources"]["mesh"] is True
    assert set(seg["segments"]) == {str(c.segment_id) for c in cells}


def test_a_downsampled_level_is_meshed_at_its_own_voxel_size(client, data_root, tmp_path):
    import h5py

    labels = np.zeros((6, 300, 260), dtype=np.uint32)
    labels[1:5, 40:200, 60:180] = 9
    path = tmp_path / "box.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("labels", data=labels)
    dataset = DatasetFactory(is_public=True, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2])
    layer = import_volume(dataset=dataset, source=str(path), name="segmentation",
                          kind="segmentation", dataset_path="labels", chunks=(4, 64, 64))
    assert layer.downsample_factors[1] == [1, 2, 2]
    job = job_run_inline(kind="mesh_segmentation", dataset=dataset,
                         parameters=_parameters(layer, level=1, block_shape=[4, 64, 64],
                                                simplification_factor=0))
    assert job.state == Job.State.DONE, job.error
    assert job.progress_total == 2 * 3 * 3     # level 1 is 6 x 150 x 130
    vertices, faces, _ = _served_mesh(client, layer, 9)
    # The same box in nm as at level 0: x 60-180, y 40-200 voxels of 8 nm, z 1-5 of 40 nm.
    np.testing.assert_allclose(vertices.min(axis=0), [60 * 8, 40 * 8, 1 * 40])
    np.testing.assert_allclose(vertices.max(axis=0), [180 * 8, 200 * 8, 5 * 40])
    assert 0.9 < mesh_area(vertices, faces) / (2 * (120 * 8 * 160 * 8 + 4 * 40 * (120 + 160) * 8)) < 1
