"""Cell boundaries from raw EM: a small 3D U-Net that predicts voxel affinities.

An *affinity* of voxel ``v`` along an offset ``o`` is the probability that ``v`` and ``v - o``
belong to the same cell (Turaga et al. 2010; the input of waterz's watershed and agglomeration,
:mod:`detection.cells.segmentation`). The network predicts the three nearest-neighbour
affinities (z, y, x: the edges the watershed and the agglomeration read) and, as auxiliary
outputs that sharpen what it learns, a few long-range ones (Lee et al. 2017).

Anisotropy: in-plane, the volume is averaged over ``factor`` x ``factor`` pixels first so the
network works at about ``pixel_nm`` (as the synapse network does); along z it pools only where
sections are about as thick as network pixels (FIB-SEM), never for serial sections 50 nm thick.
Affinities, like every output of the network, stand for the block of input pixels of their
network pixel.

Prediction is tiled as the synapse network's is: every tile's input starts on the pooling grid
of the whole volume and reaches a halo past the network's receptive field, mirrored only at the
volume's own borders, so a block gives the values the whole volume gives (within 1e-4:
convolutions of different sizes round their last float bits differently; tested).

Training (:func:`train_affinities`) reads dense labels: 0 is a boundary (membrane, or no cell),
and an ``ignore`` mask leaves voxels out of the loss. Each output's cross-entropy is balanced
between its two classes per batch, since boundaries are a small share of the voxels.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detection.errors import InputError
from detection.synapses.classify import ModelMismatchError, check_voxel_size
from detection.synapses.cnn import _average, downsample_factor, select_device

logger = logging.getLogger(__name__)

MODEL_FORMAT = "connectome-affinity-net"
MODEL_FORMAT_VERSION = 1

#: The nearest-neighbour offsets, in network voxels (z, y, x); always the first three outputs.
NEAREST = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


@dataclass(frozen=True)
class AffinityParameters:
    """Architecture and training of :class:`AffinityNet`."""

    pixel_nm: float = 8.0          # in-plane network pixel (whole input pixels averaged)
    width: int = 12                # channels at the first level, doubling per level
    depth: int = 2                 # poolings
    long_range: int = 4            # auxiliary offsets of this many network pixels (0: none)
    patch: tuple = (24, 96, 96)    # training patch (z, y, x) network voxels; z is capped by data
    batch: int = 2
    iterations: int = 1500
    learning_rate: float = 2e-3
    seed: int = 0
    noise_sigma: float = 0.1       # Gaussian noise up to this, in standardised units
    missing_probability: float = 0.1  # one section blanked (serial sections only)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AffinityParameters:
        values = dict(values)
        values["patch"] = tuple(values.get("patch", cls.patch))
        return cls(**values)


def z_pools(voxel_size, pixel_nm: float) -> bool:
    """Whether the network pools along z: sections at most twice as thick as network pixels."""
    factor = downsample_factor(voxel_size, pixel_nm)
    return float(voxel_size[0]) <= 2.0 * factor * min(float(v) for v in voxel_size[1:])


def offsets_for(parameters: AffinityParameters,
                isotropic: bool) -> tuple[tuple[int, int, int], ...]:
    """The network's output offsets: the nearest three, then the long-range ones (along z only
    where sections are thin)."""
    r = int(parameters.long_range)
    if r <= 1:
        return NEAREST
    far = ((r, 0, 0),) if isotropic else ()
    return NEAREST + far + ((0, r, 0), (0, 0, r))


class _UNet3d(nn.Module):
    def __init__(self, width: int, depth: int, pools: list[tuple[int, int, int]], outputs: int):
        super().__init__()

        def block(a, b):
            return nn.Sequential(nn.Conv3d(a, b, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv3d(b, b, 3, padding=1), nn.ReLU(inplace=True))

        widths = [width * 2 ** level for level in range(depth + 1)]
        self.pools = [tuple(p) for p in pools]
        self.down = nn.ModuleList([block(1, widths[0])] +
                                  [block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(widths[i], widths[i - 1], self.pools[i - 1],
                                                    stride=self.pools[i - 1])
                                 for i in range(depth, 0, -1)])
        self.merge = nn.ModuleList([block(2 * widths[i - 1], widths[i - 1])
                                    for i in range(depth, 0, -1)])
        self.head = nn.Conv3d(widths[0], outputs, 1)

    def forward(self, x):
        """(N, 1, Z, Y, X) -> (N, outputs, Z, Y, X) logits."""
        skips = []
        for i, level in enumerate(self.down):
            if i:
                x = F.max_pool3d(x, self.pools[i - 1])
            x = level(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def receptive_radius(pools: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Network voxels on each side, per axis, that reach an output voxel: two 3-wide
    convolutions per level going down and coming up, each level's voxels as wide as the
    poolings above it, plus the pooling windows."""
    radius = []
    for axis in range(3):
        scale, r = 1, 0
        scales = [1]
        for p in pools:
            r += (p[axis] - 1) * scale
            scale *= p[axis]
            scales.append(scale)
        r += sum(2 * s for s in scales) + sum(2 * s for s in scales[:-1])
        radius.append(r)
    return tuple(radius)


def affinity_targets(labels: np.ndarray, offsets, *, ignore: np.ndarray | None = None):
    """Affinity targets of dense labels, one channel per offset.

    Returns ``(targets, valid)``: ``targets[c, v]`` is 1 where ``v`` and ``v - offsets[c]`` hold
    the same non-zero label, else 0; ``valid`` is false where ``v - offset`` lies outside the
    array or either voxel is ignored. Label 0 is a boundary: every edge touching it is 0.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    targets = np.zeros((len(offsets),) + shape, np.float32)
    valid = np.zeros((len(offsets),) + shape, bool)
    for c, offset in enumerate(offsets):
        here = tuple(slice(o, None) for o in offset)
        there = tuple(slice(0, s - o) for o, s in zip(offset, shape))
        a, b = labels[here], labels[there]
        targets[(c,) + here] = (a == b) & (a != 0)
        v = np.ones(a.shape, bool)
        if ignore is not None:
            v &= ~(ignore[here] | ignore[there])
        valid[(c,) + here] = v
    return targets, valid


def affinities_from_boundary(boundary: np.ndarray) -> np.ndarray:
    """Nearest-neighbour affinities of a boundary probability map: each edge is as likely to join
    its voxels as the less likely boundary of the two is absent, ``1 - max(b[v], b[v - e])``.
    Edges off the volume's low faces get 0."""
    boundary = np.asarray(boundary, np.float32)
    affs = np.zeros((3,) + boundary.shape, np.float32)
    for c, offset in enumerate(NEAREST):
        here = tuple(slice(o, None) for o in offset)
        there = tuple(slice(0, s - o) for o, s in zip(offset, boundary.shape))
        affs[(c,) + here] = 1.0 - np.maximum(boundary[here], boundary[there])
    return affs


def network_labels(labels: np.ndarray, factor: int) -> np.ndarray:
    """Dense labels at network pixels: the label at the centre of each ``factor`` x ``factor``
    block (edge blocks clipped to the volume)."""
    labels = np.asarray(labels)
    if factor == 1:
        return labels
    _, y, x = labels.shape
    ys = np.minimum(np.arange(-(-y // factor)) * factor + factor // 2, y - 1)
    xs = np.minimum(np.arange(-(-x // factor)) * factor + factor // 2, x - 1)
    return labels[:, ys][:, :, xs]


class AffinityNet:
    """A trained affinity network with its voxel size, normalisation and parameters.

    ``agglomeration`` holds what the segmentation that follows it needs and was chosen with it
    (the merge threshold chosen by cross-validation, and how; see
    :mod:`detection.cells.segmentation`).
    """

    def __init__(self, *, voxel_size, parameters: AffinityParameters, mean: float, std: float,
                 state: dict | None = None, training: dict | None = None,
                 agglomeration: dict | None = None, device=None):
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.parameters = parameters
        self.mean, self.std = float(mean), float(std)
        self.training = training or {}
        self.agglomeration = agglomeration or {}
        self.factor = downsample_factor(self.voxel_size, parameters.pixel_nm)
        self.isotropic = z_pools(self.voxel_size, parameters.pixel_nm)
        self.offsets = offsets_for(parameters, self.isotropic)
        self.pools = [(2 if self.isotropic else 1, 2, 2)] * parameters.depth
        self.device = select_device(device)
        self.net = _UNet3d(parameters.width, parameters.depth, self.pools, len(self.offsets))
        if state is not None:
            self.net.load_state_dict(state)
        self.net.to(self.device).eval()

    @property
    def network_voxel_size(self) -> tuple[float, float, float]:
        return (self.voxel_size[0], self.voxel_size[1] * self.factor,
                self.voxel_size[2] * self.factor)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Network voxels of the deepest pooling cell, per axis."""
        return tuple(int(np.prod([p[a] for p in self.pools])) for a in range(3))

    @property
    def grid_step(self) -> tuple[int, int, int]:
        """Input voxels one network voxel stands for; blocks start on multiples of it."""
        return (1, self.factor, self.factor)

    @property
    def halo_network(self) -> tuple[int, int, int]:
        """Network voxels read around a tile: the receptive radius, rounded up to the grid."""
        return tuple(-(-r // g) * g for r, g in zip(receptive_radius(self.pools), self.grid))

    def halo_voxels(self) -> tuple[int, int, int]:
        """Input voxels a block must be read with on each side: the tiles' halo plus one
        pooling cell, which aligning a block on the whole volume's grid may cost."""
        return tuple((h + g) * s for h, g, s in zip(self.halo_network, self.grid, self.grid_step))

    def normalise(self, volume: np.ndarray) -> np.ndarray:
        """(Z, Y, X) intensities -> standardised network voxels."""
        return (_average(volume, self.factor) - self.mean) / self.std

    def _inference_net(self) -> nn.Module:
        net = self.net.eval()
        if self.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last_3d)
        return net

    def predict_network(self, data: np.ndarray, *, window=None, tile=(32, 128, 128),
                        outputs: int = 3) -> np.ndarray:
        """Affinities at network voxels of standardised ``data`` (Z, Y, X) whose first voxel lies
        on the whole volume's pooling grid and which already holds the halo around ``window``
        (z0, z1, y0, y1, x0, x1; all of ``data`` by default; the halo is mirrored where the data
        ends). Returns (outputs, window shape) float32."""
        shape = data.shape
        window = window or (0, shape[0], 0, shape[1], 0, shape[2])
        lo, hi = window[0::2], window[1::2]
        halo, grid = self.halo_network, self.grid
        out = np.zeros((outputs,) + tuple(h - l for l, h in zip(lo, hi)), np.float32)
        tile = tuple(max(g, t // g * g) for t, g in zip(tile, grid))
        net = self._inference_net()
        starts = [range(l, h, t) for l, h, t in zip(lo, hi, tile)]
        with torch.inference_mode():
            for z0 in starts[0]:
                for y0 in starts[1]:
                    for x0 in starts[2]:
                        t0 = (z0, y0, x0)
                        t1 = tuple(min(a + t, h) for a, t, h in zip(t0, tile, hi))
                        # Tiles start on the grid (window starts do, tiles are whole cells).
                        a = [s - hh for s, hh in zip(t0, halo)]
                        b = [e + hh for e, hh in zip(t1, halo)]
                        b = [s + -(-(e - s) // g) * g for s, e, g in zip(a, b, grid)]
                        piece = _mirrored(data, a, b)
                        x = torch.from_numpy(piece[None, None]).to(self.device)
                        if self.device.type == "cpu":
                            x = x.contiguous(memory_format=torch.channels_last_3d)
                        y = torch.sigmoid(net(x)[0, :outputs]).float().cpu().numpy()
                        core = tuple(slice(s - aa, e - aa) for s, e, aa in zip(t0, t1, a))
                        dest = tuple(slice(s - l, e - l) for s, e, l in zip(t0, t1, lo))
                        out[(slice(None),) + dest] = y[(slice(None),) + core]
        return out

    def predict_region(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0),
                       whole_shape=None, outputs: int = 3) -> np.ndarray:
        """Nearest-neighbour affinities (3, Z, Y, X) at input voxels of ``core`` (slices into
        ``volume``; all of it by default).

        ``volume`` must hold :meth:`halo_voxels` around the core wherever the whole volume (of
        ``whole_shape``, by default ``volume``'s own) has them; ``offset`` is the global index of
        its first voxel. The core must start on multiples of ``factor`` in-plane. Each input
        voxel takes the affinities of its network voxel (so in-plane edges inside one network
        pixel read that pixel's value).
        """
        volume = np.asarray(volume)
        core = core or tuple(slice(0, s) for s in volume.shape)
        whole_shape = tuple(whole_shape or volume.shape)
        f, g = self.factor, self.grid
        for c, o in zip(core[1:], offset[1:]):
            if (c.start + o) % f:
                raise InputError(f"a block must start on multiples of {f} voxels in-plane, not "
                                 f"{c.start + o}")
        # The region read, in global input voxels, aligned to the pooling grid of network voxels.
        step = (1, f, f)
        first = [(c.start + o) // s for c, o, s in zip(core, offset, step)]
        last = [-(-(c.stop + o) // s) for c, o, s in zip(core, offset, step)]
        whole_net = [-(-n // s) for n, s in zip(whole_shape, step)]
        lead = [max(0, (a - h) // gg * gg) for a, h, gg in zip(first, self.halo_network, g)]
        tail = [min(n, b + h) for b, h, n in zip(last, self.halo_network, whole_net)]
        lo = [ld * s - o for ld, s, o in zip(lead, step, offset)]
        hi = [min(t * s, n) - o for t, s, n, o in zip(tail, step, whole_shape, offset)]
        if min(lo) < 0 or any(h > n for h, n in zip(hi, volume.shape)):
            raise InputError("the volume given does not hold the halo the network needs around "
                             f"the block (needs {lo}..{hi} of {volume.shape})")
        data = self.normalise(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).astype(np.float32)
        data = _mirrored(data, [0, 0, 0], [t - ld for t, ld in zip(tail, lead)])
        window = (first[0] - lead[0], last[0] - lead[0], first[1] - lead[1], last[1] - lead[1],
                  first[2] - lead[2], last[2] - lead[2])
        affs = self.predict_network(data, window=window, outputs=outputs)
        if f > 1:
            affs = np.repeat(np.repeat(affs, f, axis=2), f, axis=3)
        skip = [c.start + o - n * s for c, o, n, s in zip(core, offset, first, step)]
        return np.ascontiguousarray(affs[:, :, skip[1]: skip[1] + core[1].stop - core[1].start,
                                         skip[2]: skip[2] + core[2].stop - core[2].start])

    # -- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        path = Path(path)
        header = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
                  "voxel_size": list(self.voxel_size), "parameters": self.parameters.to_dict(),
                  "mean": self.mean, "std": self.std, "training": self.training,
                  "agglomeration": self.agglomeration}
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, buffer)
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path, *, voxel_size=None, allow_other_voxel_size: bool = False,
             device=None) -> AffinityNet:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != MODEL_FORMAT:
                    raise InputError("not an affinity network file")
                state = torch.load(io.BytesIO(f.read()), weights_only=True, map_location="cpu")
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            raise ModelMismatchError(f"{path.name}: cannot read affinity model file ({exc})") \
                from exc
        if header.get("version", 0) > MODEL_FORMAT_VERSION:
            raise ModelMismatchError(f"{path.name}: affinity model format {header['version']} is "
                                     f"newer than this library reads ({MODEL_FORMAT_VERSION})")
        try:
            model = cls(voxel_size=header["voxel_size"],
                        parameters=AffinityParameters.from_dict(header["parameters"]),
                        mean=header["mean"], std=header["std"], state=state,
                        training=header.get("training"),
                        agglomeration=header.get("agglomeration"), device=device)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ModelMismatchError(f"{path.name}: the header and weights do not make an "
                                     f"affinity network ({exc})") from exc
        if voxel_size is not None:
            check_voxel_size(model.voxel_size, voxel_size, allow_other=allow_other_voxel_size,
                             source=path.name)
        return model


def _mirrored(data: np.ndarray, lo, hi) -> np.ndarray:
    """``data[lo:hi]`` per axis, mirrored (symmetric) where the range passes the array's ends."""
    pad = [(max(0, -a), max(0, b - n)) for a, b, n in zip(lo, hi, data.shape)]
    inner = data[tuple(slice(max(0, a), min(b, n)) for a, b, n in zip(lo, hi, data.shape))]
    if any(p != (0, 0) for p in pad):
        while any(p[0] > s or p[1] > s for p, s in zip(pad, inner.shape)):
            # np.pad's symmetric mode reflects at most the array's size per call.
            step = [(min(p[0], s), min(p[1], s)) for p, s in zip(pad, inner.shape)]
            inner = np.pad(inner, step, mode="symmetric")
            pad = [(p[0] - s[0], p[1] - s[1]) for p, s in zip(pad, step)]
        inner = np.pad(inner, pad, mode="symmetric")
    return np.ascontiguousarray(inner, dtype=np.float32)


@dataclass
class LabelVolume:
    """A volume with dense cell labels to train on.

    name : says which volume in messages
    em : (Z, Y, X) EM intensities
    voxel_size : (z, y, x) nm
    labels : (Z, Y, X) integer cell ids, 0 boundary (membrane, or no cell)
    ignore : (Z, Y, X) bool, voxels left out of the loss (unlabelled, or held out)
    """

    name: str
    em: np.ndarray
    voxel_size: tuple
    labels: np.ndarray
    ignore: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _augment(image, labels, ignore, rng, p: AffinityParameters, isotropic: bool):
    """Flips along every axis, in-plane transposes (and any transpose where the data is
    isotropic), contrast, noise, and a blank section for serial sections."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels, ignore = (np.flip(a, axis) for a in (image, labels, ignore))
    if image.shape[1] == image.shape[2] and rng.random() < 0.5:
        image, labels, ignore = (np.swapaxes(a, 1, 2) for a in (image, labels, ignore))
    if isotropic and len(set(image.shape)) == 1 and rng.random() < 0.5:
        image, labels, ignore = (np.swapaxes(a, 0, 1) for a in (image, labels, ignore))
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
    image = image + rng.normal(0.0, rng.uniform(0.0, p.noise_sigma), size=image.shape)
    if not isotropic and image.shape[0] > 2 and rng.random() < p.missing_probability:
        image[int(rng.integers(1, image.shape[0] - 1))] = rng.uniform(-1.0, 1.0)
    return (np.ascontiguousarray(image, np.float32), np.ascontiguousarray(labels),
            np.ascontiguousarray(ignore))


def balanced_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor):
    """Binary cross-entropy per output channel, each class weighted to half of the channel's
    valid voxels, so the rare boundary edges count as much as the rest; channels averaged, the
    nearest-neighbour ones (the first three) counting double.

    logits, targets : (N, C, Z, Y, X) float tensors; valid : (N, C, Z, Y, X) bool tensor.
    """
    dims = (0, 2, 3, 4)
    shape = (1, -1, 1, 1, 1)
    valid = valid.to(logits.dtype)
    n = valid.sum(dim=dims)
    positive = (targets * valid).sum(dim=dims)
    w_pos = (n / (2 * positive.clamp(min=1))).reshape(shape)
    w_neg = (n / (2 * (n - positive).clamp(min=1))).reshape(shape)
    weight = valid * (targets * w_pos + (1 - targets) * w_neg)
    bce = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="none")
    per_channel = bce.sum(dim=dims) / n.clamp(min=1)
    k = torch.ones_like(per_channel)
    k[:3] = 2.0
    k = k * (n > 0)
    return (k * per_channel).sum() / k.sum().clamp(min=1)


def train_affinities(volumes, *, voxel_size, parameters: AffinityParameters = AffinityParameters(),
                     progress=None, device=None) -> AffinityNet:
    """Train the affinity network on volumes with dense labels, all at ``voxel_size``.

    Patches are drawn across volumes in proportion to their labelled voxels; intensities are
    standardised with the mean and spread of all volumes together.
    """
    volumes = list(volumes)
    if not volumes:
        raise InputError("training needs at least one labelled volume")
    voxel_size = tuple(float(v) for v in voxel_size)
    p = parameters
    factor = downsample_factor(voxel_size, p.pixel_nm)
    data, labels, ignores = [], [], []
    for v in volumes:
        em, lab = np.asarray(v.em), np.asarray(v.labels)
        if em.ndim != 3 or lab.shape != em.shape:
            raise InputError(f"{v.name}: volume {em.shape} and labels {lab.shape} must be the "
                             "same 3-D shape")
        if not np.allclose(tuple(float(x) for x in v.voxel_size), voxel_size, rtol=1e-3):
            raise InputError(f"{v.name}: voxel size {tuple(v.voxel_size)} nm differs from "
                             f"{voxel_size} nm")
        ign = np.zeros(em.shape, bool) if v.ignore is None else np.asarray(v.ignore, bool)
        data.append(_average(em, factor))
        labels.append(network_labels(lab, factor))
        ignores.append(network_labels(ign, factor).astype(bool))
    count = sum(d.size for d in data)
    mean = sum(float(d.sum(dtype=np.float64)) for d in data) / count
    spread = sum(float(((d - mean) ** 2).sum(dtype=np.float64)) for d in data)
    std = float(np.sqrt(spread / count)) or 1.0
    data = [((d - mean) / std).astype(np.float32) for d in data]
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    model = AffinityNet(voxel_size=voxel_size, parameters=p, mean=mean, std=std, device=device)
    grid = model.grid
    patch = []
    for d in data:
        # Whole pooling cells, no larger than the volume.
        patch.append(tuple(max(g, min(s, n) // g * g) for s, n, g in zip(p.patch, d.shape, grid)))
    labelled = np.array([float((~i).sum()) for i in ignores])
    if labelled.sum() == 0:
        raise InputError("every voxel of the training volumes is ignored")
    shares = labelled / labelled.sum()
    net = model.net
    channels_last = model.device.type == "cpu"
    if channels_last:
        # oneDNN's 3D convolutions run faster on channels-last tensors.
        net = net.to(memory_format=torch.channels_last_3d)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=p.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=p.learning_rate,
                                                   total_steps=p.iterations, pct_start=0.1)
    started = shown = time.perf_counter()
    loss = torch.zeros(())
    for step in range(p.iterations):
        images, targets, valids = [], [], []
        k = int(rng.choice(len(data), p=shares))
        size = patch[k]
        for _ in range(p.batch):
            d, lab, ign = data[k], labels[k], ignores[k]
            start = [int(rng.integers(0, n - s + 1)) for n, s in zip(d.shape, size)]
            box = tuple(slice(a, a + s) for a, s in zip(start, size))
            image, lab_p, ign_p = _augment(d[box].copy(), lab[box], ign[box], rng, p,
                                           model.isotropic)
            t, valid = affinity_targets(lab_p, model.offsets, ignore=ign_p)
            images.append(image[None])
            targets.append(t)
            valids.append(valid)
        x = torch.from_numpy(np.stack(images)).to(model.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        logits = net(x)
        loss = balanced_loss(logits, torch.from_numpy(np.stack(targets)).to(model.device),
                             torch.from_numpy(np.stack(valids)).to(model.device))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, p.iterations)
        if time.perf_counter() - shown > 60:
            shown = time.perf_counter()
            logger.info("step %d / %d, loss %.4f, %.0f s", step + 1, p.iterations, loss.item(),
                        shown - started)
    net.eval()
    model.training = {
        "iterations": p.iterations, "seconds": round(time.perf_counter() - started, 1),
        "final_loss": float(loss.item()),
        "volumes": [{"name": v.name, "shape": list(np.shape(v.em)),
                     "labelled_network_voxels": int(n), "share": round(float(s), 4)}
                    for v, n, s in zip(volumes, labelled, shares)]}
    return model

