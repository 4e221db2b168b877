"""Connectivity over the API: synapse filters and cursor pages, partners, the wiring matrix,
synapses between two cells, the cell-type summary, exports, and the 400/404 errors."""

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from connectome.jobs.services import job_run_inline
from connectome.synapses import apis as synapse_apis
from connectome.synapses.models import Synapse
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # The factories set a password per user; the default hasher costs ~0.1 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

BIG = 2**64 - 1  # a segment id stored as a negative BIGINT
#: The fixture's two runs describe different synapses: count both (one run is the default).
ALL = {"run": "all"}


@pytest.fixture
def client():
    return APIClient()


@pytest.fixture
def net():
    """A public dataset: a -> b three times (one rejected, one low confidence), b -> a once,
    c -> a twice, a -> a (self contact, flagged), plus a private dataset with one synapse."""
    dataset = DatasetFactory(is_public=True)
    run = SynapseRunFactory(dataset=dataset, method="cnapse")
    other_run = SynapseRunFactory(dataset=dataset, method="contact")
    a = CellFactory(dataset=dataset, segment_id=BIG, cell_type="KC", name="a")
    b = CellFactory(dataset=dataset, segment_id=7, cell_type="MBON", name="b")
    c = CellFactory(dataset=dataset, segment_id=9, cell_type="KC", name="c")
    s = {
        "ab1": SynapseFactory(run=run, pre=a, post=b, confidence=0.9, contact_area_nm2=100.0,
                              ctr_z=100.0, ctr_y=100.0, ctr_x=100.0),
        "ab2": SynapseFactory(run=run, pre=a, post=b, confidence=0.8, contact_area_nm2=200.0,
                              ctr_z=200.0, ctr_y=200.0, ctr_x=200.0),
        "ab3": SynapseFactory(run=other_run, pre=a, post=b, confidence=0.3,
                              contact_area_nm2=300.0, ctr_z=5000.0, ctr_y=5000.0, ctr_x=5000.0),
        "ab_rejected": SynapseFactory(run=run, pre=a, post=b, confidence=0.99,
                                      review_state=Synapse.ReviewState.NOT_SYNAPSE),
        "ba": SynapseFactory(run=run, pre=b, post=a, confidence=0.7, contact_area_nm2=50.0),
        "ca1": SynapseFactory(run=run, pre=c, post=a, confidence=0.6),
        "ca2": SynapseFactory(run=run, pre=c, post=a, confidence=0.6),
        "aa": SynapseFactory(run=run, pre=a, post=a, flag=Synapse.Flag.SELF_CONTACT),
    }
    private = SynapseFactory()
    return {"dataset": dataset, "run": run, "other_run": other_run, "a": a, "b": b, "c": c,
            "s": s, "private": private}


def _ids(body):
    return sorted(row["id"] for row in body["results"])


# --- synapse lists ------------------------------------------------------------------------------

def test_synapse_filters(client, net):
    s, d = net["s"], net["dataset"]
    base = f"/api/synapses/?dataset={d.pk}"

    def ids(query):
        response = client.get(f"{base}&{query}")
        assert response.status_code == 200, response.json()
        return _ids(response.json())

    pre_a = sorted(x.pk for k, x in s.items() if k.startswith("ab") or k == "aa")
    assert ids(f"pre={net['a'].pk}") == pre_a
    assert ids(f"pre_segment_id={BIG}") == pre_a
    assert ids(f"pre={net['b'].pk},{net['c'].pk}&post={net['a'].pk}") == sorted(
        [s["ba"].pk, s["ca1"].pk, s["ca2"].pk])
    assert ids(f"post_segment_id=7&min_confidence=0.85") == sorted(
        [s["ab1"].pk, s["ab_rejected"].pk])
    assert ids("bbox=0,0,0,250,250,250") == sorted([s["ab1"].pk, s["ab2"].pk])
    assert ids(f"run={net['other_run'].pk}") == [s["ab3"].pk]
    assert ids("method=contact") == [s["ab3"].pk]
    assert ids("review_state=not_synapse") == [s["ab_rejected"].pk]


def test_synapse_rows_carry_segment_ids_as_strings(client, net):
    body = client.get(f"/api/synapses/{net['s']['ab1'].pk}/").json()
    assert body["pre_segment_id"] == str(BIG)
    assert body["post_segment_id"] == "7"


@pytest.mark.parametrize("query,field,message", [
    ("bbox=0,0,0,1,1,1", "bbox", "this filter needs a dataset"),
    ("dataset={d}&bbox=0,0,0,1,1", "bbox", "six numbers"),
    ("dataset={d}&bbox=5,0,0,1,1,1", "bbox", "z0<=z1"),
    ("dataset={d}&bbox=a,0,0,1,1,1", "bbox", "not a number"),
    ("min_confidence=high", "min_confidence", "A valid number is required."),
    ("min_confidence=nan", "min_confidence", "A valid number is required."),
    ("pre=1,x", "pre", "'x' is not an integer"),
    ("pre_segment_id=-1&dataset={d}", "pre_segment_id", "outside the uint64 range"),
    ("review_state=maybe", "review_state", "'maybe' is not one of"),
])
def test_invalid_synapse_filters_are_400(client, net, query, field, message):
    response = client.get("/api/synapses/?" + query.format(d=net["dataset"].pk))
    assert response.status_code == 400
    body = response.json()
    assert field in body["detail"]
    assert message in body["error"]


def test_unknown_or_hidden_ids_are_404(client, net):
    hidden = net["private"]
    assert client.get("/api/synapses/999999/").status_code == 404
    assert client.get(f"/api/synapses/{hidden.pk}/").status_code == 404
    response = client.get(f"/api/synapses/?dataset={hidden.dataset_id}")
    assert response.status_code == 404
    assert response.json()["error"] == "No Dataset matches the given query."
    assert client.get("/api/cells/999999/partners/").status_code == 404
    assert client.get(f"/api/cells/{hidden.pre_id}/partners/").status_code == 404
    assert client.get(f"/api/datasets/{hidden.dataset_id}/wiring/").status_code == 404
    assert client.get(f"/api/datasets/{hidden.dataset_id}/cell-types/").status_code == 404


def test_cursor_pages_are_stable_under_inserts_and_use_no_offset(client, net):
    d = net["dataset"]
    response = client.get(f"/api/synapses/?dataset={d.pk}&page_size=3")
    first = response.json()
    before = set(Synapse.objects.filter(dataset=d).values_list("pk", flat=True))
    added = {SynapseFactory(run=net["run"]).pk for _ in range(2)}
    seen = [row["id"] for row in first["results"]]
    url = first["next"]
    while url:
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url).json()
        assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen))
    assert set(seen) == before | added
    assert seen == sorted(seen)


# --- partners -----------------------------------------------------------------------------------

def test_partners_of_a_cell(client, net):
    a, b, c = net["a"], net["b"], net["c"]
    body = client.get(f"/api/cells/{a.pk}/partners/", ALL).json()
    assert body["cell"] == a.pk and body["segment_id"] == str(BIG)
    # Rejected and self-contact synapses do not count.
    assert [(p["cell"], p["synapses"]) for p in body["downstream"]] == [(b.pk, 3)]
    down = body["downstream"][0]
    assert down["segment_id"] == "7" and down["cell_type"] == "MBON" and down["name"] == "b"
    assert down["contact_area_nm2"] == pytest.approx(600.0)
    assert down["mean_confidence"] == pytest.approx((0.9 + 0.8 + 0.3) / 3)
    assert [(p["cell"], p["synapses"]) for p in body["upstream"]] == [(c.pk, 2), (b.pk, 1)]


def test_partners_follow_the_verdicts(client, net):
    a, b, c = net["a"], net["b"], net["c"]
    Synapse.objects.filter(pk=net["s"]["ca1"].pk).update(
        review_state=Synapse.ReviewState.WRONG_DIRECTION)       # a -> c after all
    Synapse.objects.filter(pk=net["s"]["ab1"].pk).update(review_state=Synapse.ReviewState.WRONG_PARTNER)
    body = client.get(f"/api/cells/{a.pk}/partners/", ALL).json()
    assert [(p["cell"], p["synapses"]) for p in body["downstream"]] == [(b.pk, 2), (c.pk, 1)]
    assert [(p["cell"], p["synapses"]) for p in body["upstream"]] == [(b.pk, 1), (c.pk, 1)]
    down_c = body["downstream"][1]
    assert down_c["segment_id"] == "9" and down_c["name"] == "c" and down_c["cell_type"] == "KC"
    body = client.get(f"/api/cells/{c.pk}/partners/", ALL).json()
    assert [(p["cell"], p["synapses"]) for p in body["upstream"]] == [(a.pk, 1)]
    assert [(p["cell"], p["synapses"]) for p in body["downstream"]] == [(a.pk, 1)]


def test_partner_thresholds_and_direction(client, net):
    a, b, c = net["a"], net["b"], net["c"]
    url = f"/api/cells/{a.pk}/partners/"
    body = client.get(url, {"min_confidence": 0.75, **ALL}).json()
    assert [(p["cell"], p["synapses"]) for p in body["downstream"]] == [(b.pk, 2)]
    assert body["upstream"] == []
    body = client.get(url, {"min_count": 2, "direction": "upstream", **ALL}).json()
    assert "downstream" not in body
    assert [(p["cell"], p["synapses"]) for p in body["upstream"]] == [(c.pk, 2)]
    body = client.get(url, {"run": net["other_run"].pk}).json()
    assert [(p["cell"], p["synapses"]) for p in body["downstream"]] == [(b.pk, 1)]
    response = client.get(url, {"direction": "sideways"})
    assert response.status_code == 400
    assert "direction" in response.json()["error"]


# --- wiring matrix ------------------------------------------------------------------------------

def _pairs(body):
    return {(r["pre_cell"], r["post_cell"]): r["synapses"] for r in body["rows"]}


def test_wiring_matrix_among_cells(client, net):
    a, b, c, d = net["a"], net["b"], net["c"], net["dataset"]
    body = client.get(f"/api/datasets/{d.pk}/wiring/", {"cells": f"{a.pk},{b.pk}", **ALL}).json()
    assert body["group_by"] == "cell"
    assert _pairs(body) == {(a.pk, b.pk): 3, (b.pk, a.pk): 1}
    assert body["synapses"] == 4
    row = next(r for r in body["rows"] if r["pre_cell"] == a.pk)
    assert row["pre_segment_id"] == str(BIG) and row["contact_area_nm2"] == pytest.approx(600.0)
    by_segment = client.get(f"/api/datasets/{d.pk}/wiring/", {"segment_ids": f"{BIG},9", **ALL}).json()
    assert _pairs(by_segment) == {(c.pk, a.pk): 2}
    everything = client.get(f"/api/datasets/{d.pk}/wiring/", {"min_count": 2, **ALL}).json()
    assert _pairs(everything) == {(a.pk, b.pk): 3, (c.pk, a.pk): 2}


def test_wiring_matrix_post_body_for_long_cell_lists(client, net):
    a, b, c, d = net["a"], net["b"], net["c"], net["dataset"]
    response = client.post(f"/api/datasets/{d.pk}/wiring/",
                           {"cells": [a.pk, b.pk, c.pk], "min_confidence": 0.65, "run": "all"}, format="json")
    assert response.status_code == 200, response.json()
    assert _pairs(response.json()) == {(a.pk, b.pk): 2, (b.pk, a.pk): 1}


def test_wiring_matrix_by_cell_type_and_type_selection(client, net):
    d = net["dataset"]
    body = client.get(f"/api/datasets/{d.pk}/wiring/", {"group_by": "cell_type", **ALL}).json()
    assert {(r["pre_type"], r["post_type"]): r["synapses"] for r in body["rows"]} == {
        ("KC", "MBON"): 3, ("MBON", "KC"): 1, ("KC", "KC"): 2}
    assert "pre_cell" not in body["rows"][0]
    body = client.get(f"/api/datasets/{d.pk}/wiring/", {"cell_types": "KC", **ALL}).json()
    assert _pairs(body) == {(net["c"].pk, net["a"].pk): 2}


def test_wiring_matrix_csv(client, net):
    a, b, d = net["a"], net["b"], net["dataset"]
    response = client.get(f"/api/datasets/{d.pk}/wiring/",
                          {"cells": f"{a.pk},{b.pk}", "output": "csv", **ALL})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["pre_segment_id"], r["post_segment_id"], r["synapses"]) for r in rows] == [
        ("7", str(BIG), "1"), (str(BIG), "7", "3")]


def test_large_wiring_matrix_is_streamed_with_the_same_content(client, net, monkeypatch):
    url = f"/api/datasets/{net['dataset'].pk}/wiring/"
    whole = client.get(url, ALL).json()
    monkeypatch.setattr(synapse_apis, "STREAM_PAIRS", 1)
    response = client.get(url, ALL)
    assert response.streaming
    assert json.loads(b"".join(response.streaming_content)) == whole


@pytest.mark.parametrize("params,status,message", [
    ({"cells": "999999"}, 404, "has no cell ids 999999"),
    ({"segment_ids": "12345"}, 404, "has no segment ids 12345"),
    ({"cell_types": "KC,nope"}, 404, "has no cell types nope"),
    ({"cells": "1", "cell_types": "KC"}, 400, "give one of cells, segment_ids, cell_types"),
    ({"group_by": "region"}, 400, "group_by"),
    ({"min_count": 0}, 400, "min_count"),
    ({"output": "xml"}, 400, "output"),
])
def test_wiring_matrix_errors(client, net, params, status, message):
    response = client.get(f"/api/datasets/{net['dataset'].pk}/wiring/", params)
    assert response.status_code == status
    assert message in response.json()["error"]


# --- between, cell types ------------------------------------------------------------------------

def test_synapses_between_two_cells(client, net):
    a, b, s = net["a"], net["b"], net["s"]
    body = client.get("/api/synapses/between/", {"a": a.pk, "b": b.pk, **ALL}).json()
    assert _ids(body) == sorted([s["ab1"].pk, s["ab2"].pk, s["ab3"].pk, s["ab_rejected"].pk,
                                 s["ba"].pk])
    body = client.get("/api/synapses/between/",
                      {"a": b.pk, "b": a.pk, "direction": "a_to_b", **ALL}).json()
    assert _ids(body) == [s["ba"].pk]
    body = client.get("/api/synapses/between/",
                      {"a": a.pk, "b": b.pk, "min_confidence": 0.85,
                       "review_state": "unreviewed", **ALL}).json()
    assert _ids(body) == [s["ab1"].pk]
    response = client.get("/api/synapses/between/", {"a": a.pk, "b": 999999})
    assert response.status_code == 404
    response = client.get("/api/synapses/between/", {"a": a.pk})
    assert response.status_code == 400 and "b" in response.json()["detail"]


def test_synapses_between_cells_of_two_datasets_is_400(client, net):
    elsewhere = CellFactory(dataset=DatasetFactory(is_public=True))
    response = client.get("/api/synapses/between/", {"a": net["a"].pk, "b": elsewhere.pk})
    assert response.status_code == 400
    assert "different datasets" in response.json()["error"]


def test_cell_type_summary(client, net):
    body = client.get(f"/api/datasets/{net['dataset'].pk}/cell-types/", ALL).json()
    assert body == [
        {"cell_type": "KC", "cells": 2, "outgoing_synapses": 5, "incoming_synapses": 3,
         "outgoing_partner_types": 2, "incoming_partner_types": 2, "electrical_synapses": 0,
         "electrical_partner_types": 0},
        {"cell_type": "MBON", "cells": 1, "outgoing_synapses": 1, "incoming_synapses": 3,
         "outgoing_partner_types": 1, "incoming_partner_types": 1, "electrical_synapses": 0,
         "electrical_partner_types": 0},
    ]


# --- exports ------------------------------------------------------------------------------------

@pytest.mark.parametrize("table_format", ["csv", "parquet"])
def test_synapse_table_export_job_and_download(client, net, data_root, table_format):
    d = net["dataset"]
    admin = UserFactory()
    MembershipFactory(dataset=d, user=admin, role=Membership.Role.ADMIN)
    job = job_run_inline(kind="export_synapse_table", dataset=d, user=admin,
                         parameters={"table_format": table_format})
    assert job.state == "done", job.error
    assert job.result["rows"] == 8
    assert job.result["download"] == f"/api/jobs/{job.pk}/download/"
    response = client.get(job.result["download"])  # public dataset: anyone may read it
    assert response.status_code == 200
    content = b"".join(response.streaming_content)
    if table_format == "csv":
        rows = list(csv.DictReader(io.StringIO(content.decode())))
        by_id = {int(r["id"]): r for r in rows}
    else:
        table = pq.read_table(io.BytesIO(content))
        assert str(table.schema.field("pre_segment_id").type) == "uint64"
        by_id = {r["id"]: r for r in table.to_pylist()}
    assert len(by_id) == 8
    row = by_id[net["s"]["ab_rejected"].pk]
    assert int(row["pre_segment_id"]) == BIG
    assert row["review_state"] == "not_synapse"


def test_export_of_one_run_and_unknown_run(net, data_root):
    d = net["dataset"]
    job = job_run_inline(kind="export_synapse_table", dataset=d,
                         parameters={"runs": [net["other_run"].pk]})
    assert job.result["rows"] == 1
    job = job_run_inline(kind="export_synapse_table", dataset=d, parameters={"runs": [999999]})
    assert job.state == "failed"
    assert "has no synapse runs [999999]" in job.error


def test_download_needs_a_finished_export_the_user_can_see(client, net, data_root):
    private = net["private"].dataset
    job = job_run_inline(kind="export_synapse_table", dataset=private, parameters={})
    assert client.get(f"/api/jobs/{job.pk}/download/").status_code == 404
    viewer = UserFactory()
    MembershipFactory(dataset=private, user=viewer, role=Membership.Role.VIEWER)
    client.force_authenticate(viewer)
    response = client.get(f"/api/jobs/{job.pk}/download/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"id,run_id,kind,pre_segment_id")
    other = job_run_inline(kind="selftest", dataset=private, parameters={"units": 1})
    response = client.get(f"/api/jobs/{other.pk}/download/")
    assert response.status_code == 404
    assert "only exports have a download" in response.json()["error"]


# --- skeletons ----------------------------------------------------------------------------------

def test_skeletons_list_without_nodes_and_detail_with_them(client, net):
    from connectome.cells.models import Skeleton

    nodes = Skeleton.pack(node_id=[1, 2], parent_id=[-1, 1], zyx=[[0, 0, 0], [40, 8, 8]],
                          radius=[10, 12], compartment=[1, 3])
    skeleton = Skeleton.objects.create(cell=net["a"], source="swc import", n_nodes=2,
                                       cable_length_nm=42.0, nodes=nodes)
    Skeleton.objects.create(cell=net["private"].pre, source="swc import", n_nodes=2,
                            cable_length_nm=1.0, nodes=nodes)
    listed = client.get(f"/api/skeletons/?cell={net['a'].pk}").json()["results"]
    assert [(s["id"], s["segment_id"]) for s in listed] == [(skeleton.pk, str(BIG))]
    assert "nodes" not in listed[0]
    assert len(client.get("/api/skeletons/").json()["results"]) == 1  # the private one is hidden
    detail = client.get(f"/api/skeletons/{skeleton.pk}/").json()
    assert detail["nodes"]["parent_id"] == [-1, 1]
    assert detail["nodes"]["zyx"][1] == [40.0, 8.0, 8.0]
