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

Everything is in nm and converted per axis, so anisotropic sections work. Cues are computed on
a grid of voxels (every ``step`` voxels along each axis, aligned to the volume origin), since
the classifier scores only those (see :mod:`detection.synapses.classify`). All cues at a grid voxel
depend only on data within :meth:`ContextSpec.halo_voxels` of it, so block-wise computation
with that halo equals whole-volume computation.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from detection.errors import InputError


@dataclass(frozen=True)
class ContextSpec:
    """Which context cues to compute.

    Parameters
    ----------
    channels : tuple of str
        Names of feature channels (``FeatureSpec.channel_names()``) to pool.
    orientation_channel : str
        A smoothed-intensity channel (``"gaussian@40nm"``) whose Hessian gives the local normal.
    offsets_nm : tuple of float
        Distances along the normal at which channels are sampled on both sides.
    shells_nm : tuple of float
        Outer half-widths of the cubic shells, increasing.
    """

    channels: tuple[str, ...] = ()
    orientation_channel: str = "gaussian@40nm"
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

    def halo_voxels(self, voxel_size, step=(1, 1, 1)) -> tuple[int, int, int]:
        """Voxels of surrounding data the cues of a grid voxel depend on, per axis."""
        if not self.channels:
            return (0, 0, 0)
        voxel_size = np.asarray(voxel_size, dtype=float)
        reach = max(self.offsets_nm + self.shells_nm, default=0.0)
        return tuple(int(v) for v in np.ceil(reach / voxel_size) + np.asarray(step) + 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ContextSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def grid_slices(shape, *, step, offset=(0, 0, 0)) -> tuple[slice, slice, slice]:
    """Slices selecting the grid voxels (global index a multiple of ``step``) of a region.

    ``offset`` is the global index of the region's first voxel.
    """
    return tuple(slice((-o) % s, n, s) for n, s, o in zip(shape, step, offset))


def sheet_normals(smoothed: np.ndarray, *, voxel_size, grid=None) -> np.ndarray:
    """Unit normal of the dominant curvature of a smoothed volume, at grid voxels.

    Parameters
    ----------
    smoothed : (Z, Y, X) float ndarray
        Gaussian-smoothed intensity (the orientation channel).
    voxel_size : (3,) float, nm
    grid : tuple of 3 slices, optional
        Voxels at which to compute (all by default).

    Returns
    -------
    (3, gz, gy, gx) float32 ndarray
        (z, y, x) components of the eigenvector of the Hessian eigenvalue with the largest
        magnitude, in physical space (unit length in nm). Second differences at the region's
        faces use the edge value.
    """
    grid = grid or (slice(None),) * 3
    vs = np.asarray(voxel_size, dtype=np.float32)
    shape = smoothed.shape
    index = [np.arange(n)[g] for n, g in zip(shape, grid)]

    def at(dz, dy, dx):
        idx = [np.clip(i + d, 0, n - 1) for i, d, n in zip(index, (dz, dy, dx), shape)]
        return smoothed[np.ix_(*idx)].astype(np.float32)

    centre = at(0, 0, 0)
    unit = np.eye(3, dtype=int)
    hessian = {}
    for i in range(3):
        plus, minus = at(*unit[i]), at(*-unit[i])
        hessian[i, i] = (plus - 2 * centre + minus) / (vs[i] * vs[i])
        for j in range(i + 1, 3):
            corners = at(*(unit[i] + unit[j])) - at(*(unit[i] - unit[j]))
            corners -= at(*(unit[j] - unit[i])) - at(*(-unit[i] - unit[j]))
            hessian[i, j] = corners / (4 * vs[i] * vs[j])
    h = lambda i, j: hessian[min(i, j), max(i, j)]  # noqa: E731 - symmetric lookup

    # Start from the Hessian column of largest norm (H applied to a basis vector leans towards
    # the dominant eigenvector), then refine by power iteration, which converges to the
    # eigenvector of the largest-magnitude eigenvalue.
    columns = np.stack([np.stack([h(i, j) for i in range(3)]) for j in range(3)])
    norms = np.einsum("jizyx,jizyx->jzyx", columns, columns)
    vector = np.take_along_axis(columns, np.argmax(norms, axis=0)[None, None], axis=0)[0]
    del columns, norms
    for _ in range(3):
        vector = np.stack([sum(h(i, j) * vector[j] for j in range(3)) for i in range(3)])
        length = np.sqrt(np.einsum("izyx,izyx->zyx", vector, vector))
        vector /= np.maximum(length, 1e-20)
    flat = np.sqrt(np.einsum("izyx,izyx->zyx", vector, vector)) < 0.5
    vector[0][flat] = 1.0  # no curvature at all: any direction will do
    return vector.astype(np.float32, copy=False)


def core_grid_slices(grid, core) -> tuple[slice, slice, slice]:
    """The voxels of ``grid`` (slices of a region, see :func:`grid_slices`) inside ``core``."""
    out = []
    for g, c in zip(grid, core):
        first = g.start + max(0, -(-(c.start - g.start) // g.step)) * g.step
        out.append(slice(first, max(first, c.stop), g.step))
    return tuple(out)


def context_features(
    channels: np.ndarray, channel_names, *, voxel_size, spec: ContextSpec,
    step=(1, 1, 1), offset=(0, 0, 0), core=None,
) -> np.ndarray:
    """Oriented and shell cues at the grid voxels of a region (or of its ``core``).

    Parameters
    ----------
    channels : (C, Z, Y, X) float32 ndarray
        Feature channels of the region, at full resolution.
    channel_names : list of str
        Their names; ``spec.channels`` and ``spec.orientation_channel`` select among them.
    voxel_size : (3,) float, nm
    spec : ContextSpec
    step, offset : (3,) int
        Grid spacing, and the global index of the region's first voxel (see :func:`grid_slices`).
    core : tuple of 3 slices, optional
        Compute the cues only at the grid voxels inside this box of the region (the rest of
        the region is what they read). The whole region by default.

    Returns
    -------
    (spec.n_features, gz, gy, gx) float32 ndarray, in the order of ``spec.names()``.
    """
    shape = channels.shape[1:]
    region_grid = grid_slices(shape, step=step, offset=offset)
    core = core or tuple(slice(0, n) for n in shape)
    grid = core_grid_slices(region_grid, core)
    grid_shape = tuple(len(range(*g.indices(n))) for g, n in zip(grid, shape))
    # Where the core's grid voxels sit among the region's.
    in_coarse = tuple(slice((g.start - r.start) // r.step, (g.start - r.start) // r.step + n)
                      for g, r, n in zip(grid, region_grid, grid_shape))
    if not spec.channels:
        return np.zeros((0,) + grid_shape, dtype=np.float32)
    index = {name: i for i, name in enumerate(channel_names)}
    missing = [c for c in spec.channels + (spec.orientation_channel,) if c not in index]
    if missing:
        raise InputError(f"context channels {missing} are not among the feature channels")
    voxel_size = np.asarray(voxel_size, dtype=np.float32)
    normals = sheet_normals(channels[index[spec.orientation_channel]], voxel_size=voxel_size,
                            grid=grid)

    points = np.stack(np.meshgrid(*[np.arange(n)[g] for n, g in zip(shape, grid)],
                                  indexing="ij")).astype(np.int32)
    upper = np.array(shape, dtype=np.int32).reshape(3, 1, 1, 1) - 1
    gathers = []
    for d in spec.offsets_nm:
        step_vox = np.rint(normals * (d / voxel_size).reshape(3, 1, 1, 1)).astype(np.int32)
        gathers.append([
            np.ravel_multi_index(tuple(np.clip(points + sign * step_vox, 0, upper)), shape)
            for sign in (1, -1)
        ])
    del points, normals

    grid_step_nm = voxel_size * np.asarray(step, dtype=np.float32)
    out = np.empty((spec.n_features,) + grid_shape, dtype=np.float32)
    k = 0
    for name in spec.channels:
        channel = channels[index[name]]
        flat = channel.ravel()
        for plus, minus in gathers:
            a, b = flat[plus], flat[minus]
            np.maximum(a, b, out=out[k])
            np.minimum(a, b, out=out[k + 1])
            k += 2
        # Shells are box means over the grid samples: the channels are smooth at the grid
        # spacing, so the grid average stands for the full-resolution one at a fraction of
        # the cost.
        coarse = np.ascontiguousarray(channel[region_grid])
        previous_sum, previous_volume = None, None
        for r in spec.shells_nm:
            half = np.maximum(np.rint(r / grid_step_nm), 0).astype(int)
            size = tuple(2 * half + 1)
            box_volume = float(np.prod(size))
            box_sum = ndimage.uniform_filter(coarse, size=size, mode="reflect")[in_coarse]
            box_sum *= box_volume
            if previous_sum is None:
                out[k] = box_sum / box_volume
            else:
                out[k] = (box_sum - previous_sum) / max(box_volume - previous_volume, 1.0)
            previous_sum, previous_volume = box_sum, box_volume
            k += 1
    return out
