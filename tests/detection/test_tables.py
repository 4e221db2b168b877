"""Synapse table formats: parsing, validation messages and exact round trips."""

import io
from pathlib import Path

import pytest

from detection.io.tables import (
    CaveRow,
    CnapseRow,
    EdgeRow,
    TableFormatError,
    read_cave,
    read_cnapse,
    read_edges,
    sniff_table_format,
    write_cave,
    write_cnapse,
    write_edges,
)

WITVLIET = Path(__file__).resolve().parents[3] / "shared" / "data" / "celegans_witvliet2021"
CNAPSE_HEADER = "syn_id,pre,pre_id,post,post_id,x_pos,y_pos,z_pos,size\n"
BIG_ID = 2**64 - 1


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------
# Cnapse


def test_read_cnapse_values_and_axis_order(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER
                      + f"1,{BIG_ID},10,5,100,1.5,2.5,3.5,12\n"
                      + "2,7,11,6,101,-4,0.1,1e3,3.25\n")
    rows = read_cnapse(path)
    assert rows == [
        CnapseRow(syn_id=1, pre=BIG_ID, pre_id=10, post=5, post_id=100,
                  position=(3.5, 2.5, 1.5), size=12),
        CnapseRow(syn_id=2, pre=7, pre_id=11, post=6, post_id=101,
                  position=(1000.0, 0.1, -4.0), size=3.25),
    ]
    assert isinstance(rows[0].size, int) and isinstance(rows[1].size, float)


def test_read_cnapse_accepts_spaced_header_reordered_and_extra_columns(tmp_path):
    path = write_text(tmp_path / "synapses.csv",
                      "note, size, z_pos, y_pos, x_pos, post_id, post, pre_id, pre, syn_id\n"
                      "hello, 4, 30, 20, 10, 8, 7, 6, 5, 1\n\n")
    (row,) = read_cnapse(path)
    assert row == CnapseRow(syn_id=1, pre=5, pre_id=6, post=7, post_id=8,
                            position=(30.0, 20.0, 10.0), size=4)
    assert isinstance(row.size, int)


def test_cnapse_self_contact_is_accepted(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,9,1,9,2,0,0,0,1\n")
    assert read_cnapse(path)[0].pre == read_cnapse(path)[0].post == 9


def test_cnapse_round_trip_is_exact(tmp_path):
    rows = [
        CnapseRow(syn_id=i, pre=BIG_ID - i, pre_id=i // 3, post=i + 1, post_id=i,
                  position=(0.1 * i, 1 / 3 + i, -1e-7 * i), size=i if i % 2 else i + 0.3)
        for i in range(30)
    ]
    rows = [CnapseRow(r.syn_id, rows[r.pre_id * 3].pre, r.pre_id, r.post, r.post_id,
                      r.position, r.size) for r in rows]  # one pre cell per site
    path = tmp_path / "out.csv"
    write_cnapse(path, rows)
    back = read_cnapse(path)
    assert back == rows
    assert [type(r.size) for r in back] == [type(r.size) for r in rows]
    assert path.read_text().splitlines()[0] == CNAPSE_HEADER.strip()


def test_cnapse_stream_round_trip():
    rows = [CnapseRow(1, 2, 3, 4, 5, (6.0, 7.0, 8.0), 9)]
    stream = io.StringIO()
    write_cnapse(stream, rows)
    assert stream.getvalue() == CNAPSE_HEADER + "1,2,3,4,5,8,7,6,9\n"
    stream.seek(0)
    assert read_cnapse(stream) == rows


def test_cnapse_header_only_is_an_empty_table(tmp_path):
    assert read_cnapse(write_text(tmp_path / "synapses.csv", CNAPSE_HEADER)) == []


def test_cnapse_bad_number_names_file_line_and_field(tmp_path):
    text = CNAPSE_HEADER + "".join(
        f"{i},2,{i},4,{i},0,0,0,1\n" for i in range(1, 16)) + "16,2,16,4,16,0,0,abc,1\n"
    path = write_text(tmp_path / "synapses.csv", text)
    with pytest.raises(TableFormatError) as caught:
        read_cnapse(path)
    assert "synapses.csv line 17, field 'z_pos': 'abc' is not a number" in str(caught.value)
    assert caught.value.line == 17 and caught.value.field == "z_pos"


def test_cnapse_nan_coordinate(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,2,3,4,5,nan,0,0,1\n")
    with pytest.raises(TableFormatError, match=r"synapses\.csv line 2, field 'x_pos': "
                                               r"'nan' is not a finite number"):
        read_cnapse(path)


def test_cnapse_negative_size(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,2,3,4,5,0,0,0,-2\n")
    with pytest.raises(TableFormatError, match=r"line 2, field 'size': '-2' is negative"):
        read_cnapse(path)


@pytest.mark.parametrize("value", ["18446744073709551616", "-1", "1.0", "1e5", ""])
def test_cnapse_id_outside_uint64(tmp_path, value):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + f"1,{value},3,4,5,0,0,0,1\n")
    with pytest.raises(TableFormatError) as caught:
        read_cnapse(path)
    assert f"synapses.csv line 2, field 'pre': {value!r} is not an unsigned 64-bit integer" \
        in str(caught.value)


def test_cnapse_missing_columns_lists_missing_and_found(tmp_path):
    path = write_text(tmp_path / "synapses.csv", "syn_id,pre,post,x_pos,y_pos,z_pos\n1,2,3,4,5,6\n")
    with pytest.raises(TableFormatError) as caught:
        read_cnapse(path)
    message = str(caught.value)
    assert "synapses.csv" in message
    assert "missing required column(s) pre_id, post_id, size" in message
    assert "found columns ['syn_id', 'pre', 'post', 'x_pos', 'y_pos', 'z_pos']" in message


def test_cnapse_empty_file(tmp_path):
    path = write_text(tmp_path / "synapses.csv", "")
    with pytest.raises(TableFormatError, match=r"synapses\.csv: file is empty"):
        read_cnapse(path)


def test_cnapse_semicolon_delimiter_is_named(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER.replace(",", ";")
                      + "1;2;3;4;5;0;0;0;1\n")
    with pytest.raises(TableFormatError, match=r"looks ';'-delimited"):
        read_cnapse(path)


def test_cnapse_wrong_field_count(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,2,3,4,5,0,0,0,1\n1,2,3\n")
    with pytest.raises(TableFormatError, match=r"synapses\.csv line 3: expected 9 fields as in "
                                               r"the header, found 3"):
        read_cnapse(path)


def test_cnapse_duplicate_syn_id(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,2,3,4,5,0,0,0,1\n"
                      "2,2,3,6,7,0,0,0,1\n1,2,3,8,9,0,0,0,1\n")
    with pytest.raises(TableFormatError, match=r"synapses\.csv line 4, field 'syn_id': syn_id 1 "
                                               r"repeats the one on line 2"):
        read_cnapse(path)


def test_cnapse_presynaptic_site_in_two_cells(tmp_path):
    path = write_text(tmp_path / "synapses.csv", CNAPSE_HEADER + "1,2,30,4,5,0,0,0,1\n"
                      "2,2,30,6,7,0,0,0,1\n3,99,30,8,9,0,0,0,1\n")
    with pytest.raises(TableFormatError, match=r"synapses\.csv line 4, field 'pre': pre_id 30 lies "
                                               r"in pre cell 99 here but in 2 on line 2"):
        read_cnapse(path)


def test_write_cnapse_rejects_unreadable_values(tmp_path):
    with pytest.raises(ValueError, match=r"row 1, field 'position'"):
        write_cnapse(tmp_path / "x.csv", [CnapseRow(1, 2, 3, 4, 5, (0.0, float("nan"), 0.0), 1)])
    with pytest.raises(ValueError, match=r"row 1, field 'post'"):
        write_cnapse(tmp_path / "x.csv", [CnapseRow(1, 2, 3, 2**64, 5, (0.0, 0.0, 0.0), 1)])


# --------------------------------------------------------------------------
# CAVE

CAVE_TEXT_HEADER = "id,pre_pt_root_id,post_pt_root_id,pre_pt_position,post_pt_position," \
                   "ctr_pt_position,size\n"


def test_read_cave_bracket_text_in_voxels(tmp_path):
    path = write_text(tmp_path / "cave.csv", CAVE_TEXT_HEADER
                      + f'7,{BIG_ID},22,[10 20 30],"[11, 21, 31]",[ 10.5  20.5   30.5],480\n')
    (row,) = read_cave(path, position_unit="voxel", voxel_size=(40, 8, 4))
    # File order is x y z; voxel_size and the result are (z, y, x).
    assert row == CaveRow(pre=BIG_ID, post=22, pre_point=(1200.0, 160.0, 40.0),
                          post_point=(1240.0, 168.0, 44.0), center=(1220.0, 164.0, 42.0),
                          size=480, id=7)


def test_read_cave_split_columns_and_aliases_in_nm(tmp_path):
    path = write_text(tmp_path / "cave.csv",
                      "pre,post,pre_pt_x,pre_pt_y,pre_pt_z,post_pt_x,post_pt_y,post_pt_z,"
                      "ctr_pt,size\n"
                      "1,2,1.5,2.5,3.5,4,5,6,(7 8 9),0.5\n")
    (row,) = read_cave(path)
    assert row == CaveRow(pre=1, post=2, pre_point=(3.5, 2.5, 1.5), post_point=(6.0, 5.0, 4.0),
                          center=(9.0, 8.0, 7.0), size=0.5, id=None)


def test_cave_round_trip_nm_and_voxel(tmp_path):
    rows = [CaveRow(pre=BIG_ID, post=3, pre_point=(40.0, 16.0, 8.0), post_point=(80.0, 8.0, 4.0),
                    center=(0.0, 0.0, 12.0), size=3, id=1),
            CaveRow(pre=0, post=4, pre_point=(0.1, 1 / 3, -2.0), post_point=(1e-9, 2.0, 3.0),
                    center=(5.0, 6.0, 7.0), size=2.5, id=None)]
    write_cave(tmp_path / "nm.csv", rows)
    assert read_cave(tmp_path / "nm.csv") == rows
    header = (tmp_path / "nm.csv").read_text().splitlines()[0]
    assert header == ("id,pre_pt_root_id,post_pt_root_id,pre_pt_position_x,pre_pt_position_y,"
                      "pre_pt_position_z,post_pt_position_x,post_pt_position_y,"
                      "post_pt_position_z,ctr_pt_position_x,ctr_pt_position_y,"
                      "ctr_pt_position_z,size")

    write_cave(tmp_path / "vox.csv", rows[:1], position_unit="voxel", voxel_size=(40, 8, 4))
    assert (tmp_path / "vox.csv").read_text().splitlines()[1] == "1,18446744073709551615,3," \
        "2,2,1,1,1,2,3,0,0,3"
    assert read_cave(tmp_path / "vox.csv", position_unit="voxel", voxel_size=(40, 8, 4)) \
        == rows[:1]


def test_cave_voxel_unit_needs_voxel_size(tmp_path):
    with pytest.raises(ValueError, match="needs voxel_size"):
        read_cave(tmp_path / "missing.csv", position_unit="voxel")
    with pytest.raises(ValueError, match="position_unit must be one of"):
        read_cave(tmp_path / "missing.csv", position_unit="um")


def test_cave_bad_point_text(tmp_path):
    path = write_text(tmp_path / "cave.csv", CAVE_TEXT_HEADER
                      + "1,2,3,[1 2 3],[1 2],[1 2 3],4\n")
    with pytest.raises(TableFormatError, match=r"cave\.csv line 2, field 'post_pt_position': "
                                               r"'\[1 2\]' is not an \[x y z\] point"):
        read_cave(path)


def test_cave_nan_in_split_column(tmp_path):
    path = write_text(tmp_path / "cave.csv",
                      "pre_pt_root_id,post_pt_root_id,pre_pt_position_x,pre_pt_position_y,"
                      "pre_pt_position_z,post_pt_position,ctr_pt_position,size\n"
                      "1,2,0,NaN,0,[1 2 3],[1 2 3],4\n")
    with pytest.raises(TableFormatError, match=r"cave\.csv line 2, field 'pre_pt_position_y': "
                                               r"'NaN' is not a finite number"):
        read_cave(path)


def test_cave_bad_root_id_names_alias_column(tmp_path):
    path = write_text(tmp_path / "cave.csv", "pre,post,pre_pt,post_pt,ctr_pt,size\n"
                      "1,x2,[1 2 3],[1 2 3],[1 2 3],4\n")
    with pytest.raises(TableFormatError, match=r"cave\.csv line 2, field 'post': 'x2' is not"):
        read_cave(path)


def test_cave_missing_point_columns(tmp_path):
    path = write_text(tmp_path / "cave.csv", "pre_pt_root_id,post_pt_root_id,pre_pt_position,"
                      "post_pt_position_x,post_pt_position_y,size\n")
    with pytest.raises(TableFormatError) as caught:
        read_cave(path)
    message = str(caught.value)
    assert "cave.csv: missing required column(s)" in message
    assert "post_pt_position (or post_pt_position_x/_y/_z)" in message
    assert "ctr_pt_position (or ctr_pt_position_x/_y/_z)" in message
    assert "pre_pt_position (or" not in message
    assert "found columns ['pre_pt_root_id', 'post_pt_root_id', 'pre_pt_position'," in message


def test_cave_duplicate_id(tmp_path):
    path = write_text(tmp_path / "cave.csv", CAVE_TEXT_HEADER
                      + "5,1,2,[1 2 3],[1 2 3],[1 2 3],4\n,1,2,[1 2 3],[1 2 3],[1 2 3],4\n"
                      + "5,1,2,[1 2 3],[1 2 3],[1 2 3],4\n")
    with pytest.raises(TableFormatError, match=r"cave\.csv line 4, field 'id': id 5 repeats the "
                                               r"one on line 2"):
        read_cave(path)


def test_cave_negative_size(tmp_path):
    path = write_text(tmp_path / "cave.csv", CAVE_TEXT_HEADER
                      + "5,1,2,[1 2 3],[1 2 3],[1 2 3],-0.5\n")
    with pytest.raises(TableFormatError, match=r"line 2, field 'size': '-0.5' is negative"):
        read_cave(path)


# --------------------------------------------------------------------------
# Edges


def test_read_edges_lowercases_type(tmp_path):
    path = write_text(tmp_path / "edges.csv", "pre,post,type,synapses\nADAL,AIAL,Chemical,2\n"
                      "AVAL,AVAR,ELECTRICAL,13\nRIML,RIML,chemical,1\n")
    assert read_edges(path) == [EdgeRow("ADAL", "AIAL", "chemical", 2),
                                EdgeRow("AVAL", "AVAR", "electrical", 13),
                                EdgeRow("RIML", "RIML", "chemical", 1)]
    write_edges(tmp_path / "out.csv", read_edges(path))
    assert (tmp_path / "out.csv").read_bytes() == (
        b"pre,post,type,synapses\nADAL,AIAL,chemical,2\nAVAL,AVAR,electrical,13\n"
        b"RIML,RIML,chemical,1\n")


@pytest.mark.parametrize(("cell", "message"), [
    ("0", r"field 'synapses': '0' is not a positive integer"),
    ("2.5", r"field 'synapses': '2.5' is not a positive integer"),
])
def test_edges_bad_synapse_count(tmp_path, cell, message):
    path = write_text(tmp_path / "edges.csv", f"pre,post,type,synapses\nA,B,chemical,{cell}\n")
    with pytest.raises(TableFormatError, match=r"edges\.csv line 2, " + message):
        read_edges(path)


def test_edges_unknown_type(tmp_path):
    path = write_text(tmp_path / "edges.csv", "pre,post,type,synapses\nA,B,chemical,1\n"
                      "A,C,gap,1\n")
    with pytest.raises(TableFormatError, match=r"edges\.csv line 3, field 'type': 'gap' is not "
                                               r"one of \['chemical', 'electrical'\]"):
        read_edges(path)


def test_edges_empty_name(tmp_path):
    path = write_text(tmp_path / "edges.csv", "pre,post,type,synapses\nA, ,chemical,1\n")
    with pytest.raises(TableFormatError, match=r"edges\.csv line 2, field 'post': cell name is "
                                               r"empty"):
        read_edges(path)


def test_edges_repeated_edge(tmp_path):
    path = write_text(tmp_path / "edges.csv", "pre,post,type,synapses\nA,B,chemical,1\n"
                      "A,B,electrical,1\nA,B,Chemical,4\n")
    with pytest.raises(TableFormatError, match=r"edges\.csv line 4, field 'pre': edge A -> B "
                                               r"\(chemical\) repeats the one on line 2"):
        read_edges(path)


@pytest.mark.skipif(not WITVLIET.is_dir(), reason=f"shared data folder {WITVLIET} is absent")
def test_witvliet_adult_round_trip_is_byte_identical(tmp_path):
    original = WITVLIET / "witvliet_2020_7_adult.csv"
    rows = read_edges(original)
    assert len(rows) == 2493
    assert rows[0] == EdgeRow("ADAL", "AIAL", "chemical", 2)
    assert sum(r.type == "electrical" for r in rows) == 291
    assert sniff_table_format(original) == "edges"
    write_edges(tmp_path / "copy.csv", rows)
    assert (tmp_path / "copy.csv").read_bytes() == original.read_bytes()


# --------------------------------------------------------------------------
# Sniffing


@pytest.mark.parametrize(("header", "expected"), [
    (CNAPSE_HEADER, "cnapse"),
    (CAVE_TEXT_HEADER, "cave"),
    ("pre,post,pre_pt_x,pre_pt_y,pre_pt_z,post_pt,ctr_pt,size\n", "cave"),
    ("pre,post,type,synapses\n", "edges"),
    ("Pre, Post, Type, Synapses\n", "edges"),
])
def test_sniff_table_format(tmp_path, header, expected):
    assert sniff_table_format(write_text(tmp_path / "t.csv", header)) == expected


def test_sniff_unknown_header(tmp_path):
    path = write_text(tmp_path / "t.csv", "a,b,pre\n1,2,3\n")
    with pytest.raises(TableFormatError) as caught:
        sniff_table_format(path)
    message = str(caught.value)
    assert "t.csv: header matches no known table format" in message
    assert "found columns ['a', 'b', 'pre']" in message
    assert "edges ['pre', 'post', 'type', 'synapses']" in message
    assert "cnapse ['syn_id', 'pre', 'pre_id'," in message
