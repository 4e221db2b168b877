"""The pages in a real browser: the viewer shows the phantom's voxels and segments, a reviewer
works through the queue with the keyboard (and picks a right partner in the viewer), the
verdicts are stored and the wiring matrix page counts the rejected synapse out."""

import math
import re

import numpy as np
import pytest
from django.contrib.auth import get_user_model

from connectome.datasets.models import Membership
from connectome.review.models import Review
from connectome.synapses.models import Synapse
from connectome.synapses.wiring import wiring_matrix
from tests.browser.conftest import browser_missing, hover, log_in, report, viewer_ready

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def _segment(value: str) -> int:
    # The id first, whatever label may follow.
    return int(value.split()[0])


def _voxel(position) -> tuple[int, int, int]:
    """Neuroglancer x, y, z (voxel i spans [i, i + 1)) -> our (z, y, x) index."""
    x, y, z = (math.floor(p) for p in position)
    return z, y, x


def _reviewer(dataset):
    user = get_user_model().objects.create_user("rita", password="unused")
    Membership.objects.create(dataset=dataset, user=user, role=Membership.Role.REVIEWER)
    return user


def test_viewer_shows_the_phantom_voxels_and_segments(page, live_server, phantom_dataset,
                                                        phantom_files):
    phantom = phantom_files.phantom
    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/")
    viewer_ready(page)
    page.locator("#viewer").scroll_into_view_if_needed()
    box = page.locator("#viewer").bounding_box()
    # Points over the top-left (xy) panel of the four: the EM value and the segment id the
    # viewer reports under the mouse are those of the phantom at that voxel.
    checked = 0
    for fx, fy in [(0.2, 0.3), (0.3, 0.2), (0.35, 0.4), (0.15, 0.15), (0.4, 0.3)]:
        seen = hover(page, box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        assert seen["active"], seen
        z, y, x = _voxel(seen["position"])
        if not (0 <= z < phantom.em.shape[0] and 0 <= y < phantom.em.shape[1]
                and 0 <= x < phantom.em.shape[2]):
            continue
        assert int(seen["values"]["em"]) == phantom.em[z, y, x], (seen, (z, y, x))
        segment = _segment(seen["values"].get("segmentation", "0"))
        assert segment == phantom.segmentation[z, y, x], (seen, (z, y, x))
        checked += segment != 0
    assert checked >= 2, "the mouse never was over a cell"

    # Without the reviewer role the queue is read-only, and says why.
    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/review/")
    viewer_ready(page)
    assert "needs the reviewer role" in page.inner_text("#read-only")
    assert page.locator("#verdicts").count() == 0
    page.keyboard.press("c")
    assert Review.objects.count() == 0


def _wait_for_next(page, previous) -> int:
    # Drawn, and the verdict and the queue's answer are in (the page shows the next synapse
    # while they are under way).
    page.wait_for_function(
        f"() => window.reviewTimings.renderedSynapseId !== {previous}"
        " && !window.reviewQueue.busy", timeout=60_000)
    return page.evaluate("window.reviewTimings.renderedSynapseId")


def _pick_point(page, box, avoid: set[int]):
    """A point of the viewer's panel over a cell not in ``avoid``: (x, y, segment id)."""
    for fy in np.linspace(0.2, 0.8, 7):
        for fx in np.linspace(0.2, 0.8, 7):
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            seen = hover(page, x, y)
            segment = _segment(seen["values"].get("segmentation", "0"))
            if segment and segment not in avoid:
                return x, y, segment
    raise AssertionError("no other cell under the mouse anywhere in the viewer")


def test_reviewer_works_the_queue_with_the_keyboard(page, live_server, phantom_dataset,
                                                     request):
    dataset = phantom_dataset
    reviewer = _reviewer(dataset)
    before = {(p.pre_cell_id, p.post_cell_id): p.synapses
              for p in wiring_matrix(dataset=dataset).pairs}
    log_in(page, live_server, reviewer)

    page.goto(f"{live_server.url}/datasets/{dataset.pk}/review/")
    page.wait_for_function("() => window.reviewTimings.firstSynapseMs !== null",
                           timeout=60_000)
    timings = page.evaluate("window.reviewTimings")
    report(request, f"time to the first rendered synapse: {timings['firstSynapseMs']:.0f} ms "
                    f"from navigation start (viewer client ready at "
                    f"{timings['clientLoadedMs']:.0f} ms, first queue item at "
                    f"{timings['firstItemMs']:.0f} ms)")
    assert re.search(r"First synapse on screen \d+\.\d\d s", page.inner_text("#timing"))

    # Keys with the focus on the page: confirm, then reject.
    given = []
    shown = timings["firstSynapseId"]
    for key, verdict in [("c", "confirmed"), ("x", "not_synapse")]:
        page.keyboard.press(key)
        given.append((shown, verdict))
        shown = _wait_for_next(page, shown)
    # With the focus inside the viewer the keys still work (and Neuroglancer does not get them).
    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + 40, box["y"] + box["height"] - 40)
    assert page.evaluate("document.activeElement.id") == "viewer"
    page.keyboard.press("c")
    given.append((shown, "confirmed"))
    shown = _wait_for_next(page, shown)

    # Wrong partner: p, then a click on the right cell in the viewer.
    synapse = Synapse.objects.select_related("pre", "post").get(pk=shown)
    page.keyboard.press("p")
    assert page.is_visible("#pick")
    x, y, segment = _pick_point(page, box, {synapse.pre.segment_id, synapse.post.segment_id})
    page.mouse.click(x, y)
    picked = _wait_for_next(page, shown)
    assert f"segment {segment}" in page.inner_text("#status")

    stored = {r.synapse_id: r for r in Review.objects.filter(reviewer=reviewer)}
    assert {sid: stored[sid].verdict for sid, _ in given} == dict(given)
    for sid, verdict in given:
        assert Synapse.objects.get(pk=sid).review_state == verdict
    wrong = stored[synapse.pk]
    assert wrong.verdict == "wrong_partner"
    assert [c.segment_id for c in wrong.corrected_post.all()] == [segment]
    assert page.inner_text("#progress") == f"4 / {Synapse.objects.filter(dataset=dataset).count()}"
    assert picked not in stored

    # The wiring matrix page counts the rejected synapse out of its pair.
    rejected = Synapse.objects.get(pk=given[1][0])
    pair = (rejected.pre_id, rejected.post_id)
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/wiring/")
    page.wait_for_function("() => window.wiringMatrix.data !== null", timeout=30_000)
    shown_count = page.evaluate(f"window.wiringMatrix.value({pair[0]}, {pair[1]})")
    assert shown_count == before[pair] - 1
    if shown_count:
        where = page.evaluate(f"window.wiringMatrix.position({pair[0]}, {pair[1]})")
        page.mouse.move(where["x"], where["y"])
        noun = "synapse" if shown_count == 1 else "synapses"
        assert f": {shown_count} {noun}" in page.inner_text("#tooltip")
        page.mouse.click(where["x"], where["y"])
        page.wait_for_selector(f'#pair-list tr[data-synapse="{rejected.pk}"]')
        assert "not_synapse" in page.inner_text(f'#pair-list tr[data-synapse="{rejected.pk}"]')


def test_dataset_page_follows_a_running_job(page, live_server):
    from datetime import timedelta

    from django.utils import timezone

    from connectome.datasets.services import dataset_create
    from connectome.jobs.models import Job

    dataset = dataset_create(name="empty", voxel_size=(40.0, 8.0, 8.0), owner=None,
                             is_public=True)
    job = Job.objects.create(kind="detect_synapses", dataset=dataset, state=Job.State.RUNNING,
                             progress_done=3, progress_total=12, message="block 3 of 12",
                             started_at=timezone.now() - timedelta(seconds=6))
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/")
    row = f'#jobs tr[data-job="{job.pk}"]'
    # The first poll replaces the rendered row with rate and time left (3 blocks in 6 s).
    page.wait_for_function(
        f"() => /\\/s/.test(document.querySelector('{row}').cells[4].textContent)",
        timeout=15_000)
    cells = page.locator(f"{row} td").all_inner_texts()
    assert cells[2] == "running" and cells[3].strip() == "3/12", cells
    assert 0.3 < float(cells[4].removesuffix("/s")) <= 0.5, cells
    assert cells[5].endswith(" s left"), cells
    Job.objects.filter(pk=job.pk).update(state=Job.State.DONE, progress_done=12,
                                         finished_at=timezone.now(), message="done")
    page.wait_for_function(
        f"() => document.querySelector('{row}').cells[2].textContent === 'done'",
        timeout=15_000)
    cells = page.locator(f"{row} td").all_inner_texts()
    assert cells[3].strip() == "12/12" and cells[5].startswith("took "), cells


def test_review_page_says_when_the_queue_is_empty(page, live_server, phantom_dataset):
    dataset = phantom_dataset
    reviewer = _reviewer(dataset)
    Synapse.objects.filter(dataset=dataset).update(review_state="confirmed")
    log_in(page, live_server, reviewer)
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/review/")
    page.wait_for_selector("#empty:not([hidden])", timeout=30_000)
    assert page.inner_text("#synapse-title") == "Queue empty"
    assert "No synapse left to review" in page.inner_text("#empty")
    total = Synapse.objects.filter(dataset=dataset).count()
    assert page.inner_text("#progress") == f"{total} / {total}"
    # Only undo is left to press.
    enabled = page.locator("#verdicts button:not(:disabled)")
    assert enabled.count() == 1 and enabled.get_attribute("data-action") == "undo"
