// Review tools: the page's key table (the one review.js dispatches keys from, and the one the
// `?` help lists), the help overlay, the note and tags of the next verdict, and the reviewer's
// batches (which one the queue serves, and its progress).
//
// review.js calls: ReviewTools.bindings() (its key map), onKey(event) first on every key,
// run(action) for the "help" and "note" actions, pickAction(key) while picking a partner,
// annotations() for the verdict's body and cleared() after it, queueOptions() for the queue's
// body, item(response) with each queue answer, summary(response) with each summary, and
// init({onQueueChange}) once.
"use strict";

const ReviewTools = (() => {
  const $ = (id) => document.getElementById(id);

  // Every key of the page. `mode` "queue" keys work whenever a synapse is shown, "pick" keys
  // while picking the right partner in the viewer.
  const KEY_TABLE = [
    {key: "c", action: "verdict", argument: "confirmed", mode: "queue",
     help: "Confirm: a synapse, between the right cells, in the right direction"},
    {key: "x", action: "verdict", argument: "not_synapse", mode: "queue",
     help: "Not a synapse"},
    {key: "p", action: "pick", argument: "post", mode: "queue",
     help: "Wrong partner: click the right postsynaptic cell in the viewer"},
    {key: "P", action: "pick", argument: "pre", mode: "queue",
     help: "Wrong partner: click the right presynaptic cell in the viewer"},
    {key: "d", action: "verdict", argument: "wrong_direction", mode: "queue",
     help: "Wrong direction: pre and post swapped"},
    {key: "u", action: "verdict", argument: "unsure", mode: "queue", help: "Unsure"},
    {key: "s", action: "skip", mode: "queue", help: "Skip: not offered to you again"},
    {key: "z", action: "undo", mode: "queue",
     help: "Undo your last verdict or skip: that synapse comes back"},
    {key: "n", action: "note", mode: "queue",
     help: "Write a note for the next verdict (Esc leaves the note box)"},
    {key: "?", action: "help", mode: "queue", help: "This help (Esc or ? closes it)"},
    {key: "v", action: "layout", mode: "queue",
     help: "One viewer panel, or four (xy, xz, yz and 3D)"},
    {key: "Enter", action: "choose", mode: "pick", help: "Pick the cell under the mouse"},
    {key: "Tab", action: "switch", mode: "pick", help: "Switch between pre and post"},
    {key: "Escape", action: "cancel", mode: "pick", help: "Cancel picking"},
  ];

  const state = {
    tags: new Set(),      // tags chosen for the next verdict
    tagSet: false,        // the dataset has a tag set: no free tags
    choices: [],          // tag chips offered
    batches: [],          // the reviewer's batches in this dataset
    onQueueChange: null,
  };

  // {key: [action, argument]} of the queue keys, as review.js dispatches them.
  function bindings() {
    const map = {};
    for (const entry of KEY_TABLE) {
      if (entry.mode === "queue") map[entry.key] = [entry.action, entry.argument];
    }
    return map;
  }

  function pickAction(key) {
    const entry = KEY_TABLE.find((e) => e.mode === "pick" && e.key === key);
    return entry ? entry.action : null;
  }

  // --- help overlay ---------------------------------------------------------------------------

  const helpOpen = () => Boolean($("help-overlay")) && !$("help-overlay").hidden;

  function renderHelp() {
    const {el} = Web;
    const section = (title, mode) => [
      el("tr", {}, el("th", {colspan: "2"}, title)),
      ...KEY_TABLE.filter((e) => e.mode === mode).map((e) =>
        el("tr", {"data-key": e.key}, el("td", {}, el("kbd", {}, e.key === "Escape" ? "Esc" : e.key)),
           el("td", {}, e.help))),
    ];
    $("help-keys").replaceChildren(
      ...section("Reviewing", "queue"), ...section("While picking a partner", "pick"));
  }

  function toggleHelp(open = !helpOpen()) {
    const overlay = $("help-overlay");
    if (!overlay) return;
    if (open) renderHelp();
    overlay.hidden = !open;
  }

  // First look at every key: while the help is open, Esc and ? close it and other keys do
  // nothing (so nothing is judged behind it). True when the key was taken.
  function onKey(event) {
    if (!helpOpen()) return false;
    if (event.key === "Escape" || event.key === "?") toggleHelp(false);
    return true;
  }

  function focusNote() {
    const note = $("review-note");
    if (note) note.focus();
  }

  function run(action) {
    if (action === "help") toggleHelp();
    else if (action === "note") focusNote();
  }

  // --- note and tags --------------------------------------------------------------------------

  function renderTags() {
    const box = $("review-tags");
    if (!box) return;
    const {el} = Web;
    const names = [...new Set([...state.choices, ...state.tags])];
    box.replaceChildren(...names.map((name) => el("button", {
      type: "button", class: state.tags.has(name) ? "chip on" : "chip",
      "aria-pressed": String(state.tags.has(name)), "data-tag": name,
      onclick: () => {
        if (state.tags.has(name)) state.tags.delete(name); else state.tags.add(name);
        renderTags();
      },
    }, name)));
    const input = $("review-tag-input");
    if (input) input.hidden = state.tagSet;
  }

  function addFreeTag() {
    const input = $("review-tag-input");
    const name = input.value.trim().toLowerCase();
    if (!name) return;
    if (!/^[a-z0-9][a-z0-9_-]{0,31}$/.test(name)) {
      input.setCustomValidity("1 to 32 lowercase letters, digits, - or _");
      input.reportValidity();
      return;
    }
    input.setCustomValidity("");
    state.tags.add(name);
    input.value = "";
    renderTags();
  }

  // The note and tags for the verdict's POST body.
  function annotations() {
    const note = $("review-note");
    return {note: note ? note.value : "", tags: [...state.tags]};
  }

  // After a verdict was stored: the next synapse starts with no note and no tags.
  function cleared() {
    const note = $("review-note");
    if (note) note.value = "";
    state.tags.clear();
    renderTags();
  }

  function summary(response) {
    if (!response || !response.tags) return;
    state.tagSet = response.tags.tag_set;
    state.choices = response.tags.tags;
    renderTags();
  }

  // --- batches --------------------------------------------------------------------------------

  function queueOptions() {
    const select = $("batch");
    return {batch: select && select.value ? Number(select.value) : null};
  }

  function item(response) {
    const shown = $("batch-progress");
    if (!shown || !response) return;
    const batch = response.batch;
    shown.textContent = batch ? `${batch.reviewed} / ${batch.total}` : "–";
    shown.title = batch ? `batch ${batch.name}` : "";
    $("batch-progress-label").textContent = batch ? `reviewed in batch ${batch.name}` :
      "not from a batch of yours";
    const option = batch && [...$("batch").options].find((o) => o.value === String(batch.id));
    if (option) option.textContent = `only ${batch.name} (${batch.reviewed} / ${batch.total})`;
  }

  async function loadBatches(dataset) {
    const select = $("batch");
    if (!select) return;
    const found = await Web.get(`/api/review-batches/?dataset=${dataset}&reviewer=me`);
    state.batches = found.results.slice().reverse();  // oldest first, as the queue serves them
    const saved = localStorage.getItem(`review:${dataset}:batch`);
    select.replaceChildren(
      Web.el("option", {value: ""}, state.batches.length ? "your batches first, then the rest" :
                                                         "no batch of yours"),
      ...state.batches.map((b) =>
        Web.el("option", {value: String(b.id)}, `only ${b.name} (${b.reviewed} / ${b.total})`)));
    if (saved && state.batches.some((b) => String(b.id) === saved)) select.value = saved;
    $("batch-controls").hidden = !state.batches.length;
  }

  function init({dataset, onQueueChange}) {
    state.onQueueChange = onQueueChange;
    const note = $("review-note");
    if (note) {
      // Esc leaves the note box; the keys typed in it are text, never verdicts.
      note.addEventListener("keydown", (event) => {
        if (event.key === "Escape") { note.blur(); event.preventDefault(); }
      });
    }
    const input = $("review-tag-input");
    if (input) {
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") { addFreeTag(); event.preventDefault(); }
        if (event.key === "Escape") input.blur();
      });
    }
    const close = $("help-close");
    if (close) close.addEventListener("click", () => toggleHelp(false));
    const overlay = $("help-overlay");
    if (overlay) {
      // A click beside the panel closes the help too.
      overlay.addEventListener("click", (event) => {
        if (event.target === overlay) toggleHelp(false);
      });
    }
    const select = $("batch");
    if (select) {
      select.addEventListener("change", () => {
        localStorage.setItem(`review:${dataset}:batch`, select.value);
        if (state.onQueueChange) state.onQueueChange();
      });
    }
    renderTags();
    // A batch chosen earlier must be in the list before the first queue call asks for it;
    // otherwise the list loads while the first synapse does.
    const loading = loadBatches(dataset);
    if (localStorage.getItem(`review:${dataset}:batch`)) return loading;
    loading.catch((error) => { $("batch-progress-label").textContent = error.message; });
    return Promise.resolve();
  }

  return {KEY_TABLE, bindings, pickAction, onKey, run, toggleHelp, annotations, cleared,
          summary, queueOptions, item, init, get helpOpen() { return helpOpen(); }};
})();
