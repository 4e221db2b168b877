"""Feature channels of the synapse voxel classifier (ccboost-style filter bank).

Every channel is a function of the Gaussian-smoothed volume at one scale:

``gaussian``
    G_s * I, the smoothed intensity.
``gradient_magnitude``
    |grad G_s * I|, per nm.
``laplacian_of_gaussian``
    trace of the Hessian of G_s * I, per nm^2.
``difference_of_gaussians``
    G_{s/r} * I - G_s * I with r = ``dog_ratio``: the band between s/r and s. The partner scale
    lies *below* s so that, with scales spaced by r, every partner but the smallest is a scale
    already computed, and the halo does not grow.
``hessian_eigenvalues``
    the three eigenvalues of the Hessian of G_s * I, per nm^2, sorted ascending (``ev0`` the
    most negative). A bright sheet (membrane) gives one large negative eigenvalue, a bright
    tube two, a bright blob three; dark structures flip the signs.
``structure_tensor_eigenvalues``
    the three eigenvalues of G_{t s} * (grad G_s * I)(grad G_s * I)^T with t =
    ``structure_tensor_ratio``, per nm^2, sorted ascending: one large eigenvalue at an edge,
    two along a line, three at a corner or in isotropic texture.

Scales are in nm and converted per axis (:func:`sigma_voxels`), so anisotropic serial-section
data (50 x 4.6 x 4.6 nm) and isotropic FIB-SEM data give the same physical features. Axes whose
sigma falls below ``min_sigma_voxels`` are not smoothed (at 50 nm sections a 10 nm scale is
0.2 voxel in z, where the kernel is the identity to 1e-5 anyway).

Discretisation
--------------
The smoothed volume is computed exactly as a sampled, normalised Gaussian kernel of radius
``int(truncate * sigma + 0.5)`` (the convention of :func:`scipy.ndimage.gaussian_filter`), with
the volume extended by mirror symmetry about its faces (scipy ``mode="reflect"``, numpy
``"symmetric"``). Derivatives are finite differences of the smoothed volume divided by the
voxel size: central differences ``(f[i+1] - f[i-1]) / 2h`` for first derivatives,
``(f[i+1] - 2 f[i] + f[i-1]) / h^2`` on the diagonal of the Hessian and products of central
differences off it. These are exact for polynomials up to degree 2 (a ramp has its slope, x^2
has second derivative 2), and cost a few array operations instead of a derivative-of-Gaussian
filter per component. Everything derived (gradients, structure-tensor products) is taken on the
mirror-extended image, so every channel is a function of that extension alone: a block read
with :meth:`FeatureSpec.halo_voxels` more voxels on each side (clipped at the volume faces)
gives the whole-volume result (tested to float32 rounding).

Smoothing is done in float64 as banded matrix products (BLAS) along each axis, in tiles of a
few dozen output voxels so that the cost per voxel grows with the kernel width plus the tile
rather than the axis length; float64 keeps the finite differences of large-scale smoothing
free of cancellation. Pointwise work (differences, closed-form 3x3 eigenvalues) runs on
cache-sized chunks. Output is float32.

Default spec
------------
Scales 10, 20, 40 and 80 nm cover membranes (10-20 nm), vesicles (~40 nm across, a
blob response at 10-20 nm), postsynaptic densities (30-60 nm thick sheets, 20-40 nm) and the
vesicle cloud around them (80 nm). All kinds are computed at every scale but the structure
tensor, which is computed at 10 and 20 nm only (integration scales 20 and 40 nm): its six
smoothed products cost as much as six Gaussians at twice the scale. ``dog_ratio`` 2 makes the
DoG partners the scales themselves (plus 5 nm). That is 34 channels.

Measured on one core (``OMP_NUM_THREADS=1``, AMD EPYC, (32, 512, 512) uint8 volume, whole
volume in memory, default spec): see ``THROUGHPUT`` notes in the project benchmarks; at
(50, 4.6, 4.6) nm about 2.6 Mvoxel/s, at (8, 8, 8) nm about 2.3 Mvoxel/s.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from detection.io.sources import Box, VolumeSource, iter_blocks, normalize_box

logger = logging.getLogger(__name__)

CHANNEL_KINDS = (
    "gaussian",
    "gradient_magnitude",
    "laplacian_of_gaussian",
    "difference_of_gaussians",
    "hessian_eigenvalues",
    "structure_tensor_eigenvalues",
)

# Kinds that take finite differences of the smoothed volume (one more voxel of halo).
_DERIVATIVE_KINDS = ("gradient_magnitude", "laplacian_of_gaussian", "hessian_eigenvalues")
_EIGEN_PREFIX = {"hessian_eigenvalues": "hessian", "structure_tensor_eigenvalues": "structure_tensor"}

# Output voxels per tile of the banded smoothing matrices. Wider tiles waste products on the
# zeros outside the band, narrower ones make BLAS calls too small to run at full speed.
_TILE = 32
# Rows of the x pass handled together, in bytes of input: keeps each row block in cache
# while all tiles read it.
_X_ROWS_BYTES = 2**18
# Voxels per chunk of pointwise work (differences, eigenvalues): a few float64 temporaries of
# this size stay in the core's cache.
_CHUNK_VOXELS = 2**15


# --------------------------------------------------------------------------------------------
# Spec


def _scale_text(scale_nm: float) -> str:
    return f"{scale_nm:g}nm"


def _as_scales(values, what: str) -> tuple[float, ...]:
    scales = tuple(float(v) for v in values)
    if any(not (math.isfinite(s) and s > 0) for s in scales):
        raise ValueError(f"{what} must be positive and finite, got {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"{what} has duplicates: {scales}")
    return scales


@dataclass(frozen=True)
class FeatureSpec:
    """Which feature channels to compute, and how.

    Parameters
    ----------
    scales_nm : tuple of float
        Gaussian scales (standard deviations) in nm, for every kind without an entry in
        ``kind_scales_nm``.
    kinds : tuple of str
        Channel kinds, a subset of :data:`CHANNEL_KINDS`; the channel order follows it.
    dog_ratio : float
        ``difference_of_gaussians`` at scale s is ``G(s / dog_ratio) - G(s)`` (> 1).
    structure_tensor_ratio : float
        Integration scale of the structure tensor over its derivative scale (> 0).
    truncate : float
        Gaussian kernels reach ``int(truncate * sigma + 0.5)`` voxels (scipy convention).
    min_sigma_voxels : float
        An axis whose sigma in voxels is below this is not smoothed (the kernel would be the
        identity to within ``exp(-0.5 / min_sigma_voxels**2)``).
    kind_scales_nm : tuple of (str, tuple of float) pairs
        Scales for particular kinds, replacing ``scales_nm`` for them (a dict is accepted and
        stored as sorted pairs). The default spec computes the costly structure tensor at the
        small scales only.

    Notes
    -----
    Channels are ordered by kind (in ``kinds`` order), then by scale (in the order given),
    then by eigenvalue index; eigenvalues are sorted ascending, ``ev0`` the smallest (most
    negative). Names are ``"<kind>@<scale>nm"``, and ``"hessian_ev<i>@<scale>nm"`` /
    ``"structure_tensor_ev<i>@<scale>nm"`` for eigenvalues.
    """

    scales_nm: tuple[float, ...] = (10.0, 20.0, 40.0, 80.0)
    kinds: tuple[str, ...] = CHANNEL_KINDS
    dog_ratio: float = 2.0
    structure_tensor_ratio: float = 2.0
    truncate: float = 3.0
    min_sigma_voxels: float = 0.3
    kind_scales_nm: tuple[tuple[str, tuple[float, ...]], ...] = field(
        default=(("structure_tensor_eigenvalues", (10.0, 20.0)),)
    )

    def __post_init__(self):
        # Normalise lists (from JSON or callers) to tuples, so that specs compare and hash.
        set_ = functools.partial(object.__setattr__, self)
        set_("scales_nm", _as_scales(self.scales_nm, "scales_nm"))
        kinds = tuple(str(k) for k in self.kinds)
        unknown = [k for k in kinds if k not in CHANNEL_KINDS]
        if unknown:
            raise ValueError(f"unknown channel kinds {unknown}; known: {CHANNEL_KINDS}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds has duplicates: {kinds}")
        set_("kinds", kinds)
        overrides = self.kind_scales_nm
        items = overrides.items() if isinstance(overrides, dict) else overrides
        pairs = []
        for kind, scales in items:
            if kind not in CHANNEL_KINDS:
                raise ValueError(f"kind_scales_nm: unknown kind {kind!r}; known: {CHANNEL_KINDS}")
            pairs.append((str(kind), _as_scales(scales, f"kind_scales_nm[{kind!r}]")))
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError(f"kind_scales_nm names a kind twice: {overrides}")
        set_("kind_scales_nm", tuple(sorted(pairs)))
        for name in ("dog_ratio", "structure_tensor_ratio", "truncate", "min_sigma_voxels"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
            set_(name, value)
        if self.dog_ratio <= 1:
            raise ValueError(f"dog_ratio must be > 1, got {self.dog_ratio}")
        if self.structure_tensor_ratio <= 0 or self.truncate <= 0:
            raise ValueError("structure_tensor_ratio and truncate must be > 0")

    def scales_for(self, kind: str) -> tuple[float, ...]:
        """Scales (nm) at which ``kind`` is computed (empty when the kind is not selected)."""
        if kind not in self.kinds:
            return ()
        return dict(self.kind_scales_nm).get(kind, self.scales_nm)

    def channels(self) -> list[tuple[str, float, int]]:
        """(kind, scale_nm, component) of every channel, in output order."""
        out = []
        for kind in self.kinds:
            components = 3 if kind in _EIGEN_PREFIX else 1
            for scale in self.scales_for(kind):
                out += [(kind, scale, c) for c in range(components)]
        return out

    def channel_names(self) -> list[str]:
        """Channel names in output order, e.g. ``"hessian_ev0@40nm"`` (ev0 smallest)."""
        names = []
        for kind, scale, component in self.channels():
            if kind in _EIGEN_PREFIX:
                names.append(f"{_EIGEN_PREFIX[kind]}_ev{component}@{_scale_text(scale)}")
            else:
                names.append(f"{kind}@{_scale_text(scale)}")
        return names

    @property
    def n_channels(self) -> int:
        return len(self.channels())

    def halo_voxels(self, voxel_size) -> tuple[int, int, int]:
        """Voxels of context, per axis (z, y, x), that make a block equal the whole volume.

        A block grown by this much on every side (clipped at the volume faces) and computed
        alone gives, on the block, exactly the whole-volume channels.
        """
        return _plan(self, _voxel_size(voxel_size)).halo

    def to_dict(self) -> dict:
        """JSON-able description; :meth:`from_dict` inverts it."""
        return {
            "scales_nm": list(self.scales_nm),
            "kinds": list(self.kinds),
            "dog_ratio": self.dog_ratio,
            "structure_tensor_ratio": self.structure_tensor_ratio,
            "truncate": self.truncate,
            "min_sigma_voxels": self.min_sigma_voxels,
            "kind_scales_nm": {k: list(v) for k, v in self.kind_scales_nm},
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        """Spec from :meth:`to_dict` output; absent fields take their defaults."""
        known = {"scales_nm", "kinds", "dog_ratio", "structure_tensor_ratio", "truncate",
                 "min_sigma_voxels", "kind_scales_nm"}
        unknown = set(data) - known
        if unknown:
            # A model file written by a newer version may compute channels differently.
            raise ValueError(f"unknown FeatureSpec fields {sorted(unknown)}")
        return cls(**data)


def _voxel_size(voxel_size) -> tuple[float, float, float]:
    if voxel_size is None:
        raise ValueError("voxel_size (z, y, x) in nm is required")
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be 3 positive sizes (z, y, x) in nm, got {voxel_size}")
    return vs


def sigma_voxels(scale_nm: float, voxel_size) -> tuple[float, float, float]:
    """Gaussian sigma per axis in voxels for a scale in nm.

    Parameters
    ----------
    scale_nm : float
        Standard deviation in nm.
    voxel_size : (3,) floats
        Voxel size (z, y, x) in nm.

    Returns
    -------
    (3,) tuple of float
        ``scale_nm / voxel_size``, e.g. 20 nm at (50, 4.6, 4.6) nm is (0.4, 4.35, 4.35).
    """
    return tuple(float(scale_nm) / v for v in _voxel_size(voxel_size))


# --------------------------------------------------------------------------------------------
# Plan: which smoothed volumes each channel needs, over which region


# One Gaussian as applied: (sigma, radius) per axis, sigma 0 where the axis is not smoothed.
_Kernel = tuple[tuple[float, int], tuple[float, int], tuple[float, int]]


def _kernel(scale_nm: float, voxel_size, spec: FeatureSpec) -> _Kernel:
    axes = []
    for sigma in sigma_voxels(scale_nm, voxel_size):
        radius = int(spec.truncate * sigma + 0.5)
        if sigma < spec.min_sigma_voxels or radius == 0:
            axes.append((0.0, 0))
        else:
            axes.append((sigma, radius))
    return tuple(axes)


def _radius(kernel: _Kernel) -> np.ndarray:
    return np.array([r for _, r in kernel], dtype=np.int64)


@dataclass
class _Smoothing:
    """One smoothed volume and what is taken from it."""

    kernel: _Kernel
    scale_nm: float  # the smallest nominal scale with this kernel, for ordering
    pad: np.ndarray  # voxels needed beyond the output region, per axis
    gaussian: list = field(default_factory=list)  # channel indices
    derivatives: list = field(default_factory=list)  # (grad, log, (h0, h1, h2)) per scale
    tensors: list = field(default_factory=list)  # (integration kernel, (e0, e1, e2))
    dog_uses: int = 0


@dataclass
class _Plan:
    smoothings: list  # _Smoothing, by increasing scale
    dogs: list  # (fine kernel, coarse kernel, channel index)
    halo: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    n_channels: int


@functools.lru_cache(maxsize=64)
def _plan(spec: FeatureSpec, voxel_size: tuple[float, float, float]) -> _Plan:
    smoothings: dict[_Kernel, _Smoothing] = {}

    def smoothing(scale):
        kernel = _kernel(scale, voxel_size, spec)
        entry = smoothings.get(kernel)
        if entry is None:
            entry = smoothings[kernel] = _Smoothing(kernel, scale, np.zeros(3, np.int64))
        entry.scale_nm = min(entry.scale_nm, scale)
        return entry

    index = {key: i for i, key in enumerate(spec.channels())}
    halo = np.zeros(3, np.int64)
    scales = {s for kind in spec.kinds for s in spec.scales_for(kind)}
    dogs = []
    for scale in sorted(scales):
        entry = smoothing(scale)
        radius = _radius(entry.kernel)
        if ("gaussian", scale, 0) in index:
            entry.gaussian.append(index["gaussian", scale, 0])
            halo = np.maximum(halo, radius)
        wanted = [(kind, scale, c) for kind in _DERIVATIVE_KINDS for c in range(3)]
        if any(key in index for key in wanted):
            entry.derivatives.append((
                index.get(("gradient_magnitude", scale, 0)),
                index.get(("laplacian_of_gaussian", scale, 0)),
                tuple(index.get(("hessian_eigenvalues", scale, c)) for c in range(3)),
            ))
            entry.pad = np.maximum(entry.pad, 1)
            halo = np.maximum(halo, radius + 1)
        if ("structure_tensor_eigenvalues", scale, 0) in index:
            outer = _kernel(spec.structure_tensor_ratio * scale, voxel_size, spec)
            channels = tuple(index["structure_tensor_eigenvalues", scale, c] for c in range(3))
            entry.tensors.append((outer, channels))
            entry.pad = np.maximum(entry.pad, _radius(outer) + 1)
            halo = np.maximum(halo, radius + 1 + _radius(outer))
        if ("difference_of_gaussians", scale, 0) in index:
            fine = smoothing(scale / spec.dog_ratio)
            fine.dog_uses += 1
            entry.dog_uses += 1
            dogs.append((fine.kernel, entry.kernel, index["difference_of_gaussians", scale, 0]))
            halo = np.maximum(halo, np.maximum(radius, _radius(fine.kernel)))
    ordered = sorted(smoothings.values(), key=lambda s: s.scale_nm)
    return _Plan(ordered, dogs, tuple(int(h) for h in halo), voxel_size, len(index))


# --------------------------------------------------------------------------------------------
# Smoothing


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map indices of the mirror-extended axis (d c b a | a b c d | d c b a) into [0, n)."""
    m = np.mod(index, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


@functools.lru_cache(maxsize=512)
def _axis_tiles(n: int, sigma: float, radius: int, lo: int, hi: int, dtype: str) -> tuple:
    """Banded Gaussian matrix from an axis of length ``n`` to outputs ``lo .. hi - 1``.

    Outputs outside [0, n) are those of the mirror-extended axis. Returned as tiles
    ``(o0, o1, i0, i1, k, kt)``: output ``o0:o1`` (relative to ``lo``) is ``k @ input[i0:i1]``,
    ``kt`` being ``k.T`` stored contiguously for the last-axis pass.
    """
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    tiles = []
    for o0 in range(lo, hi, _TILE):
        o1 = min(hi, o0 + _TILE)
        rows = np.arange(o0, o1)[:, None]
        cols = _reflect(rows + taps, n)
        i0, i1 = int(cols.min()), int(cols.max()) + 1
        k = np.zeros((o1 - o0, i1 - i0))
        # add.at: near the faces several taps fold onto the same input voxel.
        np.add.at(k, (np.broadcast_to(rows - o0, cols.shape), cols - i0),
                  np.broadcast_to(weights, cols.shape))
        k = k.astype(dtype)
        kt = np.ascontiguousarray(k.T)
        k.flags.writeable = False
        kt.flags.writeable = False
        tiles.append((o0 - lo, o1 - lo, i0, i1, k, kt))
    return tuple(tiles)


class _Workspace:
    """Scratch arrays reused across the passes and scales of one computation.

    Fresh large allocations are paid for in page faults on first touch, as much as a cheap
    filter pass itself; the passes need the same few sizes over and over.
    """

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(max(size, 1), dtype=dtype)
        return buffer[:size].reshape(shape)


def _view_3d(a: np.ndarray, axis: int) -> np.ndarray | None:
    """``a`` as (before, axis, after) without copying, or None where that needs a copy."""
    shape = (math.prod(a.shape[:axis]), a.shape[axis], math.prod(a.shape[axis + 1:]))
    view = a.view()
    try:
        view.shape = shape  # raises instead of silently copying
    except AttributeError:
        return None
    return view


def _filter_axis(a, axis: int, sigma: float, radius: int, lo: int, hi: int, out) -> None:
    """Gaussian along spatial ``axis`` (-3, -2, -1) of ``a`` into ``out``, outputs ``lo .. hi-1``.

    ``out`` has ``a``'s shape but ``hi - lo`` along ``axis``, and ``a``'s float dtype.
    """
    n = a.shape[axis]
    tiles = _axis_tiles(n, float(sigma), int(radius), int(lo), int(hi), out.dtype.str)
    dst = _view_3d(out, out.ndim + axis) if axis != -1 else _view_3d(out, out.ndim - 1)
    if dst is None:
        scratch = np.empty(out.shape, dtype=out.dtype)
        _filter_axis(a, axis, sigma, radius, lo, hi, scratch)
        out[...] = scratch
        return
    src = _view_3d(a, a.ndim + axis)
    if src is None:
        src = _view_3d(np.ascontiguousarray(a), a.ndim + axis)
    if axis == -1:
        # (rows, x) @ (x, x'): blocks of rows stay in cache while every tile reads them.
        src = src.reshape(-1, n)
        dst = dst.reshape(-1, hi - lo)
        step = max(1, _X_ROWS_BYTES // (out.itemsize * n))
        for r0 in range(0, src.shape[0], step):
            rows_in, rows_out = src[r0:r0 + step], dst[r0:r0 + step]
            for o0, o1, i0, i1, _, kt in tiles:
                np.matmul(rows_in[:, i0:i1], kt, out=rows_out[:, o0:o1])
    else:
        for o0, o1, i0, i1, k, _ in tiles:
            np.matmul(k, src[:, i0:i1, :], out=dst[:, o0:o1, :])


def _smooth(a, kernel: _Kernel, lo, hi, work: _Workspace, names, dtype) -> np.ndarray:
    """Separable Gaussian of ``a`` (..., Z, Y, X) on the region ``lo .. hi - 1``.

    The region may reach beyond the array into its mirror extension. Passes alternate
    between the workspace buffers ``names``; the result lives in one of them.
    """
    lo = [int(v) for v in lo]
    hi = [int(v) for v in hi]
    lead = a.shape[:-3]
    size = a.shape[-3:]
    smoothed = [axis for axis in range(3) if kernel[axis][1] > 0]
    # Unsmoothed axes are cut to the array and their mirror margins copied in at the end:
    # the other passes then run over no mirrored copies.
    cut = []
    for axis in range(3):
        if axis in smoothed:
            cut.append(slice(None))
        else:
            cut.append(slice(max(lo[axis], 0), min(hi[axis], size[axis])))
    current = a[(Ellipsis,) + tuple(cut)]
    full = lead + tuple(h - l for l, h in zip(lo, hi))
    result = work.get(names[(len(smoothed) + 1) % 2], full, dtype)
    interior = result[(Ellipsis,) + tuple(
        slice(None) if axis in smoothed else slice(cut[axis].start - lo[axis],
                                                    cut[axis].stop - lo[axis])
        for axis in range(3)
    )]
    if not smoothed:
        interior[...] = current
    for step, axis in enumerate(smoothed):
        last = step == len(smoothed) - 1
        shape = list(current.shape)
        shape[axis - 3] = hi[axis] - lo[axis]
        target = interior if last else work.get(names[step % 2], tuple(shape), dtype)
        sigma, radius = kernel[axis]
        _filter_axis(current, axis - 3, sigma, radius, lo[axis], hi[axis], target)
        current = target
    for axis in range(3):
        if axis in smoothed or (cut[axis].start == lo[axis] and cut[axis].stop == hi[axis]):
            continue
        inside = np.arange(cut[axis].start, cut[axis].stop) - lo[axis]
        missing = np.r_[np.arange(lo[axis], cut[axis].start), np.arange(cut[axis].stop, hi[axis])]
        source = _reflect(missing, size[axis]) - lo[axis]
        if not np.isin(source, inside).all():
            # The mirror images of the margin lie outside the region (a region much thinner
            # than its margin, on a tiny volume): smooth the mirrored array instead.
            index = _reflect(np.arange(lo[axis], hi[axis]), size[axis])
            mirrored = np.take(a, index, axis=axis - 3)
            lo2, hi2 = list(lo), list(hi)
            lo2[axis], hi2[axis] = 0, hi[axis] - lo[axis]
            return _smooth(mirrored, kernel, lo2, hi2, work, names, dtype)
        sel = [slice(None)] * len(full)
        src = list(sel)
        sel[axis - 3] = missing - lo[axis]
        src[axis - 3] = source
        result[tuple(sel)] = result[tuple(src)]
    return result


# --------------------------------------------------------------------------------------------
# Pointwise channels
#
# Pointwise work runs chunk by chunk with every intermediate written into preallocated
# scratch (``out=``): a fresh temporary per operation costs more in allocation and page
# faults than the arithmetic, and chunks of a few thousand voxels keep the temporaries in cache.


class _Scratch:
    """Chunk-sized float64 and float32 temporaries, reused for every chunk."""

    def __init__(self, voxels: int, n64: int, n32: int):
        self._f64 = np.empty((n64, voxels))
        self._f32 = np.empty((n32, voxels), dtype=np.float32)
        self.shape: tuple[int, ...] = (voxels,)

    def f64(self, i: int) -> np.ndarray:
        return self._f64[i, :math.prod(self.shape)].reshape(self.shape)

    def f32(self, i: int) -> np.ndarray:
        return self._f32[i, :math.prod(self.shape)].reshape(self.shape)


# float32 temporaries used by _sym3_into.
_SYM3_F32 = 8


def _sym3_into(a00, a11, a22, a01, a02, a12, ev0, ev1, ev2, scratch: _Scratch, first: int = 0):
    """Sorted eigenvalues of symmetric 3x3 matrices, written into ``ev0 <= ev1 <= ev2``.

    Inputs and outputs float32 (outputs may be views of the channels); uses float32 scratch
    ``first .. first + 7``. The matrix is scaled by 1 / p before its determinant is taken, so
    no cube of the entries can overflow or underflow float32.
    """
    q, b0, b1, b2, o01, o02, o12, t = (scratch.f32(first + i) for i in range(_SYM3_F32))
    np.add(a00, a11, out=q)
    q += a22
    q *= np.float32(1.0 / 3.0)
    np.subtract(a00, q, out=b0)
    np.subtract(a11, q, out=b1)
    np.subtract(a22, q, out=b2)
    # p = sqrt(|A - qI|_F^2 / 6), in ev2
    p = ev2
    np.square(b0, out=p)
    for v in (b1, b2):
        np.square(v, out=t)
        p += t
    np.square(a01, out=o01)
    np.square(a02, out=t)
    o01 += t
    np.square(a12, out=t)
    o01 += t
    o01 *= np.float32(2.0)
    p += o01
    p *= np.float32(1.0 / 6.0)
    np.sqrt(p, out=p)
    # B = (A - qI) / p; p = 0 (a multiple of I) leaves B = 0.
    np.maximum(p, np.finfo(np.float32).tiny, out=t)
    np.reciprocal(t, out=t)
    for v in (b0, b1, b2):
        v *= t
    np.multiply(a01, t, out=o01)
    np.multiply(a02, t, out=o02)
    np.multiply(a12, t, out=o12)
    # r = det(B) / 2 in [-1, 1], by cofactors along the first row, into ev1
    r = ev1
    np.multiply(b1, b2, out=r)
    np.square(o12, out=t)
    r -= t
    r *= b0
    np.multiply(o01, b2, out=t)
    np.multiply(o12, o02, out=b0)
    t -= b0
    t *= o01
    r -= t
    np.multiply(o01, o12, out=t)
    np.multiply(b1, o02, out=b0)
    t -= b0
    t *= o02
    r += t
    r *= np.float32(0.5)
    np.clip(r, -1.0, 1.0, out=r)
    # Eigenvalues q + 2p cos(phi + 2 pi k / 3) with phi = arccos(r) / 3 in [0, pi / 3].
    phi = np.arccos(r, out=b2)
    phi *= np.float32(1.0 / 3.0)
    p *= np.float32(2.0)
    np.add(phi, np.float32(2.0 * np.pi / 3.0), out=b1)
    np.cos(b1, out=b1)
    np.multiply(b1, p, out=ev0)
    ev0 += q
    np.cos(phi, out=phi)
    p *= phi
    p += q  # ev2
    np.multiply(q, np.float32(3.0), out=ev1)
    ev1 -= ev0
    ev1 -= ev2


def sym3_eigenvalues(a00, a11, a22, a01, a02, a12):
    """Eigenvalues of symmetric 3x3 matrices, closed form, sorted ascending.

    Parameters
    ----------
    a00, a11, a22, a01, a02, a12 : array-likes of one shape
        Matrix entries (computed in float32).

    Returns
    -------
    ev0, ev1, ev2 : float32 ndarrays
        ``ev0 <= ev1 <= ev2``, by the trigonometric solution of the characteristic cubic
        (Smith 1961). The error is about 1e-6 of the largest magnitude, up to ~1e-4 of the
        eigenvalue spread for nearly repeated eigenvalues (arccos is ill-conditioned there).
    """
    entries = np.broadcast_arrays(*(np.asarray(v, dtype=np.float32)
                                    for v in (a00, a11, a22, a01, a02, a12)))
    shape = entries[0].shape
    scratch = _Scratch(max(1, math.prod(shape)), 0, _SYM3_F32)
    scratch.shape = shape
    evs = tuple(np.empty(shape, dtype=np.float32) for _ in range(3))
    _sym3_into(*entries, *evs, scratch)
    return evs


def _chunks(shape) -> list[tuple[slice, slice]]:
    """(z, y) slices of cache-sized chunks (all of x) covering ``shape``."""
    z_n, y_n, x_n = shape
    rows = max(1, _CHUNK_VOXELS // max(1, x_n))
    if rows >= y_n:
        planes = max(1, rows // max(1, y_n))
        return [(slice(z0, min(z_n, z0 + planes)), slice(0, y_n)) for z0 in range(0, z_n, planes)]
    return [(slice(z0, z0 + 1), slice(y0, min(y_n, y0 + rows)))
            for z0 in range(z_n) for y0 in range(0, y_n, rows)]


def _chunk_voxels(shape) -> int:
    z, y = _chunks(shape)[0]
    return (z.stop - z.start) * (y.stop - y.start) * shape[2]


def _shifted(gp: np.ndarray, zs: slice, ys: slice, dz: int, dy: int, dx: int) -> np.ndarray:
    """View of ``gp`` (one voxel of margin all round) on chunk ``zs, ys`` moved by dz, dy, dx."""
    x_n = gp.shape[2] - 2
    return gp[zs.start + 1 + dz: zs.stop + 1 + dz, ys.start + 1 + dy: ys.stop + 1 + dy,
              1 + dx: 1 + dx + x_n]


_STEPS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
_PAIRS = ((0, 1), (0, 2), (1, 2))


def _difference(at, axis: int, h: float, tmp: np.ndarray, out: np.ndarray) -> None:
    """Central difference along ``axis`` per nm: in float64 ``tmp``, then into ``out``."""
    step = _STEPS[axis]
    np.subtract(at(*step), at(*(-v for v in step)), out=tmp)
    np.multiply(tmp, 0.5 / h, out=out, casting="same_kind")


def _derivative_channels(gp, voxel_size, out, grad_c, log_c, hess_c) -> None:
    """Gradient magnitude, Laplacian and Hessian eigenvalues from ``gp`` (core + 1 voxel).

    Differences are taken in float64, where they cancel the magnitude of the smoothed
    values, and stored in float32 once they no longer do.
    """
    core = tuple(n - 2 for n in gp.shape)
    want_hessian = hess_c[0] is not None
    scratch = _Scratch(_chunk_voxels(core), 2, 7 + _SYM3_F32)
    for zs, ys in _chunks(core):
        at = functools.partial(_shifted, gp, zs, ys)
        dst = (zs, ys)
        scratch.shape = at(0, 0, 0).shape
        tmp, c2 = scratch.f64(0), scratch.f64(1)
        if grad_c is not None:
            total, d = out[grad_c][dst], scratch.f32(6)
            _difference(at, 0, voxel_size[0], tmp, total)
            np.square(total, out=total)
            for axis in (1, 2):
                _difference(at, axis, voxel_size[axis], tmp, d)
                np.square(d, out=d)
                total += d
            np.sqrt(total, out=total)
        if log_c is None and not want_hessian:
            continue
        np.multiply(at(0, 0, 0), 2.0, out=c2)
        second = [scratch.f32(i) for i in range(3)]
        for axis, d in enumerate(second):
            step = _STEPS[axis]
            np.add(at(*step), at(*(-v for v in step)), out=tmp)
            tmp -= c2
            np.multiply(tmp, 1.0 / voxel_size[axis] ** 2, out=d, casting="same_kind")
        if log_c is not None:
            np.add(second[0], second[1], out=out[log_c][dst])
            out[log_c][dst] += second[2]
        if not want_hessian:
            continue
        cross = [scratch.f32(3 + k) for k in range(3)]
        for (i, j), d in zip(_PAIRS, cross):
            plus = tuple(u + v for u, v in zip(_STEPS[i], _STEPS[j]))
            minus = tuple(u - v for u, v in zip(_STEPS[i], _STEPS[j]))
            np.subtract(at(*plus), at(*minus), out=tmp)
            tmp -= at(*(-v for v in minus))
            tmp += at(*(-v for v in plus))
            np.multiply(tmp, 0.25 / (voxel_size[i] * voxel_size[j]), out=d, casting="same_kind")
        _sym3_into(*second, *cross, *(out[c][dst] for c in hess_c), scratch, first=7)


def _structure_tensor_channels(gp, voxel_size, outer: _Kernel, out, channels, work) -> None:
    """Structure-tensor eigenvalues on the core of ``gp`` (core + integration radius + 1).

    The six gradient products are smoothed in float32: positive weights times products, no
    cancellation for float64 to protect.
    """
    margin = _radius(outer)
    region = tuple(n - 2 for n in gp.shape)
    products = work.get("st_products", (6,) + region, np.float32)
    scratch = _Scratch(_chunk_voxels(region), 1, 3)
    for zs, ys in _chunks(region):
        at = functools.partial(_shifted, gp, zs, ys)
        scratch.shape = at(0, 0, 0).shape
        grad = [scratch.f32(axis) for axis in range(3)]
        for axis, d in enumerate(grad):
            _difference(at, axis, voxel_size[axis], scratch.f64(0), d)
        p = products[:, zs, ys]
        for k, (i, j) in enumerate(((0, 0), (1, 1), (2, 2)) + _PAIRS):
            np.multiply(grad[i], grad[j], out=p[k])
    core = tuple(int(n) for n in np.array(region) - 2 * margin)
    tensor = _smooth(products, outer, margin, margin + core, work, ("st_a", "st_b"), np.float32)
    scratch = _Scratch(_chunk_voxels(core), 0, _SYM3_F32)
    for zs, ys in _chunks(core):
        t = tensor[:, zs, ys]
        scratch.shape = t.shape[1:]
        _sym3_into(*t, *(out[c][zs, ys] for c in channels), scratch)


# --------------------------------------------------------------------------------------------
# Driver


def _compute_region(data: np.ndarray, core_lo, core_shape, plan: _Plan) -> np.ndarray:
    """Channels on the core ``core_lo .. core_lo + core_shape`` of ``data`` (read region)."""
    core_lo = np.asarray(core_lo, dtype=np.int64)
    core_shape = np.asarray(core_shape, dtype=np.int64)
    out = np.empty((plan.n_channels,) + tuple(int(n) for n in core_shape), dtype=np.float32)
    if out.size == 0:
        return out
    a = np.asarray(data, dtype=np.float64)
    work = _Workspace()
    ready: dict[_Kernel, np.ndarray] = {}
    slots: dict[_Kernel, int] = {}
    uses = {s.kernel: s.dog_uses for s in plan.smoothings}
    pending = list(plan.dogs)
    for entry in plan.smoothings:
        pad = entry.pad
        g = _smooth(a, entry.kernel, core_lo - pad, core_lo + core_shape + pad, work,
                    ("g0", "g1"), np.float64)
        core = tuple(slice(int(p), int(p + n)) for p, n in zip(pad, core_shape))
        for c in entry.gaussian:
            out[c] = g[core]
        for grad_c, log_c, hess_c in entry.derivatives:
            inner = tuple(slice(int(p) - 1, int(p + n) + 1) for p, n in zip(pad, core_shape))
            _derivative_channels(g[inner], plan.voxel_size, out, grad_c, log_c, hess_c)
        for outer, channels in entry.tensors:
            start = pad - _radius(outer) - 1
            inner = tuple(slice(int(s), int(s + n + 2 * (p - s)))
                          for s, p, n in zip(start, pad, core_shape))
            _structure_tensor_channels(g[inner], plan.voxel_size, outer, out, channels, work)
        if uses[entry.kernel]:
            # g lives in the workspace, which the next scale overwrites.
            slot = next(i for i in range(len(slots) + 1) if i not in slots.values())
            copy = work.get(f"dog{slot}", tuple(int(n) for n in core_shape), np.float64)
            np.copyto(copy, g[core])
            ready[entry.kernel] = copy
            slots[entry.kernel] = slot
        for dog in list(pending):
            fine, coarse, c = dog
            if fine in ready and coarse in ready:
                np.subtract(ready[fine], ready[coarse], out=out[c], casting="same_kind")
                pending.remove(dog)
                for kernel in (fine, coarse):
                    uses[kernel] -= 1
                    if not uses[kernel]:
                        del ready[kernel], slots[kernel]
    return out


def compute_features(volume, *, voxel_size, spec: FeatureSpec = FeatureSpec()) -> np.ndarray:
    """All channels of ``spec`` for a whole in-memory volume.

    Parameters
    ----------
    volume : (Z, Y, X) array-like, any integer or float dtype
        EM intensities. Its faces are the volume's faces (mirror extension beyond them).
    voxel_size : (3,) floats
        Voxel size (z, y, x) in nm.
    spec : FeatureSpec

    Returns
    -------
    (C, Z, Y, X) float32 ndarray
        Channels in the order of ``spec.channel_names()``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got shape {volume.shape}")
    plan = _plan(spec, _voxel_size(voxel_size))
    return _compute_region(volume, (0, 0, 0), volume.shape, plan)


def _read(source, box: Box) -> np.ndarray:
    if isinstance(source, VolumeSource) or (
        callable(getattr(source, "read", None)) and not isinstance(source, np.ndarray)
    ):
        return np.asarray(source.read(box))
    return np.asarray(source[box])


def compute_features_block(source, box, *, voxel_size, spec: FeatureSpec) -> np.ndarray:
    """Channels of one box of a volume too large for memory, equal to the whole-volume result.

    Reads the box plus :meth:`FeatureSpec.halo_voxels` on each side (clipped at the volume
    faces, where the mirror extension applies as on the whole volume), computes, and keeps
    the box.

    Parameters
    ----------
    source : array-like or VolumeSource
        Anything with ``.shape`` that is sliced like a numpy array (ndarray, zarr.Array,
        h5py.Dataset), or an object with ``.shape`` and ``.read(box)``.
    box : tuple of 3 slices
        Half-open (z, y, x) box inside the volume, step 1.
    voxel_size : (3,) floats
        Voxel size (z, y, x) in nm.
    spec : FeatureSpec

    Returns
    -------
    (C, *box_shape) float32 ndarray
    """
    shape = tuple(int(n) for n in source.shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3-D (z, y, x) source, got shape {shape}")
    box = normalize_box(box, shape)
    plan = _plan(spec, _voxel_size(voxel_size))
    region = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(box, plan.halo, shape)
    )
    box_shape = tuple(s.stop - s.start for s in box)
    if 0 in box_shape:
        return np.empty((plan.n_channels,) + box_shape, dtype=np.float32)
    data = _read(source, region)
    core_lo = tuple(s.start - r.start for s, r in zip(box, region))
    return _compute_region(data, core_lo, box_shape, plan)


def iter_feature_blocks(
    source, *, voxel_size, spec: FeatureSpec, block_shape: Sequence[int]
) -> Iterator[tuple[Box, np.ndarray]]:
    """Channels of a volume block by block, in C order of the blocks.

    Parameters
    ----------
    source : array-like or VolumeSource
        As for :func:`compute_features_block`.
    voxel_size : (3,) floats or None
        Voxel size (z, y, x) in nm; None takes ``source.voxel_size``.
    spec : FeatureSpec
    block_shape : (3,) ints
        Block shape (z, y, x); blocks at the far faces are clipped.

    Yields
    ------
    box : tuple of 3 slices
    channels : (C, *box_shape) float32 ndarray
    """
    if voxel_size is None:
        voxel_size = getattr(source, "voxel_size", None)
    voxel_size = _voxel_size(voxel_size)
    for box in iter_blocks(source.shape, block_shape):
        yield box, compute_features_block(source, box, voxel_size=voxel_size, spec=spec)
