"""Every synapse of a run as a Neuroglancer precomputed annotation layer.

The layer follows Neuroglancer's *precomputed annotation* format
(``neuroglancer_annotations_v1``): one ``LINE`` per synapse from its presynaptic point to its
postsynaptic point (each falling back to the centre, as in the synapse state), with the
properties ``confidence`` (float32, NaN when none), ``kind``, ``review_state`` and ``flag``
(uint8 enums), and the relationships ``pre_segment`` / ``post_segment`` (the segment ids of
the partner cells). Coordinates are the viewer states' voxel space (x, y, z in voxels, a point
``p`` nm at ``p / voxel_size + 0.5``), so the layer needs no transform.

Three indexes:

- the **spatial index** is written once per run into files by :func:`build_layer` (the job
  ``build_annotation_layer``, or inline on the first request for a small run): a multi-level
  grid from one cell over the whole volume down to cells of at most :data:`LIMIT` synapses,
  each level holding a random subsample as the format prescribes, so a zoomed-out view draws
  a bounded number. Each level is one data file (the encoded cells back to back) and a small
  sorted index of (cell, offset), so a chunk is one seek and one read;
- **by id** and **by related segment** are answered from the database on request
  (:func:`encode_by_id`, :func:`encode_related`): both are point lookups on indexed columns,
  and they show the synapse as it is now (reviews change ``review_state``).

Runs are written all or nothing and a replaced run is a new row, so a layer built for a run
id stays true for its geometry; its files go when the run is deleted (``apps.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import uuid
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection

from connectome.cells.models import Cell
from connectome.synapses.models import Synapse, SynapseRun
from detection.errors import InputError

RELATIONSHIPS = ("pre_segment", "post_segment")
#: Most annotations in one grid cell of a spatial level (about 40 bytes each on the wire).
LIMIT = 5000
#: Runs up to this many synapses are built inline on the first request; larger ones by a job.
INLINE_MAX = 200_000
#: Synapse ids read per database round trip while building.
BATCH_IDS = 1_000_000
MAX_LEVELS = 24

KINDS = [c.value for c in Synapse.Kind]
REVIEW_STATES = [c.value for c in Synapse.ReviewState]
FLAGS = [c.value for c in Synapse.Flag]
_LABELS = {
    "kind": [c.label for c in Synapse.Kind],
    "review_state": [c.label for c in Synapse.ReviewState],
    "flag": [c.label for c in Synapse.Flag],
}
_ENUMS = {"kind": KINDS, "review_state": REVIEW_STATES, "flag": FLAGS}

# One annotation as encoded: geometry, then 4-byte, then 1-byte properties, padded to 4 bytes.
RECORD = np.dtype([("geometry", "<f4", (6,)), ("confidence", "<f4"), ("kind", "u1"),
                   ("review_state", "u1"), ("flag", "u1"), ("padding", "u1")])
assert RECORD.itemsize == 32


class LayerNotBuilt(Exception):
    """The run's spatial index is not written yet (a job is building it)."""


# --------------------------------------------------------------------------------------------
# Metadata


def properties_info() -> list[dict]:
    """The ``properties`` of the info, in encoding order."""
    props = [{"id": "confidence", "type": "float32",
              "description": "detection confidence (NaN: none)"}]
    for name in ("kind", "review_state", "flag"):
        props.append({"id": name, "type": "uint8",
                      "enum_values": list(range(len(_ENUMS[name]))),
                      "enum_labels": [str(label) for label in _LABELS[name]]})
    return props


def dimensions(voxel_size) -> dict:
    vz, vy, vx = (float(v) for v in voxel_size)
    return {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]}


def layer_folder(run_id: int) -> Path:
    return Path(settings.DATA_ROOT) / "annotations" / "runs" / str(int(run_id))


def remove_layer(run_id: int) -> None:
    shutil.rmtree(layer_folder(run_id), ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading synapses


def _select_sql(*, where: str, nan: str) -> str:
    s = Synapse._meta.db_table
    c = Cell._meta.db_table

    def point(axis, order):
        whens = " ".join(f"WHEN s.{p}_z IS NOT NULL THEN s.{p}_{axis}" for p in order[:-1])
        return f"CASE {whens} ELSE s.{order[-1]}_{axis} END"

    def enum(column, values):
        whens = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(values))
        return f"CASE s.{column} {whens} ELSE 255 END"

    a = [point(axis, ("pre", "ctr", "post")) for axis in "xyz"]
    b = [point(axis, ("post", "ctr", "pre")) for axis in "xyz"]
    cast_f = "::float8" if connection.vendor == "postgresql" else ""
    cast_i = "::int4" if connection.vendor == "postgresql" else ""
    cast_l = "::int8" if connection.vendor == "postgresql" else ""
    columns = (
        [f"s.id{cast_l}"] + [f"({x}){cast_f}" for x in a + b]
        + [f"COALESCE(s.confidence, {nan}){cast_f}"]
        + [f"({enum(name, _ENUMS[name])}){cast_i}" for name in ("kind", "review_state", "flag")]
        + [f"COALESCE(pre.segment_id, 0){cast_l}", f"COALESCE(post.segment_id, 0){cast_l}",
           f"(CASE WHEN s.pre_id IS NULL THEN 0 ELSE 1 END){cast_i}",
           f"(CASE WHEN s.post_id IS NULL THEN 0 ELSE 1 END){cast_i}"]
    )
    return (
        f"SELECT {', '.join(columns)} FROM {s} s "
        f"LEFT JOIN {c} pre ON pre.id = s.pre_id LEFT JOIN {c} post ON post.id = s.post_id "
        f"WHERE {where} AND NOT (s.pre_z IS NULL AND s.ctr_z IS NULL AND s.post_z IS NULL)"
    )


_COLUMN_KINDS = ["i8"] + ["f8"] * 7 + ["i4"] * 3 + ["i8"] * 2 + ["i4"] * 2


class Rows:
    """Synapses as arrays: ``ids`` (uint64), ``records`` (:data:`RECORD`), ``segments``
    ((n, 2) uint64 pre and post segment ids) and ``has`` ((n, 2) bool: the partner is set)."""

    def __init__(self, ids, records, segments, has):
        self.ids, self.records, self.segments, self.has = ids, records, segments, has

    def __len__(self):
        return len(self.ids)

    @classmethod
    def from_columns(cls, cols: list[np.ndarray]) -> Rows:
        n = len(cols[0])
        records = np.zeros(n, RECORD)
        geometry = np.stack([c.astype(np.float64) for c in cols[1:7]], axis=1)
        records["geometry"] = geometry
        records["confidence"] = cols[7]
        for i, name in enumerate(("kind", "review_state", "flag")):
            records[name] = cols[8 + i]
        segments = np.stack([cols[11], cols[12]], axis=1).astype(np.int64).view(np.uint64)
        has = np.stack([cols[13], cols[14]], axis=1).astype(bool)
        return cls(cols[0].astype(np.int64).view(np.uint64), records, segments, has)

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        if not parts:
            return cls.from_columns([np.zeros(0, k) for k in _COLUMN_KINDS])
        return cls(np.concatenate([p.ids for p in parts]),
                   np.concatenate([p.records for p in parts]),
                   np.concatenate([p.segments for p in parts]),
                   np.concatenate([p.has for p in parts]))


def _to_voxels(rows: Rows, voxel_size) -> Rows:
    # nm (z, y, x) -> Neuroglancer x, y, z voxels with the half-voxel shift (state.voxel_position).
    vz, vy, vx = (float(v) for v in voxel_size)
    scale = np.array([vx, vy, vz, vx, vy, vz])
    g = rows.records["geometry"].astype(np.float64)
    rows.records["geometry"] = g / scale + 0.5
    return rows


def _fetch(sql: str, params: list) -> Rows:
    """Rows of ``sql`` through an ordinary cursor (by id, by segment, SQLite)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchall()
    cols = []
    for i, kind in enumerate(_COLUMN_KINDS):
        values = [r[i] for r in raw]
        if kind == "f8":
            cols.append(np.array([np.nan if v is None else v for v in values], np.float64))
        else:
            cols.append(np.array(values, np.int64))
    return Rows.from_columns(cols)


def _copy_binary(sql: str) -> Rows:
    """Rows of ``sql`` by PostgreSQL's binary COPY, parsed as fixed-size records by numpy.

    Every column is NOT NULL and of a fixed width (the SELECT coalesces and casts), so each
    row is the same number of bytes.
    """
    fields = [("nfields", ">i2")]
    for i, kind in enumerate(_COLUMN_KINDS):
        fields += [(f"len{i}", ">i4"), (f"c{i}", ">" + kind)]
    row = np.dtype(fields)
    chunks = []
    with (connection.cursor() as cursor,
          cursor.cursor.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)") as copy):
        for data in copy:
            chunks.append(bytes(data))
    buf = b"".join(chunks)
    header = 11 + 4 + 4 + struct.unpack(">I", buf[15:19])[0]
    body = buf[header:len(buf) - 2]
    if len(body) % row.itemsize:
        raise RuntimeError(f"unexpected COPY layout: {len(body)} bytes, rows of {row.itemsize}")
    arr = np.frombuffer(body, row)
    if len(arr) and (np.any(arr["nfields"] != len(_COLUMN_KINDS))
                     or any(np.any(arr[f"len{i}"] != np.dtype(k).itemsize)
                            for i, k in enumerate(_COLUMN_KINDS))):
        raise RuntimeError("unexpected COPY layout: a NULL or a column of another width")
    return Rows.from_columns([arr[f"c{i}"].astype(k) for i, k in enumerate(_COLUMN_KINDS)])


def run_rows(run: SynapseRun, *, progress=None) -> Rows:
    """Every synapse of ``run`` that has a point, in id ranges of :data:`BATCH_IDS`."""
    from django.db.models import Max, Min

    bounds = Synapse.objects.filter(run=run).aggregate(lo=Min("id"), hi=Max("id"))
    if bounds["lo"] is None:
        return _to_voxels(Rows.concat([]), run.dataset.voxel_size)
    parts = []
    starts = range(bounds["lo"], bounds["hi"] + 1, BATCH_IDS)
    if progress is not None:
        progress.set_total(len(starts) + 1, message="reading synapses")
    for start in starts:
        where = f"s.run_id = {int(run.pk)} AND s.id >= {int(start)} AND s.id < {int(start + BATCH_IDS)}"
        if connection.vendor == "postgresql":
            parts.append(_copy_binary(_select_sql(where=where, nan="'NaN'")))
        else:
            parts.append(_fetch(_select_sql(where=where, nan="NULL"), []))
        if progress is not None:
            progress.advance()
    return _to_voxels(Rows.concat(parts), run.dataset.voxel_size)


def _rows_where(run: SynapseRun, where: str, params: list) -> Rows:
    rows = _fetch(_select_sql(where=f"s.run_id = %s AND {where}", nan="NULL"),
                  [run.pk, *params])
    return _to_voxels(rows, run.dataset.voxel_size)


# --------------------------------------------------------------------------------------------
# Encodings


def encode_multiple(ids: np.ndarray, records: np.ndarray) -> bytes:
    """Count (uint64le), the encoded annotations, then their ids (uint64le)."""
    return (struct.pack("<Q", len(ids)) + records.astype(RECORD, copy=False).tobytes()
            + ids.astype("<u8").tobytes())


def encode_single(record: np.ndarray, segments) -> bytes:
    """One annotation then, per relationship, a uint32le count and the uint64le ids."""
    out = [np.asarray(record, RECORD).tobytes()]
    for ids in segments:
        out.append(struct.pack("<I", len(ids)) + np.asarray(ids, "<u8").tobytes())
    return b"".join(out)


def encode_by_id(run: SynapseRun, annotation_id: int) -> bytes | None:
    rows = _rows_where(run, "s.id = %s", [int(annotation_id)])
    if not len(rows):
        return None
    return encode_single(rows.records[0], [
        [rows.segments[0, i]] if rows.has[0, i] else [] for i in range(2)])


def encode_related(run: SynapseRun, relationship: str, segment_id: int) -> bytes:
    """The run's synapses whose pre (or post) cell has ``segment_id``; none: an empty list."""
    column = {"pre_segment": "pre_id", "post_segment": "post_id"}[relationship]
    cell = Cell.objects.filter(dataset_id=run.dataset_id, segment_id=segment_id).values_list(
        "id", flat=True).first() if segment_id else None
    if cell is None:
        return encode_multiple(np.zeros(0, np.uint64), np.zeros(0, RECORD))
    rows = _rows_where(run, f"s.{column} = %s", [cell])
    return encode_multiple(rows.ids, rows.records)


# --------------------------------------------------------------------------------------------
# Spatial index


def _bounds(records: np.ndarray, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Lower and (exclusive) upper bound in voxels: the volume, widened to every point."""
    lower = np.zeros(3)
    upper = np.array([dataset.shape_x or 0, dataset.shape_y or 0, dataset.shape_z or 0],
                     np.float64)
    if len(records):
        g = records["geometry"].astype(np.float64)
        pts = np.concatenate([g[:, :3], g[:, 3:]])
        lower = np.minimum(lower, np.floor(pts.min(axis=0)))
        upper = np.maximum(upper, np.floor(pts.max(axis=0)) + 1)
    upper = np.maximum(upper, lower + 1)
    return lower, upper


def level_shapes(lower, upper, voxel_size) -> list[tuple[np.ndarray, np.ndarray]]:
    """(grid_shape, chunk_size) of up to :data:`MAX_LEVELS` levels, coarse to fine.

    Level 0 is one cell over the bounds; each next level halves the axes whose physical chunk
    size is more than half the largest, so chunks tend to isotropic (as the format suggests).
    """
    vz, vy, vx = (float(v) for v in voxel_size)
    scale = np.array([vx, vy, vz])
    grid = np.ones(3, np.int64)
    extent = np.asarray(upper, np.float64) - np.asarray(lower, np.float64)
    levels = []
    for _ in range(MAX_LEVELS):
        chunk = extent / grid
        levels.append((grid.copy(), chunk))
        physical = chunk * scale
        grid = grid * np.where(physical > physical.max() / 2, 2, 1)
    return levels


def _cells_of(geometry: np.ndarray, lower, chunk, grid) -> tuple[np.ndarray, np.ndarray]:
    """(annotation index, flat cell) for every grid cell each line's bounding box touches."""
    lo = np.minimum(geometry[:, :3], geometry[:, 3:]).astype(np.float64)
    hi = np.maximum(geometry[:, :3], geometry[:, 3:]).astype(np.float64)
    c_lo = np.clip(np.floor((lo - lower) / chunk).astype(np.int64), 0, grid - 1)
    c_hi = np.clip(np.floor((hi - lower) / chunk).astype(np.int64), 0, grid - 1)
    span = c_hi - c_lo + 1
    counts = span.prod(axis=1)
    index = np.repeat(np.arange(len(geometry)), counts)
    k = np.arange(len(index)) - np.repeat(np.cumsum(counts) - counts, counts)
    sz, sy = span[index, 2], span[index, 1]
    cell = c_lo[index] + np.stack([k // (sz * sy), (k // sz) % sy, k % sz], axis=1)
    flat = (cell[:, 0] * grid[1] + cell[:, 1]) * grid[2] + cell[:, 2]
    return index, flat


def spatial_levels(records: np.ndarray, *, lower, upper, voxel_size, limit: int,
                   seed: int = 0):
    """Yield (level info, flat cells, per-cell annotation index lists) coarse to fine.

    As the format specifies: at each level ``maxCount`` is the most remaining annotations in
    one cell, and each remaining annotation is emitted with probability
    ``min(1, limit / maxCount)`` (one draw per annotation, so a line crossing cells goes to all
    of them); the rest pass to the next level. Every annotation is emitted at exactly one
    level. Within a cell the order is random.
    """
    rng = np.random.default_rng(seed)
    remaining = np.arange(len(records))
    geometry = records["geometry"]
    shapes = level_shapes(lower, upper, voxel_size)
    for level, (grid, chunk) in enumerate(shapes):
        if not len(remaining) and level:
            return
        index, flat = _cells_of(geometry[remaining], lower, chunk, grid)
        max_count = int(np.bincount(flat).max()) if len(flat) else 0
        p = 1.0 if max_count <= limit else limit / max_count
        if level == len(shapes) - 1:
            p = 1.0  # the finest level allowed takes whatever is left
        emitted = rng.random(len(remaining)) < p
        order = np.lexsort((rng.random(len(flat)), flat))
        index, flat = index[order], flat[order]
        if level < len(shapes) - 1:
            # The draw gives about ``limit`` to the densest cell; past ``limit`` in any of its
            # cells an annotation waits for a finer level, so ``limit`` is a true bound.
            chosen = emitted[index]
            rank = np.cumsum(chosen) - 1
            first = np.searchsorted(flat, flat)  # sorted: the first pair of each cell
            before = np.where(first > 0, np.cumsum(chosen)[np.maximum(first - 1, 0)], 0)
            over = chosen & (rank - before >= limit)
            emitted[index[over]] = False
        keep = emitted[index]
        index, flat = remaining[index[keep]], flat[keep]
        cells, starts = np.unique(flat, return_index=True)
        most = int(np.diff(np.append(starts, len(flat))).max()) if len(flat) else 0
        info = {"key": f"spatial{level}", "grid_shape": [int(g) for g in grid],
                "chunk_size": [float(c) for c in chunk], "limit": max(1, most)}
        yield info, cells, np.split(index, starts[1:]) if len(cells) else []
        remaining = remaining[~emitted]
        if not len(remaining):
            return


def info_json(run: SynapseRun, *, lower, upper, spatial: list[dict]) -> dict:
    return {
        "@type": "neuroglancer_annotations_v1",
        "dimensions": dimensions(run.dataset.voxel_size),
        "lower_bound": [float(v) for v in lower],
        "upper_bound": [float(v) for v in upper],
        "annotation_type": "LINE",
        "properties": properties_info(),
        "relationships": [{"id": r, "key": f"rel_{r}"} for r in RELATIONSHIPS],
        "by_id": {"key": "by_id"},
        "spatial": spatial,
    }


def build_layer(run: SynapseRun, *, limit: int | None = None, progress=None) -> dict:
    """Write the spatial index and info of ``run``'s layer; returns what was written.

    Written into a fresh folder that replaces the old one by a rename, so a reader sees
    either the old layer or the new one, and a build that dies leaves no half layer.
    """
    rows = run_rows(run, progress=progress)
    lower, upper = _bounds(rows.records, run.dataset)
    final = layer_folder(run.pk)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{run.pk}.{uuid.uuid4().hex}"
    staging.mkdir()
    spatial, counts = [], []
    try:
        for info, cells, members in spatial_levels(
                rows.records, lower=lower, upper=upper, voxel_size=run.dataset.voxel_size,
                limit=limit or LIMIT, seed=run.pk):
            offsets = np.zeros(len(cells) + 1, np.int64)
            with open(staging / f"{info['key']}.bin", "wb") as f:
                for i, members_i in enumerate(members):
                    data = encode_multiple(rows.ids[members_i], rows.records[members_i])
                    f.write(data)
                    offsets[i + 1] = offsets[i] + len(data)
            np.save(staging / f"{info['key']}.index.npy",
                    np.stack([np.append(cells, -1), offsets], axis=1).astype(np.int64))
            spatial.append(info)
            counts.append(int(sum(len(m) for m in members)))
        info = info_json(run, lower=lower, upper=upper, spatial=spatial)
        (staging / "info").write_text(json.dumps(info, separators=(",", ":")))
        (staging / "build.json").write_text(json.dumps(
            {"run": run.pk, "synapses": len(rows), "entries_per_level": counts}))
        old = None
        if final.exists():
            old = final.parent / f".{run.pk}.old.{uuid.uuid4().hex}"
            os.rename(final, old)
        os.rename(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if progress is not None:
        progress.advance(message="written")
    return {"run_id": run.pk, "synapses": len(rows), "levels": len(spatial),
            "entries_per_level": counts}


def is_built(run_id: int) -> bool:
    return (layer_folder(run_id) / "info").exists()


def read_info(run_id: int) -> dict:
    try:
        return json.loads((layer_folder(run_id) / "info").read_text())
    except FileNotFoundError:
        raise LayerNotBuilt(f"the annotation layer of run {run_id} is not built") from None


def read_spatial_chunk(run_id: int, key: str, name: str) -> bytes | None:
    """The encoded annotations of one grid cell; None for a cell outside the grid.

    Raises InputError for a malformed name, LayerNotBuilt when there is no layer.
    """
    info = read_info(run_id)
    level = next((s for s in info["spatial"] if s["key"] == key), None)
    if level is None:
        return None
    parts = name.split("_")
    if len(parts) != 3 or not all(p.isdigit() and len(p) < 10 for p in parts):
        raise InputError(f"a spatial cell is named x_y_z with three integers, not {name!r}")
    cell = [int(p) for p in parts]
    grid = level["grid_shape"]
    if any(c >= g for c, g in zip(cell, grid)):
        return None
    flat = (cell[0] * grid[1] + cell[1]) * grid[2] + cell[2]
    folder = layer_folder(run_id)
    index = np.load(folder / f"{key}.index.npy", mmap_mode="r")
    i = int(np.searchsorted(index[:-1, 0], flat))
    if i >= len(index) - 1 or index[i, 0] != flat:
        return struct.pack("<Q", 0)
    start, stop = int(index[i, 1]), int(index[i + 1, 1])
    with open(folder / f"{key}.bin", "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def ensure_built(run: SynapseRun) -> dict:
    """The run's info; builds it here for a small run, else asks for a job and raises
    :class:`LayerNotBuilt` naming it."""
    try:
        return read_info(run.pk)
    except LayerNotBuilt:
        pass
    if Synapse.objects.filter(run=run).count() <= INLINE_MAX:
        build_layer(run)
        return read_info(run.pk)
    job = request_build(run)
    raise LayerNotBuilt(f"the annotation layer of run {run.pk} is being built (job {job.pk})")


def request_build(run: SynapseRun):
    """The unfinished build job of ``run``, else a new one."""
    from connectome.jobs.models import Job
    from connectome.jobs.services import job_create

    unfinished = Job.objects.filter(
        kind="build_annotation_layer", parameters__run=run.pk,
        state__in=[Job.State.QUEUED, Job.State.RUNNING]).first()
    if unfinished is not None:
        return unfinished
    return job_create(kind="build_annotation_layer", parameters={"run": run.pk},
                      dataset=run.dataset)
