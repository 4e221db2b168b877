"""The Content-Security-Policy in a real browser: every page, the embedded Neuroglancer client
(WebAssembly, web workers, WebGL) and the third-party pages we serve (admin, browsable API,
Swagger UI, Redoc) work under it, with no violation reported anywhere.

Violations are collected three ways, so none slips by: a ``securitypolicyviolation`` listener
installed in every document (the pages and the viewer's frame) before their own scripts run,
Chromium's console messages ("Refused to ...", also those of web workers), and the reports the
browser sends to the policy's ``report-uri``, which here points at a view of the live server.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.http import HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from connectome.cells.models import Cell
from connectome.datasets.models import Membership
from connectome.synapses.models import Synapse
from tests.browser.conftest import browser_missing, hover, log_in, viewer_ready

if browser_missing():
    pytest.skip(browser_missing(), allow_module_level=True)

pytestmark = pytest.mark.slow

REPORTS: list[dict] = []


@csrf_exempt
def _csp_report(request):
    REPORTS.append(json.loads(request.body or b"{}"))
    return HttpResponse(status=204)


# The project's URLs plus a view that collects the browser's violation reports.
urlpatterns = [path("csp-report/", _csp_report), path("", include("connectome.urls"))]

LISTEN_JS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push(
  {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
   line: e.lineNumber, sample: e.sample, document: location.pathname}));
"""


@pytest.fixture
def watched(page, settings):
    """The page, with every CSP violation of its documents, workers and reports collected."""
    settings.ROOT_URLCONF = __name__
    settings.CSP_REPORT_URI = "/csp-report/"
    REPORTS.clear()
    console = []
    page.on("console", lambda message: console.append(message.text)
            if "Content Security Policy" in message.text else None)
    page.add_init_script(LISTEN_JS)
    return page, console


def _violations(page) -> list[dict]:
    found = []
    for frame in page.frames:
        try:
            found += frame.evaluate("window.__cspViolations || []")
        except Exception:  # a frame navigated away meanwhile: nothing of it to read
            continue
    return found


# Refused on purpose: Redoc's "API docs by Redocly" logo from its CDN (the page stays offline).
EXPECTED = {("/api/redoc/", "https://cdn.redoc.ly/redoc/logo-mini.svg")}


def _visit(page, console, url: str, *, wait=None) -> dict:
    """Open ``url``; return its policy header after checking nothing was refused."""
    response = page.goto(url)
    assert response.status == 200, (url, response.status)
    if wait:
        wait()
    page.wait_for_load_state("networkidle")
    policy = response.headers.get("content-security-policy")
    assert policy, f"{url}: no Content-Security-Policy header"
    violations = [v for v in _violations(page) if (v["document"], v["blocked"]) not in EXPECTED]
    assert not violations, json.dumps([url, violations], indent=1)
    refused = [text for text in console if not any(blocked in text for _, blocked in EXPECTED)]
    assert not refused, (url, refused)
    reports = [r for r in REPORTS
               if r.get("csp-report", {}).get("blocked-uri") not in {b for _, b in EXPECTED}]
    assert not reports, (url, reports)
    return dict(part.strip().split(" ", 1) for part in policy.split(";"))


def test_pages_and_viewer_work_under_the_policy(watched, live_server, phantom_dataset,
                                                 phantom_files):
    page, console = watched
    dataset = phantom_dataset
    user = get_user_model().objects.create_user("ada", password="unused", is_staff=True,
                                                is_superuser=True)
    Membership.objects.create(dataset=dataset, user=user, role=Membership.Role.REVIEWER)
    log_in(page, live_server, user)
    base = live_server.url
    cell = Cell.objects.filter(dataset=dataset).order_by("id").first()
    synapse = Synapse.objects.filter(dataset=dataset).order_by("id").first()

    policy = _visit(page, console, f"{base}/")
    # The project's pages: nothing inline, nothing from elsewhere.
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'", policy
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'", policy
    assert policy["report-uri"] == "/csp-report/", policy

    # The dataset page with the viewer: the client renders the phantom under its policy.
    _visit(page, console, f"{base}/datasets/{dataset.pk}/", wait=lambda: viewer_ready(page))
    client = next(f for f in page.frames if "/ng/v/" in f.url)
    client_policy = client.evaluate(
        "fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert "'wasm-unsafe-eval'" in client_policy and "frame-ancestors 'self'" in client_policy
    page.locator("#viewer").scroll_into_view_if_needed()
    box = page.locator("#viewer").bounding_box()
    seen = hover(page, box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    # The EM chunks and the segmentation (decoded in the client's workers) are on screen.
    assert seen["active"] and {"em", "segmentation"} <= set(seen["values"]), seen
    assert not _violations(page) and not console and not REPORTS

    for url, wait in [
        (f"/datasets/{dataset.pk}/review/",
         lambda: page.wait_for_function("() => window.reviewTimings.firstSynapseMs !== null",
                                        timeout=60_000)),
        (f"/datasets/{dataset.pk}/wiring/",
         lambda: page.wait_for_function("() => window.wiringMatrix.data !== null",
                                        timeout=30_000)),
        (f"/datasets/{dataset.pk}/cells/", None),
        (f"/datasets/{dataset.pk}/cells/{cell.pk}/", None),
        (f"/datasets/{dataset.pk}/synapses/{synapse.pk}/", lambda: viewer_ready(page)),
        ("/admin/", None),
        ("/admin/synapses/synapse/", None),
        (f"/admin/synapses/synapse/{synapse.pk}/change/", None),
        ("/api/", None),
        (f"/api/cells/{cell.pk}/partners/", None),
        ("/api/docs/", lambda: page.wait_for_selector(".swagger-ui .info", timeout=30_000)),
    ]:
        _visit(page, console, base + url, wait=wait)
    # Reports travel on their own; give late ones time to arrive.
    page.wait_for_timeout(1500)
    assert not REPORTS, REPORTS


def test_redoc_works_and_each_watcher_sees_what_the_policy_refuses(watched, live_server):
    """Redoc renders (its runtime styles allowed on its page); its attribution logo on a CDN
    is refused, and the listener, the console and a report all say so."""
    page, console = watched
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    _visit(page, console, live_server.url + "/api/redoc/",
           wait=lambda: page.wait_for_selector("h1", timeout=30_000))
    assert "Connectome API" in page.inner_text("h1")
    assert [v["directive"] for v in _violations(page)] == ["img-src"]
    assert _violations(page)[0]["blocked"] == logo
    assert any(logo in text for text in console), console
    for _ in range(50):
        if REPORTS:
            break
        page.wait_for_timeout(100)
    assert [r["csp-report"]["blocked-uri"] for r in REPORTS] == [logo], REPORTS


def test_login_pages_work_under_the_policy(watched, live_server):
    page, console = watched
    for url in ["/admin/login/", "/api-auth/login/"]:
        _visit(page, console, live_server.url + url)
    assert page.locator("input[name=password]").count() == 1
