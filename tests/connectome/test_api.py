"""The REST API: dataset visibility by role, job creation and cancel, JSON errors."""

import pytest
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from connectome.jobs.models import Job
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return APIClient()


def _as(client, role, dataset):
    user = UserFactory()
    if role is not None:
        MembershipFactory(dataset=dataset, user=user, role=role)
    client.force_authenticate(user)
    return user


def test_anonymous_users_see_only_public_datasets(client):
    DatasetFactory(name="private")
    DatasetFactory(name="open", is_public=True)
    body = client.get("/api/datasets/").json()
    assert [d["name"] for d in body["results"]] == ["open"]


def test_members_see_their_datasets_and_others_get_404(client):
    mine = DatasetFactory(name="mine")
    other = DatasetFactory(name="other")
    _as(client, Membership.Role.VIEWER, mine)
    assert [d["name"] for d in client.get("/api/datasets/").json()["results"]] == ["mine"]
    response = client.get(f"/api/datasets/{other.pk}/")
    assert response.status_code == 404
    assert response.json()["error"] == "No Dataset matches the given query."


def test_cells_serialise_uint64_ids_as_strings(client):
    dataset = DatasetFactory(is_public=True)
    CellFactory(dataset=dataset, segment_id=2**64 - 1)
    body = client.get(f"/api/cells/?dataset={dataset.pk}").json()
    assert body["results"][0]["segment_id"] == str(2**64 - 1)


def test_synapse_filters_and_invalid_filter_is_400(client):
    dataset = DatasetFactory(is_public=True)
    s1 = SynapseFactory(run__dataset=dataset)
    SynapseFactory(run__dataset=dataset)
    body = client.get(f"/api/synapses/?dataset={dataset.pk}&pre={s1.pre_id}").json()
    assert [s["id"] for s in body["results"]] == [s1.pk]
    response = client.get("/api/synapses/?pre=abc")
    assert response.status_code == 400
    assert response.json()["error"] == "pre: 'abc' is not an integer"


@pytest.mark.parametrize("role,allowed", [
    (None, False), (Membership.Role.VIEWER, False), (Membership.Role.REVIEWER, False),
    (Membership.Role.ADMIN, True),
])
def test_only_dataset_admins_start_jobs(client, role, allowed, django_capture_on_commit_callbacks):
    dataset = DatasetFactory(is_public=True)
    _as(client, role, dataset)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/api/jobs/", {"kind": "selftest", "dataset": dataset.pk,
                                              "parameters": {"units": 3}}, format="json")
    if allowed:
        assert response.status_code == 201, response.json()
        assert response.json()["state"] == "queued"
        assert Job.objects.get().parameters["units"] == 3
    else:
        assert response.status_code == 403
        assert "admin role" in response.json()["error"]
        assert not Job.objects.exists()


def test_anonymous_cannot_start_jobs_even_on_public_data(client):
    dataset = DatasetFactory(is_public=True)
    response = client.post("/api/jobs/", {"kind": "selftest", "dataset": dataset.pk}, format="json")
    assert response.status_code in (401, 403)
    assert not Job.objects.exists()


def test_bad_job_parameters_are_400_naming_the_field(client, tmp_path):
    dataset = DatasetFactory()
    _as(client, Membership.Role.ADMIN, dataset)
    missing = tmp_path / "file.h5"
    response = client.post("/api/jobs/", {"kind": "import_volume", "dataset": dataset.pk,
                                          "parameters": {"name": "em", "source": str(missing)}},
                           format="json")
    assert response.status_code == 400
    assert f"{missing} does not exist" in response.json()["error"]
    response = client.post("/api/jobs/", {"kind": "bogus", "dataset": dataset.pk}, format="json")
    assert response.status_code == 400
    assert "unknown job kind 'bogus'" in response.json()["error"]


def test_cancel_a_queued_job(client, django_capture_on_commit_callbacks):
    dataset = DatasetFactory()
    _as(client, Membership.Role.ADMIN, dataset)
    with django_capture_on_commit_callbacks(execute=False):
        job_id = client.post("/api/jobs/", {"kind": "selftest", "dataset": dataset.pk},
                             format="json").json()["id"]
    response = client.post(f"/api/jobs/{job_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"


def test_unknown_job_is_404(client):
    client.force_authenticate(UserFactory(is_staff=True))
    assert client.get("/api/jobs/999999/").status_code == 404
