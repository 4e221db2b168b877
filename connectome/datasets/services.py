"""Writes on datasets and layers."""

import re
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from connectome.common.validators import check_name
from connectome.datasets.models import Dataset, Layer, Membership
from detection.errors import InputError
from detection.io.sources import format_numbers, validate_voxel_size


class DatasetMismatchError(InputError):
    """A volume or table that does not fit the dataset it is imported into."""


@transaction.atomic
def dataset_create(
    *, name: str, voxel_size: tuple[float, float, float], description: str = "",
    owner=None, is_public: bool = False,
) -> Dataset:
    voxel_size = validate_voxel_size(voxel_size, what=f"dataset '{name}': voxel size")
    check_name(name, what="dataset name")
    dataset = Dataset(
        name=name, description=description, owner=owner, is_public=is_public,
        voxel_size_z=voxel_size[0], voxel_size_y=voxel_size[1], voxel_size_x=voxel_size[2],
    )
    dataset.full_clean()
    dataset.save()
    if owner is not None:
        Membership.objects.create(dataset=dataset, user=owner, role=Membership.Role.ADMIN)
    return dataset


#: What may change on a dataset once it exists (its voxel size and shape stay: volumes and
#: positions were stored against them).
DATASET_EDITABLE = ("name", "description", "is_public", "current_run")


@transaction.atomic
def dataset_update(*, dataset: Dataset, **changes) -> Dataset:
    """Change a dataset's name, description, public flag or current run (a run of the
    dataset, its id, or None for the default rule); anything else is refused."""
    unknown = sorted(set(changes) - set(DATASET_EDITABLE))
    if unknown:
        raise InputError(f"a dataset's {', '.join(unknown)} cannot be changed; "
                         f"editable: {', '.join(DATASET_EDITABLE)}")
    if "current_run" in changes and changes["current_run"] is not None:
        from connectome.synapses.models import SynapseRun

        run_id = getattr(changes["current_run"], "pk", changes["current_run"])
        run = SynapseRun.objects.filter(pk=run_id, dataset=dataset).first()
        if run is None:
            raise ValidationError(
                {"current_run": f"dataset '{dataset.name}' has no synapse run {run_id}"})
        changes["current_run"] = run
    for field, value in changes.items():
        setattr(dataset, field, value)
    dataset.full_clean()
    dataset.save(update_fields=[*changes, "updated_at"])
    return dataset


@transaction.atomic
def layer_rename(*, layer: Layer, name: str) -> Layer:
    """Give a layer another name (unique in its dataset); its files stay where they are."""
    name = name.strip()
    if not name:
        raise InputError("a layer's name cannot be empty")
    check_name(name, what="layer name")
    if Layer.objects.filter(dataset=layer.dataset_id, name=name).exclude(pk=layer.pk).exists():
        raise InputError(f"dataset '{layer.dataset.name}' already has a layer named '{name}'")
    layer.name = name
    layer.save(update_fields=["name"])
    return layer


def layer_storage_path(*, dataset: Dataset, name: str) -> str:
    """Where a layer's zarr group lives, relative to DATA_ROOT."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"datasets/{dataset.pk}/layers/{safe}.zarr"


def staging_path(*, dataset: Dataset, job=None) -> Path:
    """A fresh directory next to the final layers, so the finished volume moves in with a rename.

    A job's is named ``job-<id>-a<attempt>-<random>``, so that what a run whose worker died
    left can be found and removed (:func:`staging_remove`, the job sweep).
    """
    name = uuid.uuid4().hex
    if job is not None and job.pk is not None:
        name = f"job-{job.pk}-a{job.attempts}-{name[:12]}"
    path = settings.DATA_ROOT / "datasets" / str(dataset.pk) / "staging" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


_JOB_STAGING = re.compile(r"job-(\d+)-a(\d+)-[0-9a-f]+")


def staged_by_jobs(*, job_id: int | None = None) -> list[tuple[Path, int, int]]:
    """Staging folders that job runs made, as (path, job id, attempt), in every dataset."""
    root = Path(settings.DATA_ROOT) / "datasets"
    found = []
    for staging in root.glob("*/staging") if root.is_dir() else ():
        for path in staging.iterdir():
            match = _JOB_STAGING.fullmatch(path.name)
            if match and (job_id is None or int(match[1]) == job_id):
                found.append((path, int(match[1]), int(match[2])))
    return found


def staging_remove(*, job_id: int) -> list[Path]:
    """Remove the staging folders of every run of a job (whose runs are over); returns them."""
    removed = []
    for path, _, _ in staged_by_jobs(job_id=job_id):
        remove_staged(path)
        removed.append(path)
    return removed


def check_volume_fits(*, dataset: Dataset, shape, voxel_size, source: str) -> None:
    """Refuse a volume whose shape or voxel size contradicts the dataset's."""
    if dataset.shape is not None and tuple(shape) != dataset.shape:
        raise DatasetMismatchError(
            f"{source}: volume shape (z, y, x) {format_numbers(shape)} does not match dataset "
            f"'{dataset.name}' shape {format_numbers(dataset.shape)}"
        )
    if voxel_size is not None:
        stated = tuple(float(v) for v in voxel_size)
        if any(abs(a - b) > 1e-6 * max(a, b) for a, b in zip(stated, dataset.voxel_size)):
            raise DatasetMismatchError(
                f"{source}: voxel size (z, y, x) {format_numbers(stated)} nm does not match "
                f"dataset '{dataset.name}' voxel size {format_numbers(dataset.voxel_size)} nm "
                "(pass an explicit voxel size to override what the file states)"
            )


def layer_register(
    *, dataset: Dataset, name: str, kind: str, staged: Path, metadata: dict,
    source_path: str = "", method: str = "import", parameters: dict | None = None, job=None,
    with_rows=None,
) -> Layer:
    """Record a finished staged volume as a layer and move it into place, all or nothing.

    ``with_rows(layer)``, if given, writes rows that belong with the layer (its cells) in the
    same transaction. The volume is moved in as the last step; if anything fails, the rows
    roll back and the moved volume is removed, so no layer row points at a missing volume
    and no volume is left without its row.
    """
    relative = layer_storage_path(dataset=dataset, name=name)
    final = settings.DATA_ROOT / relative
    moved = False
    try:
        with transaction.atomic():
            # The dataset row is locked, so two imports that finish at once see each other's
            # shape: the first one sets it, the second is checked against it.
            locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
            dataset.shape_z, dataset.shape_y, dataset.shape_x = (
                locked.shape_z, locked.shape_y, locked.shape_x)
            if dataset.shape is not None:
                check_volume_fits(dataset=dataset, shape=metadata["shape"], voxel_size=None,
                                  source=source_path or name)
            if job is not None:
                from connectome.jobs.services import job_hold

                job_hold(job, stores=True)  # a run sent again meanwhile stores nothing
            if Layer.objects.filter(dataset=dataset, name=name).exists():
                raise InputError(f"dataset '{dataset.name}' already has a layer named '{name}'")
            if final.exists():
                raise InputError(
                    f"storage for layer '{name}' already exists at {final}; remove it first"
                )
            shape = tuple(int(v) for v in metadata["shape"])
            chunks = tuple(int(v) for v in metadata["chunks"])
            layer = Layer.objects.create(
                dataset=dataset, name=name, kind=kind, dtype=str(metadata["dtype"]),
                shape_z=shape[0], shape_y=shape[1], shape_x=shape[2],
                chunk_z=chunks[0], chunk_y=chunks[1], chunk_x=chunks[2],
                storage_path=relative,
                downsample_factors=[[int(f) for f in level] for level in metadata["factors"]],
                source_path=source_path, method=method, parameters=parameters or {}, job=job,
            )
            if dataset.shape is None:
                dataset.shape_z, dataset.shape_y, dataset.shape_x = shape
                dataset.save(update_fields=["shape_z", "shape_y", "shape_x", "updated_at"])
            if with_rows is not None:
                with_rows(layer)
            final.parent.mkdir(parents=True, exist_ok=True)
            Path(staged).rename(final)
            moved = True
    except BaseException:
        if moved:
            shutil.rmtree(final, ignore_errors=True)
        raise
    finally:
        remove_staged(Path(staged))
    return layer


def remove_staged(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
