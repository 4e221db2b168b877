"""The Neuroglancer client, the precomputed data of every layer, and viewer states.

The client is public static code; the data and states answer 404 to users who cannot see the
dataset, as the API does. Errors are JSON, never an HTML page the client could take for data.
"""

import gzip
import json
import math
import re

from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET

from connectome.common.security import csp_update
from connectome.synapses.selectors import ALL_RUNS, selected_runs
from connectome.viewer import annotations, client, precomputed, selectors, state
from connectome.viewer.precomputed import SEGMENTATION_KINDS
from detection.cells.meshes import MESH_INFO
from detection.errors import InputError

_SEGMENT_ID = re.compile(r"\d{1,20}")
UINT64_MAX = 2**64 - 1
# Chunks change only when a layer is rebuilt, which gives it a new id.
CHUNK_CACHE = "private, max-age=86400"
# Segment properties and skeleton lists change as cells are annotated.
INFO_CACHE = "private, no-cache"
# A skeleton changes when its cell is skeletonized again; a minute old is recent enough, and
# lets the review page fetch the next synapse's skeletons ahead.
SKELETON_CACHE = "private, max-age=60"


def _not_found(detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=404)


# --------------------------------------------------------------------------------------------
# Client


# What the built client needs beyond the project's policy, on its own documents and workers
# only (the pages that frame it keep theirs): it compiles WebAssembly (chunk decoders), builds
# functions from strings (Function(): the compressed-segmentation encoder, annotation and
# MessagePack readers) and sets inline styles. Its web workers are files of this view too.
@require_GET
@xframe_options_sameorigin
@csp_update(script_src=["'wasm-unsafe-eval'", "'unsafe-eval'"], style_src=["'unsafe-inline'"])
def client_file(request, token: str, path: str = ""):
    found = client.client_file(path)
    if found is None:
        raise Http404(f"no client file {path!r}")
    response = FileResponse(found.open("rb"), content_type=client.content_type(found))
    # Built file names carry a content hash; index.html names them, so it is revalidated.
    response["Cache-Control"] = (
        "no-cache" if found.name == "index.html" else "public, max-age=31536000, immutable"
    )
    return response


@require_GET
def events(request, token: str):
    response = StreamingHttpResponse(client.idle_events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


# --------------------------------------------------------------------------------------------
# Layer data


@require_GET
def layer_data(request, layer_id: int, path: str):
    layer = selectors.visible_layer(layer_id=layer_id, user=request.user)
    if layer is None:
        return _not_found(f"no layer {layer_id}")
    segmentation = layer.kind in SEGMENTATION_KINDS
    if path == "info":
        return _json(request, _layer_info(layer))
    if path == "segment_properties/info" and segmentation:
        return _json(request, _segment_properties(layer))
    if path == "skeletons/info" and segmentation:
        return _json(request, precomputed.skeleton_info(voxel_size=layer.dataset.voxel_size))
    head, _, name = path.partition("/")
    if head == "skeletons" and segmentation:
        return _skeleton(request, layer, name)
    if head == "mesh" and segmentation:
        return _mesh(request, layer, name)
    return _chunk(request, layer, head, name)


def _chunk(request, layer, key: str, name: str):
    factors = _factors(layer)
    if not name or key not in [str(i) for i in range(len(factors))]:
        return _not_found(f"layer {layer.pk} has no {key}/{name}")
    level = precomputed.open_level(layer.path, index=int(key), factor=factors[int(key)],
                                   itemsize=_itemsize(layer))
    try:
        data = precomputed.read_chunk(layer.path, kind=layer.kind, level=level, name=name)
    except ValueError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    except precomputed.ChunkNotFound as exc:
        return _not_found(str(exc))
    return _binary(request, data)


def _factors(layer) -> list:
    return layer.downsample_factors or [(1, 1, 1)]


def _itemsize(layer) -> int:
    return precomputed.served_dtype(kind=layer.kind, dtype=layer.dtype).itemsize


def _layer_info(layer) -> dict:
    segmentation = layer.kind in SEGMENTATION_KINDS
    return precomputed.volume_info(
        kind=layer.kind, dtype=layer.dtype, voxel_size=layer.dataset.voxel_size,
        levels=precomputed.open_levels(layer.path, factors=_factors(layer),
                                       itemsize=_itemsize(layer)),
        segment_properties=segmentation and selectors.layer_cells(layer).exists(),
        skeletons=segmentation and selectors.layer_has_skeletons(layer),
        mesh=segmentation and selectors.layer_has_meshes(layer),
    )


def _segment_properties(layer) -> dict:
    cells = list(selectors.layer_cells(layer))
    return precomputed.segment_properties(
        [c[0] for c in cells], names=[c[1] for c in cells], cell_types=[c[2] for c in cells],
    )


def _skeleton(request, layer, name: str):
    if not _SEGMENT_ID.fullmatch(name) or int(name) > UINT64_MAX:
        return _not_found(f"no skeleton {name!r}")
    skeleton = selectors.segment_skeleton(layer=layer, segment_id=int(name))
    if skeleton is None:
        return _not_found(f"segment {name} of layer {layer.pk} has no skeleton")
    nodes = skeleton.unpack()
    return _binary(request, precomputed.encode_skeleton(
        node_id=nodes["node_id"], parent_id=nodes["parent_id"], zyx=nodes["zyx"],
        radius=nodes["radius"],
    ), cache=SKELETON_CACHE)


def _mesh(request, layer, name: str):
    if name == "info":
        if not selectors.layer_has_meshes(layer):
            return _not_found(f"layer {layer.pk} has no meshes")
        return _json(request, MESH_INFO)
    found = selectors.mesh_file(layer, name)
    if found is None:
        return _not_found(f"layer {layer.pk} has no mesh file {name!r}")
    path, what = found
    if what == "manifest":
        # A manifest changes when the meshes are made again; its fragments' names then change.
        return _binary(request, path.read_bytes(), cache=INFO_CACHE,
                       content_type="application/json")
    return _binary(request, path.read_bytes())


def _json(request, data: dict) -> HttpResponse:
    # Segment properties of a large layer run to megabytes of JSON; gzip shrinks them ~10x.
    body = json.dumps(data, separators=(",", ":")).encode()
    return _binary(request, body, cache=INFO_CACHE, content_type="application/json")


def _binary(request, data: bytes, *, cache: str = CHUNK_CACHE,
            content_type: str = "application/octet-stream") -> HttpResponse:
    response = HttpResponse(content_type=content_type)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        data = gzip.compress(data, compresslevel=1)
        response["Content-Encoding"] = "gzip"
    response.content = data
    response["Vary"] = "Accept-Encoding, Cookie"
    response["Cache-Control"] = cache
    return response


# --------------------------------------------------------------------------------------------
# Annotation layers of synapse runs


@require_GET
def run_annotations(request, run_id: int, path: str):
    run = selectors.visible_run(run_id=run_id, user=request.user)
    if run is None:
        return _not_found(f"no synapse run {run_id}")
    head, _, name = path.partition("/")
    try:
        if path == "info":
            return _json(request, annotations.ensure_built(run))
        if head == "by_id" and _SEGMENT_ID.fullmatch(name) and int(name) <= UINT64_MAX:
            data = annotations.encode_by_id(run, int(name))
            if data is None:
                return _not_found(f"run {run_id} has no synapse {name}")
            return _binary(request, data, cache=INFO_CACHE)
        relationship = head.removeprefix("rel_")
        if head.startswith("rel_") and relationship in annotations.RELATIONSHIPS:
            if not _SEGMENT_ID.fullmatch(name) or int(name) > UINT64_MAX:
                return JsonResponse({"detail": f"segment id: {name!r} is not a uint64"},
                                    status=400)
            return _binary(request, annotations.encode_related(run, relationship, int(name)),
                           cache=INFO_CACHE)
        if head.startswith("spatial") and name:
            data = annotations.read_spatial_chunk(run.pk, head, name)
            if data is not None:
                # A run's geometry never changes (a replaced run is a new id).
                return _binary(request, data)
    except annotations.LayerNotBuilt as exc:
        return _not_found(str(exc))
    except InputError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    return _not_found(f"run {run_id} has no annotation data {path!r}")


# --------------------------------------------------------------------------------------------
# Viewer states


def _base_url(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


@require_GET
def dataset_state(request, dataset_id: int):
    dataset = selectors.visible_dataset(dataset_id=dataset_id, user=request.user)
    if dataset is None:
        return _not_found(f"no dataset {dataset_id}")
    runs = _runs(request, dataset)
    if isinstance(runs, JsonResponse):
        return runs
    focus = _focus(request, dataset)
    if isinstance(focus, JsonResponse):
        return focus
    # One run's synapses as a layer: the page's run, else the default run.
    return JsonResponse(state.dataset_state(
        dataset, base_url=_base_url(request),
        synapse_run=runs[0] if runs is not None and len(runs) == 1 else None, **focus))


_POSITION = re.compile(r"(\d{1,12}),(\d{1,12}),(\d{1,12})")
#: Segments one state selects at most.
MAX_SELECTED = 1000


def _focus(request, dataset) -> dict | JsonResponse:
    """What ``?layer=``, ``?segments=``, ``?position=`` and ``?field_nm=`` ask a dataset state
    to select and centre on, as :func:`state.dataset_state` arguments; a 400 JsonResponse
    naming the parameter for anything else."""
    focus = {}

    def bad(name: str, problem: str) -> JsonResponse:
        return JsonResponse({name: [problem]}, status=400)

    raw = request.GET.get("layer")
    if raw is not None:
        layer = (dataset.layers.filter(pk=int(raw), kind__in=SEGMENTATION_KINDS).first()
                 if raw.isdigit() and len(raw) < 19 else None)
        if layer is None:
            return bad("layer", f"dataset {dataset.pk} has no segmentation layer {raw!r}")
        focus["segmentation_layer"] = layer
    raw = request.GET.get("segments")
    if raw is not None:
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        wrong = [p for p in parts if not _SEGMENT_ID.fullmatch(p) or int(p) > UINT64_MAX]
        if wrong or not parts or len(parts) > MAX_SELECTED:
            return bad("segments", f"expected 1 to {MAX_SELECTED} segment ids (uint64), "
                                   f"comma-separated; got {raw[:100]!r}")
        focus["selected"] = [int(p) for p in parts]
    raw = request.GET.get("position")
    if raw is not None:
        match = _POSITION.fullmatch(raw.replace(" ", ""))
        voxel = [int(v) for v in match.groups()] if match else None
        shape = dataset.shape
        if voxel is None or (shape is not None and any(v >= n for v, n in zip(voxel, shape))):
            return bad("position", f"expected a voxel z,y,x inside the dataset's shape "
                                   f"{shape}; got {raw[:100]!r}")
        focus["position_nm"] = [v * s for v, s in zip(voxel, dataset.voxel_size)]
    raw = request.GET.get("field_nm")
    if raw is not None:
        try:
            field = float(raw)
        except ValueError:
            field = math.nan
        if not 0 < field <= 1e9:
            return bad("field_nm", f"expected a width in nm above 0; got {raw[:100]!r}")
        focus["field_nm"] = field
    return focus


def _runs(request, dataset):
    """The runs of ``?run=`` (an id, or ``all``: None); the dataset's default run when absent;
    a 400 JsonResponse naming ``run`` for anything else."""
    raw = request.GET.get("run")
    if raw is None:
        return selected_runs(dataset=dataset)
    if raw == ALL_RUNS:
        return None
    run = dataset.synapse_runs.filter(pk=int(raw)).first() if raw.isdigit() else None
    if run is None:
        return JsonResponse(
            {"detail": f"run: dataset {dataset.pk} has no synapse run {raw!r}"}, status=400)
    return [run]


@require_GET
def synapse_state(request, synapse_id: int):
    synapse = selectors.visible_synapse(synapse_id=synapse_id, user=request.user)
    if synapse is None:
        return _not_found(f"no synapse {synapse_id}")
    layout = request.GET.get("layout", "xy")
    if layout not in state.SYNAPSE_LAYOUTS:
        return JsonResponse({"layout": [
            f"unknown layout {layout!r}; layouts: {', '.join(state.SYNAPSE_LAYOUTS)}"]},
            status=400)
    return JsonResponse(state.synapse_state(synapse, base_url=_base_url(request),
                                            layout=layout))


@require_GET
def cell_state(request, cell_id: int):
    cell = selectors.visible_cell(cell_id=cell_id, user=request.user)
    if cell is None:
        return _not_found(f"no cell {cell_id}")
    runs = _runs(request, cell.dataset)
    if isinstance(runs, JsonResponse):
        return runs
    return JsonResponse(state.cell_state(cell, base_url=_base_url(request), runs=runs))
