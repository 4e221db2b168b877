"""The viewer: Neuroglancer client files, precomputed layer data, viewer states."""

import gzip
import json
import struct
from urllib.parse import unquote

import h5py
import numpy as np
import pytest
from django.urls import reverse

from connectome.cells.models import Cell, Skeleton
from connectome.datasets.models import Membership
from connectome.imports.volumes import import_volume
from connectome.viewer.client import client_root
from connectome.viewer.precomputed import encode_skeleton
from connectome.viewer.state import (
    ARROW_MIN_FRACTION,
    INPUTS_LAYER,
    OUTPUTS_LAYER,
    PALETTE,
    SYNAPSE_FIELD_NM,
    SYNAPSE_LAYER,
    arrow_points,
    cell_state,
    client_url,
    dataset_state,
    synapse_state,
)
from detection.io.zarr_store import open_multiscale
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (6, 300, 260)  # y and x above 256, so the pyramid has a level 1 (z kept, y/x halved)
CHUNKS = (4, 64, 64)  # every axis ends in a partial chunk: 6 = 4 + 2, 300 = 4*64 + 44, ...


def _volumes(tmp_path, *, is_public=True):
    """A dataset with an EM layer (uint8) and a uint16 segmentation imported from HDF5."""
    rng = np.random.default_rng(3)
    em = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    coarse = rng.integers(0, 9, size=(SHAPE[0] // 2 + 1, SHAPE[1] // 16 + 1, SHAPE[2] // 16 + 1))
    seg = np.kron(coarse, np.ones((2, 16, 16), dtype=np.int64))[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    seg = (seg * 1000).astype(np.uint16)  # ids up to 8000: needs 16 bits, served as uint64
    path = tmp_path / "vol.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=em)
        f.create_dataset("labels", data=seg)
    dataset = DatasetFactory(is_public=is_public, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2])
    em_layer = import_volume(dataset=dataset, source=str(path), name="em", dataset_path="raw",
                             chunks=CHUNKS)
    seg_layer = import_volume(dataset=dataset, source=str(path), name="segmentation",
                              kind="segmentation", dataset_path="labels", chunks=CHUNKS)
    return dataset, em_layer, seg_layer, em, seg


@pytest.fixture
def volumes(data_root, tmp_path):
    return _volumes(tmp_path)


def _login(client, user):
    # The factories set the password without saving it; save it, or the session's password
    # hash would not match the stored user on the next request.
    user.save()
    client.force_login(user)


def _url(layer, path):
    return reverse("viewer:layer-data", kwargs={"layer_id": layer.pk, "path": path})


def _chunk(client, layer, key, box, **headers):
    """GET one chunk; box is (z, y, x) of (start, stop) pairs."""
    (z0, z1), (y0, y1), (x0, x1) = box
    return client.get(_url(layer, f"{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"), headers=headers)


# --------------------------------------------------------------------------------------------
# info


def test_info_describes_every_level_in_x_y_z(client, volumes):
    dataset, em_layer, seg_layer, em, _ = volumes
    group, meta = open_multiscale(em_layer.path)
    assert meta["factors"] == [(1, 1, 1), (1, 2, 2)]

    info = client.get(_url(em_layer, "info")).json()
    assert info["@type"] == "neuroglancer_multiscale_volume"
    assert (info["type"], info["data_type"], info["num_channels"]) == ("image", "uint8", 1)
    assert [s["key"] for s in info["scales"]] == ["0", "1"]
    assert [s["resolution"] for s in info["scales"]] == [[8.0, 8.0, 40.0], [16.0, 16.0, 40.0]]
    assert [s["size"] for s in info["scales"]] == [[260, 300, 6], [130, 150, 6]]
    assert [s["chunk_sizes"] for s in info["scales"]] == [[[64, 64, 4]], [[64, 64, 4]]]
    assert all(s["encoding"] == "raw" and s["voxel_offset"] == [0, 0, 0] for s in info["scales"])
    assert "segment_properties" not in info and "skeletons" not in info

    seg_info = client.get(_url(seg_layer, "info")).json()
    assert (seg_info["type"], seg_info["data_type"]) == ("segmentation", "uint64")
    assert seg_layer.dtype == "uint16"
    assert seg_info["segment_properties"] == "segment_properties"
    assert "skeletons" not in seg_info  # none stored yet


def test_huge_store_chunks_are_served_in_parts(client, data_root, tmp_path):
    labels = np.zeros((64, 64, 64), dtype=np.uint32)
    labels[10:20, 10:20, 10:20] = 7
    path = tmp_path / "labels.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("labels", data=labels)
    dataset = DatasetFactory(is_public=True)
    layer = import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation",
                          dataset_path="labels", chunks=(64, 64, 64))
    info = client.get(_url(layer, "info")).json()
    # 64^3 uint64 is 2 MiB: thinned in z to 8 sections (256 KiB), for section views.
    assert info["scales"][0]["chunk_sizes"] == [[64, 64, 8]]

    labels = np.zeros((128, 128, 128), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("labels", data=labels)
    big = import_volume(dataset=DatasetFactory(is_public=True), source=str(path), name="seg",
                        kind="segmentation", dataset_path="labels", chunks=(128, 128, 128))
    x, y, z = client.get(_url(big, "info")).json()["scales"][0]["chunk_sizes"][0]
    assert x * y * z * 8 <= 2 * 2**20 and 128 % x == 128 % y == 128 % z == 0
    assert (x, y, z) == (128, 128, 4)   # thin to 4 sections, then small enough in y and x


# --------------------------------------------------------------------------------------------
# chunks


@pytest.mark.parametrize("which", ["em", "segmentation"])
@pytest.mark.parametrize("box", [
    ((0, 4), (0, 64), (0, 64)),  # a whole chunk
    ((4, 6), (256, 300), (256, 260)),  # the far corner: clipped on every axis
    ((0, 4), (64, 128), (192, 256)),
])
def test_chunk_bytes_are_the_zarr_box_with_x_fastest(client, volumes, which, box):
    _, em_layer, seg_layer, em, seg = volumes
    layer, volume, dtype = {
        "em": (em_layer, em, np.uint8), "segmentation": (seg_layer, seg, np.uint64),
    }[which]
    response = _chunk(client, layer, "0", box)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    expected = volume[tuple(slice(a, b) for a, b in box)]
    data = np.frombuffer(response.content, dtype=np.dtype(dtype).newbyteorder("<"))
    assert data.size == expected.size
    # x fastest: the first row of bytes runs along x of the first (z, y) line.
    np.testing.assert_array_equal(data[: expected.shape[2]], expected[0, 0, :])
    np.testing.assert_array_equal(data.reshape(expected.shape), expected)


@pytest.mark.parametrize("kind,source_dtype,served", [
    ("em", np.uint16, ("image", "uint16")),
    ("prediction", np.float64, ("image", "float32")),  # stored as float32
    ("mask", np.bool_, ("segmentation", "uint64")),  # stored as uint8
    ("synapses", np.int32, ("segmentation", "uint64")),  # stored as uint32
    ("segmentation", np.uint64, ("segmentation", "uint64")),
])
def test_every_kind_and_dtype_is_served_as_its_stored_values(
        client, data_root, tmp_path, kind, source_dtype, served):
    rng = np.random.default_rng(5)
    volume = rng.integers(0, 3, size=(5, 40, 30))
    if np.dtype(source_dtype).kind == "f":
        volume = rng.random(size=(5, 40, 30))
    if kind == "segmentation":
        # ids up to 2**63 + 7, above the signed 64-bit range
        volume = volume.astype(np.uint64) * np.uint64(2**62) + np.uint64(7)
    volume = volume.astype(source_dtype)
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=volume)
    layer = import_volume(dataset=DatasetFactory(is_public=True), source=str(path), name=kind,
                          kind=kind, dataset_path="v", chunks=(4, 16, 16))
    info = client.get(_url(layer, "info")).json()
    assert (info["type"], info["data_type"]) == served
    response = _chunk(client, layer, "0", ((4, 5), (32, 40), (16, 30)))
    data = np.frombuffer(response.content, dtype=np.dtype(served[1]).newbyteorder("<"))
    expected = volume[4:5, 32:40, 16:30].astype(served[1])
    np.testing.assert_array_equal(data.reshape(expected.shape), expected)


def test_level_one_chunk_is_the_downsampled_level(client, volumes):
    _, em_layer, _, _, _ = volumes
    level1 = open_multiscale(em_layer.path)[0]["1"][:]
    response = _chunk(client, em_layer, "1", ((4, 6), (128, 150), (64, 128)))
    data = np.frombuffer(response.content, dtype=np.uint8).reshape(2, 22, 64)
    np.testing.assert_array_equal(data, level1[4:6, 128:150, 64:128])


def test_chunks_are_gzipped_when_the_client_accepts_it(client, volumes):
    _, _, seg_layer, _, seg = volumes
    box = ((0, 4), (0, 64), (0, 64))
    plain = _chunk(client, seg_layer, "0", box)
    zipped = _chunk(client, seg_layer, "0", box, accept_encoding="gzip, deflate, br")
    assert not plain.has_header("Content-Encoding")
    assert zipped["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped["Vary"]
    assert len(zipped.content) < len(plain.content) / 4
    assert gzip.decompress(zipped.content) == plain.content


@pytest.mark.parametrize("path,status", [
    ("7/0-64_0-64_0-4", 404),  # no such scale
    ("0/1-65_0-64_0-4", 404),  # off the chunk grid
    ("0/0-63_0-64_0-4", 404),  # not a whole chunk
    ("0/256-320_0-64_0-4", 404),  # runs past the edge instead of clipping
    ("0/320-384_0-64_0-4", 404),  # outside the volume
    ("0/0-64_0-64_4-8", 404),  # z clipped wrongly (the volume ends at 6)
    ("0/0-64_0-64", 400),  # malformed
    ("0/a-b_0-64_0-4", 400),
    ("0/", 404),
    ("skeletons/1", 404),  # not a segmentation
    ("segment_properties/info", 404),
    ("nothing", 404),
])
def test_bad_chunk_requests_are_errors_not_pages(client, volumes, path, status):
    _, em_layer, _, _, _ = volumes
    response = client.get(_url(em_layer, path))
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"


def test_unknown_layer_is_404_json(client, db):
    response = client.get(reverse("viewer:layer-data", kwargs={"layer_id": 999999, "path": "info"}))
    assert response.status_code == 404
    assert response.json()["detail"]


def test_private_layer_is_visible_to_members_only(client, data_root, tmp_path):
    dataset, em_layer, seg_layer, _, _ = _volumes(tmp_path, is_public=False)
    paths = [_url(em_layer, "info"), _url(em_layer, "0/0-64_0-64_0-4"),
             _url(seg_layer, "segment_properties/info")]
    for path in paths:
        assert client.get(path).status_code == 404
    _login(client, UserFactory())
    for path in paths:
        assert client.get(path).status_code == 404
    member = MembershipFactory(dataset=dataset, role=Membership.Role.VIEWER).user
    _login(client, member)
    for path in paths:
        assert client.get(path).status_code == 200


# --------------------------------------------------------------------------------------------
# segment properties and skeletons


def test_segment_properties_list_the_cells_of_the_layer(client, volumes):
    dataset, _, seg_layer, _, seg = volumes
    Cell.objects.filter(dataset=dataset, segment_id=1000).update(name="DA1", cell_type="PN")
    Cell.objects.filter(dataset=dataset, segment_id=2000).update(cell_type="Kenyon cell")
    CellFactory(dataset=dataset, segment_id=2**64 - 5, layer=seg_layer, cell_type="PN")
    CellFactory(dataset=dataset, segment_id=424242)  # not measured in this layer

    body = client.get(_url(seg_layer, "segment_properties/info")).json()
    assert body["@type"] == "neuroglancer_segment_properties"
    inline = body["inline"]
    expected = {str(int(s)) for s in np.unique(seg) if s} | {str(2**64 - 5)}
    assert set(inline["ids"]) == expected
    props = {p["id"]: p for p in inline["properties"]}
    row = dict(zip(inline["ids"], range(len(inline["ids"]))))
    assert props["label"]["values"][row["1000"]] == "DA1 (1000)"
    assert props["label"]["values"][row["2000"]] == "Kenyon cell (2000)"
    assert props["label"]["values"][row["3000"]] == "3000"
    assert props["cell_type"]["values"][row[str(2**64 - 5)]] == "PN"
    tags = props["tags"]
    assert tags["tags"] == ["Kenyon_cell", "PN"]
    assert tags["values"][row["2000"]] == [0] and tags["values"][row["1000"]] == [1]
    assert tags["values"][row["3000"]] == []

    zipped = client.get(_url(seg_layer, "segment_properties/info"),
                        headers={"accept-encoding": "gzip"})
    assert zipped["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.content)) == body


def _decode_skeleton(data: bytes, n_attributes=1):
    n_vertices, n_edges = struct.unpack_from("<II", data)
    offset = 8
    positions = np.frombuffer(data, "<f4", n_vertices * 3, offset).reshape(-1, 3)
    offset += positions.nbytes
    edges = np.frombuffer(data, "<u4", n_edges * 2, offset).reshape(-1, 2)
    offset += edges.nbytes
    radius = np.frombuffer(data, "<f4", n_vertices, offset)
    assert offset + radius.nbytes * n_attributes == len(data)
    return positions, edges, radius


def test_skeleton_round_trips_through_the_precomputed_encoding(client, volumes):
    dataset, _, seg_layer, _, _ = volumes
    cell = Cell.objects.get(dataset=dataset, segment_id=3000)
    node_id = np.array([10, 11, 12, 13, 20])
    parent_id = np.array([-1, 10, 11, 11, 99])  # 20's parent is missing: a second root
    zyx = np.array([[40, 80, 160], [80, 88, 168], [120, 96, 176], [80, 96, 200], [0, 0, 8.5]])
    radius = np.array([5, 6, 7, 8, 9], dtype=np.float32)
    Skeleton.objects.create(cell=cell, source="test", n_nodes=5, cable_length_nm=1.0,
                            nodes=Skeleton.pack(node_id, parent_id, zyx, radius, np.zeros(5)))

    assert client.get(_url(seg_layer, "info")).json()["skeletons"] == "skeletons"
    info = client.get(_url(seg_layer, "skeletons/info")).json()
    assert info["@type"] == "neuroglancer_skeletons"
    # Half a voxel (x, y, z) moves our voxel-centre positions onto Neuroglancer's voxels.
    assert info["transform"] == [1, 0, 0, 4.0, 0, 1, 0, 4.0, 0, 0, 1, 20.0]
    assert info["vertex_attributes"] == [
        {"id": "radius", "data_type": "float32", "num_components": 1}]

    response = client.get(_url(seg_layer, "skeletons/3000"))
    assert response["Content-Type"] == "application/octet-stream"
    # Cached a minute: the review page fetches the next synapse's skeletons ahead.
    assert response["Cache-Control"] == "private, max-age=60"
    positions, edges, got_radius = _decode_skeleton(response.content)
    np.testing.assert_allclose(positions, zyx[:, ::-1])
    assert sorted(map(tuple, edges.tolist())) == [(1, 0), (2, 1), (3, 1)]
    np.testing.assert_array_equal(got_radius, radius)

    assert client.get(_url(seg_layer, "skeletons/2000")).status_code == 404
    assert client.get(_url(seg_layer, "skeletons/x")).status_code == 404
    assert client.get(_url(seg_layer, f"skeletons/{2**64}")).status_code == 404


def test_encode_skeleton_of_no_nodes():
    data = encode_skeleton(node_id=np.array([], int), parent_id=np.array([], int),
                           zyx=np.zeros((0, 3)), radius=np.array([]))
    assert data == struct.pack("<II", 0, 0)


# --------------------------------------------------------------------------------------------
# client


def test_client_index_and_files_have_their_types(client, db):
    index = client.get(reverse("viewer:client", kwargs={"token": "connectome"}))
    assert index.status_code == 200
    assert index["Content-Type"].startswith("text/html")
    assert b"<script" in b"".join(index.streaming_content)
    assert index["X-Frame-Options"] == "SAMEORIGIN"  # pages embed it in an iframe

    root = client_root()
    wasm = next(root.glob("*.wasm")).name
    script = next(root.glob("main.*.js")).name
    for name, content_type in ((wasm, "application/wasm"), (script, "text/javascript")):
        response = client.get(
            reverse("viewer:client", kwargs={"token": "connectome", "path": name}))
        assert response.status_code == 200
        assert response["Content-Type"].startswith(content_type)
        assert b"".join(response.streaming_content) == (root / name).read_bytes()


@pytest.mark.parametrize("path", ["nothing.js", "../client.py", "..%2F__init__.py",
                                  "../../neuroglancer/__init__.py"])
def test_missing_client_files_are_404(client, db, path):
    response = client.get(f"/ng/v/connectome/{path}")
    assert response.status_code == 404


def test_event_stream_opens_with_a_comment(client, db):
    response = client.get(reverse("viewer:events", kwargs={"token": "connectome"}))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert next(iter(response.streaming_content)).startswith(b":")
    response.close()


# --------------------------------------------------------------------------------------------
# viewer states


BASE = "http://127.0.0.1:8000"


def _layer(state, name):
    return next(layer for layer in state["layers"] if layer["name"] == name)


def _voxel(position):
    """The (z, y, x) voxel Neuroglancer shows at an x, y, z position."""
    x, y, z = (int(np.floor(v)) for v in position)
    return (z, y, x)


def test_dataset_state_shows_every_layer(volumes):
    dataset, em_layer, seg_layer, _, _ = volumes
    state = dataset_state(dataset, base_url=BASE + "/")
    assert state["dimensions"] == {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [4e-8, "m"]}
    assert state["position"] == [130.0, 150.0, 3.0]
    assert [layer["name"] for layer in state["layers"]] == ["em", "segmentation"]
    em = _layer(state, "em")
    assert em == {"type": "image", "name": "em",
                  "source": f"precomputed://{BASE}/viewer/layers/{em_layer.pk}"}
    assert _layer(state, "segmentation")["type"] == "segmentation"
    # The volume's larger in-plane extent (300 * 8 nm) fits a 350 px panel of the 4panel layout.
    assert state["crossSectionScale"] == pytest.approx(300 * 8 / 350 / 8)

    selected = dataset_state(dataset, base_url=BASE, selected=[2**64 - 1, 5, 5],
                             position_nm=(80.0, 16.0, 24.0))
    assert _layer(selected, "segmentation")["segments"] == [str(2**64 - 1), "5"]
    assert _voxel(selected["position"]) == (2, 2, 3)


@pytest.mark.parametrize("centre_nm", [(80.0, 1600.0, 800.0), (99.0, 1603.9, 803.9),
                                       (61.0, 1596.1, 796.1)])
def test_synapse_state_centres_the_synapse_voxel(volumes, centre_nm):
    dataset, _, seg_layer, _, _ = volumes
    pre = Cell.objects.get(dataset=dataset, segment_id=1000)
    post = Cell.objects.get(dataset=dataset, segment_id=2000)
    synapse = SynapseFactory(
        run__dataset=dataset, pre=pre, post=post,
        ctr_z=centre_nm[0], ctr_y=centre_nm[1], ctr_x=centre_nm[2],
        pre_z=80.0, pre_y=1600.0, pre_x=760.0, post_z=None, post_y=None, post_x=None,
    )
    state = synapse_state(synapse, base_url=BASE)
    # A point p lies in voxel round(p / voxel size) (voxel centres at index * voxel size).
    assert _voxel(state["position"]) == (2, 200, 100)
    assert state["position"] == pytest.approx(
        [centre_nm[2] / 8 + 0.5, centre_nm[1] / 8 + 0.5, centre_nm[0] / 40 + 0.5])
    assert _layer(state, "segmentation")["segments"] == ["1000", "2000"]
    line_layer = _layer(state, SYNAPSE_LAYER)
    assert line_layer["annotationRelationships"] == ["pre_segment", "post_segment"]
    assert line_layer["linkedSegmentationLayer"] == {
        "pre_segment": "segmentation", "post_segment": "segmentation"}
    (line,) = line_layer["annotations"]
    assert line["type"] == "line" and line["id"] == str(synapse.pk)
    # From the presynaptic point (1600, 760 nm in y, x) to the centre (no postsynaptic point),
    # about 40 nm, stretched about their middle to 300 nm, in the centre's section.
    pre_yx, centre_yx = np.array([1600.0, 760.0]), np.array(centre_nm[1:])
    unit = (centre_yx - pre_yx) / np.linalg.norm(centre_yx - pre_yx)
    for point, sign in ((line["pointA"], -1), (line["pointB"], 1)):
        y, x = (pre_yx + centre_yx) / 2 + sign * 150 * unit
        assert point[:2] == pytest.approx([x / 8 + 0.5, y / 8 + 0.5])
        assert point[2] == state["position"][2]
    assert line["segments"] == [["1000"], ["2000"]]
    assert state["crossSectionScale"] < 1  # a 2 um field: the cleft is several pixels wide


def test_arrow_is_stretched_about_its_middle_to_a_visible_length():
    # 60 nm apart in y/x (36, 48), 2 sections apart in z: 300 nm long, same direction.
    start, end = arrow_points((40.0, 1000.0, 2000.0), (120.0, 1036.0, 2048.0),
                              min_length_nm=300.0)
    assert start == pytest.approx((80.0, 1018 - 0.6 * 150, 2024 - 0.8 * 150))
    assert end == pytest.approx((80.0, 1018 + 0.6 * 150, 2024 + 0.8 * 150))
    # A long arrow stays as it is; coinciding points stay a point.
    assert arrow_points((0, 0, 0), (0, 0, 500.0), min_length_nm=300.0) == (
        (0, 0, 0), (0, 0, 500.0))
    assert arrow_points((0, 5.0, 5.0), (40.0, 5.0, 5.0), min_length_nm=300.0) == (
        (20.0, 5.0, 5.0), (20.0, 5.0, 5.0))


def test_synapse_state_colours_the_partners_clefts_and_arrow(volumes, tmp_path):
    dataset, _, seg_layer, _, _ = volumes
    clefts = import_volume(dataset=dataset, source=str(tmp_path / "vol.h5"), name="clefts",
                           kind="synapses", dataset_path="labels", chunks=CHUNKS)
    pre = Cell.objects.get(dataset=dataset, segment_id=1000, layer=seg_layer)
    post = Cell.objects.get(dataset=dataset, segment_id=2000, layer=seg_layer)
    synapse = SynapseFactory(run__dataset=dataset, pre=pre, post=post, pre_z=400.0,
                             pre_y=800.0, pre_x=760.0, post_z=400.0, post_y=800.0, post_x=840.0)
    state = synapse_state(synapse, base_url=BASE)
    cells = _layer(state, "segmentation")
    assert cells["segmentColors"] == {"1000": PALETTE["pre"], "2000": PALETTE["post"]}
    assert cells["segmentDefaultColor"] == PALETTE["other"]
    assert cells["objectAlpha"] == 0  # one xy panel: no skeletons across the section
    cleft_layer = _layer(state, clefts.name)
    assert cleft_layer["type"] == "segmentation"
    assert cleft_layer["segmentDefaultColor"] == PALETTE["cleft"]
    assert "segmentColors" not in cleft_layer
    arrow = _layer(state, SYNAPSE_LAYER)
    assert arrow["annotationColor"] == PALETTE["arrow"]
    pre_post = ("setEndpointMarkerColor(vec4(1.000, 0.353, 0.212, 1.0), "
                "vec4(0.184, 0.545, 1.000, 1.0))")
    for call in ("setLineWidth(4.0)", "setEndpointMarkerSize(7.0, 15.0)", pre_post):
        assert call in arrow["shader"]
    (line,) = arrow["annotations"]
    length_voxels = np.hypot(line["pointB"][0] - line["pointA"][0],
                             line["pointB"][1] - line["pointA"][1])
    assert length_voxels * 8 >= ARROW_MIN_FRACTION * SYNAPSE_FIELD_NM - 1e-6
    # The palette's four colours differ; clefts keep it on the dataset page too.
    assert len({PALETTE[k] for k in ("pre", "post", "cleft", "other")}) == 4
    assert _layer(dataset_state(dataset, base_url=BASE), clefts.name)[
        "segmentDefaultColor"] == PALETTE["cleft"]


def test_synapse_state_layouts(client, volumes):
    dataset, _, _, _, _ = volumes
    pre = Cell.objects.get(dataset=dataset, segment_id=1000)
    synapse = SynapseFactory(run__dataset=dataset, pre=pre,
                             post=Cell.objects.get(dataset=dataset, segment_id=2000))
    xy = synapse_state(synapse, base_url=BASE)
    four = synapse_state(synapse, base_url=BASE, layout="4panel")
    assert (xy["layout"], four["layout"]) == ("xy", "4panel")
    # The same 2 um field in a panel of about 600 px, or of about 350 px.
    assert xy["crossSectionScale"] == pytest.approx(2000 / 600 / 8)
    assert four["crossSectionScale"] == pytest.approx(2000 / 350 / 8)
    assert "objectAlpha" not in _layer(four, "segmentation")  # the 3D panel shows skeletons
    with pytest.raises(ValueError, match="layout"):
        synapse_state(synapse, base_url=BASE, layout="3d")

    url = reverse("viewer:synapse-state", kwargs={"synapse_id": synapse.pk})
    assert client.get(url).json()["layout"] == "xy"
    assert client.get(url, {"layout": "4panel"}).json()["layout"] == "4panel"
    bad = client.get(url, {"layout": "xz"})
    assert bad.status_code == 400
    assert "xz" in bad.json()["layout"][0]


def test_synapse_state_without_a_partner(volumes):
    dataset, _, _, _, _ = volumes
    pre = Cell.objects.get(dataset=dataset, segment_id=1000)
    synapse = SynapseFactory(run__dataset=dataset, pre=pre, post=None)
    state = synapse_state(synapse, base_url=BASE)
    assert _layer(state, "segmentation")["segments"] == ["1000"]
    assert _layer(state, SYNAPSE_LAYER)["annotations"][0]["segments"] == [["1000"], []]


def test_cell_state_selects_the_cell_and_splits_its_synapses(volumes):
    dataset, _, seg_layer, _, _ = volumes
    cell = Cell.objects.get(dataset=dataset, segment_id=3000)
    other = Cell.objects.get(dataset=dataset, segment_id=1000)
    out1 = SynapseFactory(run__dataset=dataset, pre=cell, post=other)
    out2 = SynapseFactory(run=out1.run, pre=cell, post=other, ctr_z=None, ctr_y=None,
                          ctr_x=None, pre_z=40.0, pre_y=8.0, pre_x=16.0)
    into = SynapseFactory(run=out1.run, pre=other, post=cell)
    SynapseFactory(run=out1.run, pre=cell, post=cell, flag="self_contact")

    state = cell_state(cell, base_url=BASE)
    assert _layer(state, "segmentation")["segments"] == ["3000"]
    centroid = (cell.centroid_z, cell.centroid_y, cell.centroid_x)
    assert state["position"] == pytest.approx(
        [centroid[2] / 8 + 0.5, centroid[1] / 8 + 0.5, centroid[0] / 40 + 0.5])
    outputs = _layer(state, OUTPUTS_LAYER)["annotations"]
    inputs = _layer(state, INPUTS_LAYER)["annotations"]
    assert [a["id"] for a in outputs] == [str(out1.pk), str(out2.pk)]
    assert [a["id"] for a in inputs] == [str(into.pk)]
    assert _voxel(outputs[1]["point"]) == (1, 1, 2)  # no centre: the presynaptic point
    assert inputs[0]["segments"] == [["1000"], ["3000"]]
    assert _layer(state, OUTPUTS_LAYER)["annotationColor"] != _layer(
        state, INPUTS_LAYER)["annotationColor"]

    limited = cell_state(cell, base_url=BASE, synapse_limit=1)
    assert len(_layer(limited, OUTPUTS_LAYER)["annotations"]) == 1
    assert _layer(limited, INPUTS_LAYER)["annotations"] == []


def test_client_url_carries_the_state_or_its_url(volumes):
    dataset, _, _, _, _ = volumes
    state = dataset_state(dataset, base_url=BASE)
    url = client_url(state)
    path, fragment = url.split("#!")
    assert path == "/ng/v/connectome/"
    assert json.loads(unquote(fragment)) == state
    assert '"' not in fragment and " " not in fragment
    state_url = f"{BASE}/viewer/state/datasets/{dataset.pk}/"
    assert client_url(state_url, token="review") == f"/ng/v/review/#!{state_url}"


def test_state_endpoints_follow_dataset_permissions(client, data_root, tmp_path):
    dataset, em_layer, _, _, _ = _volumes(tmp_path, is_public=False)
    pre = Cell.objects.get(dataset=dataset, segment_id=1000)
    synapse = SynapseFactory(run__dataset=dataset, pre=pre,
                             post=Cell.objects.get(dataset=dataset, segment_id=2000))
    urls = [
        reverse("viewer:dataset-state", kwargs={"dataset_id": dataset.pk}),
        reverse("viewer:synapse-state", kwargs={"synapse_id": synapse.pk}),
        reverse("viewer:cell-state", kwargs={"cell_id": pre.pk}),
    ]
    for url in urls:
        assert client.get(url).status_code == 404
    _login(client, UserFactory())
    for url in urls:
        assert client.get(url).status_code == 404
    _login(client, MembershipFactory(dataset=dataset).user)
    states = [client.get(url).json() for url in urls]
    for state in states:
        assert _layer(state, "em")["source"] == (
            f"precomputed://http://testserver/viewer/layers/{em_layer.pk}")
    assert _layer(states[1], "segmentation")["segments"] == ["1000", "2000"]
    assert _layer(states[2], "segmentation")["segments"] == ["1000"]


def test_cell_state_shows_the_synapses_of_the_pages_run(client, data_root, tmp_path):
    """A ground truth and a detection of the same synapses: the cell's viewer shows one run's,
    the default run's unless ``?run=`` names another or ``all``, as the cell page counts."""
    dataset, _, _, _, _ = _volumes(tmp_path, is_public=True)
    cell = Cell.objects.get(dataset=dataset, segment_id=1000)
    other = Cell.objects.get(dataset=dataset, segment_id=2000)
    truth = SynapseFactory(run__dataset=dataset, run__method="ground_truth", pre=cell,
                           post=other)
    detected = SynapseFactory(run__dataset=dataset, run__method="diffusion", pre=cell,
                              post=other)
    url = reverse("viewer:cell-state", kwargs={"cell_id": cell.pk})

    def shown(query=""):
        response = client.get(url + query)
        assert response.status_code == 200, response.content
        return [a["id"] for a in _layer(response.json(), OUTPUTS_LAYER)["annotations"]]

    assert shown() == [str(detected.pk)]  # the default run: the partner assignment
    assert shown(f"?run={truth.run_id}") == [str(truth.pk)]
    assert shown("?run=all") == [str(truth.pk), str(detected.pk)]
    response = client.get(url + "?run=999999")
    assert response.status_code == 400 and "run" in response.json()["detail"]
    # The page hands its run to the state it embeds.
    page = client.get(reverse("web:cell", args=[dataset.pk, cell.pk]) + f"?run={truth.run_id}")
    assert f"state/cells/{cell.pk}/?run={truth.run_id}" in page.content.decode()
