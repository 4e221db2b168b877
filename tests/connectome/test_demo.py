"""The demo command end to end, inline: phantom -> imports -> detection -> partner assignment;
with --from-em, phantom EM -> cell model -> segmented cells -> detection -> partners."""

import io
import json
import re
import subprocess

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from connectome.cells.models import Cell, Skeleton
from connectome.cells.selectors import layer_mesh_path
from connectome.datasets.models import Dataset
from connectome.detectors.models import DetectorModel
from connectome.imports.management.commands import demo as command
from connectome.jobs.models import Job
from connectome.synapses.models import Synapse, SynapseRun

pytestmark = pytest.mark.django_db

# Small enough for two slow cores; the detector is still trained on its full training phantom.
SHAPE = ("16", "192", "192")


@pytest.fixture
def var_dir(settings, data_root, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    return settings.VAR_DIR


def demo(*args, mode="--inline") -> str:
    out = io.StringIO()
    call_command("demo", mode, "--shape", *SHAPE, "--address", "demo.test:8080", *args,
                 stdout=out)
    return out.getvalue()


def figures(output: str, run: str) -> list[float]:
    """The precision, recall pairs the demo printed for a run, in order."""
    line = next(line for line in output.splitlines() if line.startswith(f"run '{run}':"))
    return [float(value) for value in re.findall(r"(?:precision|recall) ([\d.]+)", line)]


@pytest.mark.slow
def test_demo_detects_synapses_assigns_partners_and_scores_them(var_dir):
    admin = get_user_model().objects.create_superuser("admin", "admin@localhost", "admin")
    output = demo()

    dataset = Dataset.objects.get(name="phantom")
    assert dataset.is_public and dataset.owner == admin
    # The detector: trained by a job on the training phantom, imported as a dataset.
    training = Job.objects.get(kind="train_detector")
    assert training.state == Job.State.DONE, training.error
    assert training.dataset.name == "training phantom"
    assert set(training.dataset.layers.values_list("name", flat=True)) == {"em", "clefts"}
    detector = DetectorModel.objects.get(name="demo detector")
    assert (detector.version, detector.job) == (1, training)
    assert detector.path.is_file() and detector.calibration is not None
    pooled = detector.pooled()
    assert (f"the detector's own estimate, before seeing this phantom: precision "
            f"{pooled['precision']:.2f}") in output
    assert f"F1 {pooled['f1']:.2f} ({pooled['f1_interval'][0]:.2f}-" in output
    # Every cell of the phantom's 16 x 192 x 192 volume is large enough to be skeletonized.
    skeletons = Skeleton.objects.filter(cell__dataset=dataset)
    assert skeletons.count() == dataset.cells.count() > 5
    assert all(n > 3 for n in skeletons.values_list("n_nodes", flat=True))
    # Every cell has a mesh: a manifest naming its fragments, from a mesh_segmentation job.
    meshed = Job.objects.get(kind="mesh_segmentation")
    assert meshed.state == Job.State.DONE, meshed.error
    assert meshed.result["segments"] == dataset.cells.count()
    folder = layer_mesh_path(dataset.layers.get(name="segmentation"))
    assert folder is not None
    for segment in dataset.cells.values_list("segment_id", flat=True):
        assert json.loads((folder / f"{segment}:0").read_text())["fragments"]

    detect = Job.objects.get(kind="detect_and_assign")
    assert detect.state == Job.State.DONE, detect.error
    assert detect.parameters["assign_method"] == "diffusion"
    assert detect.parameters["model_id"] == detector.pk and detect.parameters["high"] is None
    assert detect.parameters["presynaptic_layer"] == dataset.layers.get(name="vesicles").pk
    follow = Job.objects.get(pk=detect.result["then_job"])
    assert (follow.kind, follow.state) == ("assign_partners", Job.State.DONE), follow.error

    detected = SynapseRun.objects.get(dataset=dataset, name="detected")
    assert detected.parameters["high"] == detector.calibration["high"]
    assert detected.parameters["min_score"] == detector.calibration["min_score"]
    n_detected = detected.synapses.count()
    assert n_detected == detect.result["synapses"] > 10
    assert f"run 'detected': {n_detected} synapses" in output
    partners = SynapseRun.objects.get(dataset=dataset, name="detected partners")
    counted = partners.synapses.filter(flag=Synapse.Flag.NONE)
    assert counted.count() > 10
    assert not counted.filter(pre__isnull=True).exists()
    assert not counted.filter(post__isnull=True).exists()
    assert set(partners.synapses.values_list("site_id", flat=True)) <= set(
        detected.synapses.values_list("site_id", flat=True))

    # On this phantom the detector finds about three quarters of the synapses, nearly all
    # right, and the assignment most connections (docs/demo.md has the full-size figures).
    detection, assignment = figures(output, "detected"), figures(output, "detected partners")
    precision, recall = detection
    assert precision >= 0.8 and recall >= 0.6, detection
    synapse_precision, synapse_recall, wiring_precision, wiring_recall = assignment
    assert synapse_precision >= 0.8 and synapse_recall >= 0.6, assignment
    assert wiring_precision >= 0.8 and wiring_recall >= 0.6, assignment
    assert f"dataset page: http://demo.test:8080/datasets/{dataset.pk}/" in output
    assert f"review queue: http://demo.test:8080/datasets/{dataset.pk}/review/" in output

    # A second run reuses everything: no job, no training, the same figures.
    jobs = Job.objects.count()
    again = demo()
    assert Job.objects.count() == jobs
    assert "trained before" in again
    assert figures(again, "detected") == detection

    # Detected, but the assignment is missing (it failed, say): only the assignment runs again.
    partners.delete()
    third = demo()
    assert list(Job.objects.filter(pk__gt=follow.pk).values_list("kind", flat=True)) == [
        "assign_partners"]
    assert figures(third, "detected partners") == assignment


def test_a_failing_job_is_named_with_its_error(var_dir, monkeypatch):
    import detection.synapses.training as training
    from detection.errors import InputError

    def fail(volumes, options, progress=None):
        raise InputError(f"{volumes[0].name}: fold 1 leaves no synapse to train on")

    monkeypatch.setattr(training, "train_detector", fail)
    with pytest.raises(CommandError, match=(
            r"job \d+ \(train_detector demo detector\) failed: dataset 'training phantom' "
            r"layer 'clefts': fold 1 leaves no synapse")):
        demo()
    assert Dataset.objects.get(name="training phantom").layers.filter(name="clefts").exists()
    assert not DetectorModel.objects.exists()
    assert not Dataset.objects.filter(name="phantom").exists()


def test_the_demo_stops_waiting_when_its_worker_has_stopped(var_dir):
    worker = subprocess.Popen(["true"])
    worker.wait()
    with pytest.raises(CommandError, match=rf"job \d+ \(import_volume\) is queued, but the "
                                           rf"worker \(pid {worker.pid}\) has stopped"):
        demo("--worker-pid", str(worker.pid), mode="--wait")


def cell_figures(output: str) -> dict[str, float]:
    """VOI split and merge and the adapted Rand error the demo printed for its cells."""
    line = next(line for line in output.splitlines() if line.startswith("cells from EM"))
    return {name: float(value) for name, value in re.findall(
        r"(split|merge|adapted Rand error) ([\d.]+)", line)}


@pytest.mark.slow
def test_the_demo_from_em_segments_the_cells_then_detects_and_assigns_on_them(
        var_dir, monkeypatch):
    # Blocks that cut the test's small phantom.
    monkeypatch.setattr(command, "SEGMENTATION", {**command.SEGMENTATION,
                                                  "block_shape": [16, 96, 96],
                                                  "context": [4, 24, 24]})
    get_user_model().objects.create_superuser("admin", "admin@localhost", "admin")
    output = demo("--from-em")

    # The cell model: trained by its job on the training phantom's EM and cells.
    training = Job.objects.get(kind="train_cell_model")
    assert training.state == Job.State.DONE, training.error
    assert set(training.dataset.layers.values_list("name", flat=True)) == {"em", "clefts",
                                                                            "cells"}
    model = DetectorModel.objects.get(name="demo cell model")
    assert (model.kind, model.version, model.job) == ("affinities", 1, training)
    assert model.voxel_size == (40.0, 8.0, 8.0)
    assert f"threshold {model.figures['threshold']:.2f}, VOI split " \
           f"{model.figures['chosen']['voi_split']:.3f}" in output

    # The phantom's EM alone (and its vesicle clouds), segmented block by block.
    dataset = Dataset.objects.get(name="phantom from EM")
    assert not Dataset.objects.filter(name="phantom").exists()
    chain = list(Job.objects.filter(dataset=dataset, kind__in=command.SEGMENTATION_JOBS)
                 .order_by("pk"))
    assert [(j.kind, j.state) for j in chain] == [
        ("segment_cells", "done"), ("fragment_cells", "done"), ("agglomerate_cells", "done"),
        ("relabel_cells", "done")]
    assert chain[0].parameters["model_id"] == model.pk
    assert chain[0].progress_total == 1 * 2 * 2
    layers = dict(dataset.layers.values_list("name", "kind"))
    assert layers == {"em": "em", "vesicles": "mask", "cells": "segmentation",
                      "cells affinities z": "prediction", "cells affinities y": "prediction",
                      "cells affinities x": "prediction", "detected probability": "prediction",
                      "detected synapses": "synapses"}
    cells = Cell.objects.filter(dataset=dataset)
    assert cells.count() == chain[-1].result["cells"] > 5
    assert f"cells from EM (layer 'cells'): {cells.count()} cells, the phantom has " in output
    scores = cell_figures(output)
    assert set(scores) == {"split", "merge", "adapted Rand error"}
    # A short training on a small phantom: most cells found, few merged.
    assert scores["split"] + scores["merge"] < 1.5 and scores["adapted Rand error"] < 0.3

    # Detection and partners on the segmented cells.
    detect = Job.objects.get(kind="detect_and_assign", dataset=dataset)
    assert detect.state == Job.State.DONE, detect.error
    assert detect.parameters["segmentation_layer"] == dataset.layers.get(name="cells").pk
    partners = SynapseRun.objects.get(dataset=dataset, name="detected partners")
    counted = partners.synapses.filter(flag=Synapse.Flag.NONE)
    assert counted.exists() and not counted.filter(pre__isnull=True).exists()
    assert set(counted.values_list("pre__layer__name", flat=True)) == {"cells"}
    detection, assignment = figures(output, "detected"), figures(output, "detected partners")
    assert len(detection) == 2 and len(assignment) == 4
    assert detection[0] >= 0.8 and detection[1] >= 0.6, detection
    assert "segmented cells named by the phantom cell they overlap most" in output

    # A second run starts no job and prints the same figures.
    jobs = Job.objects.count()
    again = demo("--from-em")
    assert Job.objects.count() == jobs
    assert "cell model: 'demo cell model' version 1" in again
    assert cell_figures(again) == scores and figures(again, "detected") == detection
