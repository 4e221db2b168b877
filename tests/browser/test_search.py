"""Search in a real browser: the header's box on the dataset page (``/`` focuses it), the
results page, a click through to the cell; on the review queue, typing in the box gives no
verdicts."""

import pytest
from django.contrib.auth import get_user_model

from connectome.cells.models import Cell
from connectome.cells.services import cells_annotate
from connectome.datasets.models import Membership
from connectome.review.models import Review
from tests.browser.conftest import browser_missing, log_in

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def test_search_from_the_dataset_page_to_a_cell(page, live_server, phantom_dataset):
    dataset = phantom_dataset
    cell = Cell.objects.filter(dataset=dataset).order_by("segment_id")[3]
    cells_annotate(dataset=dataset, annotations={cell.segment_id: {"name": "Giant Fibre"}})
    n_type = Cell.objects.filter(dataset=dataset, cell_type=cell.cell_type).count()

    page.goto(f"{live_server.url}/datasets/{dataset.pk}/")
    page.locator("h1").first.click()  # the focus on the page, not in a field
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search-box"
    page.keyboard.type("giant")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/search/?dataset={dataset.pk}&q=giant")
    cells = page.locator('.search-results[data-kind="cell"] a')
    assert cells.all_inner_texts() == ["Giant Fibre"]
    cells.first.click()
    page.wait_for_url(f"{live_server.url}/datasets/{dataset.pk}/cells/{cell.pk}/")
    assert page.inner_text("h1").startswith("Giant Fibre")

    # A cell type lists its cells; a segment id finds the cell.
    page.locator("#search-box").fill(cell.cell_type.upper())
    page.keyboard.press("Enter")
    page.wait_for_url("**/search/**")
    row = page.locator('.search-results[data-kind="cell_type"] tr').nth(1)
    assert row.inner_text().split("\t") == [cell.cell_type, "phantom", str(n_type)]
    row.locator("a").click()
    page.wait_for_url(f"**/datasets/{dataset.pk}/cells/?cell_type={cell.cell_type}")
    assert page.locator("table tr").count() == n_type + 1

    page.keyboard.press("/")
    page.keyboard.type(str(cell.segment_id))
    page.keyboard.press("Enter")
    page.wait_for_url("**/search/**")
    segment = page.locator('.search-results[data-kind="segment"] a')
    assert segment.all_inner_texts() == ["Giant Fibre"]


def test_typing_in_the_search_box_on_the_review_page_gives_no_verdict(page, live_server,
                                                                       phantom_dataset):
    dataset = phantom_dataset
    reviewer = get_user_model().objects.create_user("rita", password="unused")
    Membership.objects.create(dataset=dataset, user=reviewer, role=Membership.Role.REVIEWER)
    log_in(page, live_server, reviewer)
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/review/")
    page.wait_for_function("() => window.reviewTimings.firstSynapseMs !== null",
                           timeout=60_000)
    first = page.evaluate("window.reviewTimings.renderedSynapseId")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search-box"
    page.keyboard.type("cxdu")  # confirm, not a synapse, wrong direction, unsure - as keys
    page.wait_for_timeout(500)
    assert page.locator("#search-box").input_value() == "cxdu"
    assert Review.objects.count() == 0
    assert page.evaluate("window.reviewTimings.renderedSynapseId") == first
    # Out of the box the keys are verdicts again.
    page.keyboard.press("Escape")
    page.locator("#search-box").blur()
    page.keyboard.press("c")
    page.wait_for_function(f"() => window.reviewTimings.renderedSynapseId !== {first}",
                           timeout=60_000)
    assert list(Review.objects.values_list("synapse_id", "verdict")) == [(first, "confirmed")]
