"""The shortcuts of the busy read paths give what the general machinery gives: synapse pages
shaped without the serializer, the partner view's own permission check, the partner rows
merged and ordered in SQL, and token authentication in one query."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from connectome.cells.apis import readable_cell
from connectome.datasets.models import Membership
from connectome.datasets.selectors import dataset_role
from connectome.synapses.apis import (
    SynapseSerializer,
    synapse_representation,
    synapse_values,
)
from connectome.synapses.connectivity import cell_partners, partner_rows
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

BIG = 2**64 - 1  # stored as -1
ABOVE = 2**63 + 5  # stored negative too


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def varied():
    """Synapses with every kind of value a page can hold: nulls, uint64 segment ids above
    2**63, each review state and flag, negative and fractional floats."""
    dataset = DatasetFactory(is_public=True)
    run = SynapseRunFactory(dataset=dataset)
    a = CellFactory(dataset=dataset, segment_id=BIG)
    b = CellFactory(dataset=dataset, segment_id=ABOVE)
    c = CellFactory(dataset=dataset, segment_id=0)
    synapses = [
        SynapseFactory(run=run, pre=a, post=b, confidence=0.1 + 0.2, weight=1e-300,
                       contact_area_nm2=12345.678901234567, site_id=-7, post_site_id=2**62,
                       external_id=42, method="cnapse", kind=Synapse.Kind.ELECTRICAL),
        SynapseFactory(run=run, pre=None, post=c, confidence=None, weight=None, ctr_z=-0.0,
                       pre_z=None, size_voxels=3.0, flag=Synapse.Flag.BACKGROUND),
        SynapseFactory(run=run, pre=c, post=None, review_state=Synapse.ReviewState.UNSURE,
                       flag=Synapse.Flag.SELF_CONTACT, size_nm3=1.5e12),
        *[SynapseFactory(run=run, pre=b, post=a, review_state=state, confidence=i / 7)
          for i, state in enumerate(Synapse.ReviewState.values)],
    ]
    return {"dataset": dataset, "cells": (a, b, c), "synapses": synapses}


def _annotated(queryset):
    from django.db.models import F

    return queryset.annotate(pre_segment_id=F("pre__segment_id"),
                             post_segment_id=F("post__segment_id")).order_by("id")


def test_synapse_pages_are_what_the_serializer_gives(varied):
    synapses = _annotated(Synapse.objects.filter(dataset=varied["dataset"]))
    expected = json.loads(json.dumps(SynapseSerializer(synapses, many=True).data))
    shaped = synapse_representation(synapse_values(synapses))
    assert shaped == expected
    assert [list(item) for item in shaped] == [list(item) for item in expected]  # key order
    assert shaped[0]["pre_segment_id"] == str(BIG) and shaped[0]["post_segment_id"] == str(ABOVE)
    assert shaped[1]["pre"] is None and shaped[1]["pre_segment_id"] is None
    assert isinstance(shaped[1]["size_voxels"], float)


def test_the_list_and_between_endpoints_send_the_serializer_s_shape(varied):
    client = APIClient()
    dataset = varied["dataset"]
    body = client.get(f"/api/synapses/?dataset={dataset.pk}&page_size=4").json()
    page = _annotated(Synapse.objects.filter(dataset=dataset))[:4]
    assert body["results"] == json.loads(json.dumps(SynapseSerializer(page, many=True).data))
    following = client.get(body["next"]).json()  # the cursor still pages by id
    assert [s["id"] for s in following["results"]] == [
        s.pk for s in _annotated(Synapse.objects.filter(dataset=dataset))[4:8]]

    a, b, _ = varied["cells"]
    between = client.get(f"/api/synapses/between/?a={a.pk}&b={b.pk}").json()
    rows = _annotated(Synapse.objects.filter(pre__in=[a, b], post__in=[a, b]))
    assert between["results"] == json.loads(json.dumps(SynapseSerializer(rows, many=True).data))


# --- the partner view's permission check ----------------------------------------------------

@pytest.mark.parametrize("public", [True, False])
@pytest.mark.parametrize("who", ["anonymous", "stranger", "viewer", "reviewer", "admin",
                                 "staff", "inactive staff"])
def test_readable_cell_agrees_with_dataset_role(public, who):
    dataset = DatasetFactory(is_public=public)
    cell = CellFactory(dataset=dataset, segment_id=BIG)
    other = DatasetFactory(is_public=False)
    if who == "anonymous":
        user = AnonymousUser()
    else:
        user = UserFactory(is_staff="staff" in who, is_active=who != "inactive staff")
        if who in ("viewer", "reviewer", "admin"):
            MembershipFactory(dataset=dataset, user=user, role=who)
            MembershipFactory(dataset=other, user=user, role="admin")  # not this dataset's
    found = readable_cell(pk=str(cell.pk), user=user)
    if dataset_role(dataset=dataset, user=user) is None:
        assert found is None
    else:
        assert (found.pk, found.dataset_id, found.segment_id) == (cell.pk, dataset.pk, BIG)


@pytest.mark.parametrize("pk", ["0", "-3", "abc", "99999999", str(2**63), "1.5", ""])
def test_readable_cell_of_no_cell_is_none(pk):
    CellFactory(dataset=DatasetFactory(is_public=True))
    assert readable_cell(pk=pk, user=AnonymousUser()) is None


def test_partners_of_a_hidden_cell_are_a_404_in_three_queries(settings):
    hidden = CellFactory(dataset=DatasetFactory(is_public=False))
    user = UserFactory()
    client = APIClient()
    client.force_authenticate(user)
    response = client.get(f"/api/cells/{hidden.pk}/partners/")
    assert response.status_code == 404
    assert response.json()["error"] == "No Cell matches the given query."
    MembershipFactory(dataset=hidden.dataset, user=user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/cells/{hidden.pk}/partners/")
    assert response.status_code == 200
    assert len(queries) == 3  # the cell with the role, the default run, the partners


# --- partner rows -----------------------------------------------------------------------------

def test_partner_rows_merge_reversed_synapses_and_order_by_uint64():
    dataset = DatasetFactory(is_public=True)
    run = SynapseRunFactory(dataset=dataset)
    me = CellFactory(dataset=dataset, segment_id=5)
    small, big, above = (CellFactory(dataset=dataset, segment_id=s) for s in (3, BIG, ABOVE))
    for partner in (small, big, above):  # one synapse each onto me: a three-way tie
        SynapseFactory(run=run, pre=partner, post=me, contact_area_nm2=1.5, weight=0.25,
                       confidence=0.5)
    # me -> small stored, reviewed as the wrong direction: counts as small -> me.
    SynapseFactory(run=run, pre=me, post=small, contact_area_nm2=2.25, weight=None,
                   confidence=None, review_state=Synapse.ReviewState.WRONG_DIRECTION)
    rows = partner_rows(cell=me)
    assert [r[0] for r in rows["upstream"]] == [small.pk, above.pk, big.pk]
    assert rows["upstream"][0] == (small.pk, 3, "", "", 2, 3.75, 0.25, 0.5)
    assert [r[1] for r in rows["upstream"][1:]] == [ABOVE, BIG]  # uint64 order, not int64
    assert rows["downstream"] == []
    partners = cell_partners(cell=me, min_count=2)
    assert [p.cell_id for p in partners["upstream"]] == [small.pk]
    assert partners["upstream"][0].mean_confidence == 0.5
    assert partner_rows(cell=me, directions=["downstream"]) == {"downstream": []}
    with pytest.raises(ValueError, match="min_count must be at least 1"):
        partner_rows(cell=me, min_count=0)


# --- token authentication ---------------------------------------------------------------------

def test_token_authentication_in_one_query():
    user = UserFactory()
    MembershipFactory(dataset=DatasetFactory(is_public=False), user=user)
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/datasets/")
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    assert "authtoken_token" in queries[0]["sql"] and "auth_user" in queries[0]["sql"]
    assert not any("authtoken_token" in q["sql"] for q in queries[1:])

    from rest_framework.test import APIRequestFactory

    from connectome.common.security import TokenAuthentication

    request = APIRequestFactory().get("/", HTTP_AUTHORIZATION=f"Token {token.key}")
    found, auth = TokenAuthentication().authenticate(request)
    assert found == user and found.username == user.username and found.is_active
    assert auth.pk == token.key and auth.user_id == user.pk and auth.created == token.created
    assert not auth._state.adding


def test_bad_tokens_are_refused_as_before():
    user = UserFactory()
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    response = client.get("/api/datasets/")
    # 403, not 401: session authentication comes first and names no WWW-Authenticate scheme.
    assert response.status_code == 403
    assert response.json()["error"] == "Invalid token."
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.get("/api/datasets/")
    assert response.status_code == 403
    assert response.json()["error"] == "User inactive or deleted."
    client.credentials(HTTP_AUTHORIZATION="Token a b")
    assert client.get("/api/datasets/").json()["error"] == (
        "Invalid token header. Token string should not contain spaces.")
