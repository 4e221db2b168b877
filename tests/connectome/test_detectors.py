"""Detectors trained in the app: train_detector jobs, their refusals, the records and their
files, who sees them, and detection jobs that pick a detector by id and use its calibration."""

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from connectome.datasets.models import Layer, Membership
from connectome.datasets.services import layer_storage_path
from connectome.detectors.models import DetectorModel
from connectome.detectors.services import detector_folder
from connectome.imports.volumes import import_volume
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_create, job_execute
from connectome.synapses.models import SynapseRun
from detection.io.zarr_store import (
    build_pyramid,
    create_multiscale,
    open_multiscale,
    write_block,
)
from detection.synapses.calibration import Calibration, PostProcessing
from detection.synapses.classify import (
    TrainingParameters,
    clean_targets,
    labels_to_targets,
    train_voxel_classifier,
)
from detection.synapses.features import FeatureSpec
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import DatasetFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
BLOCK = [8, 64, 64]


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    phantom = make_phantom((16, 128, 128), voxel_size=VOXEL, n_cells=14, n_synapses=14, seed=1)
    path = tmp_path_factory.mktemp("phantom") / "phantom.h5"
    write_phantom_h5(phantom, path)
    return phantom, path


@pytest.fixture
def annotated(data_root, phantom_file):
    """A dataset with the phantom's EM and its cleft ids (one id per synapse)."""
    _, path = phantom_file
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2])
    em = import_volume(dataset=dataset, source=str(path), name="em", dataset_path="volumes/raw")
    clefts = import_volume(dataset=dataset, source=str(path), name="clefts", kind="synapses",
                           dataset_path="volumes/labels/clefts")
    return dataset, em, clefts


def add_layer(dataset, name, kind, array, *, chunks=(4, 128, 128)) -> Layer:
    """A layer holding ``array``, written straight into storage (with its pyramid)."""
    relative = layer_storage_path(dataset=dataset, name=name)
    group = create_multiscale(settings.DATA_ROOT / relative, shape=array.shape,
                              dtype=array.dtype, voxel_size=dataset.voxel_size, chunks=chunks,
                              kind=kind)
    write_block(group, tuple(slice(0, n) for n in array.shape), array)
    build_pyramid(group)
    return Layer.objects.create(
        dataset=dataset, name=name, kind=kind, dtype=str(array.dtype), shape_z=array.shape[0],
        shape_y=array.shape[1], shape_x=array.shape[2], chunk_z=chunks[0], chunk_y=chunks[1],
        chunk_x=chunks[2], storage_path=relative,
        downsample_factors=[[1, 1, 1]])


def source(dataset, em, labels, convention="instances", **extra) -> dict:
    return {"dataset": dataset.pk, "em_layer": em.pk, "labels_layer": labels.pk,
            "convention": convention, **extra}


def train_parameters(sources, name="clefts", **extra) -> dict:
    return {"name": name, "detector": "trees", "sources": sources, "folds": 2,
            "n_estimators": 20, "max_samples": 20_000, **extra}


def refusal(dataset, parameters, user=None) -> str:
    with pytest.raises(JobParameterError) as caught:
        job_create(kind="train_detector", dataset=dataset, parameters=parameters, user=user,
                   enqueue=False)
    return str(caught.value)


def calibrated_model(phantom, postprocessing: PostProcessing | None):
    """A small voxel classifier carrying ``postprocessing`` as its calibration."""
    targets = clean_targets(labels_to_targets(phantom.synapse_labels, convention="binary"),
                            voxel_size=VOXEL, ignore_band_nm=16.0)
    model = train_voxel_classifier(
        phantom.em, targets, voxel_size=VOXEL, feature_spec=FeatureSpec(scales_nm=(10.0, 20.0)),
        parameters=TrainingParameters(n_estimators=30, max_samples=30_000))
    if postprocessing is not None:
        model.calibration = Calibration(postprocessing=postprocessing, figures={
            "pooled": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "f1_interval": [0.7, 0.95]}})
    return model


@pytest.fixture(scope="module")
def trees_model(phantom_file):
    return calibrated_model(phantom_file[0], None)


def detector_record(model, *, datasets, name="det", kind="trees", **fields) -> DetectorModel:
    """A detector record whose file is ``model`` saved under DATA_ROOT."""
    version = DetectorModel.objects.filter(name=name).count() + 1
    record = DetectorModel.objects.create(
        name=name, version=version, kind=kind, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
        voxel_size_x=VOXEL[2], file=f"pending-{name}-{version}", size=0, **fields)
    record.datasets.set(datasets)
    if model is not None:
        folder = detector_folder(record.pk)
        folder.mkdir(parents=True)
        path = model.save(folder / "model.bin")
        record.file = str(path.relative_to(settings.DATA_ROOT))
        record.size = path.stat().st_size
        record.calibration = ({"high": model.calibration.postprocessing.high}
                              if model.calibration else None)
        record.save()
    return record


# --- refusals at submission -------------------------------------------------------------------

def test_a_label_layer_of_another_shape_is_refused_naming_both_layers(annotated):
    dataset, em, _ = annotated
    small = add_layer(dataset, "small labels", "mask", np.zeros((4, 64, 64), np.uint8))
    message = refusal(dataset, train_parameters([source(dataset, em, small, "binary")]))
    assert (f"dataset '{dataset.name}': the label layer 'small labels' is (4, 64, 64) voxels "
            "(z, y, x) but the EM layer 'em' is (16, 128, 128)") in message


def test_a_layer_of_another_dataset_or_of_the_wrong_kind_is_refused(annotated):
    dataset, em, clefts = annotated
    other = DatasetFactory(name="elsewhere")
    foreign = add_layer(other, "their labels", "mask", np.zeros((4, 64, 64), np.uint8))
    message = refusal(dataset, train_parameters([source(dataset, em, foreign, "binary")]))
    assert (f"dataset '{dataset.name}' has no layer {foreign.pk} (it is layer 'their labels' "
            "of another dataset); the label layer must be one of its own") in message
    message = refusal(dataset, train_parameters([source(dataset, em, em)]))
    assert (f"layer 'em' of dataset '{dataset.name}' is of kind em; the label layer must be "
            "of kind mask, segmentation, synapses") in message
    message = refusal(dataset, train_parameters([source(dataset, clefts, clefts)]))
    assert (f"layer 'clefts' of dataset '{dataset.name}' is of kind synapses; the EM layer "
            "must be of kind em") in message


def test_datasets_whose_pixels_cannot_be_brought_to_one_are_refused_by_name(annotated):
    dataset, em, clefts = annotated
    coarse = DatasetFactory(name="coarse", voxel_size_z=40.0, voxel_size_y=20.0,
                            voxel_size_x=20.0)
    coarse_em = add_layer(coarse, "em", "em", np.zeros((4, 64, 64), np.uint8))
    coarse_labels = add_layer(coarse, "labels", "mask",
                              np.pad(np.ones((4, 8, 8), np.uint8), ((0, 0), (0, 56), (0, 56))))
    message = refusal(dataset, train_parameters([
        source(dataset, em, clefts), source(coarse, coarse_em, coarse_labels, "binary")]))
    assert (f"dataset '{dataset.name}' has y pixels of 8 nm and the model 20 nm; pixels are "
            "resampled up to a factor 2 either way, not 2.50") in message


def test_labels_without_a_synapse_or_a_background_voxel_are_refused_saying_what_was_read(
        annotated):
    dataset, em, _ = annotated
    shape = (16, 128, 128)
    empty = add_layer(dataset, "empty", "mask", np.zeros(shape, np.uint8), chunks=(4, 64, 64))
    message = refusal(dataset, train_parameters([source(dataset, em, empty, "binary")]))
    assert (f"dataset '{dataset.name}' layer 'empty' has no synapse voxel under the binary "
            "convention (nonzero synapse, 0 not); checked the full-resolution level, read in "
            "slabs") in message
    full = add_layer(dataset, "all synapse", "mask", np.full(shape, 255, np.uint8))
    message = refusal(dataset, train_parameters([source(dataset, em, full, "ccboost")]))
    assert "layer 'all synapse' has no non-synapse voxel under the ccboost convention" in message
    # ccboost: only 255 is a synapse, 1 is "unknown".
    unknown = add_layer(dataset, "unknown", "mask", np.ones(shape, np.uint8))
    message = refusal(dataset, train_parameters([source(dataset, em, unknown, "ccboost")]))
    assert "layer 'unknown' has no synapse voxel under the ccboost convention" in message
    # In a region without any synapse.
    _, _, clefts = annotated
    corner = refusal(dataset, train_parameters([source(dataset, em, clefts,
                                                       roi=[0, 0, 0, 1, 2, 2])]))
    assert "layer 'clefts' has no synapse voxel in region [0, 0, 0, 1, 2, 2]" in corner


def test_one_synapse_voxel_lost_by_the_pyramid_is_still_found_at_full_resolution(annotated):
    dataset, em, _ = annotated
    # A pyramid needs more than 256 pixels in y or x; the lone voxel vanishes from level 1.
    big = DatasetFactory(name="big", voxel_size_z=40.0, voxel_size_y=8.0, voxel_size_x=8.0)
    big_em = add_layer(big, "em", "em", np.zeros((2, 512, 512), np.uint8))
    labels = np.zeros((2, 512, 512), np.uint8)
    labels[1, 300, 300] = 1
    lone = add_layer(big, "lone", "mask", labels, chunks=(2, 256, 256))
    from connectome.detectors.sources import check_labels, resolve_source

    check_labels(resolve_source(source(big, big_em, lone, "binary")))  # accepted
    labels[1, 300, 300] = 0
    none = add_layer(big, "none", "mask", labels, chunks=(2, 256, 256))
    assert open_multiscale(lone.path)[0]["1"][...].max() == 0  # level 1 lost the voxel
    with pytest.raises(ValueError, match=r"slabs \(the coarsest level, 1, showed only one "
                                         r"class\)"):
        check_labels(resolve_source(source(big, big_em, none, "binary")))


def test_training_needs_the_admin_role_on_every_source(annotated):
    dataset, em, clefts = annotated
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.REVIEWER)
    message = refusal(dataset, train_parameters([source(dataset, em, clefts)]), user=user)
    assert f"training on dataset '{dataset.name}' needs the admin role on it" in message
    stranger = refusal(dataset, train_parameters([source(dataset, em, clefts)]),
                       user=UserFactory())
    assert f"there is no dataset {dataset.pk} that you can see" in stranger


def test_the_job_runs_on_one_of_its_source_datasets(annotated):
    dataset, em, clefts = annotated
    other = DatasetFactory()
    message = refusal(other, train_parameters([source(dataset, em, clefts)]))
    assert f"dataset '{other.name}' is not one of the training sources" in message


# --- the API and the admin ---------------------------------------------------------------------

def test_detectors_are_listed_to_those_who_see_a_source_dataset(data_root):
    from rest_framework.test import APIClient

    client = APIClient()
    public = DatasetFactory(is_public=True)
    private = DatasetFactory()
    member = UserFactory()
    MembershipFactory(dataset=private, user=member, role=Membership.Role.VIEWER)
    open_one = detector_record(None, datasets=[public], name="open")
    closed = detector_record(None, datasets=[private], name="closed", kind="network")

    def ids(**query):
        response = client.get("/api/detectors/", query)
        assert response.status_code == 200, response.content
        return sorted(row["id"] for row in response.json()["results"])

    assert ids() == [open_one.pk]
    assert client.get(f"/api/detectors/{closed.pk}/").status_code == 404
    client.force_authenticate(member)
    assert ids() == [open_one.pk, closed.pk]
    assert ids(kind="network") == [closed.pk]
    assert ids(name="open") == [open_one.pk]
    detail = client.get(f"/api/detectors/{closed.pk}/").json()
    assert detail["name"] == "closed" and detail["version"] == 1
    assert "file" not in detail and closed.file not in str(detail)
    client.force_authenticate(UserFactory())
    assert ids() == [open_one.pk]
    client.force_authenticate(get_user_model().objects.create_superuser("root", "r@x.org", "pw"))
    assert ids() == [open_one.pk, closed.pk]
    assert client.get("/api/detectors/", {"kind": "forest"}).status_code == 400


def test_the_admin_lists_detectors_and_deleting_one_deletes_its_file(
        client, data_root, trees_model, django_capture_on_commit_callbacks):
    dataset = DatasetFactory()
    record = detector_record(trees_model, datasets=[dataset], name="listed",
                             figures={"pooled": {"f1": 0.81, "f1_interval": [0.7, 0.9]}})
    client.force_login(get_user_model().objects.create_superuser("root", "r@x.org", "pw"))
    page = client.get("/admin/detectors/detectormodel/")
    assert page.status_code == 200
    assert "listed" in page.content.decode() and "0.81 (0.70-0.90)" in page.content.decode()
    assert client.get(f"/admin/detectors/detectormodel/{record.pk}/change/").status_code == 200
    path = record.path
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/detectors/detectormodel/{record.pk}/delete/",
                               {"post": "yes"})
    assert response.status_code == 302
    assert not DetectorModel.objects.filter(pk=record.pk).exists()
    assert not path.exists() and not path.parent.exists()


# --- detection with a detector -----------------------------------------------------------------

def detect(dataset, em, **parameters):
    return job_create(kind="detect_synapses", dataset=dataset, enqueue=False, parameters={
        "em_layer": em.pk, "run_name": "found", "block_shape": BLOCK, **parameters})


def test_detection_by_model_id_uses_the_calibration_and_records_it(annotated, phantom_file,
                                                                   django_capture_on_commit_callbacks):
    dataset, em, _ = annotated
    split = {"smooth_nm": 25.0, "min_distance_nm": 250.0, "min_depth": 0.1,
             "min_piece_nm3": 1e5}
    chosen = PostProcessing(high=0.8, low=0.5, min_size_nm3=64_000.0, min_score=0.6,
                            split=split)
    record = detector_record(calibrated_model(phantom_file[0], chosen), datasets=[dataset])
    job = detect(dataset, em, model_id=record.pk)
    job = job_execute(job_id=job.pk, inline_blocks=True)
    assert job.state == Job.State.DONE, job.error
    run = SynapseRun.objects.get(dataset=dataset, name="found")
    # 64,000 nm^3 is 25 voxels of 40 x 8 x 8 nm; the split's pieces are counted in voxels too.
    assert run.parameters["postprocessing"] == {
        "high": 0.8, "low": 0.5, "min_size": 25, "min_score": 0.6,
        "split": {"smooth_nm": 25.0, "min_distance_nm": 250.0, "min_depth": 0.1,
                  "min_piece_voxels": 40}}
    assert (run.parameters["high"], run.parameters["low"], run.parameters["min_size"]) == (
        0.8, 0.5, 25)
    assert (run.parameters["model_id"], run.parameters["model_name"],
            run.parameters["model_version"]) == (record.pk, "det", 1)
    assert run.source_path == str(record.path)
    assert run.synapses.count() == job.result["synapses"] > 0
    assert min(run.synapses.values_list("confidence", flat=True)) >= 0.6


def test_explicit_thresholds_keep_the_old_behaviour(annotated, trees_model, tmp_path):
    dataset, em, _ = annotated
    path = trees_model.save(tmp_path / "plain.model")
    job = detect(dataset, em, model=str(path), high=0.8, low=0.5, min_size=20, min_score=0.0)
    job = job_execute(job_id=job.pk, inline_blocks=True)
    assert job.state == Job.State.DONE, job.error
    run = SynapseRun.objects.get(dataset=dataset, name="found")
    assert run.parameters["postprocessing"] == {"high": 0.8, "low": 0.5, "min_size": 20,
                                                "min_score": 0.0, "split": None}
    assert run.parameters["model_id"] is None and "model_version" not in run.parameters


def test_a_detector_without_calibration_and_no_thresholds_is_refused(annotated, trees_model,
                                                                     tmp_path):
    dataset, em, _ = annotated
    record = detector_record(trees_model, datasets=[dataset], name="raw")
    with pytest.raises(JobParameterError, match=(
            rf"detector 'raw' version 1 \(id {record.pk}\) carries no calibration; give high, "
            "low, min_size and min_score or retrain it")):
        detect(dataset, em, model_id=record.pk)
    path = trees_model.save(tmp_path / "uncalibrated.model")
    with pytest.raises(JobParameterError, match=(
            "model file uncalibrated.model carries no calibration; give high, low")):
        detect(dataset, em, model=str(path))
    with pytest.raises(JobParameterError, match="give exactly one of model_id"):
        detect(dataset, em)
    with pytest.raises(JobParameterError, match="give exactly one of model_id"):
        detect(dataset, em, model=str(path), model_id=record.pk, high=0.8, low=0.5,
               min_size=1, min_score=0.0)
    assert not Job.objects.filter(kind="detect_synapses").exists()


def test_detect_and_assign_by_vesicles_needs_a_detector_with_a_vesicle_head(annotated,
                                                                           trees_model):
    dataset, em, clefts = annotated
    record = detector_record(trees_model, datasets=[dataset], name="plain")
    parameters = {"em_layer": em.pk, "run_name": "found", "block_shape": BLOCK,
                  "model_id": record.pk, "high": 0.8, "low": 0.5, "min_size": 20,
                  "min_score": 0.0, "assign_method": "vesicle", "segmentation_layer": clefts.pk}
    with pytest.raises(JobParameterError, match=(
            rf"presynaptic_layer: detector 'plain' version 1 \(id {record.pk}\) has no vesicle "
            "head; give presynaptic_layer")):
        job_create(kind="detect_and_assign", dataset=dataset, enqueue=False,
                   parameters=parameters)
    assert not Job.objects.exists()
    # A presynaptic layer of one's own keeps the method open to any detector.
    job = job_create(kind="detect_and_assign", dataset=dataset, enqueue=False,
                     parameters={**parameters, "presynaptic_layer": clefts.pk})
    assert job.parameters["presynaptic_layer"] == clefts.pk


def test_a_corrupt_detector_file_or_one_the_user_cannot_see_is_refused(annotated, trees_model):
    dataset, em, _ = annotated
    record = detector_record(trees_model, datasets=[dataset], name="broken")
    record.path.write_bytes(b"not a model\n")
    with pytest.raises(JobParameterError, match=r"model_id: model\.bin: cannot read model file"):
        detect(dataset, em, model_id=record.pk, high=0.8, low=0.5, min_size=1, min_score=0.0)
    hidden = detector_record(trees_model, datasets=[DatasetFactory()], name="hidden")
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    with pytest.raises(JobParameterError, match=f"there is no detector {hidden.pk} that you"):
        job_create(kind="detect_synapses", dataset=dataset, enqueue=False, user=user,
                   parameters={"em_layer": em.pk, "run_name": "found", "model_id": hidden.pk})


# --- training end to end -----------------------------------------------------------------------

def staging_left(dataset) -> list[Path]:
    staging = settings.DATA_ROOT / "datasets" / str(dataset.pk) / "staging"
    return list(staging.iterdir()) if staging.exists() else []


def models_left() -> list[Path]:
    root = settings.DATA_ROOT / "models"
    return list(root.rglob("*")) if root.exists() else []


@pytest.mark.slow
def test_a_training_job_stores_the_detector_and_detection_uses_it(annotated):
    dataset, em, clefts = annotated
    job = job_create(kind="train_detector", dataset=dataset, enqueue=False,
                     parameters=train_parameters([source(dataset, em, clefts)]))
    job = job_execute(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    record = DetectorModel.objects.get(pk=job.result["detector_id"])
    assert (record.name, record.version, record.kind, record.job) == ("clefts", 1, "trees", job)
    assert record.voxel_size == VOXEL
    assert record.file == f"models/{record.pk}/model.bin"
    assert record.path.is_file() and record.size == record.path.stat().st_size > 0
    assert list(record.datasets.all()) == [dataset]
    assert record.sources == [{
        "dataset": dataset.pk, "dataset_name": dataset.name, "em_layer": em.pk,
        "em_layer_name": "em", "labels_layer": clefts.pk, "labels_layer_name": "clefts",
        "ignore_layer": None, "ignore_layer_name": None, "convention": "instances",
        "roi": None, "voxel_size": list(VOXEL)}]
    pooled = record.figures["pooled"]
    assert 0 < pooled["f1"] <= 1 and pooled["f1_interval"][0] <= pooled["f1"]
    assert pooled["tp"] + pooled["fn"] >= 10  # the phantom's synapses, all held out once
    assert record.figures["per_volume"]
    assert set(record.calibration) >= {"high", "low", "min_size_nm3", "min_score", "split"}
    assert job.result["f1"] == pooled["f1"] and job.result["version"] == 1
    assert staging_left(dataset) == []

    # Detection by id, with no thresholds: the calibration's.
    detection = job_execute(job_id=detect(dataset, em, model_id=record.pk).pk,
                            inline_blocks=True)
    assert detection.state == Job.State.DONE, detection.error
    run = SynapseRun.objects.get(dataset=dataset, name="found")
    assert run.parameters["high"] == record.calibration["high"]
    assert run.parameters["low"] == record.calibration["low"]
    assert run.parameters["min_score"] == record.calibration["min_score"]
    assert run.parameters["model_version"] == 1

    # A second training of the name is its version 2.
    again = job_execute(job_id=job_create(
        kind="train_detector", dataset=dataset, enqueue=False,
        parameters=train_parameters([source(dataset, em, clefts, "binary")], seed=1)).pk)
    assert again.state == Job.State.DONE, again.error
    assert DetectorModel.objects.get(pk=again.result["detector_id"]).version == 2


@pytest.mark.slow
def test_a_cancelled_training_leaves_no_record_and_no_file(annotated, monkeypatch):
    import detection.synapses.training as training

    dataset, em, clefts = annotated
    job = job_create(kind="train_detector", dataset=dataset, enqueue=False,
                     parameters=train_parameters([source(dataset, em, clefts)]))
    real = training.train_detector
    calls = []

    def cancel_on_first_report(volumes, options, progress=None):
        def report(done, total, message=None):
            calls.append(message)
            if len(calls) == 1:
                Job.objects.filter(pk=job.pk).update(cancel_requested=True)
            progress(done, total, message)

        return real(volumes, options, progress=report)

    monkeypatch.setattr(training, "train_detector", cancel_on_first_report)
    job = job_execute(job_id=job.pk)
    assert job.state == Job.State.CANCELLED
    assert len(calls) >= 1
    assert not DetectorModel.objects.exists()
    assert staging_left(dataset) == [] and models_left() == []


def test_a_training_that_fails_while_storing_leaves_no_record_and_no_file(
        annotated, monkeypatch, trees_model, phantom_file):
    import detection.synapses.training as training

    dataset, em, clefts = annotated
    model = calibrated_model(phantom_file[0], PostProcessing(high=0.9, low=0.5))
    monkeypatch.setattr(training, "train_detector", lambda volumes, options, progress=None: model)
    original = DetectorModel.save

    def fail_once_moved(self, *args, **kwargs):
        if kwargs.get("update_fields") == ["file"]:
            assert (settings.DATA_ROOT / "models" / str(self.pk) / "model.bin").exists()
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DetectorModel, "save", fail_once_moved)
    job = job_execute(job_id=job_create(
        kind="train_detector", dataset=dataset, enqueue=False,
        parameters=train_parameters([source(dataset, em, clefts)])).pk)
    assert job.state == Job.State.FAILED
    assert job.error == "No space left on device"
    assert not DetectorModel.objects.exists()
    assert staging_left(dataset) == [] and models_left() == []


def test_the_admin_detection_form_offers_detectors_and_leaves_thresholds_to_them(
        annotated, client, phantom_file, django_capture_on_commit_callbacks):
    dataset, em, _ = annotated
    record = detector_record(calibrated_model(phantom_file[0], PostProcessing(high=0.8, low=0.5)),
                             datasets=[dataset], name="offered")
    client.force_login(get_user_model().objects.create_superuser("boss", "b@x.org", "pw"))
    url = "/admin/datasets/dataset/"
    chosen = {"action": "detect_synapses", "_selected_action": [dataset.pk]}
    page = client.post(url, chosen)
    assert page.status_code == 200 and b"offered v1" in page.content
    form = {**chosen, "apply": "1", "kind": "detect_synapses", "method": "voxel_classifier",
            "model_id": record.pk, "em_layer": em.pk, "run_name": "from admin",
            "block_shape": "8 64 64", "queue": "cpu"}
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, form)
    assert response.status_code == 302
    job = Job.objects.get(kind="detect_synapses")
    assert job.parameters["model_id"] == record.pk and job.parameters["model"] is None
    assert job.parameters["high"] is None and job.parameters["min_score"] is None


def test_the_jobs_api_refuses_a_training_with_the_source_and_its_reason(annotated):
    from rest_framework.test import APIClient

    dataset, em, clefts = annotated
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(user)
    response = client.post("/api/jobs/", {
        "kind": "train_detector", "dataset": dataset.pk,
        "parameters": train_parameters([source(dataset, em, clefts),
                                        source(dataset, em, em)])}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert f"layer 'em' of dataset '{dataset.name}' is of kind em" in str(
        body["detail"]["parameters"]["sources"]["1"])
    assert (f"parameters.sources[1]: layer 'em' of dataset '{dataset.name}' is of kind em; "
            "the label layer must be of kind mask, segmentation, synapses") in body["error"]
    with_source = client.post("/api/jobs/", {
        "kind": "train_detector", "dataset": dataset.pk,
        "parameters": train_parameters([source(dataset, em, clefts)])}, format="json")
    assert with_source.status_code == 201, with_source.content
    assert with_source.json()["state"] == "queued"


@pytest.mark.slow
def test_a_network_detector_trains_through_the_job_too(annotated):
    dataset, em, clefts = annotated
    job = job_execute(job_id=job_create(
        kind="train_detector", dataset=dataset, enqueue=False,
        parameters={"name": "net", "detector": "network", "folds": 2, "iterations": 4,
                    "sources": [source(dataset, em, clefts)]}).pk)
    assert job.state == Job.State.DONE, job.error
    record = DetectorModel.objects.get(pk=job.result["detector_id"])
    assert record.kind == "network" and record.parameters["options"]["network"][
        "iterations"] == 4
    assert record.path.is_file() and "pooled" in record.figures
