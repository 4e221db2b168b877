"""Partner assignment as a job: phantom layers in, a synapse run and its wiring matrix out."""

import pytest

from connectome.datasets.models import Layer
from connectome.imports.volumes import import_volume
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_run_inline
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.wiring import wiring_matrix
from detection.metrics import connection_scores
from detection.phantom import make_phantom, write_phantom_h5
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
    from detection.features import FeatureSpec
    from detection.partners.contact import train_site_classifier

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
        em_layer=made["em"].pk, interface_model=str(path)))
    assert job.state == Job.State.DONE, job.error
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
                 "--options", '{"min_share": 0.3, "particles": 200}')
    assert "assign_partners job" in capsys.readouterr().out
    run = SynapseRun.objects.get(dataset=dataset, name="by name")
    assert run.parameters["layers"] == {"sites": "clefts", "segmentation": "cells",
                                        "presynaptic map": "vesicles"}
    with pytest.raises(CommandError, match="has no layer 'nope'.*layers: cells, clefts, em"):
        call_command("assign_partners", dataset.name, "--method", "vesicle", "--sites", "nope",
                     "--segmentation", "cells", "--presynaptic", "vesicles", "--run", "x")
    with pytest.raises(CommandError, match="--options is not JSON"):
        call_command("assign_partners", dataset.name, "--method", "vesicle", "--sites", "clefts",
                     "--segmentation", "cells", "--run", "x", "--options", "{min_share: 1}")
