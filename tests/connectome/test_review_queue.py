"""The review queue: order, claims (also under concurrency), expiry, skip, undo, the progress and
precision selectors, and its API."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from connectome.datasets.models import Membership
from connectome.review.models import Review, ReviewClaim, ReviewSkip
from connectome.review.selectors import (
    precision_estimate,
    review_progress,
    wilson_interval,
)
from connectome.review.services import (
    review_create,
    review_next,
    review_skip,
    review_undo,
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


def _queue_of(dataset, run, confidences):
    """Synapses of ``run`` between two cells, one per confidence, in creation order."""
    a, b = CellFactory(dataset=dataset), CellFactory(dataset=dataset)
    return [SynapseFactory(run=run, pre=a, post=b, confidence=c) for c in confidences]


@pytest.fixture
def queue(db):
    dataset = DatasetFactory()
    run = SynapseRunFactory(dataset=dataset)
    synapses = _queue_of(dataset, run, [0.9, None, 0.2, 0.5, 0.2])
    a = synapses[0].pre
    # Never served: flagged, unassigned, already reviewed, another run is still served.
    SynapseFactory(run=run, pre=a, post=a, confidence=0.0, flag=Synapse.Flag.SELF_CONTACT)
    SynapseFactory(run=run, pre=a, post=None, confidence=0.0)
    SynapseFactory(run=run, pre=a, confidence=0.0, review_state=State.CONFIRMED)
    return dataset, run, synapses


def _drain(dataset, reviewer, **kwargs):
    """The whole queue of one reviewer, skipping each synapse as it comes."""
    served = []
    while (synapse := review_next(dataset=dataset, reviewer=reviewer, **kwargs)) is not None:
        served.append(synapse.pk)
        review_skip(synapse=synapse, reviewer=reviewer)
    return served


# --- order -----------------------------------------------------------------------------------

def test_lowest_confidence_first_then_id_and_no_confidence_last(queue):
    dataset, run, s = queue
    assert _drain(dataset, UserFactory(), run=run) == [s[2].pk, s[4].pk, s[3].pk, s[0].pk,
                                                        s[1].pk]


def test_random_order_is_stable_per_seed_and_differs_between_seeds(db):
    dataset = DatasetFactory()
    run = SynapseRunFactory(dataset=dataset)
    ids = [s.pk for s in _queue_of(dataset, run, [0.5] * 30)]
    first = _drain(dataset, UserFactory(), order="random", seed=7)
    again = _drain(dataset, UserFactory(), order="random", seed=7)
    other = _drain(dataset, UserFactory(), order="random", seed=8)
    assert first == again
    assert sorted(first) == sorted(other) == ids
    assert first != ids and other != first


def test_a_reload_shows_the_claimed_synapse_and_renews_it(queue, settings):
    dataset, run, s = queue
    reviewer = UserFactory()
    first = review_next(dataset=dataset, reviewer=reviewer)
    expires = ReviewClaim.objects.get().expires_at
    again = review_next(dataset=dataset, reviewer=reviewer, order="random", seed=3)
    assert first.pk == again.pk == s[2].pk
    claim = ReviewClaim.objects.get()
    assert claim.expires_at >= expires and claim.order == "confidence"
    assert timedelta(seconds=590) < claim.expires_at - timezone.now() <= timedelta(seconds=600)


def test_claim_length_comes_from_the_setting(queue, settings):
    settings.REVIEW_CLAIM_SECONDS = 30
    review_next(dataset=queue[0], reviewer=UserFactory())
    left = ReviewClaim.objects.get().expires_at - timezone.now()
    assert timedelta(seconds=20) < left <= timedelta(seconds=30)


def test_two_reviewers_get_different_synapses_until_a_claim_expires(queue):
    dataset, run, s = queue
    alice, bob = UserFactory(), UserFactory()
    assert review_next(dataset=dataset, reviewer=alice).pk == s[2].pk
    assert review_next(dataset=dataset, reviewer=bob).pk == s[4].pk
    ReviewClaim.objects.filter(reviewer=alice).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    carol = UserFactory()
    assert review_next(dataset=dataset, reviewer=carol).pk == s[2].pk
    assert ReviewClaim.objects.get(synapse=s[2]).reviewer == carol
    # Alice's claim is gone; she gets the next free synapse.
    assert review_next(dataset=dataset, reviewer=alice).pk == s[3].pk


def test_a_verdict_releases_the_claim_and_records_the_order(queue):
    dataset, run, s = queue
    reviewer = UserFactory()
    synapse = review_next(dataset=dataset, reviewer=reviewer, order="random", seed=1)
    review = review_create(synapse=synapse, reviewer=reviewer, verdict=State.CONFIRMED)
    assert review.order == "random"
    assert not ReviewClaim.objects.exists()
    assert review_next(dataset=dataset, reviewer=reviewer).pk != synapse.pk
    # A verdict outside the queue leaves a live claim of someone else alone, and clears an
    # expired one.
    holder = UserFactory()
    live = ReviewClaim.objects.create(synapse=s[0], dataset=dataset, reviewer=holder,
                                      expires_at=timezone.now() + timedelta(minutes=1))
    outside = review_create(synapse=s[0], reviewer=UserFactory(), verdict=State.UNSURE)
    assert outside.order == ""
    assert list(ReviewClaim.objects.filter(synapse=s[0])) == [live]
    live.expires_at = timezone.now() - timedelta(seconds=1)
    live.save()
    review_create(synapse=s[0], reviewer=None, verdict=State.CONFIRMED)
    assert not ReviewClaim.objects.filter(synapse=s[0]).exists()


def test_skip_hides_the_synapse_from_that_reviewer_only(queue):
    dataset, run, s = queue
    alice, bob = UserFactory(), UserFactory()
    review_skip(synapse=review_next(dataset=dataset, reviewer=alice), reviewer=alice)
    assert ReviewSkip.objects.filter(reviewer=alice, synapse=s[2]).exists()
    assert not ReviewClaim.objects.exists()
    assert review_next(dataset=dataset, reviewer=alice).pk == s[4].pk
    assert review_next(dataset=dataset, reviewer=bob).pk == s[2].pk


def test_the_queue_ends_with_none(queue):
    dataset, run, s = queue
    reviewer = UserFactory()
    for _ in s:
        review_create(synapse=review_next(dataset=dataset, reviewer=reviewer),
                      reviewer=reviewer, verdict=State.CONFIRMED)
    assert review_next(dataset=dataset, reviewer=reviewer) is None
    other_run = SynapseRunFactory(dataset=dataset)
    assert review_next(dataset=dataset, reviewer=reviewer, run=other_run) is None
    with pytest.raises(ValueError, match="unknown order 'sideways'"):
        review_next(dataset=dataset, reviewer=reviewer, order="sideways")


# --- undo --------------------------------------------------------------------------------------

def test_undo_restores_the_previous_verdict_and_claims_the_synapse_again(queue):
    dataset, run, s = queue
    alice, bob = UserFactory(), UserFactory()
    review_create(synapse=s[0], reviewer=bob, verdict=State.WRONG_DIRECTION)
    review_create(synapse=s[0], reviewer=alice, verdict=State.NOT_SYNAPSE)
    review_create(synapse=s[1], reviewer=bob, verdict=State.CONFIRMED)
    assert review_undo(dataset=dataset, reviewer=alice).pk == s[0].pk
    s[0].refresh_from_db()
    assert s[0].review_state == State.WRONG_DIRECTION
    assert ReviewClaim.objects.get().reviewer == alice
    assert review_next(dataset=dataset, reviewer=alice).pk == s[0].pk
    # Bob's latest is on s[1]: undoing it leaves no verdict there.
    assert review_undo(dataset=dataset, reviewer=bob).pk == s[1].pk
    s[1].refresh_from_db()
    assert s[1].review_state == State.UNREVIEWED
    assert list(Review.objects.values_list("reviewer", "synapse")) == [(bob.pk, s[0].pk)]
    assert review_undo(dataset=dataset, reviewer=alice) is None


def test_undo_leaves_someone_elses_live_claim_alone(queue):
    dataset, run, s = queue
    alice, bob = UserFactory(), UserFactory()
    review_create(synapse=review_next(dataset=dataset, reviewer=alice), reviewer=alice,
                  verdict=State.CONFIRMED)
    assert review_undo(dataset=dataset, reviewer=alice).pk == s[2].pk
    review_create(synapse=review_next(dataset=dataset, reviewer=alice), reviewer=alice,
                  verdict=State.UNSURE)
    # Bob reviews s[2] after Alice: her undo gives her back her own verdict's synapse, which
    # Bob now holds.
    ReviewClaim.objects.create(synapse=s[2], dataset=dataset, reviewer=bob, order="confidence",
                               expires_at=timezone.now() + timedelta(minutes=5))
    assert review_undo(dataset=dataset, reviewer=alice).pk == s[2].pk
    assert ReviewClaim.objects.get().reviewer == bob


# --- concurrency (PostgreSQL: real connections in threads) ----------------------------------

@pytest.mark.django_db(transaction=True)
def test_concurrent_reviewers_never_share_a_synapse():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent connections need PostgreSQL (SQLite's test database is one file "
                    "locked per write)")
    dataset = DatasetFactory()
    run = SynapseRunFactory(dataset=dataset)
    ids = {s.pk for s in _queue_of(dataset, run, [0.5] * 12)}
    reviewers = [UserFactory() for _ in range(8)]
    barrier = threading.Barrier(len(reviewers))
    served: dict[int, list[int]] = {r.pk: [] for r in reviewers}
    errors = []

    def work(reviewer):
        try:
            barrier.wait()
            for _ in range(3):
                synapse = review_next(dataset=dataset, reviewer=reviewer)
                if synapse is None:
                    break
                served[reviewer.pk].append(synapse.pk)
                review_create(synapse=synapse, reviewer=reviewer, verdict=State.CONFIRMED)
        except Exception as exc:  # noqa: BLE001 - shown by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    everything = [pk for pks in served.values() for pk in pks]
    assert sorted(everything) == sorted(ids)  # each synapse once, none twice
    assert Review.objects.count() == 12


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_claims_all_differ():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent connections need PostgreSQL")
    dataset = DatasetFactory()
    run = SynapseRunFactory(dataset=dataset)
    _queue_of(dataset, run, [0.1 * i for i in range(10)])
    reviewers = [UserFactory() for _ in range(10)]
    barrier = threading.Barrier(len(reviewers))
    got = []

    def work(reviewer):
        try:
            barrier.wait()
            got.append(review_next(dataset=dataset, reviewer=reviewer).pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 10 and len(set(got)) == 10
    assert ReviewClaim.objects.count() == 10


# --- progress and precision -------------------------------------------------------------------

def test_wilson_interval_by_hand():
    # 18 of 20: p = 0.9, z = 1.96; centre 0.8356, half width 0.1366.
    interval = wilson_interval(18, 20)
    assert interval["estimate"] == 0.9
    assert interval["low"] == pytest.approx(0.6990, abs=5e-4)
    assert interval["high"] == pytest.approx(0.9721, abs=5e-4)
    assert wilson_interval(0, 0) == {"n": 0, "estimate": None, "low": None, "high": None}
    wide = wilson_interval(18, 20, confidence=0.99)
    assert wide["low"] < interval["low"] and wide["high"] > interval["high"]


def test_progress_and_precision(db):
    dataset = DatasetFactory()
    run = SynapseRunFactory(dataset=dataset)
    synapses = _queue_of(dataset, run, [0.5] * 30)
    verdicts = ([State.CONFIRMED] * 15 + [State.WRONG_PARTNER] * 2 + [State.WRONG_DIRECTION]
                + [State.NOT_SYNAPSE] * 2 + [State.UNSURE] * 3)
    reviewer = UserFactory()
    for synapse, verdict in zip(synapses, verdicts):
        review_create(synapse=synapse, reviewer=reviewer, verdict=verdict)
    # A later verdict wins: one of the confirmed becomes not_synapse... and back to confirmed.
    review_create(synapse=synapses[0], reviewer=reviewer, verdict=State.NOT_SYNAPSE)
    review_create(synapse=synapses[0], reviewer=reviewer, verdict=State.CONFIRMED)
    review_next(dataset=dataset, reviewer=reviewer)  # one live claim
    SynapseFactory(run=run, flag=Synapse.Flag.BACKGROUND, review_state=State.CONFIRMED)
    SynapseFactory(run=SynapseRunFactory(dataset=dataset))  # another run

    progress = review_progress(dataset=dataset, run=run)
    assert progress == {
        "total": 30, "reviewed": 23, "unreviewed": 7, "claimed": 1,
        "verdicts": {"confirmed": 15, "not_synapse": 2, "wrong_partner": 2,
                     "wrong_direction": 1, "unsure": 3},
    }
    assert review_progress(dataset=dataset)["total"] == 31

    precision = precision_estimate(dataset=dataset, run=run)
    assert (precision["decided"], precision["random_order"]) == (20, 0)
    # 18 of 20 synapses are real, 15 of 20 connections right.
    assert precision["synapse"]["estimate"] == 0.9
    assert precision["synapse"]["low"] == pytest.approx(0.6990, abs=5e-4)
    assert precision["synapse"]["high"] == pytest.approx(0.9721, abs=5e-4)
    assert precision["connection"]["estimate"] == 0.75
    assert precision["connection"]["low"] == pytest.approx(0.5313, abs=5e-4)
    assert precision["connection"]["high"] == pytest.approx(0.8881, abs=5e-4)
    empty = precision_estimate(dataset=DatasetFactory())
    assert empty["synapse"] == {"n": 0, "estimate": None, "low": None, "high": None}


def test_precision_counts_verdicts_given_in_random_order(queue):
    dataset, run, s = queue
    reviewer = UserFactory()
    for order in ["random", "random", "confidence"]:
        synapse = review_next(dataset=dataset, reviewer=reviewer, order=order, seed=5)
        review_create(synapse=synapse, reviewer=reviewer, verdict=State.CONFIRMED)
    review_create(synapse=review_next(dataset=dataset, reviewer=reviewer, order="random"),
                  reviewer=reviewer, verdict=State.UNSURE)
    precision = precision_estimate(dataset=dataset, run=run)
    # The fixture's confirmed synapse was reviewed outside the queue.
    assert (precision["decided"], precision["random_order"]) == (4, 2)


# --- the API ---------------------------------------------------------------------------------

ROLES = ["anonymous", "outsider", "viewer", "reviewer", "admin"]


def _client(role, dataset):
    client = APIClient()
    if role == "anonymous":
        return client, None
    user = UserFactory()
    if role != "outsider":
        MembershipFactory(dataset=dataset, user=user, role=Membership.Role(role))
    client.force_authenticate(user)
    return client, user


@pytest.mark.parametrize("public", [True, False], ids=["public", "private"])
@pytest.mark.parametrize("role", ROLES)
def test_queue_permissions(queue, role, public):
    dataset, run, s = queue
    dataset.is_public = public
    dataset.save()
    client, user = _client(role, dataset)
    base = f"/api/datasets/{dataset.pk}/review"
    responses = {
        "next": client.post(f"{base}/next/", {}, format="json"),
        "skip": client.post(f"{base}/skip/", {"synapse": s[0].pk}, format="json"),
        "undo": client.post(f"{base}/undo/", {}, format="json"),
        "summary": client.get(f"{base}/summary/"),
    }
    for name, response in responses.items():
        if role in ("reviewer", "admin") or (name == "summary" and (role == "viewer" or public)):
            expected = {200}
        elif role == "outsider" and not public:
            expected = {404}
        elif role == "anonymous" and name != "summary":
            expected = {401, 403}
        elif name == "summary":  # anonymous on a private dataset cannot see it
            expected = {404}
        else:
            expected = {403}
        assert response.status_code in expected, (name, response.json())
        if response.status_code != 200:
            assert response.json()["error"]
        if response.status_code == 403 and role == "viewer":
            assert response.json()["error"] == (
                f"the review queue of dataset '{dataset.name}' needs the reviewer role")
    if role in ("reviewer", "admin"):
        assert responses["next"].json()["synapse"]["id"] == s[2].pk
        # The undo took the skip back.
        assert responses["undo"].json()["undone"] == "skip"
        assert not ReviewSkip.objects.filter(reviewer=user).exists()
    else:
        assert not ReviewClaim.objects.exists() and not ReviewSkip.objects.exists()


def test_queue_over_the_api(queue):
    dataset, run, s = queue
    a, b = s[2].pre, s[2].post
    client, user = _client("reviewer", dataset)
    base = f"/api/datasets/{dataset.pk}/review"
    body = client.post(f"{base}/next/", {"run": run.pk}, format="json").json()
    synapse = body["synapse"]
    assert synapse["id"] == s[2].pk
    assert (synapse["pre"], synapse["post"]) == (a.pk, b.pk)
    assert (synapse["pre_segment_id"], synapse["post_segment_id"]) == (
        str(a.segment_id), str(b.segment_id))
    assert synapse["confidence"] == 0.2 and synapse["review_state"] == "unreviewed"
    assert (synapse["ctr_z"], synapse["ctr_y"], synapse["ctr_x"]) == (400.0, 800.0, 800.0)
    assert body["claim_expires_at"]
    assert body["progress"] == {"total": 6, "reviewed": 1, "unreviewed": 5, "claimed": 1,
                                "verdicts": {"confirmed": 1, "not_synapse": 0,
                                             "wrong_partner": 0, "wrong_direction": 0,
                                             "unsure": 0}}
    # The verdict goes through the reviews endpoint; the next call serves the next synapse.
    right = CellFactory(dataset=dataset)
    posted = client.post("/api/reviews/", {"synapse": s[2].pk, "verdict": "wrong_partner",
                                           "corrected_post": [right.pk]}, format="json")
    assert posted.status_code == 201 and posted.json()["order"] == "confidence"
    body = client.post(f"{base}/next/", {"order": "confidence"}, format="json").json()
    assert body["synapse"]["id"] == s[4].pk
    assert body["progress"]["verdicts"]["wrong_partner"] == 1
    skipped = client.post(f"{base}/skip/", {"synapse": s[4].pk}, format="json").json()
    assert skipped["skipped"] == s[4].pk and skipped["progress"]["claimed"] == 0
    # Undo takes back the latest first: the skip, then the verdict.
    undone = client.post(f"{base}/undo/", format="json").json()
    assert undone["undone"] == "skip" and undone["synapse"]["id"] == s[4].pk
    assert not ReviewSkip.objects.exists()
    undone = client.post(f"{base}/undo/", format="json").json()
    assert undone["undone"] == "verdict" and undone["synapse"]["id"] == s[2].pk
    assert undone["synapse"]["review_state"] == "unreviewed" and undone["claim_expires_at"]
    assert client.post(f"{base}/next/", {}, format="json").json()["synapse"]["id"] == s[2].pk
    summary = client.get(f"{base}/summary/?run={run.pk}&confidence=0.9").json()
    assert summary["progress"]["claimed"] == 1
    assert summary["precision"]["confidence"] == 0.9
    # Only the fixture's confirmed synapse is decided: 1 of 1, z = 1.645 at 90%.
    assert summary["precision"]["synapse"] == {"n": 1, "estimate": 1.0, "high": 1.0,
                                               "low": pytest.approx(0.2699, abs=5e-4)}
    nothing = client.post(f"{base}/undo/", format="json").json()
    assert nothing["synapse"] is None and nothing["claim_expires_at"] is None
    assert nothing["undone"] is None


def test_next_lists_the_upcoming_synapses_unclaimed(queue):
    dataset, run, s = queue
    client, _ = _client("reviewer", dataset)
    other, _ = _client("reviewer", dataset)
    base = f"/api/datasets/{dataset.pk}/review"
    body = client.post(f"{base}/next/", {"run": run.pk, "lookahead": 2}, format="json").json()
    assert body["synapse"]["id"] == s[2].pk
    # In queue order after the claimed one, with their segments; not claimed.
    assert [u["id"] for u in body["upcoming"]] == [s[4].pk, s[3].pk]
    assert body["upcoming"][0]["pre_segment_id"] == str(s[4].pre.segment_id)
    assert list(ReviewClaim.objects.values_list("synapse", flat=True)) == [s[2].pk]
    # Another reviewer still gets the first of them; then the list goes past it.
    assert other.post(f"{base}/next/", {"run": run.pk}, format="json").json()[
        "synapse"]["id"] == s[4].pk
    body = client.post(f"{base}/next/", {"run": run.pk, "lookahead": 10}, format="json").json()
    assert [u["id"] for u in body["upcoming"]] == [s[3].pk, s[0].pk, s[1].pk]
    # Without lookahead the answer has no list.
    assert "upcoming" not in client.post(f"{base}/next/", {}, format="json").json()


def test_queue_api_refuses_bad_input(queue):
    dataset, run, s = queue
    client, _ = _client("reviewer", dataset)
    base = f"/api/datasets/{dataset.pk}/review"
    foreign = SynapseRunFactory()
    response = client.post(f"{base}/next/", {"run": foreign.pk}, format="json")
    assert response.status_code == 400 and "has no synapse run" in response.json()["error"]
    response = client.post(f"{base}/next/", {"order": "sideways"}, format="json")
    assert response.status_code == 400 and "order" in response.json()["detail"]
    for lookahead in (-1, 11, "two"):
        response = client.post(f"{base}/next/", {"lookahead": lookahead}, format="json")
        assert response.status_code == 400 and "lookahead" in response.json()["detail"]
    response = client.post(f"{base}/skip/", {"synapse": SynapseFactory().pk}, format="json")
    assert response.status_code == 404
    response = client.get(f"{base}/summary/?confidence=2")
    assert response.status_code == 400 and "confidence" in response.json()["detail"]
    assert client.post("/api/datasets/999999/review/next/", {}, format="json").status_code == 404
