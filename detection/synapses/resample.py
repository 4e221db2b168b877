"""Bringing volumes of different in-plane pixels to one: a model's pixel.

Serial-section stacks of different labs share a section thickness far more often than a pixel
(4 nm here, 4.6 nm there). A model works at one voxel size; a volume whose sections are as thick
(within :data:`Z_TOLERANCE`) and whose pixel is within a factor :data:`MAX_RATIO` of the model's
is resampled in-plane to the model's pixel, scored there, and the probability interpolated back.

Coordinates are global: model pixel ``u`` of an axis lies at data coordinate ``u * r``, where
``r = model pixel / data pixel``. Every block of a volume therefore samples the same lattice,
and a block-wise prediction equals the whole volume's (up to float rounding), as it does without
resampling. Sections are never resampled.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from detection.errors import InputError

#: Relative difference of section thickness (z) two volumes may have and still share a model.
Z_TOLERANCE = 0.1
#: Largest in-plane ratio between a model's pixel and a volume's (either way).
MAX_RATIO = 2.0


def resample_ratio(model_voxel_size, data_voxel_size, *, source: str = "the data") -> tuple:
    """``(1, ry, rx)``, model pixel over data pixel per axis, or an :class:`InputError` saying
    why the two cannot be brought to one pixel."""
    model = [float(v) for v in model_voxel_size]
    data = [float(v) for v in data_voxel_size]
    if abs(model[0] - data[0]) > Z_TOLERANCE * max(model[0], data[0]):
        raise InputError(
            f"{source} has sections of {data[0]:g} nm and the model {model[0]:g} nm; sections "
            f"cannot be resampled (they may differ by {Z_TOLERANCE:.0%}): train on volumes of "
            "this section thickness")
    ratio = [1.0]
    for axis, m, d in zip("yx", model[1:], data[1:]):
        r = m / d
        if not 1 / MAX_RATIO <= r <= MAX_RATIO:
            raise InputError(
                f"{source} has {axis} pixels of {d:g} nm and the model {m:g} nm; pixels are "
                f"resampled up to a factor {MAX_RATIO:g} either way, not {max(r, 1 / r):.2f}")
        ratio.append(r)
    return tuple(ratio)


def common_voxel_size(voxel_sizes, *, names=None) -> tuple[float, float, float]:
    """The voxel size a set of volumes is trained at: their mean section thickness and their
    coarsest pixel (downsampling loses less than inventing detail). Refuses sets that cannot
    share one, naming the volumes."""
    sizes = [tuple(float(v) for v in s) for s in voxel_sizes]
    names = list(names) if names is not None else [f"volume {i + 1}" for i in range(len(sizes))]
    if not sizes:
        raise InputError("no volumes to train on")
    thin = min(range(len(sizes)), key=lambda i: sizes[i][0])
    thick = max(range(len(sizes)), key=lambda i: sizes[i][0])
    if sizes[thick][0] - sizes[thin][0] > Z_TOLERANCE * sizes[thick][0]:
        raise InputError(
            f"{names[thin]} has sections of {sizes[thin][0]:g} nm and {names[thick]} of "
            f"{sizes[thick][0]:g} nm: sections cannot be resampled (they may differ by "
            f"{Z_TOLERANCE:.0%}), so these volumes cannot be brought to one voxel size")
    common = (float(np.mean([s[0] for s in sizes])),
              max(s[1] for s in sizes), max(s[2] for s in sizes))
    for size, name in zip(sizes, names):
        resample_ratio(common, size, source=name)
    return common


def _lattice_count(n: int, r: float) -> int:
    """Model pixels whose data coordinate ``u * r`` lies inside ``[0, n - 1]``."""
    return int(math.floor((n - 1) / r + 1e-9)) + 1


def model_shape(shape, ratio) -> tuple[int, ...]:
    """Shape of a data volume of ``shape`` on the model's lattice."""
    return tuple(n if r == 1.0 else _lattice_count(n, r) for n, r in zip(shape, ratio))


def _prefilter(volume: np.ndarray, ratio) -> np.ndarray:
    # Downsampling: a Gaussian of sigma sqrt(r^2 - 1) / 2 data pixels against aliasing.
    sigma = [0.0 if r <= 1.0 else math.sqrt(r * r - 1.0) / 2.0 for r in ratio]
    if not any(sigma):
        return volume
    return ndimage.gaussian_filter(volume.astype(np.float32), sigma, mode="mirror")


def to_model_lattice(volume: np.ndarray, ratio, *, start=(0, 0, 0), count=None,
                     offset=(0, 0, 0), order: int = 1) -> np.ndarray:
    """Sample ``volume`` (a region of the data starting at global voxel ``offset``) at the
    model pixels ``start .. start + count`` (global model indices; z is not resampled).

    ``order`` 1 interpolates intensities (after an anti-aliasing prefilter when the model's
    pixel is coarser); 0 takes the nearest voxel, for labels.
    """
    if all(r == 1.0 for r in ratio):
        return volume
    count = count if count is not None else model_shape(volume.shape, ratio)
    source = _prefilter(volume, ratio) if order else volume
    axes = []
    for n, r, s, c, o in zip(volume.shape, ratio, start, count, offset):
        position = (np.arange(s, s + c) * r) - o
        if order == 0:
            position = np.floor(position + 0.5)
        axes.append(np.clip(position, 0, n - 1))
    out = _sample_grid(source, axes, order=order)
    return out.astype(volume.dtype) if order == 0 else out.astype(np.float32)


def _sample_grid(array: np.ndarray, axes, *, order: int) -> np.ndarray:
    """``array`` sampled at the outer product of per-axis coordinates (spline ``order`` 0 or 1,
    edges repeated)."""
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    coordinates = np.stack([np.broadcast_to(g, tuple(len(a) for a in axes)) for g in grid])
    return ndimage.map_coordinates(array, coordinates, order=order, mode="nearest",
                                   prefilter=False)


class ResampledModel:
    """A synapse model applied to data of another in-plane pixel (see the module docstring).

    It has the interface of the model it wraps (``predict_region``, ``halo_voxels``,
    ``grid_step``, ``voxel_size``, ``calibration``), in the data's voxels: blocks may start
    anywhere in-plane, and the halo covers the wrapped model's halo at the model's pixel.
    """

    def __init__(self, model, data_voxel_size, *, source: str = "the data"):
        self.model = model
        self.ratio = resample_ratio(model.voxel_size, data_voxel_size, source=source)
        self.voxel_size = tuple(float(v) for v in data_voxel_size)
        self.model_voxel_size = tuple(model.voxel_size)

    def __getattr__(self, name):
        return getattr(self.model, name)

    @property
    def grid_step(self) -> tuple[int, int, int]:
        return (self.model.grid_step[0], 1, 1)

    def halo_voxels(self) -> tuple[int, int, int]:
        inner = self.model.halo_voxels()
        step = self.model.grid_step
        halo = [inner[0]]
        for h, g, r in zip(inner[1:], step[1:], self.ratio[1:]):
            # The wrapped halo and grid alignment at the model's pixel, the interpolation's
            # neighbour, and the prefilter's reach, in data voxels.
            halo.append(int(math.ceil((h + g + 2) * r)) + 4)
        return tuple(halo)

    def predict_region(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0)) -> np.ndarray:
        return self._resampled(volume, core, offset, maps=False)

    def predict_maps(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0)) -> dict:
        """Every head's map of a network (see ``SynapseCnn.predict_maps``), in the data's
        voxels as :meth:`predict_region` gives the probability."""
        if not callable(getattr(type(self.model), "predict_maps", None)):
            raise InputError(f"the {type(self.model).__name__} gives a synapse probability only, "
                             "no other maps")
        return self._resampled(volume, core, offset, maps=True)

    def _resampled(self, volume: np.ndarray, core, offset, *, maps: bool):
        core = tuple(core) if core is not None else tuple(slice(0, n) for n in volume.shape)
        offset = tuple(int(o) for o in offset)
        step = self.model.grid_step
        lo, hi, region_lo, region_hi = [], [], [], []
        for axis in (1, 2):
            r, g = self.ratio[axis], step[axis]
            first = offset[axis] + core[axis].start
            last = offset[axis] + core[axis].stop - 1
            u0 = int(math.floor(first / r + 1e-9)) // g * g
            u1 = int(math.floor(last / r + 1e-9)) + 2  # the upper neighbour of the last voxel
            # Model pixels the data region can provide (with one voxel for interpolation).
            a = int(math.ceil(offset[axis] / r - 1e-9))
            b = int(math.floor((offset[axis] + volume.shape[axis] - 1) / r + 1e-9)) + 1
            lo.append(u0), hi.append(min(u1, b)), region_lo.append(a), region_hi.append(b)
        # The model region: all model pixels inside the data region, which holds the halo.
        count = (volume.shape[0], region_hi[0] - region_lo[0], region_hi[1] - region_lo[1])
        sampled = to_model_lattice(volume, self.ratio, start=(offset[0], *region_lo),
                                   count=count, offset=offset)
        inner_core = (core[0], slice(lo[0] - region_lo[0], hi[0] - region_lo[0]),
                      slice(lo[1] - region_lo[1], hi[1] - region_lo[1]))
        predict = self.model.predict_maps if maps else self.model.predict_region
        result = predict(sampled, core=inner_core, offset=(offset[0], region_lo[0], region_lo[1]))
        if maps:
            return {head: self._to_data(m, core, offset, lo) for head, m in result.items()}
        return self._to_data(result, core, offset, lo)

    def _to_data(self, probability: np.ndarray, core, offset, lo) -> np.ndarray:
        """Back to the data's voxels: linear interpolation between model pixels."""
        axes = [np.arange(probability.shape[0], dtype=np.float64)]
        for k, axis in enumerate((1, 2)):
            r = self.ratio[axis]
            voxels = np.arange(core[axis].start, core[axis].stop) + offset[axis]
            axes.append(np.clip(voxels / r - lo[k], 0, probability.shape[axis] - 1))
        return _sample_grid(probability.astype(np.float32), axes, order=1)
