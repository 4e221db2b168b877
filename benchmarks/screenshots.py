"""Screenshots of the pages, and the review queue's time to the first rendered synapse.

Drives Chromium (Playwright, the system's browser) against a running server with the demo
dataset, logged in as a user who may review it:

    CONNECTOME_VAR_DIR=/tmp/demo .venv/bin/python manage.py migrate
    CONNECTOME_VAR_DIR=/tmp/demo .venv/bin/python manage.py ensure_demo_admin
    CONNECTOME_VAR_DIR=/tmp/demo .venv/bin/python manage.py demo --inline
    CONNECTOME_VAR_DIR=/tmp/demo .venv/bin/python manage.py runserver 127.0.0.1:8000 &
    .venv/bin/python benchmarks/screenshots.py --url http://127.0.0.1:8000 --out docs/images

Writes ``pages_*.png`` and prints the time from navigation start until the viewer has drawn
the first synapse of the queue (``window.reviewTimings.firstSynapseMs``), for fresh browser
contexts (nothing cached) and for reloads (the reviewer's claimed synapse each time). With
``--skips N`` it also times N next synapses after a skip; skips are for good (the queue does
not offer those synapses to this reviewer again), so they use up the reviewer's queue. Each
next synapse is timed in the page, from the key press to the page's record that the synapse
it brought is drawn, after the reviewer has looked at the drawn one for ``--think-ms``.

With ``--review N`` it first works through N synapses of a run in the random queue order with
the keyboard, as a reviewer who knows the phantom's ground truth would: a detected synapse
with a true synapse of the same pre and post cells within ``--tolerance`` nm is confirmed,
one of the reverse pair is a wrong direction, one near a true synapse of other cells a wrong
partner (right cell not picked), one near none not a synapse. Those are real verdicts in the
database, each timed as above; ``--undos N`` then takes the last one back N times (timed) and
gives it again. Without ``--review`` the script only looks (skips are the reviewer's own).
"""

import argparse
import json
import logging
import math
import statistics
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

logger = logging.getLogger("screenshots")

CHROMIUM_ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
VIEWER_READY = ("() => { const frame = document.getElementById('viewer');"
                " const viewer = frame && frame.contentWindow && frame.contentWindow.viewer;"
                " return Boolean(viewer && viewer.isReady()); }")
FIRST_SYNAPSE = "() => window.reviewTimings && window.reviewTimings.firstSynapseMs !== null"
QUEUE_EMPTY = "() => document.getElementById('empty').hidden === false"


def first_synapse(page) -> float:
    """Wait for the review page's first synapse to be drawn; its time from navigation start."""
    page.wait_for_function(f"() => ({FIRST_SYNAPSE})() || ({QUEUE_EMPTY})()", timeout=90_000)
    if page.evaluate(QUEUE_EMPTY):
        raise SystemExit("the review queue is empty for this reviewer (all reviewed or "
                         "skipped): nothing to time")
    return page.evaluate("window.reviewTimings.firstSynapseMs")


def log_in(context, url: str, username: str, password: str):
    page = context.new_page()
    page.goto(f"{url}/api-auth/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("[type=submit]")
    page.wait_for_url(f"{url}/")
    page.close()


def api(page, path: str):
    return page.evaluate(f"fetch({json.dumps(path)}).then((r) => r.json())")


def settle(page, ms: int = 800):
    page.wait_for_function(VIEWER_READY, timeout=90_000)
    page.wait_for_timeout(ms)  # the last frame drawn after "ready"


def review_timings(browser, url, dataset, args) -> dict:
    """Time to the first synapse: fresh contexts, then reloads in one context; then skips."""
    cold, warm = [], []
    for _ in range(args.repeats):
        context = browser.new_context(viewport=VIEWPORT)
        log_in(context, url, args.user, args.password)
        page = context.new_page()
        page.goto(f"{url}/datasets/{dataset}/review/")
        cold.append(first_synapse(page))
        for _ in range(args.repeats):
            page.reload()
            warm.append(first_synapse(page))
        context.close()
    return {"cold_ms": cold, "reload_ms": warm}


def _near(a: dict, b: dict, tolerance: float) -> bool:
    return math.dist([a["ctr_z"], a["ctr_y"], a["ctr_x"]],
                     [b["ctr_z"], b["ctr_y"], b["ctr_x"]]) <= tolerance


def oracle_verdict(synapse: dict, truth: list[dict], tolerance: float) -> str:
    """The key a reviewer who knows the ground truth presses for ``synapse``."""
    near = [t for t in truth if _near(synapse, t, tolerance)]
    if not near:
        return "x"
    if any((t["pre"], t["post"]) == (synapse["pre"], synapse["post"]) for t in near):
        return "c"
    if any((t["pre"], t["post"]) == (synapse["post"], synapse["pre"]) for t in near):
        return "d"
    return "p"


def review_with_truth(page, url, dataset, args):
    """Give ``args.review`` verdicts in the random order of the run ``args.review_run``."""
    runs = api(page, f"/api/synapse-runs/?dataset={dataset}")["results"]
    by_name = {run["name"]: run["id"] for run in runs}
    truth = api(page, f"/api/synapses/?dataset={dataset}&run={by_name[args.truth_run]}"
                      "&page_size=10000")["results"]
    page.goto(f"{url}/datasets/{dataset}/review/")
    first_synapse(page)
    page.select_option("#order", "random")
    page.select_option("#run", str(by_name[args.review_run]))
    counts = {}
    steps, undos = [], []
    given = []  # (synapse, key) in order
    for _ in range(args.review):
        synapse = wait_idle(page, args.think_ms)
        if synapse is None:
            break
        key = oracle_verdict(synapse, truth, args.tolerance)
        counts[key] = counts.get(key, 0) + 1
        steps.append(timed_step(page, key))
        given.append((synapse, key))
    logger.info("verdicts given by key: %s", counts)
    # Undo the last verdict (its synapse comes back), then give it again: both timed.
    for _ in range(min(args.undos, len(given))):
        synapse, key = given[-1]
        if wait_idle(page, args.think_ms) is None:
            break
        undos.append(timed_step(page, "z"))
        back = wait_idle(page, args.think_ms)
        if back is None or back["id"] != synapse["id"]:
            raise SystemExit(f"undo brought back {back and back['id']}, not {synapse['id']}")
        timed_step(page, key)
    return {"next_after_verdict_ms": steps, "undo_ms": undos}


def wait_idle(page, think_ms: int = 0):
    """The synapse on screen once the page takes keys again and has drawn it, after
    ``think_ms`` more (the reviewer looking at it); None when the queue is empty."""
    page.wait_for_function(
        "() => { const q = window.reviewQueue; if (q.busy) return false;"
        " if (document.getElementById('empty').hidden === false) return true;"
        " return q.current !== null && window.reviewTimings.renderedSynapseId === q.current.id; }",
        timeout=60_000)
    page.wait_for_timeout(think_ms)
    return page.evaluate("window.reviewQueue.current")


# In the page: when the last key or click came (capture phase, before the page's handlers) and
# when the page last recorded a synapse as drawn (its push to reviewTimings.perSynapseMs).
STOPWATCH = """() => {
  if (window.__stopwatch) return;
  window.__stopwatch = {keyAt: null, drawnAt: null};
  for (const type of ["keydown", "click"]) {
    document.addEventListener(type, () => { window.__stopwatch.keyAt = performance.now(); }, true);
  }
  const drawn = window.reviewTimings.perSynapseMs;
  drawn.push = function (...values) {
    window.__stopwatch.drawnAt = performance.now();
    return Array.prototype.push.apply(this, values);
  };
}"""


def timed_step(page, key: str) -> float:
    """Press ``key`` (``p`` then "right cell unknown") and wait until the synapse it brings is
    drawn; milliseconds from the key press (the button for ``p``), measured in the page."""
    page.evaluate(STOPWATCH)
    before = page.evaluate("window.reviewTimings.perSynapseMs.length")
    page.keyboard.press(key)
    if key == "p":
        page.click("#pick-none")
    page.wait_for_function(
        f"() => window.reviewTimings.perSynapseMs.length > {before}"
        " || document.getElementById('empty').hidden === false", timeout=60_000)
    if page.evaluate(QUEUE_EMPTY):
        raise SystemExit("the review queue ran empty while timing")
    return round(page.evaluate("window.__stopwatch.drawnAt - window.__stopwatch.keyAt"))


def central_synapse(page, dataset, run_name: str) -> dict:
    """The synapse with both partners whose centre is nearest the middle of the volume, in the
    run ``run_name`` when the dataset has it."""
    info = api(page, f"/api/datasets/{dataset}/")
    middle = [n * v / 2 for n, v in zip(info["shape"], info["voxel_size"])]
    runs = api(page, f"/api/synapse-runs/?dataset={dataset}")["results"]
    chosen = "".join(f"&run={run['id']}" for run in runs if run["name"] == run_name)
    synapses = api(page, f"/api/synapses/?dataset={dataset}&page_size=10000{chosen}")["results"]
    connected = [s for s in synapses if s["pre"] and s["post"] and s["pre"] != s["post"]
                 and s["ctr_z"] is not None and not s["flag"]]
    return min(connected, key=lambda s: math.dist(middle, [s["ctr_z"], s["ctr_y"], s["ctr_x"]]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--dataset", default="phantom", help="dataset name")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh contexts for the timing, and reloads in each")
    parser.add_argument("--skips", type=int, default=0,
                        help="next synapses to time after a skip (uses up the queue)")
    parser.add_argument("--review", type=int, default=0,
                        help="verdicts to give first, from the ground truth")
    parser.add_argument("--undos", type=int, default=0,
                        help="after --review: undo the last verdict and give it again, "
                             "this many times, timing the undo")
    parser.add_argument("--think-ms", type=int, default=1000,
                        help="how long the reviewer looks at a drawn synapse before the key")
    parser.add_argument("--review-run", default="detected partners")
    parser.add_argument("--truth-run", default="ground truth")
    parser.add_argument("--tolerance", type=float, default=200.0, help="nm, between centres")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = args.url.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS,
                                             headless=True)
        context = browser.new_context(viewport=VIEWPORT)
        log_in(context, url, args.user, args.password)
        page = context.new_page()
        page.goto(f"{url}/")
        found = [d for d in api(page, "/api/datasets/")["results"] if d["name"] == args.dataset]
        if not found:
            logger.error("no dataset %r at %s (run manage.py demo first)", args.dataset, url)
            return 1
        dataset = found[0]["id"]
        reviewed = {"next_after_verdict_ms": [], "undo_ms": []}
        if args.review:
            reviewed = review_with_truth(page, url, dataset, args)

        def shot(name: str, full_page: bool = False):
            path = args.out / f"pages_{name}.png"
            page.screenshot(path=path, full_page=full_page)
            logger.info("wrote %s", path)

        page.goto(f"{url}/")
        shot("home")

        page.goto(f"{url}/datasets/{dataset}/")
        settle(page)
        shot("dataset", full_page=True)

        # One synapse shown throughout: the connected one nearest the middle of the volume.
        synapse = central_synapse(page, dataset, args.review_run)
        pair = (synapse["pre"], synapse["post"])

        # The wiring matrix with that synapse's pair picked: its synapses listed beside it.
        page.goto(f"{url}/datasets/{dataset}/wiring/")
        page.wait_for_function("() => window.wiringMatrix.data !== null", timeout=30_000)
        where = page.evaluate(f"window.wiringMatrix.position({pair[0]}, {pair[1]})")
        page.mouse.click(where["x"], where["y"])
        page.wait_for_selector("#pair-list tr[data-synapse]")
        page.mouse.move(where["x"], where["y"])
        page.wait_for_timeout(200)
        shot("wiring")
        page.select_option("#group-by", "cell_type")
        page.wait_for_function("() => window.wiringMatrix.data.groupBy === 'cell_type'")
        types = page.evaluate("window.wiringMatrix.data.rows")
        top = max(types, key=lambda row: row["synapses"])
        where = page.evaluate(f"window.wiringMatrix.position({json.dumps(top['pre_type'])}, "
                              f"{json.dumps(top['post_type'])})")
        page.mouse.click(where["x"], where["y"])
        page.wait_for_selector("#pair-list table a")
        page.click("#pair-list table a")
        page.wait_for_selector("#pair-list tr[data-synapse]")
        page.mouse.move(5, 5)
        shot("wiring_types")

        page.goto(f"{url}/datasets/{dataset}/cells/")
        shot("cells")

        # The pre cell's page: its mesh in the 3D panel (the demo meshes every cell).
        page.goto(f"{url}/datasets/{dataset}/cells/{pair[0]}/")
        settle(page, 1500)
        shot("cell")

        # Search from the header box on the dataset page: the pre cell's type.
        cell = api(page, f"/api/cells/{pair[0]}/")
        page.goto(f"{url}/datasets/{dataset}/")
        page.fill("#search-box", cell["cell_type"] or cell["name"] or str(cell["segment_id"]))
        page.keyboard.press("Enter")
        page.wait_for_load_state()
        shot("search", full_page=True)

        page.goto(f"{url}/datasets/{dataset}/synapses/{synapse['id']}/")
        page.evaluate("window.synapseShown")  # the synapse's state restored and drawn
        settle(page)
        shot("synapse")

        # The review page on that synapse, then picking a right partner (no verdict given).
        page.goto(f"{url}/datasets/{dataset}/review/?synapse={synapse['id']}")
        first_synapse(page)
        page.wait_for_timeout(800)
        shot("review")
        page.keyboard.press("p")
        box = page.locator("#viewer").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.35)
        page.wait_for_timeout(600)
        page.mouse.move(box["x"] + box["width"] * 0.3 + 2, box["y"] + box["height"] * 0.35)
        page.wait_for_timeout(600)
        shot("review_pick")
        page.keyboard.press("Escape")

        # Next synapses from the queue: a skip moves on without a verdict; time until each is
        # drawn.
        steps = []
        if args.skips:
            page.goto(f"{url}/datasets/{dataset}/review/")
            first_synapse(page)
        for _ in range(args.skips):
            if wait_idle(page, args.think_ms) is None:
                break
            steps.append(timed_step(page, "s"))
        context.close()

        timings = review_timings(browser, url, dataset, args)
        browser.close()

    figures = {
        "first_synapse_cold_ms": timings["cold_ms"],
        "first_synapse_reload_ms": timings["reload_ms"],
        "next_synapse_after_skip_ms": [round(s) for s in steps],
        **reviewed,
    }
    print(json.dumps(figures, indent=1))
    line = (f"time to first rendered synapse: fresh browser median "
            f"{statistics.median(timings['cold_ms']):.0f} ms (n={len(timings['cold_ms'])}), "
            f"reload median {statistics.median(timings['reload_ms']):.0f} ms "
            f"(n={len(timings['reload_ms'])})")
    for name, values in (("next synapse after a skip", steps),
                         ("next synapse after a verdict", reviewed["next_after_verdict_ms"]),
                         ("undo", reviewed["undo_ms"])):
        if values:
            line += (f"; {name} median {statistics.median(values):.0f} ms "
                     f"({min(values):.0f}-{max(values):.0f}, n={len(values)})")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
