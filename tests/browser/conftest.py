"""Browser tests: Playwright (the PyPI package) driving the system's Chromium, headless, against
pytest-django's live server, on a small phantom imported by the real jobs."""

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from detection.io.tables import CnapseRow, write_cnapse
from detection.synthetic.phantom import (
    Phantom,
    make_phantom,
    synapse_table,
    write_phantom_h5,
)

CHROMIUM = Path(os.environ.get("CONNECTOME_CHROMIUM", "/usr/bin/chromium"))
# WebGL2 through SwiftShader: the flags that were seen rendering Neuroglancer headless.
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VOXEL_SIZE = (40.0, 8.0, 8.0)
VIEWPORT = {"width": 1400, "height": 900}


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; no browser download needed)"
    if not CHROMIUM.is_file():
        return (f"no Chromium at {CHROMIUM} (install the Debian package chromium, or set "
                "CONNECTOME_CHROMIUM)")
    return None


@pytest.fixture(scope="module")
def browser():
    # Module scope: Playwright's loop must not outlive the browser tests (see below).
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop running in this thread, which makes Django
    # refuse database access from the test code; the test code is not async, so allow it.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            yield chromium
            chromium.close()
    finally:
        if saved is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture
def page(browser, monkeypatch):
    """A fresh browser context (no cookies) and page; JavaScript errors fail the test.

    At the end the page is closed and the live server's request threads are let finish while
    the test may still use the database: a chunk request cut off by the closing page would
    otherwise close its connection after the test and keep the test database in use.
    """
    from connectome.viewer import client

    # The viewer's idle event stream notices a closed page at its next keep-alive.
    idle_events = client.idle_events
    monkeypatch.setattr(client, "idle_events", lambda: idle_events(seconds=30, poll=0.2))
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.goto("about:blank")
    context.close()
    _wait_for_request_threads()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _wait_for_request_threads(timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [t for t in threading.enumerate() if "process_request_thread" in t.name]
        if not busy:
            return
        time.sleep(0.05)


def log_in(page, live_server, user):
    """Give the browser a session of ``user`` (as the login form would)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value,
                               "url": live_server.url}])


@dataclass(frozen=True)
class PhantomFiles:
    phantom: Phantom
    h5: Path
    table: Path


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory) -> PhantomFiles:
    """A small phantom (made once per session) as an HDF5 file and a Cnapse synapse table."""
    folder = tmp_path_factory.mktemp("phantom")
    phantom = make_phantom((24, 160, 160), voxel_size=VOXEL_SIZE, n_cells=12, n_synapses=24,
                           seed=5)
    h5 = write_phantom_h5(phantom, folder / "phantom.h5")
    table = folder / "synapses.csv"
    write_cnapse(table, [
        CnapseRow(syn_id=r["syn_id"], pre=r["pre"], pre_id=r["pre_id"], post=r["post"],
                  post_id=r["post_id"], position=(r["z_pos"], r["y_pos"], r["x_pos"]),
                  size=r["size"])
        for r in synapse_table(phantom)
    ])
    return PhantomFiles(phantom=phantom, h5=h5, table=table)


@pytest.fixture
def phantom_dataset(phantom_files, data_root, live_server):
    """The phantom imported as a public dataset by the import jobs, run inline: EM,
    segmentation (cells, with their types) and the ground-truth synapses."""
    from connectome.cells.services import cells_annotate
    from connectome.datasets.services import dataset_create
    from connectome.jobs.models import Job
    from connectome.jobs.services import job_create, job_execute

    dataset = dataset_create(name="phantom", voxel_size=VOXEL_SIZE, owner=None, is_public=True,
                             description="Small phantom for the browser tests.")
    for kind, parameters in [
        ("import_volume", {"source": str(phantom_files.h5), "name": "em",
                           "dataset_path": "volumes/raw"}),
        ("import_volume", {"source": str(phantom_files.h5), "name": "segmentation",
                           "kind": "segmentation", "dataset_path": "volumes/labels/neuron_ids"}),
        ("import_synapses", {"source": str(phantom_files.table), "run_name": "ground truth",
                             "table_format": "cnapse", "method": "ground_truth"}),
    ]:
        job = job_execute(job_id=job_create(kind=kind, parameters=parameters, dataset=dataset,
                                            enqueue=False).pk)
        assert job.state == Job.State.DONE, job.error
    cells_annotate(dataset=dataset, annotations={
        int(segment): {"cell_type": cell_type}
        for segment, cell_type in phantom_files.phantom.cell_types.items()})
    yield dataset
    shutil.rmtree(data_root, ignore_errors=True)


def report(request, line: str):
    """A figure for the reader: on the terminal (not captured) and in the JUnit properties."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{request.node.name}: {line}", flush=True)
    request.node.user_properties.append(("report", line))


def viewer_ready(page, timeout_ms: int = 60_000):
    page.wait_for_function(
        "() => { const frame = document.getElementById('viewer');"
        " const viewer = frame && frame.contentWindow && frame.contentWindow.viewer;"
        " return Boolean(viewer && viewer.isReady()); }", timeout=timeout_ms)


# Under the mouse in the viewer: its position (voxels, x y z) and each layer's value there.
HOVER_JS = """() => {
  const viewer = document.getElementById('viewer').contentWindow.viewer;
  const values = {};
  for (const managed of viewer.layerManager.managedLayers) {
    const selected = viewer.layerSelectedValues.get(managed.layer);
    if (!selected || selected.value === undefined || selected.value === null) continue;
    // A segment with properties is {key, label}; others are the value itself.
    const value = selected.value;
    values[managed.name] = String(typeof value === 'object' && 'key' in value ? value.key : value);
  }
  return JSON.stringify({active: viewer.mouseState.active,
                         position: Array.from(viewer.mouseState.position), values});
}"""


def hover(page, x: float, y: float) -> dict:
    """Move the mouse to page point (x, y) and read what the viewer shows there."""
    page.mouse.move(x, y)
    page.wait_for_timeout(250)  # the viewer updates what is under the mouse on its next frame
    return json.loads(page.evaluate(HOVER_JS))
