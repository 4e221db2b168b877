"""Overlay images of synapse partner assignments, for a person to judge them.

:func:`render_assignment` crops one EM section around a synapse and tints the presynaptic
cell green and each postsynaptic cell in its own colour (magenta, orange, blue, red, ...),
with the cells outlined, the synapse mask outlined in cyan and the synapse centre marked by a
white cross. :func:`tile_images` lays several renderings out on a grid and :func:`save_png`
writes one to disk. Only numpy, scikit-image and Pillow are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

from detection.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "CENTRE_RGB",
    "PAD_RGB",
    "POST_RGB",
    "PRE_RGB",
    "SYNAPSE_RGB",
    "render_assignment",
    "save_png",
    "tile_images",
]

#: Colour of the presynaptic cell.
PRE_RGB: tuple[int, int, int] = (0, 220, 0)
#: Colours of the postsynaptic cells, in the order of ``post_ids`` (repeated when there are more).
POST_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255),
    (255, 150, 0),
    (60, 120, 255),
    (255, 40, 40),
)
#: Outline of the synapse mask.
SYNAPSE_RGB: tuple[int, int, int] = (0, 255, 255)
#: Centre marker.
CENTRE_RGB: tuple[int, int, int] = (255, 255, 255)
#: Pixels of the crop outside the section.
PAD_RGB: tuple[int, int, int] = (24, 24, 64)
_TITLE_BAND = 16  # pixels above the image holding the title


def _crop(array, center, half, fill):
    """(2 half + 1)^2 crop of a 2D array around ``center``, padded with ``fill`` outside."""
    size = 2 * half + 1
    out = np.full((size, size), fill, dtype=array.dtype)
    inside = np.zeros((size, size), dtype=bool)
    src, dst = [], []
    for c, n in zip(center, array.shape):
        lo, hi = c - half, c + half + 1
        src.append(slice(max(lo, 0), min(hi, n)))
        dst.append(slice(max(lo, 0) - lo, size - (hi - min(hi, n))))
    if all(s.start < s.stop for s in src):
        out[tuple(dst)] = array[tuple(src)]
        inside[tuple(dst)] = True
    return out, inside


def _tint(rgb, mask, colour, alpha):
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float64)


def _outline(mask):
    return find_boundaries(mask, mode="inner", connectivity=1) & mask


def _check_2d(array, name, shape=None):
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D (Y, X) section, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, expected the EM section's {shape}")
    return array


def _check_rgb(rgb, name="rgb"):
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(
            f"{name} must be an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}"
        )
    return rgb


def render_assignment(
    em_section,
    seg_section,
    *,
    pre_id: int,
    post_ids: Sequence[int],
    center_yx,
    crop_half: int = 48,
    scale: int = 3,
    synapse_mask=None,
    title: str | None = None,
    alpha: float = 0.35,
) -> np.ndarray:
    """Render an EM crop with the presynaptic and postsynaptic cells of a synapse overlaid.

    Parameters
    ----------
    em_section : (Y, X) uint8 ndarray
        One EM section.
    seg_section : (Y, X) integer ndarray
        Cell ids of the same section; 0 is membrane or background.
    pre_id : int
        Presynaptic cell id (non-zero), tinted `PRE_RGB`.
    post_ids : sequence of int
        Postsynaptic cell ids (non-zero, other than `pre_id`), tinted with `POST_RGB` in order.
    center_yx : (2,) float
        Synapse centre in pixel coordinates (row, column) of the section; rounded. The crop is
        centred there and the centre marked with a `CENTRE_RGB` cross.
    crop_half : int
        Half the crop side in section pixels: the crop is ``2 crop_half + 1`` pixels square.
        Parts of the crop outside the section are filled with `PAD_RGB`.
    scale : int
        Integer magnification (nearest neighbour), so outlines stay thin next to the cells.
    synapse_mask : (Y, X) bool ndarray, optional
        Synapse pixels of the section (cleft, PSD), outlined in `SYNAPSE_RGB`.
    title : str, optional
        Text written in a band above the image.
    alpha : float
        Opacity of the cell tints, in [0, 1]; outlines are opaque.

    Returns
    -------
    (H, W, 3) uint8 ndarray
        RGB image, ``W = (2 crop_half + 1) scale`` and ``H = W``, plus 16 rows when a title is
        given.
    """
    em = _check_2d(em_section, "em_section")
    if em.dtype != np.uint8:
        raise InputError(f"em_section must be uint8, got dtype {em.dtype}")
    seg = _check_2d(seg_section, "seg_section", em.shape)
    if seg.dtype == bool or not np.issubdtype(seg.dtype, np.integer):
        raise InputError(f"seg_section must hold integer cell ids, got dtype {seg.dtype}")
    post_ids = [int(p) for p in np.atleast_1d(np.asarray(post_ids, dtype=np.int64))]
    pre_id = int(pre_id)
    if pre_id == 0 or 0 in post_ids:
        raise InputError("pre_id and post_ids must be non-zero cell ids (0 is membrane)")
    if pre_id in post_ids:
        raise InputError(f"pre_id {pre_id} is also among post_ids {post_ids}")
    center = np.asarray(center_yx, dtype=np.float64).ravel()
    if center.size != 2 or not np.all(np.isfinite(center)):
        raise InputError(f"center_yx must be two finite pixel coordinates (y, x), got {center_yx}")
    if int(crop_half) != crop_half or crop_half < 1:
        raise InputError(f"crop_half must be a positive integer, got {crop_half}")
    if int(scale) != scale or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    if synapse_mask is not None:
        synapse_mask = _check_2d(synapse_mask, "synapse_mask", em.shape).astype(bool)
    crop_half, scale = int(crop_half), int(scale)
    center = tuple(int(c) for c in np.round(center))

    em_crop, inside = _crop(em, center, crop_half, 0)
    seg_crop, _ = _crop(seg, center, crop_half, 0)

    def zoom(a):
        return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)

    em_big, inside_big, seg_big = zoom(em_crop), zoom(inside), zoom(seg_crop)
    rgb = np.repeat(em_big[..., None].astype(np.float64), 3, axis=2)
    cells = [(pre_id, PRE_RGB)] + [
        (post, POST_RGB[i % len(POST_RGB)]) for i, post in enumerate(post_ids)
    ]
    outlines = []
    for cell, colour in cells:
        mask = (seg_big == cell) & inside_big
        if not mask.any():
            logger.debug("cell %d does not appear in the crop around %s", cell, center)
        _tint(rgb, mask, colour, alpha)
        outlines.append((_outline(mask), colour))
    if synapse_mask is not None:
        syn_crop, _ = _crop(synapse_mask, center, crop_half, False)
        outlines.append((_outline(zoom(syn_crop)), SYNAPSE_RGB))
    for line, colour in outlines:
        rgb[line] = colour
    rgb[~inside_big] = PAD_RGB

    # A cross with an open middle, so the centre pixel itself stays visible.
    mid = crop_half * scale + scale // 2
    arm, gap = 3 * scale + 2, scale
    for d in range(gap, arm + 1):
        for y, x in ((mid - d, mid), (mid + d, mid), (mid, mid - d), (mid, mid + d)):
            rgb[y, x] = CENTRE_RGB
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    if title is not None:
        band = Image.new("RGB", (image.shape[1], _TITLE_BAND), (0, 0, 0))
        ImageDraw.Draw(band).text((3, 2), str(title), fill=(255, 255, 255),
                                  font=ImageFont.load_default())
        image = np.concatenate([np.asarray(band), image], axis=0)
    return image


def tile_images(images, columns: int, *, gap: int = 4, background=(255, 255, 255)) -> np.ndarray:
    """Lay RGB images out on a grid, row by row.

    Parameters
    ----------
    images : sequence of (H_i, W_i, 3) uint8 ndarray
        Images, possibly of different sizes; each sits at the top left of a cell as large as
        the largest image.
    columns : int
        Images per row (positive).
    gap : int
        Pixels between cells (and none around the grid).
    background : (3,) int
        Colour of gaps and of the unused part of cells.

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    images = [_check_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
    if not images:
        raise InputError("tile_images needs at least one image")
    if int(columns) != columns or columns < 1:
        raise InputError(f"columns must be a positive integer, got {columns}")
    if gap < 0:
        raise InputError(f"gap must be non-negative, got {gap}")
    columns = min(int(columns), len(images))
    rows = math.ceil(len(images) / columns)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    out = np.empty((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3),
                   dtype=np.uint8)
    out[...] = np.asarray(background, dtype=np.uint8)
    for i, im in enumerate(images):
        y = (i // columns) * (cell_h + gap)
        x = (i % columns) * (cell_w + gap)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def save_png(path, rgb) -> Path:
    """Write an (H, W, 3) uint8 RGB image as PNG; returns the path."""
    rgb = _check_rgb(rgb)
    path = Path(path)
    Image.fromarray(rgb).save(path, format="PNG", optimize=True)
    logger.info("wrote %s (%d x %d)", path, rgb.shape[1], rgb.shape[0])
    return path
