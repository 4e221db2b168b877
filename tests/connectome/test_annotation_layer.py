"""A synapse run as a Neuroglancer precomputed annotation layer, served under /viewer/."""

import gzip
import itertools
import json
import struct

import numpy as np
import pytest
from django.urls import reverse

from connectome.jobs.models import Job
from connectome.jobs.services import job_run_inline
from connectome.synapses.models import Synapse
from connectome.viewer import annotations
from connectome.viewer.state import RUN_LAYER_PREFIX, dataset_state, synapse_state
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

VOXEL = (40.0, 8.0, 8.0)
SHAPE = (50, 2000, 3000)  # z, y, x voxels: 2 x 16 x 24 um
N = 3000
LIMIT = 100
BIG_SEGMENT = 2**64 - 5  # stored as a negative BIGINT
REVIEW = [s.value for s in Synapse.ReviewState]


def _record_dtype_fields(raw: bytes, offset: int):
    """Our own decoding of one LINE annotation: 6 float32, float32, 3 uint8 + padding."""
    a = struct.unpack_from("<3f", raw, offset)
    b = struct.unpack_from("<3f", raw, offset + 12)
    confidence, = struct.unpack_from("<f", raw, offset + 24)
    kind, review, flag = struct.unpack_from("<3B", raw, offset + 28)
    return a, b, confidence, kind, review, flag


def _decode_multiple(raw: bytes):
    count, = struct.unpack_from("<Q", raw, 0)
    items = [_record_dtype_fields(raw, 8 + 32 * i) for i in range(count)]
    ids = struct.unpack_from(f"<{count}Q", raw, 8 + 32 * count)
    assert len(raw) == 8 + 40 * count
    return list(ids), items


def _body(response) -> bytes:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    if response.get("Content-Encoding") == "gzip":
        return gzip.decompress(content)
    return content


@pytest.fixture
def run(data_root):
    """A public dataset and a run of N synapses with known points, properties and partners."""
    rng = np.random.default_rng(7)
    dataset = DatasetFactory(is_public=True, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2], shape_z=SHAPE[0], shape_y=SHAPE[1],
                             shape_x=SHAPE[2])
    cells = [CellFactory(dataset=dataset, segment_id=s) for s in (11, 12, 13, BIG_SEGMENT)]
    run = SynapseRunFactory(dataset=dataset, name="detected")
    extent = np.array(SHAPE) * np.array(VOXEL)
    rows = []
    for i in range(N):
        pre = rng.uniform(0, extent - 200)
        post = pre + rng.uniform(-150, 150, 3).clip(-pre, None)
        ctr = (pre + post) / 2
        row = Synapse(
            dataset=dataset, run=run, pre=cells[i % 4], post=cells[(i + 1) % 4] if i % 7 else None,
            confidence=None if i % 11 == 0 else float(rng.uniform()),
            kind="electrical" if i % 13 == 0 else "chemical",
            review_state=REVIEW[i % len(REVIEW)],
            flag="self_contact" if i % 17 == 0 else "",
            ctr_z=ctr[0], ctr_y=ctr[1], ctr_x=ctr[2],
        )
        if i % 5:
            row.pre_z, row.pre_y, row.pre_x = pre
            row.post_z, row.post_y, row.post_x = post
        rows.append(row)
    rows.append(Synapse(dataset=dataset, run=run))  # no point at all: not in the layer
    Synapse.objects.bulk_create(rows)
    other = SynapseRunFactory(dataset=dataset, name="other")  # its synapses never show
    Synapse.objects.create(dataset=dataset, run=other, ctr_z=0, ctr_y=0, ctr_x=0)
    return run


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    monkeypatch.setattr(annotations, "LIMIT", LIMIT)


def _login(client, user):
    user.save()  # the factories set the password without saving it
    client.force_login(user)


def _url(run_id, path):
    return reverse("viewer:run-annotations", kwargs={"run_id": run_id, "path": path})


def _to_ng(p):
    return [p[2] / VOXEL[2] + 0.5, p[1] / VOXEL[1] + 0.5, p[0] / VOXEL[0] + 0.5]


def _expected(run):
    """id -> (point A, point B) in Neuroglancer voxels, properties, segments."""
    out = {}
    for s in Synapse.objects.filter(run=run).select_related("pre", "post"):
        pts = {p: (getattr(s, f"{p}_z"), getattr(s, f"{p}_y"), getattr(s, f"{p}_x"))
               for p in ("pre", "ctr", "post")}
        pts = {k: v for k, v in pts.items() if v[0] is not None}
        if not pts:
            continue
        a = pts.get("pre") or pts.get("ctr") or pts["post"]
        b = pts.get("post") or pts.get("ctr") or pts["pre"]
        out[s.pk] = {
            "a": _to_ng(a), "b": _to_ng(b), "confidence": s.confidence,
            "kind": annotations.KINDS.index(s.kind),
            "review": annotations.REVIEW_STATES.index(s.review_state),
            "flag": annotations.FLAGS.index(s.flag),
            "pre": [s.pre.segment_id] if s.pre else [], "post": [s.post.segment_id] if s.post else [],
        }
    return out


def _info(client, run):
    response = client.get(_url(run.pk, "info"))
    assert response.status_code == 200, response.content
    return json.loads(_body(response))


def test_info_is_a_valid_annotation_info(client, run):
    info = _info(client, run)
    assert info["@type"] == "neuroglancer_annotations_v1"
    assert info["annotation_type"] == "LINE"
    assert info["dimensions"] == {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [4e-8, "m"]}
    assert info["lower_bound"] == [0.0, 0.0, 0.0]
    assert info["upper_bound"] == [3000.0, 2000.0, 50.0]
    assert [p["id"] for p in info["properties"]] == ["confidence", "kind", "review_state", "flag"]
    review = info["properties"][2]
    assert review["enum_labels"][review["enum_values"].index(2)] == "not a synapse"
    assert info["relationships"] == [{"id": "pre_segment", "key": "rel_pre_segment"},
                                     {"id": "post_segment", "key": "rel_post_segment"}]
    assert info["by_id"] == {"key": "by_id"}
    levels = info["spatial"]
    assert levels[0]["grid_shape"] == [1, 1, 1]
    assert len(levels) >= 3
    extent = np.array(info["upper_bound"]) - np.array(info["lower_bound"])
    for coarse, fine in itertools.pairwise(levels):
        ratio = np.array(coarse["chunk_size"]) / np.array(fine["chunk_size"])
        assert set(np.round(ratio, 9)) <= {1.0, 2.0}
    for level in levels:
        assert np.allclose(np.array(level["grid_shape"]) * level["chunk_size"], extent)
        assert level["limit"] <= LIMIT


def test_every_synapse_appears_at_exactly_one_level_in_the_cells_it_touches(client, run):
    info = _info(client, run)
    expected = _expected(run)
    assert len(expected) == N
    level_of = {}
    lower = np.array(info["lower_bound"])
    for number, level in enumerate(info["spatial"]):
        grid, chunk = level["grid_shape"], np.array(level["chunk_size"])
        placed = {}
        for cell in itertools.product(*(range(g) for g in grid)):
            response = client.get(_url(run.pk, f"{level['key']}/{'_'.join(map(str, cell))}"))
            assert response.status_code == 200
            ids, items = _decode_multiple(_body(response))
            assert len(ids) <= level["limit"]
            for synapse_id, (a, b, confidence, kind, review, flag) in zip(ids, items):
                e = expected[synapse_id]
                assert np.allclose(a, e["a"], atol=1e-3) and np.allclose(b, e["b"], atol=1e-3)
                assert (kind, review, flag) == (e["kind"], e["review"], e["flag"])
                lo = np.floor((np.minimum(a, b) - lower) / chunk)
                hi = np.floor((np.maximum(a, b) - lower) / chunk)
                assert np.all(lo <= cell) and np.all(np.array(cell) <= hi)
                placed.setdefault(synapse_id, set()).add(cell)
        for synapse_id, cells in placed.items():
            assert synapse_id not in level_of, f"synapse {synapse_id} at two levels"
            level_of[synapse_id] = number
            e = expected[synapse_id]
            lo = np.floor((np.minimum(e["a"], e["b"]) - lower) / chunk).astype(int)
            hi = np.floor((np.maximum(e["a"], e["b"]) - lower) / chunk).astype(int)
            touched = set(itertools.product(*(range(x, y + 1) for x, y in zip(lo, hi))))
            assert cells == touched
    assert set(level_of) == set(expected)
    # The coarsest level is a subsample bounded by the limit, not everything.
    assert 0 < sum(1 for v in level_of.values() if v == 0) <= LIMIT


def test_by_id_decodes_to_points_properties_and_partners(client, run):
    _info(client, run)
    expected = _expected(run)
    for synapse_id in list(expected)[:40]:
        raw = _body(client.get(_url(run.pk, f"by_id/{synapse_id}")))
        a, b, confidence, kind, review, flag = _record_dtype_fields(raw, 0)
        e = expected[synapse_id]
        assert np.allclose(a, e["a"], atol=1e-3) and np.allclose(b, e["b"], atol=1e-3)
        if e["confidence"] is None:
            assert np.isnan(confidence)
        else:
            assert confidence == pytest.approx(e["confidence"], rel=1e-6)
        assert (kind, review, flag) == (e["kind"], e["review"], e["flag"])
        offset, segments = 32, []
        for _ in range(2):
            count, = struct.unpack_from("<I", raw, offset)
            segments.append(list(struct.unpack_from(f"<{count}Q", raw, offset + 4)))
            offset += 4 + 8 * count
        assert offset == len(raw)
        assert segments == [e["pre"], e["post"]]
    assert client.get(_url(run.pk, "by_id/999999999")).status_code == 404


def test_relationship_index_lists_the_synapses_of_a_segment(client, run):
    expected = _expected(run)
    for relationship, key in (("pre_segment", "pre"), ("post_segment", "post")):
        for segment in (11, BIG_SEGMENT):
            ids, items = _decode_multiple(_body(client.get(
                _url(run.pk, f"rel_{relationship}/{segment}"))))
            assert sorted(ids) == sorted(i for i, e in expected.items() if e[key] == [segment])
            assert len(ids) > 100
            for synapse_id, (a, *_rest) in zip(ids, items):
                assert np.allclose(a, expected[synapse_id]["a"], atol=1e-3)
    empty = _body(client.get(_url(run.pk, "rel_pre_segment/424242")))
    assert empty == struct.pack("<Q", 0)
    assert client.get(_url(run.pk, "rel_pre_segment/x1")).status_code == 400
    assert client.get(_url(run.pk, "rel_other/11")).status_code == 404


def test_bad_names_are_clear_errors(client, run):
    _info(client, run)
    response = client.get(_url(run.pk, "spatial0/0_0"))
    assert response.status_code == 400 and "x_y_z" in response.json()["detail"]
    assert client.get(_url(run.pk, "spatial0/1_0_0")).status_code == 404
    assert client.get(_url(run.pk, "spatial99/0_0_0")).status_code == 404


def test_another_datasets_viewer_gets_404(client, run):
    run.dataset.is_public = False
    run.dataset.save()
    member = MembershipFactory(dataset=run.dataset).user
    stranger = UserFactory()
    MembershipFactory(user=stranger)  # a viewer of another dataset
    _login(client, stranger)
    for path in ("info", "spatial0/0_0_0", "by_id/1", "rel_pre_segment/11"):
        response = client.get(_url(run.pk, path))
        assert response.status_code == 404, path
        assert "detail" in response.json()
    _login(client, member)
    response = client.get(_url(run.pk, "info"))
    assert response.status_code == 200, response.content
    assert client.get(_url(run.pk, "spatial0/0_0_0")).status_code == 200


def test_neuroglancer_reader_reads_the_served_layer(client, run, tmp_path):
    pytest.importorskip("tensorstore")
    from neuroglancer.read_precomputed_annotations import AnnotationReader

    info = _info(client, run)
    root = tmp_path / "layer"
    root.mkdir()
    (root / "info").write_text(json.dumps(info))
    for level in info["spatial"]:
        (root / level["key"]).mkdir()
        for cell in itertools.product(*(range(g) for g in level["grid_shape"])):
            name = "_".join(map(str, cell))
            (root / level["key"] / name).write_bytes(
                _body(client.get(_url(run.pk, f"{level['key']}/{name}"))))
    expected = _expected(run)
    some = list(expected)[:10]
    (root / "by_id").mkdir()
    for synapse_id in some:
        (root / "by_id" / str(synapse_id)).write_bytes(
            _body(client.get(_url(run.pk, f"by_id/{synapse_id}"))))
    (root / "rel_pre_segment").mkdir()
    (root / "rel_post_segment").mkdir()
    (root / "rel_pre_segment" / "12").write_bytes(
        _body(client.get(_url(run.pk, "rel_pre_segment/12"))))

    reader = AnnotationReader(f"file://{root}")
    found = [int(a.id) for a in reader.get_within_spatial_bounds()]
    assert sorted(set(found)) == sorted(expected)
    for synapse_id in some:
        annotation = reader.by_id[synapse_id]
        e = expected[synapse_id]
        assert np.allclose(annotation.point_a, e["a"], atol=1e-3)
        assert np.allclose(annotation.point_b, e["b"], atol=1e-3)
        assert [list(map(int, s)) for s in annotation.segments] == [e["pre"], e["post"]]
        assert int(annotation.props[2]) == e["review"]
    related = reader.relationships["pre_segment"][12]
    assert sorted(int(a.id) for a in related) == sorted(
        i for i, e in expected.items() if e["pre"] == [12])


def test_job_builds_and_run_deletion_removes_the_layer(run, django_capture_on_commit_callbacks):
    job = job_run_inline(kind="build_annotation_layer", parameters={"run": run.pk},
                         dataset=run.dataset)
    assert job.state == Job.State.DONE, job.error
    assert job.result["synapses"] == N
    assert sum(job.result["entries_per_level"]) >= N
    folder = annotations.layer_folder(run.pk)
    assert (folder / "info").exists()
    with django_capture_on_commit_callbacks(execute=True):
        run.delete()
    assert not folder.exists()


def test_a_large_run_is_built_by_a_job_not_in_the_request(client, run, monkeypatch):
    monkeypatch.setattr(annotations, "INLINE_MAX", N // 2)
    response = client.get(_url(run.pk, "info"))
    assert response.status_code == 404
    job = Job.objects.get(kind="build_annotation_layer")
    assert f"job {job.pk}" in response.json()["detail"]
    assert job.parameters == {"run": run.pk}
    client.get(_url(run.pk, "info"))
    assert Job.objects.filter(kind="build_annotation_layer").count() == 1  # not asked twice


def test_states_carry_the_run_layer(run, rf):
    base = "http://testserver"
    state = dataset_state(run.dataset, base_url=base)
    layer = next(layer for layer in state["layers"]
                 if layer["name"].startswith(RUN_LAYER_PREFIX))
    newest = run.dataset.synapse_runs.order_by("-created_at", "-pk").first()
    assert layer["source"] == f"precomputed://{base}/viewer/annotations/runs/{newest.pk}"
    assert layer.get("visible", True)
    chosen = dataset_state(run.dataset, base_url=base, synapse_run=run)
    assert any(layer["name"] == f"{RUN_LAYER_PREFIX}detected" for layer in chosen["layers"])
    synapse = Synapse.objects.filter(run=run, pre_z__isnull=False).first()
    review = synapse_state(synapse, base_url=base)
    layer = next(layer for layer in review["layers"]
                 if layer["name"].startswith(RUN_LAYER_PREFIX))
    assert layer["source"].endswith(f"/runs/{run.pk}") and layer["visible"] is False


def test_dataset_state_view_takes_the_run(client, run):
    url = reverse("viewer:dataset-state", args=[run.dataset.pk])
    state = client.get(url, {"run": run.pk}).json()
    assert any(layer.get("source", "").endswith(f"/runs/{run.pk}") for layer in state["layers"])
    response = client.get(url, {"run": "nope"})
    assert response.status_code == 400 and response.json()["detail"].startswith("run:")


def test_storing_a_large_run_asks_for_its_job(data_root, monkeypatch,
                                              django_capture_on_commit_callbacks):
    monkeypatch.setattr(annotations, "INLINE_MAX", 3)
    dataset = DatasetFactory()
    with django_capture_on_commit_callbacks(execute=True):
        small = SynapseRunFactory(dataset=dataset)
        Synapse.objects.bulk_create([Synapse(dataset=dataset, run=small, ctr_z=0, ctr_y=0,
                                             ctr_x=0) for _ in range(3)])
    with django_capture_on_commit_callbacks(execute=True):
        large = SynapseRunFactory(dataset=dataset)
        Synapse.objects.bulk_create([Synapse(dataset=dataset, run=large, ctr_z=0, ctr_y=0,
                                             ctr_x=0) for _ in range(4)])
    jobs = Job.objects.filter(kind="build_annotation_layer")
    assert [job.parameters for job in jobs] == [{"run": large.pk}]
    assert jobs[0].dataset == dataset and jobs[0].state == Job.State.QUEUED
