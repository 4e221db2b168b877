"""A cell's mesh in the cell page's 3D panel, made by a mesh_segmentation job."""

import io

import numpy as np
import pytest

from tests.browser.conftest import browser_missing, report, viewer_ready

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow

# The segmentation layer's mesh: segments whose manifest arrived, and fragments arrived.
MESH_JS = """() => {
  const viewer = document.getElementById('viewer').contentWindow.viewer;
  const managed = viewer.layerManager.managedLayers.find(l => l.name === 'segmentation');
  const found = {manifests: 0, fragments: 0, meshLayers: 0};
  for (const renderLayer of managed.layer.renderLayers) {
    const source = renderLayer.source;
    if (!source || !source.fragmentSource) continue;
    found.meshLayers += 1;
    found.manifests += source.chunks.size;
    found.fragments += source.fragmentSource.chunks.size;
  }
  return found;
}"""


def test_the_cell_page_shows_the_cells_mesh_in_3d(page, live_server, phantom_dataset, request):
    from connectome.cells.models import Cell
    from connectome.jobs.models import Job
    from connectome.jobs.services import job_run_inline

    segmentation = phantom_dataset.layers.get(name="segmentation")
    job = job_run_inline(kind="mesh_segmentation", dataset=phantom_dataset,
                         parameters={"segmentation_layer": segmentation.pk,
                                     "block_shape": [12, 80, 80]})
    assert job.state == Job.State.DONE, job.error
    cell = Cell.objects.filter(dataset=phantom_dataset).order_by("-size_voxels").first()
    expected = sum(1 for b in job.blocks.all() if str(cell.segment_id) in b.result["segments"])
    served = []
    page.on("response", lambda r: served.append((r.url, r.status)) if "/mesh/" in r.url else None)
    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/cells/{cell.pk}/")
    viewer_ready(page)
    page.locator("#viewer").scroll_into_view_if_needed()
    page.wait_for_function(f"() => ({MESH_JS})().fragments >= {expected}", timeout=60_000)
    found = page.evaluate(MESH_JS)
    assert found["meshLayers"] == 1 and found["manifests"] == 1, found
    assert found["fragments"] == expected, found
    fetched = [(url, status) for url, status in served if f"/mesh/{cell.segment_id}:0" in url]
    assert fetched and all(status == 200 for _, status in fetched), fetched

    # The 3D panel (bottom left of the four; no sections drawn there) shows the mesh: much of
    # it changes when the segmentation layer is hidden (what stays: the box, the synapses).
    shown = _panel(page)
    page.evaluate("""() => document.getElementById('viewer').contentWindow.viewer.layerManager
      .managedLayers.find(l => l.name === 'segmentation').setVisible(false)""")
    page.wait_for_timeout(1000)
    hidden = _panel(page)
    changed = float(np.mean(np.any(shown != hidden, axis=-1)))
    report(request, f"{found['fragments']} fragments of segment {cell.segment_id} loaded; the "
                    f"mesh covers {changed:.0%} of the 3D panel")
    assert changed > 0.05


def _panel(page) -> np.ndarray:
    """The pixels of the bottom-left panel of the viewer's four (the 3D one), (H, W, 3)."""
    from PIL import Image

    box = page.locator("#viewer").bounding_box()
    shot = page.screenshot(clip={"x": box["x"] + box["width"] * 0.05,
                                 "y": box["y"] + box["height"] * 0.55,
                                 "width": box["width"] * 0.4, "height": box["height"] * 0.4})
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
