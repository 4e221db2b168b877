"""The link_sections job: a per-section profiles layer in, a 3D segmentation layer and its cells
out, slab by slab equal to linking the whole stack; failures leave nothing."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from connectome.cells.models import Cell
from connectome.datasets.models import Layer
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import blocks_run_inline, job_resume
from connectome.jobs.models import Job, JobLock
from connectome.jobs.services import JobParameterError, job_create, job_run_inline
from detection.cells.section_linking import link_sections
from detection.io.zarr_store import open_multiscale
from tests.conftest import shared_file
from tests.connectome.factories import DatasetFactory
from tests.connectome.test_hulls_job import worker  # noqa: F401 - fixture
from tests.detection.test_section_linking import _per_section_profiles, _phantom

pytestmark = pytest.mark.django_db

VOXEL = (50.0, 4.6, 4.6)


@pytest.fixture(scope="module")
def stack():
    phantom = _phantom(VOXEL, (16, 96, 96), 4)
    profiles = _per_section_profiles(phantom.segmentation, seed=2, dtype=np.uint32)
    profiles[6] = 0                          # a blank section
    membrane = phantom.segmentation == 0
    return profiles, membrane


@pytest.fixture
def dataset(data_root, tmp_path, stack):
    profiles, membrane = stack
    path = tmp_path / "profiles.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("profiles", data=profiles)
        f.create_dataset("membrane", data=membrane.astype(np.uint8))
        f.create_dataset("probability", data=np.where(membrane, 0.9, 0.1).astype(np.float32))
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2])
    layers = {name: import_volume(dataset=dataset, source=str(path), name=name, kind=kind,
                                  dataset_path=name, voxel_size=VOXEL)
              for name, kind in (("profiles", "segmentation"), ("membrane", "mask"),
                                 ("probability", "prediction"))}
    return dataset, layers


def _parameters(layers, **extra):
    return {"profiles_layer": layers["profiles"].pk, "membrane_layer": layers["membrane"].pk,
            "name": "linked", "slab_sections": 3, **extra}


def _labels(layer: Layer) -> np.ndarray:
    return open_multiscale(layer.path)[0]["0"][:]


def _same_report(result: dict, report) -> None:
    expected = report.to_dict()
    mean, want = result.pop("mean_overlap_fraction"), expected.pop("mean_overlap_fraction")
    assert result == expected
    assert mean == pytest.approx(want, rel=1e-12)


def test_the_job_links_like_the_whole_stack_and_makes_cells(dataset, stack):
    dataset, layers = dataset
    profiles, membrane = stack
    profile_cells = Cell.objects.filter(dataset=dataset).count()     # the 2D profiles' own
    largest = max(Cell.objects.filter(dataset=dataset).values_list("segment_id", flat=True))
    job = job_run_inline(kind="link_sections", dataset=dataset, parameters=_parameters(layers))
    assert job.state == Job.State.DONE, job.error
    assert job.progress_total == 6                                  # slabs of 3 of 16 sections
    expected, report = link_sections(profiles, membrane=membrane, voxel_size=VOXEL)
    assert report.n_cells < report.n_profiles / 2 and report.blank_sections == (6,)
    _same_report(dict(job.result["report"]), report)

    layer = Layer.objects.get(dataset=dataset, name="linked")
    assert layer.kind == Layer.Kind.SEGMENTATION and layer.method == "link_sections"
    labels = _labels(layer)
    offset = largest                                  # the first cell is one above the largest
    assert job.result["first_id"] == offset + 1
    np.testing.assert_array_equal(labels, np.where(expected > 0, expected + offset, 0))

    cells = Cell.objects.filter(dataset=dataset, layer=layer).order_by("segment_id")
    assert cells.count() == report.n_cells == job.result["cells"]
    assert Cell.objects.filter(dataset=dataset).count() == profile_cells + report.n_cells
    sizes = np.bincount(expected.ravel().astype(np.int64))[1:]
    assert [c.size_voxels for c in cells] == sizes.tolist()
    first = cells.first()
    z, y, x = np.nonzero(expected == 1)
    assert first.segment_id == offset + 1
    assert first.bbox == ((z.min(), y.min(), x.min()), (z.max() + 1, y.max() + 1, x.max() + 1))
    assert first.centroid_z == pytest.approx(z.mean() * VOXEL[0])
    assert not JobLock.objects.exists()


def test_a_prediction_membrane_no_membrane_and_a_given_first_id(dataset, stack):
    dataset, layers = dataset
    profiles, membrane = stack
    job = job_run_inline(kind="link_sections", dataset=dataset, parameters=_parameters(
        layers, membrane_layer=layers["probability"].pk, membrane_threshold=0.5,
        slab_sections=5, first_id=2**40, allow_branches=False, min_overlap=0.4))
    assert job.state == Job.State.DONE, job.error
    expected, report = link_sections(profiles, membrane=membrane, voxel_size=VOXEL,
                                     allow_branches=False, min_overlap=0.4)
    _same_report(dict(job.result["report"]), report)
    layer = Layer.objects.get(dataset=dataset, name="linked")
    assert layer.dtype == "uint64"
    np.testing.assert_array_equal(_labels(layer),
                                  np.where(expected > 0, expected + (2**40 - 1), 0))

    bare = job_run_inline(kind="link_sections", dataset=dataset, parameters=_parameters(
        layers, membrane_layer=None, name="without membrane", slab_sections=16))
    assert bare.state == Job.State.DONE, bare.error
    expected, report = link_sections(profiles, voxel_size=VOXEL)
    _same_report(dict(bare.result["report"]), report)
    # Numbered above the first job's cells.
    assert bare.result["first_id"] == 2**40 + job.result["cells"]


def test_bad_layers_and_a_taken_first_id_are_refused(dataset):
    dataset, layers = dataset
    with pytest.raises(JobParameterError, match="profiles_layer: .*is a mask layer"):
        job_create(kind="link_sections", dataset=dataset, enqueue=False,
                   parameters=_parameters(layers, profiles_layer=layers["membrane"].pk))
    with pytest.raises(JobParameterError, match="membrane_layer: .*is a segmentation layer"):
        job_create(kind="link_sections", dataset=dataset, enqueue=False,
                   parameters=_parameters(layers, membrane_layer=layers["profiles"].pk))
    with pytest.raises(JobParameterError, match="first_id: .*has cells with segment ids from 5"):
        job_create(kind="link_sections", dataset=dataset, enqueue=False,
                   parameters=_parameters(layers, first_id=5))
    assert not Job.objects.exists()


def test_a_failed_slab_leaves_no_layer_and_no_cells(dataset, stack, monkeypatch):
    dataset, layers = dataset
    from connectome.cells import linking

    calls = []
    real = linking.link_slab

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise MemoryError("no room")
        return real(*args, **kwargs)

    monkeypatch.setattr(linking, "link_slab", failing)
    before = Cell.objects.count()
    job = job_run_inline(kind="link_sections", dataset=dataset,
                         parameters=_parameters(layers, max_attempts=1))
    assert job.state == Job.State.FAILED and "block 3" in job.error
    assert not Layer.objects.filter(dataset=dataset, name="linked").exists()
    assert Cell.objects.count() == before and not JobLock.objects.exists()
    # Resumed: slabs 4 and 5 were never run, slab 3 failed; the rest are kept.
    monkeypatch.undo()
    assert job_resume(job=job, enqueue=False) == 3
    job = blocks_run_inline(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    profiles, membrane = stack
    expected, _ = link_sections(profiles, membrane=membrane, voxel_size=VOXEL)
    np.testing.assert_array_equal(_labels(Layer.objects.get(dataset=dataset, name="linked")),
                                  np.where(expected > 0, expected + job.result["first_id"] - 1, 0))


def test_real_vnc_profiles_through_the_job(data_root, tmp_path):
    path = shared_file("vnc_sstem_train.h5")
    with h5py.File(path, "r") as f:
        profiles = f["volumes/labels/neuron_ids_2d"][:, :192]
        membrane = f["volumes/labels/membrane_mask"][:, :192]
    crop = tmp_path / "vnc.h5"
    with h5py.File(crop, "w") as f:
        f.create_dataset("profiles", data=profiles)
        f.create_dataset("membrane", data=membrane)
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2])
    layers = {name: import_volume(dataset=dataset, source=str(crop), name=name, kind=kind,
                                  dataset_path=name, voxel_size=VOXEL)
              for name, kind in (("profiles", "segmentation"), ("membrane", "mask"))}
    job = job_run_inline(kind="link_sections", dataset=dataset,
                         parameters=_parameters(layers, slab_sections=7))
    assert job.state == Job.State.DONE, job.error
    expected, report = link_sections(profiles, membrane=membrane, voxel_size=VOXEL)
    assert report.n_links > 300
    _same_report(dict(job.result["report"]), report)
    offset = job.result["first_id"] - 1
    np.testing.assert_array_equal(_labels(Layer.objects.get(dataset=dataset, name="linked")),
                                  np.where(expected > 0, expected + offset, 0))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_links_the_slabs(dataset, stack, worker):  # noqa: F811 - fixture
    dataset, layers = dataset
    profiles, membrane = stack
    job = job_create(kind="link_sections", dataset=dataset, parameters=_parameters(layers))
    deadline = time.monotonic() + 120
    while Job.objects.get(pk=job.pk).state not in Job.FINISHED_STATES:
        assert time.monotonic() < deadline, "the worker did not finish the job in 120 s"
        time.sleep(0.2)
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.DONE, job.error
    expected, report = link_sections(profiles, membrane=membrane, voxel_size=VOXEL)
    _same_report(dict(job.result["report"]), report)
    offset = job.result["first_id"] - 1
    np.testing.assert_array_equal(_labels(Layer.objects.get(dataset=dataset, name="linked")),
                                  np.where(expected > 0, expected + offset, 0))
