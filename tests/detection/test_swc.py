"""SWC skeleton files: parsing, validation messages and exact round trips."""

import numpy as np
import pytest

from detection.io.swc import (
    SkeletonNodes,
    SwcFormatError,
    read_swc,
    validate_skeleton,
    write_swc,
)

SIMPLE = """# a neuron
# n T x y z R P
1 1 10.0 20.0 30.0 5.0 -1
2 3 11.5 21 31 1.25 1   # dendrite
3 2 12 22 32 0.3 1

4 0 -1 -2 -3 0 3
"""


def write_text(path, text):
    path.write_text(text)
    return path


def make_nodes(n, seed=0):
    rng = np.random.default_rng(seed)
    node_id = rng.permutation(n) + 1
    parent_id = np.empty(n, dtype=np.int64)
    parent_id[0] = -1
    # Each node hangs off an earlier one, so the result is a tree.
    parent_id[1:] = node_id[(rng.random(n - 1) * np.arange(1, n)).astype(np.int64)]
    return SkeletonNodes(node_id=node_id, parent_id=parent_id,
                         zyx=rng.normal(size=(n, 3)) * 1e4,
                         radius=rng.random(n) * 100,
                         compartment=rng.integers(0, 7, n))


def test_read_swc_values_order_and_dtypes(tmp_path):
    nodes = read_swc(write_text(tmp_path / "cell.swc", SIMPLE))
    np.testing.assert_array_equal(nodes.node_id, [1, 2, 3, 4])
    np.testing.assert_array_equal(nodes.parent_id, [-1, 1, 1, 3])
    np.testing.assert_array_equal(nodes.compartment, [1, 3, 2, 0])
    # File columns are x y z; in memory (z, y, x).
    np.testing.assert_array_equal(nodes.zyx, [[30, 20, 10], [31, 21, 11.5], [32, 22, 12],
                                              [-3, -2, -1]])
    np.testing.assert_array_equal(nodes.radius, np.float32([5, 1.25, 0.3, 0]))
    assert (nodes.node_id.dtype, nodes.parent_id.dtype, nodes.zyx.dtype, nodes.radius.dtype,
            nodes.compartment.dtype) == (np.int64, np.int64, np.float64, np.float32, np.int16)
    assert nodes.zyx.flags.c_contiguous


def test_read_swc_scale_applies_to_positions_and_radius(tmp_path):
    nodes = read_swc(write_text(tmp_path / "cell.swc", SIMPLE), scale=1000.0)
    np.testing.assert_array_equal(nodes.zyx[1], [31000, 21000, 11500])
    np.testing.assert_array_equal(nodes.radius, np.float32([5000, 1250, 300, 0]))


def test_read_swc_windows_line_endings_and_single_node(tmp_path):
    path = tmp_path / "one.swc"
    path.write_bytes(b"# one\r\n7 1 1 2 3 4 -1\r\n")
    nodes = read_swc(path)
    assert len(nodes) == 1
    np.testing.assert_array_equal(nodes.zyx, [[3, 2, 1]])


def test_round_trip_is_exact(tmp_path):
    nodes = make_nodes(2000)
    path = tmp_path / "out.swc"
    write_swc(path, nodes, header="made for a test\nsecond line")
    text = path.read_text()
    assert text.startswith("# made for a test\n# second line\n# n T x y z R P")
    back = read_swc(path)
    for field in ("node_id", "parent_id", "zyx", "radius", "compartment"):
        np.testing.assert_array_equal(getattr(back, field), getattr(nodes, field), err_msg=field)
    # float32 radii are written at float32 precision, not as long float64 expansions.
    assert all(len(line.split()[5]) <= 15 for line in text.splitlines()[3:])
    write_swc(tmp_path / "again.swc", back, header="made for a test\nsecond line")
    assert (tmp_path / "again.swc").read_text() == text


def test_write_swc_puts_x_first(tmp_path):
    nodes = SkeletonNodes(node_id=[0], parent_id=[-1], zyx=[[3.0, 2.0, 1.0]], radius=[0.5],
                          compartment=[1])
    write_swc(tmp_path / "a.swc", nodes)
    assert (tmp_path / "a.swc").read_text().splitlines()[-1] == "0 1 1.0 2.0 3.0 0.5 -1"


def test_wrong_field_count(tmp_path):
    path = write_text(tmp_path / "cell.swc", "# c\n1 1 0 0 0 1 -1\n2 1 0 0 0 -1\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 3: expected 7 fields "
                                             r"'n T x y z R P', found 6") as caught:
        read_swc(path)
    assert caught.value.line == 3


def test_non_integer_parent(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 1 1.0\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 2, field 'P' \(parent id\): "
                                             r"'1\.0' is not an integer") as caught:
        read_swc(path)
    assert caught.value.field == "P"


def test_bad_coordinate_text(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n\n2 1 0 abc 0 1 1\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 3, field 'y' \(y\): "
                                             r"'abc' is not a number"):
        read_swc(path)


def test_nan_coordinate(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 nan 1 1\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 2, field 'z' \(z\): nan is not a "
                                             r"finite number"):
        read_swc(path)


def test_negative_radius(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 -0.5 1\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 2, field 'R' \(radius\): -0\.5 is "
                                             r"not a finite radius >= 0"):
        read_swc(path)


def test_type_outside_int16(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 40000 0 0 0 1 -1\n")
    with pytest.raises(SwcFormatError, match=r"line 1, field 'T' \(structure type\): 40000 is "
                                             r"outside the int16 range"):
        read_swc(path)


def test_no_nodes(tmp_path):
    path = write_text(tmp_path / "cell.swc", "# only a comment\n\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc: file holds no nodes"):
        read_swc(path)


def test_duplicate_node_id(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 1 1\n# x\n2 1 0 0 0 1 1\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 4, field 'n' \(node id\): node 2 "
                                             r"repeats the id at line 2"):
        read_swc(path)


def test_missing_parent(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 1 1\n3 1 0 0 0 1 9\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 3, field 'P' \(parent id\): "
                                             r"node 3 has parent 9, which is neither -1 nor a "
                                             r"node"):
        read_swc(path)


def test_parent_cycle(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 1 1\n"
                      "5 1 0 0 0 1 4\n3 1 0 0 0 1 5\n4 1 0 0 0 1 3\n6 1 0 0 0 1 4\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 3, field 'P' \(parent id\): node 5 "
                                             r"lies on a parent cycle 5 -> 4 -> 3 -> 5"):
        read_swc(path)


def test_self_parent(tmp_path):
    path = write_text(tmp_path / "cell.swc", "1 1 0 0 0 1 -1\n2 1 0 0 0 1 2\n")
    with pytest.raises(SwcFormatError, match=r"cell\.swc line 2, field 'P' \(parent id\): node 2 "
                                             r"is its own parent"):
        read_swc(path)


def test_validate_skeleton_in_memory():
    nodes = make_nodes(500)
    validate_skeleton(nodes)  # a valid tree passes
    nodes.parent_id[10] = nodes.node_id[10]
    with pytest.raises(SwcFormatError, match=rf"^node {nodes.node_id[10]} is its own parent"):
        validate_skeleton(nodes)
    forest = SkeletonNodes(node_id=[0, 1, 2, 3], parent_id=[-1, 0, -1, 2], zyx=np.zeros((4, 3)),
                           radius=np.ones(4), compartment=np.zeros(4))
    validate_skeleton(forest)
    forest.parent_id[2] = 3
    with pytest.raises(SwcFormatError, match=r"^node 2 lies on a parent cycle 2 -> 3 -> 2$"):
        validate_skeleton(forest)


def test_write_swc_refuses_invalid_skeletons(tmp_path):
    nodes = SkeletonNodes(node_id=[0, 1], parent_id=[-1, 0], zyx=[[0, 0, 0], [0, np.inf, 0]],
                          radius=[1, 1], compartment=[0, 0])
    with pytest.raises(SwcFormatError, match=r"^node 1 has a non-finite position"):
        write_swc(tmp_path / "bad.swc", nodes)
    assert not (tmp_path / "bad.swc").exists()
    empty = SkeletonNodes(node_id=[], parent_id=[], zyx=[], radius=[], compartment=[])
    with pytest.raises(SwcFormatError, match="without nodes"):
        write_swc(tmp_path / "empty.swc", empty)


def test_skeleton_nodes_checks_shapes():
    with pytest.raises(ValueError, match=r"zyx of shape \(N, 3\)"):
        SkeletonNodes(node_id=[0, 1], parent_id=[-1, 0], zyx=np.zeros((2, 2)), radius=[1, 1],
                      compartment=[0, 0])
