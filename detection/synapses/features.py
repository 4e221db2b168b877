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
``(f[i+1] - 2 f[i] + f[i-1]) / h^2`` on the diagonal of the Hessian and central differences of
central differences off it. These are exact for polynomials up to degree 2 (a ramp has its slope, x^2
has second derivative 2), and cost a few array operations instead of a derivative-of-Gaussian
filter per component. Everything derived (gradients, structure-tensor products) is taken on the
mirror-extended image, so every channel is a function of that extension alone: a block read
with :meth:`FeatureSpec.halo_voxels` more voxels on each side (clipped at the volume faces)
gives the whole-volume result (tested to float32 rounding).

Default spec
------------
Scales 10, 20, 40 and 80 nm (:data:`DEFAULT_SCALES_NM`) span membranes (10-20 nm thick:
sheets at 10 nm), vesicles (~40 nm across: blobs at 10-20 nm), postsynaptic densities (dark
sheets 30-60 nm thick: 20-40 nm) and the darkness of the density and vesicle cloud around a
synapse (80 nm). The smoothed intensity, gradient magnitude, Laplacian and DoG are computed at
all four; Hessian eigenvalues at 10, 20 and 40 nm (at 80 nm the Laplacian and DoG already say
blob or not); structure-tensor eigenvalues at 20 nm only, integrated over 40 nm (membrane and
density orientation, vesicle-cloud texture): each structure-tensor scale smooths six products,
as costly as six Gaussians. ``dog_ratio`` 2 makes every DoG partner a scale already computed,
but 5 nm. 28 channels; halo (6, 53, 53) voxels at (50, 4.6, 4.6) nm, (31, 31, 31) at 8 nm.

Implementation and throughput
-----------------------------
Smoothing runs in float64 as banded matrix products (BLAS) along each axis, in tiles of
:data:`_TILE` output voxels, so that its cost grows with the kernel width rather than the axis
length; float64 keeps the differences of large-scale smoothing free of cancellation. Pointwise
work (differences, closed-form 3x3 eigenvalues) runs on cache-sized chunks into preallocated
scratch, kept per thread between calls (:func:`release_workspace` frees it). The halo is only
smoothed: pointwise work covers the block (and the structure tensor's integration margin), or
only every ``stride`` voxel of it when a caller needs no more (the voxel classifier scores a
grid of voxels), and Gaussian channels can be taken over a wider box from the same smoothing
pass (:func:`compute_features_with_wide_gaussians`, for context cues that pool them). With a
``stride``, smoothings read at those voxels alone (the structure tensor's integration, a DoG's
finer Gaussian) are computed only there, their strided passes first: the integration of six
products was the costliest smoothing, and on a 1 x 3 x 3 grid it now costs about a third.

Single core (``OMP_NUM_THREADS=1``; BLAS threads otherwise multiply the core count), (32, 512,
512) uint8 volume in memory, default spec, CPU time (user + system) on a shared 2-vCPU AMD
EPYC virtual machine: 2.7 Mvoxel/s at (50, 4.6, 4.6) nm and 3.2 Mvoxel/s at (8, 8, 8) nm
(user time alone 3.7 and 3.6; system time is page faults of the fresh output array). Alone,
each kind at the default scales: Gaussian 21-23, gradient magnitude 14-15, Laplacian 13-14,
DoG 13-16, Hessian eigenvalues 6.5, structure-tensor eigenvalues 10-11 Mvoxel/s.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from detection.errors import InputError
from detection.io.sources import Box, iter_blocks, normalize_box, read_box

logger = logging.getLogger(__name__)

CHANNEL_KINDS = (
    "gaussian",
    "gradient_magnitude",
    "laplacian_of_gaussian",
    "difference_of_gaussians",
    "hessian_eigenvalues",
    "structure_tensor_eigenvalues",
)

DEFAULT_SCALES_NM = (10.0, 20.0, 40.0, 80.0)
# Per-kind subsets of the default scales: the Hessian eigenvalues at 80 nm add little to the
# Laplacian and DoG there, and the structure tensor smooths six products per scale.
DEFAULT_KIND_SCALES_NM = (
    ("hessian_eigenvalues", (10.0, 20.0, 40.0)),
    ("structure_tensor_eigenvalues", (20.0,)),
)

# Kinds that take finite differences of the smoothed volume (one more voxel of halo).
_DERIVATIVE_KINDS = ("gradient_magnitude", "laplacian_of_gaussian", "hessian_eigenvalues")
_EIGEN_PREFIX = {
    "hessian_eigenvalues": "hessian",
    "structure_tensor_eigenvalues": "structure_tensor",
}

# Output voxels per tile of the banded smoothing matrices. Wider tiles waste products on the
# zeros outside the band, narrower ones make BLAS calls too small to run at full speed.
_TILE = 32
# Rows of the x pass handled together, in bytes of input: keeps each row block in cache
# while all tiles read it.
_X_ROWS_BYTES = 2**20
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
        raise InputError(f"{what} must be positive and finite, got {scales}")
    if len(set(scales)) != len(scales):
        raise InputError(f"{what} has duplicates: {scales}")
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
    kind_scales_nm : tuple of (str, tuple of float) pairs, dict or None
        For the kinds named, the subset of ``scales_nm`` to compute them at (a dict is accepted;
        stored as sorted pairs); other kinds use every scale. None: with the default
        ``scales_nm``, :data:`DEFAULT_KIND_SCALES_NM` (the Hessian up to 40 nm, the costly
        structure tensor at 20 nm only); with other scales, every kind at every scale.

    Notes
    -----
    Channels are ordered by kind (in ``kinds`` order), then by scale (in the order given),
    then by eigenvalue index; eigenvalues are sorted ascending, ``ev0`` the smallest (most
    negative). Names are ``"<kind>@<scale>nm"``, and ``"hessian_ev<i>@<scale>nm"`` /
    ``"structure_tensor_ev<i>@<scale>nm"`` for eigenvalues.
    """

    scales_nm: tuple[float, ...] = DEFAULT_SCALES_NM
    kinds: tuple[str, ...] = CHANNEL_KINDS
    dog_ratio: float = 2.0
    structure_tensor_ratio: float = 2.0
    truncate: float = 3.0
    min_sigma_voxels: float = 0.3
    kind_scales_nm: tuple[tuple[str, tuple[float, ...]], ...] | None = None

    def __post_init__(self):
        # Normalise lists (from JSON or callers) to tuples, so that specs compare and hash.
        set_ = functools.partial(object.__setattr__, self)
        set_("scales_nm", _as_scales(self.scales_nm, "scales_nm"))
        kinds = tuple(str(k) for k in self.kinds)
        unknown = [k for k in kinds if k not in CHANNEL_KINDS]
        if unknown:
            raise InputError(f"unknown channel kinds {unknown}; known: {CHANNEL_KINDS}")
        if len(set(kinds)) != len(kinds):
            raise InputError(f"kinds has duplicates: {kinds}")
        set_("kinds", kinds)
        overrides = self.kind_scales_nm
        if overrides is None:
            overrides = DEFAULT_KIND_SCALES_NM if self.scales_nm == DEFAULT_SCALES_NM else ()
        items = overrides.items() if isinstance(overrides, dict) else overrides
        pairs = []
        for kind, scales in items:
            if kind not in CHANNEL_KINDS:
                raise InputError(f"kind_scales_nm: unknown kind {kind!r}; known: {CHANNEL_KINDS}")
            pairs.append((str(kind), _as_scales(scales, f"kind_scales_nm[{kind!r}]")))
        if len({k for k, _ in pairs}) != len(pairs):
            raise InputError(f"kind_scales_nm names a kind twice: {overrides}")
        for kind, scales in pairs:
            # Loud rather than a silent surprise when scales_nm is changed and the default
            # per-kind subsets no longer fit it.
            extra = sorted(set(scales) - set(self.scales_nm))
            if extra:
                raise InputError(
                    f"kind_scales_nm[{kind!r}] has scales {extra} not in scales_nm "
                    f"{self.scales_nm}; give kind_scales_nm={{}} to compute every kind at "
                    "every scale"
                )
        set_("kind_scales_nm", tuple(sorted(pairs)))
        for name in ("dog_ratio", "structure_tensor_ratio", "truncate", "min_sigma_voxels"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be finite and >= 0, got {value}")
            set_(name, value)
        if self.dog_ratio <= 1:
            raise InputError(f"dog_ratio must be > 1, got {self.dog_ratio}")
        if self.structure_tensor_ratio <= 0 or self.truncate <= 0:
            raise InputError("structure_tensor_ratio and truncate must be > 0")

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
            raise InputError(f"unknown FeatureSpec fields {sorted(unknown)}")
        return cls(**data)


def _voxel_size(voxel_size) -> tuple[float, float, float]:
    if voxel_size is None:
        raise InputError("voxel_size (z, y, x) in nm is required")
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise InputError(f"voxel_size must be 3 positive sizes (z, y, x) in nm, got {voxel_size}")
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
    dog_fine: list = field(default_factory=list)  # DoG channels this is the finer Gaussian of
    dog_coarse: list = field(default_factory=list)  # ... and the coarser one


@dataclass
class _Plan:
    smoothings: list  # _Smoothing, by increasing scale: a DoG's finer one comes first
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
            fine.dog_fine.append(index["difference_of_gaussians", scale, 0])
            entry.dog_coarse.append(index["difference_of_gaussians", scale, 0])
            halo = np.maximum(halo, np.maximum(radius, _radius(fine.kernel)))
    ordered = sorted(smoothings.values(), key=lambda s: s.scale_nm)
    return _Plan(ordered, tuple(int(h) for h in halo), voxel_size, len(index))


# --------------------------------------------------------------------------------------------
# Smoothing


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map indices of the mirror-extended axis (d c b a | a b c d | d c b a) into [0, n)."""
    m = np.mod(index, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


@functools.lru_cache(maxsize=256)
def _band(sigma: float, radius: int, rows: int, dtype: str,
          stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian band matrix (rows, stride (rows - 1) + 2 radius + 1), outputs ``stride``
    inputs apart, and its contiguous transpose."""
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    k = np.zeros((rows, stride * (rows - 1) + 2 * radius + 1))
    for i in range(rows):
        k[i, stride * i:stride * i + 2 * radius + 1] = weights
    k = k.astype(dtype)
    kt = np.ascontiguousarray(k.T)
    k.flags.writeable = False
    kt.flags.writeable = False
    return k, kt


@functools.lru_cache(maxsize=256)
def _axis_tiles(n: int, sigma: float, radius: int, lo: int, hi: int, dtype: str,
                stride: int = 1) -> tuple:
    """Banded Gaussian matrix from an axis of length ``n`` to outputs ``lo, lo + stride, ...``
    below ``hi``.

    Outputs outside [0, n) are those of the mirror-extended axis. Returned as tiles
    ``(o0, o1, i0, i1, k, kt)``: outputs ``o0:o1`` (counted from the first) are
    ``k @ input[i0:i1]``, ``kt`` being ``k.T`` stored contiguously for the last-axis pass.
    Tiles clear of the ends share one band matrix.
    """
    band, band_t = _band(sigma, radius, _TILE, dtype, stride)
    weights = band[0, :2 * radius + 1].astype(np.float64)
    taps = np.arange(-radius, radius + 1)
    positions = np.arange(lo, hi, stride)
    tiles = []
    for o0 in range(0, len(positions), _TILE):
        o1 = min(len(positions), o0 + _TILE)
        first, last = int(positions[o0]), int(positions[o1 - 1])
        if o1 - o0 == _TILE and first - radius >= 0 and last + radius < n:
            tiles.append((o0, o1, first - radius, last + radius + 1, band, band_t))
            continue
        rows = positions[o0:o1, None]
        cols = _reflect(rows + taps, n)
        i0, i1 = int(cols.min()), int(cols.max()) + 1
        k = np.zeros((o1 - o0, i1 - i0))
        # add.at: near the faces several taps fold onto the same input voxel.
        np.add.at(k, (np.broadcast_to(np.arange(o1 - o0)[:, None], cols.shape), cols - i0),
                  np.broadcast_to(weights, cols.shape))
        k = k.astype(dtype)
        kt = np.ascontiguousarray(k.T)
        k.flags.writeable = False
        kt.flags.writeable = False
        tiles.append((o0, o1, i0, i1, k, kt))
    return tuple(tiles)


class _Workspace:
    """Scratch arrays reused across the passes, scales and calls of one thread.

    A fresh large array is paid for in page faults (zeroing, and on hosts with transparent
    huge pages, compaction) on first touch: as much system time as the user time of the
    filters themselves, measured. Block-wise callers ask for the same sizes block after
    block, so the buffers are kept between calls, up to :data:`WORKSPACE_KEEP_BYTES`.
    """

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(max(size, 1), dtype=dtype)
        return buffer[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


# Workspace memory kept by a thread between calls (bytes); a call needing more frees it after.
WORKSPACE_KEEP_BYTES = 2 * 2**30
_local = threading.local()


def _workspace() -> _Workspace:
    work = getattr(_local, "work", None)
    if work is None:
        work = _local.work = _Workspace()
    return work


def release_workspace() -> None:
    """Free the scratch memory this thread keeps between feature computations."""
    _local.work = None


def _view_3d(a: np.ndarray, axis: int) -> np.ndarray | None:
    """``a`` as (before, axis, after) without copying, or None where that needs a copy."""

    def merged_stride(dims):
        # Axes merge into one when each steps over the whole of the next (length-1 axes
        # aside); the merged axis steps like the last of them.
        dims = [i for i in dims if a.shape[i] != 1]
        if any(a.strides[i] != a.strides[j] * a.shape[j] for i, j in zip(dims, dims[1:])):
            return None
        return a.strides[dims[-1]] if dims else 0

    before = merged_stride(range(axis))
    after = merged_stride(range(axis + 1, a.ndim))
    if before is None or after is None:
        return None
    shape = (math.prod(a.shape[:axis]), a.shape[axis], math.prod(a.shape[axis + 1:]))
    return np.lib.stride_tricks.as_strided(a, shape, (before, a.strides[axis], after),
                                           writeable=a.flags.writeable)


def _filter_axis(a, axis: int, sigma: float, radius: int, lo: int, hi: int, out,
                 stride: int = 1) -> None:
    """Gaussian along spatial ``axis`` (-3, -2, -1) of ``a`` into ``out``, outputs ``lo``,
    ``lo + stride``, ... below ``hi``.

    ``out`` has ``a``'s shape but that many outputs along ``axis``, and ``a``'s float dtype.
    """
    n = a.shape[axis]
    tiles = _axis_tiles(n, float(sigma), int(radius), int(lo), int(hi), out.dtype.str,
                        int(stride))
    dst = _view_3d(out, out.ndim + axis)
    if dst is None:
        scratch = np.empty(out.shape, dtype=out.dtype)
        _filter_axis(a, axis, sigma, radius, lo, hi, scratch, stride)
        out[...] = scratch
        return
    src = _view_3d(a, a.ndim + axis)
    if src is None:
        src = _view_3d(np.ascontiguousarray(a), a.ndim + axis)
    if axis == -1:
        # (rows, x) @ (x, x'): blocks of rows stay in cache while every tile reads them.
        src = src.reshape(-1, n)
        dst = dst.reshape(-1, out.shape[-1])
        step = max(1, _X_ROWS_BYTES // (out.itemsize * n))
        for r0 in range(0, src.shape[0], step):
            rows_in, rows_out = src[r0:r0 + step], dst[r0:r0 + step]
            for o0, o1, i0, i1, _, kt in tiles:
                np.matmul(rows_in[:, i0:i1], kt, out=rows_out[:, o0:o1])
    else:
        for o0, o1, i0, i1, k, _ in tiles:
            np.matmul(k, src[:, i0:i1, :], out=dst[:, o0:o1, :])


def _smooth(a, kernel: _Kernel, lo, hi, work: _Workspace, names, dtype,
            stride=(1, 1, 1)) -> np.ndarray:
    """Separable Gaussian of ``a`` (..., Z, Y, X) on the region ``lo .. hi - 1``.

    The region may reach beyond the array into its mirror extension. Passes alternate
    between the workspace buffers ``names``; the result lives in one of them. With
    ``stride``, only every ``stride`` voxel of the region from its first (a view when an
    unsmoothed axis is strided).
    """
    lo = [int(v) for v in lo]
    hi = [int(v) for v in hi]
    stride = [int(s) for s in stride]
    lead = a.shape[:-3]
    size = a.shape[-3:]
    # Strided axes first: each later pass then runs over a fraction of the voxels.
    smoothed = sorted((axis for axis in range(3) if kernel[axis][1] > 0),
                      key=lambda axis: -stride[axis])
    if any(s > 1 for s in stride) and not all(
            stride[axis] == 1 for axis in range(3) if axis not in smoothed):
        whole = _smooth(a, kernel, lo, hi, work, names, dtype,
                        [s if axis in smoothed else 1 for axis, s in enumerate(stride)])
        return whole[(Ellipsis,) + tuple(
            slice(None, None, 1 if axis in smoothed else s) for axis, s in enumerate(stride))]
    count = [len(range(lo[axis], hi[axis], stride[axis])) for axis in range(3)]
    # Unsmoothed axes are cut to the array and their mirror margins copied in at the end:
    # the other passes then run over no mirrored copies.
    cut = []
    for axis in range(3):
        if axis in smoothed:
            cut.append(slice(None))
        else:
            cut.append(slice(max(lo[axis], 0), min(hi[axis], size[axis])))
    current = a[(Ellipsis,) + tuple(cut)]
    full = lead + tuple(count)
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
        shape[axis - 3] = count[axis]
        target = interior if last else work.get(names[step % 2], tuple(shape), dtype)
        sigma, radius = kernel[axis]
        _filter_axis(current, axis - 3, sigma, radius, lo[axis], hi[axis], target,
                     stride[axis])
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
            return _smooth(mirrored, kernel, lo2, hi2, work, names, dtype, stride)
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
# faults than the arithmetic, and chunks of _CHUNK_VOXELS keep the temporaries in cache while
# amortising the Python overhead of each array operation.


class _Scratch:
    """Chunk-sized float64 and float32 temporaries, reused for every chunk."""

    def __init__(self, voxels: int, n64: int, n32: int, work: _Workspace | None = None):
        work = work if work is not None else _Workspace()
        self._f64 = work.get("chunk64", (n64, voxels), np.float64)
        self._f32 = work.get("chunk32", (n32, voxels), np.float32)
        self.shape: tuple[int, ...] = (voxels,)

    def f64(self, i: int) -> np.ndarray:
        return self._f64[i, :math.prod(self.shape)].reshape(self.shape)

    def f32(self, i: int) -> np.ndarray:
        return self._f32[i, :math.prod(self.shape)].reshape(self.shape)


# float64 and float32 temporaries used by _sym3_into.
_SYM3_F64 = 13
_SYM3_F32 = 3


def _sym3_into(a00, a11, a22, a01, a02, a12, ev0, ev1, ev2, scratch: _Scratch, first: int = 0,
               trace=None):
    """Sorted eigenvalues of symmetric 3x3 matrices, written into ``ev0 <= ev1 <= ev2``.

    Entries float64 or float32; outputs float32 (typically views of the channels), as is the
    optional ``trace``. Uses float64 scratch ``first .. first + 12`` and float32 scratch 0 .. 2.
    """
    q, b0, b1, b2, o01, o02, o12, s01, s02, s12, t, w, p2 = (
        scratch.f64(first + i) for i in range(_SYM3_F64))
    c, two_p, q32 = (scratch.f32(i) for i in range(_SYM3_F32))
    # Near repeated eigenvalues, as at every edge of the structure tensor, r below is close
    # to +-1, where arccos turns a relative error e into sqrt(e): in float32 that would be
    # 1e-4 of the eigenvalue spread. Everything up to the angle is therefore float64.
    if a01.dtype == np.float64 and a02.dtype == np.float64 and a12.dtype == np.float64:
        o01, o02, o12 = a01, a02, a12
    else:
        np.copyto(o01, a01)
        np.copyto(o02, a02)
        np.copyto(o12, a12)
    np.add(a00, a11, out=q, dtype=np.float64)
    q += a22
    if trace is not None:
        np.copyto(trace, q, casting="same_kind")
    q *= 1.0 / 3.0
    np.subtract(a00, q, out=b0)
    np.subtract(a11, q, out=b1)
    np.subtract(a22, q, out=b2)
    # p^2 = |A - qI|_F^2 / 6
    np.square(o01, out=s01)
    np.square(o02, out=s02)
    np.square(o12, out=s12)
    np.add(s01, s02, out=w)
    w += s12
    w += w
    np.square(b0, out=p2)
    np.square(b1, out=t)
    p2 += t
    np.square(b2, out=t)
    p2 += t
    p2 += w
    p2 *= 1.0 / 6.0
    # det(A - qI) = b0 b1 b2 + 2 a01 a02 a12 - b0 a12^2 - b1 a02^2 - b2 a01^2, into t
    np.multiply(b0, b1, out=t)
    t *= b2
    np.multiply(o01, o02, out=w)
    w *= o12
    w += w
    t += w
    for b, s in ((b0, s12), (b1, s02), (b2, s01)):
        np.multiply(b, s, out=w)
        t -= w
    # r = det / (2 p^3) = det(B) / 2 for B = (A - qI) / p, in [-1, 1]; p = 0 gives 0 / tiny.
    p = np.sqrt(p2, out=b1)
    np.multiply(p2, p, out=w)
    w += w
    np.maximum(w, np.finfo(np.float64).tiny, out=w)
    t /= w
    np.clip(t, -1.0, 1.0, out=t)
    # Eigenvalues q + 2p cos(phi + 2 pi k / 3), phi = arccos(r) / 3 in [0, pi / 3]; the
    # cosines in float32 (ten times faster than float64 ones, and as precise as the output).
    phi = np.arccos(t, out=t)
    phi *= 1.0 / 3.0
    np.copyto(two_p, p, casting="same_kind")
    two_p += two_p
    np.copyto(q32, q, casting="same_kind")
    np.copyto(c, phi, casting="same_kind")
    np.cos(c, out=c)
    np.multiply(c, two_p, out=ev2)
    ev2 += q32
    phi += 2.0 * np.pi / 3.0
    np.copyto(c, phi, casting="same_kind")
    np.cos(c, out=c)
    np.multiply(c, two_p, out=ev0)
    ev0 += q32
    np.multiply(q32, np.float32(3.0), out=ev1)
    ev1 -= ev0
    ev1 -= ev2
    # The trace identity can land ev1 a rounding outside [ev0, ev2].
    np.maximum(ev1, ev0, out=ev1)
    np.minimum(ev1, ev2, out=ev1)


def sym3_eigenvalues(a00, a11, a22, a01, a02, a12):
    """Eigenvalues of symmetric 3x3 matrices, closed form, sorted ascending.

    Parameters
    ----------
    a00, a11, a22, a01, a02, a12 : array-likes of one shape
        Matrix entries.

    Returns
    -------
    ev0, ev1, ev2 : float32 ndarrays
        ``ev0 <= ev1 <= ev2``, by the trigonometric solution of the characteristic cubic
        (Smith 1961), within a few float32 roundings of the largest magnitude (~3e-7).
    """
    entries = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                    for v in (a00, a11, a22, a01, a02, a12)))
    shape = entries[0].shape
    scratch = _Scratch(max(1, math.prod(shape)), _SYM3_F64, _SYM3_F32)
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


def _shifted(gp: np.ndarray, zs: slice, ys: slice, dz: int, dy: int, dx: int,
             stride=(1, 1, 1)) -> np.ndarray:
    """View of ``gp`` (one voxel of margin all round) on chunk ``zs, ys`` moved by dz, dy, dx.

    ``zs`` and ``ys`` count output voxels, which lie ``stride`` voxels of ``gp`` apart.
    """
    sz, sy, sx = stride
    x_n = (gp.shape[2] - 3) // sx + 1
    return gp[1 + dz + zs.start * sz: 2 + dz + (zs.stop - 1) * sz: sz,
              1 + dy + ys.start * sy: 2 + dy + (ys.stop - 1) * sy: sy,
              1 + dx: 2 + dx + (x_n - 1) * sx: sx]


def _strided_shape(shape, stride) -> tuple[int, ...]:
    """Output voxels of a region of ``shape`` voxels sampled every ``stride`` from its first."""
    return tuple((n - 1) // s + 1 for n, s in zip(shape, stride))


_STEPS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
_PAIRS = ((0, 1), (0, 2), (1, 2))


def _difference(at, axis: int, h: float, tmp: np.ndarray, out: np.ndarray) -> None:
    """Central difference along ``axis`` per nm: in float64 ``tmp``, then into ``out``."""
    step = _STEPS[axis]
    np.subtract(at(*step), at(*(-v for v in step)), out=tmp)
    np.multiply(tmp, 0.5 / h, out=out, casting="same_kind")


def _derivative_channels(gp, voxel_size, out, grad_c, log_c, hess_c, work,
                         stride=(1, 1, 1)) -> None:
    """Gradient magnitude, Laplacian and Hessian eigenvalues from ``gp`` (core + 1 voxel),
    at every ``stride`` voxel of the core.

    Differences are taken in float64, where they cancel the magnitude of the smoothed values.
    """
    core = _strided_shape([n - 2 for n in gp.shape], stride)
    want_hessian = hess_c[0] is not None
    scratch = _Scratch(_chunk_voxels(core), 7 + _SYM3_F64, 1 + _SYM3_F32, work)
    for zs, ys in _chunks(core):
        at = functools.partial(_shifted, gp, zs, ys, stride=stride)
        dst = (zs, ys)
        scratch.shape = at(0, 0, 0).shape
        tmp = scratch.f64(6)
        if grad_c is not None:
            total, d = out[grad_c][dst], scratch.f32(_SYM3_F32)
            _difference(at, 0, voxel_size[0], tmp, total)
            np.square(total, out=total)
            for axis in (1, 2):
                _difference(at, axis, voxel_size[axis], tmp, d)
                np.square(d, out=d)
                total += d
            np.sqrt(total, out=total)
        if log_c is None and not want_hessian:
            continue
        np.multiply(at(0, 0, 0), 2.0, out=tmp)
        second = [scratch.f64(i) for i in range(3)]
        for axis, d in enumerate(second):
            step = _STEPS[axis]
            np.add(at(*step), at(*(-v for v in step)), out=d)
            d -= tmp
            d *= 1.0 / voxel_size[axis] ** 2
        if not want_hessian:
            np.add(second[0], second[1], out=tmp)
            tmp += second[2]
            out[log_c][dst] = tmp
            continue
        cross = [scratch.f64(3 + k) for k in range(3)]
        for (i, j), d in zip(_PAIRS, cross):
            plus = tuple(u + v for u, v in zip(_STEPS[i], _STEPS[j]))
            minus = tuple(u - v for u, v in zip(_STEPS[i], _STEPS[j]))
            np.subtract(at(*plus), at(*minus), out=d)
            d -= at(*(-v for v in minus))
            d += at(*(-v for v in plus))
            d *= 0.25 / (voxel_size[i] * voxel_size[j])
        _sym3_into(*second, *cross, *(out[c][dst] for c in hess_c), scratch, first=7,
                   trace=None if log_c is None else out[log_c][dst])


def _structure_tensor_channels(gp, voxel_size, outer: _Kernel, out, channels, work,
                               stride=(1, 1, 1)) -> None:
    """Structure-tensor eigenvalues on the core of ``gp`` (core + integration radius + 1),
    at every ``stride`` voxel of the core.

    The six gradient products are smoothed in float32: positive weights times products, no
    cancellation for float64 to protect.
    """
    margin = _radius(outer)
    region = tuple(n - 2 for n in gp.shape)
    products = work.get("st_products", (6,) + region, np.float32)
    scratch = _Scratch(_chunk_voxels(region), 1, 3, work)
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
    # The products are not needed once the first pass has read them: their buffer takes
    # the second pass. Only the grid voxels are smoothed to (the strided passes first).
    tensor = _smooth(products, outer, margin, margin + core, work, ("st_a", "st_products"),
                     np.float32, stride)
    core = tensor.shape[1:]
    scratch = _Scratch(_chunk_voxels(core), _SYM3_F64, _SYM3_F32, work)
    for zs, ys in _chunks(core):
        t = tensor[:, zs, ys]
        scratch.shape = t.shape[1:]
        _sym3_into(*t, *(out[c][zs, ys] for c in channels), scratch)


# --------------------------------------------------------------------------------------------
# Driver


def _compute_region(data: np.ndarray, core_lo, core_shape, plan: _Plan, out=None,
                    wide=None, stride=(1, 1, 1)) -> np.ndarray:
    """Channels on the core ``core_lo .. core_lo + core_shape`` of ``data`` (read region).

    With ``stride``, only at every ``stride`` voxel of the core, from its first: the output
    is then ``_strided_shape(core_shape, stride)``.

    ``wide``: optional ``(lo, shape, {channel index: row}, array)``; each named Gaussian
    channel is also written, over the box ``lo .. lo + shape`` of ``data``, into that row of
    ``array`` (the smoothing then covers that box too).
    """
    if data.dtype.kind not in "biuf":
        raise TypeError(f"cannot compute features of {data.dtype} data (need integer or float)")
    core_lo = np.asarray(core_lo, dtype=np.int64)
    core_shape = np.asarray(core_shape, dtype=np.int64)
    stride = tuple(int(s) for s in stride)
    shape = (plan.n_channels,) + _strided_shape(core_shape, stride)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise InputError(f"out must be a C-contiguous float32 array of shape {shape}, got "
                         f"{out.dtype} {out.shape}")
    if out.size == 0:
        return out
    started = time.perf_counter()
    work = _workspace()
    a = work.get("input", np.shape(data), np.float64)
    np.copyto(a, data, casting="unsafe")
    wide_lo, wide_shape, wide_rows, wide_out = wide or (None, None, {}, None)
    for entry in plan.smoothings:
        lo = core_lo - entry.pad
        hi = core_lo + core_shape + entry.pad
        widened = [(c, wide_rows[c]) for c in entry.gaussian if c in wide_rows]
        if widened:
            lo = np.minimum(lo, wide_lo)
            hi = np.maximum(hi, np.asarray(wide_lo) + wide_shape)
        if entry.derivatives or entry.tensors or widened:
            g = _smooth(a, entry.kernel, lo, hi, work, ("g0", "g1"), np.float64)
            # Where the core starts in ``g``: ``pad`` unless the smoothing was widened.
            pad = core_lo - lo
            core = tuple(slice(int(p), int(p + n), s)
                         for p, n, s in zip(pad, core_shape, stride))
        else:
            # Only values at the core's grid voxels are taken (a DoG's finer Gaussian, as a
            # rule): smoothed to those alone.
            g = _smooth(a, entry.kernel, lo, hi, work, ("g0", "g1"), np.float64, stride)
            core = (slice(None),) * 3
        for c, row in widened:
            wide_out[row] = g[tuple(slice(int(w - l), int(w - l + n))
                                    for w, l, n in zip(wide_lo, lo, wide_shape))]
        for c in entry.gaussian:
            out[c] = g[core]
        # The finer Gaussian of a DoG waits in its channel, rounded to float32 (7e-8 of the
        # intensity), rather than in a float64 copy of the block.
        for c in entry.dog_fine:
            out[c] = g[core]
        for c in entry.dog_coarse:
            np.subtract(out[c], g[core], out=out[c], casting="same_kind")
        for grad_c, log_c, hess_c in entry.derivatives:
            inner = tuple(slice(int(p) - 1, int(p + n) + 1) for p, n in zip(pad, core_shape))
            _derivative_channels(g[inner], plan.voxel_size, out, grad_c, log_c, hess_c, work,
                                 stride)
        for outer, channels in entry.tensors:
            start = pad - _radius(outer) - 1
            inner = tuple(slice(int(s), int(s + n + 2 * (p - s)))
                          for s, p, n in zip(start, pad, core_shape))
            _structure_tensor_channels(g[inner], plan.voxel_size, outer, out, channels, work,
                                       stride)
    if work.nbytes > WORKSPACE_KEEP_BYTES:
        release_workspace()
    logger.debug("%d feature channels of %s voxels (read %s) in %.2f s", plan.n_channels,
                 tuple(out.shape[1:]), data.shape, time.perf_counter() - started)
    return out


def compute_features(
    volume, *, voxel_size, spec: FeatureSpec = FeatureSpec(), out: np.ndarray | None = None
) -> np.ndarray:
    """All channels of ``spec`` for a whole in-memory volume.

    Parameters
    ----------
    volume : (Z, Y, X) array-like, any integer or float dtype
        EM intensities. Its faces are the volume's faces (mirror extension beyond them).
    voxel_size : (3,) floats
        Voxel size (z, y, x) in nm.
    spec : FeatureSpec
    out : (C, Z, Y, X) float32 C-contiguous ndarray, optional
        Where to write, e.g. one array reused for block after block (a fresh array of this
        size costs, in page faults, about a tenth of the computation).

    Returns
    -------
    (C, Z, Y, X) float32 ndarray
        Channels in the order of ``spec.channel_names()``.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"expected a 3-D (z, y, x) volume, got shape {volume.shape}")
    plan = _plan(spec, _voxel_size(voxel_size))
    return _compute_region(volume, (0, 0, 0), volume.shape, plan, out)



def compute_features_block(
    source, box, *, voxel_size, spec: FeatureSpec, out: np.ndarray | None = None,
    stride=(1, 1, 1),
) -> np.ndarray:
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
    out : (C, *box_shape) float32 C-contiguous ndarray, optional
        Where to write.
    stride : (3,) ints
        Compute only every ``stride`` voxel of the box along each axis, from its first (a
        classifier scoring a grid of voxels needs no more); the output then has
        ``(n - 1) // stride + 1`` voxels along an axis of ``n``.

    Returns
    -------
    (C, *box_shape) float32 ndarray
    """
    shape = tuple(int(n) for n in source.shape)
    if len(shape) != 3:
        raise InputError(f"expected a 3-D (z, y, x) source, got shape {shape}")
    box = normalize_box(box, shape)
    plan = _plan(spec, _voxel_size(voxel_size))
    region = tuple(
        slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(box, plan.halo, shape)
    )
    box_shape = tuple(s.stop - s.start for s in box)
    data = read_box(source, region) if 0 not in box_shape else np.zeros(box_shape, np.float32)
    core_lo = tuple(s.start - r.start for s, r in zip(box, region))
    return _compute_region(data, core_lo, box_shape, plan, out, stride=stride)


def compute_features_with_wide_gaussians(
    source, box, wide_box, wide_channels: Sequence[str], *, voxel_size, spec: FeatureSpec,
    stride=(1, 1, 1),
) -> tuple[np.ndarray, np.ndarray]:
    """Channels of ``box``, and chosen Gaussian channels over a larger ``wide_box``.

    A classifier whose context cues pool smoothed intensities around each voxel needs those
    few channels over the block plus the cues' reach, but every channel only on the block:
    computing all of them over the wider box would repeat the costly pointwise work (Hessian
    and structure-tensor eigenvalues) on the margin. The wide Gaussians come from the same
    smoothing pass as the block's channels, widened. Both equal the whole-volume result.

    Parameters
    ----------
    source, box, voxel_size, spec, stride
        As for :func:`compute_features_block` (``stride`` applies to the box's channels).
    wide_box : tuple of 3 slices
        A box containing ``box``.
    wide_channels : sequence of str
        Names of ``gaussian`` channels of ``spec``.

    Returns
    -------
    channels : (C, *box_shape) float32 ndarray (fewer voxels with ``stride``)
    wide : (len(wide_channels), *wide_box_shape) float32 ndarray
    """
    shape = tuple(int(n) for n in source.shape)
    box = normalize_box(box, shape)
    wide_box = normalize_box(wide_box, shape)
    if any(w.start > b.start or w.stop < b.stop for w, b in zip(wide_box, box)):
        raise InputError(f"wide box {wide_box} does not contain the box {box}")
    plan = _plan(spec, _voxel_size(voxel_size))
    names = spec.channel_names()
    rows = {}
    for row, name in enumerate(wide_channels):
        if name not in names or spec.channels()[names.index(name)][0] != "gaussian":
            raise InputError(f"{name!r} is not a gaussian channel of the spec")
        rows[names.index(name)] = row
    reach = np.zeros(3, np.int64)
    for entry in plan.smoothings:
        if any(c in rows for c in entry.gaussian):
            reach = np.maximum(reach, _radius(entry.kernel))
    region = tuple(
        slice(max(0, min(s.start - h, w.start - r)), min(n, max(s.stop + h, w.stop + r)))
        for s, w, h, r, n in zip(box, wide_box, plan.halo, reach, shape)
    )
    data = read_box(source, region)
    box_shape = tuple(s.stop - s.start for s in box)
    wide_shape = tuple(w.stop - w.start for w in wide_box)
    core_lo = tuple(s.start - r.start for s, r in zip(box, region))
    wide_lo = np.array([w.start - r.start for w, r in zip(wide_box, region)], dtype=np.int64)
    wide = np.empty((len(rows),) + wide_shape, dtype=np.float32)
    channels = _compute_region(data, core_lo, box_shape, plan, stride=stride,
                               wide=(wide_lo, np.asarray(wide_shape, np.int64), rows, wide))
    return channels, wide


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
