"""The review queue's counts kept by triggers on PostgreSQL stay equal to counting the
synapses, whatever writes them: the ORM, bulk inserts and updates, raw SQL, deletes of runs
and datasets, TRUNCATE; and the queue's progress reads them."""

import pytest
from django.db import connection
from django.db.models import Count, Sum

from connectome.review.models import ReviewableCount
from connectome.review.selectors import review_progress
from connectome.review.services import review_create, reviewable_synapses
from connectome.synapses.models import Synapse
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql",
                                reason="the counts are kept by PostgreSQL triggers")


def counted() -> dict:
    """Per (dataset, run, state): what the triggers kept, and what counting gives."""
    kept = {(c.dataset_id, c.run_id, c.review_state): c.synapses
            for c in ReviewableCount.objects.all() if c.synapses}
    rows = (Synapse.objects.filter(flag="", pre__isnull=False, post__isnull=False)
            .values_list("dataset_id", "run_id", "review_state").annotate(n=Count("id"))
            .order_by())
    return kept, {(d, r, s): n for d, r, s, n in rows}


def assert_kept():
    kept, truth = counted()
    assert kept == truth


@pytest.fixture
def two_runs(db):
    dataset = DatasetFactory()
    runs = [SynapseRunFactory(dataset=dataset) for _ in range(2)]
    cells = [CellFactory(dataset=dataset) for _ in range(4)]
    return dataset, runs, cells


def test_counts_follow_every_kind_of_write(two_runs):
    dataset, (run, other), (a, b, c, d) = two_runs
    Synapse.objects.bulk_create([
        Synapse(dataset=dataset, run=run if i % 3 else other, pre=[a, b][i % 2],
                post=[c, d, None][i % 3], flag="background" if i % 7 == 0 else "")
        for i in range(60)])
    SynapseFactory(run=run, pre=a, post=b)
    assert_kept()
    assert ReviewableCount.objects.filter(dataset_id=dataset.pk).aggregate(
        n=Sum("synapses"))["n"] == reviewable_synapses(dataset=dataset).count() > 0

    reviewer = UserFactory()
    for synapse, verdict in zip(reviewable_synapses(dataset=dataset)[:5],
                                ["confirmed", "not_synapse", "confirmed", "wrong_direction",
                                 "unsure"]):
        review_create(synapse=synapse, reviewer=reviewer, verdict=verdict)
    assert_kept()

    Synapse.objects.filter(dataset=dataset, pre=a).update(flag="self_contact")  # out
    assert_kept()
    Synapse.objects.filter(dataset=dataset, post__isnull=True).update(post=c)  # in
    assert_kept()
    Synapse.objects.filter(dataset=dataset, run=other).update(run=run)  # moved between runs
    assert_kept()
    Synapse.objects.filter(dataset=dataset).update(confidence=0.5)  # nothing counted changes
    assert_kept()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE synapses_synapse SET review_state = 'confirmed', flag = '' "
                       "WHERE dataset_id = %s AND id %% 2 = 0", [dataset.pk])
    assert_kept()
    Synapse.objects.filter(pk__in=list(Synapse.objects.filter(dataset=dataset)
                                       .values_list("pk", flat=True)[:7])).delete()
    assert_kept()
    other.delete()
    run.delete()  # Django deletes the run's synapses (and their reviews) first
    assert_kept()
    assert not counted()[1]


def test_progress_reads_the_counts(two_runs):
    dataset, (run, other), (a, b, c, _) = two_runs
    synapses = [SynapseFactory(run=run, pre=a, post=b) for _ in range(3)]
    SynapseFactory(run=other, pre=b, post=c)
    SynapseFactory(run=other, pre=b, post=None)
    review_create(synapse=synapses[0], reviewer=UserFactory(), verdict="not_synapse")
    # What the counts say, not what counting would: change them behind the triggers' back.
    ReviewableCount.objects.filter(dataset_id=dataset.pk, run_id=run.pk,
                                   review_state="unreviewed").update(synapses=1000)
    progress = review_progress(dataset=dataset, run=run)
    assert progress["total"] == 1001 and progress["unreviewed"] == 1000
    assert progress["verdicts"]["not_synapse"] == 1 and progress["reviewed"] == 1
    assert all(isinstance(v, int) for v in progress["verdicts"].values())
    assert review_progress(dataset=dataset)["total"] == 1002
    assert review_progress(dataset=dataset, run=other.pk)["total"] == 1


def test_deleting_a_dataset_s_synapses_and_truncating_leave_no_count(two_runs,
                                                                   transactional_db):
    dataset, (run, _), (a, b, _, _) = two_runs
    SynapseFactory(run=run, pre=a, post=b)
    kept_dataset = DatasetFactory()
    SynapseFactory(run=SynapseRunFactory(dataset=kept_dataset))
    Synapse.objects.filter(dataset=dataset).delete()
    assert_kept()
    assert set(ReviewableCount.objects.exclude(synapses=0).values_list(
        "dataset_id", flat=True)) == {kept_dataset.pk}
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE synapses_synapse CASCADE")
    assert not ReviewableCount.objects.exists()
