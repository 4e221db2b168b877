"""Writes on detectors: store a trained model with its record, all or nothing; remove files."""

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from connectome.common.validators import check_name
from connectome.detectors.models import DetectorModel

logger = logging.getLogger(__name__)

#: Model files live under ``DATA_ROOT/models/<record id>/``.
MODELS_FOLDER = "models"
FILE_NAME = "model.bin"


def detector_folder(detector_id: int) -> Path:
    return Path(settings.DATA_ROOT) / MODELS_FOLDER / str(detector_id)


def model_figures(model) -> dict:
    """What a record shows of a trained model's cross-validation: the calibration's nested
    figures (pooled, per volume, per fold) and the leave-one-volume-out ones."""
    calibration = getattr(model, "calibration", None)
    figures = dict(calibration.figures) if calibration is not None else {}
    training = getattr(model, "training", None) or {}
    for key in ("leave_one_volume_out", "cross_validation"):
        if key in training and key not in figures:
            figures[key] = training[key]
    return figures


def model_calibration(model) -> dict | None:
    calibration = getattr(model, "calibration", None)
    if calibration is None:
        return None
    chosen = calibration.postprocessing
    return {**asdict(chosen), "description": chosen.describe()}


def detector_store(*, name: str, kind: str, model, staged: Path, sources: list[dict],
                   datasets, parameters: dict, user=None, job=None, figures: dict | None = None,
                   calibration: dict | None = None) -> DetectorModel:
    """Record a trained model saved at ``staged`` and move the file into place, in one
    transaction: the next version of ``name``, its figures and calibration (by default those
    of a synapse detector's cross-validation, :func:`model_figures` and
    :func:`model_calibration`; a cell model gives its own).

    If anything fails, the record rolls back and the moved file is removed, so no record
    points at a missing file and no file is left without its record.
    """
    check_name(name, what="detector name")
    moved: Path | None = None
    try:
        for attempt in range(5):
            try:
                with transaction.atomic():
                    if job is not None:
                        from connectome.jobs.services import job_hold

                        job_hold(job, stores=True)  # a run sent again meanwhile stores nothing
                    version = (DetectorModel.objects.filter(name=name)
                               .aggregate(v=Max("version"))["v"] or 0) + 1
                    voxel_size = tuple(float(v) for v in model.voxel_size)
                    record = DetectorModel.objects.create(
                        name=name, version=version, kind=kind, voxel_size_z=voxel_size[0],
                        voxel_size_y=voxel_size[1], voxel_size_x=voxel_size[2],
                        sources=sources, parameters=parameters,
                        figures=model_figures(model) if figures is None else figures,
                        calibration=(model_calibration(model) if calibration is None
                                     else calibration), file=f"pending-{staged}",
                        size=Path(staged).stat().st_size, created_by=user, job=job)
                    record.datasets.set(datasets)
                    folder = detector_folder(record.pk)
                    if folder.exists():
                        # Left by a record whose deletion never removed its file.
                        shutil.rmtree(folder)
                    folder.mkdir(parents=True)
                    final = folder / FILE_NAME
                    Path(staged).replace(final)
                    moved = final
                    record.file = str(final.relative_to(settings.DATA_ROOT))
                    record.save(update_fields=["file"])
                return record
            except IntegrityError:
                # Another training of the same name took this version first: take the next.
                if moved is not None or attempt == 4:
                    raise
    except BaseException:
        if moved is not None:
            shutil.rmtree(moved.parent, ignore_errors=True)
        raise


def detector_file_remove(*, detector: DetectorModel) -> None:
    """Remove a record's file (and its folder) once the deletion commits."""
    if not detector.pk:
        return
    folder = detector_folder(detector.pk)

    def remove():
        shutil.rmtree(folder, ignore_errors=True)

    transaction.on_commit(remove)
