// The review queue: one synapse at a time in the embedded viewer, verdicts by button or key.
//
// The viewer client loads once; each synapse's viewer state (centred on it, pre and post
// cells in the palette's colours, a pre->post arrow) is fetched and shown in place: the first
// one restored whole, the next ones moved to (same layers, new position, segments and arrow).
// The queue lists the synapses after the claimed one; their states and cells are fetched, and
// the chunks of the first of them warmed, while the reviewer looks at the current one.
// `window.reviewTimings` records when the first synapse was on screen, counted from navigation
// start, and how long each next one took.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("review-config").textContent);
  const frame = new ViewerFrame(document.getElementById("viewer"));
  const api = `/api/datasets/${config.dataset}/review/`;
  const $ = (id) => document.getElementById(id);
  const runNames = new Map(config.runs.map((run) => [run.id, run.name]));
  const LABELS = {confirmed: "confirmed", not_synapse: "not a synapse",
                  wrong_partner: "wrong partner", wrong_direction: "wrong direction",
                  unsure: "unsure"};
  // The one key table (review_tools.js): the keys dispatched here and listed by `?`.
  const KEYS = ReviewTools.bindings();
  const LAYOUTS = ["xy", "4panel"];
  // Synapses listed after the claimed one, loaded ahead.
  const LOOKAHEAD = 2;
  // Viewer states kept (the shown, the upcoming and the last few judged, for undo).
  const KEEP_STATES = 12;

  // The palette of the viewer states, for the panel's labels and legend.
  for (const [name, colour] of Object.entries(config.palette)) {
    document.documentElement.style.setProperty(`--${name}-colour`, colour);
  }

  const timings = window.reviewTimings = {
    clientLoadedMs: null, firstItemMs: null, firstSynapseMs: null, firstSynapseId: null,
    renderedSynapseId: null, perSynapseMs: [], stepMs: [], statesAhead: 0, statesOnDemand: 0,
    moves: 0, restores: 0,
  };
  let current = null;      // the synapse on screen (API object), or null
  let busy = false;        // a request is in flight: keys are dropped
  let pick = null;         // {side: "post"|"pre"} while picking the right partner
  let upcoming = [];       // synapses after the claimed one (API objects), not claimed
  let actionStarted = null; // performance.now() of the key or button that moves on
  let cellLayer = null;    // name of the cells' segmentation layer in the shown state
  let lastDrawn = Promise.resolve();  // resolves once the synapse on screen is drawn
  const judged = [];       // synapses judged on this page, oldest first (for undo)
  const cells = new Map(); // cell id -> Promise of the cell
  const states = new Map(); // "<synapse id>:<layout>" -> {promise, ahead, state once loaded}
  const remembered = `review:${config.dataset}:`;
  let layout = localStorage.getItem("review:layout");
  if (!LAYOUTS.includes(layout)) layout = LAYOUTS[0];

  const cell = (id) => {
    if (id === null || id === undefined) return Promise.resolve(null);
    if (!cells.has(id)) cells.set(id, Web.get(`/api/cells/${id}/`));
    return cells.get(id);
  };

  function status(text, isError = false) {
    $("status").textContent = text;
    $("status").className = isError ? "bad" : "muted";
  }

  function flash() {
    const panel = $("synapse-panel");
    panel.classList.add("on");
    setTimeout(() => panel.classList.remove("on"), 350);
  }

  // --- viewer states, fetched ahead ---------------------------------------------------------

  // The viewer state of `synapse` in the current layout; `ahead`: fetched before it is shown.
  function stateOf(synapse, {ahead = false} = {}) {
    const key = `${synapse.id}:${layout}`;
    if (!states.has(key)) {
      const entry = {promise: Web.get(`/viewer/state/synapses/${synapse.id}/?layout=${layout}`),
                     ahead, state: null};
      entry.promise.then((state) => { entry.state = state; }, () => states.delete(key));
      states.set(key, entry);
      while (states.size > KEEP_STATES) states.delete(states.keys().next().value);
    } else {
      // Most recently used last, so the oldest go first.
      const entry = states.get(key);
      states.delete(key);
      states.set(key, entry);
    }
    return states.get(key);
  }

  function stateLoaded(synapse) {
    const entry = states.get(`${synapse.id}:${layout}`);
    return Boolean(entry && entry.state);
  }

  // Once the synapse on screen is drawn (`drawn`), load the upcoming synapses' states and
  // cells, and warm the chunks of the first of them: the server and the browser's two cores
  // draw the synapse in front of the reviewer first.
  const warmed = new Set();  // "<synapse id>:<layout>" whose chunks were fetched
  function prefetch(drawn) {
    const ahead = upcoming.filter((synapse) => !current || synapse.id !== current.id);
    drawn.then(async () => {
      for (const synapse of ahead) {
        stateOf(synapse, {ahead: true}).promise.catch(() => {});
        cell(synapse.pre).catch(() => {});
        cell(synapse.post).catch(() => {});
      }
      const following = ahead[0];
      const key = following && `${following.id}:${layout}`;
      if (!following || warmed.has(key)) return;
      warmed.add(key);
      await frame.warm(await stateOf(following, {ahead: true}).promise, viewerPanel());
    }).catch(() => {});  // loading ahead is an optimisation; showing reports its own errors
  }

  // The size of the xy panel in CSS pixels: the whole viewer, or a quarter of it.
  function viewerPanel() {
    const box = document.getElementById("viewer").getBoundingClientRect();
    const share = layout === "4panel" ? 2 : 1;
    return {width: box.width / share, height: box.height / share};
  }

  // --- showing a synapse --------------------------------------------------------------------

  function cellFacts(label, side, c, segment) {
    const {el} = Web;
    const name = c ? (c.name || `cell ${c.id}`) : "no cell";
    const link = c ? el("a", {href: `/datasets/${config.dataset}/cells/${c.id}/`}, name) : name;
    return [el("dt", {}, el("span", {class: side}, label)),
            el("dd", {}, link, c && c.cell_type ? ` · ${c.cell_type}` : "",
               ` · segment ${segment ?? "–"}`)];
  }

  async function renderFacts(synapse) {
    const {el} = Web;
    const [pre, post] = await Promise.all([cell(synapse.pre), cell(synapse.post)]);
    if (current !== synapse) return;
    const position = synapse.ctr_z === null ? "–" :
      [synapse.ctr_z, synapse.ctr_y, synapse.ctr_x].map((v) => Math.round(v)).join(", ");
    $("facts").replaceChildren(
      ...cellFacts("pre", "pre", pre, synapse.pre_segment_id),
      ...cellFacts("post", "post", post, synapse.post_segment_id),
      el("dt", {}, "confidence"), el("dd", {}, Web.fixed(synapse.confidence, 3)),
      el("dt", {}, "run"), el("dd", {}, runNames.get(synapse.run) || synapse.run),
      el("dt", {}, "centre (nm, z y x)"), el("dd", {}, position),
      el("dt", {}, "review state"), el("dd", {id: "review-state"}, synapse.review_state),
    );
  }

  async function show(synapse) {
    current = synapse;
    stopPick();
    const empty = $("empty");
    if (!synapse) {
      $("synapse-title").textContent = "Queue empty";
      empty.hidden = false;
      empty.textContent = "No synapse left to review here: every one is reviewed, claimed by " +
        "another reviewer or skipped by you. Try another run or order.";
      $("facts").replaceChildren();
      setButtons(false);
      return;
    }
    empty.hidden = true;
    setButtons(config.can_review);
    const title = $("synapse-title");
    title.replaceChildren(Web.el("a", {href: `/datasets/${config.dataset}/synapses/${synapse.id}/`},
                                    `Synapse ${synapse.id}`));
    renderFacts(synapse).catch((error) => status(error.message, true));
    const started = performance.now();
    const pressed = actionStarted;
    const entry = stateOf(synapse);
    const state = await entry.promise;
    if (current !== synapse) return;
    cellLayer = state.selectedLayer ? state.selectedLayer.layer : null;
    if (entry.ahead) timings.statesAhead += 1;
    else timings.statesOnDemand += 1;
    const stateAt = performance.now();
    const how = await frame.show(state);
    timings[how === "moved" ? "moves" : "restores"] += 1;
    const shownAt = performance.now();
    // Drawn in the background: the reviewer may judge (and press a key) before the last chunk.
    const drawn = lastDrawn = frame.ready();
    drawn.then((readyAt) => {
      if (current !== synapse) return;
      // Where the time went, from the key (or from the queue's answer without one).
      const from = pressed ?? started;
      timings.lastStep = {synapse: synapse.id, how, queueMs: started - from,
                          stateMs: stateAt - from, shownMs: shownAt - from,
                          drawnMs: readyAt - from};
      timings.renderedSynapseId = synapse.id;
      timings.perSynapseMs.push(readyAt - started);
      if (pressed !== null) timings.stepMs.push(readyAt - pressed);
      if (timings.firstSynapseMs === null) {
        timings.firstSynapseMs = readyAt;
        timings.firstSynapseId = synapse.id;
      }
      showTimings();
    }, (error) => status(String(error), true));
    prefetch(drawn);
  }

  function showTimings() {
    const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
    const rest = timings.perSynapseMs.slice(1).sort((a, b) => a - b);
    const steps = [...timings.stepMs].sort((a, b) => a - b);
    let text = `First synapse on screen ${s(timings.firstSynapseMs)} after opening the page ` +
      `(viewer client ready at ${s(timings.clientLoadedMs)}).`;
    if (steps.length) {
      text += ` Next ones: median ${s(steps[Math.floor(steps.length / 2)])} from the key.`;
    } else if (rest.length) {
      text += ` Next ones: median ${s(rest[Math.floor(rest.length / 2)])}.`;
    }
    $("timing").textContent = text;
  }

  function setButtons(enabled) {
    for (const button of document.querySelectorAll("#verdicts button")) {
      button.disabled = !enabled && button.dataset.action !== "undo";
    }
  }

  function showProgress(progress) {
    if (progress) $("progress").textContent = `${progress.reviewed} / ${progress.total}`;
  }

  async function refreshSummary() {
    const run = $("run").value;  // a run id, or "all"
    const summary = await Web.get(`${api}summary/?run=${encodeURIComponent(run)}`);
    showProgress(summary.progress);
    ReviewTools.summary(summary);  // review tools: the tag chips
    const p = summary.precision.synapse;
    $("precision").textContent = p.n ?
      `${p.n} reviewed; precision ${Web.fixed(p.estimate)} [${Web.fixed(p.low)}, ${Web.fixed(p.high)}]` :
      "none decided yet";
  }

  // --- the queue ----------------------------------------------------------------------------

  function queueBody() {
    const run = $("run").value;
    return {order: $("order").value, run: run === "all" ? "all" : Number(run), seed: 0,
            lookahead: LOOKAHEAD, ...ReviewTools.queueOptions()};  // review tools: the batch
  }

  async function next() {
    const item = await Web.post(`${api}next/`, queueBody());
    if (timings.firstItemMs === null) timings.firstItemMs = performance.now();
    showProgress(item.progress);
    ReviewTools.item(item);  // review tools: the batch's progress
    upcoming = item.upcoming || [];
    await show(item.synapse);
  }

  // Move on to the synapse that `request()` (a verdict or skip and the queue's next item, or
  // an undo) hands out. `guess`, the synapse it will nearly always be, is shown at once when
  // its state is loaded, while the request runs; when the answer is another synapse (someone
  // else claimed the guess meanwhile) that one is shown, and when the request fails or hands
  // out nothing (`stayOnEmpty`) the synapse from before comes back.
  async function advance(request, guess, {stayOnEmpty = false} = {}) {
    const before = current;
    let early = null;
    if (guess && stateLoaded(guess)) {
      early = show(guess);
      early.catch(() => {});
    }
    let item;
    try {
      item = await request();
    } catch (error) {
      if (early && before) await show(before);
      throw error;
    }
    if (item.progress) showProgress(item.progress);
    ReviewTools.item(item);  // review tools: the batch's progress
    if (item.upcoming) upcoming = item.upcoming;
    if (!item.synapse && stayOnEmpty) {
      if (early && before) await show(before);
      return item;
    }
    if (early && item.synapse && item.synapse.id === guess.id) {
      Object.assign(guess, item.synapse);  // the same synapse, as the queue gives it now
      await early;
      prefetch(lastDrawn);
      return item;
    }
    await show(item.synapse);
    return item;
  }

  // Run `work` unless something else runs; report errors in the panel.
  // Keys pressed meanwhile are dropped, not queued: a double press must not judge the next
  // synapse unseen. The buttons show it.
  async function act(work) {
    if (busy) return;
    busy = true;
    actionStarted = performance.now();
    document.body.classList.add("busy");
    try {
      await work();
    } catch (error) {
      status(error.message, true);
    } finally {
      busy = false;
      actionStarted = null;
      document.body.classList.remove("busy");
    }
  }

  // The first upcoming synapse other than `synapse`.
  const following = (synapse) => upcoming.find((s) => s.id !== synapse.id);

  const verdict = (value, corrections = {}, note = "") => act(async () => {
    if (!current) return;
    const synapse = current;
    // review tools: the note and tags go with the verdict, and are cleared once it is stored.
    const annotations = ReviewTools.annotations();
    await advance(async () => {
      await Web.post("/api/reviews/", {synapse: synapse.id, verdict: value, ...corrections,
                                       ...annotations});
      ReviewTools.cleared();
      status(`Synapse ${synapse.id}: ${LABELS[value]}${note}.`);
      flash();
      judged.push(synapse);
      return Web.post(`${api}next/`, queueBody());
    }, following(synapse));
    refreshSummary().catch((error) => status(error.message, true));
  });

  const skip = () => act(async () => {
    if (!current) return;
    const synapse = current;
    await advance(async () => {
      await Web.post(`${api}skip/`, {synapse: synapse.id});
      ReviewTools.cleared();  // review tools
      status(`Synapse ${synapse.id} skipped.`);
      judged.push(synapse);  // a skip can be undone too
      return Web.post(`${api}next/`, queueBody());
    }, following(synapse));
  });

  // The synapse of the last verdict comes back; the one on screen goes back to the front of
  // the upcoming ones (its claim is released, and the queue hands it out next).
  const undo = () => act(async () => {
    const before = current;
    // With the page's run (and batch), so the progress is the one on screen.
    const item = await advance(() => Web.post(`${api}undo/`, queueBody()),
                               judged[judged.length - 1], {stayOnEmpty: true});
    if (!item.synapse) {
      status("No verdict or skip of yours to take back.");
      return;
    }
    if (judged.length && judged[judged.length - 1].id === item.synapse.id) judged.pop();
    if (before && before.id !== item.synapse.id) {
      upcoming = [before, ...upcoming.filter((s) => s.id !== before.id)];
    }
    status(item.undone === "skip" ?
      `Skip of synapse ${item.synapse.id} taken back; review it now.` :
      `Verdict on synapse ${item.synapse.id} taken back; review it again.`);
    refreshSummary().catch((error) => status(error.message, true));
  });

  // --- layout: one xy panel, or xy, xz, yz and 3D ----------------------------------------------

  function showLayout() {
    const button = $("layout");
    if (!button) return;
    button.textContent = layout === "xy" ? "Four panels" : "One panel";
    button.setAttribute("aria-pressed", String(layout === "4panel"));
  }

  // Switch the layout, remember it in this browser, and show the current synapse in it.
  async function toggleLayout() {
    if (busy) return;  // a synapse is being handed out; the next press switches
    layout = layout === "xy" ? "4panel" : "xy";
    localStorage.setItem("review:layout", layout);
    showLayout();
    if (!current) return;
    const synapse = current;
    const state = await stateOf(synapse).promise;
    if (current === synapse) await frame.show(state);
  }

  // --- wrong partner: pick the right cell in the viewer --------------------------------------

  function startPick(side) {
    if (!current || !config.can_review) return;
    pick = {side};
    $("pick").hidden = false;
    $("pick-side").textContent = side === "post" ? "postsynaptic" : "presynaptic";
    updateHover();
  }

  function stopPick() {
    pick = null;
    const panel = $("pick");
    if (panel) panel.hidden = true;
  }

  // The segment under the mouse in the cells' layer (the clefts are a segmentation layer too,
  // and a cleft is no cell).
  function hoveredCell() {
    return cellLayer === null ? null : frame.hoveredSegment(cellLayer);
  }

  function updateHover() {
    if (!pick) return;
    const segment = hoveredCell();
    $("pick-hover").textContent = segment ? `segment ${segment}` : "no segment";
  }

  async function pickSegment(segment) {
    if (!pick) return;
    if (!segment) {
      status("No segment under the mouse: point at the right cell.", true);
      return;
    }
    const side = pick.side;
    const found = await Web.get(
      `/api/cells/?dataset=${config.dataset}&segment_id=${encodeURIComponent(segment)}`);
    if (!found.results.length) {
      status(`Segment ${segment} is no cell of this dataset.`, true);
      return;
    }
    const c = found.results[0];
    stopPick();
    const corrections = side === "post" ? {corrected_post: [c.id]} : {corrected_pre: c.id};
    await verdict("wrong_partner", corrections,
                  ` (right ${side} cell: ${c.name || c.id}, segment ${segment})`);
  }

  // --- keys and buttons ---------------------------------------------------------------------

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const target = event.target;
    if (target && (["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName) ||
                   target.isContentEditable)) return false;
    if (ReviewTools.onKey(event)) return true;  // review tools: the help overlay is open
    // Caps lock or shift still mean the verdict keys; only p and P differ.
    const key = event.key === "P" ? "P" : event.key.toLowerCase();
    if (KEYS[key] && KEYS[key][0] === "layout") {
      if (!event.repeat) toggleLayout().catch((error) => status(error.message, true));
      return true;
    }
    if (!config.can_review) return false;
    if (pick) {
      const pickAction = ReviewTools.pickAction(event.key);
      if (pickAction === "cancel") { stopPick(); return true; }
      if (pickAction === "choose") { pickSegment(hoveredCell()); return true; }
      if (pickAction === "switch") { startPick(pick.side === "post" ? "pre" : "post"); return true; }
    }
    const binding = KEYS[key];
    if (!binding) return false;
    if (event.repeat) return true;
    const [action, argument] = binding;
    if (action === "verdict") verdict(argument);
    else if (action === "pick") startPick(argument);
    else if (action === "skip") skip();
    else if (action === "undo") undo();
    else ReviewTools.run(action);  // review tools: "help", "note"
    return true;
  }

  document.addEventListener("keydown", (event) => {
    if (onKey(event)) event.preventDefault();
  });
  frame.onKeydown(onKey);

  // A click in the viewer while picking (not a drag) picks the segment under the mouse.
  let down = null;
  frame.onMouse("mousedown", (event) => { down = [event.clientX, event.clientY]; });
  // The viewer picks what lies under the mouse after the browser's mouse event; the line
  // follows its result, not the event.
  frame.onHover(updateHover);
  frame.onMouse("click", (event) => {
    if (!pick || !down) return;
    const moved = Math.hypot(event.clientX - down[0], event.clientY - down[1]);
    if (moved < 5) pickSegment(hoveredCell());
  });

  for (const button of document.querySelectorAll("#verdicts button")) {
    button.addEventListener("click", () => {
      if (button.dataset.verdict) verdict(button.dataset.verdict);
      else if (button.dataset.action === "pick") startPick("post");
      else if (button.dataset.action === "skip") skip();
      else if (button.dataset.action === "undo") undo();
    });
  }
  const pickNone = $("pick-none");
  if (pickNone) pickNone.addEventListener("click", () => { stopPick(); verdict("wrong_partner"); });
  const layoutButton = $("layout");
  if (layoutButton) {
    layoutButton.addEventListener(
      "click", () => toggleLayout().catch((error) => status(error.message, true)));
  }
  showLayout();
  // The order and run are remembered per dataset in this browser.
  for (const id of ["order", "run"]) {
    const saved = localStorage.getItem(remembered + id);
    const chosenInLink = id === "run" && config.run !== null;
    if (!chosenInLink && saved !== null &&
        [...$(id).options].some((option) => option.value === saved)) {
      $(id).value = saved;
    }
    $(id).addEventListener("change", () => {
      localStorage.setItem(remembered + id, $(id).value);
      if (config.can_review) act(async () => { await next(); await refreshSummary(); });
      else refreshSummary().catch((error) => status(error.message, true));
    });
  }

  // For scripts and tests: the synapse on screen (as the API gave it).
  // `upcoming`: the synapses loaded ahead; `next()` fetches the queue's item again (the
  // claimed synapse, or the next one after a verdict) and shows it.
  window.reviewQueue = {
    get current() { return current; }, get busy() { return busy; },
    get upcoming() { return upcoming; }, get layout() { return layout; },
    next: () => act(next),
  };

  // --- start --------------------------------------------------------------------------------

  async function start() {
    frame.loaded.then(() => { timings.clientLoadedMs = performance.now(); });
    if (config.can_review) {
      // review tools: the note box, and the reviewer's batches before the first queue call
      await ReviewTools.init({dataset: config.dataset, onQueueChange: () => act(async () => {
        await next();
        await refreshSummary();
      })});
    }
    if (config.synapse) {
      const synapse = await Web.get(`/api/synapses/${config.synapse}/`);
      // The run selector and the summary follow the synapse opened by its link.
      if ([...$("run").options].some((option) => option.value === String(synapse.run))) {
        $("run").value = String(synapse.run);
      }
      refreshSummary().catch((error) => status(error.message, true));
      await show(synapse);
      return;
    }
    refreshSummary().catch((error) => status(error.message, true));
    if (config.can_review) {
      await next();
    } else {
      $("synapse-title").textContent = "Read only";
      setButtons(false);
    }
  }
  busy = true;
  start().catch((error) => status(error.message, true)).finally(() => { busy = false; });
})();
