"""The Python client (``client/``, package ``connectome_client``) against a live server over
real HTTP: every method, its column types, paging, authentication and errors."""

import numpy as np
import pandas as pd
import pytest
from rest_framework.authtoken.models import Token

from connectome.datasets.models import Membership
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

connectome_client = pytest.importorskip(
    "connectome_client", reason="the client is not installed: pip install -e client/ "
                                "(scripts/setup does it)")
Client = connectome_client.Client

pytestmark = pytest.mark.django_db(transaction=True)
BIG = 2**64 - 3  # a segment id above 2**63, stored as a negative BIGINT


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    """A public dataset with three typed cells and five synapses in two runs (one with an
    unassigned post partner); a private dataset with a member who has a token."""
    fly = DatasetFactory(name="fly", is_public=True)
    a = CellFactory(dataset=fly, segment_id=BIG, name="KC-1", cell_type="KC",
                    centroid_z=40.0, centroid_y=8.5, centroid_x=16.0)
    b = CellFactory(dataset=fly, segment_id=12, name="MBON-1", cell_type="MBON")
    c = CellFactory(dataset=fly, segment_id=13, name="PN-1", cell_type="PN")
    truth = SynapseRunFactory(dataset=fly, name="truth")
    other = SynapseRunFactory(dataset=fly, name="other")
    # The pages' and the API's default run is the dataset's current run.
    fly.current_run = truth
    fly.save(update_fields=["current_run"])
    synapses = [
        SynapseFactory(run=truth, pre=a, post=b, confidence=0.9, ctr_z=100.0, ctr_y=200.0,
                       ctr_x=300.5, contact_area_nm2=10.0, weight=1.0),
        SynapseFactory(run=truth, pre=a, post=b, confidence=0.7, ctr_z=5000.0,
                       contact_area_nm2=30.0, weight=1.0),
        SynapseFactory(run=truth, pre=c, post=a, confidence=0.6, contact_area_nm2=5.0,
                       weight=0.5),
        SynapseFactory(run=other, pre=b, post=c, confidence=0.5),
        SynapseFactory(run=other, pre=a, post=None, confidence=0.4),
    ]
    secret = DatasetFactory(name="secret", is_public=False)
    CellFactory(dataset=secret, segment_id=77, name="hidden", cell_type="KC")
    member = UserFactory(username="alice")
    MembershipFactory(dataset=secret, user=member, role=Membership.Role.VIEWER)
    token = Token.objects.create(user=member).key
    return {"fly": fly, "cells": (a, b, c), "runs": (truth, other), "synapses": synapses,
            "secret": secret, "member": member, "token": token}


def test_datasets_as_anonymous_and_with_a_token(live_server, world):
    anonymous = Client(live_server.url, token="").datasets()
    assert anonymous["name"].tolist() == ["fly"]
    assert anonymous["id"].dtype == np.int64
    assert anonymous["voxel_size"].iloc[0] == [40.0, 8.0, 8.0]
    member = Client(live_server.url, token=world["token"]).datasets()
    assert member["name"].tolist() == ["fly", "secret"]


def test_token_from_the_environment_and_a_wrong_token(live_server, world, monkeypatch):
    monkeypatch.setenv("CONNECTOME_TOKEN", world["token"])
    assert "secret" in Client(live_server.url).datasets()["name"].tolist()
    with pytest.raises(connectome_client.PermissionDenied) as caught:
        Client(live_server.url, token="0" * 40).datasets()
    assert caught.value.status == 403 and "Invalid token" in caught.value.message


def test_cells_uint64_segment_ids_and_paging(live_server, world):
    fly = world["fly"]
    # Two rows a page: three pages, all handled.
    cells = Client(live_server.url, page_size=2).cells(fly.pk)
    assert cells["segment_id"].dtype == np.uint64
    assert sorted(cells["segment_id"].tolist()) == [12, 13, BIG]
    assert cells["id"].dtype == np.int64
    row = cells.set_index("name").loc["KC-1"]
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == (40.0, 8.5, 16.0)
    assert cells["centroid_z"].dtype == np.float64 and np.isnan(
        cells.set_index("name").loc["PN-1", "centroid_z"])
    kc = Client(live_server.url).cells(fly.pk, cell_type="KC")
    assert kc["name"].tolist() == ["KC-1"]
    by_segment = Client(live_server.url).cells(fly.pk, segment_ids=[BIG, 13])
    assert sorted(by_segment["name"]) == ["KC-1", "PN-1"]


def test_runs(live_server, world):
    runs = Client(live_server.url).runs(world["fly"].pk)
    assert sorted(runs["name"]) == ["other", "truth"]
    assert runs["id"].dtype == np.int64 and set(runs["dataset"]) == {world["fly"].pk}
    assert str(runs["job"].dtype) == "Int64" and runs["job"].isna().all()


def test_partners(live_server, world):
    a, b, c = world["cells"]
    partners = Client(live_server.url).partners(a.pk)
    assert partners[["direction", "cell", "synapses"]].values.tolist() == [
        ["upstream", c.pk, 1], ["downstream", b.pk, 2]]
    assert partners["segment_id"].dtype == np.uint64
    down = partners[partners["direction"] == "downstream"].iloc[0]
    assert down["contact_area_nm2"] == 40.0 and down["mean_confidence"] == pytest.approx(0.8)
    # The run passes through: in run "other" a has no partner cell (its post is unassigned).
    assert Client(live_server.url).partners(a.pk, run=world["runs"][1].pk).empty
    only_up = Client(live_server.url).partners(a.pk, direction="upstream")
    assert only_up["direction"].tolist() == ["upstream"]


def test_synapses_by_pre_post_box_and_run_with_paging(live_server, world):
    fly, (a, b, c) = world["fly"], world["cells"]
    client = Client(live_server.url, page_size=1)
    out_of_a = client.synapses(fly.pk, pre=a.pk)
    assert len(out_of_a) == 3
    assert out_of_a["id"].tolist() == sorted(s.pk for s in world["synapses"]
                                              if s.pre_id == a.pk)
    assert str(out_of_a["pre_segment_id"].dtype) == "UInt64"
    assert out_of_a["pre_segment_id"].tolist() == [BIG, BIG, BIG]
    # The unassigned partner: missing cell and segment, not 0.
    unassigned = out_of_a[out_of_a["post"].isna()]
    assert len(unassigned) == 1 and unassigned["post_segment_id"].isna().all()
    assert str(out_of_a["post"].dtype) == "Int64"
    assert out_of_a["ctr_x"].dtype == np.float64 and 300.5 in out_of_a["ctr_x"].tolist()

    boxed = client.synapses(fly.pk, bbox=((0, 0, 0), (1000, 1000, 1000)))
    assert sorted(boxed["id"]) == sorted(s.pk for s in world["synapses"] if s.ctr_z < 1000)
    truth = client.synapses(fly.pk, run=world["runs"][0].pk, post_segment_id=12)
    assert len(truth) == 2 and set(truth["confidence"]) == {0.9, 0.7}
    assert client.synapses(fly.pk, pre=[a.pk, c.pk], post=b.pk)["confidence"].tolist() == [
        0.9, 0.7]
    # kind passes through as the server takes it.
    assert len(client.synapses(fly.pk, kind="chemical")) == 5


def test_wiring_by_cell_and_by_type(live_server, world):
    fly, (a, b, c) = world["fly"], world["cells"]
    client = Client(live_server.url)
    wiring = client.wiring(fly.pk, run=world["runs"][0].pk)
    matrix = wiring.pivot(index="pre_cell", columns="post_cell", values="synapses")
    assert matrix.loc[a.pk, b.pk] == 2 and matrix.loc[c.pk, a.pk] == 1
    assert wiring["pre_segment_id"].dtype == np.uint64
    assert set(wiring["pre_segment_id"]) == {BIG, 13}
    types = client.wiring(fly.pk, group_by="cell_type", cell_types=["KC", "MBON"])
    assert types[["pre_type", "post_type", "synapses"]].values.tolist() == [["KC", "MBON", 2]]
    among = client.wiring(fly.pk, segment_ids=[BIG, 12])
    assert among[["pre_cell", "post_cell"]].values.tolist() == [[a.pk, b.pk]]


def test_search(live_server, world):
    a = world["cells"][0]
    found = Client(live_server.url).search("kc")
    assert found[["kind", "cell_type", "cells"]].iloc[0].tolist() == ["cell_type", "KC", 1]
    assert found["kind"].tolist() == ["cell_type", "cell"]
    assert found["id"].iloc[1] == a.pk and found["segment_id"].iloc[1] == BIG
    assert str(found["segment_id"].dtype) == "UInt64"
    member = Client(live_server.url, token=world["token"]).search("kc")
    assert sorted(member.loc[member["kind"] == "cell_type", "dataset_name"]) == ["fly", "secret"]
    segment = Client(live_server.url).search(str(BIG))
    assert segment[["kind", "id"]].values.tolist() == [["segment", a.pk]]


def test_errors_name_the_field(live_server, world):
    client = Client(live_server.url)
    with pytest.raises(connectome_client.InvalidRequest) as caught:
        client.synapses(pre_segment_id=12)
    assert caught.value.status == 400 and caught.value.field == "pre_segment_id"
    assert "needs a dataset" in str(caught.value)
    with pytest.raises(connectome_client.InvalidRequest) as caught:
        client.synapses(world["fly"].pk, min_confidence="high")
    assert caught.value.field == "min_confidence"
    with pytest.raises(connectome_client.InvalidRequest) as caught:
        client.wiring(world["fly"].pk, group_by="neuron")
    assert caught.value.field == "group_by" and "group_by" in caught.value.message
    with pytest.raises(connectome_client.InvalidRequest) as caught:
        client.search("")
    assert caught.value.field == "q"
    # A private dataset is not found, as one that does not exist.
    with pytest.raises(connectome_client.NotFound) as caught:
        client.wiring(world["secret"].pk)
    assert caught.value.status == 404
    with pytest.raises(ValueError, match="bbox"):
        client.synapses(world["fly"].pk, bbox=(1, 2, 3))


def test_session_login_reads_and_posts(live_server, world):
    world["member"].set_password("pw-alice")
    world["member"].save()
    client = Client.login(live_server.url, "alice", "pw-alice")
    assert "secret" in client.datasets()["name"].tolist()
    # The wiring matrix is a POST: the session's CSRF token goes with it.
    assert client.wiring(world["secret"].pk).empty
    with pytest.raises(connectome_client.PermissionDenied):
        Client.login(live_server.url, "alice", "wrong")


def test_unknown_columns_come_through():
    from connectome_client.client import _frame

    frame = _frame([{"id": 1, "pre_segment_id": "18446744073709551615", "novel": "x"}],
                   ["id", "pre_segment_id", "ctr_z"], "synapses")
    assert frame.columns.tolist() == ["id", "pre_segment_id", "ctr_z", "novel"]
    assert frame["pre_segment_id"].iloc[0] == 2**64 - 1
    assert np.isnan(frame["ctr_z"].iloc[0]) and frame["novel"].iloc[0] == "x"
    empty = _frame([], ["id", "segment_id"], "cells")
    assert empty.columns.tolist() == ["id", "segment_id"] and len(empty) == 0
    assert isinstance(empty, pd.DataFrame)
