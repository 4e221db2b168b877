"""Search: by text (dataset names, cell names, cell types) and by number (segment, synapse and
cell ids), in the API and on the page; private datasets never show, not even in counts."""

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
SEARCH = "/api/search/"
# Segment ids no database id reaches, and the factories' own segment ids do not either.
SEG = 10**12


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    """A public dataset "fly" with named, typed cells and synapses; a private one, "secret",
    with cells of the same type and name, and a segment id that "fly" also has."""
    fly = DatasetFactory(name="fly", is_public=True, description="the public one")
    cells = {
        "kc": CellFactory(dataset=fly, segment_id=2**64 - 5, name="kc", cell_type="KC"),
        "KC-alpha": CellFactory(dataset=fly, segment_id=SEG + 101, name="KC-alpha",
                                cell_type="KC"),
        "MBON-kc": CellFactory(dataset=fly, segment_id=SEG + 102, name="MBON-kc",
                               cell_type="MBON"),
        "pn 7": CellFactory(dataset=fly, segment_id=SEG + 103, name="pn 7", cell_type="PN"),
        "unnamed": CellFactory(dataset=fly, segment_id=SEG + 104, name="", cell_type="KC"),
    }
    run = SynapseRunFactory(dataset=fly, name="truth")
    synapse = SynapseFactory(run=run, pre=cells["kc"], post=cells["MBON-kc"])
    secret = DatasetFactory(name="secret fly", is_public=False)
    hidden_cells = [CellFactory(dataset=secret, segment_id=SEG + 101, name="KC-secret",
                                cell_type="KC")]
    hidden_synapse = SynapseFactory(run=SynapseRunFactory(dataset=secret),
                                    pre=hidden_cells[0], post=CellFactory(dataset=secret))
    return {"fly": fly, "cells": cells, "run": run, "synapse": synapse, "secret": secret,
            "hidden_cells": hidden_cells, "hidden_synapse": hidden_synapse}


def _get(client, **params):
    response = client.get(SEARCH, params)
    assert response.status_code == 200, response.json()
    return response.json()


def _kinds(body):
    return [(r["kind"], r.get("id", r.get("cell_type"))) for r in body["results"]]


def test_text_finds_datasets_cell_types_and_cells_exact_then_prefix_then_contains(world):
    cells = world["cells"]
    body = _get(APIClient(), q="KC")
    assert body["number"] is None and body["more"] == []
    assert _kinds(body) == [
        ("cell_type", "KC"),             # no dataset is named like KC
        ("cell", cells["kc"].pk),        # exact, any case
        ("cell", cells["KC-alpha"].pk),  # prefix
        ("cell", cells["MBON-kc"].pk),   # inside the name
    ]
    cell_type = body["results"][0]
    # Three KC cells in fly; the private dataset's KC cell is not counted.
    assert cell_type["cells"] == 3 and cell_type["dataset_name"] == "fly"
    assert cell_type["url"] == f"/datasets/{world['fly'].pk}/cells/?cell_type=KC"
    assert cell_type["api"] == f"/api/cells/?dataset={world['fly'].pk}&cell_type=KC"
    kc = body["results"][1]
    assert kc == {"kind": "cell", "dataset": world["fly"].pk, "dataset_name": "fly",
                  "id": cells["kc"].pk, "segment_id": str(2**64 - 5), "name": "kc",
                  "cell_type": "KC", "url": f"/datasets/{world['fly'].pk}/cells/{cells['kc'].pk}/",
                  "api": f"/api/cells/{cells['kc'].pk}/"}

    body = _get(APIClient(), q="Fl")
    assert _kinds(body) == [("dataset", world["fly"].pk)]
    assert body["results"][0]["url"] == f"/datasets/{world['fly'].pk}/"


def test_a_number_is_a_segment_id_a_synapse_id_and_a_cell_id_not_a_name(world):
    cells, synapse = world["cells"], world["synapse"]
    body = _get(APIClient(), q=str(SEG + 101))
    assert body["number"] == str(SEG + 101)
    # The segment of fly (the private dataset's cell with the same segment id stays hidden);
    # no synapse or cell has an id that large.
    assert _kinds(body) == [("segment", cells["KC-alpha"].pk)]

    body = _get(APIClient(), q=str(synapse.pk))
    kinds = [r["kind"] for r in body["results"]]
    assert ("synapse", synapse.pk) in _kinds(body)
    hit = body["results"][kinds.index("synapse")]
    assert (hit["pre"], hit["post"]) == (cells["kc"].pk, cells["MBON-kc"].pk)
    assert hit["pre_segment_id"] == str(2**64 - 5) and hit["post_segment_id"] == str(SEG + 102)
    assert hit["url"] == f"/datasets/{world['fly'].pk}/synapses/{synapse.pk}/"
    assert hit["run_name"] == "truth"

    # A number is an id, never a part of a name.
    named = CellFactory(dataset=world["fly"], segment_id=SEG + 200, name="pn 987654",
                        cell_type="PN")
    assert named.pk != 987654
    assert _get(APIClient(), q="987654")["results"] == []
    assert _kinds(_get(APIClient(), q="pn 987654")) == [("cell", named.pk)]

    # Both kinds when one number is a segment id and a synapse id.
    other = SynapseFactory(run=world["run"], pre=cells["pn 7"], post=cells["kc"])
    twin = CellFactory(dataset=world["fly"], segment_id=other.pk)
    assert {("segment", twin.pk), ("synapse", other.pk)} <= set(
        _kinds(_get(APIClient(), q=str(other.pk))))

    # The full uint64 range: 2**64 - 5 is stored as a negative BIGINT.
    assert _kinds(_get(APIClient(), q=str(2**64 - 5))) == [("segment", cells["kc"].pk)]
    # Beyond uint64: nothing, and no error.
    assert _get(APIClient(), q=str(2**64))["results"] == []


@pytest.mark.parametrize("role", ["anonymous", "outsider", "viewer", "staff"])
def test_private_datasets_never_leak(world, role):
    client = APIClient()
    if role != "anonymous":
        user = UserFactory(is_staff=role == "staff")
        if role == "viewer":
            MembershipFactory(dataset=world["secret"], user=user, role=Membership.Role.VIEWER)
        client.force_authenticate(user)
    sees = role in ("viewer", "staff")
    secret, hidden = world["secret"], world["hidden_cells"][0]

    kc_types = [r for r in _get(client, q="kc")["results"] if r["kind"] == "cell_type"]
    assert {(r["dataset"], r["cells"]) for r in kc_types} == (
        {(world["fly"].pk, 3), (secret.pk, 1)} if sees else {(world["fly"].pk, 3)})
    assert (("cell", hidden.pk) in _kinds(_get(client, q="secret"))) == sees
    assert (("dataset", secret.pk) in _kinds(_get(client, q="secret"))) == sees
    assert (("segment", hidden.pk) in _kinds(_get(client, q=str(SEG + 101)))) == sees
    synapse = world["hidden_synapse"]
    assert (("synapse", synapse.pk) in _kinds(_get(client, q=str(synapse.pk)))) == sees
    assert (("cell", hidden.pk) in _kinds(_get(client, q=str(hidden.pk)))) == sees

    # Scoped to the private dataset: as a dataset that does not exist, unless one may see it.
    response = client.get(SEARCH, {"q": "kc", "dataset": secret.pk})
    assert response.status_code == (200 if sees else 404)
    if sees:
        assert _kinds(response.json()) == [("cell_type", "KC"), ("cell", hidden.pk)]
    assert client.get(SEARCH, {"q": "kc", "dataset": 10**9}).status_code == 404


def test_dataset_scope_and_limit(world):
    fly = world["fly"]
    for i in range(5):
        CellFactory(dataset=fly, name=f"KC-beta-{i}", cell_type="KC")
    body = _get(APIClient(), q="kc-", dataset=fly.pk, limit=3)
    assert body["dataset"] == fly.pk and body["limit"] == 3
    assert [r["name"] for r in body["results"] if r["kind"] == "cell"] == [
        "KC-alpha", "KC-beta-0", "KC-beta-1"]
    assert body["more"] == ["cell"]
    # No dataset kind in a dataset's own search.
    assert "dataset" not in [r["kind"] for r in _get(APIClient(), q="fly", dataset=fly.pk)[
        "results"]]


@pytest.mark.parametrize(("params", "field"), [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "x" * 201}, "q"),
    ({"q": "a\x00b"}, "q"),
    ({"q": "kc", "limit": 0}, "limit"),
    ({"q": "kc", "limit": 101}, "limit"),
    ({"q": "kc", "dataset": "fly"}, "dataset"),
])
def test_bad_parameters_are_400_naming_them(world, params, field):
    response = APIClient().get(SEARCH, params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"].startswith(f"{field}:"), body
    assert field in body["detail"]


def test_wildcards_are_plain_characters(world):
    CellFactory(dataset=world["fly"], name="50%_off", cell_type="odd")
    assert [r["name"] for r in _get(APIClient(), q="%_")["results"]] == ["50%_off"]
    assert _get(APIClient(), q="_")["results"][0]["name"] == "50%_off"
    assert len(_get(APIClient(), q="_")["results"]) == 1


def test_search_page_lists_results_with_links(world):
    client = Client()
    fly, cells = world["fly"], world["cells"]
    page = client.get(reverse("web:search"), {"q": "kc"}).content.decode()
    assert f'href="/datasets/{fly.pk}/cells/{cells["KC-alpha"].pk}/">KC-alpha</a>' in page
    assert f'href="/datasets/{fly.pk}/cells/?cell_type=KC">KC</a>' in page
    assert "KC-secret" not in page and "secret fly" not in page
    # In a dataset's context the header box scopes the search to it.
    page = client.get(reverse("web:search"), {"q": "kc", "dataset": fly.pk}).content.decode()
    assert f'<input type="hidden" name="dataset" value="{fly.pk}">' in page
    assert "Search all datasets" in page
    assert client.get(reverse("web:search"), {"q": "kc", "dataset": world["secret"].pk}
                      ).status_code == 404
    page = client.get(reverse("web:search"), {"q": "nothing like it"}).content.decode()
    assert "Nothing found for <b>nothing like it</b>" in page
    # The box is in the header of every page, scoped on a dataset's pages.
    home = client.get(reverse("web:home")).content.decode()
    assert 'id="search-box"' in home and 'name="dataset"' not in home
    dataset_page = client.get(reverse("web:dataset", args=[fly.pk])).content.decode()
    assert 'id="search-box"' in dataset_page
    assert f'<input type="hidden" name="dataset" value="{fly.pk}">' in dataset_page


def test_cells_page_of_one_type(world):
    fly = world["fly"]
    page = Client().get(reverse("web:cells", args=[fly.pk]), {"cell_type": "KC"}
                        ).content.decode()
    assert "Cells of type KC" in page and "KC-alpha" in page and "MBON-kc" not in page
    assert '<span class="muted">· 3</span>' in page


def test_trigram_indexes_on_postgresql():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the trigram indexes are PostgreSQL's (pg_trgm); other databases scan")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                       "'cells_cell' AND indexname LIKE '%%trgm' ORDER BY 1")
        indexes = dict(cursor.fetchall())
    assert sorted(indexes) == ["cell_name_trgm", "cell_type_trgm"]
    assert "gin (upper((name)::text) gin_trgm_ops)" in indexes["cell_name_trgm"]
    # The lookups the search makes are the indexed expression.
    from connectome.cells.models import Cell

    sql = str(Cell.objects.filter(name__icontains="kc").query)
    assert 'UPPER("cells_cell"."name"::text) LIKE UPPER(' in sql
