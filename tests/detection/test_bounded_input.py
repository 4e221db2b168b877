"""Readers refuse what they cannot trust: unusable voxel sizes, missing chunks, non-UTF-8 text.

Each case asserts the message (file, attribute or chunk, line) and, where a value is given
instead, that it is used and the file's wrong statement is reported, not dropped.
"""

import json
import os

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from detection.cli import main as detect_main
from detection.io import tables
from detection.io.sources import (
    VolumeFormatError,
    open_volume,
    validate_voxel_size,
    voxel_size_problem,
)
from detection.io.swc import SwcFormatError, read_swc
from detection.io.text import format_number, format_numbers
from tests.detection.test_io_sources import write_ome_zarr, write_precomputed

ALL = (slice(None),) * 3


def _h5(path, resolution, data=None):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) if data is None else data
    with h5py.File(path, "w") as f:
        f["volumes/raw"] = data
        if resolution is not None:
            f["volumes/raw"].attrs["resolution"] = resolution
    return path


# --- numbers as text --------------------------------------------------------------------------

def test_numbers_are_plain_text_never_numpy_reprs():
    assert format_numbers((np.float64(40.0), np.float64(4.6), np.float32(8))) == "(40, 4.6, 8)"
    assert format_numbers([np.nan, np.inf, -np.inf]) == "(nan, inf, -inf)"
    assert format_number(np.uint64(2**64 - 1)) == "18446744073709551615"  # exactly
    assert format_number(1e308) == "1e+308"
    assert format_numbers(np.array([[1, 2], [3, 4]])) == "(1, 2, 3, 4)"


# --- voxel sizes ------------------------------------------------------------------------------

@pytest.mark.parametrize("values, problem", [
    ((float("nan"), 1, 1), "z is not a number"),
    ((1, float("inf"), 1), "y is infinite"),
    ((1, 1, -40), "x is not positive"),
    ((1, 1, 0), "x is not positive"),
    ((1e308, 1e308, 1e308), "z is above 1000000 nm"),
    ((1e-9, 1, 1), "z is below 1e-06 nm"),
    ((1, 2), "2 values instead of 3 (z, y, x)"),
    (("a", 1, 1), "not numbers"),
])
def test_unusable_voxel_sizes_say_why(values, problem):
    assert voxel_size_problem(values) == problem
    with pytest.raises(ValueError, match="each of z, y, x must be a finite number from 1e-06 to "
                                         "1000000 nm") as info:
        validate_voxel_size(values)
    assert problem in str(info.value) and "np." not in str(info.value)


def test_usable_voxel_sizes_pass_as_floats():
    assert validate_voxel_size(np.array([50, 4.6, 4.6])) == (50.0, 4.6, 4.6)
    assert all(type(v) is float for v in validate_voxel_size((1, 1, 1)))
    assert voxel_size_problem((1e-6, 1, 1e6)) is None


@pytest.mark.parametrize("resolution, problem", [
    ((float("nan"), 8, 8), r"\(nan, 8, 8\) is not a usable voxel size \(z is not a number"),
    ((-40, 8, 8), r"\(-40, 8, 8\) is not a usable voxel size \(z is not positive"),
    ((40, 8), r"\(40, 8\) is not a usable voxel size \(2 values instead of 3"),
    ("40,8,8", r"'40,8,8' is text, not numbers"),
])
def test_hdf5_resolution_that_is_not_a_voxel_size_is_an_error(tmp_path, resolution, problem):
    path = _h5(tmp_path / "v.h5", resolution)
    with pytest.raises(VolumeFormatError, match=rf"v\.h5 \[volumes/raw\]: attribute 'resolution' "
                                                rf".*{problem}") as info:
        open_volume(path)
    assert "Give the voxel size" in str(info.value)
    # The file was closed: it can be opened for writing again.
    with h5py.File(path, "a"):
        pass


def test_a_given_voxel_size_overrides_a_wrong_resolution_and_says_so(tmp_path):
    path = _h5(tmp_path / "v.h5", (float("nan"), 8, 8))
    with open_volume(path, voxel_size=(40, 8, 8)) as src:
        assert src.voxel_size == (40.0, 8.0, 8.0)
        assert src.file_voxel_size is None
        assert "attribute 'resolution' (nan, 8, 8) is not a usable voxel size" in src.voxel_size_note
        assert src.voxel_size_note.endswith("overridden by the given voxel size")
    good = _h5(tmp_path / "good.h5", (50, 4, 4))
    with open_volume(good, voxel_size=(40, 8, 8)) as src:
        assert (src.voxel_size, src.file_voxel_size, src.voxel_size_note) == (
            (40.0, 8.0, 8.0), (50.0, 4.0, 4.0), None)
    with pytest.raises(VolumeFormatError, match=r"v\.h5 \[volumes/raw\]: the given voxel size "
                                                r"\(0, 8, 8\) nm is not usable \(z is not "
                                                r"positive\)"):
        open_volume(path, voxel_size=(0, 8, 8))


def test_zarr_resolution_and_ome_scales_are_checked(tmp_path):
    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(2, 3, 4), dtype="u1")
    array[:] = 1
    array.attrs["resolution"] = [40, float("inf"), 8]
    with pytest.raises(VolumeFormatError, match=r"a\.zarr: attribute 'resolution' \(40, inf, 8\) "
                                                r"is not a usable voxel size \(y is infinite"):
        open_volume(tmp_path / "a.zarr")
    array.attrs["resolution"] = [40, None, 8]
    with pytest.raises(VolumeFormatError, match=r"a\.zarr: attribute 'resolution' is not a usable "
                                                r"voxel size \(\(40, None, 8\) holds values "
                                                r"that are not numbers"):
        open_volume(tmp_path / "a.zarr")

    volume = np.ones((4, 6, 8), dtype=np.uint8)
    ome = write_ome_zarr(tmp_path / "o.zarr", volume, axes=["z", "y", "x"], scale=[0.04, 0, 0.004])
    with pytest.raises(VolumeFormatError, match=r"o\.zarr \[0\]: OME 'coordinateTransformations' "
                                                r"scale \(40, 0, 4\) is not a usable voxel size "
                                                r"\(y is not positive"):
        open_volume(ome)
    bad_unit = write_ome_zarr(tmp_path / "u.zarr", volume, axes=["z", "y", "x"],
                              scale=[40, 4, 4], units="furlong")
    with pytest.raises(VolumeFormatError, match=r"unknown unit 'furlong' of axis 'z'"):
        open_volume(bad_unit)
    with open_volume(bad_unit, voxel_size=(40, 4, 4)) as src:
        assert src.voxel_size == (40.0, 4.0, 4.0) and "furlong" in src.voxel_size_note


def test_precomputed_resolution_is_checked(tmp_path):
    volume = np.ones((3, 5, 8), dtype=np.uint8)
    root = write_precomputed(tmp_path / "pc", volume, resolution_xyz=(4.0, 4.0, 40.0))
    info = json.loads((root / "info").read_text())
    info["scales"][0]["resolution"] = [4, -4, 40]
    (root / "info").write_text(json.dumps(info))
    with pytest.raises(VolumeFormatError, match=r"info \(scale '4_4_40'\): 'resolution' .* "
                                                r"\(40, -4, 4\) is not a usable voxel size "
                                                r"\(y is not positive"):
        open_volume(root)
    with open_volume(root, voxel_size=(40, 4, 4)) as src:
        np.testing.assert_array_equal(src.read(ALL), volume)


def test_imagej_calibration_that_is_not_a_voxel_size_is_an_error(tmp_path):
    volume = np.zeros((3, 8, 8), dtype=np.uint8)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.0, "unit": "um", "axes": "ZYX"})
    with pytest.raises(VolumeFormatError, match=r"ij\.tif: ImageJ calibration .* \(0, 4, 4\) is not "
                                                r"a usable voxel size \(z is not positive"):
        open_volume(path)
    tifffile.imwrite(path, volume, imagej=True,
                     metadata={"spacing": 1.0, "unit": "pixel", "axes": "ZYX"})
    with open_volume(path) as src:  # not calibrated: states no voxel size, which is fine
        assert src.voxel_size is None


# --- missing chunks ---------------------------------------------------------------------------

def test_a_deleted_zarr_chunk_is_an_error_unless_a_fill_is_asked_for(tmp_path):
    path = tmp_path / "v.zarr"
    array = zarr.open_array(str(path), mode="w", shape=(6, 8, 8), chunks=(3, 4, 4), dtype="u2",
                            fill_value=0)
    array[:] = 9
    os.remove(path / "1.0.1")
    with open_volume(path) as src:
        np.testing.assert_array_equal(src.read((slice(0, 3), slice(0, 8), slice(0, 8))), 9)
        with pytest.raises(VolumeFormatError, match=r"v\.zarr/1\.0\.1: zarr chunk '1\.0\.1' "
                                                    r"\(z 3:6, y 0:4, x 4:8\) is missing; zarr "
                                                    r"would read it as the fill value 0"):
            src.read(ALL)
    with open_volume(path, fill_missing=True) as src:
        data = src.read(ALL)
    assert (data[3:, :4, 4:] == 0).all() and (data == 9).sum() == 6 * 8 * 8 - 3 * 4 * 4


def test_missing_chunks_of_an_array_without_fill_value_read_as_zeros_when_filled(tmp_path):
    path = tmp_path / "v.zarr"
    array = zarr.open_array(str(path), mode="w", shape=(4, 4, 4), chunks=(2, 4, 4), dtype="u1",
                            fill_value=None, dimension_separator="/")
    array[:] = 200
    os.remove(path / "0" / "0" / "0")
    with pytest.raises(VolumeFormatError, match=r"zarr chunk '0/0/0' .* uninitialised memory"):
        open_volume(path).read(ALL)
    with open_volume(path, fill_missing=True) as src:
        data = src.read(ALL)
    assert (data[:2] == 0).all() and (data[2:] == 200).all()


# --- text that is not UTF-8 -------------------------------------------------------------------

def test_a_table_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "syn.csv"
    data = (b"syn_id,pre,pre_id,post,post_id,x_pos,y_pos,z_pos,size\n"
            b"1,5,100,6,200,80,120,40,33\n2,5,100,6,200,80,\xe9,40,33\n")
    path.write_bytes(data)
    at = data.index(b"\xe9")
    for read in (tables.read_cnapse, tables.sniff_table_format):
        with pytest.raises(tables.TableFormatError,
                           match=rf"syn\.csv line 3: not UTF-8 text: byte 0xe9 at byte {at} of "
                                 r"the file; save it as UTF-8") as info:
            read(path)
        assert info.value.line == 3
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("pre,post,type,synapses\n".encode("utf-16"))
    with pytest.raises(tables.TableFormatError, match=r"utf16\.csv line 1: not UTF-8 text \(it "
                                                      r"starts with a UTF-16 byte-order mark\)"):
        tables.read_edges(utf16)


def test_an_swc_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "7.swc"
    path.write_bytes(b"# caf\xe9\n1 1 0 0 0 1 -1\n")
    with pytest.raises(SwcFormatError, match=r"7\.swc line 1: not UTF-8 text \(byte 0xe9 at byte 5"):
        read_swc(path)


def test_precomputed_info_that_is_not_utf8_or_json_names_the_line(tmp_path):
    root = write_precomputed(tmp_path / "pc", np.ones((3, 5, 8), dtype=np.uint8))
    (root / "info").write_bytes(b'{\n "type": "image",\n "x": "\xff"\n}')
    with pytest.raises(VolumeFormatError, match=r"pc/info line 3: not UTF-8 text"):
        open_volume(root)
    (root / "info").write_text('{\n "type": "image",\n}')
    with pytest.raises(VolumeFormatError, match=r"pc/info line 3: not valid JSON"):
        open_volume(root)


# --- command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-4", "0", "1e308"])
def test_detect_cli_refuses_voxel_sizes_that_are_not(tmp_path, capsys, value):
    path = _h5(tmp_path / "v.h5", (40, 8, 8))
    with pytest.raises(SystemExit) as info:
        detect_main(["evaluate", "--gt", str(path), "--voxel-size", "40", value, "8",
                     "--instances", str(path)])
    assert info.value.code == 2
    assert f"'{value}' is not a voxel size: each of z, y, x must be a finite number" in \
        capsys.readouterr().err


def test_detect_cli_needs_a_voxel_size_where_the_file_states_a_wrong_one(tmp_path, capsys):
    labels = np.zeros((2, 3, 4), dtype=np.uint32)
    labels[0, 0, 0] = 1
    path = _h5(tmp_path / "gt.h5", (float("nan"), 8, 8), data=labels)
    assert detect_main(["evaluate", "--gt", str(path), "--instances", str(path)]) == 2
    assert "attribute 'resolution' (nan, 8, 8) is not a usable voxel size" in capsys.readouterr().err
    assert detect_main(["evaluate", "--gt", str(path), "--instances", str(path),
                        "--voxel-size", "40", "8", "8"]) == 0
    assert "precision 1.000 recall 1.000" in capsys.readouterr().out


def test_zarr_metadata_that_is_not_utf8_or_json_names_the_file(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_dataset("raw", data=np.ones((2, 3, 4), dtype=np.uint8))
    (tmp_path / "g.zarr" / "raw" / ".zattrs").write_bytes(b'{\n "resolution": "\xb5m"\n}')
    with pytest.raises(VolumeFormatError, match=r"g\.zarr/raw/\.zattrs line 2: not UTF-8 text "
                                                r"\(byte 0xb5 at byte 18\)"):
        open_volume(tmp_path / "g.zarr")
    (tmp_path / "g.zarr" / "raw" / ".zattrs").write_text("{}")
    (tmp_path / "g.zarr" / ".zattrs").write_text('{"multiscales": ')
    with pytest.raises(VolumeFormatError, match=r"g\.zarr/\.zattrs line 1: not valid JSON"):
        open_volume(tmp_path / "g.zarr" / "raw")  # the group holding the array is read too
