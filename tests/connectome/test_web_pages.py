"""The pages through Django's test client: the numbers they show, who sees them, and the
permission messages."""

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from connectome.datasets.models import Layer, Membership
from connectome.jobs.models import Job
from connectome.review.selectors import wilson_interval
from connectome.review.services import review_create
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
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world():
    """A public dataset with three cells, two runs and five synapses; a private dataset."""
    dataset = DatasetFactory(name="fly", is_public=True, shape_z=20, shape_y=64, shape_x=48)
    Layer.objects.create(dataset=dataset, name="em", kind=Layer.Kind.EM, dtype="uint8",
                         shape_z=20, shape_y=64, shape_x=48, chunk_z=8, chunk_y=32, chunk_x=32,
                         storage_path="fly/em")
    Layer.objects.create(dataset=dataset, name="labels", kind=Layer.Kind.SEGMENTATION,
                         dtype="uint64", shape_z=20, shape_y=64, shape_x=48, chunk_z=8,
                         chunk_y=32, chunk_x=32, storage_path="fly/labels")
    a = CellFactory(dataset=dataset, segment_id=11, name="KC-1", cell_type="KC")
    b = CellFactory(dataset=dataset, segment_id=12, name="MBON-1", cell_type="MBON")
    c = CellFactory(dataset=dataset, segment_id=13, name="PN-1", cell_type="PN")
    truth = SynapseRunFactory(dataset=dataset, name="ground truth")
    found = SynapseRunFactory(dataset=dataset, name="detected")
    synapses = [
        SynapseFactory(run=truth, pre=a, post=b, confidence=0.9),
        SynapseFactory(run=truth, pre=a, post=b, confidence=0.8),
        SynapseFactory(run=truth, pre=c, post=a, confidence=0.7),
        SynapseFactory(run=found, pre=a, post=b, confidence=0.4),
        SynapseFactory(run=found, pre=b, post=c, confidence=0.3),
    ]
    private = DatasetFactory(name="secret", is_public=False)
    hidden = SynapseFactory(run=SynapseRunFactory(dataset=private))
    return {"dataset": dataset, "cells": (a, b, c), "runs": (truth, found),
            "synapses": synapses, "private": private, "hidden": hidden}


def _client(user=None):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _user():
    user = UserFactory()
    user.save()  # the factory sets the password without saving it; sessions check it
    return user


def _member(dataset, role):
    user = _user()
    MembershipFactory(dataset=dataset, user=user, role=role)
    return user


def _text(response) -> str:
    """The page as text: tags dropped, white space squeezed."""
    html = response.content.decode()
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_home_links_the_datasets_one_can_see(world):
    response = _client().get(reverse("web:home"))
    assert response.status_code == 200
    dataset = world["dataset"]
    assert f'href="{reverse("web:dataset", args=[dataset.pk])}"' in response.content.decode()
    assert "secret" not in _text(response)
    # Synapses of the default run (the newest, "detected"), not of both runs summed.
    assert "fly 40.0 × 8.0 × 8.0 20 × 64 × 48 em (em), labels (segmentation) 3 2" in (
        _text(response))


def test_dataset_page_shows_layers_counts_runs_and_precision(world):
    dataset = world["dataset"]
    reviewer = _member(dataset, Membership.Role.REVIEWER)
    s = world["synapses"]
    review_create(synapse=s[0], reviewer=reviewer, verdict="confirmed")
    review_create(synapse=s[1], reviewer=reviewer, verdict="confirmed")
    review_create(synapse=s[3], reviewer=reviewer, verdict="not_synapse")
    review_create(synapse=s[4], reviewer=reviewer, verdict="unsure")

    # By default the page counts one run, the newest (neither run is a detection here), as
    # the review queue does: 2 synapses, both reviewed, one decided (not a synapse).
    response = _client().get(reverse("web:dataset", args=[dataset.pk]))
    assert response.status_code == 200
    text = _text(response)
    assert "em EM image 20 × 64 × 48 uint8" in text
    assert "labels segmentation 20 × 64 × 48 uint64" in text
    counts = response.context["counts"]
    assert (counts.cells, counts.synapses, counts.reviews) == (3, 2, 2)
    assert "2 / 2" in text and "counts of run “detected”" in text
    assert "Synapses 1 reviewed; precision 0.00" in text

    # ?run=all sums the runs.
    response = _client().get(reverse("web:dataset", args=[dataset.pk]), {"run": "all"})
    text = _text(response)
    counts = response.context["counts"]
    assert (counts.cells, counts.synapses, counts.reviews) == (3, 5, 4)
    # Runs with their synapse and reviewed counts and the precision of their synapses.
    # (n counts decided verdicts: "unsure" is left out.)
    assert re.search(r"ground truth test 3 2 1\.00 \[0\.34, 1\.00\] n=2 ", text)
    assert re.search(r"detected \(default\) test 2 2 0\.00 \[0\.00, 0\.79\] n=1 ", text)
    # 4 reviewed, 3 decided (unsure left out): 2 real of 3.
    assert "4 / 5" in text
    p = wilson_interval(2, 3)
    assert (f"Synapses 3 reviewed; precision 0.67 [{p['low']:.2f}, {p['high']:.2f}]" in text)
    assert "Connections 3 reviewed; precision 0.67" in text
    for name in ("web:review", "web:wiring", "web:cells"):
        assert reverse(name, args=[dataset.pk]) in response.content.decode()


def test_dataset_page_embeds_the_viewer_with_the_dataset_state(world):
    dataset = world["dataset"]
    html = _client().get(reverse("web:dataset", args=[dataset.pk])).content.decode()
    state = "http://testserver" + reverse("viewer:dataset-state", args=[dataset.pk])
    src = reverse("viewer:client", args=["connectome"]) + "#!" + state
    assert f'src="{src}"' in html


def test_dataset_page_lists_jobs_with_progress(world):
    dataset = world["dataset"]
    url = reverse("web:dataset", args=[dataset.pk])
    Job.objects.create(kind="import_volume", dataset=dataset, state=Job.State.DONE,
                       progress_done=4, progress_total=4)
    Job.objects.create(kind="detect_synapses", dataset=dataset, state=Job.State.RUNNING,
                       progress_done=3, progress_total=12, message="block 3")
    text = _text(_client().get(url))
    assert "detect_synapses running 3/12 block 3" in text
    assert "import_volume done 4/4" in text
    assert text.index("detect_synapses") < text.index("import_volume done")  # newest first


@pytest.mark.parametrize("name", ["dataset", "review", "wiring", "cells"])
def test_pages_of_unknown_or_invisible_datasets_are_404(world, name):
    private = world["private"]
    outsider = _user()
    assert _client().get(reverse(f"web:{name}", args=[private.pk])).status_code == 404
    assert _client(outsider).get(reverse(f"web:{name}", args=[private.pk])).status_code == 404
    assert _client().get(reverse(f"web:{name}", args=[10**6])).status_code == 404
    viewer = _member(private, Membership.Role.VIEWER)
    assert _client(viewer).get(reverse(f"web:{name}", args=[private.pk])).status_code == 200


def test_cell_and_synapse_pages_404_across_datasets(world):
    dataset, private = world["dataset"], world["private"]
    hidden = world["hidden"]
    client = _client()
    assert client.get(reverse("web:cell", args=[dataset.pk, hidden.pre_id])).status_code == 404
    assert client.get(reverse("web:synapse", args=[dataset.pk, hidden.pk])).status_code == 404
    assert client.get(reverse("web:synapse", args=[private.pk, hidden.pk])).status_code == 404


def test_review_page_for_a_reviewer_has_the_verdict_keys(world):
    dataset = world["dataset"]
    reviewer = _member(dataset, Membership.Role.REVIEWER)
    response = _client(reviewer).get(reverse("web:review", args=[dataset.pk]) + "?synapse=7")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-verdict="confirmed"' in html and 'data-verdict="not_synapse"' in html
    assert "needs the reviewer role" not in html
    config = response.context["config"]
    assert config["can_review"] is True
    assert config["synapse"] == 7
    assert [(r["name"], r["synapses"]) for r in config["runs"]] == [
        ("ground truth", 3), ("detected", 2)]
    # The newest run is chosen unless the link names one.
    truth, found = world["runs"]
    assert f'<option value="{found.pk}" selected>' in html
    assert "0 / 2" in _text(response)
    chosen = _client(reviewer).get(reverse("web:review", args=[dataset.pk]), {"run": truth.pk})
    assert chosen.context["config"]["run"] == truth.pk
    assert f'<option value="{truth.pk}" selected>' in chosen.content.decode()
    assert "0 / 3" in _text(chosen)


def test_review_page_is_read_only_without_the_reviewer_role(world):
    dataset = world["dataset"]
    viewer = _member(dataset, Membership.Role.VIEWER)
    response = _client(viewer).get(reverse("web:review", args=[dataset.pk]))
    text = _text(response)
    assert response.status_code == 200
    assert "needs the reviewer role; you are a viewer" in text
    assert "Ask a dataset admin" in text
    assert 'data-verdict="confirmed"' not in response.content.decode()
    assert response.context["config"]["can_review"] is False

    anonymous = _client().get(reverse("web:review", args=[dataset.pk]))
    assert "needs the reviewer role" in _text(anonymous)
    login = reverse("rest_framework:login") + "?next=" + reverse("web:review", args=[dataset.pk])
    assert f'href="{login}"' in anonymous.content.decode()
    assert "Log in as a reviewer" in _text(anonymous)


def test_wiring_page_gets_its_dataset_and_runs(world):
    dataset = world["dataset"]
    response = _client().get(reverse("web:wiring", args=[dataset.pk]))
    assert response.status_code == 200
    config = json.loads(re.search(r'id="wiring-config"[^>]*>(.*?)</script>',
                                  response.content.decode(), re.S).group(1))
    detected = world["runs"][1].pk
    assert config == {"dataset": dataset.pk, "runs": [
        {"id": world["runs"][0].pk, "name": "ground truth"},
        {"id": detected, "name": "detected"}],
        "run": str(detected), "default_run": detected, "kind": "chemical"}
    config = json.loads(re.search(
        r'id="wiring-config"[^>]*>(.*?)</script>', _client().get(
            reverse("web:wiring", args=[dataset.pk]), {"run": "all", "kind": "electrical"})
        .content.decode(), re.S).group(1))
    assert (config["run"], config["kind"]) == ("all", "electrical")
    assert "<canvas id=\"matrix\"" in response.content.decode()


def test_cells_page_counts_synapse_rows(world):
    dataset = world["dataset"]
    # name, type, segment, size, outgoing and incoming chemical, electrical
    text = _text(_client().get(reverse("web:cells", args=[dataset.pk]), {"run": "all"}))
    assert "KC-1 KC 11 – 3 1 0" in text
    assert "MBON-1 MBON 12 – 1 3 0" in text
    assert "PN-1 PN 13 – 1 1 0" in text
    # By default, the newest run alone ("detected": a -> b, b -> c).
    text = _text(_client().get(reverse("web:cells", args=[dataset.pk])))
    assert "KC-1 KC 11 – 1 0 0" in text
    assert "MBON-1 MBON 12 – 1 1 0" in text
    assert "PN-1 PN 13 – 0 1 0" in text


def test_cell_page_partners_drop_rejected_synapses(world):
    dataset = world["dataset"]
    a, b, c = world["cells"]
    url = reverse("web:cell", args=[dataset.pk, a.pk])
    text = _text(_client().get(url, {"run": "all"}))
    assert "KC-1 · cell" in text
    assert "Downstream · 1 postsynaptic partners" in text
    assert "MBON-1 MBON 12 3" in text   # three synapses a -> b over both runs
    assert "PN-1 PN 13 1" in text       # upstream: c -> a
    assert "MBON-1 MBON 12 1" in _text(_client().get(url))  # the default run: a -> b once
    review_create(synapse=world["synapses"][3], reviewer=None, verdict="not_synapse")
    assert "MBON-1 MBON 12 2" in _text(_client().get(url, {"run": "all"}))
    detected = world["runs"][1]
    only_detected = _text(_client().get(url, {"run": detected.pk}))
    assert "Downstream · 0 postsynaptic partners" in only_detected
    html = _client().get(url, {"run": "all"}).content.decode()
    assert reverse("web:cell", args=[dataset.pk, b.pk]) in html
    assert reverse("viewer:cell-state", args=[a.pk]) in html


def test_synapse_page_shows_details_and_reviews(world):
    dataset = world["dataset"]
    synapse = world["synapses"][0]
    reviewer = _member(dataset, Membership.Role.REVIEWER)
    b = world["cells"][1]
    review_create(synapse=synapse, reviewer=reviewer, verdict="wrong_partner",
                  corrected_post=[world["cells"][2]])
    response = _client().get(reverse("web:synapse", args=[dataset.pk, synapse.pk]))
    text = _text(response)
    assert f"Synapse {synapse.pk} · wrong partner" in text
    assert "pre KC-1 · KC · segment 11" in text
    assert f"post {b.name} · MBON · segment 12" in text
    assert "confidence 0.900" in text
    assert f"{reviewer.username} wrong partner post → PN-1" in text
    html = response.content.decode()
    assert reverse("viewer:synapse-state", args=[synapse.pk]) in html
    assert f'{reverse("web:review", args=[dataset.pk])}?synapse={synapse.pk}' in html
    assert Synapse.objects.get(pk=synapse.pk).review_state == "wrong_partner"


def test_a_reviewer_without_staff_status_logs_in_through_the_linked_page(world):
    # The admin's login page turns away users who are not staff; the pages link to one that
    # takes every user.
    dataset = world["dataset"]
    user = _member(dataset, Membership.Role.REVIEWER)
    user.set_password("pw")
    user.save()
    client = Client()
    review = reverse("web:review", args=[dataset.pk])
    response = client.post(reverse("rest_framework:login") + f"?next={review}",
                           {"username": user.username, "password": "pw", "next": review})
    assert response.status_code == 302 and response["Location"] == review
    page = client.get(review)
    assert 'data-verdict="confirmed"' in page.content.decode()
    assert f"{user.username} · reviewer" in _text(page)
