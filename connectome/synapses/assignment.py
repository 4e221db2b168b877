"""Partner assignment over a dataset's layers, stored as one synapse run.

Reads the sites (a synapse-instance layer), the segmentation and what the method needs (a
presynaptic map for ``vesicle`` and ``diffusion``; the EM and an interface classifier for
``contact``), runs :mod:`detection.partners` and stores the rows with
:func:`~connectome.synapses.services.synapse_run_store` (one run, replaced atomically when
asked).  The volumes are read whole at full resolution; block-wise assignment over volumes
larger than memory is the job of the distributed detection pipeline.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from connectome.datasets.models import Dataset, Layer
from connectome.synapses.models import SynapseRun
from connectome.synapses.services import synapse_run_store
from detection import partners
from detection.io.zarr_store import open_multiscale

logger = logging.getLogger(__name__)

_FUNCTIONS = {
    "contact": partners.assign_by_contact,
    "vesicle": partners.assign_by_vesicles,
    "diffusion": partners.assign_by_diffusion,
}
# Inputs the service itself provides; the rest of a method's keyword arguments are options.
_PROVIDED = {"voxel_size", "interfaces", "scores", "local_scores", "free"}


def method_options(method: str) -> dict[str, object]:
    """The tunable options of a method with their defaults."""
    signature = inspect.signature(_FUNCTIONS[method])
    return {name: p.default for name, p in signature.parameters.items()
            if p.kind is p.KEYWORD_ONLY and name not in _PROVIDED}


def check_options(method: str, options: dict) -> dict:
    """`options` with unknown names refused and values cast to the defaults' types."""
    if method not in _FUNCTIONS:
        raise ValueError(f"unknown partner-assignment method {method!r}; methods: "
                         + ", ".join(_FUNCTIONS))
    known = method_options(method)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"the {method} method has no option {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(known))}")
    checked = {}
    for name, value in options.items():
        kind = type(known[name])
        try:
            checked[name] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"option {name}: expected a {kind.__name__}, got {value!r}") from None
    return checked


def _layer(dataset: Dataset, layer_ref, role: str, kinds) -> Layer:
    """A layer of `dataset` by id or by name."""
    layers = Layer.objects.filter(dataset=dataset)
    ref = str(layer_ref)
    layer = (layers.filter(pk=int(ref)).first() if ref.isdigit() else None) \
        or layers.filter(name=ref).first()
    if layer is None:
        raise ValueError(f"dataset '{dataset.name}' has no layer {ref!r} (the {role}); "
                         f"layers: {', '.join(layers.values_list('name', flat=True)) or 'none'}")
    if layer.kind not in kinds:
        raise ValueError(f"layer '{layer.name}' is a {layer.kind} layer; the {role} must be "
                         + " or ".join(kinds))
    return layer


def _read(layer: Layer) -> np.ndarray:
    group, _ = open_multiscale(layer.path)
    return group["0"][...]


def partners_assign(
    *, dataset: Dataset, method: str, sites_layer: int | str, segmentation_layer: int | str,
    run_name: str, presynaptic_layer: int | str | None = None,
    em_layer: int | str | None = None, interface_model: str | None = None,
    free_layer: int | str | None = None,
    options: dict | None = None, replace: bool = False, job=None, progress=None,
) -> SynapseRun:
    """Assign partners to the sites of `sites_layer` and store them as run `run_name`.

    Layers are given by id or by name.
    """
    options = check_options(method, options or {})
    if SynapseRun.objects.filter(dataset=dataset, name=run_name).exists() and not replace:
        raise ValueError(f"dataset '{dataset.name}' already has a synapse run named "
                         f"'{run_name}'; choose another name or replace it")
    sites = _layer(dataset, sites_layer, "sites", [Layer.Kind.SYNAPSES])
    seg = _layer(dataset, segmentation_layer, "segmentation", [Layer.Kind.SEGMENTATION])
    needed = {"sites": sites, "segmentation": seg}
    if method in ("vesicle", "diffusion"):
        if presynaptic_layer is None:
            raise ValueError(f"the {method} method needs a presynaptic (vesicle cloud) layer")
        needed["presynaptic map"] = _layer(dataset, presynaptic_layer, "presynaptic map",
                                           [Layer.Kind.PREDICTION, Layer.Kind.MASK])
    if method == "contact":
        if em_layer is None or not interface_model:
            raise ValueError("the contact method needs the EM layer and an interface "
                             "classifier file")
        needed["EM"] = _layer(dataset, em_layer, "EM", [Layer.Kind.EM])
    if free_layer is not None:
        needed["free space"] = _layer(dataset, free_layer, "free space", [Layer.Kind.MASK])
    shapes = {role: layer.shape for role, layer in needed.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("layers differ in shape: " + ", ".join(
            f"{role} '{needed[role].name}' {shape}" for role, shape in shapes.items()))

    steps = 3
    if progress is not None:
        progress.set_total(steps, message=f"reading {len(needed)} layers")
    arrays = {role: _read(layer) for role, layer in needed.items()}
    voxel_size = dataset.voxel_size
    if progress is not None:
        progress.advance(message=f"assigning partners ({method})")
    kwargs = dict(options)
    if method == "contact":
        from detection.features import FeatureSpec
        from detection.interfaces import InterfaceClassifier

        classifier = InterfaceClassifier.load(interface_model, voxel_size=voxel_size)
        spec = classifier.metadata.get("feature_spec")
        local = partners.site_interfaces(
            arrays["EM"], arrays["segmentation"], arrays["sites"], voxel_size=voxel_size,
            spec=FeatureSpec.from_dict(spec) if spec else None)
        kwargs["local_scores"] = partners.site_scores(local, classifier)
    if "free space" in arrays:
        if method != "diffusion":
            raise ValueError("a free-space layer is used by the diffusion method only")
        kwargs["free"] = arrays["free space"].astype(bool)
    rows = partners.assign_partners(
        method, arrays["sites"], arrays["segmentation"], voxel_size=voxel_size,
        presynaptic=arrays.get("presynaptic map"), **kwargs)
    if progress is not None:
        progress.advance(message=f"storing {len(rows)} rows")
    parameters = {
        "method": method, "options": options,
        "layers": {role: layer.name for role, layer in needed.items()},
        "interface_model": interface_model or None,
    }
    run = synapse_run_store(dataset=dataset, run_name=run_name, method=method, rows=rows,
                            parameters=parameters, replace=replace, job=job)
    if progress is not None:
        progress.advance()
    logger.info("%s: %d rows from %s sites stored as run %s", method, len(rows),
                sites.name, run)
    return run
