"""Neuroglancer viewer states for a dataset, a synapse and a cell.

Positions come in as (z, y, x) nm, our convention everywhere: a point ``p`` lies in voxel
``round(p / voxel_size)``, whose centre is at ``index * voxel_size`` (detection/synthetic/phantom.py, the
importers and the partner methods all use it). Neuroglancer counts voxel ``i`` as the interval
``[i, i + 1)``, so its centre is ``i + 0.5``. The state's global dimensions are x, y, z in voxels
of the dataset (scales in metres), and every position written here is
``p / voxel_size + 0.5`` reordered to x, y, z: the point lands in the middle of its voxel.

Segment ids are written as strings (uint64 does not fit a JSON number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlencode

from django.urls import reverse

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer
from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.selectors import default_run
from connectome.viewer import selectors
from connectome.viewer.precomputed import volume_type

# Data layers bottom to top; kinds not listed as visible start hidden but are one click away.
_LAYER_ORDER = {Layer.Kind.EM: 0, Layer.Kind.PREDICTION: 1, Layer.Kind.SEGMENTATION: 2,
                Layer.Kind.SYNAPSES: 3, Layer.Kind.MASK: 4}
VISIBLE_KINDS = (Layer.Kind.EM, Layer.Kind.SEGMENTATION, Layer.Kind.SYNAPSES)
# Width in pixels that the field of view is fitted to, per layout: the review page's single
# xy panel is about 600 px wide, a panel of a 4panel layout in a page about 350 px.
PANEL_PIXELS = {"xy": 600, "4panel": 350}
SYNAPSE_FIELD_NM = 2000.0
# Relationships of synapse annotations to the segmentation, in Neuroglancer's terms.
RELATIONSHIPS = ["pre_segment", "post_segment"]
SYNAPSE_LAYER = "synapse"
INPUTS_LAYER = "input synapses"
OUTPUTS_LAYER = "output synapses"
INPUT_COLOR = "#00c8ff"
OUTPUT_COLOR = "#ff3c3c"
# The one palette of a synapse, in the viewer and in the pages beside it (the review page gets
# it in its config): the presynaptic cell, the postsynaptic cell, the detected clefts, any
# other cell, and the pre -> post arrow drawn over them.
PALETTE = {
    "pre": "#ff5a36",
    "post": "#2f8bff",
    "cleft": "#ffd21f",
    "other": "#9a9a9a",
    "arrow": "#ffffff",
}
# Layouts of the synapse state: one xy panel, or xy, xz, yz and 3D.
SYNAPSE_LAYOUTS = ("xy", "4panel")
# The pre -> post arrow is drawn at least this fraction of the field of view long (300 nm of a
# 2 um field, about 90 px of the review page's panel), stretched about its middle.
ARROW_MIN_FRACTION = 0.15
RUN_LAYER_PREFIX = "run "
# A run's synapses are clefts: the palette's cleft colour.
RUN_COLOR = PALETTE["cleft"]


# --------------------------------------------------------------------------------------------
# Coordinates


def dimensions(voxel_size: Sequence[float]) -> dict:
    """Global x, y, z dimensions of one voxel each, in metres."""
    vz, vy, vx = (float(v) for v in voxel_size)
    return {"x": [vx * 1e-9, "m"], "y": [vy * 1e-9, "m"], "z": [vz * 1e-9, "m"]}


def voxel_position(point_nm: Sequence[float], voxel_size: Sequence[float]) -> list[float]:
    """Neuroglancer x, y, z of a (z, y, x) nm point: the middle of the voxel it lies in."""
    z, y, x = (float(p) / float(v) + 0.5 for p, v in zip(point_nm, voxel_size))
    return [x, y, z]


def _zoom(field_nm: float, voxel_size: Sequence[float], layout: str) -> float:
    # crossSectionScale counts the smallest voxel edge ("canonical voxel") per screen pixel.
    return field_nm / PANEL_PIXELS.get(layout, 600) / min(float(v) for v in voxel_size)


def _point(row, prefix: str) -> tuple[float, float, float] | None:
    z = getattr(row, f"{prefix}_z")
    if z is None:
        return None
    return (z, getattr(row, f"{prefix}_y"), getattr(row, f"{prefix}_x"))


# --------------------------------------------------------------------------------------------
# Layers


def layer_source(layer: Layer, *, base_url: str) -> str:
    """``precomputed://`` URL of a layer; absolute, as Neuroglancer requires."""
    info = reverse("viewer:layer-data", kwargs={"layer_id": layer.pk, "path": "info"})
    return f"precomputed://{base_url.rstrip('/')}{info.removesuffix('/info')}"


def _data_layer(layer: Layer, *, base_url: str, segments: Iterable[int] | None) -> dict:
    state = {
        "type": volume_type(layer.kind),
        "name": layer.name,
        "source": layer_source(layer, base_url=base_url),
    }
    if state["type"] == "segmentation" and selectors.layer_has_meshes(layer):
        # The selected cells' meshes show in the 3D panel (Neuroglancer loads the mesh named
        # by the layer's info; said here so that a state never leaves it out).
        state["source"] = {"url": state["source"], "subsources": {"default": True, "mesh": True}}
    if state["type"] == "segmentation" and segments:
        state["segments"] = list(dict.fromkeys(str(int(s)) for s in segments))
    if layer.kind == Layer.Kind.SYNAPSES:
        # Every cleft in one colour, never the random colours that can match a partner's.
        state["segmentDefaultColor"] = PALETTE["cleft"]
    if layer.kind not in VISIBLE_KINDS:
        state["visible"] = False
    return state


def annotation_layer(name: str, annotations: list[dict], *, voxel_size: Sequence[float],
                     segmentation: str | None = None, color: str | None = None) -> dict:
    """A local annotation layer in the global voxel space.

    With ``segmentation`` (a layer name), annotations relate to its segments as
    :data:`RELATIONSHIPS` and take ``segments`` as ``[[pre ids], [post ids]]``.
    """
    layer = {
        "type": "annotation",
        "name": name,
        "source": {"url": "local://annotations",
                   "transform": {"outputDimensions": dimensions(voxel_size)}},
        "annotations": annotations,
    }
    if segmentation is not None:
        layer["annotationRelationships"] = list(RELATIONSHIPS)
        layer["linkedSegmentationLayer"] = {r: segmentation for r in RELATIONSHIPS}
    if color is not None:
        layer["annotationColor"] = color
    return layer


def run_synapses_layer(run: SynapseRun, *, base_url: str, segmentation: str | None = None,
                       visible: bool = True) -> dict:
    """Every synapse of ``run`` as lines pre -> post, from the run's precomputed annotations
    (``connectome/viewer/annotations.py``), linked to ``segmentation`` (a layer name)."""
    info = reverse("viewer:run-annotations", kwargs={"run_id": run.pk, "path": "info"})
    layer = {
        "type": "annotation",
        "name": f"{RUN_LAYER_PREFIX}{run.name}",
        "source": f"precomputed://{base_url.rstrip('/')}{info.removesuffix('/info')}",
        "annotationColor": RUN_COLOR,
    }
    if segmentation is not None:
        layer["linkedSegmentationLayer"] = {r: segmentation for r in RELATIONSHIPS}
    if not visible:
        layer["visible"] = False
    return layer


def _synapse_segments(synapse: Synapse) -> list[list[str]]:
    return [[str(c.segment_id)] if c is not None else [] for c in (synapse.pre, synapse.post)]


# --------------------------------------------------------------------------------------------
# States


def dataset_state(
    dataset: Dataset, *, base_url: str, position_nm: Sequence[float] | None = None,
    selected: Iterable[int] | None = None, annotations: list[dict] | None = None,
    field_nm: float | None = None, layout: str = "4panel",
    segmentation_layer: Layer | None = None, synapse_run: SynapseRun | None = None,
    show_run: bool = True,
) -> dict:
    """Every layer of ``dataset``: EM as images, label layers as segmentations.

    Parameters
    ----------
    dataset : Dataset
    base_url : str
        Scheme and host the browser reaches Django at, e.g. ``"http://127.0.0.1:8000"``.
    position_nm : (3,) floats, optional
        (z, y, x) nm to centre on; the middle of the volume by default.
    selected : iterable of int, optional
        Segment ids to select in the segmentation layer.
    annotations : list of dict, optional
        Annotation layers (see :func:`annotation_layer`) put on top.
    field_nm : float, optional
        Width of the field of view of a 2D panel in nm; the volume's y/x extent by default.
    layout : str
        Neuroglancer layout: "4panel", "xy", "xy-3d", ...
    segmentation_layer : Layer, optional
        Layer that gets ``selected``; the dataset's first segmentation layer by default.
    synapse_run : SynapseRun, optional
        Run whose synapses are added as one annotation layer (:func:`run_synapses_layer`);
        the dataset's default run (`default_run`) by default.
    show_run : bool
        Whether that layer starts visible.
    """
    voxel_size = dataset.voxel_size
    shape = dataset.shape or (1, 1, 1)
    if segmentation_layer is None:
        segmentation_layer = selectors.segmentation_layer(dataset)
    layers = sorted(dataset.layers.all(), key=lambda l: (_LAYER_ORDER.get(l.kind, 9), l.name))
    state_layers = [
        _data_layer(layer, base_url=base_url,
                    segments=selected if layer == segmentation_layer else None)
        for layer in layers
    ]
    names = {layer["name"] for layer in state_layers}
    for extra in annotations or []:
        if extra["name"] in names:
            extra = {**extra, "name": f"{extra['name']} (annotations)"}
        names.add(extra["name"])
        state_layers.append(extra)
    run = synapse_run or default_run(dataset=dataset)
    if run is not None:
        state_layers.append(run_synapses_layer(
            run, base_url=base_url, visible=show_run,
            segmentation=segmentation_layer.name if segmentation_layer is not None else None))
    if position_nm is None:
        position = [shape[2] / 2, shape[1] / 2, shape[0] / 2]
    else:
        position = voxel_position(position_nm, voxel_size)
    if field_nm is None:
        field_nm = max(shape[1] * voxel_size[1], shape[2] * voxel_size[2])
    state = {
        "dimensions": dimensions(voxel_size),
        "position": position,
        "crossSectionScale": _zoom(field_nm, voxel_size, layout),
        "projectionScale": field_nm / min(voxel_size),
        "layers": state_layers,
        "layout": layout,
    }
    if segmentation_layer is not None:
        state["selectedLayer"] = {"layer": segmentation_layer.name, "visible": False}
    return state


def _rgb(colour: str) -> str:
    """A ``#rrggbb`` colour as a GLSL ``vec4``."""
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return f"vec4({r:.3f}, {g:.3f}, {b:.3f}, 1.0)"


# The arrow: a thick line in the arrow colour, a small marker in the pre colour at its start
# and a large one in the post colour at its end.
ARROW_SHADER = f"""void main() {{
  setLineColor({_rgb(PALETTE["arrow"])});
  setLineWidth(4.0);
  setEndpointMarkerColor({_rgb(PALETTE["pre"])}, {_rgb(PALETTE["post"])});
  setEndpointMarkerSize(7.0, 15.0);
  setEndpointMarkerBorderColor({_rgb(PALETTE["arrow"])});
  setEndpointMarkerBorderWidth(1.5);
}}
"""


def arrow_points(start: Sequence[float], end: Sequence[float], *,
                 min_length_nm: float) -> tuple[tuple, tuple]:
    """The pre -> post arrow as drawn: both (z, y, x) nm points in the section of their middle,
    stretched about the middle to at least ``min_length_nm`` in y/x.

    A line across sections shows only where it crosses the section on screen (a stub of a few
    pixels); in one section it shows whole. Points that coincide in y/x stay as they are.
    """
    mid = [(a + b) / 2 for a, b in zip(start, end)]
    dy, dx = end[1] - start[1], end[2] - start[2]
    length = (dy * dy + dx * dx) ** 0.5
    half = max(length, min_length_nm) / 2
    if length == 0:
        return (mid[0], start[1], start[2]), (mid[0], end[1], end[2])
    uy, ux = dy / length, dx / length
    return ((mid[0], mid[1] - uy * half, mid[2] - ux * half),
            (mid[0], mid[1] + uy * half, mid[2] + ux * half))


def synapse_state(synapse: Synapse, *, base_url: str, field_nm: float = SYNAPSE_FIELD_NM,
                  layout: str = "xy") -> dict:
    """Centred on the synapse, its cells selected in :data:`PALETTE`'s colours, an arrow from
    pre to post.

    The arrow is a line annotation from the presynaptic point to the postsynaptic point (each
    falling back to the centre), put in the centre's section and stretched to at least
    :data:`ARROW_MIN_FRACTION` of the field (:func:`arrow_points`); its ``segments`` are
    ``[[pre id], [post id]]`` and its id is the synapse's. ``layout`` is one of
    :data:`SYNAPSE_LAYOUTS`.
    """
    if layout not in SYNAPSE_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(SYNAPSE_LAYOUTS)}")
    dataset = synapse.dataset
    centre, pre, post = (_point(synapse, p) for p in ("ctr", "pre", "post"))
    if centre is None and pre is not None and post is not None:
        centre = tuple((a + b) / 2 for a, b in zip(pre, post))
    centre = centre or pre or post
    cells = [c for c in (synapse.pre, synapse.post) if c is not None]
    segmentation = selectors.segmentation_layer(dataset, cell=cells[0] if cells else None)
    annotations = []
    if centre is not None:
        start, end = arrow_points(pre or centre, post or centre,
                                  min_length_nm=ARROW_MIN_FRACTION * field_nm)
        line = {
            "type": "line", "id": str(synapse.pk),
            "pointA": voxel_position((centre[0], *start[1:]), dataset.voxel_size),
            "pointB": voxel_position((centre[0], *end[1:]), dataset.voxel_size),
            "description": f"synapse {synapse.pk}",
        }
        if cells and segmentation is not None:
            line["segments"] = _synapse_segments(synapse)
        layer = annotation_layer(
            SYNAPSE_LAYER, [line], voxel_size=dataset.voxel_size,
            segmentation=segmentation.name if segmentation is not None else None,
            color=PALETTE["arrow"],
        )
        layer["shader"] = ARROW_SHADER
        annotations.append(layer)
    state = dataset_state(
        dataset, base_url=base_url, position_nm=centre,
        selected=[c.segment_id for c in cells], annotations=annotations,
        field_nm=field_nm, layout=layout, segmentation_layer=segmentation,
        synapse_run=synapse.run, show_run=False,
    )
    colours = {}
    if synapse.pre is not None:
        colours[str(synapse.pre.segment_id)] = PALETTE["pre"]
    if synapse.post is not None:
        colours.setdefault(str(synapse.post.segment_id), PALETTE["post"])
    for layer in state["layers"]:
        if segmentation is not None and layer["name"] == segmentation.name:
            layer["segmentColors"] = colours
            layer["segmentDefaultColor"] = PALETTE["other"]
            if layout == "xy":
                # No 3D panel: skeletons would only be dots and strokes across the section,
                # and the viewer would load each cell's skeleton before it counts as drawn.
                layer["objectAlpha"] = 0
    return state


def cell_state(cell: Cell, *, base_url: str, synapse_limit: int = 2000,
               layout: str = "4panel", runs: Sequence[SynapseRun] | None = None) -> dict:
    """The cell selected (with its skeleton), at its centroid, with its synapses as points.

    ``runs``: the runs whose synapses are shown (the page's run; None: every run); with one
    run, that run is also the (hidden) annotation layer of every synapse.

    Outputs (the cell is presynaptic) and inputs go in two annotation layers,
    :data:`OUTPUTS_LAYER` and :data:`INPUTS_LAYER`; each point is the synapse centre (else the
    cell's own point), has the synapse id as id and ``[[pre id], [post id]]`` as segments.
    At most ``synapse_limit`` synapses, oldest first; flagged rows (no connection) are left out.
    """
    dataset = cell.dataset
    voxel_size = dataset.voxel_size
    bbox = cell.bbox
    position = _point(cell, "centroid")
    field_nm = None
    if bbox is not None:
        (_, lo_y, lo_x), (_, hi_y, hi_x) = bbox
        if position is None:
            position = tuple((lo + hi - 1) / 2 * v
                             for lo, hi, v in zip(bbox[0], bbox[1], voxel_size))
        field_nm = 1.2 * max((hi_y - lo_y) * voxel_size[1], (hi_x - lo_x) * voxel_size[2])
    segmentation = selectors.segmentation_layer(dataset, cell=cell)
    link = segmentation.name if segmentation is not None else None
    points = {OUTPUTS_LAYER: [], INPUTS_LAYER: []}
    for synapse in selectors.cell_synapses(cell, limit=synapse_limit, runs=runs):
        output = synapse.pre_id == cell.pk
        where = _point(synapse, "ctr") or _point(synapse, "pre" if output else "post")
        if where is None:
            continue
        points[OUTPUTS_LAYER if output else INPUTS_LAYER].append({
            "type": "point", "id": str(synapse.pk),
            "point": voxel_position(where, voxel_size),
            "segments": _synapse_segments(synapse),
            "description": f"synapse {synapse.pk}",
        })
    annotations = [
        annotation_layer(name, points[name], voxel_size=voxel_size, segmentation=link,
                         color=color)
        for name, color in ((OUTPUTS_LAYER, OUTPUT_COLOR), (INPUTS_LAYER, INPUT_COLOR))
    ]
    state = dataset_state(
        dataset, base_url=base_url, position_nm=position, selected=[cell.segment_id],
        annotations=annotations, field_nm=field_nm, layout=layout,
        segmentation_layer=segmentation, show_run=False,
        synapse_run=runs[0] if runs is not None and len(runs) == 1 else None,
    )
    # The 3D view shows the skeleton and the synapses, not the opaque sections in front.
    state["showSlices"] = False
    return state


def focus_state_url(dataset_id: int, *, base_url: str, layer_id: int | None = None,
                    segments: Iterable[int] = (), position: Sequence[int] | None = None,
                    field_nm: float | None = None) -> str:
    """Absolute URL of the dataset state that selects ``segments`` in layer ``layer_id`` and
    centres on voxel ``position`` (z, y, x) with a field ``field_nm`` wide (the query of
    ``viewer:dataset-state``, ``docs/viewer.md``)."""
    query = {}
    if layer_id is not None:
        query["layer"] = str(int(layer_id))
    segments = [str(int(s)) for s in segments]
    if segments:
        query["segments"] = ",".join(segments)
    if position is not None:
        query["position"] = ",".join(str(int(v)) for v in position)
    if field_nm is not None:
        query["field_nm"] = f"{float(field_nm):g}"
    path = reverse("viewer:dataset-state", args=[dataset_id])
    return f"{base_url.rstrip('/')}{path}" + (f"?{urlencode(query, safe=',')}" if query else "")


def client_url(state: dict | str, *, token: str = "connectome") -> str:
    """Path of the client showing ``state``: a state dict, or the URL of a state JSON.

    A dict goes into the fragment as compact, URL-quoted JSON; a URL (``http://...``) is put
    as is, and the client fetches it (same-origin, with the session cookie).
    """
    path = reverse("viewer:client", kwargs={"token": token})
    if isinstance(state, str):
        return f"{path}#!{state}"
    return f"{path}#!{quote(json.dumps(state, separators=(',', ':')), safe='')}"
