"""The review page in a real browser: the next synapse comes from what was loaded ahead (no state
fetched after the key), undo brings the judged one back, one palette in the panel and the
viewer, the layout toggle is remembered, and the pick line names the cell under the mouse.

Timings are printed (and kept in the JUnit properties), never asserted: they depend on the
machine; `benchmarks/screenshots.py` measures them on the demo."""

import json
import statistics
import time

import pytest
from django.contrib.auth import get_user_model

from connectome.datasets.models import Membership
from connectome.imports.volumes import import_volume
from connectome.review.models import Review, ReviewClaim
from connectome.review.services import review_next
from connectome.synapses.models import Synapse
from connectome.viewer.state import PALETTE
from tests.browser.conftest import browser_missing, hover, log_in, report

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow

DRAWN = ("() => { const q = window.reviewQueue; return !q.busy && q.current !== null &&"
         " window.reviewTimings.renderedSynapseId === q.current.id; }")
VIEWER_STATE = "JSON.stringify(document.getElementById('viewer').contentWindow.viewer.state.toJSON())"


def _rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))


@pytest.fixture
def reviewing(page, live_server, phantom_dataset, phantom_files):
    """The phantom with its clefts as a synapses layer; a reviewer on its review page, the
    first synapse drawn; the state requests the page made, with the time they were made."""
    import_volume(dataset=phantom_dataset, source=str(phantom_files.h5), name="clefts",
                  kind="synapses", dataset_path="volumes/labels/clefts")
    user = get_user_model().objects.create_user("rosa", password="unused")
    Membership.objects.create(dataset=phantom_dataset, user=user, role=Membership.Role.REVIEWER)
    log_in(page, live_server, user)
    requests = []  # (url, time.monotonic())
    page.on("request", lambda r: requests.append((r.url, time.monotonic()))
            if "/viewer/state/" in r.url else None)
    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/review/")
    page.wait_for_function(DRAWN, timeout=60_000)
    return page, user, requests


def _state_requested_after(requests, synapse_id: int, after: float) -> bool:
    return any(f"/viewer/state/synapses/{synapse_id}/" in url and at > after
               for url, at in requests)


def test_next_synapse_comes_from_what_was_loaded_ahead(reviewing, request):
    page, user, requests = reviewing
    steps, judged = [], []
    for key, verdict in [("c", "confirmed"), ("x", "not_synapse"), ("c", "confirmed")]:
        page.wait_for_function(DRAWN, timeout=60_000)
        current = page.evaluate("window.reviewQueue.current.id")
        upcoming = page.evaluate("window.reviewQueue.upcoming.map((s) => s.id)")
        assert upcoming and current not in upcoming
        # The state of the one after is fetched once the current one is drawn.
        page.wait_for_function(
            f"() => performance.getEntriesByType('resource').some((e) =>"
            f" e.name.includes('/viewer/state/synapses/{upcoming[0]}/') && e.responseEnd > 0)",
            timeout=30_000)
        pressed = time.monotonic()
        page.keyboard.press(key)
        page.wait_for_function(
            f"() => window.reviewQueue.current.id !== {current} && ({DRAWN})()", timeout=60_000)
        shown = page.evaluate("window.reviewQueue.current.id")
        assert shown == upcoming[0]  # nobody else reviews: the queue's next is the one ahead
        assert not _state_requested_after(requests, shown, pressed)
        steps.append(page.evaluate("window.reviewTimings.lastStep"))
        assert Review.objects.get(reviewer=user, synapse_id=current).verdict == verdict
        judged.append(current)
    timings = page.evaluate("window.reviewTimings")
    assert timings["moves"] == 3 and timings["restores"] == 1  # layers built once
    assert timings["statesAhead"] == 3
    # The viewer shows the synapse on screen: its cells selected, the arrow its own.
    state = json.loads(page.evaluate(VIEWER_STATE))
    synapse = Synapse.objects.select_related("pre", "post").get(pk=shown)
    cells = next(layer for layer in state["layers"] if layer["name"] == "segmentation")
    assert sorted(cells["segments"]) == sorted(
        {str(synapse.pre.segment_id), str(synapse.post.segment_id)})
    arrow = next(layer for layer in state["layers"] if layer["name"] == "synapse")
    assert [a["id"] for a in arrow["annotations"]] == [str(shown)]
    report(request, "key to next synapse drawn: " + ", ".join(
        f"{s['drawnMs']:.0f} ms ({s['how']})" for s in steps)
        + f"; median {statistics.median(s['drawnMs'] for s in steps):.0f} ms")

    # Undo: the last judged synapse comes back (its state kept), its verdict is gone.
    page.wait_for_function(DRAWN, timeout=60_000)
    page.keyboard.press("z")
    page.wait_for_function(
        f"() => window.reviewQueue.current.id === {judged[-1]} && ({DRAWN})()", timeout=60_000)
    back = judged[-1]
    assert not Review.objects.filter(reviewer=user, synapse_id=back).exists()
    assert Synapse.objects.get(pk=back).review_state == "unreviewed"
    assert "taken back" in page.inner_text("#status")
    report(request, f"undo drawn after {page.evaluate('window.reviewTimings.lastStep.drawnMs'):.0f} ms")


def test_one_palette_in_the_panel_and_the_viewer(reviewing):
    page, _, _ = reviewing
    for side in ("pre", "post"):
        assert page.eval_on_selector(f"#facts .{side}", "e => getComputedStyle(e).color") == _rgb(
            PALETTE[side])
    legend = page.inner_text("#palette")
    for word in ("presynaptic", "postsynaptic", "cleft", "other cells"):
        assert word in legend
    assert page.eval_on_selector(
        "#palette .swatch-cleft", "e => getComputedStyle(e, '::before').backgroundColor"
    ) == _rgb(PALETTE["cleft"])
    state = json.loads(page.evaluate(VIEWER_STATE))
    layers = {layer["name"]: layer for layer in state["layers"]}
    synapse = page.evaluate("window.reviewQueue.current")
    assert layers["segmentation"]["segmentColors"] == {
        synapse["pre_segment_id"]: PALETTE["pre"], synapse["post_segment_id"]: PALETTE["post"]}
    assert layers["segmentation"]["segmentDefaultColor"] == PALETTE["other"]
    assert layers["clefts"]["segmentDefaultColor"] == PALETTE["cleft"]
    assert "setLineWidth(4.0)" in layers["synapse"]["shader"]


def test_layout_toggle_is_remembered(reviewing, live_server):
    page, _, _ = reviewing
    layout = "document.getElementById('viewer').contentWindow.viewer.state.toJSON().layout"
    assert page.evaluate(layout) == "xy"
    page.click("#layout")
    page.wait_for_function(f"() => {layout} === '4panel'", timeout=30_000)
    assert page.evaluate("localStorage.getItem('review:layout')") == "4panel"
    assert page.inner_text("#layout") == "One panel"
    page.reload()
    page.wait_for_function(DRAWN, timeout=60_000)
    assert page.evaluate(layout) == "4panel"
    page.keyboard.press("v")
    page.wait_for_function(f"() => {layout} === 'xy'", timeout=30_000)
    assert page.evaluate("localStorage.getItem('review:layout')") == "xy"


def test_pick_line_names_the_cell_under_the_mouse(reviewing):
    page, _, _ = reviewing
    page.keyboard.press("p")
    assert page.is_visible("#pick")
    box = page.locator("#viewer").bounding_box()
    checked = 0
    for fx, fy in [(0.3, 0.3), (0.6, 0.4), (0.45, 0.7), (0.7, 0.7), (0.25, 0.6)]:
        seen = hover(page, box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        segment = seen["values"].get("segmentation", "0").split()[0]
        line = page.inner_text("#pick-hover")
        if segment == "0":
            assert line == "no segment"
        else:
            # The cell, never the cleft under the same point.
            assert line == f"segment {segment}", (seen, line)
            checked += 1
    assert checked >= 2, "the mouse never was over a cell"


def test_someone_else_takes_the_synapse_loaded_ahead(reviewing, phantom_dataset):
    page, user, _ = reviewing
    current = page.evaluate("window.reviewQueue.current.id")
    upcoming = page.evaluate("window.reviewQueue.upcoming.map((s) => s.id)")
    page.wait_for_function(
        f"() => performance.getEntriesByType('resource').some((e) =>"
        f" e.name.includes('/viewer/state/synapses/{upcoming[0]}/') && e.responseEnd > 0)",
        timeout=30_000)
    # Another reviewer claims the synapse the page loaded ahead (the first one nobody holds).
    other = get_user_model().objects.create_user("otto", password="unused")
    assert review_next(dataset=phantom_dataset, reviewer=other).pk == upcoming[0]
    page.keyboard.press("c")
    page.wait_for_function(
        f"() => ![{current}, {upcoming[0]}].includes(window.reviewQueue.current.id)"
        f" && ({DRAWN})()", timeout=60_000)
    # The page showed the guess, then the one the queue handed out instead.
    assert page.evaluate("window.reviewQueue.current.id") == upcoming[1]
    assert ReviewClaim.objects.get(synapse_id=upcoming[1]).reviewer == user
    assert ReviewClaim.objects.get(synapse_id=upcoming[0]).reviewer == other
    assert Review.objects.get(reviewer=user).synapse_id == current
