"""The wiring page in a real browser: it opens on the dataset's default run (not the sum of the
ground truth and the detection), toggles between chemical and electrical synapses, sums the
runs only when asked, and its download links serve what it shows."""

import csv
import io
from pathlib import Path

import pytest
from django.db.models import F

from connectome.synapses.models import Synapse, SynapseRun
from connectome.synapses.wiring import wiring_matrix
from detection.io.tables import read_cnapse
from tests.browser.conftest import browser_missing

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def _detection_of(dataset) -> tuple[SynapseRun, tuple[int, int], tuple[int, int]]:
    """A detection run that found the ground truth's synapses again, plus gap junctions: two
    stored one way, one the other way, between the same two cells. Returns the run, a
    chemical pair and the electrical pair."""
    truth = dataset.synapse_runs.get(name="ground truth")
    detected = SynapseRun.objects.create(dataset=dataset, name="detected", method="contact")
    found = list(truth.synapses.filter(pre__isnull=False, post__isnull=False)
                 .exclude(pre=F("post")))
    Synapse.objects.bulk_create([
        Synapse(dataset=dataset, run=detected, pre_id=s.pre_id, post_id=s.post_id,
                ctr_z=s.ctr_z, ctr_y=s.ctr_y, ctr_x=s.ctr_x, size_voxels=s.size_voxels,
                confidence=0.8)
        for s in found])
    a, b = found[0].pre_id, found[0].post_id
    Synapse.objects.bulk_create([
        Synapse(dataset=dataset, run=detected, pre_id=pre, post_id=post,
                kind=Synapse.Kind.ELECTRICAL, ctr_z=100.0, ctr_y=100.0, ctr_x=100.0)
        for pre, post in ((a, b), (a, b), (b, a))])
    return detected, (a, b), (min(a, b), max(a, b))


def _loaded(page, kind: str, run: str):
    """Wait for the matrix of ``kind`` and ``run`` (a run id or "all") on screen."""
    page.wait_for_function(
        "([kind, run]) => { const d = window.wiringMatrix.data;"
        " return d !== null && d.kind === kind && String(d.runs) === run"
        " && document.getElementById('summary').textContent.includes(kind); }",
        arg=[kind, run], timeout=30_000)


def test_wiring_page_default_run_kind_toggle_and_downloads(page, live_server, phantom_dataset):
    dataset = phantom_dataset
    detected, chemical_pair, electrical_pair = _detection_of(dataset)
    truth = dataset.synapse_runs.get(name="ground truth")
    one = {(p.pre_cell_id, p.post_cell_id): p.synapses
           for p in wiring_matrix(dataset=dataset, runs=[detected]).pairs}
    summed = {(p.pre_cell_id, p.post_cell_id): p.synapses
              for p in wiring_matrix(dataset=dataset, runs=[truth, detected]).pairs}
    assert summed[chemical_pair] == 2 * one[chemical_pair]  # the issue: 4 where 2 are

    # Opens on the detection (the default run), chemical synapses.
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/wiring/")
    _loaded(page, "chemical", str(detected.pk))
    assert "(default)" in page.inner_text(f'#run option[value="{detected.pk}"]')
    value = page.evaluate(f"window.wiringMatrix.value({chemical_pair[0]}, {chemical_pair[1]})")
    assert value == one[chemical_pair]
    assert f"{sum(one.values())} chemical synapses" in page.inner_text("#summary")

    # Electrical: the three junctions between one pair of cells, the same both ways round.
    page.check('input[name="kind"][value="electrical"]')
    _loaded(page, "electrical", str(detected.pk))
    a, b = electrical_pair
    assert page.evaluate(f"window.wiringMatrix.value({a}, {b})") == 3
    assert page.evaluate(f"window.wiringMatrix.value({b}, {a})") == 3
    assert "3 electrical synapses" in page.inner_text("#summary")
    assert "1 electrical unordered pairs" in page.inner_text("#summary")

    # The GraphML download link serves the electrical matrix of the run shown.
    with page.expect_download() as download:
        page.click("#graphml")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert 'edgedefault="undirected"' in text and ">electrical<" in text

    # All runs, summed only when asked; chemical again.
    page.check('input[name="kind"][value="chemical"]')
    page.select_option("#run", "all")
    _loaded(page, "chemical", "all")
    value = page.evaluate(f"window.wiringMatrix.value({chemical_pair[0]}, {chemical_pair[1]})")
    assert value == summed[chemical_pair]
    with page.expect_download() as download:
        page.click("#csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sum(int(r["synapses"]) for r in rows) == sum(summed.values())
    assert {r["kind"] for r in rows} == {"chemical"}

    # The dataset page counts the default run and links its synapse table.
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/")
    assert page.inner_text("#count-chemical") == str(detected.synapses.filter(
        kind="chemical").count())
    assert page.inner_text("#count-electrical") == "3"
    with page.expect_download() as download:
        page.click("#download-links >> text=Cnapse CSV")
    table = read_cnapse(download.value.path())
    assert sorted(r.syn_id for r in table) == sorted(detected.synapses.values_list("id", flat=True))
