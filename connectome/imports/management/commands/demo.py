"""The demo: a synthetic EM volume with known cells and synapses, imported by jobs."""

import json
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from connectome.cells.services import cells_annotate
from connectome.datasets.models import Dataset
from connectome.datasets.services import dataset_create
from connectome.jobs.models import Job
from connectome.jobs.services import job_create, job_execute
from connectome.synapses.wiring import wiring_matrix
from detection.metrics import connection_scores
from detection.io.tables import CnapseRow, write_cnapse
from detection.phantom import make_phantom, synapse_table, write_phantom_h5

DATASET = "phantom"
ASSIGNMENT_RUN = "diffusion"


class Command(BaseCommand):
    help = (
        "Generate the phantom (synthetic EM with ground-truth cells and synapses) and import "
        "it with jobs: EM volume, segmentation and cells, ground-truth synapse table, synapse "
        "sites and vesicle clouds; then assign partners to the sites by diffusion."
    )

    def add_arguments(self, parser):
        parser.add_argument("--inline", action="store_true",
                            help="run the jobs in this process instead of on a worker")
        parser.add_argument("--wait", action="store_true",
                            help="wait for each worker job to finish before the next")
        parser.add_argument("--shape", nargs=3, type=int, default=(48, 384, 384),
                            metavar=("Z", "Y", "X"))
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args, **options):
        folder = settings.VAR_DIR / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        h5_path, table_path = folder / "phantom.h5", folder / "phantom_synapses.csv"
        types_path = folder / "phantom_cell_types.json"
        if not h5_path.exists():
            self.stdout.write(f"generating the phantom {tuple(options['shape'])} ...")
            phantom = make_phantom(
                tuple(options["shape"]), voxel_size=(40.0, 8.0, 8.0), n_cells=40,
                n_synapses=80, seed=options["seed"],
            )
            write_phantom_h5(phantom, h5_path)
            write_cnapse(table_path, [
                CnapseRow(syn_id=r["syn_id"], pre=r["pre"], pre_id=r["pre_id"], post=r["post"],
                          post_id=r["post_id"], position=(r["z_pos"], r["y_pos"], r["x_pos"]),
                          size=r["size"])
                for r in synapse_table(phantom)
            ])
            types_path.write_text(json.dumps({str(k): v for k, v in phantom.cell_types.items()}))

        dataset = Dataset.objects.filter(name=DATASET).first()
        if dataset is None:
            owner = get_user_model().objects.filter(username="admin").first()
            dataset = dataset_create(
                name=DATASET, voxel_size=(40.0, 8.0, 8.0), owner=owner, is_public=True,
                description="Synthetic EM phantom with ground-truth cells, cell types and "
                            "synapses (polyadic ones included).",
            )
        layers = set(dataset.layers.values_list("name", flat=True))
        if "em" not in layers:
            self._run(options, dataset, "import_volume", {
                "source": str(h5_path), "name": "em", "dataset_path": "volumes/raw"})
        if "segmentation" not in layers:
            self._run(options, dataset, "import_volume", {
                "source": str(h5_path), "name": "segmentation", "kind": "segmentation",
                "dataset_path": "volumes/labels/neuron_ids"})
            types = json.loads(types_path.read_text())
            cells_annotate(dataset=dataset, annotations={
                int(k): {"cell_type": v} for k, v in types.items()})
        if not dataset.synapse_runs.filter(name="ground truth").exists():
            self._run(options, dataset, "import_synapses", {
                "source": str(table_path), "run_name": "ground truth", "table_format": "cnapse",
                "method": "ground_truth"})
        # Synapse sites (the phantom's clefts, identities unused) and the vesicle clouds that
        # tell the presynaptic side; partners are then found by transmitter diffusion.
        for name, kind, inside in (("sites", "synapses", "volumes/labels/clefts"),
                                   ("vesicles", "mask", "volumes/labels/vesicles")):
            if name not in layers:
                self._run(options, dataset, "import_volume", {
                    "source": str(h5_path), "name": name, "kind": kind, "dataset_path": inside})
        if not dataset.synapse_runs.filter(name=ASSIGNMENT_RUN).exists():
            by_name = dict(dataset.layers.values_list("name", "pk"))
            self._run(options, dataset, "assign_partners", {
                "method": "diffusion", "sites_layer": by_name.get("sites"),
                "segmentation_layer": by_name.get("segmentation"),
                "presynaptic_layer": by_name.get("vesicles"), "run_name": ASSIGNMENT_RUN,
                "options": {"min_share": 0.25}})

        dataset.refresh_from_db()
        self.stdout.write(self.style.SUCCESS(
            f"dataset '{dataset.name}' (id {dataset.pk}): shape {dataset.shape}, "
            f"{dataset.layers.count()} layers, {dataset.cells.count()} cells, "
            f"{dataset.synapses.count()} synapses"
        ))
        runs = {run.name: run for run in dataset.synapse_runs.all()}
        if ASSIGNMENT_RUN in runs and "ground truth" in runs:
            found = wiring_matrix(dataset=dataset, runs=[runs[ASSIGNMENT_RUN]])
            truth = wiring_matrix(dataset=dataset, runs=[runs["ground truth"]])
            scores = connection_scores(
                {(p.pre_segment_id, p.post_segment_id): p.synapses for p in found.pairs},
                {(p.pre_segment_id, p.post_segment_id): p.synapses for p in truth.pairs})
            self.stdout.write(
                f"run '{ASSIGNMENT_RUN}': {found.synapses} synapses between {len(found)} cell "
                f"pairs; against the ground truth's {len(truth)} connected pairs: precision "
                f"{scores.precision:.2f}, recall {scores.recall:.2f}")

    def _run(self, options, dataset, kind, parameters):
        label = f"{kind} {parameters.get('name') or parameters.get('run_name')}"
        job = job_create(kind=kind, parameters=parameters, dataset=dataset,
                         enqueue=not options["inline"])
        if options["inline"]:
            job = job_execute(job_id=job.pk)
        elif options["wait"]:
            self.stdout.write(f"job {job.pk}: {label} queued for the worker ...")
            job = self._wait(job)
        else:
            self.stdout.write(f"job {job.pk}: {label} queued")
            return
        if job.state != Job.State.DONE:
            raise CommandError(f"job {job.pk} ({label}) {job.state}: {job.error}")
        self.stdout.write(f"job {job.pk}: {label} done in {job.duration_s:.1f} s: {job.result}")

    def _wait(self, job, timeout=1800):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.is_finished:
                return job
            time.sleep(0.5)
        raise CommandError(
            f"job {job.pk} still {job.state} after {timeout} s; is the worker running? "
            "(see var/log/worker.log)"
        )
