// The review queue: one synapse at a time in the embedded viewer, verdicts by button or key.
//
// The viewer client loads once; each synapse's viewer state (centred on it, pre and post
// segments shown, a pre->post line) is fetched and restored in place. `window.reviewTimings`
// records when the first synapse was on screen, counted from navigation start.
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

  const timings = window.reviewTimings = {
    clientLoadedMs: null, firstItemMs: null, firstSynapseMs: null, firstSynapseId: null,
    renderedSynapseId: null, perSynapseMs: [],
  };
  let current = null;      // the synapse on screen (API object), or null
  let busy = false;        // a request is in flight: keys are dropped
  let pick = null;         // {side: "post"|"pre"} while picking the right partner
  const cells = new Map(); // cell id -> Promise of the cell

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
    const state = await Web.get(`/viewer/state/synapses/${synapse.id}/`);
    if (current !== synapse) return;
    await frame.setState(
      ViewerFrame.colourPartners(state, synapse.pre_segment_id, synapse.post_segment_id));
    // Drawn in the background: the reviewer may judge (and press a key) before the last chunk.
    frame.ready().then((readyAt) => {
      if (current !== synapse) return;
      timings.renderedSynapseId = synapse.id;
      timings.perSynapseMs.push(readyAt - started);
      if (timings.firstSynapseMs === null) {
        timings.firstSynapseMs = readyAt;
        timings.firstSynapseId = synapse.id;
      }
      showTimings();
    }, (error) => status(String(error), true));
  }

  function showTimings() {
    const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
    const rest = timings.perSynapseMs.slice(1).sort((a, b) => a - b);
    let text = `First synapse on screen ${s(timings.firstSynapseMs)} after opening the page ` +
      `(viewer client ready at ${s(timings.clientLoadedMs)}).`;
    if (rest.length) text += ` Next ones: median ${s(rest[Math.floor(rest.length / 2)])}.`;
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
    const run = $("run").value;
    const summary = await Web.get(`${api}summary/${run ? `?run=${run}` : ""}`);
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
    return {order: $("order").value, run: run ? Number(run) : null, seed: 0,
            ...ReviewTools.queueOptions()};  // review tools: the batch chosen
  }

  async function next() {
    const item = await Web.post(`${api}next/`, queueBody());
    if (timings.firstItemMs === null) timings.firstItemMs = performance.now();
    showProgress(item.progress);
    ReviewTools.item(item);  // review tools: the batch's progress
    await show(item.synapse);
  }

  // Run `work` unless something else runs; report errors in the panel.
  // Keys pressed meanwhile are dropped, not queued: a double press must not judge the next
  // synapse unseen. The buttons show it.
  async function act(work) {
    if (busy) return;
    busy = true;
    document.body.classList.add("busy");
    try {
      await work();
    } catch (error) {
      status(error.message, true);
    } finally {
      busy = false;
      document.body.classList.remove("busy");
    }
  }

  const verdict = (value, corrections = {}, note = "") => act(async () => {
    if (!current) return;
    const synapse = current;
    // review tools: the note and tags go with the verdict, and are cleared once it is stored.
    await Web.post("/api/reviews/", {synapse: synapse.id, verdict: value, ...corrections,
                                     ...ReviewTools.annotations()});
    ReviewTools.cleared();
    status(`Synapse ${synapse.id}: ${LABELS[value]}${note}.`);
    flash();
    await next();
    refreshSummary().catch((error) => status(error.message, true));
  });

  const skip = () => act(async () => {
    if (!current) return;
    const synapse = current;
    await Web.post(`${api}skip/`, {synapse: synapse.id});
    ReviewTools.cleared();  // review tools
    status(`Synapse ${synapse.id} skipped.`);
    await next();
  });

  const undo = () => act(async () => {
    // With the page's run (and batch), so the progress is the one on screen.
    const item = await Web.post(`${api}undo/`, queueBody());
    if (!item.synapse) {
      status("No verdict or skip of yours to take back.");
      return;
    }
    showProgress(item.progress);
    ReviewTools.item(item);  // review tools
    status(item.undone === "skip" ?
      `Skip of synapse ${item.synapse.id} taken back; review it now.` :
      `Verdict on synapse ${item.synapse.id} taken back; review it again.`);
    await show(item.synapse);
    refreshSummary().catch((error) => status(error.message, true));
  });

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

  function updateHover() {
    if (!pick) return;
    const segment = frame.hoveredSegment();
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
    if (!config.can_review || event.ctrlKey || event.metaKey || event.altKey) return false;
    const target = event.target;
    if (target && (["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName) ||
                   target.isContentEditable)) return false;
    if (ReviewTools.onKey(event)) return true;  // review tools: the help overlay is open
    if (pick) {
      const pickAction = ReviewTools.pickAction(event.key);
      if (pickAction === "cancel") { stopPick(); return true; }
      if (pickAction === "choose") { pickSegment(frame.hoveredSegment()); return true; }
      if (pickAction === "switch") { startPick(pick.side === "post" ? "pre" : "post"); return true; }
    }
    // Caps lock or shift still mean the verdict keys; only p and P differ.
    const key = event.key === "P" ? "P" : event.key.toLowerCase();
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
  frame.onMouse("mousemove", () => requestAnimationFrame(updateHover));
  frame.onMouse("click", (event) => {
    if (!pick || !down) return;
    const moved = Math.hypot(event.clientX - down[0], event.clientY - down[1]);
    if (moved < 5) pickSegment(frame.hoveredSegment());
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
  // The order and run are remembered per dataset in this browser.
  const remembered = `review:${config.dataset}:`;
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
  window.reviewQueue = {get current() { return current; }, get busy() { return busy; }};

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
