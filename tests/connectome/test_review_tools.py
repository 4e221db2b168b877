"""Review tools: notes and tags on verdicts, the undo of a skip, review batches (served first,
their progress, who may make them) and progress that agrees with the page after an undo."""

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from connectome.review.models import (
    DatasetReviewTag,
    Review,
    ReviewBatch,
    ReviewClaim,
    ReviewSkip,
    ReviewTag,
)
from connectome.review.selectors import review_batches
from connectome.review.services import (
    BatchInputError,
    review_batch_create,
    review_create,
    review_next,
    review_skip,
    review_undo_last,
)
from connectome.synapses.models import Synapse
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

State = Synapse.ReviewState


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def queue(db):
    """A run of six served synapses (confidence 0.1 to 0.6, in that order of creation) and a
    second run of two, between two cells; each synapse centred at z = 100 * its index."""
    dataset = DatasetFactory()
    run, other = SynapseRunFactory(dataset=dataset), SynapseRunFactory(dataset=dataset)
    a, b = CellFactory(dataset=dataset), CellFactory(dataset=dataset)
    synapses = [SynapseFactory(run=run, pre=a, post=b, confidence=(i + 1) / 10, ctr_z=100.0 * i)
                for i in range(6)]
    extra = [SynapseFactory(run=other, pre=a, post=b, confidence=0.05 * (i + 1))
             for i in range(2)]
    return dataset, run, other, synapses, extra


def _member(dataset, role):
    user = UserFactory()
    MembershipFactory(dataset=dataset, user=user, role=Membership.Role(role))
    return user


def _client(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- notes and tags ------------------------------------------------------------------------------

def test_note_and_tags_are_stored_shown_and_filtered(queue):
    dataset, _run, _other, s, _extra = queue
    reviewer = _member(dataset, "reviewer")
    client = _client(reviewer)
    posted = client.post("/api/reviews/", {
        "synapse": s[0].pk, "verdict": "not_synapse",
        "note": "  membrane fold,\n\tnot a cleft  ", "tags": ["Membrane", "blurry", "membrane"],
    }, format="json")
    assert posted.status_code == 201, posted.json()
    body = posted.json()
    assert body["note"] == "membrane fold,\n\tnot a cleft"
    assert sorted(body["tags"]) == ["blurry", "membrane"]
    review = Review.objects.get(pk=body["id"])
    assert sorted(review.tags.values_list("name", flat=True)) == ["blurry", "membrane"]
    client.post("/api/reviews/", {"synapse": s[1].pk, "verdict": "confirmed",
                                  "tags": ["clear"]}, format="json")
    client.post("/api/reviews/", {"synapse": s[2].pk, "verdict": "unsure"}, format="json")

    def ids(url):
        return sorted(r["synapse"] for r in client.get(url).json()["results"])

    assert ids(f"/api/reviews/?dataset={dataset.pk}&tag=membrane") == [s[0].pk]
    assert ids(f"/api/reviews/?dataset={dataset.pk}&tag=clear,blurry") == [s[0].pk, s[1].pk]
    assert ids(f"/api/reviews/?dataset={dataset.pk}&tag=none-such") == []
    synapses = client.get(f"/api/synapses/?dataset={dataset.pk}&tag=Clear,blurry").json()
    assert sorted(r["id"] for r in synapses["results"]) == [s[0].pk, s[1].pk]
    assert client.get("/api/synapses/?tag=clear&review_state=unsure").json()["results"] == []
    listed = client.get(f"/api/reviews/?synapse={s[2].pk}").json()["results"]
    assert listed[0]["tags"] == [] and listed[0]["note"] == ""
    # The summary offers the tags in use, most used first.
    client.post("/api/reviews/", {"synapse": s[3].pk, "verdict": "confirmed",
                                  "tags": ["clear"]}, format="json")
    tags = client.get(f"/api/datasets/{dataset.pk}/review/summary/").json()["tags"]
    assert tags == {"tag_set": False, "tags": ["clear", "blurry", "membrane"]}


@pytest.mark.parametrize(("body", "field", "says"), [
    ({"note": "x" * 2001}, "note", "2000"),
    ({"note": "bell \x07 here"}, "note", "control character"),
    ({"note": "two\nlines \x1b[31m"}, "note", "line 2"),
    ({"tags": ["has space"]}, "tags", "'has space' is not a tag"),
    ({"tags": ["a" * 33]}, "tags", "is not a tag"),
    ({"tags": ["-dash-first"]}, "tags", "is not a tag"),
    ({"tags": [f"t{i}" for i in range(9)]}, "tags", "no more than 8"),
    ({"tags": "membrane"}, "tags", "list"),
])
def test_bad_notes_and_tags_are_refused_by_field(queue, body, field, says):
    dataset, _run, _other, s, _extra = queue
    client = _client(_member(dataset, "reviewer"))
    response = client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed", **body},
                           format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["detail"]
    assert says in response.json()["error"]
    assert not Review.objects.exists()
    s[0].refresh_from_db()
    assert s[0].review_state == State.UNREVIEWED


def test_a_dataset_tag_set_limits_the_tags(queue):
    dataset, _run, _other, s, _extra = queue
    for name in ["membrane", "blurry"]:
        DatasetReviewTag.objects.create(dataset=dataset, name=name)
    client = _client(_member(dataset, "reviewer"))
    response = client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed",
                                             "tags": ["blurry", "vesicles"]}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"]["tags"] == [
        f"tag 'vesicles' is not in the tag set of dataset '{dataset.name}': blurry, membrane"]
    assert client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed",
                                         "tags": ["blurry"]}, format="json").status_code == 201
    tags = client.get(f"/api/datasets/{dataset.pk}/review/summary/").json()["tags"]
    assert tags == {"tag_set": True, "tags": ["blurry", "membrane"]}


def test_a_viewer_cannot_post_a_note(queue):
    dataset, _run, _other, s, _extra = queue
    client = _client(_member(dataset, "viewer"))
    response = client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed",
                                             "note": "looks fine", "tags": ["clear"]},
                           format="json")
    assert response.status_code == 403
    assert "needs the reviewer role" in response.json()["error"]
    assert not Review.objects.exists() and not ReviewTag.objects.exists()


# --- undo of a skip ------------------------------------------------------------------------------

def test_undo_takes_back_the_latest_of_a_verdict_and_a_skip(queue):
    dataset, run, _other, s, _extra = queue
    alice = _member(dataset, "reviewer")
    first = review_next(dataset=dataset, reviewer=alice, run=run)
    review_create(synapse=first, reviewer=alice, verdict=State.CONFIRMED)
    second = review_next(dataset=dataset, reviewer=alice, run=run)
    review_skip(synapse=second, reviewer=alice)
    third = review_next(dataset=dataset, reviewer=alice, run=run)
    assert [first.pk, second.pk, third.pk] == [s[0].pk, s[1].pk, s[2].pk]

    undone = review_undo_last(dataset=dataset, reviewer=alice)
    assert (undone.what, undone.synapse.pk) == ("skip", s[1].pk)
    assert not ReviewSkip.objects.exists()
    # The skipped synapse is hers again; the one on screen is released.
    assert list(ReviewClaim.objects.values_list("synapse", "reviewer")) == [(s[1].pk, alice.pk)]
    assert review_next(dataset=dataset, reviewer=alice, run=run).pk == s[1].pk

    undone = review_undo_last(dataset=dataset, reviewer=alice)
    assert (undone.what, undone.synapse.pk) == ("verdict", s[0].pk)
    s[0].refresh_from_db()
    assert s[0].review_state == State.UNREVIEWED
    assert review_undo_last(dataset=dataset, reviewer=alice) is None


def test_skip_then_undo_over_the_api_brings_the_synapse_back(queue):
    dataset, run, _other, s, _extra = queue
    client = _client(_member(dataset, "reviewer"))
    base = f"/api/datasets/{dataset.pk}/review"
    shown = client.post(f"{base}/next/", {"run": run.pk}, format="json").json()["synapse"]
    assert shown["id"] == s[0].pk
    client.post(f"{base}/skip/", {"synapse": s[0].pk}, format="json")
    assert client.post(f"{base}/next/", {"run": run.pk},
                       format="json").json()["synapse"]["id"] == s[1].pk
    undone = client.post(f"{base}/undo/", {"run": run.pk}, format="json").json()
    assert undone["undone"] == "skip" and undone["synapse"]["id"] == s[0].pk
    assert undone["claim_expires_at"]
    assert client.post(f"{base}/next/", {"run": run.pk},
                       format="json").json()["synapse"]["id"] == s[0].pk


def test_undo_progress_is_of_the_run_the_page_shows(queue):
    """The page shows the progress of its run; the undo's answer must be of the same run, or
    the count jumps to the dataset's total until the summary comes back."""
    dataset, run, _other, s, _extra = queue
    client = _client(_member(dataset, "reviewer"))
    base = f"/api/datasets/{dataset.pk}/review"
    client.post(f"{base}/next/", {"run": run.pk}, format="json")
    client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed"}, format="json")
    after_verdict = client.post(f"{base}/next/", {"run": run.pk}, format="json").json()
    assert (after_verdict["progress"]["reviewed"], after_verdict["progress"]["total"]) == (1, 6)
    undone = client.post(f"{base}/undo/", {"run": run.pk}, format="json").json()
    assert (undone["progress"]["reviewed"], undone["progress"]["total"]) == (0, 6)
    summary = client.get(f"{base}/summary/?run={run.pk}").json()
    assert summary["progress"] == undone["progress"]
    # With "all" it is every run's; without a run the dataset's default run's (the newest
    # here: no current run, no detection).
    client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed"}, format="json")
    undone = client.post(f"{base}/undo/", {"run": "all"}, format="json").json()
    assert undone["progress"]["total"] == 8
    client.post("/api/reviews/", {"synapse": s[0].pk, "verdict": "confirmed"}, format="json")
    undone = client.post(f"{base}/undo/", {}, format="json").json()
    assert undone["progress"]["total"] == 2
    response = client.post(f"{base}/undo/", {"run": SynapseRunFactory().pk}, format="json")
    assert response.status_code == 400 and "run" in response.json()["detail"]


# --- batches -------------------------------------------------------------------------------------

def test_batch_by_run_and_count_is_served_first_and_shows_progress(queue):
    dataset, _run, other, s, extra = queue
    admin_user, rita, bob = (_member(dataset, "admin"), _member(dataset, "reviewer"),
                             _member(dataset, "reviewer"))
    # The batch: the 2 lowest-confidence synapses of the other run.
    response = _client(admin_user).post("/api/review-batches/", {
        "dataset": dataset.pk, "name": "other run, first two", "reviewer": rita.username,
        "run": other.pk, "count": 2}, format="json")
    assert response.status_code == 201, response.json()
    batch = response.json()
    assert (batch["total"], batch["reviewed"], batch["reviewer"]) == (2, 0, rita.username)
    assert batch["created_by"] == admin_user.username
    assert batch["selection"] == f"2 lowest confidence, run {other.name}"

    # Rita's queue serves her batch first (here: every run), then the rest in order.
    served = []
    client = _client(rita)
    base = f"/api/datasets/{dataset.pk}/review"
    for _ in range(3):
        item = client.post(f"{base}/next/", {"run": "all"}, format="json").json()
        served.append(item["synapse"]["id"])
        client.post("/api/reviews/", {"synapse": item["synapse"]["id"],
                                      "verdict": "confirmed"}, format="json")
        if len(served) <= 2:
            assert item["batch"] == {"id": batch["id"], "name": "other run, first two",
                                     "reviewed": len(served) - 1, "total": 2}
        else:
            assert item["batch"] is None
    assert served == [extra[0].pk, extra[1].pk, s[0].pk]
    listed = client.get(f"/api/review-batches/?dataset={dataset.pk}&reviewer=me").json()
    assert [(b["id"], b["reviewed"], b["total"]) for b in listed["results"]] == [
        (batch["id"], 2, 2)]
    assert _client(bob).get("/api/review-batches/?reviewer=me").json()["results"] == []


def test_batch_synapses_stay_out_of_other_queues_and_claims_still_part_two_reviewers(queue):
    dataset, run, _other, s, _extra = queue
    rita, bob = _member(dataset, "reviewer"), _member(dataset, "reviewer")
    batch = review_batch_create(dataset=dataset, name="two", reviewer=rita,
                                synapse_ids=[s[0].pk, s[1].pk])
    # Bob never gets Rita's batch; Rita gets it, and with the batch chosen only it.
    assert review_next(dataset=dataset, reviewer=bob, run=run).pk == s[2].pk
    assert review_next(dataset=dataset, reviewer=rita, run=run, batch=batch).pk == s[0].pk
    review_create(synapse=s[0], reviewer=rita, verdict=State.CONFIRMED)
    assert review_next(dataset=dataset, reviewer=rita, batch=batch).pk == s[1].pk
    review_skip(synapse=s[1], reviewer=rita)
    assert review_next(dataset=dataset, reviewer=rita, batch=batch) is None
    # Without the batch chosen she goes on with the rest, minus Bob's live claim on s[2].
    assert review_next(dataset=dataset, reviewer=rita, run=run).pk == s[3].pk
    # Two batches of one reviewer: a claim made by another reviewer (say, before the batch)
    # still keeps the synapse from her.
    second = review_batch_create(dataset=dataset, name="more", reviewer=rita,
                                 synapse_ids=[s[4].pk])
    ReviewClaim.objects.create(synapse=s[4], dataset=dataset, reviewer=bob,
                               expires_at=timezone.now() + timedelta(minutes=5))
    assert review_next(dataset=dataset, reviewer=rita, batch=second) is None
    with pytest.raises(ValueError, match="not one of your batches"):
        review_next(dataset=dataset, reviewer=bob, batch=batch)
    [row] = [b for b in review_batches(dataset=dataset) if b.pk == batch.pk]
    assert (row.n_reviewed, row.n_synapses) == (1, 2)


def test_batch_by_bbox(queue):
    dataset, _run, _other, s, _extra = queue
    rita = _member(dataset, "reviewer")
    # Centres at z = 0, 100, ..., 500: the box z 150..350 holds s[2] and s[3].
    batch = review_batch_create(dataset=dataset, name="box", reviewer=rita,
                                bbox=([150, 0, 0], [350, 10_000, 10_000]))
    assert sorted(batch.synapses.values_list("pk", flat=True)) == [s[2].pk, s[3].pk]
    assert batch.selection == "2 lowest confidence, all runs in box 150,0,0,350,10000,10000 nm"
    # A second box over the same place finds nothing new.
    with pytest.raises(BatchInputError, match="no unreviewed synapse outside other batches"):
        review_batch_create(dataset=dataset, name="again", reviewer=rita,
                            bbox=([150, 0, 0], [350, 10_000, 10_000]))


def test_batches_refuse_bad_input_by_field(queue):
    dataset, run, _other, s, _extra = queue
    admin_user, rita, viewer = (_member(dataset, "admin"), _member(dataset, "reviewer"),
                                _member(dataset, "viewer"))
    client = _client(admin_user)
    foreign = SynapseFactory()
    good = {"dataset": dataset.pk, "name": "b", "reviewer": rita.username}
    review_batch_create(dataset=dataset, name="taken", reviewer=rita, synapse_ids=[s[5].pk])
    for body, field, says in [
        ({"synapses": [s[0].pk, foreign.pk]}, "synapses", f"no synapses [{foreign.pk}]"),
        ({"synapses": [s[5].pk]}, "synapses", "in a batch already"),
        ({"synapses": []}, "synapses", "no synapse id given"),
        ({}, "synapses", "give the synapses one way"),
        ({"synapses": [s[0].pk], "run": run.pk, "count": 2}, "synapses", "synapses and run"),
        ({"run": run.pk}, "count", "needs a count"),
        ({"run": run.pk, "count": 0}, "count", "greater than or equal to 1"),
        ({"run": SynapseRunFactory().pk, "count": 2}, "run", "has no synapse run"),
        ({"bbox": "1,2,3"}, "bbox", "six numbers"),
        ({"reviewer": viewer.username, "synapses": [s[0].pk]}, "reviewer", "no reviewer role"),
        ({"reviewer": "nobody-here", "synapses": [s[0].pk]}, "reviewer", "no user"),
        ({"name": "tab\there", "synapses": [s[0].pk]}, "name", "control character"),
    ]:
        response = client.post("/api/review-batches/", {**good, **body}, format="json")
        assert response.status_code == 400, (body, response.json())
        assert field in response.json()["detail"], (body, response.json())
        assert says in response.json()["error"], (body, response.json())
    assert ReviewBatch.objects.count() == 1


@pytest.mark.parametrize("role", ["anonymous", "outsider", "viewer", "reviewer", "admin"])
def test_only_a_dataset_admin_creates_or_deletes_batches(queue, role):
    dataset, _run, _other, s, _extra = queue
    rita = _member(dataset, "reviewer")
    existing = review_batch_create(dataset=dataset, name="first", reviewer=rita,
                                   synapse_ids=[s[0].pk])
    client = APIClient()
    if role != "anonymous":
        user = UserFactory() if role == "outsider" else _member(dataset, role)
        client.force_authenticate(user)
    created = client.post("/api/review-batches/", {
        "dataset": dataset.pk, "name": "b", "reviewer": rita.username,
        "synapses": [s[1].pk]}, format="json")
    deleted = client.delete(f"/api/review-batches/{existing.pk}/")
    if role == "admin":
        assert created.status_code == 201 and deleted.status_code == 204
        assert list(ReviewBatch.objects.values_list("name", flat=True)) == ["b"]
        return
    if role == "outsider":  # a private dataset looks absent to those who cannot see it
        assert created.status_code == 404 and deleted.status_code == 404
    else:
        assert created.status_code in {401, 403} and deleted.status_code in {401, 403}
    if role in ("viewer", "reviewer"):
        assert created.json()["error"] == (
            f"review batches of dataset '{dataset.name}' need the admin role")
        # They read them all the same (public or member).
        assert client.get(f"/api/review-batches/{existing.pk}/").json()["total"] == 1
    assert list(ReviewBatch.objects.values_list("name", flat=True)) == ["first"]


def test_next_refuses_someone_elses_batch(queue):
    dataset, _run, _other, s, _extra = queue
    rita, bob = _member(dataset, "reviewer"), _member(dataset, "reviewer")
    batch = review_batch_create(dataset=dataset, name="r", reviewer=rita, synapse_ids=[s[0].pk])
    response = _client(bob).post(f"/api/datasets/{dataset.pk}/review/next/",
                                 {"batch": batch.pk}, format="json")
    assert response.status_code == 400
    assert "batch" in response.json()["detail"]
    assert "is not one of your batches" in response.json()["error"]
    assert not ReviewClaim.objects.exists()


def test_batches_on_the_admin_and_the_pages(queue, settings):
    dataset, _run, other, _s, extra = queue
    rita = _member(dataset, "reviewer")
    staff = get_user_model().objects.create_superuser("boss", "b@x.org", "pw")
    client = Client()
    client.force_login(staff)
    response = client.post("/admin/review/reviewbatch/add/", {
        "dataset": dataset.pk, "name": "from the admin", "reviewer": rita.pk,
        "run": other.pk, "count": 1, "bbox": "", "synapse_ids": "",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    batch = ReviewBatch.objects.get()
    assert list(batch.synapses.values_list("pk", flat=True)) == [extra[0].pk]
    assert batch.created_by == staff
    assert admin.site.is_registered(ReviewBatch)
    # A bad selection comes back on the form, naming the field.
    response = client.post("/admin/review/reviewbatch/add/", {
        "dataset": dataset.pk, "name": "bad", "reviewer": rita.pk, "run": "", "count": "",
        "bbox": "", "synapse_ids": "12x"})
    assert response.status_code == 200
    assert "synapse ids" in response.content.decode()
    # The dataset page lists the batch with its progress.
    review_create(synapse=extra[0], reviewer=rita, verdict=State.CONFIRMED)
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "from the admin" in page and f'data-batch="{batch.pk}"' in page
    assert "1 / 1" in page


def test_lookahead_follows_the_batches(queue):
    dataset, run, _other, s, extra = queue
    rita = _member(dataset, "reviewer")
    review_batch_create(dataset=dataset, name="b", reviewer=rita,
                        synapse_ids=[s[4].pk, s[5].pk, extra[1].pk])
    base = f"/api/datasets/{dataset.pk}/review"
    client = _client(rita)
    # Within the run: her batch's synapses of the run first, then the run's queue.
    item = client.post(f"{base}/next/", {"run": run.pk, "lookahead": 3}, format="json").json()
    assert item["synapse"]["id"] == s[4].pk
    assert [u["id"] for u in item["upcoming"]] == [s[5].pk, s[0].pk, s[1].pk]
    # The batch chosen: only its synapses, whatever their run.
    batch = ReviewBatch.objects.get()
    client.post(f"{base}/skip/", {"synapse": s[4].pk}, format="json")
    item = client.post(f"{base}/next/", {"run": run.pk, "batch": batch.pk, "lookahead": 3},
                       format="json").json()
    # (in confidence order: the other run's 0.1 before the 0.6)
    assert item["synapse"]["id"] == extra[1].pk
    assert [u["id"] for u in item["upcoming"]] == [s[5].pk]
