"""An error report in a real browser: the cells page lists it, and a row's link opens
Neuroglancer on the row's cells and voxel (the state URL, query and all, after ``#!``)."""

import json
import re

import numpy as np
import pytest

from connectome.cells.reports import store_error_report
from detection.cells.evaluation import overlap_report
from tests.browser.conftest import browser_missing

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def test_a_report_row_opens_the_viewer_at_its_cells(page, live_server, phantom_dataset,
                                                    phantom_files):
    truth = phantom_files.phantom.segmentation
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    kept, merged = (int(i) for i in ids[np.argsort(sizes)[-2:]])
    seg = truth.copy()
    seg[seg == merged] = kept
    rows = overlap_report(seg, truth, min_voxels=50)
    assert rows[0]["kind"] == "merge" and rows[0]["cells"] == [kept]
    layer = phantom_dataset.layers.get(name="segmentation")
    store_error_report(layer, rows)

    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/cells/")
    section = page.locator(f"#errors-{layer.pk}")
    assert "merge of bodies" in section.inner_text()
    link = section.locator("a[href*='/ng/v/']").first.get_attribute("href")
    page.goto(link)
    page.wait_for_function("() => Boolean(window.viewer && window.viewer.isReady())",
                           timeout=60_000)
    state = page.evaluate("JSON.stringify(window.viewer.state.toJSON())")
    shown = json.loads(state)
    (cells,) = [entry for entry in shown["layers"] if entry["name"] == "segmentation"]
    assert cells["segments"] == [str(kept)]
    z, y, x = rows[0]["point"]
    assert [round(v, 3) for v in shown["position"]] == [x + 0.5, y + 0.5, z + 0.5]
    assert re.search(r"segments=\d+", link) and "position=" in link
