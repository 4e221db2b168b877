"""Block-wise detection jobs: blocks, idempotence, stitching, cancel, retry, locks, resume."""

import errno

import numpy as np
import pytest
from django.conf import settings

from connectome.datasets.models import Layer
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import block_execute, blocks_finish, job_resume
from connectome.jobs.models import Job, JobBlock, JobLock
from connectome.jobs.registry import get_job_spec
from connectome.jobs.services import (
    JobConflict,
    JobParameterError,
    job_cancel,
    job_create,
    job_execute,
    job_run_inline,
)
from connectome.pipeline.detection import plan_blocks
from connectome.synapses.models import Synapse, SynapseRun
from detection.blockwise import predict_probability
from detection.io.zarr_store import open_multiscale
from detection.synapses.classify import (
    TrainingParameters,
    clean_targets,
    labels_to_targets,
    train_voxel_classifier,
)
from detection.synapses.features import FeatureSpec
from detection.synapses.instances import find_instances
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import DatasetFactory

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
BLOCK = (8, 64, 64)
THRESHOLDS = {"high": 0.8, "low": 0.5, "min_size": 20}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    phantom = make_phantom((16, 128, 128), voxel_size=VOXEL, n_cells=14, n_synapses=14, seed=1)
    targets = clean_targets(labels_to_targets(phantom.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=16.0)
    model = train_voxel_classifier(
        phantom.em, targets, voxel_size=VOXEL, feature_spec=FeatureSpec(scales_nm=(10.0, 20.0)),
        parameters=TrainingParameters(n_estimators=30, max_samples=30_000))
    return model, model.save(tmp_path_factory.mktemp("model") / "synapses.model")


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    phantom = make_phantom((16, 192, 192), voxel_size=VOXEL, n_cells=14, n_synapses=20, seed=2)
    path = tmp_path_factory.mktemp("phantom") / "phantom.h5"
    write_phantom_h5(phantom, path)
    return phantom, path


@pytest.fixture
def em(data_root, phantom_file):
    phantom, path = phantom_file
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2])
    layer = import_volume(dataset=dataset, source=str(path), name="em", kind="em",
                          dataset_path="volumes/raw")
    return dataset, layer


def detect_parameters(model_path, em_layer, run_name="detected", **extra):
    return {"model": str(model_path), "em_layer": em_layer.pk, "run_name": run_name,
            "block_shape": list(BLOCK), **THRESHOLDS, **extra}


def synapse_table(run_name):
    return list(Synapse.objects.filter(run__name=run_name).order_by("site_id").values_list(
        "site_id", "ctr_z", "ctr_y", "ctr_x", "size_voxels", "size_nm3", "confidence"))


def test_blocks_are_cut_on_the_global_block_grid():
    boxes = plan_blocks((16, 100, 100), (3, 10, 70, 16, 90, 100), (8, 64, 64), (1, 2, 2))
    assert boxes == [((3, 10, 70), (8, 64, 100)), ((3, 64, 70), (8, 90, 100)),
                     ((8, 10, 70), (16, 64, 100)), ((8, 64, 70), (16, 90, 100))]
    # The region starts on the classifier grid (x 71 -> 70 above; y 11 -> 10 here).
    assert plan_blocks((16, 100, 100), (0, 11, 0, 8, 12, 10), (8, 64, 64), (1, 2, 2)) == [
        ((0, 10, 0), (8, 12, 10))]
    with pytest.raises(ValueError, match="empty inside the volume"):
        plan_blocks((16, 100, 100), (0, 0, 120, 8, 10, 130), (8, 64, 64), (1, 1, 1))


def test_detection_job_equals_the_single_process_pipeline(em, model_file, phantom_file):
    (model, path), (phantom, _) = model_file, phantom_file
    dataset, em_layer = em
    job = job_run_inline(kind="detect_synapses", dataset=dataset,
                         parameters=detect_parameters(path, em_layer))
    assert job.state == Job.State.DONE, job.error
    assert job.result["blocks"] == job.progress_total == job.progress_done == 18
    assert job.result["block_attempts"] == 18
    assert not JobLock.objects.filter(job=job).exists()

    # What connectome-detect predict computes in one process with the same blocks.
    expected = predict_probability(phantom.em, model, block_shape=BLOCK,
                                   out=np.zeros(phantom.em.shape, np.uint8))
    labels, candidates = find_instances(expected / 255.0, voxel_size=VOXEL, high=0.8, low=0.5,
                                        min_size_voxels=20)
    assert len(candidates) >= 10
    probability = Layer.objects.get(pk=job.result["probability_layer"])
    instances = Layer.objects.get(pk=job.result["instances_layer"])
    assert (probability.kind, instances.kind) == ("prediction", "synapses")
    assert (probability.name, instances.name) == ("detected probability", "detected synapses")
    np.testing.assert_array_equal(open_multiscale(probability.path)[0]["0"][...], expected)
    np.testing.assert_array_equal(open_multiscale(instances.path)[0]["0"][...], labels)
    rows = synapse_table("detected")
    assert [r[0] for r in rows] == [c.id for c in candidates]
    np.testing.assert_allclose([r[1:4] for r in rows], [c.center for c in candidates])
    assert [r[4] for r in rows] == [c.size_voxels for c in candidates]
    np.testing.assert_allclose([r[6] for r in rows], [c.score for c in candidates])
    # A model without a vesicle head writes no vesicle map.
    assert "vesicles_layer" not in job.result
    assert not Layer.objects.filter(name="detected vesicles").exists()
    assert not (settings.DATA_ROOT / "datasets" / str(dataset.pk) / "jobs" / str(job.pk)
                / "vesicles.zarr").exists()


def test_a_detection_job_runs_the_network_too(em, phantom_file, tmp_path):
    from detection.metrics import match_by_overlap
    from detection.synapses.cnn import CnnParameters, train_cnn

    trained_on = make_phantom((12, 112, 112), voxel_size=VOXEL, n_cells=12, n_synapses=12, seed=31)
    targets = clean_targets(labels_to_targets(trained_on.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=30.0)
    network = train_cnn(trained_on.em, targets, voxel_size=VOXEL, parameters=CnnParameters(
        width=8, depth=2, patch=48, batch=6, iterations=300, learning_rate=3e-3, seed=1))
    path = network.save(tmp_path / "synapses.cnn")
    phantom, _ = phantom_file
    dataset, em_layer = em
    job = job_run_inline(kind="detect_synapses", dataset=dataset,
                         parameters=detect_parameters(path, em_layer, run_name="network"))
    assert job.state == Job.State.DONE, job.error
    stored = open_multiscale(Layer.objects.get(pk=job.result["probability_layer"]).path)[0]["0"][...]
    # The job's blocks give the whole volume's probability (stored as uint8).
    whole = network.predict_region(phantom.em)
    assert np.abs(stored.astype(int) - np.rint(whole * 255)).max() <= 1
    instances = open_multiscale(Layer.objects.get(pk=job.result["instances_layer"]).path)[0]["0"][...]
    scores = match_by_overlap(instances, phantom.synapse_labels)
    assert scores.f1 > 0.7, scores
    assert SynapseRun.objects.get(name="network").synapses.count() == instances.max() >= 10


def test_a_block_run_twice_writes_the_same_output_and_no_extra_rows(em, model_file):
    _, path = model_file
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer, roi=[0, 0, 0, 16, 128, 64]))
    job = job_execute(job_id=job.pk)           # plans; the blocks would go to the workers
    assert job.state == Job.State.RUNNING and job.progress_total == 4
    for index in range(4):
        assert block_execute(job_id=job.pk, index=index).status == "done"
    store = open_multiscale(settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{job.pk}/"
                            "probability.zarr")[0]["0"]
    first = store[...]
    assert first[:, :, 64:].max() == 0 and first.max() > 0   # nothing outside the region
    # A redelivered task of a done block is skipped; a block forced to run again (as when
    # a worker dies after writing but before marking it done) rewrites the same chunks.
    assert block_execute(job_id=job.pk, index=2).status == "skipped"
    JobBlock.objects.filter(job=job, index=2).update(state=JobBlock.State.RUNNING)
    Job.objects.filter(pk=job.pk).update(progress_done=3)
    assert block_execute(job_id=job.pk, index=2).status == "done"
    np.testing.assert_array_equal(store[...], first)
    assert JobBlock.objects.get(job=job, index=2).attempts == 2
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    count = Synapse.objects.filter(run__name="detected").count()
    assert count == job.result["synapses"] > 0
    again = blocks_finish(job_id=job.pk)      # a second final step stores nothing
    assert again.finished_at == job.finished_at
    assert Synapse.objects.filter(run__name="detected").count() == count
    assert SynapseRun.objects.filter(name="detected").count() == 1


def test_cancel_stops_the_blocks_and_stores_nothing(em, model_file):
    _, path = model_file
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer))
    job_execute(job_id=job.pk)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    job = job_cancel(job=Job.objects.get(pk=job.pk))
    assert job.state == Job.State.CANCELLED and job.finished_at is not None
    assert block_execute(job_id=job.pk, index=1).status == "skipped"
    assert JobBlock.objects.get(job=job, index=1).attempts == 0
    assert blocks_finish(job_id=job.pk).state == Job.State.CANCELLED
    assert not SynapseRun.objects.exists() and not JobLock.objects.exists()
    # Resume picks up where it stopped: block 0 is not run again.
    assert job_resume(job=job, enqueue=False) == 17
    for index in range(1, 18):
        block_execute(job_id=job.pk, index=index)
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE and job.result["block_attempts"] == 18


def test_transient_errors_retry_with_backoff_then_fail_the_job_naming_the_block(
        em, model_file, monkeypatch, settings):
    _, path = model_file
    dataset, em_layer = em
    settings.JOB_BLOCK_RETRY_BACKOFF_S = 1.5
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer, max_attempts=3))
    job_execute(job_id=job.pk)
    spec = get_job_spec("detect_synapses")
    calls = []

    def flaky(job, box, parameters):
        calls.append(box)
        if len(calls) == 1:
            raise OSError("stale file handle")
        return spec.block(job, box, parameters)

    monkeypatch.setattr("connectome.jobs.blocks.get_job_spec",
                        lambda kind: type(spec)(**{**spec.__dict__, "block": flaky}))
    outcome = block_execute(job_id=job.pk, index=5)
    assert (outcome.status, outcome.countdown) == ("retry", 1.5)
    assert JobBlock.objects.get(job=job, index=5).state == JobBlock.State.PENDING
    assert block_execute(job_id=job.pk, index=5).status == "done"

    def broken(job, box, parameters):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/chunk")

    monkeypatch.setattr("connectome.jobs.blocks.get_job_spec",
                        lambda kind: type(spec)(**{**spec.__dict__, "block": broken}))
    assert block_execute(job_id=job.pk, index=6).countdown == 1.5
    assert block_execute(job_id=job.pk, index=6).countdown == 3.0
    assert block_execute(job_id=job.pk, index=6).status == "failed"
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.FAILED
    assert job.error == ("block 6 (z 0:8, y 128:192, x 0:64) failed (after 3 attempts): "
                         "No space left on device: /data/chunk")
    assert block_execute(job_id=job.pk, index=7).status == "skipped"
    assert not JobLock.objects.exists()


def test_a_bug_fails_the_job_at_once(em, model_file, monkeypatch):
    _, path = model_file
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer))
    job_execute(job_id=job.pk)
    spec = get_job_spec("detect_synapses")

    def buggy(job, box, parameters):
        raise KeyError("channel")

    monkeypatch.setattr("connectome.jobs.blocks.get_job_spec",
                        lambda kind: type(spec)(**{**spec.__dict__, "block": buggy}))
    assert block_execute(job_id=job.pk, index=0).status == "failed"
    job = Job.objects.get(pk=job.pk)
    # A bug's text may quote data: users see its type, the dataset's admins the traceback.
    assert job.error == ("block 0 (z 0:8, y 0:64, x 0:64) failed (not retried): internal error "
                         "(KeyError); dataset admins find the details in the job's traceback")
    assert "KeyError: 'channel'" in job.traceback


def test_two_jobs_writing_the_same_layer_are_refused(em, model_file):
    _, path = model_file
    dataset, em_layer = em
    first = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                       parameters=detect_parameters(path, em_layer))
    with pytest.raises(JobConflict, match=(
            f"layer 'detected probability' of dataset '{dataset.name}' is being written by "
            f"detect_synapses job {first.pk} \\(queued\\)")) as info:
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                   parameters=detect_parameters(path, em_layer, run_name="other",
                                                probability_layer="detected probability"))
    assert isinstance(info.value, JobParameterError) and "dataset" in info.value.errors
    # Other names on the same dataset may run alongside.
    job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
               parameters=detect_parameters(path, em_layer, run_name="other"))
    job_cancel(job=first)
    assert not JobLock.objects.filter(job=first).exists()
    done = job_run_inline(kind="detect_synapses", dataset=dataset,
                          parameters=detect_parameters(path, em_layer))
    assert done.state == Job.State.DONE
    with pytest.raises(JobConflict, match="already has a layer named 'detected probability'"):
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                   parameters=detect_parameters(path, em_layer))


def test_bad_parameters_are_refused_with_the_field(em, model_file):
    _, path = model_file
    dataset, em_layer = em
    with pytest.raises(JobParameterError, match="low") as info:
        job_create(kind="detect_synapses", dataset=dataset,
                   parameters=detect_parameters(path, em_layer, low=0.9, high=0.5))
    assert set(info.value.errors) == {"low"}
    with pytest.raises(JobParameterError, match="does not exist"):
        job_create(kind="detect_synapses", dataset=dataset,
                   parameters=detect_parameters("/nowhere.model", em_layer))
    wrong = job_run_inline(kind="detect_synapses", dataset=dataset,
                           parameters={**detect_parameters(path, em_layer), "em_layer": 999999})
    assert wrong.state == Job.State.FAILED and "has no layer 999999 (the EM)" in wrong.error


def test_detect_then_assign_runs_the_assignment_on_the_new_instances(em, model_file,
                                                                      phantom_file):
    (_, path), (phantom, h5) = model_file, phantom_file
    dataset, em_layer = em
    cells = import_volume(dataset=dataset, source=str(h5), name="cells", kind="segmentation",
                          dataset_path="volumes/labels/neuron_ids")
    vesicles = import_volume(dataset=dataset, source=str(h5), name="vesicles", kind="mask",
                             dataset_path="volumes/labels/vesicles")
    parameters = {**detect_parameters(path, em_layer), "assign_method": "vesicle",
                  "segmentation_layer": cells.pk, "presynaptic_layer": vesicles.pk}
    with pytest.raises(JobParameterError, match="min_sharez"):
        job_create(kind="detect_and_assign", dataset=dataset,
                   parameters={**parameters, "assign_options": {"min_sharez": 1}})
    job = job_run_inline(kind="detect_and_assign", dataset=dataset, parameters=parameters)
    assert job.state == Job.State.DONE, job.error
    follow = Job.objects.get(pk=job.result["then_job"])
    assert follow.kind == "assign_partners" and follow.state == Job.State.DONE, follow.error
    assert str(follow.parameters["sites_layer"]) == str(job.result["instances_layer"])
    run = SynapseRun.objects.get(name="detected partners")
    sites = set(run.synapses.values_list("site_id", flat=True))
    assert sites and sites <= {row[0] for row in synapse_table("detected")}
    truth = {(s.pre_id, s.post_id) for s in phantom.synapses}
    found = set(run.synapses.filter(flag="").values_list("pre__segment_id", "post__segment_id"))
    assert len(found & truth) >= len(found) // 2, (found, truth)


def test_admin_action_starts_a_detection_job_and_the_job_page_shows_its_blocks(
        em, model_file, client, django_capture_on_commit_callbacks):
    from django.contrib.auth import get_user_model

    _, path = model_file
    dataset, em_layer = em
    admin = get_user_model().objects.create_superuser("boss", "boss@example.org", "pw")
    client.force_login(admin)
    url = "/admin/datasets/dataset/"
    chosen = {"action": "detect_synapses", "_selected_action": [dataset.pk]}
    page = client.post(url, chosen)
    assert page.status_code == 200 and b"Detect synapses in" in page.content
    form = {**chosen, "apply": "1", "kind": "detect_synapses", "method": "voxel_classifier",
            "model": str(path), "em_layer": em_layer.pk, "run_name": "from admin",
            "roi": "0 0 0 8 64 128", "block_shape": "8 64 64", "high": "0.8", "low": "0.5",
            "min_size": "20", "min_score": "0", "queue": "cpu"}
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, {**form, "low": "0.9"})
    assert response.status_code == 200 and b"above the high one" in response.content
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(url, form)
    assert response.status_code == 302 and len(callbacks) == 1
    job = Job.objects.get(kind="detect_synapses")
    assert job.parameters["roi"] == [0, 0, 0, 8, 64, 128] and job.created_by == admin
    # The same layer again is refused with the holder named.
    response = client.post(url, form)
    assert f"being written by detect_synapses job {job.pk}".encode() in response.content

    job_execute(job_id=job.pk)
    block_execute(job_id=job.pk, index=0)
    page = client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert b"1 done, 1 pending" in page.content and b"1 / 2 blocks" in page.content
    job_cancel(job=Job.objects.get(pk=job.pk))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/admin/jobs/job/", {"action": "resume_jobs",
                                                     "_selected_action": [job.pk]})
    assert response.status_code == 302 and len(callbacks) == 1
    assert Job.objects.get(pk=job.pk).state == Job.State.RUNNING
    assert client.get(f"/admin/jobs/jobblock/?job__id__exact={job.pk}").status_code == 200


def test_block_selftest_runs_inline_and_reports_rate():
    job = job_run_inline(kind="selftest_blocks",
                         parameters={"blocks": 5, "seconds_per_block": 0.01},
                         dataset=DatasetFactory())
    assert job.state == Job.State.DONE, job.error
    assert job.result["blocks_seen"] == job.result["blocks"] == 5
    assert job.progress_done == job.progress_total == 5


def test_the_jobs_api_starts_a_detection_job_and_refuses_a_second_on_the_same_layer(
        em, model_file, django_capture_on_commit_callbacks):
    from rest_framework.test import APIClient

    from connectome.datasets.models import Membership
    from tests.connectome.factories import MembershipFactory, UserFactory

    _, path = model_file
    dataset, em_layer = em
    client = APIClient()
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    client.force_authenticate(user)
    body = {"kind": "detect_synapses", "dataset": dataset.pk,
            "parameters": detect_parameters(path, em_layer)}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/api/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    assert len(callbacks) == 1
    job_id = response.json()["id"]
    response = client.post("/api/jobs/", body, format="json")
    assert response.status_code == 400
    assert f"being written by detect_synapses job {job_id}" in str(response.json())
    job_execute(job_id=job_id)
    block_execute(job_id=job_id, index=0)
    shown = client.get(f"/api/jobs/{job_id}/").json()
    assert (shown["progress_done"], shown["progress_total"]) == (1, 18)
    assert shown["message"].startswith("1 / 18 blocks")
    assert shown["result"]["blocks_done"] == 1 and shown["result"]["blocks_per_s"] > 0


# --- the network's vesicle map feeds the vesicle method ----------------------------------------

@pytest.fixture(scope="module")
def vesicle_network(tmp_path_factory):
    """A small network with a synapse and a vesicle head, trained on a phantom."""
    from detection.synapses.cnn import CnnParameters, train_network
    from detection.synapses.training import TrainingVolume

    phantom = make_phantom((12, 112, 112), voxel_size=VOXEL, n_cells=12, n_synapses=12, seed=31)
    targets = clean_targets(labels_to_targets(phantom.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=30.0)
    volume = TrainingVolume(name="phantom 31", em=phantom.em, voxel_size=VOXEL, targets=targets,
                            sites=phantom.synapse_labels,
                            aux={"vesicles": phantom.vesicles.astype(np.int8)})
    network = train_network([volume], voxel_size=VOXEL, parameters=CnnParameters(
        width=8, depth=2, patch=48, batch=6, iterations=200, learning_rate=3e-3, seed=1))
    assert network.heads == ("synapse", "vesicles")
    return network, network.save(tmp_path_factory.mktemp("network") / "synapses.cnn")


def test_detect_and_assign_reads_the_vesicle_map_of_the_network(em, vesicle_network,
                                                                 phantom_file):
    (network, path), (phantom, h5) = vesicle_network, phantom_file
    dataset, em_layer = em
    cells = import_volume(dataset=dataset, source=str(h5), name="cells", kind="segmentation",
                          dataset_path="volumes/labels/neuron_ids")
    parameters = {**detect_parameters(path, em_layer, run_name="net"),
                  "assign_method": "vesicle", "segmentation_layer": cells.pk}
    job = job_run_inline(kind="detect_and_assign", dataset=dataset, parameters=parameters)
    assert job.state == Job.State.DONE, job.error

    vesicles = Layer.objects.get(pk=job.result["vesicles_layer"])
    probability = Layer.objects.get(pk=job.result["probability_layer"])
    assert (vesicles.name, vesicles.kind, vesicles.job_id) == ("net vesicles", "prediction", job.pk)
    assert (vesicles.shape, vesicles.chunks) == (probability.shape, probability.chunks)
    assert vesicles.downsample_factors == probability.downsample_factors
    # The blocks give the whole volume's maps (uint8), the synapse one as without the head.
    maps = network.predict_maps(phantom.em)
    stored = open_multiscale(vesicles.path)[0]
    assert np.abs(stored["0"][...].astype(int) - np.rint(maps["vesicles"] * 255)).max() <= 1
    level0 = open_multiscale(probability.path)[0]["0"][...]
    assert np.abs(level0.astype(int) - np.rint(network.predict_region(phantom.em) * 255)).max() <= 1
    # The map tells vesicle clouds from the rest (ROC AUC; 0.5 would be chance).
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(phantom.vesicles.ravel(), stored["0"][...].ravel()) > 0.8

    follow = Job.objects.get(pk=job.result["then_job"])
    assert follow.state == Job.State.DONE, follow.error
    assert follow.parameters["method"] == "vesicle"
    assert str(follow.parameters["presynaptic_layer"]) == str(vesicles.pk)
    run = SynapseRun.objects.get(name="net partners")
    truth = {(s.pre_id, s.post_id) for s in phantom.synapses}
    found = set(run.synapses.filter(flag="").values_list("pre__segment_id", "post__segment_id"))
    assert len(found) >= 5 and len(found & truth) >= len(found) // 2, (found, truth)


def test_the_vesicle_layer_name_is_locked_and_refused_when_taken(em, vesicle_network,
                                                                 phantom_file):
    _, path = vesicle_network
    dataset, em_layer = em
    first = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                       parameters=detect_parameters(path, em_layer, run_name="a",
                                                    vesicles_layer="maps"))
    assert "layer 'maps'" in set(JobLock.objects.filter(job=first).values_list("resource",
                                                                                 flat=True))
    with pytest.raises(JobConflict, match="layer 'maps'"):
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                   parameters=detect_parameters(path, em_layer, run_name="b",
                                                vesicles_layer="maps"))
    import_volume(dataset=dataset, source=str(phantom_file[1]), name="net vesicles",
                  kind="mask", dataset_path="volumes/labels/vesicles")
    with pytest.raises(JobConflict, match="already has a layer named 'net vesicles'"):
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                   parameters=detect_parameters(path, em_layer, run_name="net"))


def test_the_vesicle_method_without_a_layer_needs_a_model_with_a_vesicle_head(em, model_file):
    _, path = model_file
    dataset, em_layer = em
    parameters = {**detect_parameters(path, em_layer), "assign_method": "diffusion",
                  "segmentation_layer": em_layer.pk}
    with pytest.raises(JobParameterError,
                       match="model file synapses.model has no vesicle head; give "
                             "presynaptic_layer") as refused:
        job_create(kind="detect_and_assign", dataset=dataset, parameters=parameters)
    assert "presynaptic_layer" in refused.value.errors
    assert not Job.objects.exists() and not JobLock.objects.exists()
    # The contact method needs no vesicle map.
    job_create(kind="detect_and_assign", dataset=dataset, enqueue=False, parameters={
        **parameters, "assign_method": "contact", "interface_model": str(path)})


def test_a_cancelled_job_stores_no_vesicle_layer_and_its_resume_does(em, vesicle_network):
    _, path = vesicle_network
    dataset, em_layer = em
    job = job_create(kind="detect_synapses", dataset=dataset, enqueue=False,
                     parameters=detect_parameters(path, em_layer, run_name="net"))
    assert "layer 'net vesicles'" in set(JobLock.objects.filter(job=job).values_list(
        "resource", flat=True))
    job_execute(job_id=job.pk)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    job = job_cancel(job=Job.objects.get(pk=job.pk))
    assert blocks_finish(job_id=job.pk).state == Job.State.CANCELLED
    assert not Layer.objects.filter(job=job).exists() and not JobLock.objects.exists()
    folder = settings.DATA_ROOT / "datasets" / str(dataset.pk) / "jobs" / str(job.pk)
    written = open_multiscale(folder / "vesicles.zarr")[0]["0"][0:8, 0:64, 0:64]
    assert written.std() > 1  # written by block 0
    assert job_resume(job=job, enqueue=False) == 17
    for index in range(1, 18):
        block_execute(job_id=job.pk, index=index)
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    vesicles = Layer.objects.get(pk=job.result["vesicles_layer"])
    # The block written before the cancel is kept, not run again.
    np.testing.assert_array_equal(open_multiscale(vesicles.path)[0]["0"][0:8, 0:64, 0:64],
                                  written)
    assert JobBlock.objects.get(job=job, index=0).attempts == 1
    assert sorted(Layer.objects.filter(job=job).values_list("name", flat=True)) == [
        "net probability", "net synapses", "net vesicles"]
