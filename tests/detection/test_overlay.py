"""Tests for partner-assignment overlay images (detection.overlay)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detection.overlay import (
    CENTRE_RGB,
    PAD_RGB,
    POST_RGB,
    PRE_RGB,
    SYNAPSE_RGB,
    render_assignment,
    save_png,
    tile_images,
)
from detection.synthetic.phantom import make_phantom

GREY = 100


def _section(shape=(60, 80)):
    """Pre cell 1 on the left, post cells 2 (top right) and 3 (bottom right), bystander 4."""
    em = np.full(shape, GREY, dtype=np.uint8)
    seg = np.zeros(shape, dtype=np.uint32)
    seg[:, :38] = 1
    seg[:28, 42:70] = 2
    seg[32:, 42:70] = 3
    seg[:, 72:] = 4
    return em, seg


def _tinted(colour, alpha=0.35):
    return np.round((1 - alpha) * GREY + alpha * np.asarray(colour)).astype(np.uint8)


@pytest.mark.parametrize("crop_half, scale", [(20, 1), (20, 3), (7, 4)])
def test_shape_dtype_and_title_band(crop_half, scale):
    em, seg = _section()
    image = render_assignment(em, seg, pre_id=1, post_ids=[2], center_yx=(30, 40),
                              crop_half=crop_half, scale=scale)
    side = (2 * crop_half + 1) * scale
    assert image.shape == (side, side, 3) and image.dtype == np.uint8

    titled = render_assignment(em, seg, pre_id=1, post_ids=[2], center_yx=(30, 40),
                               crop_half=crop_half, scale=scale, title="synapse 7: 1 -> 2")
    assert titled.shape == (side + 16, side, 3)
    np.testing.assert_array_equal(titled[16:], image)
    assert titled[:16].max() > 200  # some text was written


def test_pre_and_post_cells_get_their_tints_and_others_stay_grey():
    em, seg = _section()
    # crop_half 30 around (30, 40), scale 2: section pixel (y, x) is rendered at
    # rows 2 (y - 30 + 30) and 2 (y - 30 + 30) + 1, likewise for columns.
    image = render_assignment(em, seg, pre_id=1, post_ids=[2, 3], center_yx=(30, 40),
                              crop_half=30, scale=2)

    def at(y, x):
        return image[2 * y, 2 * (x - 10)]

    np.testing.assert_array_equal(at(10, 20), _tinted(PRE_RGB))
    np.testing.assert_array_equal(at(10, 55), _tinted(POST_RGB[0]))
    np.testing.assert_array_equal(at(45, 55), _tinted(POST_RGB[1]))
    np.testing.assert_array_equal(at(10, 40), [GREY] * 3)  # membrane between them
    # Outlines: the pre cell's last column and the first post cell's first column.
    np.testing.assert_array_equal(image[20, 2 * (37 - 10) + 1], PRE_RGB)
    np.testing.assert_array_equal(image[20, 2 * (42 - 10)], POST_RGB[0])
    # The centre cross, open in the middle.
    mid = 30 * 2 + 1
    np.testing.assert_array_equal(image[mid, mid + 5], CENTRE_RGB)
    assert not np.array_equal(image[mid, mid], CENTRE_RGB)

    # Cells that are not partners are left alone: the bystander 4, and 3 when not a partner.
    other = render_assignment(em, seg, pre_id=1, post_ids=[2], center_yx=(30, 60),
                              crop_half=19, scale=1)
    np.testing.assert_array_equal(other[30 - 30 + 19, 75 - 60 + 19], [GREY] * 3)
    np.testing.assert_array_equal(other[45 - 30 + 19, 55 - 60 + 19], [GREY] * 3)
    np.testing.assert_array_equal(other[15 - 30 + 19, 55 - 60 + 19], _tinted(POST_RGB[0]))


def test_synapse_mask_is_outlined():
    em, seg = _section()
    synapse = np.zeros(seg.shape, dtype=bool)
    synapse[20:30, 36:44] = True
    image = render_assignment(em, seg, pre_id=1, post_ids=[2], center_yx=(25, 40),
                              crop_half=15, scale=1, synapse_mask=synapse)
    np.testing.assert_array_equal(image[20 - 25 + 15, 38 - 40 + 15], SYNAPSE_RGB)  # top edge
    assert not np.array_equal(image[25 - 25 + 15, 38 - 40 + 15], SYNAPSE_RGB)  # inside


@pytest.mark.parametrize("center, padded, kept", [
    ((0, 0), (0, 0), (-1, -1)),  # top-left corner: the top-left quarter is outside
    ((59, 79), (-1, -1), (0, 0)),  # bottom-right corner
    ((-100, 20), (0, 0), None),  # entirely outside
])
def test_crops_at_section_borders_are_padded(center, padded, kept):
    em, seg = _section()
    image = render_assignment(em, seg, pre_id=1, post_ids=[2], center_yx=center,
                              crop_half=10, scale=2)
    assert image.shape == (42, 42, 3)
    np.testing.assert_array_equal(image[padded], PAD_RGB)
    if kept is not None:
        assert not np.array_equal(image[kept], PAD_RGB)
        outside = np.all(image == np.asarray(PAD_RGB, dtype=np.uint8), axis=2)
        assert 0.65 < outside.mean() < 0.75  # all but a quarter, less the cross over it
    else:  # only the centre cross is drawn over the padding
        drawn = np.any(image != np.asarray(PAD_RGB, dtype=np.uint8), axis=2)
        assert np.all(image[drawn] == CENTRE_RGB) and 0 < np.count_nonzero(drawn) < 40


@pytest.mark.parametrize("change, message", [
    (dict(em_section=np.zeros((2, 60, 80), np.uint8)), "2-D"),
    (dict(em_section=np.zeros((60, 80), np.float32)), "uint8"),
    (dict(seg_section=np.zeros((60, 81), np.uint32)), "seg_section has shape"),
    (dict(seg_section=np.zeros((60, 80), np.float64)), "integer"),
    (dict(synapse_mask=np.zeros((61, 80), bool)), "synapse_mask"),
    (dict(post_ids=[1, 2]), "also among post_ids"),
    (dict(pre_id=0), "non-zero"),
    (dict(center_yx=(np.nan, 3)), "center_yx"),
    (dict(crop_half=0), "crop_half"),
    (dict(scale=1.5), "scale"),
    (dict(alpha=2.0), "alpha"),
])
def test_bad_input_is_refused(change, message):
    em, seg = _section()
    kwargs = dict(em_section=em, seg_section=seg, pre_id=1, post_ids=[2], center_yx=(30, 40))
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        render_assignment(**kwargs)


def test_tile_images_places_images_on_a_grid():
    red = np.zeros((10, 12, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((6, 20, 3), np.uint8)
    blue[..., 2] = 255
    tiled = tile_images([red, blue, red], 2, gap=2, background=(9, 9, 9))
    assert tiled.shape == (2 * 10 + 2, 2 * 20 + 2, 3) and tiled.dtype == np.uint8
    np.testing.assert_array_equal(tiled[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(tiled[0, 22], [0, 0, 255])
    np.testing.assert_array_equal(tiled[8, 22], [9, 9, 9])  # below the shorter image
    np.testing.assert_array_equal(tiled[12, 0], [255, 0, 0])
    np.testing.assert_array_equal(tiled[12, 30], [9, 9, 9])  # the empty last cell
    assert tile_images([red], 5).shape == red.shape
    with pytest.raises(ValueError, match="columns"):
        tile_images([red], 0)
    with pytest.raises(ValueError, match="at least one"):
        tile_images([], 2)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        tile_images([red, red[..., 0]], 2)


def test_save_png_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    path = save_png(tmp_path / "x.png", rgb)
    with Image.open(path) as png:
        np.testing.assert_array_equal(np.asarray(png), rgb)
    with pytest.raises(ValueError, match="RGB"):
        save_png(tmp_path / "y.png", rgb[..., 0])


def test_phantom_synapse_renders_its_partners(tmp_path):
    phantom = make_phantom((12, 96, 96), voxel_size=(40.0, 8.0, 8.0), n_cells=8, n_synapses=4,
                           polyadic_fraction=0.0, seed=2)
    synapse = phantom.synapses[0]
    z, y, x = np.round(np.asarray(synapse.center) / phantom.voxel_size).astype(int)
    mask = phantom.synapse_labels[z] == synapse.synapse_id
    image = render_assignment(
        phantom.em[z], phantom.segmentation[z], pre_id=synapse.pre_id,
        post_ids=[synapse.post_id], center_yx=(y, x), crop_half=30, scale=2,
        synapse_mask=mask, title=f"synapse {synapse.synapse_id}",
    )
    body = image[16:]
    # Both partners touch the cleft, so both are in the crop, outlined in their colours.
    assert np.count_nonzero(np.all(body == PRE_RGB, axis=2)) > 30
    assert np.count_nonzero(np.all(body == POST_RGB[0], axis=2)) > 30
    assert np.count_nonzero(np.all(body == SYNAPSE_RGB, axis=2)) > 0
    # Tinted pixels: green dominates inside the pre cell, red and blue inside the post cell.
    seg = np.pad(phantom.segmentation[z], 30)[y : y + 61, x : x + 61]
    seg = np.repeat(np.repeat(seg, 2, axis=0), 2, axis=1)
    pre = body[seg == synapse.pre_id].astype(int)
    post = body[seg == synapse.post_id].astype(int)
    assert pre.size and post.size
    assert np.mean(pre[:, 1] > pre[:, 0] + 20) > 0.9
    assert np.mean((post[:, 0] > post[:, 1] + 20) & (post[:, 2] > post[:, 1] + 20)) > 0.9
    path = save_png(tmp_path / "synapse.png", tile_images([image, image], 2))
    with Image.open(path) as png:
        assert png.size == (2 * image.shape[1] + 4, image.shape[0])
