"""Synapse model files of either kind: the voxel classifier (:mod:`detection.synapses.classify`) or the
network (:mod:`detection.synapses.cnn`). Both start with a JSON header line naming their format, so a
file is read by the right class without the caller knowing which it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from detection.errors import InputError
from detection.synapses.classify import MODEL_FORMAT as VOXEL_CLASSIFIER
from detection.synapses.classify import ModelMismatchError
from detection.synapses.resample import ResampledModel

NETWORK = "connectome-synapse-cnn"


def model_format(path) -> str:
    """The ``format`` named by a model file's header line."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
        return str(header["format"])
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelMismatchError(f"{path.name}: cannot read model file (no synapse model header: "
                                 f"{exc})") from exc


def load_synapse_model(path, *, voxel_size=None, allow_other_voxel_size: bool = False):
    """A :class:`~detection.synapses.classify.VoxelClassifier` or
    :class:`~detection.synapses.cnn.SynapseCnn`, whichever the file holds, for data of
    ``voxel_size``.

    Data whose sections are as thick as the model's and whose pixel is within a factor of two
    of it is resampled to the model's pixel (a :class:`~detection.synapses.resample.
    ResampledModel`); other data is refused, unless ``allow_other_voxel_size`` applies the model
    to it as it is."""
    kind = model_format(path)
    if kind == VOXEL_CLASSIFIER:
        from detection.synapses.classify import VoxelClassifier as model_class
    elif kind == NETWORK:
        from detection.synapses.cnn import SynapseCnn as model_class
    else:
        raise ModelMismatchError(f"{Path(path).name}: unknown model format {kind!r}; expected "
                                 f"{VOXEL_CLASSIFIER!r} or {NETWORK!r}")
    model = model_class.load(path)
    if voxel_size is None or np.allclose([float(v) for v in voxel_size], model.voxel_size,
                                         rtol=1e-3):
        return model
    if allow_other_voxel_size:
        return model
    try:
        return ResampledModel(model, voxel_size, source=f"the data ({Path(path).name})")
    except InputError as exc:
        raise ModelMismatchError(str(exc)) from None
