"""Cells from EM as jobs: segment_cells -> fragment_cells -> agglomerate_cells -> relabel_cells
through the API,
equal to the library's block-wise segmentation; refusals; blocks run again; failures and
cancels that leave nothing."""

from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from connectome.cells import segmenting
from connectome.cells.models import Cell
from connectome.cells.reports import error_report
from connectome.datasets.models import Layer, Membership
from connectome.detectors.models import DetectorModel
from connectome.detectors.services import detector_store
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import (
    block_execute,
    blocks_finish,
    blocks_recover_stale,
    blocks_run_inline,
    job_resume,
)
from connectome.jobs.models import Job, JobBlock, JobLock
from connectome.jobs.services import JobParameterError, job_cancel, job_create, job_execute
from detection.cells import segmentation as seg
from detection.cells.boundaries import AffinityParameters, LabelVolume, train_affinities
from detection.errors import InputError
from detection.io.zarr_store import open_multiscale
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import DatasetFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (16, 128, 128)
BLOCK = [8, 64, 64]
CONTEXT = [2, 16, 16]
THRESHOLD = 0.8
NAMES = ("cells", "cells affinities z", "cells affinities y", "cells affinities x")


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    phantom = make_phantom(SHAPE, voxel_size=VOXEL, n_cells=8, n_synapses=4, seed=5)
    path = tmp_path_factory.mktemp("phantom") / "phantom.h5"
    write_phantom_h5(phantom, path)
    return phantom, path


@pytest.fixture(scope="module")
def network(phantom_file):
    """A small affinity network, briefly trained on the phantom (enough for membranes)."""
    phantom, _ = phantom_file
    model = train_affinities(
        [LabelVolume("phantom", phantom.em, VOXEL, phantom.segmentation)], voxel_size=VOXEL,
        parameters=AffinityParameters(width=6, depth=1, long_range=0, patch=(8, 64, 64),
                                      batch=1, iterations=100, learning_rate=5e-3))
    model.agglomeration = {"threshold": THRESHOLD, "scoring": "mean",
                           "fragments": seg.FragmentParameters().to_dict()}
    return model


def store_model(model, dataset, name="cell model") -> DetectorModel:
    staged = settings.DATA_ROOT / f"staged-{name}-{DetectorModel.objects.count()}.bin"
    model.save(staged)
    return detector_store(name=name, kind=DetectorModel.Kind.AFFINITIES, model=model,
                          staged=staged, sources=[], datasets=[dataset.pk], parameters={},
                          figures={"threshold": model.agglomeration.get("threshold")},
                          calibration=model.agglomeration)


@pytest.fixture
def em_dataset(data_root, phantom_file, network):
    """A dataset holding the phantom's EM alone, and a cell model trained at its voxel size."""
    _, path = phantom_file
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2])
    em = import_volume(dataset=dataset, source=str(path), name="em", dataset_path="volumes/raw")
    return dataset, em, store_model(network, dataset)


@pytest.fixture
def admin_client(em_dataset):
    dataset = em_dataset[0]
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(user)
    return client


def parameters(em, **extra) -> dict:
    return {"em_layer": em.pk, "block_shape": BLOCK, "context": CONTEXT, **extra}


def stored_affinities(dataset) -> np.ndarray:
    """The three affinity layers, read back as the jobs read them."""
    return segmenting.from_stored(np.stack([
        open_multiscale(dataset.layers.get(name=f"cells affinities {axis}").path)[0]["0"][...]
        for axis in "zyx"]))


def the_chain(job: Job) -> list[Job]:
    chain = [Job.objects.get(pk=job.pk)]
    while chain[-1].result.get("then_job"):
        chain.append(Job.objects.get(pk=chain[-1].result["then_job"]))
    return chain


def segmentation_of(dataset) -> np.ndarray:
    return open_multiscale(dataset.layers.get(name="cells").path)[0]["0"][...]


# --- the chain --------------------------------------------------------------------------------

def test_segment_cells_through_the_api_equals_the_library_block_by_block(
        em_dataset, admin_client, phantom_file, django_capture_on_commit_callbacks):
    dataset, em, record = em_dataset
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post("/api/jobs/", {
            "kind": "segment_cells", "dataset": dataset.pk, "parameters": parameters(em)},
            format="json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]
    # The model left out: the newest cell model at the dataset's voxel size, kept with the job.
    assert response.json()["parameters"]["model_id"] is None
    with django_capture_on_commit_callbacks(execute=True):
        job_execute(job_id=job_id, inline_blocks=True)

    segmented, fragmented, agglomerated, relabelled = chain = the_chain(
        Job.objects.get(pk=job_id))
    assert [j.kind for j in chain] == ["segment_cells", "fragment_cells", "agglomerate_cells",
                                       "relabel_cells"]
    assert all(j.state == Job.State.DONE for j in chain), [(j.kind, j.error) for j in chain]
    assert segmented.parameters["model_id"] == record.pk
    assert segmented.parameters["threshold"] == THRESHOLD == agglomerated.parameters["threshold"]
    assert [j.progress_total for j in chain] == [2 * 2 * 2] * 4
    assert fragmented.parameters["context"] == agglomerated.parameters["context"] == CONTEXT
    assert not JobLock.objects.exists()

    layers = {layer.name: layer for layer in dataset.layers.all()}
    assert set(layers) == {"em", *NAMES}
    assert layers["cells"].kind == Layer.Kind.SEGMENTATION and layers["cells"].dtype == "uint64"
    assert all(layers[n].kind == Layer.Kind.PREDICTION and layers[n].dtype == "uint8"
               for n in NAMES[1:])
    assert layers["cells"].parameters["model_id"] == record.pk
    assert relabelled.result["segmentation_layer"] == layers["cells"].pk

    # Exactly what the library's block-wise path gives on the stored affinities.
    affs = stored_affinities(dataset)
    expected = seg.segment_blockwise(affs, voxel_size=VOXEL, threshold=THRESHOLD,
                                     block_shape=BLOCK, context=CONTEXT)
    labels = segmentation_of(dataset)
    np.testing.assert_array_equal(labels, expected)
    # The stored affinities are the network's on the whole volume (to one step of 1/255:
    # block and whole-volume convolutions round differently in the last float bits).
    network = segmenting.load_cell_model(record, VOXEL)
    whole = segmenting.stored(network.predict_region(open_multiscale(em.path)[0]["0"][...]))
    difference = np.abs(whole.astype(int) - np.rint(affs * 255).astype(int))
    assert difference.max() <= 1 and np.count_nonzero(difference) < 1e-4 * difference.size

    # One Cell per cell, measured.
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    cells = Cell.objects.filter(dataset=dataset).order_by("segment_id")
    assert list(cells.values_list("segment_id", flat=True)) == ids.tolist()
    assert list(cells.values_list("size_voxels", flat=True)) == sizes.tolist()
    assert set(cells.values_list("layer", flat=True)) == {layers["cells"].pk}
    assert relabelled.result["cells"] == len(ids) == agglomerated.result["cells"]
    # The phantom's 8 cells come out as cells, not as one or as hundreds of fragments.
    phantom = phantom_file[0]
    assert 6 <= len(ids) <= 30
    assert agglomerated.result["fragments"] == fragmented.result["fragments"] > len(ids)
    # The likely errors, from the agglomeration's record, are the layer's error report.
    report = error_report(layers["cells"])
    assert report.kind == "likely" and report.job == relabelled.pk
    assert len(report.rows) == relabelled.result["likely_errors"] > 0
    for row in report.rows:
        assert row["kind"] in ("merge", "split") and row["point"] is not None
        cell = int(row["cells"][0])
        assert labels[tuple(row["point"])] == cell
        assert 0 < row["confidence"] <= 1
    # The fragments and merges are gone; the affinities and the segmentation stay.
    for intermediate in (fragmented, agglomerated):
        assert not (settings.DATA_ROOT / segmenting.job_folder(intermediate)).exists()
    assert (settings.DATA_ROOT / segmenting.job_folder(segmented) / "affinities-z.zarr").exists()
    # Its later steps are refused on their own once its segmentation is stored.
    for kind, given, message in (
            ("agglomerate_cells", {"fragment_job": fragmented.pk, "threshold": 0.5},
             f"fragment_cells job {fragmented.pk} has no fragments.zarr any more (the "
             "segmentation it was part of was stored); start with segment_cells"),
            ("relabel_cells", {"agglomerate_job": segmented.pk},
             f"job {segmented.pk} is a segment_cells job, not agglomerate_cells")):
        with pytest.raises(JobParameterError) as caught:
            job_create(kind=kind, dataset=dataset, enqueue=False, parameters=given)
        assert caught.value.errors[next(iter(given))] == [message]
    # The cells cover the phantom's cells: every true cell is mostly one segmented cell.
    for cell in np.unique(phantom.segmentation[phantom.segmentation > 0]):
        inside = labels[phantom.segmentation == cell]
        assert np.bincount(inside.astype(np.int64)).max() >= 0.8 * inside.size


# --- refusals ---------------------------------------------------------------------------------

def refusal(dataset, em, **extra) -> JobParameterError:
    with pytest.raises(JobParameterError) as caught:
        job_create(kind="segment_cells", dataset=dataset, enqueue=False,
                   parameters=parameters(em, **extra))
    return caught.value


def test_a_synapse_detector_a_missing_model_or_a_bad_em_layer_is_refused(em_dataset):
    dataset, em, record = em_dataset
    detector = DetectorModel.objects.create(
        name="synapses", version=1, kind=DetectorModel.Kind.TREES, voxel_size_z=40,
        voxel_size_y=8, voxel_size_x=8, file="models/none/model.bin", size=0)
    detector.datasets.set([dataset])
    assert refusal(dataset, em, model_id=detector.pk).errors["model_id"] == [
        f"'synapses' version 1 (id {detector.pk}) is a synapse detector (trees), not a cell "
        "model (affinities)"]
    assert refusal(dataset, em, model_id=999999).errors["model_id"] == [
        "there is no model 999999 that you can see"]
    foreign = Layer.objects.create(
        dataset=DatasetFactory(name="elsewhere"), name="em", kind=Layer.Kind.EM, dtype="uint8",
        shape_z=1, shape_y=1, shape_x=1, chunk_z=1, chunk_y=1, chunk_x=1, storage_path="x")
    assert refusal(dataset, em, em_layer=foreign.pk).errors["em_layer"] == [
        f"dataset '{dataset.name}' has no layer {foreign.pk} (the EM)"]
    record_layer = Layer.objects.create(
        dataset=dataset, name="probability", kind=Layer.Kind.PREDICTION, dtype="uint8",
        shape_z=SHAPE[0], shape_y=SHAPE[1], shape_x=SHAPE[2], chunk_z=1, chunk_y=1, chunk_x=1,
        storage_path="y")
    assert refusal(dataset, em, em_layer=record_layer.pk).errors["em_layer"] == [
        f"layer {record_layer.pk} 'probability' is a prediction layer; the EM must be a em "
        "layer"]
    assert not Job.objects.exists() and not JobLock.objects.exists()


def test_a_model_of_another_voxel_size_or_without_a_threshold_is_refused(em_dataset):
    dataset, em, record = em_dataset
    record.voxel_size_y = record.voxel_size_x = 4.0
    record.save()
    error = refusal(dataset, em, model_id=record.pk)
    assert (f"cell model 'cell model' version 1 (id {record.pk}) was trained on voxels of "
            "(40.0, 4.0, 4.0) nm (z, y, x) but the data has (40.0, 8.0, 8.0) nm") in \
        error.errors["model_id"][0]
    # Left out, the model is the newest at the dataset's voxel size: there is none.
    assert refusal(dataset, em).errors["model_id"] == [
        "there is no cell model trained at (40, 8, 8) nm (z, y, x), the dataset's voxel size; "
        "train one (a train_cell_model job) or give model_id"]
    record.voxel_size_y = record.voxel_size_x = 8.0
    record.calibration = {"scoring": "mean"}
    record.save()
    assert refusal(dataset, em).errors["threshold"] == [
        f"cell model 'cell model' version 1 (id {record.pk}) carries no merge threshold; "
        "give threshold"]
    # Given, a threshold stands in for the model's.
    job = job_create(kind="segment_cells", dataset=dataset, enqueue=False,
                     parameters=parameters(em, threshold=0.4))
    assert job.state == Job.State.QUEUED


def test_existing_layers_cells_or_a_chain_under_way_are_refused(em_dataset, phantom_file):
    dataset, em, _ = em_dataset
    assert refusal(dataset, em, name="em").errors["dataset"] == [
        f"dataset '{dataset.name}' already has a layer named 'em'"]
    first = job_create(kind="segment_cells", dataset=dataset, enqueue=False,
                       parameters=parameters(em))
    error = refusal(dataset, em, name="other")
    assert error.errors["dataset"] == [
        f"cell list of dataset '{dataset.name}' is being written by segment_cells job "
        f"{first.pk} (queued); wait for it to end or cancel it"]
    job_cancel(job=first)
    import_volume(dataset=dataset, source=str(phantom_file[1]), name="truth",
                  kind="segmentation", dataset_path="volumes/labels/neuron_ids")
    assert refusal(dataset, em).errors["dataset"] == [
        f"dataset '{dataset.name}' already has cells from a segmentation; delete that "
        "segmentation layer first"]


# --- faults -----------------------------------------------------------------------------------

def planned(dataset, em, **extra) -> Job:
    """A segment_cells job whose blocks are recorded and not yet run."""
    job = job_create(kind="segment_cells", dataset=dataset, enqueue=False,
                     parameters=parameters(em, **extra))
    job = job_execute(job_id=job.pk)
    assert job.step == Job.Step.BLOCKS, job.error
    return job


def dies_half_way(job: Job, index: int, *groups) -> None:
    """Block ``index`` of ``job`` was running when its worker died, after writing garbage into
    its chunks of ``groups`` (and its fragment list, if it has one)."""
    block = JobBlock.objects.get(job=job, index=index)
    then = timezone.now() - timedelta(seconds=90)
    JobBlock.objects.filter(pk=block.pk).update(
        state=JobBlock.State.RUNNING, worker="gone:1", started_at=then, heartbeat_at=then,
        attempts=1)
    folder = settings.DATA_ROOT / segmenting.job_folder(job)
    for group in groups:
        open_multiscale(folder / group, mode="r+")[0]["0"][block.slices] = 7
    if (folder / "fragment-ids").exists():
        np.save(folder / "fragment-ids" / f"{index}.npy", np.array([7], np.uint64))


def test_a_block_whose_worker_died_or_that_failed_is_run_again_to_the_same_result(
        em_dataset, settings, monkeypatch):
    dataset, em, _ = em_dataset
    settings.JOB_STALE_S = 30
    monkeypatch.setattr("connectome.jobs.tasks.run_block.apply_async",
                        lambda *args, **kwargs: None)
    monkeypatch.setattr("connectome.jobs.blocks.job_enqueue", lambda job_id: None)
    # The affinities: block 1's worker dies half-way; the sweep sends it again, and its run
    # overwrites what the dead one wrote.
    job = planned(dataset, em)
    assert block_execute(job_id=job.pk, index=0).status == "done"
    dies_half_way(job, 1, *(f"affinities-{axis}.zarr" for axis in "zyx"))
    assert blocks_recover_stale(job_id=job.pk) == {job.pk: [1]}
    for index in range(1, 8):
        assert block_execute(job_id=job.pk, index=index).status == "done"
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    # The fragments: block 1 dies half-way too, block 2 fails on bad input: the job fails
    # naming it, leaving nothing; a resume runs the blocks that are not done.
    fragmenting = Job.objects.get(pk=job.result["then_job"])
    assert fragmenting.kind == "fragment_cells"
    job_execute(job_id=fragmenting.pk)
    assert block_execute(job_id=fragmenting.pk, index=0).status == "done"
    dies_half_way(fragmenting, 1, "fragments.zarr")
    assert blocks_recover_stale(job_id=fragmenting.pk) == {fragmenting.pk: [1]}
    assert block_execute(job_id=fragmenting.pk, index=1).status == "done"
    original = segmenting.seg.block_fragments

    def broken(*args, **kwargs):
        raise InputError("no fragments today")

    monkeypatch.setattr(segmenting.seg, "block_fragments", broken)
    assert block_execute(job_id=fragmenting.pk, index=2).status == "failed"
    fragmenting.refresh_from_db()
    assert fragmenting.state == Job.State.FAILED
    assert fragmenting.error == ("block 2 (z 0:8, y 64:128, x 0:64) failed (not retried): no "
                                 "fragments today")
    assert not dataset.layers.exclude(name="em").exists() and not JobLock.objects.exists()
    monkeypatch.setattr(segmenting.seg, "block_fragments", original)
    assert job_resume(job=fragmenting, enqueue=False) == 6
    assert blocks_run_inline(job_id=fragmenting.pk).state == Job.State.DONE
    assert all(j.state == Job.State.DONE for j in the_chain(job))
    # (A resume counts a failed block's attempts afresh.)
    for ran in (job, fragmenting):
        assert list(JobBlock.objects.filter(job=ran).order_by("index").values_list(
            "attempts", flat=True)) == [1, 2, 1, 1, 1, 1, 1, 1]
    affs = stored_affinities(dataset)
    np.testing.assert_array_equal(segmentation_of(dataset), seg.segment_blockwise(
        affs, voxel_size=VOXEL, threshold=THRESHOLD, block_shape=BLOCK, context=CONTEXT))


def test_a_failed_or_cancelled_job_of_the_chain_leaves_no_layer_and_no_cells(
        em_dataset, monkeypatch):
    dataset, em, _ = em_dataset
    monkeypatch.setattr("connectome.jobs.tasks.run_block.apply_async",
                        lambda *args, **kwargs: None)

    def broken(*args, **kwargs):
        raise InputError("the table is torn")

    # The last job fails in a block: nothing is stored, every lock is given back.
    original = segmenting.seg.relabel
    monkeypatch.setattr(segmenting.seg, "relabel", broken)
    job = job_execute(job_id=job_create(kind="segment_cells", dataset=dataset, enqueue=False,
                                        parameters=parameters(em)).pk, inline_blocks=True)
    *before, relabelled = the_chain(job)
    assert [j.state for j in before] == [Job.State.DONE] * 3
    assert relabelled.state == Job.State.FAILED
    assert "the table is torn" in relabelled.error
    assert list(dataset.layers.values_list("name", flat=True)) == ["em"]
    assert not Cell.objects.exists() and not JobLock.objects.exists()
    # Resumed, it stores the four layers and the cells.
    monkeypatch.setattr(segmenting.seg, "relabel", original)
    job_resume(job=relabelled, enqueue=False)
    assert blocks_run_inline(job_id=relabelled.pk).state == Job.State.DONE
    assert set(dataset.layers.values_list("name", flat=True)) == {"em", *NAMES}
    labels = segmentation_of(dataset)
    assert Cell.objects.filter(dataset=dataset).count() == len(np.unique(labels[labels > 0]))

    # A cancelled fragment_cells job: no later job, no layer, no lock.
    other = DatasetFactory(name="second", voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                           voxel_size_x=VOXEL[2])
    other_em = import_volume(dataset=other, source=str(em.path), name="em", format="zarr")
    second = planned(other, other_em)
    for index in range(8):
        assert block_execute(job_id=second.pk, index=index).status == "done"
    monkeypatch.setattr("connectome.jobs.blocks.job_enqueue", lambda job_id: None)
    second = blocks_finish(job_id=second.pk)
    assert second.state == Job.State.DONE, second.error
    fragmenting = Job.objects.get(pk=second.result["then_job"])
    assert JobLock.objects.filter(dataset=other, job=fragmenting).count() == 5
    job_execute(job_id=fragmenting.pk)
    assert block_execute(job_id=fragmenting.pk, index=0).status == "done"
    job_cancel(job=fragmenting)
    assert blocks_run_inline(job_id=fragmenting.pk).state == Job.State.CANCELLED
    assert list(other.layers.values_list("name", flat=True)) == ["em"]
    assert not other.cells.exists() and not JobLock.objects.filter(dataset=other).exists()
    assert not Job.objects.filter(kind="agglomerate_cells", dataset=other).exists()


def test_synapse_detection_refuses_a_cell_model(em_dataset):
    dataset, em, record = em_dataset
    with pytest.raises(JobParameterError) as caught:
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False, parameters={
            "model_id": record.pk, "em_layer": em.pk, "run_name": "detected"})
    assert caught.value.errors["model_id"] == [
        f"'cell model' version 1 (id {record.pk}) is a cell model (affinities), not a synapse "
        "detector"]


# --- train_cell_model -------------------------------------------------------------------------

@pytest.fixture
def labelled(em_dataset, phantom_file):
    """The EM dataset with the phantom's cells imported as a segmentation (the labels)."""
    dataset, em, _ = em_dataset
    cells = import_volume(dataset=dataset, source=str(phantom_file[1]), name="truth",
                          kind="segmentation", dataset_path="volumes/labels/neuron_ids")
    return dataset, em, cells


def cell_source(dataset, em, labels, **extra) -> dict:
    return {"dataset": dataset.pk, "em_layer": em.pk, "labels_layer": labels.pk, **extra}


def training(sources, **extra) -> dict:
    return {"name": "cells", "sources": sources, "iterations": 30, "width": 4, "depth": 1,
            "long_range": 0, "patch": [4, 64, 64], "batch": 1, **extra}


def training_refusal(client, dataset, parameters) -> dict:
    response = client.post("/api/jobs/", {"kind": "train_cell_model", "dataset": dataset.pk,
                                          "parameters": parameters}, format="json")
    assert response.status_code == 400, response.content
    return response.json()["detail"]["parameters"]


def add_layer(dataset, name, kind, array) -> Layer:
    """A layer holding ``array``, written straight into storage."""
    from connectome.datasets.services import layer_storage_path
    from detection.io.zarr_store import build_pyramid, create_multiscale, write_block

    relative = layer_storage_path(dataset=dataset, name=name)
    group = create_multiscale(settings.DATA_ROOT / relative, shape=array.shape,
                              dtype=array.dtype, voxel_size=dataset.voxel_size,
                              chunks=(4, 64, 64), kind=kind)
    write_block(group, tuple(slice(0, n) for n in array.shape), array)
    build_pyramid(group)
    return Layer.objects.create(
        dataset=dataset, name=name, kind=kind, dtype=str(array.dtype), shape_z=array.shape[0],
        shape_y=array.shape[1], shape_x=array.shape[2], chunk_z=4, chunk_y=64, chunk_x=64,
        storage_path=relative, downsample_factors=[[1, 1, 1]])


def test_train_cell_model_is_refused_at_submission_naming_the_field(labelled, admin_client):
    dataset, em, cells = labelled
    # A layer of another dataset, a label layer of the wrong kind.
    other = DatasetFactory(name="elsewhere")
    foreign = add_layer(other, "labels", "segmentation", np.ones((4, 64, 64), np.uint32))
    assert training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, foreign)]))["sources"]["0"] == [
        f"dataset '{dataset.name}' has no layer {foreign.pk} (it is layer 'labels' of another "
        "dataset); the label layer must be one of its own"]
    assert training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, em)]))["sources"]["0"] == [
        f"layer 'em' of dataset '{dataset.name}' is of kind em; the label layer must be of "
        "kind segmentation"]
    # Shapes that differ.
    small = add_layer(dataset, "small", "segmentation", np.ones((4, 64, 64), np.uint32))
    assert training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, small)]))["sources"]["0"] == [
        f"dataset '{dataset.name}': the label layer 'small' is (4, 64, 64) voxels (z, y, x) "
        "but the EM layer 'em' is (16, 128, 128)"]
    # Labels that are all boundary, whole or in the validation slab.
    empty = add_layer(dataset, "empty", "segmentation", np.zeros(SHAPE, np.uint32))
    message = training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, empty)]))["sources"]["0"][0]
    assert message == (
        f"dataset '{dataset.name}' layer 'empty' training part (z, y, x 0:12, 0:128, 0:128): "
        "the label layer holds no cell (every voxel is 0, which means boundary); checked the "
        "full-resolution level")
    top = np.zeros(SHAPE, np.uint32)
    top[:8] = 1
    half = add_layer(dataset, "top half", "segmentation", top)
    assert training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, half)], validation_fraction=0.5))["sources"]["0"] == [
        f"dataset '{dataset.name}' layer 'top half' validation part (z, y, x 8:16, 0:128, "
        "0:128): the label layer holds no cell (every voxel is 0, which means boundary); "
        "checked the full-resolution level"]
    # Voxel sizes that differ.
    fine = DatasetFactory(name="fine", voxel_size_z=40, voxel_size_y=4, voxel_size_x=4)
    MembershipFactory(dataset=fine, user=admin_client.handler._force_user,
                      role=Membership.Role.ADMIN)
    fine_em = add_layer(fine, "em", "em", np.zeros((16, 128, 128), np.uint8))
    fine_cells = add_layer(fine, "cells", "segmentation", np.ones((16, 128, 128), np.uint32))
    assert training_refusal(admin_client, dataset, training(
        [cell_source(dataset, em, cells)],
        validation=[cell_source(fine, fine_em, fine_cells)]))["validation"] == [
        "dataset 'fine' has voxels of (40, 4, 4) nm (z, y, x) but dataset "
        f"'{dataset.name}' (40, 8, 8) nm; a cell model is trained at one voxel size: give "
        "sources of one voxel size"]
    # Both ways of validating, a fraction that leaves nothing, a region too small.
    assert training_refusal(admin_client, dataset, training(
        [cell_source(dataset, em, cells)], validation=[cell_source(dataset, em, cells)],
        validation_fraction=0.2))["validation_fraction"] == [
        "give validation sources or a validation_fraction, not both"]
    assert training_refusal(admin_client, dataset, training(
        [cell_source(dataset, em, cells, roi=[0, 0, 0, 1, 128, 128])]))[
        "validation_fraction"] == [
        f"dataset '{dataset.name}' layer 'truth': holding out 0.25 of its 1 section leaves no "
        "section to validate on; give a region with more sections, another "
        "validation_fraction, or validation sources"]
    assert training_refusal(admin_client, dataset, training(
        [cell_source(dataset, em, cells, roi=[0, 0, 0, 16, 1, 128])]))["sources"]["0"] == [
        f"dataset '{dataset.name}' layer 'truth' training part (z, y, x 0:12, 0:1, 0:128) is "
        "(12, 1, 128) voxels (z, y, x); the network needs at least (1, 2, 2)"]
    # A name a synapse detector has.
    DetectorModel.objects.create(name="cells", version=1, kind=DetectorModel.Kind.TREES,
                                 voxel_size_z=40, voxel_size_y=8, voxel_size_x=8,
                                 file="models/x/model.bin", size=0)
    assert training_refusal(admin_client, dataset, training([
        cell_source(dataset, em, cells)]))["name"] == [
        "'cells' is the name of a synapse detector (trees, version 1); choose another name for "
        "a cell model"]
    assert not Job.objects.exists()


def test_train_cell_model_stores_a_model_that_segment_cells_uses_by_default(
        labelled, admin_client, django_capture_on_commit_callbacks):
    dataset, em, cells = labelled
    DetectorModel.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post("/api/jobs/", {
            "kind": "train_cell_model", "dataset": dataset.pk,
            "parameters": training([cell_source(dataset, em, cells)])}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["parameters"]["validation_fraction"] == 0.25
    job = job_execute(job_id=response.json()["id"])
    assert job.state == Job.State.DONE, job.error
    record = DetectorModel.objects.get(pk=job.result["detector_id"])
    assert (record.name, record.version, record.kind, record.job) == (
        "cells", 1, DetectorModel.Kind.AFFINITIES, job)
    assert record.voxel_size == VOXEL and record.path.is_file()
    assert list(record.datasets.all()) == [dataset]
    # Figures: the validation table (VOI and adapted Rand per threshold) and the chosen row.
    table = record.figures["table"]
    assert [row["threshold"] for row in table] == [round(t, 2) for t in
                                                  np.arange(0.05, 0.96, 0.05)]
    best = min(table, key=lambda row: (row["voi"], row["threshold"]))
    assert record.figures["threshold"] == best["threshold"] == record.calibration["threshold"]
    assert record.figures["chosen"] == best
    assert job.result["threshold"] == best["threshold"]
    assert job.result["voi_split"] == best["voi_split"] and job.result["arand"] == best["arand"]
    assert record.calibration["fragments"] == seg.FragmentParameters().to_dict()
    assert record.figures["validation"] == [
        f"dataset '{dataset.name}' layer 'truth' validation part (z, y, x 12:16, 0:128, 0:128)"]
    assert record.sources[0]["region"] == [[0, 12], [0, 128], [0, 128]]
    assert record.parameters["network"]["iterations"] == 30
    assert record.parameters["network"]["width"] == 4
    # The model file is the network with its agglomeration settings.
    network = segmenting.load_cell_model(record, VOXEL)
    assert network.agglomeration["threshold"] == best["threshold"]
    assert network.parameters.width == 4
    # Listed among the detectors by its kind; the newest at the voxel size, segment_cells
    # takes it when given no model.
    listed = admin_client.get("/api/detectors/?kind=affinities").json()["results"]
    assert [d["id"] for d in listed] == [record.pk]
    unlabelled = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                                voxel_size_x=VOXEL[2])
    unlabelled_em = import_volume(dataset=unlabelled, source=str(em.path), name="em",
                                  format="zarr")
    segmenting_job = job_create(kind="segment_cells", dataset=unlabelled, enqueue=False,
                                parameters=parameters(unlabelled_em))
    assert segmenting_job.parameters["model_id"] is None
    assert segmenting.chosen_model(unlabelled, segmenting_job.parameters).pk == record.pk
