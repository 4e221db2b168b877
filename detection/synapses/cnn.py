"""Synapse probability, and maps of vesicles, mitochondria and membranes, from one small
convolutional network, in the lineage of SyConn's and Cnapse's CNN maps (Dorkenwald et al. 2017;
a U-Net, Ronneberger et al. 2015).

A 2D U-Net reads each section together with its neighbours (2.5D: ``context_sections`` on each
side as input channels), which suits serial-section EM whose sections are 5-10 times thicker than
its pixels. Its last 1 x 1 convolution gives one output channel per head (:data:`HEADS`):
"synapse" (cleft / density), "vesicles", "mitochondria" and "membrane", all read from the same
features. The network works at about ``pixel_nm`` in-plane: the volume is averaged over
``factor`` x ``factor`` pixels first, and each output pixel's value stands for that block of
input pixels (as the voxel classifier's grid voxels do).

Training (:func:`train_network`) reads several volumes at one voxel size. Each head is trained
only where its labels exist: its loss is masked to the pixels whose target is 0 or 1, and a
volume without a map for a head (no vesicle labels on real volumes) gives that head no loss, so
no gradient, on its patches. The synapse head's binary cross-entropy is weighted per synapse
instance inversely to its size (see :func:`instance_weights`). Patches are flipped, rotated,
their neighbour sections reversed, contrasted, and corrupted as serial sections are (noise, one
blurred section, a blank neighbour section, neighbours shifted by a few pixels:
:func:`augment_patch`).

Prediction is tiled: every tile starts on the network's pooling grid and reads a ``halo`` wider
than the network's receptive field, the volume's own borders are mirrored, and only the pixels a
caller asks for are computed, so a tile or a block gives the values of the whole volume (up to
float rounding; tested).

The network runs on CUDA when there is one, else on the CPU; ``CONNECTOME_DEVICE=cpu|cuda``
overrides that (:func:`select_device`). Model files hold CPU tensors and load on either.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detection.errors import InputError
from detection.synapses.calibration import Calibration
from detection.synapses.classify import ModelMismatchError, check_voxel_size
from detection.synapses.model_files import NETWORK as MODEL_FORMAT

logger = logging.getLogger(__name__)

#: 2: several heads (``heads`` in the header); 1: the synapse head alone (still read).
MODEL_FORMAT_VERSION = 2

#: The network's output channels, in this order; "synapse" always comes first.
HEADS = ("synapse", "vesicles", "mitochondria", "membrane")

#: Environment variable that picks the device ("cpu" or "cuda") when the caller names none.
DEVICE_VARIABLE = "CONNECTOME_DEVICE"


def select_device(device=None) -> torch.device:
    """The device a network runs on: ``device`` when given, else ``$CONNECTOME_DEVICE``
    ("cpu" or "cuda"), else CUDA when ``torch.cuda.is_available()``, else the CPU."""
    source = "device"
    if device is None:
        device = os.environ.get(DEVICE_VARIABLE, "").strip().lower() or None
        source = DEVICE_VARIABLE
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"{source} {str(device)!r}: expected 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{source} {str(device)!r}: CUDA is not available to this process "
                         "(a CPU build of torch, or no GPU)")
    return device


@dataclass(frozen=True)
class Augmentation:
    """Corruptions of training patches, each with its probability per patch; intensities in
    standardised units, distances in network pixels."""

    noise_probability: float = 0.5
    noise_sigma: float = 0.15         # Gaussian noise of a standard deviation up to this
    blur_probability: float = 0.2
    blur_sigma: float = 1.5           # one section blurred with a sigma up to this
    missing_probability: float = 0.1  # one neighbour section blank (one grey value)
    misalign_probability: float = 0.3
    misalign_pixels: int = 2          # each neighbour section shifted by up to this in y and x


@dataclass(frozen=True)
class CnnParameters:
    """Architecture and training of :class:`SynapseCnn`."""

    pixel_nm: float = 10.0         # in-plane pixel the network works at (whole input pixels)
    context_sections: int = 1      # sections read on each side of the one scored
    width: int = 16                # channels at the first level, doubling per level
    depth: int = 3                 # poolings
    patch: int = 128               # training patch side, network pixels
    batch: int = 8
    iterations: int = 1200
    learning_rate: float = 1e-3
    positive_fraction: float = 0.5  # patches centred on a synapse voxel
    seed: int = 0
    heads: tuple = HEADS           # output channels; training keeps those that have labels
    aux_weight: float = 0.5        # weight of each other head's loss next to the synapse head's
    max_instance_weight: float = 8.0  # bound of the per-synapse weights (and 1 / it below)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self):
        heads = tuple(self.heads)
        if not heads or heads[0] != "synapse" or len(set(heads)) != len(heads) or \
                not set(heads) <= set(HEADS):
            raise InputError(f"heads {heads}: expected 'synapse' first, then any of {HEADS[1:]} "
                             "once each")
        object.__setattr__(self, "heads", heads)
        if isinstance(self.augmentation, dict):
            object.__setattr__(self, "augmentation", Augmentation(**self.augmentation))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, version: int = MODEL_FORMAT_VERSION) -> "CnnParameters":
        """Parameters of a model file's header; a version-1 file's network has one head."""
        values = dict(values)
        if version < 2:
            values["heads"] = ("synapse",)
        return cls(**values)


class _UNet2d(nn.Module):
    def __init__(self, in_channels: int, width: int, depth: int, heads: int = 1):
        super().__init__()

        def block(a, b):
            return nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True))

        widths = [width * 2 ** level for level in range(depth + 1)]
        self.down = nn.ModuleList([block(in_channels, widths[0])] +
                                  [block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                 for i in range(depth, 0, -1)])
        self.merge = nn.ModuleList([block(2 * widths[i - 1], widths[i - 1])
                                    for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(widths[0], heads, 1)

    def forward(self, x):
        """(N, C, Y, X) -> (N, heads, Y, X) logits."""
        skips = []
        for i, level in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _fused(net: _UNet2d) -> _UNet2d:
    """A copy of an evaluation-mode network with every batch norm folded into the convolution
    before it: the same function (up to float rounding) with a third fewer passes over memory."""
    net = copy.deepcopy(net).eval()
    for blocks in (net.down, net.merge):
        for i, seq in enumerate(blocks):
            conv1, bn1, relu1, conv2, bn2, relu2 = seq
            blocks[i] = nn.Sequential(fuse_conv_bn_eval(conv1, bn1), relu1,
                                      fuse_conv_bn_eval(conv2, bn2), relu2)
    return net


def receptive_radius(depth: int) -> int:
    """Pixels on each side that reach an output pixel: two 3x3 convolutions per level going
    down and coming up, each level's pixels 2**level wide, plus the pooling windows."""
    down = sum(2 * 2 ** level for level in range(depth + 1))
    up = sum(2 * 2 ** level for level in range(depth))
    return down + up + 2 ** depth


def downsample_factor(voxel_size, pixel_nm: float) -> int:
    """Whole input pixels per network pixel in-plane: the largest not above ``pixel_nm``."""
    return max(1, int(np.floor(pixel_nm / min(voxel_size[1:]) + 1e-6)))


def _average(volume: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) -> (Z, ceil(Y/f), ceil(X/f)) float32 block means (edge blocks mirrored to
    their full size)."""
    volume = np.asarray(volume, dtype=np.float32)
    if factor == 1:
        return volume
    z, y, x = volume.shape
    pad = ((0, 0), (0, -y % factor), (0, -x % factor))
    if any(p[1] for p in pad):
        volume = np.pad(volume, pad, mode="symmetric")
    return volume.reshape(z, volume.shape[1] // factor, factor, volume.shape[2] // factor,
                          factor).mean(axis=(2, 4))


def network_targets(targets: np.ndarray, factor: int) -> np.ndarray:
    """Targets at network pixels: positive where at least half the block is a synapse, negative
    where all of it is negative, ignore otherwise (a block that straddles a boundary)."""
    targets = np.asarray(targets, dtype=np.int8)
    if factor == 1:
        return targets.copy()
    z, y, x = targets.shape
    t = np.pad(targets, ((0, 0), (0, -y % factor), (0, -x % factor)), constant_values=-1)
    blocks = t.reshape(z, t.shape[1] // factor, factor, t.shape[2] // factor, factor)
    positive = (blocks == 1).mean(axis=(2, 4)) >= 0.5
    negative = (blocks == 0).all(axis=(2, 4))
    return np.where(positive, 1, np.where(negative, 0, -1)).astype(np.int8)


def _block_max(ids: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) ids -> the largest id in each ``factor`` x ``factor`` block in-plane."""
    z, y, x = ids.shape
    ids = np.pad(ids, ((0, 0), (0, -y % factor), (0, -x % factor)))
    return ids.reshape(z, ids.shape[1] // factor, factor, ids.shape[2] // factor,
                       factor).max(axis=(2, 4))


def _stack(volume: np.ndarray, context: int) -> np.ndarray:
    """(Z, Y, X) -> (Z, 2c+1, Y, X): each section with its neighbours, edges repeated."""
    z = volume.shape[0]
    index = np.clip(np.arange(z)[:, None] + np.arange(-context, context + 1)[None], 0, z - 1)
    return volume[index]


def instance_weights(labels: np.ndarray, *, sites: np.ndarray | None = None,
                     max_weight: float = 8.0) -> np.ndarray:
    """Per-pixel weights of the synapse head's loss: 1 on non-synapse (and ignored) pixels; on
    a synapse's pixels ``median synapse size / its size``, bounded to [1, max_weight].

    Plain cross-entropy counts pixels, so a synapse cut in one section by a few pixels weighs
    next to nothing beside one spread over five sections, and a network can miss every small
    synapse at little cost. Weighting each synapse smaller than the median inversely to its size
    gives it the total weight of a median synapse, so small, single-section synapses count as
    much as typical ones. Larger synapses keep weight 1 rather than less: lowering them lowered
    their probability below the hysteresis thresholds on the phantoms, and they are found
    anyway. The upper bound keeps a one-pixel fragment from dominating a batch. (A soft Dice on
    the synapse head would weigh the positive class as a whole, but not one synapse against
    another.) Sizes are counted in network pixels, per 3D instance.

    Parameters
    ----------
    labels : (Z, Y, X) int8 ndarray
        Targets at network pixels, 1 synapse / 0 not / -1 ignore.
    sites : (Z, Y, X) integer ndarray, optional
        Synapse ids at the same pixels; positive pixels without an id, or all of them when
        omitted, are grouped into face-connected 3D components.

    Returns
    -------
    (Z, Y, X) float32 ndarray
    """
    positive = labels == 1
    weights = np.ones(labels.shape, np.float32)
    if not positive.any():
        return weights
    ids = np.zeros(labels.shape, np.int64)
    if sites is not None:
        ids[positive] = sites[positive]
    components, _ = ndi.label(positive & (ids == 0))
    ids[components > 0] = components[components > 0] + (ids.max() + 1)
    _, inverse, sizes = np.unique(ids[positive], return_inverse=True, return_counts=True)
    reference = float(np.median(sizes))
    weights[positive] = np.clip(reference / sizes[inverse], 1.0, max_weight)
    return weights


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *,
                aux_weight: float = 0.5) -> tuple[torch.Tensor, dict]:
    """Loss of a batch: per head, the (weighted) binary cross-entropy over its labelled pixels.

    Parameters
    ----------
    logits : (N, H, Y, X) float tensor
    targets : (N, H, Y, X) int8 tensor, 1 / 0 / -1 (no label: no loss)
    weights : (N, Y, X) float tensor, the synapse head's pixel weights (:func:`instance_weights`)

    Returns
    -------
    The synapse head's mean weighted cross-entropy plus ``aux_weight`` times each other head's
    mean cross-entropy, and each head's mean loss, by head index. A head without one labelled
    pixel in the batch adds nothing, so its output channel gets no gradient.
    """
    total = logits.new_zeros(())
    parts = {}
    for h in range(logits.shape[1]):
        valid = targets[:, h] >= 0
        if not bool(valid.any()):
            continue
        target = targets[:, h][valid].float()
        if h == 0:
            w = weights[valid]
            loss = (F.binary_cross_entropy_with_logits(logits[:, h][valid], target, weight=w,
                                                       reduction="sum") / w.sum())
            total = total + loss
        else:
            loss = F.binary_cross_entropy_with_logits(logits[:, h][valid], target)
            total = total + aux_weight * loss
        parts[h] = loss.detach()
    return total, parts


def augment_patch(image: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                  rng: np.random.Generator, augmentation: Augmentation = Augmentation()):
    """One training patch, corrupted as serial sections are and turned at random.

    Parameters
    ----------
    image : (C, P + 2m, P + 2m) float32 ndarray
        The section scored in the middle channel, its neighbours around it, read with a margin
        of ``m = augmentation.misalign_pixels`` on each side.
    labels : (H, P, P) int8 ndarray, one target map per head, of the middle section
    weights : (P, P) float32 ndarray, the synapse head's pixel weights

    Returns
    -------
    image : (C, P, P) float32, labels : (H, P, P) int8, weights : (P, P) float32

    The neighbour sections (never the middle one, which the labels belong to) are shifted by
    up to ``m`` pixels each, and one of them may be blank; one section may be blurred; the
    patch is rotated by a multiple of 90 degrees, maybe flipped, its sections maybe reversed;
    contrast and brightness change and Gaussian noise is added.
    """
    a = augmentation
    channels = image.shape[0]
    centre = channels // 2
    m = a.misalign_pixels
    p = image.shape[1] - 2 * m
    if labels.shape[1:] != (p, p) or weights.shape != (p, p):
        raise InputError(f"patch labels {labels.shape} and weights {weights.shape} must be "
                         f"{p} x {p}, the image {image.shape} less a margin of {m}")
    shifts = np.zeros((channels, 2), int)
    if channels > 1 and rng.random() < a.misalign_probability:
        shifts = rng.integers(-m, m + 1, size=(channels, 2))
        shifts[centre] = 0
    image = np.stack([image[c, m + dy: m + dy + p, m + dx: m + dx + p]
                      for c, (dy, dx) in enumerate(shifts)])
    if rng.random() < a.blur_probability:
        c = int(rng.integers(channels))
        image[c] = ndi.gaussian_filter(image[c], rng.uniform(0.5, a.blur_sigma), mode="reflect")
    if channels > 1 and rng.random() < a.missing_probability:
        c = int(rng.choice([c for c in range(channels) if c != centre]))
        image[c] = rng.uniform(-1.0, 1.0)
    k = int(rng.integers(4))
    image, labels, weights = (np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k, axes=(1, 2)),
                              np.rot90(weights, k))
    if rng.random() < 0.5:
        image, labels, weights = image[:, :, ::-1], labels[:, :, ::-1], weights[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1]
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
    if rng.random() < a.noise_probability:
        image = image + rng.normal(0.0, rng.uniform(0.0, a.noise_sigma), size=image.shape)
    return (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels),
            np.ascontiguousarray(weights))


class SynapseCnn:
    """A trained multi-head network with its voxel size, input normalisation and parameters.

    ``device`` (see :func:`select_device`) is where the network runs, for training and
    prediction alike; the weights are stored on the CPU in model files.
    """

    def __init__(self, *, voxel_size, parameters: CnnParameters, mean: float, std: float,
                 state: dict | None = None, training: dict | None = None,
                 calibration: Calibration | None = None, device=None):
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.parameters = parameters
        self.mean, self.std = float(mean), float(std)
        self.training = training or {}
        self.calibration = calibration
        self.factor = downsample_factor(self.voxel_size, parameters.pixel_nm)
        self.device = select_device(device)
        self.net = _UNet2d(2 * parameters.context_sections + 1, parameters.width,
                           parameters.depth, heads=len(parameters.heads))
        if state is not None:
            self.net.load_state_dict(state)
        self.net.to(self.device).eval()

    @property
    def heads(self) -> tuple[str, ...]:
        """Names of the output channels, "synapse" first."""
        return self.parameters.heads

    @property
    def grid_step(self) -> tuple[int, int, int]:
        """Voxels one network pixel stands for; blocks start on multiples of it."""
        return (1, self.factor, self.factor)

    @property
    def halo_pixels(self) -> int:
        """Network pixels read around a tile: the receptive radius, rounded up to the pooling
        grid."""
        grid = 2 ** self.parameters.depth
        return -(-receptive_radius(self.parameters.depth) // grid) * grid

    def halo_voxels(self) -> tuple[int, int, int]:
        """Voxels a block must be read with on each side: the context sections, and in-plane the
        tiles' halo plus one pooling cell, which aligning the region on the pooling grid of the
        whole volume may cost."""
        grid = 2 ** self.parameters.depth
        return (self.parameters.context_sections,) + ((self.halo_pixels + grid) * self.factor,) * 2

    def _normalise(self, volume: np.ndarray) -> np.ndarray:
        return (_average(volume, self.factor) - self.mean) / self.std

    # -- scoring -------------------------------------------------------------------------
    def _inference_net(self) -> nn.Module:
        """The network as prediction runs it: batch norms folded into the convolutions, and on
        the CPU in channels-last layout (faster with oneDNN). Built per call, so changes to
        ``net`` always show."""
        net = _fused(self.net)
        if self.device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        return net

    def predict_network_maps(self, sections: np.ndarray, *, window=None, heads=None,
                             tile: int = 512, batch: int | None = None) -> np.ndarray:
        """Probabilities at network pixels of normalised, averaged (Z, 2c+1, Y, X) stacks.

        Parameters
        ----------
        sections : (Z, 2c + 1, Y, X) float32 ndarray
            The stacks' first pixel must lie on the pooling grid of the whole volume.
        window : (y0, y1, x0, x1), optional
            The network pixels to compute (all by default); the rest are read as context only.
        heads : int, optional
            Compute the first ``heads`` output channels only (all by default).
        tile, batch
            Tile side (network pixels) and sections per pass: 1 on the CPU, where the
            activations of a 512-pixel tile take about 170 MB per section and larger batches
            are no faster; 16 on CUDA.

        Returns
        -------
        (Z, heads, y1 - y0, x1 - x0) float32 ndarray

        Each tile starts on the pooling grid and reads ``halo_pixels`` around it, mirrored
        beyond the stacks' border, so tiles agree with one pass over the whole section.
        """
        grid = 2 ** self.parameters.depth
        tile = max(grid, tile // grid * grid)
        batch = batch or (16 if self.device.type == "cuda" else 1)
        halo = self.halo_pixels
        z, _, y, x = sections.shape
        y0, y1, x0, x1 = window if window is not None else (0, y, 0, x)
        n_heads = heads or len(self.heads)
        padded = np.pad(sections, ((0, 0), (0, 0), (halo, halo + -y % grid),
                                   (halo, halo + -x % grid)), mode="symmetric")
        out = np.empty((z, n_heads, y1 - y0, x1 - x0), np.float32)
        net = self._inference_net()
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        # TF32 would round the convolutions' inputs to 10 bits on recent GPUs; keep float32 so
        # CUDA gives the CPU's probabilities (within the documented tolerance).
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for ty0 in range(y0 // grid * grid, y1, tile):
                for tx0 in range(x0 // grid * grid, x1, tile):
                    ty1, tx1 = min(ty0 + tile, y1), min(tx0 + tile, x1)
                    ty = -(-(ty1 - ty0) // grid) * grid
                    tx = -(-(tx1 - tx0) // grid) * grid
                    oy, ox = max(ty0, y0), max(tx0, x0)
                    for z0 in range(0, z, batch):
                        window_ = padded[z0: z0 + batch, :, ty0: ty0 + ty + 2 * halo,
                                         tx0: tx0 + tx + 2 * halo]
                        inputs = torch.from_numpy(np.ascontiguousarray(window_)).to(
                            self.device).contiguous(memory_format=layout)
                        # Every head's sigmoid, then the slice: the synapse probability is
                        # bit for bit the same whichever heads are asked for.
                        probability = torch.sigmoid(net(inputs))[
                            :, :n_heads, halo + oy - ty0: halo + ty1 - ty0,
                            halo + ox - tx0: halo + tx1 - tx0]
                        out[z0: z0 + batch, :, oy - y0: ty1 - y0, ox - x0: tx1 - x0] = \
                            probability.cpu().numpy()
        return out

    def predict_network(self, sections: np.ndarray, *, tile: int = 512,
                        batch: int | None = None) -> np.ndarray:
        """(Z, Y, X) synapse probability at network pixels of (Z, 2c+1, Y, X) stacks, tiled (see
        :meth:`predict_network_maps`)."""
        return self.predict_network_maps(sections, heads=1, tile=tile, batch=batch)[:, 0]

    def _region_maps(self, volume: np.ndarray, core, offset, heads: int) -> np.ndarray:
        """(Z, heads, *core) probabilities of the core voxels; see :meth:`predict_region`."""
        core = tuple(core) if core is not None else tuple(slice(0, n) for n in volume.shape)
        core = tuple(slice(*c.indices(n)[:2]) for c, n in zip(core, volume.shape))
        f = self.factor
        starts = [c.start + o for c, o in zip(core[1:], offset[1:])]
        if any(s % f for s in starts):
            raise InputError(f"a block must start on multiples of {f} in-plane; it starts at "
                             f"{tuple(starts)}")
        # Drop the region's first voxels up to the whole volume's pooling grid, so network
        # pixels and pooling cells are the whole volume's.
        cell = f * 2 ** self.parameters.depth
        lead = [min((-o) % cell, c.start // f * f) for o, c in zip(offset[1:], core[1:])]
        region = volume[:, lead[0]:, lead[1]:]
        stack = _stack(self._normalise(region), self.parameters.context_sections)[core[0]]
        # Only the network pixels under the core are computed; the rest is context.
        first = [(c.start - a) // f for c, a in zip(core[1:], lead)]
        last = [-(-(c.stop - a) // f) for c, a in zip(core[1:], lead)]
        maps = self.predict_network_maps(stack.astype(np.float32), heads=heads,
                                         window=(first[0], last[0], first[1], last[1]))
        maps = np.repeat(np.repeat(maps, f, axis=2), f, axis=3)
        skip = [c.start - a - n * f for c, a, n in zip(core[1:], lead, first)]
        return maps[:, :, skip[0]: skip[0] + core[1].stop - core[1].start,
                    skip[1]: skip[1] + core[2].stop - core[2].start]

    def predict_region(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0)) -> np.ndarray:
        """Synapse probability of every voxel of ``core`` (slices into ``volume``; all by
        default), a (Z, Y, X) float32 ndarray of the core's shape.

        ``volume`` must hold ``halo_voxels()`` around the core wherever the whole volume has
        them; ``offset`` is the global index of its first voxel, which places the network's
        pixels and pooling cells: the core must start on multiples of ``factor`` in-plane.
        """
        return self._region_maps(volume, core, offset, heads=1)[:, 0]

    def predict_maps(self, volume: np.ndarray, *, core=None,
                     offset=(0, 0, 0)) -> dict[str, np.ndarray]:
        """Every head's probability over ``core``, by head name (see :attr:`heads`); the same
        reading of ``volume``, ``core`` and ``offset`` as :meth:`predict_region`, whose
        probability is the "synapse" map."""
        maps = self._region_maps(volume, core, offset, heads=len(self.heads))
        return {name: maps[:, i] for i, name in enumerate(self.heads)}

    # -- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """A JSON header line (voxel size, parameters with the heads, normalisation) then the
        weights, as CPU tensors."""
        path = Path(path)
        header = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
                  "voxel_size": list(self.voxel_size), "heads": list(self.heads),
                  "parameters": self.parameters.to_dict(),
                  "mean": self.mean, "std": self.std, "training": self.training,
                  "calibration": self.calibration.to_dict() if self.calibration else None}
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, buffer)
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path, *, voxel_size=None, allow_other_voxel_size: bool = False,
             device=None) -> "SynapseCnn":
        """A model file of either version (1: the synapse head alone), on ``device``."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != MODEL_FORMAT:
                    raise InputError("not a synapse network file")
                state = torch.load(io.BytesIO(f.read()), weights_only=True, map_location="cpu")
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            raise ModelMismatchError(f"{path.name}: cannot read model file ({exc})") from exc
        if header["version"] > MODEL_FORMAT_VERSION:
            raise ModelMismatchError(f"{path.name}: model format {header['version']} is newer than "
                                     f"this library reads ({MODEL_FORMAT_VERSION})")
        try:
            parameters = CnnParameters.from_dict(header["parameters"], version=header["version"])
            model = cls(voxel_size=header["voxel_size"], parameters=parameters,
                        mean=header["mean"], std=header["std"], state=state,
                        training=header["training"],
                        calibration=Calibration.from_dict(header.get("calibration")),
                        device=device)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ModelMismatchError(f"{path.name}: the header and weights do not make a "
                                     f"network ({exc})") from exc
        if voxel_size is not None:
            check_voxel_size(model.voxel_size, voxel_size, allow_other=allow_other_voxel_size,
                             source=path.name)
        return model


@dataclass
class _Prepared:
    """One training volume at network pixels, padded for patches."""

    name: str
    stack: np.ndarray       # (Z, C, Y + 2r, X + 2r) float32 standardised sections, mirrored
    labels: np.ndarray      # (Z, H, Y + 2r, X + 2r) int8 per head, -1 in the padding
    weights: np.ndarray     # (Z, Y + 2r, X + 2r) float32, the synapse head's pixel weights
    positives: np.ndarray   # (n, 3) synapse pixels (unpadded indices)
    labelled: np.ndarray    # (m, 3) pixels with a synapse target of 0 or 1
    shape: tuple


def _check_volume(volume, voxel_size) -> tuple[np.ndarray, np.ndarray, dict]:
    name = getattr(volume, "name", "training volume")
    em = np.asarray(volume.em)
    targets = np.asarray(volume.targets)
    if em.ndim != 3 or targets.shape != em.shape:
        raise InputError(f"{name}: volume {em.shape} and targets {targets.shape} must be the "
                         "same 3-D shape")
    given = tuple(float(v) for v in volume.voxel_size)
    if not np.allclose(given, voxel_size, rtol=1e-3):
        raise InputError(f"{name}: voxel size {given} nm differs from the common "
                         f"{tuple(voxel_size)} nm; bring the volumes to one voxel size first")
    ignore = getattr(volume, "ignore", None)
    if ignore is not None:
        targets = np.where(np.asarray(ignore, bool), -1, targets)
    aux = {}
    for head, values in (getattr(volume, "aux", None) or {}).items():
        if head not in HEADS[1:]:
            raise InputError(f"{name}: aux map {head!r} is not a head of the network; expected "
                             f"one of {HEADS[1:]}")
        values = np.asarray(values)
        if values.shape != em.shape:
            raise InputError(f"{name}: aux map {head!r} {values.shape} must have the volume's "
                             f"shape {em.shape}")
        aux[head] = values.astype(np.int8)
    return em, targets.astype(np.int8), aux


def train_network(volumes, *, voxel_size, parameters: CnnParameters = CnnParameters(),
                  progress=None, device=None) -> SynapseCnn:
    """Train the multi-head network on one or more volumes at the same voxel size.

    Parameters
    ----------
    volumes : list of TrainingVolume (or objects with its fields)
        ``name`` (for messages), ``em`` (Z, Y, X) intensities, ``voxel_size`` (nm),
        ``targets`` (Z, Y, X) int8 synapse targets 1 / 0 / -1, optionally ``sites`` (Z, Y, X)
        synapse ids (to weigh each synapse; 3D components of ``targets == 1`` otherwise),
        ``ignore`` (Z, Y, X) bool, and ``aux``: a dict of int8 1 / 0 / -1 targets of the heads
        "vesicles", "mitochondria" and "membrane". Shapes may differ between volumes.
    voxel_size : (3,) float, nm, the volumes' common voxel size
    parameters : CnnParameters
        Heads that no volume labels are dropped from the network (and named in
        ``model.training["heads_without_labels"]``).
    progress : callable(done, total), optional
    device : see :func:`select_device`

    Patches are drawn across volumes in proportion to their labelled synapse pixels (target
    0 or 1), ``positive_fraction`` of them centred (with a jitter) on a synapse pixel of the
    chosen volume. Each head's loss counts its labelled pixels only (:func:`masked_loss`); the
    synapse head's is weighted per synapse (:func:`instance_weights`). Intensities are
    standardised with the mean and spread of all volumes together.
    """
    volumes = list(volumes)
    if not volumes:
        raise InputError("training needs at least one volume")
    p = parameters
    voxel_size = tuple(float(v) for v in voxel_size)
    checked = [_check_volume(v, voxel_size) for v in volumes]
    heads = tuple(h for h in p.heads if h == "synapse" or any(
        h in aux and (aux[h] >= 0).any() for _, _, aux in checked))
    missing = [h for h in p.heads if h not in heads]
    if missing:
        logger.info("no volume labels %s: the network is trained without those heads", missing)
    p = replace(p, heads=heads)
    factor = downsample_factor(voxel_size, p.pixel_nm)
    data = [_average(em, factor) for em, _, _ in checked]
    count = sum(d.size for d in data)
    mean = sum(float(d.sum(dtype=np.float64)) for d in data) / count
    std = np.sqrt(sum(float(((d - mean) ** 2).sum(dtype=np.float64)) for d in data) / count) or 1.0
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    model = SynapseCnn(voxel_size=voxel_size, parameters=p, mean=mean, std=std, device=device)

    half, margin = p.patch // 2, p.augmentation.misalign_pixels
    r = half + margin
    prepared = []
    for volume, d, (_, targets, aux) in zip(volumes, data, checked):
        labels = [network_targets(targets, factor)]
        labels += [network_targets(aux[h], factor) if h in aux else
                   np.full(labels[0].shape, -1, np.int8) for h in heads[1:]]
        sites = getattr(volume, "sites", None)
        if sites is not None:
            sites = _block_max(np.asarray(sites), factor)
        weights = instance_weights(labels[0], sites=sites, max_weight=p.max_instance_weight)
        labels = np.stack(labels, axis=1)
        pad = ((0, 0), (r, r), (r, r))
        prepared.append(_Prepared(
            name=getattr(volume, "name", "training volume"),
            stack=np.pad(_stack((d - mean) / std, p.context_sections).astype(np.float32),
                         ((0, 0),) + pad, mode="symmetric"),
            labels=np.pad(labels, ((0, 0),) + pad, constant_values=-1),
            weights=np.pad(weights, pad, constant_values=1.0),
            positives=np.argwhere(labels[:, 0] == 1), labelled=np.argwhere(labels[:, 0] >= 0),
            shape=labels[:, 0].shape))
    n_positive = sum(len(v.positives) for v in prepared)
    n_labelled = sum(len(v.labelled) for v in prepared)
    if not n_positive or n_labelled == n_positive:
        raise InputError(f"training needs synapse voxels and non-synapse voxels; the targets hold "
                         f"{n_positive} synapse and {n_labelled - n_positive} other pixels")
    shares = np.array([len(v.labelled) for v in prepared], float) / n_labelled

    net = model.net
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=p.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=p.iterations)
    started, shown = time.perf_counter(), time.perf_counter()
    loss = torch.zeros(())
    for step in range(p.iterations):
        images, labels, weights = [], [], []
        for _ in range(p.batch):
            v = prepared[int(rng.choice(len(prepared), p=shares))]
            if len(v.positives) and rng.random() < p.positive_fraction:
                z, y, x = v.positives[rng.integers(len(v.positives))]
                dy, dx = rng.integers(-half // 2, half // 2 + 1, size=2)
            else:
                (z, y, x), dy, dx = v.labelled[rng.integers(len(v.labelled))], 0, 0
            y = min(max(y + dy, 0), v.shape[1] - 1)
            x = min(max(x + dx, 0), v.shape[2] - 1)
            image, label, weight = augment_patch(
                v.stack[z, :, y: y + p.patch + 2 * margin, x: x + p.patch + 2 * margin],
                v.labels[z, :, y + margin: y + margin + p.patch, x + margin: x + margin + p.patch],
                v.weights[z, y + margin: y + margin + p.patch, x + margin: x + margin + p.patch],
                rng, p.augmentation)
            images.append(image)
            labels.append(label)
            weights.append(weight)
        logits = net(torch.from_numpy(np.stack(images)).to(model.device))
        loss, _ = masked_loss(logits, torch.from_numpy(np.stack(labels)).to(model.device),
                              torch.from_numpy(np.stack(weights)).to(model.device),
                              aux_weight=p.aux_weight)
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
        "positive_pixels": int(n_positive), "final_loss": float(loss.item()),
        "heads": list(heads), "heads_without_labels": missing,
        "volumes": [{"name": v.name, "shape": list(v.shape), "labelled_pixels": len(v.labelled),
                     "positive_pixels": len(v.positives), "share": round(float(s), 4),
                     "heads": [h for i, h in enumerate(heads)
                               if (v.labels[:, i] >= 0).any()]}
                    for v, s in zip(prepared, shares)]}
    return model


def train_cnn(volume: np.ndarray, targets: np.ndarray, *, voxel_size,
              parameters: CnnParameters = CnnParameters(), region: np.ndarray | None = None,
              progress=None, device=None) -> SynapseCnn:
    """Train the synapse head on one volume (:func:`train_network` with one volume and no
    other maps, so the network has the synapse head alone).

    Parameters
    ----------
    volume : (Z, Y, X) ndarray, EM intensities
    targets : (Z, Y, X) int8 ndarray, 1 synapse / 0 not / -1 ignore
    voxel_size : (3,) float, nm
    region : (Z, Y, X) bool ndarray, optional
        Voxels whose targets may be used (the rest are ignored; their intensities are still read
        as context, as they would be at prediction).
    progress : callable(done, total), optional
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or np.shape(targets) != volume.shape:
        raise InputError(f"volume {volume.shape} and targets {np.shape(targets)} must be the same "
                         "3-D shape")
    if region is not None:
        targets = np.where(region, targets, -1).astype(np.int8)
    from detection.synapses.training import TrainingVolume

    one = TrainingVolume(name="training volume", em=volume, voxel_size=tuple(voxel_size),
                         targets=targets)
    return train_network([one], voxel_size=voxel_size, parameters=parameters,
                         progress=progress, device=device)
