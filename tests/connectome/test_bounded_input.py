"""Bad input is refused with a plain sentence, and nothing is written or left behind.

Covers: the maximum volume size, voxel sizes (model, database, API, commands, file
attributes), missing chunks, text that is not UTF-8, control characters in names, error texts
without Python reprs, and conflicting jobs refused when they are submitted (with 20 threads
posting the same import at once on PostgreSQL).
"""

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
import zarr
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from rest_framework.test import APIClient

from connectome.cells.models import Cell, Skeleton
from connectome.datasets.models import Dataset, Layer, Membership
from connectome.datasets.services import dataset_create
from connectome.imports.volumes import VolumeTooLarge, import_volume
from connectome.jobs.models import Job, JobLock
from connectome.jobs.services import (
    JobConflict,
    JobParameterError,
    job_create,
    job_execute,
    job_run_inline,
)
from connectome.synapses.models import Synapse, SynapseRun
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

CNAPSE_HEADER = "syn_id,pre,pre_id,post,post_id,x_pos,y_pos,z_pos,size\n"
REPRS = ("np.", "ErrorDetail", "array(", "numpy.", "DoesNotExist")


def _no_reprs(text: str) -> str:
    for marker in REPRS:
        assert marker not in text, f"{marker!r} in {text!r}"
    return text


def _h5(path, data=None, resolution=(40.0, 8.0, 8.0), name="raw"):
    data = np.full((4, 16, 16), 7, np.uint8) if data is None else data
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(name, data=data, chunks=True)
        if resolution is not None:
            ds.attrs["resolution"] = resolution
    return str(path)


def _nothing_written(data_root, dataset):
    assert not Layer.objects.filter(dataset=dataset).exists()
    assert not Cell.objects.filter(dataset=dataset, layer__isnull=False).exists()
    assert not JobLock.objects.exists()
    folder = data_root / "datasets" / str(dataset.pk)
    leftovers = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert leftovers == []


def _admin_client(dataset):
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role.ADMIN)
    client = APIClient()
    client.force_authenticate(user)
    return client, user


def _superuser_client():
    user = UserFactory(is_superuser=True, is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- maximum volume size ----------------------------------------------------------------------

def test_a_volume_declaring_100000_cubed_voxels_is_refused_when_submitted(data_root, tmp_path):
    # Only the header exists: opening it is cheap, reading it would run until killed.
    path = tmp_path / "huge.zarr"
    zarr.open_array(str(path), mode="w", shape=(100000,) * 3, chunks=(64, 64, 64), dtype="u1")
    assert sorted(os.listdir(path)) == [".zarray"]
    dataset = DatasetFactory()
    client, _ = _admin_client(dataset)
    response = client.post("/api/jobs/", {"kind": "import_volume", "dataset": dataset.pk,
                                          "parameters": {"source": str(path), "name": "em"}},
                           format="json")
    assert response.status_code == 400
    error = _no_reprs(response.json()["error"])
    assert error == (
        "parameters.source: huge.zarr: the volume is 100000 x 100000 x 100000 voxels (1e+15), "
        "more than the 1e+12 voxels an import may hold (setting IMPORT_MAX_VOXELS)")
    assert not Job.objects.exists()
    _nothing_written(data_root, dataset)


def test_the_limit_is_a_setting_checked_before_anything_is_written(data_root, tmp_path, settings):
    settings.IMPORT_MAX_VOXELS = 1000
    path = _h5(tmp_path / "v.h5")  # 4 x 16 x 16 = 1024 voxels
    dataset = DatasetFactory()
    with pytest.raises(VolumeTooLarge, match=r"v\.h5: the volume is 4 x 16 x 16 voxels \(1024\), "
                                             r"more than the 1000 voxels .*IMPORT_MAX_VOXELS"):
        import_volume(dataset=dataset, source=path, name="em")
    _nothing_written(data_root, dataset)
    settings.IMPORT_MAX_VOXELS = 1024
    assert import_volume(dataset=dataset, source=path, name="em").shape == (4, 16, 16)


def test_import_max_voxels_comes_from_the_environment(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from connectome import settings as project_settings

    monkeypatch.setenv("IMPORT_MAX_VOXELS", "2.5e9")
    assert project_settings._env_count("IMPORT_MAX_VOXELS", 7) == 2_500_000_000
    monkeypatch.delenv("IMPORT_MAX_VOXELS")
    assert project_settings._env_count("IMPORT_MAX_VOXELS", 7) == 7
    for bad in ("lots", "0", "nan", "-5"):
        monkeypatch.setenv("IMPORT_MAX_VOXELS", bad)
        with pytest.raises(ImproperlyConfigured, match=f"IMPORT_MAX_VOXELS .* not '{bad}'"):
            project_settings._env_count("IMPORT_MAX_VOXELS", 7)


# --- dataset voxel sizes ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-4", "0", "1e308"])
def test_create_dataset_refuses_voxel_sizes_that_are_not(value):
    with pytest.raises(CommandError, match=rf"argument --voxel-size: '{value}' is not a voxel "
                                           r"size: each of z, y, x must be a finite number "
                                           r"from 1e-06 to 1000000 nm"):
        call_command("create_dataset", "vnc", "--voxel-size", value, "1", "1")
    assert not Dataset.objects.exists()


def test_the_service_refuses_them_too():
    with pytest.raises(ValueError, match=r"dataset 'vnc': voxel size \(nan, 1, 1\) nm is not "
                                         r"usable \(z is not a number\)"):
        dataset_create(name="vnc", voxel_size=(float("nan"), 1, 1))
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("voxel_size, message", [
    ([40, 8, 1e308], "voxel_size[2]: Ensure this value is less than or equal to 1000000.0."),
    (["nan", 1, 1], "voxel_size[0]: A valid number is required."),
    ([40, "Infinity", 8], "voxel_size[1]: A valid number is required."),
    ([40, 8, -8], "voxel_size[2]: Ensure this value is greater than or equal to 1e-06."),
    ([40, 8], "voxel_size: Ensure this field has at least 3 elements."),
])
def test_the_api_refuses_them_naming_the_item(voxel_size, message):
    client = _superuser_client()
    response = client.post("/api/datasets/", {"name": "vnc", "voxel_size": voxel_size},
                           format="json")
    assert response.status_code == 400
    assert _no_reprs(response.json()["error"]) == message
    assert not Dataset.objects.exists()


def test_a_nan_voxel_size_cannot_be_stored_so_the_dataset_list_never_fails():
    good = DatasetFactory(name="good", is_public=True)
    bad = Dataset(name="bad", voxel_size_z=float("nan"), voxel_size_y=8, voxel_size_x=8)
    with pytest.raises(ValidationError) as info:
        bad.full_clean()
    assert info.value.message_dict["voxel_size_z"] == ["must be a finite number, not nan"]
    for values in ((float("nan"), 8, 8), (40, float("inf"), 8), (40, 8, 1e308), (40, 8, 0)):
        with pytest.raises(IntegrityError), transaction.atomic():
            Dataset.objects.create(name="bad", voxel_size_z=values[0], voxel_size_y=values[1],
                                   voxel_size_x=values[2], is_public=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.filter(pk=good.pk).update(voxel_size_x=float("nan"))
    response = APIClient().get("/api/datasets/")
    assert response.status_code == 200
    assert [d["voxel_size"] for d in response.json()["results"]] == [[40.0, 8.0, 8.0]]


# --- voxel sizes the files state --------------------------------------------------------------

@pytest.mark.parametrize("resolution, shown, problem", [
    ((float("nan"), 8, 8), "(nan, 8, 8)", "z is not a number"),
    ((-40, 8, 8), "(-40, 8, 8)", "z is not positive"),
])
def test_an_hdf5_resolution_that_is_not_a_voxel_size_needs_an_explicit_one(
        data_root, tmp_path, resolution, shown, problem):
    path = _h5(tmp_path / "v.h5", resolution=resolution)
    dataset = DatasetFactory()
    with pytest.raises(JobParameterError) as info:
        job_create(kind="import_volume", dataset=dataset, enqueue=False,
                   parameters={"source": path, "name": "em"})
    assert _no_reprs(info.value.errors["source"][0]) == (
        f"{path} [raw]: attribute 'resolution' {shown} is not a usable voxel size ({problem}; "
        "each of z, y, x must be a finite number from 1e-06 to 1000000 nm). Give the voxel "
        "size (z, y, x in nm) to override what the file states")
    assert not Job.objects.exists()
    _nothing_written(data_root, dataset)

    job = job_run_inline(kind="import_volume", dataset=dataset,
                         parameters={"source": path, "name": "em", "voxel_size": [40, 8, 8]})
    assert job.state == Job.State.DONE, job.error
    layer = dataset.layers.get()
    assert layer.parameters["voxel_size"] == [40.0, 8.0, 8.0]
    assert layer.parameters["source_voxel_size"] is None
    assert layer.parameters["voxel_size_overridden"] == (
        f"{path} [raw]: attribute 'resolution' {shown} is not a usable voxel size ({problem}; "
        "each of z, y, x must be a finite number from 1e-06 to 1000000 nm); overridden by the "
        "given voxel size")


def test_an_import_voxel_size_override_must_be_a_voxel_size(data_root, tmp_path):
    path = _h5(tmp_path / "v.h5")
    dataset = DatasetFactory()
    for given, message in (([40, 8, 1e7], "voxel_size[2]: Ensure this value is less than or "
                                          "equal to 1000000.0."),
                           ([40, "x", 8], "voxel_size[1]: A valid number is required.")):
        with pytest.raises(JobParameterError) as info:
            job_create(kind="import_volume", dataset=dataset, enqueue=False,
                       parameters={"source": path, "name": "em", "voxel_size": given})
        assert _no_reprs(str(info.value)) == f"invalid parameters for import_volume job: {message}"
    with pytest.raises(CommandError, match=r"argument --voxel-size: 'nan' is not a voxel size"):
        call_command("import_volume", str(dataset.pk), path, "--voxel-size", "nan", "8", "8")
    assert not Job.objects.exists()
    _nothing_written(data_root, dataset)


# --- missing chunks ---------------------------------------------------------------------------

def test_a_zarr_with_a_deleted_chunk_fails_naming_it_unless_a_fill_is_asked_for(data_root, tmp_path):
    path = tmp_path / "em.zarr"
    array = zarr.open_array(str(path), mode="w", shape=(8, 32, 32), chunks=(4, 16, 16),
                            dtype="u1", fill_value=0)
    array[:] = 200
    array.attrs["resolution"] = [40, 8, 8]
    os.remove(path / "1.1.0")
    dataset = DatasetFactory()
    job = job_run_inline(kind="import_volume", dataset=dataset,
                         parameters={"source": str(path), "name": "em"})
    assert job.state == Job.State.FAILED
    assert _no_reprs(job.error).startswith(
        f"{path}/1.1.0: zarr chunk '1.1.0' (z 4:8, y 16:32, x 0:16) is missing; zarr would read "
        "it as the fill value 0.")
    assert "with fill_missing (--fill-missing) missing chunks read as 0" in job.error
    _nothing_written(data_root, dataset)

    call_command("import_volume", str(dataset.pk), str(path), "--name", "em", "--fill-missing")
    layer = dataset.layers.get()
    assert layer.parameters["fill_missing"] is True
    stored = zarr.open_group(str(layer.path), "r")["0"][:]
    assert (stored[4:, 16:, :16] == 0).all() and (stored == 200).sum() == 8 * 32 * 32 - 4 * 16 * 16


# --- text that is not UTF-8 -------------------------------------------------------------------

def test_a_synapse_table_that_is_not_utf8_names_the_file_and_line(tmp_path):
    dataset = DatasetFactory(shape_z=10, shape_y=100, shape_x=100)
    CellFactory(dataset=dataset, segment_id=5)
    CellFactory(dataset=dataset, segment_id=6)
    path = tmp_path / "synapses.csv"
    path.write_bytes(b"\xff" + CNAPSE_HEADER.encode() + b"1,5,100,6,200,80,120,40,33\n")
    job = job_run_inline(kind="import_synapses", dataset=dataset,
                         parameters={"source": str(path), "run_name": "r"})
    assert job.state == Job.State.FAILED
    assert _no_reprs(job.error) == (
        f"{path} line 1: not UTF-8 text: byte 0xff at byte 0 of the file; save it as UTF-8 "
        "(in a spreadsheet: CSV UTF-8)")
    assert not SynapseRun.objects.exists() and not Synapse.objects.exists()
    assert not JobLock.objects.exists()


def test_skeletons_and_cell_types_that_are_not_utf8_name_the_file(tmp_path):
    dataset = DatasetFactory()
    CellFactory(dataset=dataset, segment_id=7)
    swc = tmp_path / "7.swc"
    swc.write_bytes(b"# traced by J\xfcrgen\n1 1 0 0 0 1 -1\n")
    job = job_run_inline(kind="import_skeletons", dataset=dataset,
                         parameters={"source": str(swc)})
    assert job.state == Job.State.FAILED
    assert _no_reprs(job.error).startswith(f"{swc} line 1: not UTF-8 text (byte 0xfc at byte 13")
    assert not Skeleton.objects.exists()

    types = tmp_path / "types.csv"
    types.write_bytes(b"segment_id,cell_type\n7,K\xe4fer\n")
    with pytest.raises(CommandError, match=rf"{types} line 2: not UTF-8 text: byte 0xe4"):
        call_command("import_cell_types", str(dataset.pk), str(types))
    assert Cell.objects.get().cell_type == ""


# --- names ------------------------------------------------------------------------------------

def test_control_characters_are_refused_in_dataset_and_layer_names(data_root, tmp_path):
    client = _superuser_client()
    response = client.post("/api/datasets/", {"name": "vnc\x1b[2J", "voxel_size": [40, 8, 8]},
                           format="json")
    assert response.status_code == 400
    assert response.json()["error"] == (
        "name: name contains a control character (U+001B) at position 4; names must be "
        "printable text")
    with pytest.raises(CommandError, match=r"dataset name 'v\\u0009nc' contains a control "
                                           r"character \(U\+0009\) at position 2"):
        call_command("create_dataset", "v\tnc", "--voxel-size", "40", "8", "8")
    assert not Dataset.objects.exists()

    dataset = DatasetFactory()
    layer = import_volume(dataset=dataset, source=_h5(tmp_path / "v.h5"), name="em")
    client, _ = _admin_client(dataset)
    response = client.patch(f"/api/layers/{layer.pk}/", {"name": "em\u202egnp.exe"},
                            format="json")
    assert response.status_code == 400
    assert "text-direction control character (U+202E RIGHT-TO-LEFT OVERRIDE) at position 3" \
        in response.json()["error"]
    response = client.patch(f"/api/datasets/{dataset.pk}/", {"name": "a\u2028b"}, format="json")
    assert response.status_code == 400 and "line separator" in response.json()["error"]
    assert Layer.objects.get().name == "em"
    dataset.refresh_from_db()
    assert not dataset.name.startswith("a")


@pytest.mark.parametrize("kind, parameters, field", [
    ("import_volume", {"name": "em\n2"}, "name"),
    ("import_synapses", {"run_name": "run\x07"}, "run_name"),
    ("import_synapses", {"run_name": "r", "method": "cnn\x1b"}, "method"),
    ("import_skeletons", {"source_name": "s\rwc"}, "source_name"),
])
def test_control_characters_are_refused_in_job_names(tmp_path, kind, parameters, field):
    dataset = DatasetFactory()
    source = _h5(tmp_path / "v.h5") if kind == "import_volume" else str(tmp_path)
    with pytest.raises(JobParameterError) as info:
        job_create(kind=kind, dataset=dataset, enqueue=False,
                   parameters={"source": source, **parameters})
    assert field in info.value.errors
    assert "contains a control character" in _no_reprs(str(info.value))
    assert not Job.objects.exists()


def test_control_characters_are_refused_in_detection_and_assignment_run_names(tmp_path):
    dataset = DatasetFactory()
    model = tmp_path / "m.model"
    model.write_bytes(b"")
    for kind, parameters in (
        ("detect_synapses", {"model": str(model), "em_layer": 1, "run_name": "d\x00"}),
        ("detect_synapses", {"model": str(model), "em_layer": 1, "run_name": "d",
                             "instances_layer": "i\x1bj"}),
        ("assign_partners", {"method": "vesicle", "sites_layer": "1", "segmentation_layer": "2",
                             "run_name": "p\x7f"}),
    ):
        with pytest.raises(JobParameterError) as info:
            job_create(kind=kind, dataset=dataset, enqueue=False, parameters=parameters)
        _no_reprs(str(info.value))
    assert not Job.objects.exists()


def test_cell_names_from_files_and_the_api_are_checked(tmp_path):
    dataset = DatasetFactory()
    CellFactory(dataset=dataset, segment_id=3, name="ADAL")
    edges = tmp_path / "edges.csv"
    edges.write_text("pre,post,type,synapses\nADAL,AVA\x1bL,chemical,2\n")
    job = job_run_inline(kind="import_synapses", dataset=dataset,
                         parameters={"source": str(edges), "run_name": "w",
                                     "create_missing_cells": True})
    assert job.state == Job.State.FAILED
    assert _no_reprs(job.error) == (
        "edges.csv data row 1: cell name 'AVA\\u001bL' contains a control character "
        "(U+001B) at position 4; names must be printable text")
    assert list(Cell.objects.values_list("name", flat=True)) == ["ADAL"]
    assert not SynapseRun.objects.exists()

    types = tmp_path / "types.csv"
    types.write_text("segment_id,cell_type,name\n3,motor\tneuron,ADAL\n")
    with pytest.raises(CommandError, match=r"types\.csv line 2, field 'cell_type': contains a "
                                           r"control character \(U\+0009\)"):
        call_command("import_cell_types", str(dataset.pk), str(types))

    client, _ = _admin_client(dataset)
    cell = Cell.objects.get()
    response = client.patch(f"/api/cells/{cell.pk}/", {"cell_type": "motor\r\nneuron"},
                            format="json")
    assert response.status_code == 400
    assert "cell_type: name contains a control character (U+000D)" in response.json()["error"]
    assert Cell.objects.get().cell_type == ""


# --- error texts without reprs ----------------------------------------------------------------

def test_failing_jobs_report_plain_sentences(data_root, tmp_path):
    """Several ways to fail, at submission and while running: no repr reaches the error."""
    dataset = DatasetFactory(shape_z=10, shape_y=100, shape_x=100)
    CellFactory(dataset=dataset, segment_id=5)
    CellFactory(dataset=dataset, segment_id=6)
    errors = []

    outside = tmp_path / "outside.csv"
    outside.write_text(CNAPSE_HEADER + "1,5,100,6,200,80,120,40000.5,33\n")
    job = job_run_inline(kind="import_synapses", dataset=dataset,
                         parameters={"source": str(outside), "run_name": "r"})
    assert job.state == Job.State.FAILED
    assert job.error.startswith(
        "outside.csv data row 1 (syn_id 1): position (z, y, x) (40000.5, 120, 80) nm lies "
        f"outside dataset '{dataset.name}' (extent (400, 800, 800) nm)")
    errors.append(job.error)

    mismatch = _h5(tmp_path / "m.h5", np.zeros((10, 100, 100), np.uint8),
                   resolution=(50, 4.6, 4.6))
    with pytest.raises(JobParameterError) as info:
        job_create(kind="import_volume", dataset=dataset, enqueue=False,
                   parameters={"source": mismatch, "name": "em"})
    assert str(info.value) == (
        "invalid parameters for import_volume job: source: m.h5: voxel size (z, y, x) "
        f"(50, 4.6, 4.6) nm does not match dataset '{dataset.name}' voxel size (40, 8, 8) nm "
        "(pass an explicit voxel size to override what the file states)")
    errors.append(str(info.value))

    with pytest.raises(JobParameterError) as info:
        job_create(kind="import_volume", dataset=dataset, enqueue=False,
                   parameters={"source": mismatch, "name": "em", "chunks": [0, "a", 8]})
    assert str(info.value) == (
        "invalid parameters for import_volume job: chunks[0]: Ensure this value is greater "
        "than or equal to 1.; chunks[1]: A valid integer is required.")
    errors.append(str(info.value))

    with pytest.raises(JobParameterError) as info:
        job_create(kind="skeletonize", dataset=dataset, enqueue=False, parameters={"layer": 12})
    assert str(info.value) == (
        "invalid parameters for skeletonize job: layer: dataset "
        f"'{dataset.name}' has no segmentation layer 12")
    errors.append(str(info.value))

    for message in errors:
        _no_reprs(message)
    assert not JobLock.objects.exists()
    assert Job.objects.filter(state=Job.State.FAILED).count() == 1


def test_a_layer_deleted_after_submission_fails_the_job_with_a_sentence(data_root, tmp_path):
    dataset = DatasetFactory()
    labels = np.zeros((4, 16, 16), np.uint32)
    labels[1:3, 2:9, 2:9] = 4
    layer = import_volume(dataset=dataset, source=_h5(tmp_path / "s.h5", labels), name="seg",
                          kind="segmentation")
    job = job_create(kind="skeletonize", dataset=dataset, enqueue=False,
                     parameters={"layer": layer.pk, "min_size_voxels": 1})
    layer_id = layer.pk
    layer.delete()
    job = job_execute(job_id=job.pk)
    assert job.state == Job.State.FAILED
    assert _no_reprs(job.error) == f"dataset '{dataset.name}' has no segmentation layer {layer_id}"
    assert not JobLock.objects.exists()


def test_api_errors_of_nested_parameters_are_sentences(data_root, tmp_path):
    dataset = DatasetFactory()
    client, _ = _admin_client(dataset)
    response = client.post("/api/jobs/", {"kind": "import_volume", "dataset": dataset.pk,
                                          "parameters": {"source": _h5(tmp_path / "v.h5"),
                                                         "name": "em",
                                                         "voxel_size": [40, "x", 8]}},
                           format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "parameters.voxel_size[1]: A valid number is required."
    assert body["detail"] == {"parameters": {"voxel_size": {"1": ["A valid number is required."]}}}


# --- conflicting jobs refused when they are submitted -----------------------------------------

def _table(tmp_path, rows=3):
    path = tmp_path / "synapses.csv"
    path.write_text(CNAPSE_HEADER + "".join(
        f"{i},5,{100 + i},6,{200 + i},{80 + i},120,40,33\n" for i in range(1, rows + 1)))
    return str(path)


@pytest.mark.django_db(transaction=True)
def test_twenty_identical_synapse_imports_posted_at_once_make_one_job_and_one_run(
        tmp_path, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent submissions need PostgreSQL (set DATABASE_URL); SQLite "
                    "serializes every writer")
    monkeypatch.setattr("connectome.jobs.services.job_enqueue", lambda job_id: None)
    dataset = DatasetFactory(shape_z=10, shape_y=100, shape_x=100)
    CellFactory(dataset=dataset, segment_id=5)
    CellFactory(dataset=dataset, segment_id=6)
    _, user = _admin_client(dataset)
    body = {"kind": "import_synapses", "dataset": dataset.pk,
            "parameters": {"source": _table(tmp_path), "run_name": "cnapse"}}
    start = threading.Barrier(20)

    def post(_):
        client = APIClient()
        client.force_authenticate(user)
        start.wait()
        try:
            return client.post("/api/jobs/", body, format="json")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(post, range(20)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [400] * 19
    job = Job.objects.get()
    assert job.state == Job.State.QUEUED
    for response in responses:
        if response.status_code == 400:
            assert response.json()["error"] == (
                f"parameters.dataset: synapse run 'cnapse' of dataset '{dataset.name}' is being "
                f"written by import_synapses job {job.pk} (queued); wait for it to end or "
                "cancel it")
    assert list(JobLock.objects.values_list("resource", "job")) == [("synapse run 'cnapse'", job.pk)]

    job = job_execute(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    run = SynapseRun.objects.get()
    assert (run.name, run.synapses.count()) == ("cnapse", 3)
    assert not JobLock.objects.exists()


def test_a_second_synapse_import_is_refused_until_the_first_ends(tmp_path):
    dataset = DatasetFactory(shape_z=10, shape_y=100, shape_x=100)
    CellFactory(dataset=dataset, segment_id=5)
    CellFactory(dataset=dataset, segment_id=6)
    parameters = {"source": _table(tmp_path), "run_name": "r", "replace": True}
    first = job_create(kind="import_synapses", dataset=dataset, parameters=parameters,
                       enqueue=False)
    with pytest.raises(JobConflict, match=f"synapse run 'r' .* is being written by "
                                          f"import_synapses job {first.pk} \\(queued\\)"):
        job_create(kind="import_synapses", dataset=dataset, parameters=parameters, enqueue=False)
    assert job_execute(job_id=first.pk).state == Job.State.DONE
    # Ended: replacing the run is allowed again; importing it anew is refused at once.
    again = job_run_inline(kind="import_synapses", dataset=dataset, parameters=parameters)
    assert again.state == Job.State.DONE and SynapseRun.objects.count() == 1
    with pytest.raises(JobConflict, match=f"dataset '{dataset.name}' already has a synapse run "
                                          r"named 'r' \(replace it to import it again\)"):
        job_create(kind="import_synapses", dataset=dataset, enqueue=False,
                   parameters={**parameters, "replace": False})
    assert Job.objects.count() == 2 and not JobLock.objects.exists()


def test_volume_and_skeleton_jobs_are_refused_while_another_writes_the_same(data_root, tmp_path):
    dataset = DatasetFactory()
    em = _h5(tmp_path / "em.h5")
    first = job_create(kind="import_volume", dataset=dataset, enqueue=False,
                       parameters={"source": em, "name": "em"})
    with pytest.raises(JobConflict, match=f"layer 'em' .* import_volume job {first.pk}"):
        job_create(kind="import_volume", dataset=dataset, enqueue=False,
                   parameters={"source": em, "name": "em"})

    labels = np.zeros((4, 16, 16), np.uint32)
    labels[1:3, 2:9, 2:9] = 4
    seg = _h5(tmp_path / "seg.h5", labels)
    segmentation = job_create(kind="import_volume", dataset=dataset, enqueue=False,
                              parameters={"source": seg, "name": "seg", "kind": "segmentation"})
    # Two jobs that would create cells at once: a synapse table that creates its cells.
    with pytest.raises(JobConflict, match=f"cell list .* import_volume job {segmentation.pk}"):
        job_create(kind="import_synapses", dataset=dataset, enqueue=False,
                   parameters={"source": _table(tmp_path), "run_name": "r",
                               "create_missing_cells": True})
    assert job_execute(job_id=segmentation.pk).state == Job.State.DONE
    assert job_execute(job_id=first.pk).state == Job.State.DONE
    with pytest.raises(JobConflict, match="already has a layer named 'em'"):
        job_create(kind="import_volume", dataset=dataset, enqueue=False,
                   parameters={"source": em, "name": "em"})

    layer = dataset.layers.get(name="seg")
    skeletonize = job_create(kind="skeletonize", dataset=dataset, enqueue=False,
                             parameters={"layer": layer.pk, "min_size_voxels": 1})
    with pytest.raises(JobConflict, match=f"skeletons 'kimimaro' .* skeletonize job "
                                          f"{skeletonize.pk}"):
        job_create(kind="skeletonize", dataset=dataset, enqueue=False,
                   parameters={"layer": layer.pk})
    swc = tmp_path / "4.swc"
    swc.write_text("1 1 0 0 0 1 -1\n")
    skeletons = job_create(kind="import_skeletons", dataset=dataset, enqueue=False,
                           parameters={"source": str(swc)})  # another source: no conflict
    with pytest.raises(JobConflict, match=f"skeletons 'swc' .* import_skeletons job "
                                          f"{skeletons.pk}"):
        job_create(kind="import_skeletons", dataset=dataset, enqueue=False,
                   parameters={"source": str(swc)})
    assert job_execute(job_id=skeletons.pk).state == Job.State.DONE
    assert job_execute(job_id=skeletonize.pk).state == Job.State.DONE
    assert not JobLock.objects.exists()
    assert Job.objects.count() == 4
    assert all(math.isfinite(v) for v in dataset.voxel_size)
    assert json.loads(json.dumps(dataset.layers.get(name="em").parameters))["fill_missing"] is False


@pytest.mark.django_db(transaction=True)
def test_the_migration_names_datasets_whose_voxel_size_it_would_refuse():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NaN as NULL, so no such row can exist there")
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("datasets", "0003_alter_layer_kind")], [
        ("datasets", "0004_voxel_size_bounds_and_names")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO datasets_dataset (name, description, voxel_size_z, voxel_size_y, "
                "voxel_size_x, is_public, created_at, updated_at) VALUES "
                "('old', '', 'NaN', 8, 8, false, now(), now()) RETURNING id")
            pk = cursor.fetchone()[0]
        executor = MigrationExecutor(connection)
        with pytest.raises(RuntimeError) as info:
            executor.migrate(after)
        assert str(info.value) == (
            "voxel sizes must be finite numbers from 1e-06 to 1e+06 nm; set usable ones before "
            f"migrating: dataset {pk} 'old' has voxel size (nan, 8, 8) nm")
        with connection.cursor() as cursor:
            cursor.execute("UPDATE datasets_dataset SET voxel_size_z = 40 WHERE id = %s", [pk])
    finally:
        # Back to the newest migration of every app: rolling datasets back to 0003 also
        # unapplied the later migrations that depend on it (here or in other apps).
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert Dataset.objects.get().voxel_size == (40.0, 8.0, 8.0)


@pytest.mark.django_db
def test_cell_and_run_names_saved_through_forms_are_printable():
    """The admin's forms validate the models: a cell name or type, or a run name, with a
    control character is refused there too."""
    dataset = DatasetFactory()
    cell = Cell(dataset=dataset, segment_id=5, name="AVAL\x1b[31m", cell_type="inter\tneuron")
    with pytest.raises(ValidationError) as refused:
        cell.full_clean()
    assert refused.value.message_dict == {
        "name": ["name contains a control character (U+001B) at position 5; names must be "
                 "printable text"],
        "cell_type": ["name contains a control character (U+0009) at position 6; names must "
                      "be printable text"]}
    run = SynapseRun(dataset=dataset, name="run\u202e1", method="import")
    with pytest.raises(ValidationError, match="text-direction control character"):
        run.full_clean()
