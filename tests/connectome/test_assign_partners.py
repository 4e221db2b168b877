"""Partner assignment as a block-wise job: phantom layers in, a synapse run and its wiring out."""

import json

import numpy as np
import pytest
from django.conf import settings

from connectome.datasets.models import Layer
from connectome.imports.volumes import import_volume
from connectome.jobs.blocks import block_execute, blocks_finish
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
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.wiring import wiring_matrix
from detection.io.zarr_store import open_multiscale
from detection.metrics import connection_scores
from detection.partners import assign_partners
from detection.partners.blocks import sites_by_block
from detection.partners.sites import site_boxes
from detection.synthetic.phantom import make_phantom, write_phantom_h5
from tests.connectome.factories import DatasetFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    phantom = make_phantom((24, 160, 160), voxel_size=(40.0, 8.0, 8.0), n_cells=16,
                           n_synapses=20, seed=4)
    path = tmp_path_factory.mktemp("phantom") / "phantom.h5"
    write_phantom_h5(phantom, path)
    return phantom, path


@pytest.fixture
def layers(data_root, phantom_file):
    phantom, path = phantom_file
    dataset = DatasetFactory(voxel_size_z=40.0, voxel_size_y=8.0, voxel_size_x=8.0)
    made = {}
    for name, kind, inside in (("em", "em", "volumes/raw"),
                               ("cells", "segmentation", "volumes/labels/neuron_ids"),
                               ("clefts", "synapses", "volumes/labels/clefts"),
                               ("vesicles", "mask", "volumes/labels/vesicles")):
        made[name] = import_volume(dataset=dataset, source=str(path), name=name, kind=kind,
                                   dataset_path=inside)
    return phantom, dataset, made


def _params(made, **extra):
    return {"method": "vesicle", "sites_layer": made["clefts"].pk,
            "segmentation_layer": made["cells"].pk, "presynaptic_layer": made["vesicles"].pk,
            "run_name": "vesicle", **extra}


def test_vesicle_and_diffusion_jobs_store_runs_whose_wiring_matches_the_truth(layers):
    phantom, dataset, made = layers
    assert made["clefts"].kind == Layer.Kind.SYNAPSES and not made["clefts"].cells.exists()
    truth = {(s.pre_id, s.post_id) for s in phantom.synapses}
    for method, options in (("vesicle", {}), ("diffusion", {"min_share": 0.3, "seed": 2})):
        job = job_run_inline(kind="assign_partners", dataset=dataset,
                             parameters=_params(made, method=method, run_name=method,
                                                options=options))
        assert job.state == Job.State.DONE, job.error
        run = SynapseRun.objects.get(pk=job.result["run_id"])
        assert run.method == method and run.parameters["options"] == options
        assert job.result["synapses"] == run.synapses.count() >= len(truth)
        matrix = wiring_matrix(dataset=dataset, runs=[run])
        predicted = {(p.pre_segment_id, p.post_segment_id): p.synapses for p in matrix.pairs}
        scores = connection_scores(predicted, list(truth))
        # Measured on this phantom: vesicle P 0.95 / R 1.0, diffusion P 0.90 / R 1.0.
        assert scores.recall >= 0.9 and scores.precision >= 0.85, (method, scores)
        synapse = run.synapses.filter(flag="").first()
        assert synapse.weight is not None and 0 < synapse.weight <= 1
        assert synapse.contact_area_nm2 > 0 and synapse.ctr_z is not None


def test_rerunning_with_replace_swaps_the_run(layers):
    _, dataset, made = layers
    first = job_run_inline(kind="assign_partners", dataset=dataset, parameters=_params(made))
    again = job_run_inline(kind="assign_partners", dataset=dataset, parameters=_params(made))
    assert again.state == Job.State.FAILED and "already has a synapse run named" in again.error
    replaced = job_run_inline(kind="assign_partners", dataset=dataset,
                              parameters=_params(made, replace=True))
    assert replaced.state == Job.State.DONE
    assert SynapseRun.objects.filter(dataset=dataset, name="vesicle").count() == 1
    assert Synapse.objects.filter(dataset=dataset).count() == first.result["synapses"]


def test_bad_requests_are_refused_with_the_reason(layers):
    _, dataset, made = layers
    with pytest.raises(JobParameterError, match="no option min_sharez"):
        job_run_inline(kind="assign_partners", dataset=dataset,
                       parameters=_params(made, options={"min_sharez": 1}))
    missing = job_run_inline(kind="assign_partners", dataset=dataset,
                             parameters=_params(made, presynaptic_layer=None))
    assert missing.state == Job.State.FAILED and "needs a presynaptic" in missing.error
    wrong = job_run_inline(kind="assign_partners", dataset=dataset,
                           parameters=_params(made, sites_layer=made["cells"].pk))
    assert "is a segmentation layer; the sites must be synapses" in wrong.error
    unknown = job_run_inline(kind="assign_partners", dataset=dataset,
                             parameters=_params(made, segmentation_layer=999999))
    assert "has no layer '999999'" in unknown.error
    contact = job_run_inline(kind="assign_partners", dataset=dataset,
                             parameters=_params(made, method="contact"))
    assert "needs the EM layer and an interface classifier" in contact.error
    assert not SynapseRun.objects.filter(dataset=dataset).exists()


def test_contact_job_uses_an_interface_classifier_file(layers, tmp_path):
    from detection.partners import site_interfaces, site_scores
    from detection.partners.contact import train_site_classifier
    from detection.synapses.features import FeatureSpec

    phantom, dataset, made = layers
    other = make_phantom((24, 160, 160), voxel_size=(40.0, 8.0, 8.0), n_cells=16,
                         n_synapses=20, seed=8)
    spec = FeatureSpec(scales_nm=(10.0, 40.0), kinds=("gaussian", "hessian_eigenvalues"))
    model = train_site_classifier(
        [other.em], [other.segmentation], [other.synapse_labels],
        [{s.synapse_id: (s.pre_id, s.post_id) for s in other.synapses}],
        voxel_size=other.voxel_size, spec=spec, max_iter=40, max_leaf_nodes=15)
    path = model.save(tmp_path / "sites.model")
    job = job_run_inline(kind="assign_partners", dataset=dataset, parameters=_params(
        made, method="contact", run_name="contact", presynaptic_layer=None,
        em_layer=made["em"].pk, interface_model=str(path), block_shape=[8, 48, 48]))
    assert job.state == Job.State.DONE, job.error
    assert job.result["blocks"] > 1
    # Block-wise, the rows of the whole-volume call: local interfaces scored per site.
    em, cells, sites = _array(made["em"]), _array(made["cells"]), _array(made["clefts"])
    local = site_interfaces(em, cells, sites, voxel_size=dataset.voxel_size, spec=spec)
    whole = assign_partners("contact", sites, cells, voxel_size=dataset.voxel_size,
                            local_scores=site_scores(local, model))
    assert _stored("contact") == _expected(whole)
    matrix = wiring_matrix(dataset=dataset, runs=SynapseRun.objects.filter(name="contact"))
    predicted = {(p.pre_segment_id, p.post_segment_id): p.synapses for p in matrix.pairs}
    scores = connection_scores(predicted, [(s.pre_id, s.post_id) for s in phantom.synapses])
    # A model trained on one small phantom of 20 synapses.
    assert scores.precision >= 0.85 and scores.recall >= 0.75, scores


def test_command_takes_layers_by_name(layers, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    _, dataset, _ = layers
    call_command("assign_partners", dataset.name, "--method", "diffusion", "--sites", "clefts",
                 "--segmentation", "cells", "--presynaptic", "vesicles", "--run", "by name",
                 "--options", '{"min_share": 0.3, "particles": 200}',
                 "--block-shape", "8", "64", "64")
    assert "assign_partners job" in capsys.readouterr().out
    run = SynapseRun.objects.get(dataset=dataset, name="by name")
    assert run.job.parameters["block_shape"] == [8, 64, 64] and run.job.progress_total > 1
    assert run.parameters["layers"] == {"sites": "clefts", "segmentation": "cells",
                                        "presynaptic map": "vesicles"}
    with pytest.raises(CommandError, match="has no layer 'nope'.*layers: cells, clefts, em"):
        call_command("assign_partners", dataset.name, "--method", "vesicle", "--sites", "nope",
                     "--segmentation", "cells", "--presynaptic", "vesicles", "--run", "x")
    with pytest.raises(CommandError, match="--options is not JSON"):
        call_command("assign_partners", dataset.name, "--method", "vesicle", "--sites", "clefts",
                     "--segmentation", "cells", "--run", "x", "--options", "{min_share: 1}")


def _array(layer):
    return open_multiscale(layer.path)[0]["0"][...]


def _stored(run_name):
    """The stored rows in a comparable form: ids, positions, evidence; ordered as stored."""
    return [
        (s.site_id, s.pre.segment_id if s.pre else 0, s.post.segment_id if s.post else 0,
         (s.pre_z, s.pre_y, s.pre_x), (s.post_z, s.post_y, s.post_x), (s.ctr_z, s.ctr_y, s.ctr_x),
         s.size_voxels, s.contact_area_nm2, s.confidence, s.weight, s.flag)
        for s in Synapse.objects.filter(run__name=run_name).select_related("pre", "post")
        .order_by("pk")]


def _expected(rows):
    return [(r.site_id, r.pre_id, r.post_id, r.pre_point, r.post_point, r.center,
             r.size_voxels, r.contact_area_nm2, r.confidence, r.weight, r.flag) for r in rows]


@pytest.mark.parametrize("method, options", [
    ("vesicle", {}),
    ("diffusion", {"min_share": 0.3, "seed": 2}),
    ("diffusion", {"particles": 150, "n_steps": 40, "seed": 5}),  # crops inside the volume
])
def test_blockwise_job_stores_exactly_the_whole_volume_rows(layers, method, options):
    _, dataset, made = layers
    block_shape = [8, 48, 48]
    job = job_run_inline(kind="assign_partners", dataset=dataset, parameters=_params(
        made, method=method, run_name=method, options=options, block_shape=block_shape))
    assert job.state == Job.State.DONE, job.error

    sites, cells = _array(made["clefts"]), _array(made["cells"])
    # The job's progress counts the blocks that hold a site's box centre, not the grid.
    planned = sites_by_block(site_boxes(sites), block_shape)
    assert 1 < len(planned) < 3 * 4 * 4
    assert job.progress_total == job.progress_done == job.result["blocks"] == len(planned)
    assert sum(b["sites"] for b in JobBlock.objects.filter(job=job)
               .values_list("result", flat=True)) == len(site_boxes(sites))

    whole = assign_partners(method, sites, cells, voxel_size=dataset.voxel_size,
                            presynaptic=_array(made["vesicles"]), **options)
    assert len(whole) >= 20
    assert _stored(method) == _expected(whole)
    assert job.result["synapses"] == len(whole)
    assert SynapseRun.objects.get(name=method).parameters["block_shape"] == block_shape


def test_a_block_run_twice_writes_the_same_file_and_the_same_table(layers):
    _, dataset, made = layers
    params = _params(made, method="diffusion", options={"n_steps": 40, "seed": 1},
                     block_shape=[8, 64, 64])
    job = job_execute(job_id=job_create(kind="assign_partners", dataset=dataset,
                                        parameters=params, enqueue=False).pk)
    assert job.state == Job.State.RUNNING and job.progress_total >= 2  # planned, not run
    blocks = list(job.blocks.order_by("index"))
    for block in blocks:
        assert block_execute(job_id=job.pk, index=block.index).status == "done"
    folder = settings.DATA_ROOT / f"datasets/{dataset.pk}/jobs/{job.pk}/choices"
    files = sorted(folder.iterdir())
    assert len(files) == len(blocks)
    first = {f.name: f.read_bytes() for f in files}
    assert sum(len(json.loads(text)) for text in first.values()) == 20
    # A redelivered task of a done block is skipped; one forced to run again (its worker
    # died before marking it done) writes the same file.
    assert block_execute(job_id=job.pk, index=1).status == "skipped"
    spec = get_job_spec("assign_partners")
    spec.block(job, blocks[1].slices, dict(job.parameters))
    assert {f.name: f.read_bytes() for f in sorted(folder.iterdir())} == first
    job = blocks_finish(job_id=job.pk)
    assert job.state == Job.State.DONE, job.error
    stored = _stored("vesicle")
    again = job_run_inline(kind="assign_partners", dataset=dataset,
                           parameters={**params, "replace": True, "block_shape": [24, 32, 32]})
    assert again.state == Job.State.DONE and again.result["blocks"] != job.result["blocks"]
    assert _stored("vesicle") == stored and len(stored) == job.result["synapses"]


def test_two_jobs_writing_the_same_run_are_refused(layers):
    _, dataset, made = layers
    first = job_create(kind="assign_partners", dataset=dataset, parameters=_params(made),
                       enqueue=False)
    with pytest.raises(JobConflict, match=(
            f"synapse run 'vesicle' of dataset '{dataset.name}' is being written by "
            f"assign_partners job {first.pk}")):
        job_create(kind="assign_partners", dataset=dataset, enqueue=False,
                   parameters=_params(made, method="diffusion", replace=True))
    job_create(kind="assign_partners", dataset=dataset, enqueue=False,
               parameters=_params(made, run_name="other"))
    job_cancel(job=first)
    assert not JobLock.objects.filter(job=first).exists()
    done = job_run_inline(kind="assign_partners", dataset=dataset, parameters=_params(made))
    assert done.state == Job.State.DONE and not JobLock.objects.filter(job=done).exists()


def test_no_sites_store_an_empty_run(layers, tmp_path):
    _, dataset, made = layers
    empty = tmp_path / "empty.h5"
    import h5py

    with h5py.File(empty, "w") as f:
        f["sites"] = np.zeros(made["clefts"].shape, np.uint32)
    layer = import_volume(dataset=dataset, source=str(empty), name="none", kind="synapses",
                          dataset_path="sites")
    job = job_run_inline(kind="assign_partners", dataset=dataset,
                         parameters=_params(made, sites_layer=layer.pk, run_name="empty"))
    assert job.state == Job.State.DONE, job.error
    assert job.result["blocks"] == 1 and job.result["synapses"] == 0
    assert SynapseRun.objects.get(name="empty").synapses.count() == 0


def test_options_are_cast_to_their_annotated_types_and_may_be_null_where_allowed():
    from connectome.synapses.assignment import check_options

    # diffusion's min_inside defaults to None (off), yet takes a number
    assert check_options("diffusion", {"min_inside": 0.03, "particles": 200.0}) == {
        "min_inside": 0.03, "particles": 200}
    assert check_options("diffusion", {"min_inside": None}) == {"min_inside": None}
    # contact's rule can be turned off; vesicle's cannot
    assert check_options("contact", {"min_inside": None, "min_score": "0.9"}) == {
        "min_inside": None, "min_score": 0.9}
    with pytest.raises(ValueError, match=r"option min_inside: expected a number, got None"):
        check_options("vesicle", {"min_inside": None})
    with pytest.raises(ValueError, match=r"option min_inside: expected a number or null, got 'a'"):
        check_options("diffusion", {"min_inside": "a"})
    with pytest.raises(ValueError, match=r"option particles: expected an integer, got 2.5"):
        check_options("diffusion", {"particles": 2.5})
    with pytest.raises(ValueError, match=r"option min_share: expected a number, got True"):
        check_options("diffusion", {"min_share": True})
