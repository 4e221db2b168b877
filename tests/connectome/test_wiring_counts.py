"""Right counts: one run by default, chemical and electrical synapses apart (electrical ones
undirected), the dataset's current run, and the streamed downloads of tables and matrices."""

import csv
import io
from collections import Counter

import networkx as nx
import pyarrow.parquet as pq
import pytest
from django.contrib.admin.sites import site as admin_site
from django.core.exceptions import ValidationError
from django.test import RequestFactory
from rest_framework.test import APIClient

from connectome.datasets.models import Dataset, Membership
from connectome.jobs.models import Job
from connectome.jobs.services import job_run_inline
from connectome.synapses.models import Synapse
from connectome.synapses.selectors import default_run, selected_runs
from connectome.synapses.wiring import wiring_matrix
from detection.io import tables
from tests.conftest import shared_file
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

BIG = 2**64 - 3  # a segment id stored as a negative BIGINT


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _body(response):
    return b"".join(response.streaming_content)


# --- which run by default ---------------------------------------------------------------------

def test_default_run_prefers_current_then_assignment_then_detection_then_newest():
    dataset = DatasetFactory()
    assert default_run(dataset=dataset) is None
    assert selected_runs(dataset=dataset) == []
    truth = SynapseRunFactory(dataset=dataset, name="truth", method="ground_truth")
    assert default_run(dataset=dataset) == truth  # nothing detected: the newest run
    detected = SynapseRunFactory(dataset=dataset, name="detected", method="detect:voxel_classifier")
    partners = SynapseRunFactory(dataset=dataset, name="partners", method="diffusion")
    SynapseRunFactory(dataset=dataset, name="re-import", method="import:cnapse")  # newest
    assert default_run(dataset=dataset) == partners
    assert default_run(dataset=dataset.pk) == partners  # by id: the same rule
    partners.delete()
    assert default_run(dataset=dataset) == detected
    dataset.current_run = truth
    dataset.save()
    assert default_run(dataset=dataset) == truth
    assert default_run(dataset=dataset.pk) == truth
    assert selected_runs(dataset=dataset) == [truth]
    assert selected_runs(dataset=dataset, run="all") is None
    other = SynapseRunFactory()  # another dataset's run is never selected
    assert selected_runs(dataset=dataset, run=[detected.pk, other.pk]) == [detected]


def test_default_run_of_many_datasets_in_one_query_follows_the_same_rule():
    from django.contrib.auth.models import AnonymousUser

    from connectome.web.selectors import datasets_with_counts

    empty = DatasetFactory(is_public=True)
    imported = DatasetFactory(is_public=True)
    SynapseRunFactory(dataset=imported, method="ground_truth")
    detected = DatasetFactory(is_public=True)
    SynapseRunFactory(dataset=detected, method="contact")
    SynapseRunFactory(dataset=detected, method="ground_truth")
    chosen = DatasetFactory(is_public=True)
    chosen.current_run = SynapseRunFactory(dataset=chosen, method="ground_truth")
    chosen.save()
    SynapseRunFactory(dataset=chosen, method="detect:x")
    SynapseFactory(run=chosen.current_run)
    rows = {d.pk: d for d in datasets_with_counts(user=AnonymousUser())}
    for dataset in (empty, imported, detected, chosen):
        expected = default_run(dataset=dataset)
        assert rows[dataset.pk].default_run_id == (expected and expected.pk), dataset
    assert rows[chosen.pk].n_synapses == 1 and rows[empty.pk].n_synapses == 0


def test_current_run_must_belong_to_the_dataset():
    dataset = DatasetFactory()
    foreign = SynapseRunFactory()
    dataset.current_run = foreign
    with pytest.raises(ValidationError, match="current_run"):
        dataset.full_clean()


def test_dataset_admins_set_the_current_run_over_the_api():
    dataset = DatasetFactory(is_public=True)
    run = SynapseRunFactory(dataset=dataset)
    foreign = SynapseRunFactory()
    admin, viewer = UserFactory(), UserFactory()
    MembershipFactory(dataset=dataset, user=admin, role=Membership.Role.ADMIN)
    MembershipFactory(dataset=dataset, user=viewer, role=Membership.Role.VIEWER)
    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/"

    client.force_authenticate(viewer)
    assert client.patch(url, {"current_run": run.pk}, format="json").status_code == 403
    client.force_authenticate(admin)
    response = client.patch(url, {"current_run": foreign.pk}, format="json")
    assert response.status_code == 400
    assert "current_run" in response.json()["error"]
    response = client.patch(url, {"current_run": run.pk}, format="json")
    assert response.status_code == 200 and response.json()["current_run"] == run.pk
    assert Dataset.objects.get(pk=dataset.pk).current_run == run
    response = client.patch(url, {"current_run": None}, format="json")
    assert response.status_code == 200 and response.json()["current_run"] is None


def test_admin_form_offers_only_the_datasets_runs():
    from django.test import Client

    dataset = DatasetFactory()
    own = SynapseRunFactory(dataset=dataset, name="own run")
    foreign = SynapseRunFactory(name="foreign run")
    request = RequestFactory().get("/")
    request.user = UserFactory(is_staff=True, is_superuser=True)
    model_admin = admin_site._registry[Dataset]
    form = model_admin.get_form(request, dataset)
    assert list(form.base_fields["current_run"].queryset) == [own]
    client = Client()
    request.user.save()  # the factory sets the password without saving it; sessions check it
    client.force_login(request.user)
    response = client.get(f"/admin/datasets/dataset/{dataset.pk}/change/")
    assert response.status_code == 200, response
    page = response.content.decode()
    assert 'name="current_run"' in page and "own run" in page and "foreign run" not in page
    assert foreign.pk != own.pk


@pytest.fixture
def twice():
    """The issue's case: a ground-truth table and a detection of the same two synapses from
    cell 2 onto cell 36, one chemical synapse back, and a gap junction."""
    dataset = DatasetFactory(is_public=True)
    c2 = CellFactory(dataset=dataset, segment_id=2, cell_type="A")
    c36 = CellFactory(dataset=dataset, segment_id=36, cell_type="B")
    truth = SynapseRunFactory(dataset=dataset, name="ground truth", method="ground_truth")
    detected = SynapseRunFactory(dataset=dataset, name="detected", method="contact")
    for run in (truth, detected):
        for z in (100.0, 200.0):
            SynapseFactory(run=run, pre=c2, post=c36, confidence=0.9, ctr_z=z, ctr_y=8.0,
                           ctr_x=16.0, size_voxels=12)
    SynapseFactory(run=truth, pre=c36, post=c2, ctr_z=50.0, ctr_y=8.0, ctr_x=8.0)
    return dataset, truth, detected, c2, c36


def test_api_counts_one_run_by_default(twice):
    dataset, truth, detected, c2, c36 = twice
    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/wiring/"
    body = client.get(url).json()
    assert body["runs"] == [detected.pk]
    assert [(r["pre_cell"], r["post_cell"], r["synapses"]) for r in body["rows"]] == [
        (c2.pk, c36.pk, 2)]
    body = client.get(url, {"run": "all"}).json()
    assert body["runs"] == "all"
    assert {(r["pre_cell"], r["post_cell"]): r["synapses"] for r in body["rows"]} == {
        (c2.pk, c36.pk): 4, (c36.pk, c2.pk): 1}
    body = client.get(url, {"run": truth.pk}).json()
    assert body["synapses"] == 3
    partners = client.get(f"/api/cells/{c2.pk}/partners/").json()
    assert [(p["cell"], p["synapses"]) for p in partners["downstream"]] == [(c36.pk, 2)]
    assert partners["upstream"] == [] and partners["electrical"] == []
    types = client.get(f"/api/datasets/{dataset.pk}/cell-types/").json()
    assert [(t["cell_type"], t["outgoing_synapses"]) for t in types] == [("A", 2), ("B", 0)]
    between = client.get("/api/synapses/between/", {"a": c2.pk, "b": c36.pk}).json()
    assert len(between["results"]) == 2
    between = client.get("/api/synapses/between/", {"a": c2.pk, "b": c36.pk, "run": "all"})
    assert len(between.json()["results"]) == 5
    assert client.get(url, {"run": "all,3"}).status_code == 400
    elsewhere = SynapseRunFactory()
    for endpoint in (url, f"/api/cells/{c2.pk}/partners/",
                     f"/api/datasets/{dataset.pk}/synapse-table/"):
        response = client.get(endpoint, {"run": f"{truth.pk},{elsewhere.pk}"})
        assert response.status_code == 400, endpoint
        assert f"has no synapse run {elsewhere.pk}" in response.json()["error"]


def test_the_current_run_changes_what_is_counted(twice):
    dataset, truth, _, _c2, _c36 = twice
    dataset.current_run = truth
    dataset.save()
    body = APIClient().get(f"/api/datasets/{dataset.pk}/wiring/").json()
    assert body["runs"] == [truth.pk] and body["synapses"] == 3


# --- chemical and electrical apart ------------------------------------------------------------

@pytest.fixture
def gaps():
    """a -> b chemical twice, a - b electrical listed once each way (two junctions), b - c
    electrical three times, a gap junction of a with itself (not counted)."""
    dataset = DatasetFactory(is_public=True)
    run = SynapseRunFactory(dataset=dataset, method="import:edges")
    a = CellFactory(dataset=dataset, segment_id=BIG, name="a", cell_type="X")
    b = CellFactory(dataset=dataset, segment_id=5, name="b", cell_type="Y")
    c = CellFactory(dataset=dataset, segment_id=9, name="c", cell_type="Y")
    electrical = Synapse.Kind.ELECTRICAL
    nowhere = {"ctr_z": None, "ctr_y": None, "ctr_x": None}  # an edge table has no positions
    for _ in range(2):
        SynapseFactory(run=run, pre=a, post=b, weight=1.0, **nowhere)
    SynapseFactory(run=run, pre=a, post=b, kind=electrical, weight=0.5, **nowhere)
    SynapseFactory(run=run, pre=b, post=a, kind=electrical, weight=0.25, **nowhere)
    for _ in range(3):
        SynapseFactory(run=run, pre=c, post=b, kind=electrical, **nowhere)
    SynapseFactory(run=run, pre=a, post=a, kind=electrical, **nowhere)
    return dataset, run, (a, b, c)


def test_matrix_keeps_kinds_apart_and_electrical_undirected(gaps):
    dataset, _run, (a, b, c) = gaps
    chemical = wiring_matrix(dataset=dataset)
    assert [(p.pre_cell_id, p.post_cell_id, p.synapses, p.kind) for p in chemical.pairs] == [
        (a.pk, b.pk, 2, "chemical")]
    electrical = wiring_matrix(dataset=dataset, kind="electrical")
    pairs = {frozenset((p.pre_cell_id, p.post_cell_id)): p for p in electrical.pairs}
    assert {k: p.synapses for k, p in pairs.items()} == {
        frozenset((a.pk, b.pk)): 2, frozenset((b.pk, c.pk)): 3}
    assert pairs[frozenset((a.pk, b.pk))].weight == pytest.approx(0.75)
    for pair in electrical.pairs:  # listed once, the cell with the lower id first
        assert pair.pre_cell_id < pair.post_cell_id and pair.kind == "electrical"
    both = wiring_matrix(dataset=dataset, kind="all")
    assert (both.synapses_of("chemical"), both.synapses_of("electrical")) == (2, 5)
    by_type = wiring_matrix(dataset=dataset, kind="electrical", group_by="cell_type")
    assert [(p.pre_type, p.post_type, p.synapses) for p in by_type.pairs] == [
        ("X", "Y", 2), ("Y", "Y", 3)]
    assert wiring_matrix(dataset=dataset, kind="electrical", min_count=3).synapses == 3


def test_partners_and_type_summary_keep_kinds_apart(gaps):
    dataset, _, (a, b, c) = gaps
    client = APIClient()
    body = client.get(f"/api/cells/{b.pk}/partners/").json()
    assert [(p["cell"], p["synapses"]) for p in body["upstream"]] == [(a.pk, 2)]
    assert body["downstream"] == []
    assert [(p["cell"], p["synapses"]) for p in body["electrical"]] == [(c.pk, 3), (a.pk, 2)]
    assert "electrical" not in client.get(f"/api/cells/{b.pk}/partners/",
                                          {"direction": "both"}).json()
    summary = {t["cell_type"]: t for t in client.get(
        f"/api/datasets/{dataset.pk}/cell-types/").json()}
    assert (summary["X"]["outgoing_synapses"], summary["X"]["electrical_synapses"]) == (2, 2)
    assert (summary["Y"]["incoming_synapses"], summary["Y"]["electrical_synapses"]) == (2, 5)
    assert summary["X"]["electrical_partner_types"] == 1
    assert summary["Y"]["electrical_partner_types"] == 2  # X, and Y itself (b - c)
    body = client.get(f"/api/datasets/{dataset.pk}/wiring/", {"kind": "all"}).json()
    assert (body["chemical_synapses"], body["electrical_synapses"]) == (2, 5)
    assert {row["kind"] for row in body["rows"]} == {"chemical", "electrical"}
    response = client.get(f"/api/datasets/{dataset.pk}/wiring/", {"kind": "magnetic"})
    assert response.status_code == 400 and "kind" in response.json()["error"]


def _witvliet(path):
    with open(path, newline="") as stream:
        rows = [(r["pre"], r["post"], r["type"], int(r["synapses"]))
                for r in csv.DictReader(stream)]
    chemical = Counter()
    electrical = Counter()
    for pre, post, kind, n in rows:
        if pre == post:  # a cell with itself is not a connection between two cells
            continue
        if kind == "chemical":
            chemical[(pre, post)] += n
        else:
            electrical[frozenset((pre, post))] += n
    return rows, chemical, electrical


@pytest.mark.slow
@pytest.mark.parametrize("table", [  # the eight stages, L1 to adult
    "witvliet_2020_1_L1.csv", "witvliet_2020_2_L1.csv", "witvliet_2020_3_L1.csv",
    "witvliet_2020_4_L1.csv", "witvliet_2020_5_L2.csv", "witvliet_2020_6_L3.csv",
    "witvliet_2020_7_adult.csv", "witvliet_2020_8_adult.csv"])
def test_witvliet_counts_chemical_and_electrical_apart(table):
    source = shared_file(f"celegans_witvliet2021/{table}")
    rows, chemical, electrical = _witvliet(source)
    dataset = DatasetFactory(name="celegans", is_public=True, voxel_size_z=1,
                             voxel_size_y=1, voxel_size_x=1)
    job = job_run_inline(kind="import_synapses", dataset=dataset, parameters={
        "source": str(source), "run_name": "witvliet 2021", "table_format": "edges",
        "create_missing_cells": True})
    assert job.state == Job.State.DONE, job.error

    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/wiring/"
    body = client.get(url).json()  # chemical by default
    # The chemical total is the sum of the chemical rows, less those of a cell onto itself.
    assert body["synapses"] == sum(n for _, _, kind, n in rows if kind == "chemical") - sum(
        n for pre, post, kind, n in rows if kind == "chemical" and pre == post)
    assert body["synapses"] == sum(chemical.values())
    assert {(r["pre_name"], r["post_name"]): r["synapses"] for r in body["rows"]} == chemical

    body = client.get(url, {"kind": "electrical"}).json()
    assert body["synapses"] == sum(electrical.values())
    got = Counter()
    for row in body["rows"]:
        key = frozenset((row["pre_name"], row["post_name"]))
        assert key not in got, f"the gap junctions of {sorted(key)} are listed twice"
        got[key] = row["synapses"]
    assert got == electrical

    body = client.get(url, {"kind": "all"}).json()
    assert (body["chemical_synapses"], body["electrical_synapses"]) == (
        sum(chemical.values()), sum(electrical.values()))
    assert body["synapses"] == sum(chemical.values()) + sum(electrical.values())


# --- downloads ----------------------------------------------------------------------------------

def test_synapse_table_downloads_are_streamed_and_read_back(twice, tmp_path):
    dataset, truth, detected, _c2, _c36 = twice
    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/synapse-table/"
    response = client.get(url)
    assert response.streaming and response["Content-Type"] == "text/csv"
    assert f"run-{detected.pk}" in response["Content-Disposition"]
    path = tmp_path / "cnapse.csv"
    path.write_bytes(_body(response))
    rows = tables.read_cnapse(path)
    expected = list(detected.synapses.order_by("id"))
    assert [r.syn_id for r in rows] == [s.pk for s in expected]
    assert [(r.pre, r.post, r.position, r.size) for r in rows] == [
        (2, 36, (s.ctr_z, s.ctr_y, s.ctr_x), 12) for s in expected]

    path = tmp_path / "cave.csv"
    path.write_bytes(_body(client.get(url, {"output": "cave", "run": "all"})))
    cave = tables.read_cave(path)
    assert sorted(r.id for r in cave) == sorted(
        Synapse.objects.filter(dataset=dataset).values_list("id", flat=True))
    assert Counter((r.pre, r.post) for r in cave) == {(2, 36): 4, (36, 2): 1}
    voxels = tables.read_cave(_written(tmp_path / "v.csv", client.get(
        url, {"output": "cave", "position_unit": "voxel"})), position_unit="voxel",
        voxel_size=dataset.voxel_size)
    assert sorted(r.center for r in voxels) == sorted(r.position for r in rows)

    response = client.get(url, {"output": "parquet", "run": "all"})
    assert response.streaming
    table = pq.read_table(io.BytesIO(_body(response)))
    assert table.num_rows == 5
    assert sorted(table.column("pre_segment_id").to_pylist()) == [2, 2, 2, 2, 36]
    assert set(table.column("run_id").to_pylist()) == {truth.pk, detected.pk}


def test_a_synapse_table_without_rows_is_its_header():
    dataset = DatasetFactory(is_public=True)
    SynapseRunFactory(dataset=dataset)
    url = f"/api/datasets/{dataset.pk}/synapse-table/"
    client = APIClient()
    cave = _body(client.get(url, {"output": "cave"})).decode()
    assert cave == (
        "id,pre_pt_root_id,post_pt_root_id,pre_pt_position_x,pre_pt_position_y,"
        "pre_pt_position_z,post_pt_position_x,post_pt_position_y,post_pt_position_z,"
        "ctr_pt_position_x,ctr_pt_position_y,ctr_pt_position_z,size\n")
    cnapse = _body(client.get(url, {"output": "cnapse"})).decode()
    assert cnapse.count("\n") == 1 and cnapse.startswith("syn_id,")


def _written(path, response):
    path.write_bytes(_body(response))
    return path


def test_synapse_table_of_an_edge_table_needs_parquet(gaps):
    dataset, *_ = gaps
    client = APIClient()
    response = client.get(f"/api/datasets/{dataset.pk}/synapse-table/")
    assert response.status_code == 400
    assert "output" in response.json()["error"] and "no position" in response.json()["error"]
    table = pq.read_table(io.BytesIO(_body(client.get(
        f"/api/datasets/{dataset.pk}/synapse-table/", {"output": "parquet"}))))
    assert table.num_rows == 8 and Counter(table.column("kind").to_pylist()) == {
        "chemical": 2, "electrical": 6}


def test_downloads_are_for_viewers_of_the_dataset_only():
    dataset = DatasetFactory(is_public=False)
    run = SynapseRunFactory(dataset=dataset)
    SynapseFactory(run=run, pre=CellFactory(dataset=dataset), post=CellFactory(dataset=dataset),
                   ctr_z=1.0, ctr_y=1.0, ctr_x=1.0)
    viewer, stranger = UserFactory(), UserFactory()
    MembershipFactory(dataset=dataset, user=viewer, role=Membership.Role.VIEWER)
    urls = [f"/api/datasets/{dataset.pk}/synapse-table/?output={o}"
            for o in ("cnapse", "cave", "parquet")]
    urls += [f"/api/datasets/{dataset.pk}/wiring/?output={o}" for o in ("csv", "parquet",
                                                                         "graphml")]
    client = APIClient()
    for url in urls:
        assert client.get(url).status_code == 404, url
    client.force_authenticate(stranger)
    for url in urls:
        assert client.get(url).status_code == 404, url
    client.force_authenticate(viewer)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200 and response.streaming, url
        assert "attachment" in response["Content-Disposition"]


def test_wiring_downloads_match_the_json_matrix(gaps):
    dataset, _, (_a, _b, _c) = gaps
    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/wiring/"
    for kind in ("chemical", "electrical", "all"):
        rows = client.get(url, {"kind": kind}).json()["rows"]
        text = _body(client.get(url, {"kind": kind, "output": "csv"})).decode()
        got = [(r["pre_segment_id"], r["post_segment_id"], int(r["synapses"]), r["kind"])
               for r in csv.DictReader(io.StringIO(text))]
        assert got == [(r["pre_segment_id"], r["post_segment_id"], r["synapses"], r["kind"])
                       for r in rows]
        table = pq.read_table(io.BytesIO(_body(client.get(url, {"kind": kind,
                                                                "output": "parquet"}))))
        assert table.column("synapses").to_pylist() == [r["synapses"] for r in rows]
        assert [str(v) for v in table.column("pre_segment_id").to_pylist()] == [
            r["pre_segment_id"] for r in rows]


@pytest.mark.parametrize("kind,graph_class", [
    ("chemical", nx.DiGraph), ("electrical", nx.Graph), ("all", nx.MultiDiGraph)])
def test_networkx_reads_the_served_graphml(gaps, tmp_path, kind, graph_class):
    dataset, _, (_a, _b, _c) = gaps
    client = APIClient()
    url = f"/api/datasets/{dataset.pk}/wiring/"
    rows = client.get(url, {"kind": kind}).json()["rows"]
    response = client.get(url, {"kind": kind, "output": "graphml"})
    assert response.streaming and response["Content-Type"] == "application/graphml+xml"
    graph = nx.read_graphml(_written(tmp_path / "w.graphml", response))
    assert type(graph) is graph_class
    assert graph.nodes[str(BIG)] == {"segment_id": str(BIG), "name": "a", "cell_type": "X"}
    edges = {}
    for pre, post, data in graph.edges(data=True):
        key = (data["kind"], pre, post) if data["kind"] == "chemical" else (
            data["kind"], *sorted((pre, post)))
        edges[key] = (data["synapses"], data.get("weight"))
    expected = {}
    for r in rows:
        ends = (r["pre_segment_id"], r["post_segment_id"])
        key = (r["kind"], *ends) if r["kind"] == "chemical" else (r["kind"], *sorted(ends))
        expected[key] = (r["synapses"], r["weight"])
    assert edges == expected


# --- pages --------------------------------------------------------------------------------------

def test_dataset_page_and_review_queue_count_the_same_run(twice):
    """The dataset page said '18 / 160' where the queue said '/ 80': both now count the default
    run, with the queue's own progress selector."""
    from django.test import Client
    from django.urls import reverse

    from connectome.review.services import review_create

    dataset, _truth, detected, _c2, _c36 = twice
    review_create(synapse=detected.synapses.first(), reviewer=None, verdict="confirmed")
    client = Client()
    page = client.get(reverse("web:dataset", args=[dataset.pk]))
    queue = client.get(reverse("web:review", args=[dataset.pk]))
    assert queue.context["selected_run"] == detected.pk
    assert page.context["progress"] == queue.context["progress"]
    assert (page.context["progress"]["reviewed"], page.context["progress"]["total"]) == (1, 2)
    assert (page.context["counts"].chemical_synapses, page.context["counts"].synapses) == (2, 2)
    everything = client.get(reverse("web:dataset", args=[dataset.pk]), {"run": "all"})
    assert everything.context["progress"]["total"] == 5
    html = page.content.decode()
    api = f"/api/datasets/{dataset.pk}"
    for link in (f"{api}/synapse-table/?output=cnapse&amp;run={detected.pk}",
                 f"{api}/wiring/?output=graphml&amp;kind=all&amp;run={detected.pk}"):
        assert link in html


def test_cell_pages_show_electrical_partners_apart(gaps):
    from django.test import Client
    from django.urls import reverse

    dataset, _, (a, b, c) = gaps
    client = Client()
    cells = client.get(reverse("web:cells", args=[dataset.pk]))
    counts = {cell.name: (cell.n_outgoing, cell.n_incoming, cell.n_electrical)
              for cell in cells.context["cells"]}
    # Rows, not counted connections: a's junction with itself is one of a's rows.
    assert counts == {"a": (2, 0, 3), "b": (0, 2, 5), "c": (0, 0, 3)}
    page = client.get(reverse("web:cell", args=[dataset.pk, b.pk]))
    assert [(p["cell_id"], p["synapses"]) for p in page.context["electrical"]] == [
        (c.pk, 3), (a.pk, 2)]
    assert [(p["cell_id"], p["synapses"]) for p in page.context["upstream"]] == [(a.pk, 2)]
