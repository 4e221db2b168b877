"""Synapse probability from a small convolutional network, in the lineage of SyConn's and
Cnapse's CNN maps (Dorkenwald et al. 2017; a U-Net, Ronneberger et al. 2015).

A 2D U-Net reads each section together with its neighbours (2.5D: ``context_sections`` on each
side as input channels), which suits serial-section EM whose sections are 5-10 times thicker than
its pixels. The network works at about ``pixel_nm`` in-plane: the volume is averaged over
``factor`` x ``factor`` pixels first, and each output pixel's probability stands for that block
of input pixels (as the voxel classifier's grid voxels do).

Training reads the same targets as the voxel classifier (1 synapse, 0 not, -1 ignore, see
:func:`detection.synapses.classify.labels_to_targets`): random patches, half of them centred on a
synapse voxel, flipped and rotated in-plane, with a binary cross-entropy over the voxels that
are not ignored.

Prediction is tiled: every tile is read with a ``halo`` wider than the network's receptive
field and starts on the network's pooling grid, and the volume's own borders are mirrored, so a
tile gives the values of the whole section (up to float rounding; tested).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detection.errors import InputError
from detection.synapses.calibration import Calibration
from detection.synapses.classify import ModelMismatchError, check_voxel_size
from detection.synapses.model_files import NETWORK as MODEL_FORMAT

logger = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 1


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

    def to_dict(self) -> dict:
        return asdict(self)


class _UNet2d(nn.Module):
    def __init__(self, in_channels: int, width: int, depth: int):
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
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x):
        skips = []
        for i, level in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = level(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)[:, 0]


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


def _stack(volume: np.ndarray, context: int) -> np.ndarray:
    """(Z, Y, X) -> (Z, 2c+1, Y, X): each section with its neighbours, edges repeated."""
    z = volume.shape[0]
    index = np.clip(np.arange(z)[:, None] + np.arange(-context, context + 1)[None], 0, z - 1)
    return volume[index]


class SynapseCnn:
    """A trained synapse network with its voxel size, input normalisation and parameters."""

    def __init__(self, *, voxel_size, parameters: CnnParameters, mean: float, std: float,
                 state: dict | None = None, training: dict | None = None,
                 calibration: Calibration | None = None):
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.parameters = parameters
        self.mean, self.std = float(mean), float(std)
        self.training = training or {}
        self.calibration = calibration
        self.factor = downsample_factor(self.voxel_size, parameters.pixel_nm)
        self.net = _UNet2d(2 * parameters.context_sections + 1, parameters.width, parameters.depth)
        if state is not None:
            self.net.load_state_dict(state)
        self.net.eval()

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
    def predict_network(self, sections: np.ndarray, *, tile: int = 512,
                        batch: int = 4) -> np.ndarray:
        """Probability at network pixels of normalised, averaged (Z, 2c+1, Y, X) stacks, tiled.

        The stacks' first pixel must lie on the pooling grid of the whole volume. Each tile
        starts on that grid and reads ``halo_pixels`` around it, mirrored beyond the stacks'
        border, so tiles agree with one pass over the whole section. ``batch`` sections go
        through the network at once (the activations of a 512-pixel tile take about 170 MB
        per section).
        """
        grid = 2 ** self.parameters.depth
        tile = max(grid, tile // grid * grid)
        halo = self.halo_pixels
        z, _, y, x = sections.shape
        padded = np.pad(sections, ((0, 0), (0, 0), (halo, halo + -y % grid),
                                   (halo, halo + -x % grid)), mode="symmetric")
        out = np.empty((z, y, x), np.float32)
        with torch.inference_mode():
            for y0 in range(0, y, tile):
                for x0 in range(0, x, tile):
                    y1, x1 = min(y0 + tile, y), min(x0 + tile, x)
                    ty, tx = -(-(y1 - y0) // grid) * grid, -(-(x1 - x0) // grid) * grid
                    for z0 in range(0, z, batch):
                        window = padded[z0: z0 + batch, :, y0: y0 + ty + 2 * halo,
                                        x0: x0 + tx + 2 * halo]
                        logits = self.net(torch.from_numpy(np.ascontiguousarray(window)))
                        out[z0: z0 + batch, y0:y1, x0:x1] = torch.sigmoid(
                            logits[:, halo: halo + y1 - y0, halo: halo + x1 - x0]).numpy()
        return out

    def predict_region(self, volume: np.ndarray, *, core=None, offset=(0, 0, 0)) -> np.ndarray:
        """Probability of every voxel of ``core`` (slices into ``volume``; all by default).

        ``volume`` must hold ``halo_voxels()`` around the core wherever the whole volume has
        them; ``offset`` is the global index of its first voxel, which places the network's
        pixels and pooling cells: the core must start on multiples of ``factor`` in-plane.
        """
        core = tuple(core) if core is not None else tuple(slice(0, n) for n in volume.shape)
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
        probability = self.predict_network(stack.astype(np.float32))
        probability = np.repeat(np.repeat(probability, f, axis=1), f, axis=2)
        return probability[:, core[1].start - lead[0]: core[1].stop - lead[0],
                           core[2].start - lead[1]: core[2].stop - lead[1]]

    # -- files ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """A JSON header line (voxel size, parameters, normalisation) then the weights."""
        path = Path(path)
        header = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
                  "voxel_size": list(self.voxel_size), "parameters": self.parameters.to_dict(),
                  "mean": self.mean, "std": self.std, "training": self.training,
                  "calibration": self.calibration.to_dict() if self.calibration else None}
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(buffer.getvalue())
        return path

    @classmethod
    def load(cls, path, *, voxel_size=None, allow_other_voxel_size: bool = False) -> "SynapseCnn":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                header = json.loads(f.readline())
                if header.get("format") != MODEL_FORMAT:
                    raise InputError("not a synapse network file")
                state = torch.load(io.BytesIO(f.read()), weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError) as exc:
            raise ModelMismatchError(f"{path.name}: cannot read model file ({exc})") from exc
        if header["version"] > MODEL_FORMAT_VERSION:
            raise ModelMismatchError(f"{path.name}: model format {header['version']} is newer than "
                                     f"this library reads ({MODEL_FORMAT_VERSION})")
        model = cls(voxel_size=header["voxel_size"],
                    parameters=CnnParameters(**header["parameters"]), mean=header["mean"],
                    std=header["std"], state=state, training=header["training"],
                    calibration=Calibration.from_dict(header.get("calibration")))
        if voxel_size is not None:
            check_voxel_size(model.voxel_size, voxel_size, allow_other=allow_other_voxel_size,
                             source=path.name)
        return model


def train_cnn(volume: np.ndarray, targets: np.ndarray, *, voxel_size,
              parameters: CnnParameters = CnnParameters(), region: np.ndarray | None = None,
              progress=None) -> SynapseCnn:
    """Train a synapse network on one volume.

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
    if volume.ndim != 3 or targets.shape != volume.shape:
        raise InputError(f"volume {volume.shape} and targets {np.shape(targets)} must be the same "
                         "3-D shape")
    p = parameters
    if region is not None:
        targets = np.where(region, targets, -1).astype(np.int8)
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    data = _average(volume, downsample_factor(voxel_size, p.pixel_nm))
    mean, std = float(data.mean()), float(data.std()) or 1.0
    model = SynapseCnn(voxel_size=voxel_size, parameters=p, mean=mean, std=std)
    factor = model.factor
    labels = network_targets(targets, factor)
    positives = np.argwhere(labels == 1)
    anywhere = np.argwhere(labels >= 0)
    if not len(positives) or not len(anywhere):
        raise InputError("training needs synapse voxels and non-synapse voxels; the targets hold "
                         f"{len(positives)} synapse and {int((labels == 0).sum())} other pixels")
    half = p.patch // 2
    stack = _stack((data - mean) / std, p.context_sections)
    stack = np.pad(stack, ((0, 0), (0, 0), (half, half), (half, half)), mode="symmetric")
    labels = np.pad(labels, ((0, 0), (half, half), (half, half)), constant_values=-1)

    net = model.net
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=p.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=p.iterations)
    started, shown = time.perf_counter(), 0.0
    for step in range(p.iterations):
        n_pos = rng.binomial(p.batch, p.positive_fraction)
        centres = np.concatenate([positives[rng.integers(len(positives), size=n_pos)],
                                  anywhere[rng.integers(len(anywhere), size=p.batch - n_pos)]])
        jitter = rng.integers(-half // 2, half // 2 + 1, size=(p.batch, 2))
        jitter[n_pos:] = 0
        xs, ys = [], []
        for (z, y, x), (dy, dx) in zip(centres, jitter):
            y = min(max(y + dy, 0), labels.shape[1] - 2 * half - 1)
            x = min(max(x + dx, 0), labels.shape[2] - 2 * half - 1)
            image = stack[z, :, y: y + p.patch, x: x + p.patch]
            label = labels[z, y: y + p.patch, x: x + p.patch]
            k = int(rng.integers(4))
            image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
            if rng.random() < 0.5:
                image, label = image[:, :, ::-1], label[:, ::-1]
            if rng.random() < 0.5:
                image = image[::-1]
            image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
            xs.append(image)
            ys.append(label)
        x_batch = torch.from_numpy(np.ascontiguousarray(np.stack(xs), dtype=np.float32))
        y_batch = torch.from_numpy(np.ascontiguousarray(np.stack(ys)))
        valid = y_batch >= 0
        logits = net(x_batch)
        loss = F.binary_cross_entropy_with_logits(logits[valid], y_batch[valid].float())
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
    model.training = {"iterations": p.iterations,
                      "seconds": round(time.perf_counter() - started, 1),
                      "positive_pixels": int(len(positives)), "final_loss": float(loss.item())}
    return model
