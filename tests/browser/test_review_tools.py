"""Review tools in a real browser: the `?` help overlay (also with the focus in the viewer), a
note and a tag typed and stored with a verdict, a skip taken back with `z`, and a progress
count that stays the run's through an undo."""

import pytest
from django.contrib.auth import get_user_model

from connectome.datasets.models import Membership
from connectome.review.models import Review, ReviewSkip
from connectome.synapses.models import Synapse, SynapseRun
from tests.browser.conftest import browser_missing, log_in

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def _reviewer(dataset):
    user = get_user_model().objects.create_user("rosa", password="unused")
    Membership.objects.create(dataset=dataset, user=user, role=Membership.Role.REVIEWER)
    return user


def _second_run(dataset, n: int = 4) -> SynapseRun:
    """A second run: copies of ``n`` of the phantom's synapses, so the run's progress and the
    dataset's differ (``n`` against all the synapses)."""
    run = SynapseRun.objects.create(dataset=dataset, name="second look", method="test")
    for synapse in Synapse.objects.filter(dataset=dataset).order_by("pk")[:n]:
        synapse.pk = None
        synapse.run = run
        synapse.save()
    return run


def _open_queue(page, live_server, dataset, run) -> int:
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/review/?run={run.pk}")
    page.wait_for_function("() => window.reviewTimings.firstSynapseMs !== null",
                           timeout=60_000)
    return page.evaluate("window.reviewTimings.firstSynapseId")


def _wait_for(page, synapse_id: int) -> None:
    page.wait_for_function(
        f"() => window.reviewTimings.renderedSynapseId === {synapse_id} "
        "&& !window.reviewQueue.busy", timeout=60_000)


def _wait_for_next(page, previous: int) -> int:
    page.wait_for_function(
        f"() => window.reviewTimings.renderedSynapseId !== {previous} "
        "&& !window.reviewQueue.busy", timeout=60_000)
    return page.evaluate("window.reviewTimings.renderedSynapseId")


def test_help_overlay_lists_every_key_and_closes(page, live_server, phantom_dataset):
    dataset = phantom_dataset
    run = _second_run(dataset)
    log_in(page, live_server, _reviewer(dataset))
    _open_queue(page, live_server, dataset, run)
    assert page.is_hidden("#help-overlay")

    page.keyboard.press("?")
    assert page.is_visible("#help-overlay")
    table = page.evaluate("ReviewTools.KEY_TABLE.map((e) => e.key)")
    listed = page.locator("#help-keys tr[data-key]")
    assert [listed.nth(i).get_attribute("data-key") for i in range(listed.count())] == table
    for key in ["c", "x", "p", "P", "d", "u", "s", "z", "n", "?"]:
        assert key in table
    text = page.inner_text("#help-keys")
    assert "Not a synapse" in text and "Undo your last verdict or skip" in text
    # Keys do nothing behind the overlay; Esc closes it.
    page.keyboard.press("c")
    page.keyboard.press("Escape")
    assert page.is_hidden("#help-overlay")
    assert not Review.objects.exists()

    # With the focus in the viewer, as the other keys: ? opens, ? closes.
    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + 40, box["y"] + box["height"] - 40)
    assert page.evaluate("document.activeElement.id") == "viewer"
    page.keyboard.press("?")
    assert page.is_visible("#help-overlay")
    page.keyboard.press("?")
    assert page.is_hidden("#help-overlay")


def test_note_and_tag_are_saved_with_the_verdict(page, live_server, phantom_dataset):
    dataset = phantom_dataset
    run = _second_run(dataset)
    reviewer = _reviewer(dataset)
    log_in(page, live_server, reviewer)
    shown = _open_queue(page, live_server, dataset, run)

    page.keyboard.press("n")
    assert page.evaluate("document.activeElement.id") == "review-note"
    # Keys typed in the note are text, not verdicts.
    page.keyboard.type("cleft unclear, x-section oblique")
    assert page.input_value("#review-note") == "cleft unclear, x-section oblique"
    page.fill("#review-tag-input", "Oblique")
    page.press("#review-tag-input", "Enter")
    page.wait_for_selector('#review-tags [data-tag="oblique"][aria-pressed="true"]')
    page.press("#review-tag-input", "Escape")
    assert not Review.objects.exists()

    page.keyboard.press("u")
    following = _wait_for_next(page, shown)
    review = Review.objects.get(reviewer=reviewer)
    assert (review.synapse_id, review.verdict) == (shown, "unsure")
    assert review.note == "cleft unclear, x-section oblique"
    assert list(review.tags.values_list("name", flat=True)) == ["oblique"]
    # The next synapse starts with an empty note and no tag chosen; the used tag is offered.
    assert page.input_value("#review-note") == ""
    page.wait_for_selector('#review-tags [data-tag="oblique"][aria-pressed="false"]')
    assert following != shown

    # The synapse page lists the note and the tag with the verdict.
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/synapses/{shown}/")
    row = page.inner_text("td.review-note")
    assert "cleft unclear, x-section oblique" in row and "#oblique" in row


def test_skip_then_z_brings_the_synapse_back_and_the_count_stays(page, live_server,
                                                                   phantom_dataset):
    dataset = phantom_dataset
    run = _second_run(dataset, n=4)
    reviewer = _reviewer(dataset)
    log_in(page, live_server, reviewer)
    first = _open_queue(page, live_server, dataset, run)
    assert page.inner_text("#progress") == "0 / 4"

    page.keyboard.press("c")
    second = _wait_for_next(page, first)
    page.wait_for_function("() => document.getElementById('progress').textContent === '1 / 4'")
    page.keyboard.press("s")
    third = _wait_for_next(page, second)
    assert ReviewSkip.objects.filter(reviewer=reviewer, synapse_id=second).exists()

    # Every value the count shows from here on: the run's, never the dataset's.
    page.evaluate("""() => {
      window.progressSeen = [];
      new MutationObserver(() => window.progressSeen.push(
          document.getElementById('progress').textContent))
        .observe(document.getElementById('progress'),
                 {childList: true, characterData: true, subtree: true});
    }""")
    page.keyboard.press("z")
    _wait_for(page, second)
    assert "Skip of synapse" in page.inner_text("#status")
    assert not ReviewSkip.objects.exists()
    assert Synapse.objects.get(pk=second).review_state == "unreviewed"

    # z again takes back the verdict on the first; the count goes back to 0 of the run's 4.
    page.keyboard.press("z")
    _wait_for(page, first)
    page.wait_for_function("() => document.getElementById('progress').textContent === '0 / 4'")
    page.wait_for_timeout(500)  # the summary's answer comes after the undo's
    seen = page.evaluate("window.progressSeen")
    assert seen and set(seen) <= {"1 / 4", "0 / 4"}, seen
    assert not Review.objects.exists()
    assert third not in (first, second)
