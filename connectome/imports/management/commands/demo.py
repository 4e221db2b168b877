"""The demo: a detector trained by a job on an annotated training phantom; a synthetic EM volume
with known cells and synapses, imported by jobs, then its synapses detected with that detector
and their partners assigned by jobs, and both scored against the truth beside the detector's
own cross-validated estimate.

With ``--from-em`` the demo phantom's cells are not imported but segmented from its EM: a cell
model is trained by a job on the training phantom's EM and cells, a ``segment_cells`` job
segments the demo phantom's EM with it, block by block, and detection and partner assignment
run on those cells; the cells are scored against the phantom's truth beside the model's own
validation figures."""

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from connectome.cells.models import Skeleton
from connectome.cells.selectors import layer_mesh_path
from connectome.cells.services import cells_annotate
from connectome.datasets.models import Dataset
from connectome.datasets.services import dataset_create
from connectome.detectors.models import DetectorModel
from connectome.jobs.models import Job
from connectome.jobs.services import JobParameterError, job_create, job_execute
from connectome.synapses.wiring import wiring_matrix
from detection.cells.evaluation import (
    adapted_rand_error,
    contingency_table,
    variation_of_information,
)
from detection.io.tables import CnapseRow, read_cnapse, write_cnapse
from detection.io.zarr_store import open_multiscale
from detection.metrics import (
    connection_scores,
    match_by_distance,
    synapse_partner_scores,
)
from detection.synthetic.phantom import make_phantom, synapse_table, write_phantom_h5

DATASET = "phantom"
VOXEL_SIZE = (40.0, 8.0, 8.0)
TRUTH_RUN = "ground truth"
DETECTION_RUN = "detected"
PARTNER_RUN = "detected partners"
# The detector learns from a phantom of its own (another seed, same voxel size), imported as a
# dataset with its cleft ids as labels, by a train_detector job; its post-processing is chosen
# by that job's cross-validation. The demo phantom is never seen before it is scored.
TRAINING_DATASET = "training phantom"
TRAINING_PHANTOM = {"shape": (32, 256, 256), "n_cells": 30, "n_synapses": 40, "seed": 101}
DETECTOR = "demo detector"
TRAINING = {"detector": "trees", "folds": 3, "n_estimators": 100, "max_samples": 100_000,
            "seed": 0}
# No thresholds: the detector's calibration decides them.
DETECTION = {"block_shape": [48, 192, 192]}
# Threshold of docs/partners.md, chosen on validation phantoms.
# The thresholds the validation phantom chose for diffusion (docs/partners.md).
ASSIGNMENT = {"assign_method": "diffusion",
              "assign_options": {"min_share": 0.45, "min_inside": 0.03}}
# A synapse found within this distance of a true one (centres, nm) is a match.
TOLERANCE_NM = 200.0
# --from-em: the cell model learns the training phantom's cells (its last quarter of sections
# held out to choose the merge threshold), briefly: a small network, small patches, few steps.
FROM_EM_DATASET = "phantom from EM"
CELL_MODEL = "demo cell model"
CELL_LABELS = "cells"
CELL_TRAINING = {"validation_fraction": 0.25, "width": 4, "depth": 2, "patch": [8, 64, 64],
                 "batch": 1, "iterations": 100, "learning_rate": 0.006, "seed": 0}
SEGMENTATION = {"name": "cells", "block_shape": [48, 192, 192], "context": [8, 48, 48]}
# Partners on the segmented cells by arrivals alone: the watershed fills the membranes, so the
# cleft's voxels lie in cells, and min_inside would make every cell around a cleft a partner.
FROM_EM_ASSIGNMENT = {"assign_method": "diffusion", "assign_options": {"min_share": 0.45}}
SEGMENTATION_JOBS = ("segment_cells", "fragment_cells", "agglomerate_cells", "relabel_cells")


class Command(BaseCommand):
    help = (
        "Generate the phantom (synthetic EM with ground-truth cells and synapses) and import "
        "its EM volume, segmentation and cells, ground-truth synapse table and vesicle clouds "
        "with jobs; skeletonize and mesh the cells; train a detector on another phantom with a "
        "train_detector job; detect the synapses with it and assign their partners by "
        "diffusion with a detect_and_assign job; print how both compare with the ground truth, "
        "beside the detector's cross-validated estimate. With --from-em, segment the cells "
        "from the EM instead, with a cell model trained by a train_cell_model job on the "
        "training phantom, and score them too."
    )

    def add_arguments(self, parser):
        parser.add_argument("--inline", action="store_true",
                            help="run the jobs in this process instead of on a worker")
        parser.add_argument("--wait", action="store_true",
                            help="wait for each worker job to finish before the next")
        parser.add_argument("--shape", nargs=3, type=int, default=(48, 384, 384),
                            metavar=("Z", "Y", "X"))
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--address", default="127.0.0.1:8000",
                            help="host:port the web app serves on, for the printed addresses")
        parser.add_argument("--worker-pid", type=int,
                            help="process id of the local worker: stop waiting if it exits")
        parser.add_argument("--from-em", action="store_true",
                            help=f"segment the phantom's cells from its EM (dataset "
                                 f"'{FROM_EM_DATASET}') with a cell model trained by a job, "
                                 "instead of importing them")

    def handle(self, *args, **options):
        if not (options["inline"] or options["wait"]):
            raise CommandError("the jobs build on one another: pass --wait (a worker runs "
                               "them) or --inline")
        self.options = options
        folder = settings.VAR_DIR / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        h5_path, table_path, types_path = self._phantom(folder)
        detector = self._detector(folder)
        if options["from_em"]:
            self._from_em(h5_path, table_path, detector, self._cell_model(folder))
            return

        dataset = Dataset.objects.filter(name=DATASET).first()
        if dataset is None:
            dataset = dataset_create(
                name=DATASET, voxel_size=VOXEL_SIZE, owner=self._owner(), is_public=True,
                description="Synthetic EM phantom with ground-truth cells, cell types and "
                            "synapses (polyadic ones included).",
            )
        layers = set(dataset.layers.values_list("name", flat=True))
        if "em" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(h5_path), "name": "em", "dataset_path": "volumes/raw"})
        if "segmentation" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(h5_path), "name": "segmentation", "kind": "segmentation",
                "dataset_path": "volumes/labels/neuron_ids"})
            types = json.loads(types_path.read_text())
            cells_annotate(dataset=dataset, annotations={
                int(k): {"cell_type": v} for k, v in types.items()})
        if not dataset.synapse_runs.filter(name=TRUTH_RUN).exists():
            self._run(dataset, "import_synapses", {
                "source": str(table_path), "run_name": TRUTH_RUN, "table_format": "cnapse",
                "method": "ground_truth"})
        # The vesicle clouds tell the presynaptic side of each detected synapse.
        if "vesicles" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(h5_path), "name": "vesicles", "kind": "mask",
                "dataset_path": "volumes/labels/vesicles"})
        if not Skeleton.objects.filter(cell__dataset=dataset).exists():
            # Skeletons of the cells, for the cell pages' viewer (kimimaro, a few seconds).
            self._run(dataset, "skeletonize", {
                "layer": dataset.layers.get(name="segmentation").pk, "min_size_voxels": 1000})
        segmentation = dataset.layers.get(name="segmentation")
        if layer_mesh_path(segmentation) is None:
            # Meshes of the cells, for the cell and review pages' 3D view (zmesh, seconds).
            self._run(dataset, "mesh_segmentation", {"segmentation_layer": segmentation.pk})
        self._detect_and_assign(dataset, detector)
        self._report(dataset, detector)

    # --- inputs ------------------------------------------------------------------------------

    def _phantom(self, folder: Path) -> tuple[Path, Path, Path]:
        """The demo phantom's HDF5 file, synapse table and cell types, made once."""
        paths = folder / "phantom.h5", folder / "phantom_synapses.csv", \
            folder / "phantom_cell_types.json"
        if all(p.exists() for p in paths):
            return paths
        h5_path, table_path, types_path = paths
        shape = tuple(self.options["shape"])
        self.stdout.write(f"generating the phantom {shape} ...")
        phantom = make_phantom(shape, voxel_size=VOXEL_SIZE, n_cells=40, n_synapses=80,
                               seed=self.options["seed"])
        write_cnapse(table_path, [
            CnapseRow(syn_id=r["syn_id"], pre=r["pre"], pre_id=r["pre_id"], post=r["post"],
                      post_id=r["post_id"], position=(r["z_pos"], r["y_pos"], r["x_pos"]),
                      size=r["size"])
            for r in synapse_table(phantom)
        ])
        types_path.write_text(json.dumps({str(k): v for k, v in phantom.cell_types.items()}))
        # The volume file last, whole or not at all: its presence means the phantom is done.
        partial = write_phantom_h5(phantom, h5_path.with_suffix(".partial"))
        os.replace(partial, h5_path)
        return paths

    def _owner(self):
        return get_user_model().objects.filter(username="admin").first()

    def _detector(self, folder: Path) -> DetectorModel:
        """The demo's detector: trained once, by a train_detector job, on the training phantom
        imported as a dataset (its EM and its cleft ids, one id per synapse)."""
        detector = DetectorModel.objects.filter(name=DETECTOR).order_by("-version").first()
        if detector is not None:
            self.stdout.write(f"detector: '{detector.name}' version {detector.version} (id "
                              f"{detector.pk}), trained before (delete it to train again)")
            return detector
        dataset, path = self._training_dataset(folder)
        layers = set(dataset.layers.values_list("name", flat=True))
        if "clefts" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(path), "name": "clefts", "kind": "synapses",
                "dataset_path": "volumes/labels/clefts"})
        by_name = dict(dataset.layers.values_list("name", "pk"))
        job = self._run(dataset, "train_detector", {
            "name": DETECTOR, **TRAINING, "sources": [{
                "dataset": dataset.pk, "em_layer": by_name["em"],
                "labels_layer": by_name["clefts"], "convention": "instances"}]})
        return DetectorModel.objects.get(pk=job.result["detector_id"])

    def _training_dataset(self, folder: Path) -> tuple[Dataset, Path]:
        """The training phantom (made once) imported as a dataset with its EM."""
        path = folder / "training_phantom.h5"
        if not path.exists():
            self.stdout.write(f"generating the training phantom {TRAINING_PHANTOM['shape']} "
                              f"(seed {TRAINING_PHANTOM['seed']}) ...")
            training = make_phantom(TRAINING_PHANTOM["shape"], voxel_size=VOXEL_SIZE,
                                    n_cells=TRAINING_PHANTOM["n_cells"],
                                    n_synapses=TRAINING_PHANTOM["n_synapses"],
                                    seed=TRAINING_PHANTOM["seed"])
            os.replace(write_phantom_h5(training, path.with_suffix(".partial")), path)
        dataset = Dataset.objects.filter(name=TRAINING_DATASET).first()
        if dataset is None:
            dataset = dataset_create(
                name=TRAINING_DATASET, voxel_size=VOXEL_SIZE, owner=self._owner(),
                is_public=True, description="Synthetic EM phantom whose synapse clefts the "
                                            "demo's detector, and whose cells its cell model, "
                                            "are trained on.")
        if not dataset.layers.filter(name="em").exists():
            self._run(dataset, "import_volume", {
                "source": str(path), "name": "em", "dataset_path": "volumes/raw"})
        return dataset, path

    def _cell_model(self, folder: Path) -> DetectorModel:
        """The demo's cell model: trained once, by a train_cell_model job, on the training
        phantom's EM and its cells (imported as a segmentation layer of that dataset)."""
        model = DetectorModel.objects.filter(name=CELL_MODEL).order_by("-version").first()
        if model is not None:
            self.stdout.write(f"cell model: '{model.name}' version {model.version} (id "
                              f"{model.pk}), trained before (delete it to train again)")
        else:
            dataset, path = self._training_dataset(folder)
            if not dataset.layers.filter(name=CELL_LABELS).exists():
                self._run(dataset, "import_volume", {
                    "source": str(path), "name": CELL_LABELS, "kind": "segmentation",
                    "dataset_path": "volumes/labels/neuron_ids"})
            by_name = dict(dataset.layers.values_list("name", "pk"))
            job = self._run(dataset, "train_cell_model", {
                "name": CELL_MODEL, **CELL_TRAINING, "sources": [{
                    "dataset": dataset.pk, "em_layer": by_name["em"],
                    "labels_layer": by_name[CELL_LABELS]}]})
            model = DetectorModel.objects.get(pk=job.result["detector_id"])
        if not np.allclose(model.voxel_size, VOXEL_SIZE, rtol=1e-3):
            raise CommandError(f"cell model '{model.name}' version {model.version} was trained "
                               f"at {model.voxel_size} nm, the phantom's voxels are "
                               f"{VOXEL_SIZE} nm; delete it to train again")
        return model

    # --- from EM -----------------------------------------------------------------------------

    def _from_em(self, h5_path: Path, table_path: Path, detector: DetectorModel,
                 model: DetectorModel) -> None:
        """The phantom's EM alone (and its vesicle clouds, the presynaptic map): cells
        segmented with the cell model, then synapses detected and assigned on those cells."""
        dataset = Dataset.objects.filter(name=FROM_EM_DATASET).first()
        if dataset is None:
            dataset = dataset_create(
                name=FROM_EM_DATASET, voxel_size=VOXEL_SIZE, owner=self._owner(),
                is_public=True, description="The synthetic EM phantom, its cells segmented "
                                            "from its EM by a cell model.")
        layers = set(dataset.layers.values_list("name", flat=True))
        if "em" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(h5_path), "name": "em", "dataset_path": "volumes/raw"})
        if "vesicles" not in layers:
            self._run(dataset, "import_volume", {
                "source": str(h5_path), "name": "vesicles", "kind": "mask",
                "dataset_path": "volumes/labels/vesicles"})
        self._segment(dataset, model)
        cells = dataset.layers.get(name=SEGMENTATION["name"])
        if layer_mesh_path(cells) is None:
            self._run(dataset, "mesh_segmentation", {"segmentation_layer": cells.pk})
        self._detect_and_assign_cells(dataset, detector)
        self._report_from_em(dataset, h5_path, table_path, detector, model)

    def _segment(self, dataset, model: DetectorModel) -> None:
        """Segment the cells with a segment_cells job and the two it makes, or finish what an
        earlier run began."""
        if dataset.layers.filter(name=SEGMENTATION["name"]).exists():
            return
        earlier = None if self.options["inline"] else Job.objects.filter(
            dataset=dataset, kind__in=SEGMENTATION_JOBS).exclude(
            state__in=Job.FINISHED_STATES).order_by("pk").last()
        if earlier is not None:
            self.stdout.write(f"job {earlier.pk}: {earlier.kind} was left unfinished; waiting "
                              "for it")
            job = self._follow(earlier, _label(earlier.kind, earlier.parameters))
        else:
            job = self._run(dataset, "segment_cells", {
                "em_layer": dataset.layers.get(name="em").pk, "model_id": model.pk,
                **SEGMENTATION})
        while job.result.get("then_job"):
            follow = Job.objects.get(pk=job.result["then_job"])
            job = self._follow(follow, _label(follow.kind, follow.parameters))

    def _detect_and_assign_cells(self, dataset, detector: DetectorModel) -> None:
        """Detection and assignment on the segmented cells, as on the imported ones."""
        if dataset.synapse_runs.filter(name=PARTNER_RUN).exists():
            return
        by_name = dict(dataset.layers.values_list("name", "pk"))
        if dataset.synapse_runs.filter(name=DETECTION_RUN).exists():
            self._run(dataset, "assign_partners", {
                "method": FROM_EM_ASSIGNMENT["assign_method"],
                "sites_layer": by_name[f"{DETECTION_RUN} synapses"],
                "segmentation_layer": by_name[SEGMENTATION["name"]],
                "presynaptic_layer": by_name["vesicles"], "run_name": PARTNER_RUN,
                "options": FROM_EM_ASSIGNMENT["assign_options"]})
            return
        job = self._run(dataset, "detect_and_assign", {
            "model_id": detector.pk, "em_layer": by_name["em"],
            "segmentation_layer": by_name[SEGMENTATION["name"]],
            "presynaptic_layer": by_name["vesicles"], "run_name": DETECTION_RUN,
            "assignment_run_name": PARTNER_RUN, **DETECTION, **FROM_EM_ASSIGNMENT})
        follow = Job.objects.get(pk=job.result["then_job"])
        self._follow(follow, _label(follow.kind, follow.parameters))

    def _report_from_em(self, dataset, h5_path: Path, table_path: Path,
                        detector: DetectorModel, model: DetectorModel) -> None:
        dataset.refresh_from_db()
        layer = dataset.layers.get(name=SEGMENTATION["name"])
        cells = open_multiscale(layer.path)[0]["0"][...]
        with h5py.File(h5_path, "r") as f:
            truth = f["volumes/labels/neuron_ids"][...]
        n_truth = len(np.unique(truth[truth > 0]))
        voi = variation_of_information(cells, truth)
        rand = adapted_rand_error(cells, truth)
        self.stdout.write(self.style.SUCCESS(
            f"dataset '{dataset.name}' (id {dataset.pk}): shape {dataset.shape}, "
            f"{dataset.layers.count()} layers, {dataset.cells.count()} cells, "
            f"{dataset.synapses.count()} synapses"))
        self.stdout.write(
            f"cells from EM (layer '{layer.name}'): {dataset.cells.count()} cells, the phantom "
            f"has {n_truth}; against its cells (membrane left out): VOI split {voi.split:.3f}, "
            f"merge {voi.merge:.3f} bits, adapted Rand error {rand.error:.3f}")
        self.stdout.write(f"  the cell model's own validation, before seeing this phantom: "
                          f"{_validation(model)}")

        true_rows = read_cnapse(table_path)
        detected = dataset.synapse_runs.get(name=DETECTION_RUN)
        partners = dataset.synapse_runs.get(name=PARTNER_RUN)
        found = match_by_distance(
            list(detected.synapses.values_list("ctr_z", "ctr_y", "ctr_x")),
            [row.position for row in true_rows], tolerance_nm=TOLERANCE_NM)
        self.stdout.write(
            f"run '{DETECTION_RUN}': {found.tp + found.fp} synapses; against the "
            f"{found.tp + found.fn} true ones (centres within {TOLERANCE_NM:.0f} nm): "
            f"precision {found.precision:.2f}, recall {found.recall:.2f}, F1 {found.f1:.2f}")
        self.stdout.write(f"  the detector's own estimate, before seeing this phantom: "
                          f"{_estimate(detector)}")
        # Segmented cells are named by the phantom cell most of their voxels lie in.
        named = _majority(cells, truth)
        rows = [(centre, named.get(pre, 0), named.get(post, 0))
                for centre, pre, post in _partner_rows(partners.synapses.filter(flag=""))]
        truth_rows = [(row.position, row.pre, row.post) for row in true_rows]
        right = synapse_partner_scores(rows, truth_rows, tolerance_nm=TOLERANCE_NM)
        wired = wiring_matrix(dataset=dataset, runs=[partners])
        pairs: dict = {}
        for p in wired.pairs:
            key = (named.get(p.pre_segment_id, 0), named.get(p.post_segment_id, 0))
            pairs[key] = pairs.get(key, 0) + p.synapses
        connections = connection_scores(pairs, [(row.pre, row.post) for row in true_rows])
        true_pairs = {(row.pre, row.post) for row in true_rows}
        flagged = partners.synapses.exclude(flag="").count()
        self.stdout.write(
            f"run '{PARTNER_RUN}': {len(rows)} synapses with partners ({flagged} more flagged); "
            f"right place and partners (segmented cells named by the phantom cell they "
            f"overlap most): precision {right.precision:.2f}, recall {right.recall:.2f}; "
            f"{len([k for k in pairs if 0 not in k])} connected cell pairs against the ground "
            f"truth's {len(true_pairs)}: precision {connections.precision:.2f}, recall "
            f"{connections.recall:.2f}")
        address = f"http://{self.options['address']}"
        self.stdout.write(f"dataset page: {address}/datasets/{dataset.pk}/")
        self.stdout.write(f"review queue: {address}/datasets/{dataset.pk}/review/")

    # --- jobs --------------------------------------------------------------------------------

    def _detect_and_assign(self, dataset, detector: DetectorModel) -> None:
        """Detect the synapses and assign their partners, or finish what an earlier run began."""
        if dataset.synapse_runs.filter(name=PARTNER_RUN).exists():
            return
        by_name = dict(dataset.layers.values_list("name", "pk"))
        detected = dataset.synapse_runs.filter(name=DETECTION_RUN).first()
        if detected is None:
            job = self._run(dataset, "detect_and_assign", {
                "model_id": detector.pk, "em_layer": by_name["em"],
                "segmentation_layer": by_name["segmentation"],
                "presynaptic_layer": by_name["vesicles"], "run_name": DETECTION_RUN,
                "assignment_run_name": PARTNER_RUN, **DETECTION, **ASSIGNMENT})
            follow = Job.objects.get(pk=job.result["then_job"])
            self._follow(follow, _label(follow.kind, follow.parameters))
        else:
            # Detected before, but the assignment that followed did not finish: run it again.
            self._run(dataset, "assign_partners", {
                "method": ASSIGNMENT["assign_method"],
                "sites_layer": by_name[f"{DETECTION_RUN} synapses"],
                "segmentation_layer": by_name["segmentation"],
                "presynaptic_layer": by_name["vesicles"], "run_name": PARTNER_RUN,
                "options": ASSIGNMENT["assign_options"]})

    def _run(self, dataset, kind, parameters) -> Job:
        label = _label(kind, parameters)
        earlier = self._unfinished(dataset, kind, label)
        if earlier is not None:
            self.stdout.write(f"job {earlier.pk}: {label} was left unfinished; waiting for it")
            return self._follow(earlier, label)
        try:
            job = job_create(kind=kind, parameters=parameters, dataset=dataset,
                             enqueue=not self.options["inline"])
        except JobParameterError as exc:
            raise CommandError(f"{label}: refused: {exc}") from exc
        if self.options["inline"]:
            return self._check(job_execute(job_id=job.pk, inline_blocks=True), label)
        self.stdout.write(f"job {job.pk}: {label} queued for the worker ...")
        return self._follow(job, label)

    def _unfinished(self, dataset, kind, label) -> Job | None:
        """A job of an earlier, interrupted demo that a worker may still finish."""
        if self.options["inline"]:
            return None
        unfinished = Job.objects.filter(dataset=dataset, kind=kind).exclude(
            state__in=Job.FINISHED_STATES).order_by("pk")
        return next((job for job in unfinished if _label(kind, job.parameters) == label), None)

    def _follow(self, job: Job, label: str) -> Job:
        """Wait for a worker job (printing its messages) and check it ended well."""
        if not self.options["inline"]:
            job = self._wait(job)
        return self._check(job, label)

    def _check(self, job: Job, label: str) -> Job:
        if job.state != Job.State.DONE:
            raise CommandError(f"job {job.pk} ({label}) {job.state}: {job.error}")
        self.stdout.write(f"job {job.pk}: {label} done in {job.duration_s:.1f} s: {job.result}")
        return job

    def _wait(self, job: Job, timeout=1800) -> Job:
        deadline = time.monotonic() + timeout
        said = ""
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.is_finished:
                return job
            if not _alive(self.options["worker_pid"]):
                raise CommandError(
                    f"job {job.pk} ({job.kind}) is {job.state}, but the worker (pid "
                    f"{self.options['worker_pid']}) has stopped; see {_worker_log()}")
            if job.message and job.message != said:
                said = job.message
                self.stdout.write(f"job {job.pk}: {said}")
            time.sleep(0.5)
        raise CommandError(
            f"job {job.pk} ({job.kind}) still {job.state} after {timeout} s; is the worker "
            f"running? (see {_worker_log()})"
        )

    # --- the figures -------------------------------------------------------------------------

    def _report(self, dataset, detector: DetectorModel) -> None:
        dataset.refresh_from_db()
        self.stdout.write(self.style.SUCCESS(
            f"dataset '{dataset.name}' (id {dataset.pk}): shape {dataset.shape}, "
            f"{dataset.layers.count()} layers, {dataset.cells.count()} cells, "
            f"{dataset.synapses.count()} synapses"
        ))
        runs = {run.name: run for run in dataset.synapse_runs.all()}
        truth, detected, partners = runs[TRUTH_RUN], runs[DETECTION_RUN], runs[PARTNER_RUN]
        found = match_by_distance(
            list(detected.synapses.values_list("ctr_z", "ctr_y", "ctr_x")),
            list(truth.synapses.values_list("ctr_z", "ctr_y", "ctr_x")), tolerance_nm=TOLERANCE_NM)
        self.stdout.write(
            f"run '{DETECTION_RUN}': {found.tp + found.fp} synapses; against the "
            f"{found.tp + found.fn} true ones (centres within {TOLERANCE_NM:.0f} nm): "
            f"precision {found.precision:.2f}, recall {found.recall:.2f}, F1 {found.f1:.2f}")
        self.stdout.write(f"  the detector's own estimate, before seeing this phantom: "
                          f"{_estimate(detector)}")

        rows = _partner_rows(partners.synapses.filter(flag=""))
        right = synapse_partner_scores(rows, _partner_rows(truth.synapses.all()),
                                       tolerance_nm=TOLERANCE_NM)
        wired = wiring_matrix(dataset=dataset, runs=[partners])
        wired_truth = wiring_matrix(dataset=dataset, runs=[truth])
        connections = connection_scores(
            {(p.pre_segment_id, p.post_segment_id): p.synapses for p in wired.pairs},
            {(p.pre_segment_id, p.post_segment_id): p.synapses for p in wired_truth.pairs})
        flagged = partners.synapses.exclude(flag="").count()
        self.stdout.write(
            f"run '{PARTNER_RUN}': {len(rows)} synapses with partners ({flagged} more flagged); "
            f"right place and partners: precision {right.precision:.2f}, recall "
            f"{right.recall:.2f}; {len(wired)} connected cell pairs against the ground truth's "
            f"{len(wired_truth)}: precision {connections.precision:.2f}, recall "
            f"{connections.recall:.2f}")

        address = f"http://{self.options['address']}"
        self.stdout.write(f"dataset page: {address}/datasets/{dataset.pk}/")
        self.stdout.write(f"review queue: {address}/datasets/{dataset.pk}/review/")


def _estimate(detector: DetectorModel) -> str:
    """The detector's cross-validated figures, as the demo prints them."""
    pooled = detector.pooled()
    if not pooled:
        return "none (the detector carries no cross-validated figures)"

    def figure(name):
        low, high = pooled.get(f"{name}_interval", [0.0, 0.0])
        return f"{name} {pooled[name]:.2f} ({low:.2f}-{high:.2f})"

    folds = (detector.figures or {}).get("folds", "?")
    return (f"{figure('precision')}, {figure('recall')}, F1 {pooled['f1']:.2f} "
            f"({pooled['f1_interval'][0]:.2f}-{pooled['f1_interval'][1]:.2f}; 95 % intervals; "
            f"detector '{detector.name}' version {detector.version}, {folds}-fold spatial "
            f"cross-validation on '{TRAINING_DATASET}', synapses matched by overlap)")


def _validation(model: DetectorModel) -> str:
    """A cell model's validation figures at its threshold, as the demo prints them."""
    figures = model.figures or {}
    chosen = figures.get("chosen")
    if not chosen:
        return "none (the model carries no validation figures)"
    volumes = len(figures.get("validation", []))
    return (f"threshold {figures['threshold']:.2f}, VOI split {chosen['voi_split']:.3f}, merge "
            f"{chosen['voi_merge']:.3f} bits, adapted Rand error {chosen['arand']:.3f} (cell "
            f"model '{model.name}' version {model.version}, on {volumes} validation volume"
            f"{'s' * (volumes != 1)} of '{TRAINING_DATASET}' it was not trained on)")


def _majority(cells: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """Each segmented cell's phantom cell: the one most of its voxels lie in (membrane left
    out; cells only on membrane get none)."""
    table = contingency_table(cells, truth)
    order = np.lexsort((-table.count, table.seg))
    first = np.r_[True, table.seg[order][1:] != table.seg[order][:-1]]
    best = order[first]
    return {int(a): int(b) for a, b in zip(table.seg[best], table.gt[best])}


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (True when there is no pid to watch)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_log() -> Path:
    return settings.VAR_DIR / "log" / "worker.log"


def _label(kind: str, parameters: dict) -> str:
    return f"{kind} {parameters.get('name') or parameters.get('run_name') or ''}".strip()


def _partner_rows(synapses) -> list:
    """(centre, pre segment, post segment) per synapse; 0 for a missing cell."""
    return [((z, y, x), pre or 0, post or 0) for z, y, x, pre, post in synapses.values_list(
        "ctr_z", "ctr_y", "ctr_x", "pre__segment_id", "post__segment_id")]
