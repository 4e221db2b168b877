"""Error reports of a segmentation layer: the cells reviewers should look at first.

A job that makes a segmentation (or scores one against ground truth) hands the rows of
:func:`detection.cells.evaluation.likely_errors` (after
:func:`~detection.cells.evaluation.locate_errors`, which gives them a voxel to look at) or of
:func:`~detection.cells.evaluation.overlap_report` to :func:`store_error_report`. The rows go
to one JSON file per layer, ``DATA_ROOT/datasets/<dataset id>/layers/<layer id>/
error_report.json``, replaced atomically, and the layer records it in
``layer.parameters["error_report"]``. The API (``/api/datasets/<id>/layers/<layer id>/
errors/``) and the cells page read it with :func:`error_report`.

In the file, segment ids are strings (uint64 does not fit a JSON number) and every row is
checked against the row format of :mod:`detection.cells.evaluation`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from connectome.cells.models import Cell
from connectome.common.fields import UINT64_MAX
from connectome.datasets.models import Layer
from connectome.viewer.state import client_url, focus_state_url
from detection.errors import InputError

logger = logging.getLogger(__name__)

REPORT_NAME = "error_report.json"
REPORT_FORMAT = "connectome-error-report"
#: Rows from the agglomeration's record, or from a comparison with ground truth.
REPORT_KINDS = ("likely", "ground_truth")
ROW_KINDS = ("merge", "split")
#: Rows kept (the first ones: reports are sorted worst first); the file says how many there
#: were.
MAX_ROWS = 100_000

_ID_LISTS = ("cells", "truth")
_COUNT_LISTS = ("voxels", "overlap")
_COUNTS = ("contact", "parts")
_NUMBERS = ("score", "confidence", "bits", "share")
_FIELDS = {"kind", "bbox", "point", *_ID_LISTS, *_COUNT_LISTS, *_COUNTS, *_NUMBERS}


def report_relative_path(layer: Layer) -> Path:
    """Where a layer's error report lives, relative to DATA_ROOT."""
    return Path("datasets") / str(layer.dataset_id) / "layers" / str(layer.pk) / REPORT_NAME


# --------------------------------------------------------------------------------------------
# Checking rows


def _segment_id(value, where: str) -> str:
    if isinstance(value, bool):
        raise InputError(f"{where}: {value!r} is not a segment id")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: {value!r} is not a segment id") from None
    if number != value and str(number) != str(value).strip():
        raise InputError(f"{where}: {value!r} is not a whole number")
    if not 0 <= number <= UINT64_MAX:
        raise InputError(f"{where}: {number} is outside the uint64 range")
    return str(number)


def _count(value, where: str) -> int:
    problem = InputError(f"{where}: {value!r} is not a count (a whole number, 0 or more)")
    if isinstance(value, bool | str | bytes):
        raise problem
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise problem from None
    if number != value or number < 0:
        raise problem
    return number


def _voxel(value, where: str, shape) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise InputError(f"{where}: expected three voxel indices (z, y, x), got {value!r}")
    voxel = [_count(v, where) for v in value]
    if any(v >= n for v, n in zip(voxel, shape)):
        raise InputError(f"{where}: voxel {tuple(voxel)} lies outside the layer's shape "
                         f"{tuple(shape)}")
    return voxel


def _box(value, where: str, shape) -> list[list[int]]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise InputError(f"{where}: expected [[z0, y0, x0], [z1, y1, x1]], got {value!r}")
    low = _voxel(value[0], where, shape)
    high = [_count(v, where) for v in value[1]] if isinstance(value[1], Sequence) else None
    if high is None or len(high) != 3 or any(a >= b for a, b in zip(low, high)) or any(
            b > n for b, n in zip(high, shape)):
        raise InputError(f"{where}: {value!r} is not a half-open box inside the layer's shape "
                         f"{tuple(shape)}")
    return [low, high]


def clean_row(index: int, row, *, shape) -> dict:
    """One report row as the file stores it; an InputError names the row and the field."""
    where = f"row {index}"
    if not isinstance(row, Mapping):
        raise InputError(f"{where}: expected a dict, got {type(row).__name__}")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field{'s' * (len(unknown) > 1)} "
                         f"{', '.join(map(str, unknown))}")
    kind = row.get("kind")
    if kind not in ROW_KINDS:
        raise InputError(f"{where}: kind must be 'merge' or 'split', got {kind!r}")
    clean = {"kind": kind}
    for name in _ID_LISTS:
        if row.get(name) is not None:
            values = row[name]
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise InputError(f"{where}: {name} must be a list of segment ids")
            clean[name] = [_segment_id(v, f"{where}, {name}") for v in values]
    cells = clean.get("cells", [])
    if kind == "merge" and len(cells) != 1:
        raise InputError(f"{where}: a merge names one cell in cells, got {len(cells)}")
    if kind == "split" and len(cells) < 2:
        raise InputError(f"{where}: a split names two cells or more in cells, got "
                         f"{len(cells)}")
    for name in _COUNT_LISTS:
        if row.get(name) is not None:
            values = row[name]
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise InputError(f"{where}: {name} must be a list of voxel counts")
            clean[name] = [_count(v, f"{where}, {name}") for v in values]
    if "voxels" in clean and len(clean["voxels"]) != len(cells):
        raise InputError(f"{where}: voxels has {len(clean['voxels'])} values for "
                         f"{len(cells)} cells")
    for name in _COUNTS:
        if row.get(name) is not None:
            clean[name] = _count(row[name], f"{where}, {name}")
    for name in _NUMBERS:
        if row.get(name) is not None:
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                raise InputError(f"{where}, {name}: {row[name]!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(f"{where}, {name}: {value!r} is not a finite number")
            clean[name] = value
    if not 0.0 <= clean.get("confidence", 0.0) <= 1.0:
        raise InputError(f"{where}, confidence: {clean['confidence']} is outside [0, 1]")
    clean["bbox"] = None if row.get("bbox") is None else _box(row["bbox"], f"{where}, bbox",
                                                               shape)
    clean["point"] = None if row.get("point") is None else _voxel(row["point"],
                                                                   f"{where}, point", shape)
    return clean


# --------------------------------------------------------------------------------------------
# Writing


def _write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``; the caller moves it in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def store_error_report(layer: Layer, rows: Sequence[Mapping], *, job=None,
                       kind: str | None = None) -> dict:
    """Store a layer's error report, replacing the one it had.

    Parameters
    ----------
    layer : Layer
        A segmentation layer.
    rows : sequence of dict
        Rows of ``likely_errors`` or ``overlap_report``, worst first; the first
        :data:`MAX_ROWS` are kept.
    job : Job, optional
        The job that made them, recorded.
    kind : {"likely", "ground_truth"}, optional
        What the rows are; by default "ground_truth" when they name ground-truth bodies
        (``truth``), else "likely".

    Returns
    -------
    dict
        The record also put in ``layer.parameters["error_report"]``: ``path`` (relative to
        DATA_ROOT), ``rows``, ``kind``, ``job``.

    Raises
    ------
    InputError
        A layer that is not a segmentation, an unknown kind, or a row that is not a report
        row (the message names the row and the field).
    """
    if layer.kind != Layer.Kind.SEGMENTATION:
        raise InputError(f"layer '{layer.name}' is a {layer.kind} layer; error reports belong "
                         "to segmentation layers")
    total = len(rows)
    clean = [clean_row(i, row, shape=layer.shape) for i, row in enumerate(rows[:MAX_ROWS])]
    if kind is None:
        kind = "ground_truth" if any("truth" in row for row in clean) else "likely"
    if kind not in REPORT_KINDS:
        raise InputError(f"kind must be one of {', '.join(REPORT_KINDS)}, got {kind!r}")
    if total > MAX_ROWS:
        logger.warning("error report of layer %s: %d rows, the first %d kept", layer.pk, total,
                       MAX_ROWS)
    job_id = getattr(job, "pk", None)
    relative = report_relative_path(layer)
    record = {"path": str(relative), "rows": len(clean), "kind": kind, "job": job_id}
    document = {"format": REPORT_FORMAT, "version": 1, "dataset": layer.dataset_id,
                "layer": layer.pk, "kind": kind, "job": job_id, "total_rows": total,
                "created_at": timezone.now().isoformat(), "rows": clean}
    final = settings.DATA_ROOT / relative
    staged = _write_atomically(final, orjson.dumps(document))
    try:
        with transaction.atomic():
            locked = Layer.objects.select_for_update().filter(pk=layer.pk).first()
            if locked is None:
                raise InputError(f"layer {layer.pk} was deleted while its error report was "
                                 "made")
            locked.parameters = {**(locked.parameters or {}), "error_report": record}
            locked.save(update_fields=["parameters"])
            # The file moves in last: if the row cannot be saved, the old report stays whole.
            os.replace(staged, final)
    finally:
        staged.unlink(missing_ok=True)
    layer.parameters = locked.parameters
    logger.info("error report of layer %s: %d %s rows", layer.pk, len(clean), kind)
    return record


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class ErrorReport:
    """A layer's stored report."""

    kind: str
    job: int | None
    created_at: str
    total_rows: int
    rows: list[dict]


def error_report(layer: Layer) -> ErrorReport | None:
    """The layer's report, or None when it has none (or its file is gone)."""
    record = (layer.parameters or {}).get("error_report")
    if not record or not record.get("path"):
        return None
    path = settings.DATA_ROOT / record["path"]
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        logger.warning("layer %s records an error report at %s, which is missing", layer.pk,
                       path)
        return None
    if document.get("format") != REPORT_FORMAT:
        logger.warning("%s is not an error report", path)
        return None
    return ErrorReport(kind=document["kind"], job=document.get("job"),
                       created_at=document.get("created_at", ""),
                       total_rows=int(document.get("total_rows", len(document["rows"]))),
                       rows=document["rows"])


def layers_with_reports(dataset) -> list[Layer]:
    """The dataset's segmentation layers that record an error report, by id."""
    return [layer for layer in dataset.layers.filter(kind=Layer.Kind.SEGMENTATION).order_by("id")
            if (layer.parameters or {}).get("error_report")]


#: The narrowest field of view (nm) the viewer opens on an error.
MIN_FIELD_NM = 2000.0


def located_rows(layer: Layer, ranked: Sequence[tuple[int, dict]], *,
                 base_url: str) -> list[dict]:
    """Rows as shown, from (rank, row) pairs (rank 1 is the worst): with ``rank``,
    ``cell_ids`` (the database ids of the cells that exist, else None), ``position``, the
    voxel to centre the viewer on (the row's ``point``, else the centroid of its first cell
    when the cell has one, else None), ``field_nm``, the width to show (the row's box with a
    margin, at least :data:`MIN_FIELD_NM`), and ``viewer``: the address (under ``base_url``,
    the scheme and host the browser reaches) of the viewer client opening the dataset state
    that selects the row's cells in ``layer`` there."""

    segments = {int(s) for _, row in ranked for s in row.get("cells", [])}
    found = {
        segment: (pk, centroid)
        for pk, segment, *centroid in Cell.objects.filter(
            dataset_id=layer.dataset_id, segment_id__in=sorted(segments)
        ).values_list("id", "segment_id", "centroid_z", "centroid_y", "centroid_x")
    }
    voxel_size = layer.dataset.voxel_size
    shown = []
    for rank, row in ranked:
        cells = [int(s) for s in row.get("cells", [])]
        position = row.get("point")
        if position is None and cells and cells[0] in found:
            centroid = found[cells[0]][1]
            if None not in centroid:
                position = [min(max(0, round(c / v)), n - 1)
                            for c, v, n in zip(centroid, voxel_size, layer.shape)]
        field_nm = MIN_FIELD_NM
        if row.get("bbox") is not None:
            (_, y0, x0), (_, y1, x1) = row["bbox"]
            field_nm = max(field_nm, 1.2 * max((y1 - y0) * voxel_size[1],
                                               (x1 - x0) * voxel_size[2]))
        state = focus_state_url(layer.dataset_id, base_url=base_url, layer_id=layer.pk,
                                segments=cells, position=position, field_nm=field_nm)
        shown.append({**row, "rank": rank,
                      "cell_ids": [found[c][0] if c in found else None for c in cells],
                      "position": position, "field_nm": field_nm,
                      "viewer": base_url.rstrip("/") + client_url(state)})
    return shown
