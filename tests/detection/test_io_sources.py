"""Block-readable volume sources: every format round-trips, reads lazily, fails loudly."""

import gzip
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from detection.io import sources
from detection.io.sources import (
    VolumeFormatError,
    iter_blocks,
    list_hdf5_datasets,
    open_volume,
)

SHAPE = (7, 13, 22)  # non-cubic, no axis a multiple of the chunk sizes used below
DTYPES = ["uint8", "uint16", "uint64", "float32"]
BOXES = [
    (slice(0, 7), slice(0, 13), slice(0, 22)),
    (slice(2, 5), slice(3, 11), slice(5, 21)),
    (slice(6, 7), slice(12, 13), slice(0, 1)),
    (slice(1, 4), slice(0, 13), slice(9, 10)),
]
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def make_volume(dtype, shape=SHAPE, seed=0):
    """Values spanning the dtype's range, so byte order and width mistakes show."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def assert_reads(source, volume):
    assert source.shape == volume.shape
    assert source.dtype == volume.dtype
    for box in BOXES:
        got = source.read(box)
        assert got.flags.c_contiguous
        assert got.dtype == volume.dtype
        np.testing.assert_array_equal(got, volume[box])


# --------------------------------------------------------------------------------------------
# Writers


def write_tiff_folder(folder, volume, *, names=None):
    folder.mkdir()
    names = names or [f"section_{z}.tif" for z in range(len(volume))]
    for name, section in zip(names, volume):
        tifffile.imwrite(folder / name, section, photometric="minisblack")
    return folder


def write_precomputed(
    root,
    volume,
    *,
    chunk_xyz=(8, 5, 3),
    resolution_xyz=(4.0, 4.0, 40.0),
    voxel_offset_xyz=(0, 0, 0),
    encoding="raw",
    gzip_files=False,
    block_xyz=(4, 4, 2),
    skip_zero_chunks=False,
):
    """Minimal local precomputed writer following the neuroglancer spec."""
    root.mkdir()
    key = "_".join(str(int(r)) for r in resolution_xyz)
    (root / key).mkdir()
    scale = {
        "key": key,
        "size": list(volume.shape[::-1]),
        "resolution": list(resolution_xyz),
        "voxel_offset": list(voxel_offset_xyz),
        "chunk_sizes": [list(chunk_xyz)],
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = list(block_xyz)
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation" if volume.dtype.kind == "u" else "image",
        "data_type": volume.dtype.name,
        "num_channels": 1,
        "scales": [scale],
    }
    (root / "info").write_text(json.dumps(info))
    sx, sy, sz = volume.shape[::-1]
    cx, cy, cz = chunk_xyz
    ox, oy, oz = voxel_offset_xyz
    for x0 in range(0, sx, cx):
        for y0 in range(0, sy, cy):
            for z0 in range(0, sz, cz):
                x1, y1, z1 = min(x0 + cx, sx), min(y0 + cy, sy), min(z0 + cz, sz)
                block = volume[z0:z1, y0:y1, x0:x1]
                if skip_zero_chunks and not block.any():
                    continue
                if encoding == "raw":
                    # The spec's layout: an (x, y, z) array written in Fortran order.
                    xyz = block.transpose(2, 1, 0).astype(block.dtype.newbyteorder("<"))
                    data = xyz.tobytes(order="F")
                else:
                    data = encode_compressed_segmentation(block, block_xyz)
                if gzip_files:
                    data = gzip.compress(data)
                name = f"{x0 + ox}-{x1 + ox}_{y0 + oy}-{y1 + oy}_{z0 + oz}-{z1 + oz}"
                (root / key / name).write_bytes(data)
    return root


def encode_compressed_segmentation(block_zyx, block_xyz):
    """Single-channel compressed_segmentation encoder, written from the format description."""
    bx, by, bz = block_xyz
    cz, cy, cx = block_zyx.shape
    gx, gy, gz = -(-cx // bx), -(-cy // by), -(-cz // bz)
    headers, body = [], []
    offset = 2 * gx * gy * gz
    for iz in range(gz):
        for iy in range(gy):
            for ix in range(gx):
                box = tuple(slice(i * b, (i + 1) * b) for i, b in zip((iz, iy, ix), (bz, by, bx)))
                part = block_zyx[box]
                full = np.full((bz, by, bx), part.flat[0], dtype=block_zyx.dtype)
                full[: part.shape[0], : part.shape[1], : part.shape[2]] = part
                table, codes = np.unique(full, return_inverse=True)
                bits = next(b for b in (0, 1, 2, 4, 8, 16, 32) if 2**b >= len(table))
                words = [0] * (-(-bx * by * bz * bits // 32))
                for position, code in enumerate(codes.reshape(-1) if bits else []):
                    bit = position * bits
                    words[bit // 32] |= int(code) << (bit % 32)
                values_at = offset
                offset += len(words)
                table_words = np.ascontiguousarray(table.astype(block_zyx.dtype.newbyteorder("<")))
                table_words = list(table_words.view("<u4"))
                table_at = offset
                offset += len(table_words)
                headers += [table_at | (bits << 24), values_at]
                body += words + table_words
    return np.array([1] + headers + body, dtype="<u4").tobytes()


def write_ome_zarr(path, array, *, axes, scale, units="micrometer"):
    group = zarr.open_group(str(path), mode="w")
    group.create_dataset("0", data=array, chunks=tuple(max(1, n // 2) for n in array.shape))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": a, "type": "space" if a in "zyx" else "channel", "unit": units}
                if a in "zyx"
                else {"name": a, "type": "channel"}
                for a in axes
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]
    return path


# --------------------------------------------------------------------------------------------
# Blocks


def test_iter_blocks_tiles_every_voxel_once_with_clipped_edges():
    shape = (5, 7, 4)
    boxes = list(iter_blocks(shape, (2, 3, 4)))
    assert len(boxes) == 3 * 3 * 1
    assert boxes[0] == (slice(0, 2), slice(0, 3), slice(0, 4))
    assert boxes[-1] == (slice(4, 5), slice(6, 7), slice(0, 4))
    count = np.zeros(shape, dtype=int)
    for box in boxes:
        count[box] += 1
    assert (count == 1).all()


def test_read_rejects_boxes_outside_the_volume(tmp_path):
    volume = make_volume("uint8")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = volume
    with open_volume(tmp_path / "v.h5") as src:
        with pytest.raises(ValueError, match="does not fit"):
            src.read((slice(0, 8), slice(0, 13), slice(0, 22)))
        with pytest.raises(ValueError, match="step"):
            src.read((slice(0, 7, 2), slice(None), slice(None)))
        np.testing.assert_array_equal(src.read((slice(None),) * 3), volume)


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_multipage_round_trip(tmp_path, dtype):
    volume = make_volume(dtype)
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    with open_volume(tmp_path / "stack.tif") as src:
        assert src.format == "tiff"
        assert src.chunks == (1, 13, 22)
        assert src.voxel_size is None
        assert_reads(src, volume)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_single_3d_page_round_trip(tmp_path, compression):
    volume = make_volume("uint16")
    tifffile.imwrite(
        tmp_path / "planes.tif", volume, photometric="minisblack", planarconfig="separate",
        compression=compression,
    )
    with tifffile.TiffFile(tmp_path / "planes.tif") as tif:
        assert len(tif.pages) == 1  # the case under test: one page holding all sections
    with open_volume(tmp_path / "planes.tif") as src:
        assert_reads(src, volume)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_folder_round_trip(tmp_path, dtype):
    volume = make_volume(dtype)
    folder = write_tiff_folder(tmp_path / "sections", volume)
    with open_volume(folder) as src:
        assert src.format == "tiff-folder"
        assert_reads(src, volume)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hdf5_round_trip(tmp_path, dtype):
    volume = make_volume(dtype)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        ds = f.create_dataset("volumes/raw", data=volume, chunks=(2, 5, 8), compression="gzip")
        ds.attrs["resolution"] = [50.0, 4.6, 4.6]
        f["volumes/labels/ids"] = np.zeros(SHAPE, dtype=np.uint64)
    with open_volume(tmp_path / "v.h5") as src:  # CREMI layout: raw by default
        assert src.dataset == "volumes/raw"
        assert src.chunks == (2, 5, 8)
        assert src.voxel_size == (50.0, 4.6, 4.6)
        assert_reads(src, volume)


def test_hdf5_big_endian_data_comes_back_native(tmp_path):
    volume = make_volume("uint16")
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f.create_dataset("v", data=volume.astype(">u2"))
    with open_volume(tmp_path / "be.h5") as src:
        assert src.dtype == np.dtype("uint16") and src.dtype.isnative
        assert_reads(src, volume)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zarr_array_round_trip(tmp_path, dtype):
    volume = make_volume(dtype)
    array = zarr.open_array(
        str(tmp_path / "v.zarr"), mode="w", shape=SHAPE, chunks=(3, 4, 8), dtype=dtype
    )
    array[:] = volume
    array.attrs["resolution"] = [30, 6, 6]
    with open_volume(tmp_path / "v.zarr") as src:
        assert src.format == "zarr"
        assert src.chunks == (3, 4, 8)
        assert src.voxel_size == (30.0, 6.0, 6.0)
        assert_reads(src, volume)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gzip_files", [False, True])
def test_precomputed_raw_round_trip(tmp_path, dtype, gzip_files):
    volume = make_volume(dtype)
    root = write_precomputed(tmp_path / "pc", volume, gzip_files=gzip_files)
    with open_volume(root) as src:
        assert src.format == "precomputed"
        assert src.voxel_size == (40.0, 4.0, 4.0)
        assert src.chunks == (3, 5, 8)
        assert_reads(src, volume)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_precomputed_compressed_segmentation_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(3)
    volume = np.zeros(SHAPE, dtype=dtype)
    volume[:, :6] = 7  # constant blocks: 0 encoded bits
    volume[:, 6:, :11] = rng.choice(np.array([2, 2**31 + 5, 9], dtype=dtype), size=(7, 7, 11))
    volume[:, 6:, 11:] = rng.integers(0, 300, size=(7, 7, 11))  # up to 16 encoded bits
    if dtype == "uint64":
        volume[3:, 10:, 15:] = 2**40 + 17  # a table entry that needs both 32-bit words
    root = write_precomputed(
        tmp_path / "pc", volume, encoding="compressed_segmentation", chunk_xyz=(16, 8, 4),
        block_xyz=(8, 4, 2), gzip_files=True,
    )
    with open_volume(root) as src:
        assert_reads(src, volume)


def test_precomputed_voxel_offset_and_missing_chunks(tmp_path):
    volume = np.zeros(SHAPE, dtype=np.uint16)
    volume[4:, 7:, 10:] = make_volume("uint16")[4:, 7:, 10:]
    root = write_precomputed(
        tmp_path / "pc", volume, voxel_offset_xyz=(100, 200, 30), skip_zero_chunks=True
    )
    key_dir = root / "4_4_40"
    assert len(os.listdir(key_dir)) < 3 * 3 * 3  # some chunks really are absent
    assert "100-108_200-205_30-33" not in os.listdir(key_dir)
    with open_volume(root, fill_missing=True) as src:
        assert src.voxel_offset == (30, 200, 100)
        assert_reads(src, volume)
    # Without asking for a fill, a missing chunk is an error naming its file and region.
    with open_volume(root) as src:
        with pytest.raises(VolumeFormatError, match=r"100-108_200-205_30-33: precomputed chunk "
                           r"\(z 0:3, y 0:5, x 0:8\) is missing"):
            src.read((slice(0, 2), slice(0, 2), slice(0, 2)))
        present = (slice(4, 7), slice(10, 13), slice(16, 22))  # chunks that are all there
        np.testing.assert_array_equal(src.read(present), volume[present])


# --------------------------------------------------------------------------------------------
# Voxel sizes and layout metadata


def test_imagej_tiff_voxel_size_in_nm(tmp_path):
    volume = make_volume("uint8")
    tifffile.imwrite(
        tmp_path / "ij.tif", volume, imagej=True, resolution=(1 / 0.0046, 1 / 0.0046),
        metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"},
    )
    with open_volume(tmp_path / "ij.tif") as src:
        assert src.voxel_size == pytest.approx((50.0, 4.6, 4.6), rel=1e-3)
        assert_reads(src, volume)


def test_ome_zarr_voxel_size_units_and_axis_order(tmp_path):
    volume = make_volume("uint16")
    # Stored as (c, x, y, z) in micrometres; must read back as (z, y, x) nm.
    stored = volume.transpose(2, 1, 0)[None]
    path = write_ome_zarr(
        tmp_path / "ome.zarr", stored, axes=["c", "x", "y", "z"], scale=[1.0, 0.004, 0.005, 0.04]
    )
    with open_volume(path) as src:
        assert src.voxel_size == pytest.approx((40.0, 5.0, 4.0))
        assert src.dataset == "0"
        assert src.chunks == (3, 6, 11)
        assert_reads(src, volume)


def test_ome_zarr_level_selected_by_dataset_uses_its_scale(tmp_path):
    volume = make_volume("uint8")
    group = zarr.open_group(str(tmp_path / "ms.zarr"), mode="w")
    group.create_dataset("s0", data=volume)
    group.create_dataset("s1", data=volume[:, ::2, ::2])
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
            "datasets": [
                {"path": p, "coordinateTransformations": [{"type": "scale", "scale": s}]}
                for p, s in (("s0", [50, 4, 4]), ("s1", [50, 8, 8]))
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1, 1.5, 1.5]}],
        }
    ]
    with open_volume(tmp_path / "ms.zarr") as src:
        assert src.voxel_size == (50.0, 6.0, 6.0)
        assert_reads(src, volume)
    with open_volume(tmp_path / "ms.zarr", dataset="s1") as src:
        assert src.voxel_size == (50.0, 12.0, 12.0)
        np.testing.assert_array_equal(src.read((slice(None),) * 3), volume[:, ::2, ::2])
    with open_volume(tmp_path / "ms.zarr" / "s1") as src:  # the level's own folder
        assert src.voxel_size == (50.0, 12.0, 12.0)


def test_natural_sort_of_sections(tmp_path):
    folder = tmp_path / "sections"
    folder.mkdir()
    for number in (10, 2, 1, 33, 3):
        tifffile.imwrite(folder / f"s{number}.tif", np.full((4, 5), number, dtype=np.uint8))
    (folder / "notes.txt").write_text("not a section")
    with open_volume(folder) as src:
        names = [Path(f).name for f in src.files]
        assert names == ["s1.tif", "s2.tif", "s3.tif", "s10.tif", "s33.tif"]
        corner = src.read((slice(None), slice(0, 1), slice(0, 1))).ravel()
        np.testing.assert_array_equal(corner, [1, 2, 3, 10, 33])


def test_tiff_folder_reads_only_the_sections_in_the_box(tmp_path, monkeypatch):
    volume = make_volume("uint16")
    folder = write_tiff_folder(tmp_path / "sections", volume)
    src = open_volume(folder)
    opened = []
    real_tifffile = sources.tifffile.TiffFile

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_tifffile(path, *args, **kwargs)

    monkeypatch.setattr(sources.tifffile, "TiffFile", spy)
    box = (slice(2, 4), slice(1, 5), slice(0, 3))
    np.testing.assert_array_equal(src.read(box), volume[box])
    assert opened == ["section_2.tif", "section_3.tif"]

    # A section outside the box may vanish after opening without disturbing the read.
    os.remove(folder / "section_6.tif")
    np.testing.assert_array_equal(src.read((slice(0, 6), slice(None), slice(None))), volume[:6])
    with pytest.raises(VolumeFormatError, match="section_6.tif"):
        src.read((slice(5, 7), slice(None), slice(None)))
    src.close()


def test_list_hdf5_datasets_lists_only_3d(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["a/raw"] = np.zeros((2, 3, 4), np.uint8)
        f["a/flat"] = np.zeros((3, 4), np.uint8)
        f["b/labels"] = np.zeros((2, 3, 4), np.uint64)
    assert list_hdf5_datasets(tmp_path / "v.h5") == [
        ("a/raw", (2, 3, 4), "uint8"),
        ("b/labels", (2, 3, 4), "uint64"),
    ]


# --------------------------------------------------------------------------------------------
# Bad input


def test_truncated_tiff_with_broken_page_list(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, make_volume("uint16", shape=(6, 40, 50)), photometric="minisblack")
    # tifffile puts the IFDs of pages 1.. after all pixel data: cutting the tail loses them.
    with open(path, "r+b") as fh:
        fh.truncate(40 * 50 * 2 * 3 + 300)
    with pytest.raises(VolumeFormatError, match=r"cut\.tif.*truncated.*page 0"):
        open_volume(path)


def test_truncated_tiff_with_cut_pixel_data(tmp_path):
    path = tmp_path / "cut.tif"
    with tifffile.TiffWriter(path) as writer:
        for section in make_volume("uint16", shape=(6, 40, 50)):
            writer.write(section, photometric="minisblack", contiguous=False)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(VolumeFormatError, match=r"cut\.tif: truncated TIFF: page 5 data ends"):
        open_volume(path)


def test_tiff_pages_of_different_shapes(tmp_path):
    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as writer:
        for shape in ((10, 12), (10, 12), (10, 11)):
            writer.write(np.zeros(shape, np.uint8), photometric="minisblack", contiguous=False)
    problem = r"mixed\.tif: page 2 has shape \(10, 11\).*page 0 has shape \(10, 12\)"
    with pytest.raises(VolumeFormatError, match=problem):
        open_volume(path)


def test_tiff_folder_mismatched_section_shapes(tmp_path):
    folder = tmp_path / "sections"
    folder.mkdir()
    tifffile.imwrite(folder / "s1.tif", np.zeros((10, 12), np.uint8))
    tifffile.imwrite(folder / "s2.tif", np.zeros((10, 12), np.uint8))
    tifffile.imwrite(folder / "s10.tif", np.zeros((9, 12), np.uint8))
    problem = r"s10\.tif: section has shape \(9, 12\).*s1\.tif has shape \(10, 12\)"
    with pytest.raises(VolumeFormatError, match=problem):
        open_volume(folder)


def test_tiff_folder_truncated_section(tmp_path):
    volume = make_volume("uint16", shape=(3, 40, 50))
    folder = write_tiff_folder(tmp_path / "sections", volume)
    with open(folder / "section_1.tif", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(VolumeFormatError, match=r"section_1\.tif.*truncated.*page 0"):
        open_volume(folder)


def test_single_2d_tiff_and_rgb_tiff_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((10, 12), np.uint8))
    with pytest.raises(VolumeFormatError, match=r"flat\.tif: a single 2-D image"):
        open_volume(tmp_path / "flat.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 12, 3), np.uint8), photometric="rgb")
    with pytest.raises(VolumeFormatError, match=r"rgb\.tif: page 0 is an RGB"):
        open_volume(tmp_path / "rgb.tif")
    rgb_stack = np.zeros((5, 10, 12, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgbstack.tif", rgb_stack, photometric="rgb")
    with pytest.raises(VolumeFormatError, match=r"rgbstack\.tif: page 0 .*RGB"):
        open_volume(tmp_path / "rgbstack.tif")


def test_imagej_hyperstack_with_channels_is_refused(tmp_path):
    stack = np.zeros((3, 2, 10, 12), np.uint8)  # z, c, y, x: six pages, channels interleaved
    tifffile.imwrite(tmp_path / "hyper.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(VolumeFormatError, match=r"hyper\.tif: hyperstack .* 2 along 'C'"):
        open_volume(tmp_path / "hyper.tif")


def test_hdf5_missing_dataset_lists_candidates(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["volumes/raw"] = np.zeros((2, 3, 4), np.uint8)
        f["volumes/labels/ids"] = np.zeros((2, 3, 4), np.uint64)
    with pytest.raises(VolumeFormatError) as err:
        open_volume(tmp_path / "v.h5", dataset="volumes/segmentation")
    message = str(err.value)
    assert "v.h5" in message and "'volumes/segmentation' not found" in message
    assert "volumes/raw (2, 3, 4) uint8" in message
    assert "volumes/labels/ids (2, 3, 4) uint64" in message


def test_hdf5_ambiguous_without_cremi_layout_lists_candidates(tmp_path):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 3, 4), np.uint8)
        f["b"] = np.zeros((2, 3, 4), np.uint8)
    problem = r"two\.h5: 2 3-D datasets.*a \(2, 3, 4\) uint8, b \(2, 3, 4\)"
    with pytest.raises(VolumeFormatError, match=problem):
        open_volume(tmp_path / "two.h5")


def test_hdf5_2d_dataset_is_refused(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["image"] = np.zeros((30, 40), np.uint8)
        f["stack"] = np.zeros((2, 30, 40), np.uint8)
    problem = r"v\.h5: dataset 'image' is 2-D with shape \(30, 40\).*stack"
    with pytest.raises(VolumeFormatError, match=problem):
        open_volume(tmp_path / "v.h5", dataset="image")


def test_truncated_hdf5_names_the_file(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=make_volume("uint16", shape=(8, 64, 64)), chunks=(2, 32, 32))
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(VolumeFormatError, match=r"cut\.h5.*truncated"):
        open_volume(path)


def test_corrupt_hdf5_chunk_names_file_dataset_and_region(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "raw", data=make_volume("uint8", shape=(8, 64, 64)), chunks=(2, 64, 64),
            compression="gzip",
        )
        offset = ds.id.get_chunk_info(1).byte_offset  # the chunk holding z = 2..3
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        fh.write(b"\xff" * 40)
    with open_volume(path) as src:
        src.read((slice(0, 2), slice(None), slice(None)))
        with pytest.raises(VolumeFormatError, match=r"bad\.h5: .*'raw' region \[2:4, 0:64, 0:64\]"):
            src.read((slice(2, 4), slice(None), slice(None)))


def test_corrupt_zarr_chunk_names_store_and_region(tmp_path):
    array = zarr.open_array(
        str(tmp_path / "v.zarr"), mode="w", shape=(4, 8, 8), chunks=(2, 8, 8), dtype="u2"
    )
    array[:] = 5
    (tmp_path / "v.zarr" / "1.0.0").write_bytes(b"this is not blosc data at all, not at all")
    with open_volume(tmp_path / "v.zarr") as src:
        np.testing.assert_array_equal(src.read((slice(0, 2), slice(None), slice(None))), 5)
        with pytest.raises(VolumeFormatError, match=r"v\.zarr.*region \[1:3, 0:8, 0:8\]"):
            src.read((slice(1, 3), slice(None), slice(None)))


def test_zarr_group_with_several_arrays_lists_them(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_dataset("raw", shape=(2, 3, 4), dtype="u1")
    group.create_dataset("labels", shape=(2, 3, 4), dtype="u8")
    with pytest.raises(VolumeFormatError, match=r"g\.zarr: group holds 2 arrays.*labels.*raw"):
        open_volume(tmp_path / "g.zarr")
    with open_volume(tmp_path / "g.zarr", dataset="labels") as src:
        assert src.dtype == np.uint64


def test_precomputed_chunk_of_wrong_size(tmp_path):
    root = write_precomputed(tmp_path / "pc", make_volume("uint16"))
    chunk = root / "4_4_40" / "8-16_5-10_3-6"
    chunk.write_bytes(chunk.read_bytes()[:-2])
    with open_volume(root) as src:
        src.read((slice(0, 3), slice(0, 5), slice(0, 8)))  # other chunks are fine
        problem = r"8-16_5-10_3-6: precomputed chunk has 238 bytes, expected 240"
        with pytest.raises(VolumeFormatError, match=problem):
            src.read((slice(3, 4), slice(5, 6), slice(8, 9)))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"encoding": "jpeg"}, "encoding 'jpeg' not supported"),
        ({"sharding": {"@type": "neuroglancer_uint64_sharded_v1"}}, "sharded"),
    ],
)
def test_precomputed_unsupported_scale_options(tmp_path, change, problem):
    root = write_precomputed(tmp_path / "pc", make_volume("uint8"))
    info = json.loads((root / "info").read_text())
    info["scales"][0].update(change)
    (root / "info").write_text(json.dumps(info))
    with pytest.raises(VolumeFormatError, match=rf"pc.info.*{problem}"):
        open_volume(root)


def test_precomputed_needs_one_channel(tmp_path):
    root = write_precomputed(tmp_path / "pc", make_volume("uint8"))
    info = json.loads((root / "info").read_text())
    info["num_channels"] = 3
    (root / "info").write_text(json.dumps(info))
    with pytest.raises(VolumeFormatError, match=r"pc.info.*num_channels is 3"):
        open_volume(root)


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "volume.xyz").write_bytes(b"\x00" * 64)
    problem = r"volume\.xyz: unknown volume format.*tiff-folder, hdf5, zarr, precomputed"
    with pytest.raises(VolumeFormatError, match=problem):
        open_volume(tmp_path / "volume.xyz")
    with pytest.raises(VolumeFormatError, match=r"absent\.h5: no such file"):
        open_volume(tmp_path / "absent.h5")
    with pytest.raises(VolumeFormatError, match=r"unknown format 'n5'"):
        open_volume(tmp_path / "volume.xyz", format="n5")


def test_format_sniffed_from_magic_bytes(tmp_path):
    volume = make_volume("uint8")
    with h5py.File(tmp_path / "noext", "w") as f:
        f["raw"] = volume
    with open_volume(tmp_path / "noext") as src:
        assert src.format == "hdf5"
        assert_reads(src, volume)


# --------------------------------------------------------------------------------------------
# Real data (skipped where the shared data folder is absent)


@pytest.mark.skipif(not (REAL_DATA / "medulla_fibsem_250.h5").exists(), reason="shared data absent")
def test_real_medulla_volume_reads_like_h5py():
    path = REAL_DATA / "medulla_fibsem_250.h5"
    box = (slice(100, 132), slice(0, 250), slice(37, 101))
    with h5py.File(path, "r") as f:
        raw, ids = f["volumes/raw"][box], f["volumes/labels/neuron_ids"][box]
    with open_volume(path) as src:
        assert (src.shape, src.dtype) == ((250, 250, 250), np.uint8)
        assert src.voxel_size == (10.0, 10.0, 10.0)
        np.testing.assert_array_equal(src.read(box), raw)
    with open_volume(path, dataset="volumes/labels/neuron_ids") as src:
        assert src.dtype == np.uint64 and src.voxel_size is None
        np.testing.assert_array_equal(src.read(box), ids)
