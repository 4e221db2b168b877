"""The skeleton_hulls job: SWC skeletons and a boundary layer in, a hull layer and linked cells
out; blocks equal to the whole volume; failures leave nothing; a real worker runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from django.conf import settings

from connectome.cells.models import Cell
from connectome.datasets.models import Layer
from connectome.imports.skeletons import import_skeletons
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import blocks_run_inline, job_resume
from connectome.jobs.models import Job, JobLock
from connectome.jobs.services import (
    JobConflict,
    JobParameterError,
    job_create,
    job_run_inline,
)
from detection.cells.hulls import CellSkeleton, RayParameters, skeleton_hulls
from detection.io.swc import SkeletonNodes, write_swc
from detection.io.zarr_store import open_multiscale
from tests.connectome.factories import CellFactory, DatasetFactory
from tests.connectome.test_jobs import _database_url_for_worker
from tests.detection.test_hulls import z_tubes

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (6, 96, 128)
BIG = 2**40 + 7
#: (centre y, centre x, radius nm, segment id): tubes along z; 5 and 9 share a membrane.
TUBES = [(30, 30, 20 * 8.0, 5), (30, 30 + 41, 20 * 8.0, 9), (72, 96, 14 * 8.0, BIG),
         (75, 40, 12 * 8.0, 3)]
RAYS = {"max_radius_nm": 320.0, "n_rays": 32}


def _axis(cy, cx) -> np.ndarray:
    """Voxel positions along a tube's axis: every other section and the last."""
    z = np.unique(np.r_[np.arange(0, SHAPE[0], 2), SHAPE[0] - 1]).astype(float)
    return np.stack([z, np.full(z.size, float(cy)), np.full(z.size, float(cx))], axis=1)


def _tube_skeleton(cy, cx) -> SkeletonNodes:
    """A chain of nodes along the tube's axis, in nm (node ids 1..n, each the next's parent)."""
    n = len(_axis(cy, cx))
    parent = np.arange(0, n)
    parent[0] = -1
    return SkeletonNodes(node_id=np.arange(1, n + 1), parent_id=parent,
                         zyx=_axis(cy, cx) * np.asarray(VOXEL), radius=np.zeros(n),
                         compartment=np.zeros(n))


@pytest.fixture
def scene(data_root, tmp_path):
    truth, boundary, _ = z_tubes(SHAPE, VOXEL, TUBES, membrane_nm=16.0)
    path = tmp_path / "boundary.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("boundary", data=boundary)
        f.create_dataset("mask", data=(boundary > 0.5).astype(np.uint8))
        f.create_dataset("em", data=np.zeros(SHAPE, np.uint8))
    dataset = DatasetFactory(voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1], voxel_size_x=VOXEL[2])
    layer = import_volume(dataset=dataset, source=str(path), name="boundary", kind="prediction",
                          dataset_path="boundary", voxel_size=VOXEL)
    swc = tmp_path / "swc"
    swc.mkdir()
    for cy, cx, _, segment in TUBES:
        CellFactory(dataset=dataset, segment_id=segment)
        write_swc(swc / f"{segment}.swc", _tube_skeleton(cy, cx))
    import_skeletons(dataset=dataset, source=str(swc))
    return dataset, layer, truth, boundary, path


def _parameters(layer, **extra):
    return {"boundary_layer": layer.pk, "name": "hulls", "block_shape": [4, 32, 64],
            **RAYS, **extra}


def _labels(layer: Layer) -> np.ndarray:
    return open_multiscale(layer.path)[0]["0"][:]


def test_the_job_paints_the_tubes_and_links_each_hull_to_its_cell(scene):
    dataset, boundary_layer, truth, boundary, _ = scene
    job = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                         parameters=_parameters(boundary_layer))
    assert job.state == Job.State.DONE, job.error
    assert job.progress_done == job.progress_total == 2 * 3 * 2
    layer = Layer.objects.get(dataset=dataset, name="hulls")
    assert layer.kind == Layer.Kind.SEGMENTATION and layer.method == "skeleton_hulls"
    assert layer.dtype == "uint64"                       # a segment id above 2**32
    labels = _labels(layer)
    for *_, segment in TUBES:
        hull, tube = labels == segment, truth == segment
        assert (hull & tube).sum() / (hull | tube).sum() > 0.9, segment
        cell = Cell.objects.get(dataset=dataset, segment_id=segment)
        assert cell.layer_id == layer.pk and cell.size_voxels == hull.sum()
        z, y, x = np.nonzero(hull)
        assert cell.bbox == ((z.min(), y.min(), x.min()), (z.max() + 1, y.max() + 1, x.max() + 1))
        assert cell.centroid_y == pytest.approx(y.mean() * VOXEL[1])
    assert not labels[boundary == 1].any()
    # The blocks together are the whole volume's hulls, from the same skeletons.
    skeletons = [CellSkeleton(segment, nodes=_axis(cy, cx),
                              edges=[[i, i + 1] for i in range(len(_axis(cy, cx)) - 1)])
                 for cy, cx, _, segment in TUBES]
    whole = skeleton_hulls(boundary, skeletons, voxel_size=VOXEL,
                           parameters=RayParameters(**RAYS))
    np.testing.assert_array_equal(labels, whole)
    assert job.result["hulls"] == 4 and job.result["cells_linked"] == 4
    assert job.result["empty_hulls"] == 0 and job.result["layer_id"] == layer.pk
    assert job.result["voxels"] == int((whole > 0).sum())
    assert not JobLock.objects.exists()
    # The pyramid is there for the viewer.
    assert open_multiscale(layer.path)[1]["levels"] == len(layer.downsample_factors)


def test_a_mask_boundary_and_cells_measured_in_another_segmentation(scene):
    dataset, _, truth, _, path = scene
    mask = import_volume(dataset=dataset, source=str(path), name="mask", kind="mask",
                         dataset_path="mask", voxel_size=VOXEL)
    other = import_volume(dataset=dataset, source=str(path), name="other", kind="segmentation",
                          dataset_path="mask", voxel_size=VOXEL)
    Cell.objects.filter(dataset=dataset, segment_id=9).update(layer=other, size_voxels=1)
    first = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                           parameters=_parameters(mask, skeleton_source="swc",
                                                  segment_ids=[9, 5, 3]))
    assert first.state == Job.State.DONE, first.error
    assert first.result["cells_linked"] == 2 and first.result["cells_measured_elsewhere"] == 1
    kept = Cell.objects.get(dataset=dataset, segment_id=9)
    assert kept.layer_id == other.pk and kept.size_voxels == 1
    labels = _labels(Layer.objects.get(dataset=dataset, name="hulls"))
    assert set(np.unique(labels)) == {0, 3, 5, 9}       # painted all the same
    assert ((labels == 9) & (truth == 9)).sum() / (truth == 9).sum() > 0.9
    # A second hull job takes over the cells of the first hull layer, not the other's.
    second = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                            parameters=_parameters(mask, name="hulls 2"))
    assert second.state == Job.State.DONE, second.error
    assert second.result["cells_linked"] == 3 and second.result["cells_measured_elsewhere"] == 1
    assert Cell.objects.get(dataset=dataset, segment_id=5).layer.name == "hulls 2"


def test_a_failed_block_leaves_no_layer_and_no_measures(scene, monkeypatch):
    dataset, boundary_layer, *_ = scene
    from connectome.cells import hulls

    calls = []
    real = hulls.hull_block

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of luck")
        return real(*args, **kwargs)

    monkeypatch.setattr(hulls, "hull_block", failing)
    job = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                         parameters=_parameters(boundary_layer))
    assert job.state == Job.State.FAILED
    assert "block 2" in job.error and "RuntimeError" in job.error
    assert not Layer.objects.filter(dataset=dataset, name="hulls").exists()
    assert not Cell.objects.filter(dataset=dataset, layer__isnull=False).exists()
    assert not JobLock.objects.exists()
    # Resumed, the blocks done are kept and the rest run: the same hulls as in one go.
    monkeypatch.undo()
    assert job_resume(job=job, enqueue=False) == 12 - 2
    job = blocks_run_inline(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    assert job.result["block_attempts"] == 12     # a failed block's attempts start again
    again = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                           parameters=_parameters(boundary_layer, name="in one go"))
    assert again.state == Job.State.DONE, again.error
    np.testing.assert_array_equal(_labels(Layer.objects.get(dataset=dataset, name="hulls")),
                                  _labels(Layer.objects.get(dataset=dataset, name="in one go")))


def test_bad_parameters_are_refused_at_submission(scene, tmp_path):
    dataset, boundary_layer, _, _, path = scene
    em = import_volume(dataset=dataset, source=str(path), name="em", kind="em",
                       dataset_path="em", voxel_size=VOXEL)
    with pytest.raises(JobParameterError, match="boundary_layer: .*'em' is a em layer"):
        job_create(kind="skeleton_hulls", dataset=dataset, parameters=_parameters(em),
                   enqueue=False)
    with pytest.raises(JobParameterError, match="no layer 9999"):
        job_create(kind="skeleton_hulls", dataset=dataset,
                   parameters={**_parameters(boundary_layer), "boundary_layer": 9999},
                   enqueue=False)
    with pytest.raises(JobConflict, match="already has a layer named 'boundary'"):
        job_create(kind="skeleton_hulls", dataset=dataset,
                   parameters=_parameters(boundary_layer, name="boundary"), enqueue=False)
    with pytest.raises(JobParameterError, match="no skeletons of source 'catmaid'"):
        job_create(kind="skeleton_hulls", dataset=dataset,
                   parameters=_parameters(boundary_layer, skeleton_source="catmaid"),
                   enqueue=False)
    with pytest.raises(JobParameterError, match=r"segment_ids: no skeleton for segment ids \[4\]"):
        job_create(kind="skeleton_hulls", dataset=dataset,
                   parameters=_parameters(boundary_layer, segment_ids=[4, 5]), enqueue=False)
    with pytest.raises(JobParameterError, match="max_radius_nm: .*ray tables"):
        job_create(kind="skeleton_hulls", dataset=dataset,
                   parameters=_parameters(boundary_layer, mode="3d", max_radius_nm=20_000),
                   enqueue=False)
    assert not Job.objects.exists()


def test_a_node_outside_the_volume_fails_the_job_naming_it(scene, tmp_path):
    dataset, boundary_layer, *_ = scene
    cell = CellFactory(dataset=dataset, segment_id=77)
    nodes = _tube_skeleton(10, 10)
    nodes.zyx[1, 2] = 10_000.0                    # x beyond the 128 voxels of 8 nm
    write_swc(tmp_path / "77.swc", nodes)
    (skeleton,) = import_skeletons(dataset=dataset, source=str(tmp_path / "77.swc"))
    job = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                         parameters=_parameters(boundary_layer))
    assert job.state == Job.State.FAILED
    assert f"skeleton {skeleton.pk} (cell {cell.segment_id}), node 1 at" in job.error
    assert "outside the volume" in job.error
    assert not Layer.objects.filter(dataset=dataset, name="hulls").exists()


@pytest.fixture
def worker(transactional_db, data_root, tmp_path):
    """One worker process over the configured broker and database, sharing DATA_ROOT."""
    from connectome.celery import app

    app.control.purge()
    env = {**os.environ, "DATABASE_URL": _database_url_for_worker(),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "DATA_ROOT": str(data_root),
           "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "worker.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "connectome", "worker", "-Q", "cpu,gpu",
             "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO"],
            cwd=Path(settings.BASE_DIR), env=env, stdout=log, stderr=subprocess.STDOUT)
        yield proc
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_the_blocks_to_the_inline_result(scene, worker):
    dataset, boundary_layer, *_ = scene
    inline = job_run_inline(kind="skeleton_hulls", dataset=dataset,
                            parameters=_parameters(boundary_layer, name="inline"))
    assert inline.state == Job.State.DONE, inline.error
    job = job_create(kind="skeleton_hulls", dataset=dataset,
                     parameters=_parameters(boundary_layer, name="on the worker"))
    deadline = time.monotonic() + 120
    while Job.objects.get(pk=job.pk).state not in Job.FINISHED_STATES:
        assert time.monotonic() < deadline, "the worker did not finish the job in 120 s"
        time.sleep(0.2)
    job = Job.objects.get(pk=job.pk)
    assert job.state == Job.State.DONE, job.error
    assert job.result["blocks"] == 12
    np.testing.assert_array_equal(
        _labels(Layer.objects.get(dataset=dataset, name="on the worker")),
        _labels(Layer.objects.get(dataset=dataset, name="inline")))
