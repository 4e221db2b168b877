"""Every role on every write endpoint, on a public and on a private dataset.

Roles: anonymous, an authenticated outsider (no membership), viewer, reviewer, admin, staff.
Reviews need the reviewer role; jobs (start, cancel, resume), cell, layer and dataset edits need
the admin role; creating a dataset needs the 'add dataset' permission. On a
private dataset, those who cannot see it get 404 (its objects do not exist for them).
"""

import pytest
from rest_framework.test import APIClient

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer, Membership
from connectome.jobs.models import Job
from connectome.jobs.services import job_cancel, job_create, job_execute
from connectome.review.models import Review
from connectome.synapses.models import Synapse
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # The factories set a password per user; the default hasher costs ~0.1 s each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

ROLES = ["anonymous", "outsider", "viewer", "reviewer", "admin", "staff"]
RANK = {role: i for i, role in enumerate(ROLES)}


def _client(role, dataset):
    client = APIClient()
    if role == "anonymous":
        return client
    user = UserFactory(is_staff=role == "staff")
    if role in ("viewer", "reviewer", "admin"):
        MembershipFactory(dataset=dataset, user=user, role=Membership.Role(role))
    client.force_authenticate(user)
    return client


def _expected(role, *, needs, public):
    """The status a write gets: allowed, refused (403, 401 for anonymous), or hidden (404)."""
    if RANK[role] >= RANK[needs]:
        return "allowed"
    if not public and role in ("anonymous", "outsider"):
        return "hidden" if role == "outsider" else "refused"
    return "refused"


def _check(response, outcome, ok_status):
    if outcome == "allowed":
        assert response.status_code == ok_status, response.json()
    elif outcome == "hidden":
        assert response.status_code == 404, response.json()
    else:
        assert response.status_code in (401, 403), response.json()
        assert response.json()["error"]


@pytest.fixture(params=[True, False], ids=["public", "private"])
def public(request):
    return request.param


@pytest.mark.parametrize("role", ROLES)
def test_post_review(role, public):
    synapse = SynapseFactory(run__dataset=DatasetFactory(is_public=public))
    client = _client(role, synapse.dataset)
    response = client.post("/api/reviews/", {"synapse": synapse.pk, "verdict": "not_synapse",
                                             "note": "a membrane fold"}, format="json")
    outcome = _expected(role, needs="reviewer", public=public)
    _check(response, outcome, 201)
    synapse.refresh_from_db()
    if outcome == "allowed":
        assert response.json()["synapse_review_state"] == "not_synapse"
        assert synapse.review_state == Synapse.ReviewState.NOT_SYNAPSE
        assert Review.objects.get().note == "a membrane fold"
    else:
        assert synapse.review_state == Synapse.ReviewState.UNREVIEWED
        assert not Review.objects.exists()


@pytest.mark.parametrize("role", ROLES)
def test_patch_cell(role, public):
    cell = CellFactory(dataset=DatasetFactory(is_public=public), cell_type="KC")
    client = _client(role, cell.dataset)
    response = client.patch(f"/api/cells/{cell.pk}/", {"cell_type": "MBON", "name": "m1"},
                            format="json")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 200)
    cell.refresh_from_db()
    if outcome == "allowed":
        assert (cell.cell_type, cell.name) == ("MBON", "m1")
        assert response.json()["cell_type"] == "MBON"
    else:
        assert (cell.cell_type, cell.name) == ("KC", "")


@pytest.mark.parametrize("role", ROLES)
def test_start_export_job(role, public, django_capture_on_commit_callbacks):
    dataset = DatasetFactory(is_public=public)
    client = _client(role, dataset)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/api/jobs/", {"kind": "export_synapse_table",
                                              "dataset": dataset.pk,
                                              "parameters": {"table_format": "parquet"}},
                               format="json")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 201)
    assert Job.objects.exists() == (outcome == "allowed")


@pytest.mark.parametrize("role", ROLES)
def test_cancel_job(role, public):
    dataset = DatasetFactory(is_public=public)
    job = job_create(kind="selftest", parameters={"units": 2}, dataset=dataset, enqueue=False)
    client = _client(role, dataset)
    response = client.post(f"/api/jobs/{job.pk}/cancel/")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 200)
    job.refresh_from_db()
    assert (job.state == Job.State.CANCELLED) == (outcome == "allowed")


@pytest.mark.parametrize("role", ROLES)
def test_resume_job(role, public, django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr("connectome.jobs.blocks.blocks_enqueue", lambda job_id: 0)
    dataset = DatasetFactory(is_public=public)
    job = job_create(kind="selftest_blocks", parameters={"blocks": 3}, dataset=dataset,
                     enqueue=False)
    job_execute(job_id=job.pk)
    job_cancel(job=Job.objects.get(pk=job.pk))
    client = _client(role, dataset)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(f"/api/jobs/{job.pk}/resume/")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 200)
    job.refresh_from_db()
    assert (job.state == Job.State.RUNNING) == (outcome == "allowed")


@pytest.mark.parametrize("role", ROLES)
def test_patch_dataset(role, public):
    dataset = DatasetFactory(is_public=public, description="before")
    client = _client(role, dataset)
    response = client.patch(f"/api/datasets/{dataset.pk}/",
                            {"description": "after", "name": "renamed"}, format="json")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 200)
    dataset.refresh_from_db()
    if outcome == "allowed":
        assert (dataset.name, dataset.description) == ("renamed", "after")
        assert response.json()["description"] == "after"
    else:
        assert dataset.description == "before"


@pytest.mark.parametrize("role", ROLES)
def test_patch_layer(role, public):
    dataset = DatasetFactory(is_public=public)
    layer = Layer.objects.create(
        dataset=dataset, name="em", kind="em", dtype="uint8", shape_z=1, shape_y=2, shape_x=3,
        chunk_z=1, chunk_y=2, chunk_x=3, storage_path=f"datasets/{dataset.pk}/layers/em.zarr")
    client = _client(role, dataset)
    response = client.patch(f"/api/layers/{layer.pk}/", {"name": "raw"}, format="json")
    outcome = _expected(role, needs="admin", public=public)
    _check(response, outcome, 200)
    layer.refresh_from_db()
    assert layer.name == ("raw" if outcome == "allowed" else "em")
    assert layer.storage_path.endswith("em.zarr")   # the files stay where they are


@pytest.mark.parametrize("role", ["anonymous", "outsider", "staff", "granted"])
def test_create_dataset_needs_the_add_permission(role):
    from django.contrib.auth.models import Permission

    client = APIClient()
    user = None
    if role != "anonymous":
        user = UserFactory(is_staff=role == "staff")
        if role == "granted":
            user.user_permissions.add(Permission.objects.get(codename="add_dataset"))
        client.force_authenticate(user)
    response = client.post("/api/datasets/", {"name": "fly", "voxel_size": [40, 8, 8],
                                              "is_public": True}, format="json")
    if role != "granted":
        assert response.status_code in (401, 403) and response.json()["error"]
        assert not Dataset.objects.filter(name="fly").exists()
        return
    assert response.status_code == 201, response.json()
    assert response.json()["voxel_size"] == [40.0, 8.0, 8.0]
    dataset = Dataset.objects.get(name="fly")
    assert Membership.objects.get(dataset=dataset, user=user).role == Membership.Role.ADMIN
    again = client.post("/api/datasets/", {"name": "fly", "voxel_size": [40, 8, 8]},
                        format="json")
    assert again.status_code == 400 and "name" in again.json()["error"]
    bad = client.post("/api/datasets/", {"name": "x", "voxel_size": [40, 0, 8]}, format="json")
    assert bad.status_code == 400 and "voxel_size" in bad.json()["error"]


@pytest.mark.parametrize("method,url", [
    ("put", "/api/datasets/{dataset}/"), ("delete", "/api/datasets/{dataset}/"),
    ("put", "/api/cells/{cell}/"), ("delete", "/api/cells/{cell}/"),
    ("post", "/api/synapses/"), ("patch", "/api/synapses/{synapse}/"),
    ("delete", "/api/reviews/{review}/"), ("delete", "/api/jobs/{job}/"),
])
def test_methods_the_api_does_not_offer_are_405_even_for_staff(method, url):
    synapse = SynapseFactory()
    review = Review.objects.create(synapse=synapse, verdict="confirmed")
    job = job_create(kind="selftest", parameters={}, dataset=synapse.dataset, enqueue=False)
    client = _client("staff", synapse.dataset)
    url = url.format(dataset=synapse.dataset_id, cell=synapse.pre_id, synapse=synapse.pk,
                     review=review.pk, job=job.pk)
    response = getattr(client, method)(url, {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]
    assert Cell.objects.filter(pk=synapse.pre_id).exists()


def test_review_refuses_cells_of_another_dataset_and_unknown_synapses():
    synapse = SynapseFactory(run__dataset=DatasetFactory(is_public=True))
    client = _client("reviewer", synapse.dataset)
    elsewhere = CellFactory()
    response = client.post("/api/reviews/", {"synapse": synapse.pk, "verdict": "wrong_partner",
                                             "corrected_post": [elsewhere.pk]}, format="json")
    assert response.status_code == 400
    assert "corrected_post" in response.json()["detail"]
    response = client.post("/api/reviews/", {"synapse": 999999, "verdict": "confirmed"},
                           format="json")
    assert response.status_code == 404
    response = client.post("/api/reviews/", {"synapse": synapse.pk, "verdict": "unreviewed"},
                           format="json")
    assert response.status_code == 400
    assert "verdict" in response.json()["detail"]
    assert not Review.objects.exists()


def test_review_with_corrected_partners_and_latest_verdict_wins():
    synapse = SynapseFactory(run__dataset=DatasetFactory())
    client = _client("reviewer", synapse.dataset)
    right = CellFactory(dataset=synapse.dataset)
    response = client.post("/api/reviews/", {"synapse": synapse.pk, "verdict": "wrong_partner",
                                             "corrected_post": [right.pk]}, format="json")
    assert response.status_code == 201
    assert response.json()["corrected_post"] == [right.pk]
    client.post("/api/reviews/", {"synapse": synapse.pk, "verdict": "confirmed"}, format="json")
    synapse.refresh_from_db()
    assert synapse.review_state == "confirmed"
    listed = client.get(f"/api/reviews/?synapse={synapse.pk}").json()["results"]
    assert [r["verdict"] for r in listed] == ["confirmed", "wrong_partner"]


def test_reads_follow_visibility():
    private = DatasetFactory()
    synapse = SynapseFactory(run__dataset=private)
    Review.objects.create(synapse=synapse, verdict="confirmed")
    for role, visible in [("anonymous", False), ("outsider", False), ("viewer", True)]:
        client = _client(role, private)
        for url in ["/api/reviews/", f"/api/synapses/?dataset={private.pk}",
                    f"/api/cells/?dataset={private.pk}", "/api/skeletons/"]:
            response = client.get(url)
            if url.startswith("/api/synapses/") and not visible:
                assert response.status_code == 404
                continue
            results = response.json()["results"]
            if url == "/api/skeletons/":
                assert results == []
            else:
                assert bool(results) == visible, (role, url)
