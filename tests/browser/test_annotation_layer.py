"""A synapse run's precomputed annotation layer in the real Neuroglancer client."""

import json
import struct

import pytest

from connectome.synapses.models import Synapse
from connectome.viewer.state import RUN_LAYER_PREFIX
from tests.browser.conftest import browser_missing, report, viewer_ready

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow


def _ids(body: bytes) -> list[int]:
    count, = struct.unpack_from("<Q", body, 0)
    return list(struct.unpack_from(f"<{count}Q", body, len(body) - 8 * count))


LAYER_JS = """(name) => {
  const viewer = document.getElementById('viewer').contentWindow.viewer;
  const managed = viewer.layerManager.getLayerByName(name);
  if (!managed || !managed.layer) return null;
  const layer = managed.layer;
  const sources = layer.dataSources.map(s => {
    const state = s.loadState;
    return {error: state && state.error ? String(state.error.message || state.error) : null,
            loaded: Boolean(state && state.dataSource)};
  });
  return JSON.stringify({type: layer.type, visible: managed.visible, sources,
                         ready: viewer.isReady()});
}"""


def test_run_layer_loads_and_draws_every_synapse(page, live_server, phantom_dataset, request):
    """The dataset page shows the newest run: the client reads the layer's info and its
    whole-volume spatial chunk, which holds every synapse of the small run."""
    run = phantom_dataset.synapse_runs.get()
    expected = set(Synapse.objects.filter(run=run).values_list("id", flat=True))
    prefix = f"/viewer/annotations/runs/{run.pk}/"
    responses = []
    page.on("response", lambda r: responses.append(r) if prefix in r.url else None)
    page.goto(f"{live_server.url}/datasets/{phantom_dataset.pk}/")
    viewer_ready(page)
    name = f"{RUN_LAYER_PREFIX}{run.name}"
    for _ in range(120):
        if any("/spatial" in r.url for r in responses):
            break
        page.wait_for_timeout(250)
    viewer_ready(page)
    layer = json.loads(page.evaluate(LAYER_JS, name))
    # The client loaded the source (info parsed, no error) and, with it visible, is ready.
    assert layer == {"type": "annotation", "visible": True,
                     "sources": [{"error": None, "loaded": True}], "ready": True}
    spatial = [r for r in responses if "/spatial" in r.url]
    drawn = set()
    for response in spatial:
        assert response.status == 200, response.url
        drawn.update(_ids(response.body()))
    assert drawn == expected
    report(request, f"{len(drawn)} synapses of run {run.name!r} in {len(spatial)} chunk(s)")
