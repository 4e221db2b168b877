"""Multiscale zarr writer: layout metadata, exact block-wise pyramids, bounded reads."""

import itertools
import json

import numpy as np
import pytest

from detection.io import zarr_store
from detection.io.sources import iter_blocks, open_volume
from detection.io.zarr_store import (
    build_pyramid,
    create_multiscale,
    downsample_factors,
    downsample_mean,
    downsample_mode,
    open_multiscale,
    write_block,
)

# y, x above the 256 stop extent so that small arrays still get two pyramid levels; with
# 10 x 4 x 4 nm voxels level 1 halves y, x only and level 2 all three axes.
SHAPE = (5, 301, 517)
VOXEL = (10.0, 4.0, 4.0)


def smooth_em(shape, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    base = 128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + 5 * z
    return np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def blobby_labels(shape, seed=0, dtype=np.uint64):
    """Piecewise-constant ids (large values) with background 0 and frequent ties."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, size=(shape[0], -(-shape[1] // 3), -(-shape[2] // 3)))
    labels = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, : shape[1], : shape[2]]
    noise = rng.random(shape) < 0.2
    labels = np.where(noise, rng.integers(0, 6, size=shape), labels)
    return (labels.astype(np.uint64) * np.uint64(2**40 + 3)).astype(dtype)


def whole_array_pyramid(level0, factors, reduce):
    levels = [level0]
    for previous, current in itertools.pairwise(factors):
        step = tuple(c // p for p, c in zip(previous, current))
        levels.append(reduce(levels[-1], step))
    return levels


def write_volume(path, volume, *, kind, chunks=(2, 64, 64), voxel_size=VOXEL):
    group = create_multiscale(
        path, shape=volume.shape, dtype=volume.dtype, voxel_size=voxel_size, chunks=chunks,
        kind=kind,
    )
    for box in iter_blocks(volume.shape, (3, 100, 128)):
        write_block(group, box, volume[box])
    return group


# --------------------------------------------------------------------------------------------
# Factors and metadata


def test_factors_for_anisotropic_sstem():
    factors = downsample_factors((64, 4096, 4096), voxel_size=(50.0, 4.6, 4.6))
    # y, x halve alone while they are below 2x the z... until 36.8 nm approaches 50 nm.
    assert factors == [(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8), (2, 16, 16)]


def test_factors_for_isotropic_fibsem():
    assert downsample_factors((300, 1000, 1000), voxel_size=(10.0, 10.0, 10.0)) == [
        (1, 1, 1),
        (2, 2, 2),
        (4, 4, 4),
    ]
    assert downsample_factors((300, 1000, 1000), voxel_size=(10.0, 10.0, 10.0), levels=2) == [
        (1, 1, 1),
        (2, 2, 2),
    ]
    assert downsample_factors((300, 256, 200), voxel_size=(10.0, 10.0, 10.0)) == [(1, 1, 1)]


def test_factors_skip_an_axis_of_extent_one():
    # z cannot shrink below one section, so it must not hold y and x back.
    assert downsample_factors((1, 1000, 1000), voxel_size=(4.0, 8.0, 8.0)) == [
        (1, 1, 1),
        (1, 2, 2),
        (1, 4, 4),
    ]


def test_create_multiscale_layout(tmp_path):
    group = create_multiscale(
        tmp_path / "em.zarr", shape=(64, 4096, 3000), dtype="uint8", voxel_size=(50, 4.6, 4.6),
        kind="em",
    )
    assert sorted(group.array_keys()) == ["0", "1", "2", "3", "4"]
    assert group["0"].shape == (64, 4096, 3000)
    assert group["4"].shape == (32, 256, 188)
    assert group["0"].chunks == (32, 256, 256)
    assert group["4"].chunks == (32, 256, 188)  # clipped to the level
    assert group["0"].fill_value == 0
    assert group["0"].nchunks_initialized == 0  # created empty
    attrs = json.loads((tmp_path / "em.zarr" / ".zattrs").read_text())
    assert attrs["kind"] == "em"
    assert attrs["downsample_factors"] == [[1, 1, 1], [1, 2, 2], [1, 4, 4], [1, 8, 8], [2, 16, 16]]
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert ms["axes"] == [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    level1 = ms["datasets"][1]
    assert level1["path"] == "1"
    scale, translation = level1["coordinateTransformations"]
    assert scale == {"type": "scale", "scale": pytest.approx([50.0, 9.2, 9.2])}
    assert translation == {"type": "translation", "translation": pytest.approx([0.0, 2.3, 2.3])}
    last = ms["datasets"][4]["coordinateTransformations"]
    assert last[0]["scale"] == pytest.approx([100.0, 73.6, 73.6])
    assert last[1]["translation"] == pytest.approx([25.0, 34.5, 34.5])
    zarray = json.loads((tmp_path / "em.zarr" / "0" / ".zarray").read_text())
    assert zarray["compressor"]["cname"] == "zstd" and zarray["compressor"]["clevel"] == 3
    assert zarray["dimension_separator"] == "/"


def test_create_multiscale_refuses_bad_arguments(tmp_path):
    common = dict(shape=(4, 8, 8), voxel_size=(1, 1, 1))
    with pytest.raises(ValueError, match="kind"):
        create_multiscale(tmp_path / "a", dtype="uint8", kind="labels", **common)
    with pytest.raises(ValueError, match="integer or bool"):
        create_multiscale(tmp_path / "b", dtype="float32", kind="segmentation", **common)
    with pytest.raises(ValueError, match="voxel_size"):
        create_multiscale(
            tmp_path / "c", dtype="uint8", kind="em", shape=(4, 8, 8), voxel_size=(1, 0, 1)
        )
    create_multiscale(tmp_path / "d", dtype="uint8", kind="em", **common)
    with pytest.raises(FileExistsError, match="already exists"):
        create_multiscale(tmp_path / "d", dtype="uint8", kind="em", **common)
    group = create_multiscale(tmp_path / "d", dtype="uint16", kind="em", overwrite=True, **common)
    assert group["0"].dtype == np.uint16


def test_open_multiscale_parses_metadata(tmp_path):
    create_multiscale(
        tmp_path / "seg.zarr", shape=SHAPE, dtype="uint32", voxel_size=VOXEL, chunks=(2, 64, 64),
        kind="segmentation",
    )
    group, meta = open_multiscale(tmp_path / "seg.zarr")
    assert meta == {
        "shape": SHAPE,
        "dtype": np.dtype("uint32"),
        "voxel_size": VOXEL,
        "chunks": (2, 64, 64),
        "kind": "segmentation",
        "levels": 3,
        "factors": [(1, 1, 1), (1, 2, 2), (2, 4, 4)],
        "paths": ["0", "1", "2"],
        "level_shapes": [SHAPE, (5, 151, 259), (3, 76, 130)],
    }
    assert group.read_only


def test_write_block_checks_shape_and_values(tmp_path):
    group = create_multiscale(
        tmp_path / "s.zarr", shape=(4, 8, 8), dtype="uint32", voxel_size=(1, 1, 1),
        kind="segmentation",
    )
    box = (slice(0, 2), slice(0, 8), slice(4, 8))
    write_block(group, box, np.full((2, 8, 4), 70000, dtype=np.int64))  # fits uint32
    assert group["0"][1, 3, 5] == 70000 and group["0"][1, 3, 3] == 0
    with pytest.raises(ValueError, match="do not fit"):
        write_block(group, box, np.full((2, 8, 4), -1, dtype=np.int64))
    with pytest.raises(TypeError, match="float"):
        write_block(group, box, np.zeros((2, 8, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="does not match box"):
        write_block(group, box, np.zeros((2, 8, 3), dtype=np.uint32))
    with pytest.raises(ValueError, match="does not fit"):
        write_block(group, (slice(3, 5), slice(0, 8), slice(0, 8)), np.zeros((2, 8, 8), np.uint32))


# --------------------------------------------------------------------------------------------
# Downsampling kernels


def test_mean_values_rounding_and_partial_edge_cells():
    block = np.array([[[0, 1, 10], [2, 2, 20]], [[4, 5, 30], [6, 6, 41]]], dtype=np.uint8)
    # Cell (0:2, 0:2, 0:2) averages 26/8 = 3.25 -> 3; the edge cell holds x = 2 only:
    # (10 + 20 + 30 + 41) / 4 = 25.25 -> 25.
    np.testing.assert_array_equal(downsample_mean(block, (2, 2, 2)), [[[3, 25]]])
    # Round half to even: (1 + 2) / 2 = 1.5 -> 2, (0 + 1) / 2 = 0.5 -> 0.
    np.testing.assert_array_equal(
        downsample_mean(np.array([[[1, 2, 0, 1]]], dtype=np.uint16), (1, 1, 2)), [[[2, 0]]]
    )
    floats = np.array([[[0.5, 0.25], [1.0, 2.0]]], dtype=np.float32)
    result = downsample_mean(floats, (1, 2, 2))
    assert result.dtype == np.float32 and result[0, 0, 0] == pytest.approx(0.9375)


def test_mean_of_wide_integers_is_exact():
    big = np.array([[[2**40 + 1, 2**40 + 3]]], dtype=np.uint64)
    assert downsample_mean(big, (1, 1, 2))[0, 0, 0] == 2**40 + 2


def test_mode_tie_rules():
    cells = np.array(
        [
            [[0, 0], [5, 5]],  # tie 0 / 5 -> the nonzero 5
            [[3, 3], [7, 7]],  # tie 3 / 7 -> the smaller 3
            [[0, 0], [0, 9]],  # majority background stays 0
            [[4, 9], [9, 0]],  # plain majority 9
            [[8, 6], [2, 0]],  # all different -> smallest nonzero 2
        ],
        dtype=np.uint64,
    )
    block = np.concatenate(list(cells), axis=1)[None]  # (1, 2, 10)
    np.testing.assert_array_equal(downsample_mode(block, (1, 2, 2)), [[[5, 3, 0, 9, 2]]])


def reference_mode(block, factor):
    """Per-cell mode by counting, with the documented tie rules."""
    out_shape = [-(-n // f) for n, f in zip(block.shape, factor)]
    out = np.zeros(out_shape, dtype=block.dtype)
    for index in np.ndindex(*out_shape):
        cell = block[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factor))]
        values, counts = np.unique(cell, return_counts=True)
        candidates = values[counts == counts.max()]
        nonzero = candidates[candidates != 0]
        out[index] = nonzero.min() if len(nonzero) else candidates.min()
    return out


@pytest.mark.parametrize("factor", [(2, 2, 2), (1, 2, 2), (2, 1, 1)])
def test_mode_matches_reference_counting(factor):
    block = blobby_labels((5, 9, 11), seed=4)
    np.testing.assert_array_equal(downsample_mode(block, factor), reference_mode(block, factor))


# --------------------------------------------------------------------------------------------
# Pyramids


def test_em_pyramid_blockwise_equals_whole_array(tmp_path):
    volume = smooth_em(SHAPE)
    group = write_volume(tmp_path / "em.zarr", volume, kind="em")
    build_pyramid(group, block_shape=(3, 50, 70))
    _, meta = open_multiscale(tmp_path / "em.zarr")
    expected = whole_array_pyramid(volume, meta["factors"], downsample_mean)
    assert len(expected) == 3
    for level, reference in enumerate(expected):
        np.testing.assert_array_equal(group[str(level)][:], reference)
    # Spot-check level 1 against a plain 2x2 mean computed independently.
    plain = volume[:, :300, :516].reshape(5, 150, 2, 258, 2).astype(float).mean(axis=(2, 4))
    np.testing.assert_array_equal(group["1"][:, :150, :258], np.rint(plain).astype(np.uint8))


def test_segmentation_pyramid_blockwise_equals_whole_array_and_keeps_ids(tmp_path):
    volume = blobby_labels(SHAPE, seed=1)
    group = write_volume(tmp_path / "seg.zarr", volume, kind="segmentation")
    build_pyramid(group, block_shape=(1, 67, 95))  # odd sizes, rounded up to the factors
    _, meta = open_multiscale(tmp_path / "seg.zarr")
    expected = whole_array_pyramid(volume, meta["factors"], downsample_mode)
    level0_ids = set(np.unique(volume).tolist())
    for level, reference in enumerate(expected):
        stored = group[str(level)][:]
        np.testing.assert_array_equal(stored, reference)
        assert set(np.unique(stored).tolist()) <= level0_ids
    # The default blocking gives the same result.
    regroup = write_volume(tmp_path / "seg2.zarr", volume, kind="segmentation")
    build_pyramid(regroup)
    np.testing.assert_array_equal(regroup["2"][:], expected[2])


def test_pyramid_reads_bounded_blocks_and_reports_progress(tmp_path, monkeypatch):
    volume = smooth_em(SHAPE)
    group = write_volume(tmp_path / "em.zarr", volume, kind="em")
    seen = []
    real_mean = zarr_store.downsample_mean

    def spy(block, factor):
        seen.append(block.shape)
        return real_mean(block, factor)

    monkeypatch.setattr(zarr_store, "downsample_mean", spy)
    calls = []
    build_pyramid(
        group, block_shape=(2, 64, 64), progress=lambda done, total: calls.append((done, total))
    )
    total = calls[-1][1]
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert total == len(seen)
    assert max(np.prod(s) for s in seen) <= 2 * 64 * 64 < np.prod(SHAPE) // 4
    reference = whole_array_pyramid(volume, [(1, 1, 1), (1, 2, 2), (2, 4, 4)], real_mean)
    np.testing.assert_array_equal(group["2"][:], reference[2])


def test_written_group_reads_back_as_a_volume_source(tmp_path):
    volume = blobby_labels((5, 40, 60), seed=2, dtype=np.uint32)
    write_volume(tmp_path / "seg.zarr", volume, kind="segmentation", voxel_size=(45.0, 5.0, 5.0))
    with open_volume(tmp_path / "seg.zarr") as src:
        assert src.voxel_size == (45.0, 5.0, 5.0)
        assert src.dtype == np.uint32
        np.testing.assert_array_equal(src.read((slice(None),) * 3), volume)
