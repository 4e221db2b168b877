"""Context cues for the voxel classifier (after Becker et al. 2013, ccboost).

A synapse is recognised less by the voxel itself than by what lies around it: a dark density on
one side of a membrane, a cloud of vesicles on the other. Two kinds of cue describe that
neighbourhood for every voxel:

*oriented* cues
    feature values sampled at distances ``d`` on both sides of the voxel along the normal of the
    local sheet-like structure (the eigenvector of the Hessian eigenvalue of largest magnitude,
    computed at ``orientation_scale_nm``). The normal has no sign, so the two sides are reported
    as their maximum and minimum: a PSD-plus-vesicles pattern then looks the same whichever way
    the membrane faces.
*shell* cues
    the mean of a feature over concentric cubic shells around the voxel (inner radius of one
    shell = outer radius of the previous), rotation-tolerant summaries of the surroundings.

Everything is in nm and converted per axis, so anisotropic sections work. All cues for a voxel
depend only on data within :meth:`ContextSpec.halo_voxels` of it, so block-wise computation
with that halo equals whole-volume computation.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from detection.features import sigma_voxels


@dataclass(frozen=True)
class ContextSpec:
    """Which context cues to compute.

    Parameters
    ----------
    channels : tuple of str
        Names of feature channels (``FeatureSpec.channel_names()``) to pool.
    orientation_scale_nm : float
        Scale of the Hessian whose dominant eigenvector gives the local normal.
    offsets_nm : tuple of float
        Distances along the normal at which channels are sampled on both sides.
    shells_nm : tuple of float
        Outer half-widths of the cubic shells, increasing.
    """

    channels: tuple[str, ...] = ()
    orientation_scale_nm: float = 40.0
    offsets_nm: tuple[float, ...] = (40.0, 80.0, 160.0)
    shells_nm: tuple[float, ...] = (60.0, 120.0, 240.0)

    def names(self) -> list[str]:
        names = []
        for channel in self.channels:
            for d in self.offsets_nm:
                names += [f"ctx_max({channel})@{d:g}nm", f"ctx_min({channel})@{d:g}nm"]
            for r in self.shells_nm:
                names.append(f"ctx_shell({channel})@{r:g}nm")
        return names

    @property
    def n_features(self) -> int:
        return len(self.names())

    def halo_voxels(self, voxel_size) -> tuple[int, int, int]:
        """Voxels of surrounding data that the cues of a voxel depend on, per axis."""
        voxel_size = np.asarray(voxel_size, dtype=float)
        reach = max(self.offsets_nm + self.shells_nm, default=0.0)
        sigma = np.asarray(sigma_voxels(self.orientation_scale_nm, voxel_size))
        # The orientation at a sampled voxel does not matter, only at the centre voxel: the
        # orientation halo (smoothing + two central differences) adds to nothing else.
        orientation = np.ceil(3.0 * sigma) + 2
        return tuple(int(v) for v in np.maximum(np.ceil(reach / voxel_size) + 1, orientation))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ContextSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def sheet_normals(volume: np.ndarray, *, voxel_size, scale_nm: float) -> np.ndarray:
    """Unit normal of the dominant curvature at every voxel.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    voxel_size : (3,) float, nm
    scale_nm : float

    Returns
    -------
    (3, Z, Y, X) float32 ndarray
        (z, y, x) components of the eigenvector of the Hessian eigenvalue with the largest
        magnitude, in physical space (unit length in nm).
    """
    voxel_size = np.asarray(voxel_size, dtype=np.float32)
    smoothed = ndimage.gaussian_filter(
        np.asarray(volume, dtype=np.float32), sigma_voxels(scale_nm, voxel_size), mode="reflect"
    )
    first = np.gradient(smoothed, *voxel_size)
    hessian = {}
    for i in range(3):
        second = np.gradient(first[i], *voxel_size)
        for j in range(i, 3):
            hessian[i, j] = second[j]
    del first, smoothed
    h = lambda i, j: hessian[min(i, j), max(i, j)]  # noqa: E731 - symmetric lookup

    # Start from the Hessian column of largest norm (H applied to a basis vector leans towards
    # the dominant eigenvector), then refine by power iteration, which converges to the
    # eigenvector of the largest-magnitude eigenvalue.
    columns = np.stack([np.stack([h(i, j) for i in range(3)]) for j in range(3)])
    norms = np.einsum("jizyx,jizyx->jzyx", columns, columns)
    best = np.argmax(norms, axis=0)
    vector = np.take_along_axis(columns, best[None, None], axis=0)[0]
    del columns, norms
    for _ in range(3):
        vector = np.stack([sum(h(i, j) * vector[j] for j in range(3)) for i in range(3)])
        length = np.sqrt(np.einsum("izyx,izyx->zyx", vector, vector))
        vector /= np.maximum(length, 1e-12)
    flat = np.sqrt(np.einsum("izyx,izyx->zyx", vector, vector)) < 0.5
    vector[:, flat] = (1.0, 0.0, 0.0)  # no curvature at all: any direction will do
    return vector.astype(np.float32, copy=False)


def context_features(
    channels: np.ndarray, channel_names, volume: np.ndarray, *, voxel_size, spec: ContextSpec,
) -> np.ndarray:
    """Oriented and shell cues for every voxel.

    Parameters
    ----------
    channels : (C, Z, Y, X) float32 ndarray
        Feature channels of the same region as ``volume``.
    channel_names : list of str
        Their names; ``spec.channels`` selects among them.
    volume : (Z, Y, X) ndarray
        The EM data (for the orientation field).
    voxel_size : (3,) float, nm
    spec : ContextSpec

    Returns
    -------
    (spec.n_features, Z, Y, X) float32 ndarray, in the order of ``spec.names()``.
    """
    if not spec.channels:
        return np.zeros((0,) + volume.shape, dtype=np.float32)
    index = {name: i for i, name in enumerate(channel_names)}
    missing = [c for c in spec.channels if c not in index]
    if missing:
        raise ValueError(f"context channels {missing} are not among the feature channels")
    voxel_size = np.asarray(voxel_size, dtype=np.float32)
    shape = volume.shape
    normals = sheet_normals(volume, voxel_size=voxel_size, scale_nm=spec.orientation_scale_nm)

    grid = np.indices(shape, dtype=np.int32)
    upper = np.array(shape, dtype=np.int32).reshape(3, 1, 1, 1) - 1
    gathers = []
    for d in spec.offsets_nm:
        step = normals * (d / voxel_size).reshape(3, 1, 1, 1)
        flat_indices = []
        for sign in (1, -1):
            where = np.clip(grid + np.rint(sign * step).astype(np.int32), 0, upper)
            flat_indices.append(np.ravel_multi_index(tuple(where), shape))
        gathers.append(flat_indices)
    del grid, normals

    out = np.empty((spec.n_features,) + shape, dtype=np.float32)
    k = 0
    for name in spec.channels:
        channel = channels[index[name]]
        flat = channel.ravel()
        for plus, minus in gathers:
            a, b = flat[plus], flat[minus]
            out[k] = np.maximum(a, b)
            out[k + 1] = np.minimum(a, b)
            k += 2
        previous_sum, previous_volume = None, None
        for r in spec.shells_nm:
            half = np.maximum(np.rint(r / voxel_size), 0).astype(int)
            size = tuple(2 * half + 1)
            box_volume = float(np.prod(size))
            box_sum = ndimage.uniform_filter(channel, size=size, mode="reflect") * box_volume
            if previous_sum is None:
                out[k] = box_sum / box_volume
            else:
                out[k] = (box_sum - previous_sum) / max(box_volume - previous_volume, 1.0)
            previous_sum, previous_volume = box_sum, box_volume
            k += 1
    return out
