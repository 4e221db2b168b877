// The wiring matrix as a heatmap on a canvas: rows presynaptic, columns postsynaptic, colour by
// synapse count or summed contact area; electrical synapses (no direction) on their own,
// drawn symmetric. Data from /api/datasets/<id>/wiring/ for one run (the dataset's default
// unless chosen; "all" sums the runs); a click on a pair lists its synapses, each linked to
// its page with the viewer.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("wiring-config").textContent);
  const $ = (id) => document.getElementById(id);
  const canvas = $("matrix");
  const tooltip = $("tooltip");
  const LABEL_FONT = "11px system-ui, sans-serif";

  let data = null;   // {rows, groupBy, axis: [{key, label, type, total}], index: Map, cells: Map}
  let layout = null; // {left, top, size}

  // Cells as the viewer labels segments: the name, else "<type> (<segment id>)".
  const cellLabel = (row, side) => row[`${side}_name`] ||
    `${row[`${side}_type`] || "cell"} (${row[`${side}_segment_id`]})`;
  const keyOf = (row, side) => data.groupBy === "cell" ? row[`${side}_cell`] : row[`${side}_type`];
  const pairKey = (pre, post) => `${pre}\u0000${post}`;

  const kind = () => document.querySelector("input[name=kind]:checked").value;

  function query(extra = {}) {
    const params = new URLSearchParams({group_by: $("group-by").value, kind: kind(),
                                        min_count: $("min-count").value, ...extra});
    if ($("run").value) params.set("run", $("run").value);
    return params;
  }

  let loads = 0;  // a response to an older request (controls changed since) is dropped

  async function load() {
    const ticket = ++loads;
    const params = query();
    for (const output of ["csv", "parquet", "graphml"]) {
      $(output).href = `/api/datasets/${config.dataset}/wiring/?${query({output})}`;
    }
    const body = await Web.get(`/api/datasets/${config.dataset}/wiring/?${params}`);
    if (ticket !== loads) return;
    const groupBy = body.group_by;
    const electrical = body.kind === "electrical";
    const axis = new Map();
    const cells = new Map();
    const add = (key, label, type, count, side) => {
      if (!axis.has(key)) axis.set(key, {key, label, type, out: 0, in: 0});
      axis.get(key)[side] += count;
    };
    for (const row of body.rows) {
      for (const side of ["pre", "post"]) {
        const key = groupBy === "cell" ? row[`${side}_cell`] : row[`${side}_type`];
        const label = groupBy === "cell" ? cellLabel(row, side) :
          (row[`${side}_type`] || "(no type)");
        add(key, label, row[`${side}_type`], row.synapses, side === "pre" ? "out" : "in");
      }
      const pre = groupBy === "cell" ? row.pre_cell : row.pre_type;
      const post = groupBy === "cell" ? row.post_cell : row.post_type;
      cells.set(pairKey(pre, post), row);
      if (electrical) cells.set(pairKey(post, pre), row);  // no direction: both squares
    }
    if (data && (data.groupBy !== groupBy || data.kind !== body.kind)) clearPair();
    data = {groupBy, kind: body.kind, runs: body.runs, rows: body.rows, cells, axis: [...axis.values()],
            synapses: body.synapses, pairs: body.pairs};
    const max = Math.max(1, ...body.rows.map((row) => row.synapses));
    if ($("min-count").value === "1") $("min-count").max = Math.max(2, max);
    $("summary").textContent = `· ${body.pairs} ${body.kind} ${electrical ? "unordered " : ""}` +
      `pairs, ${body.synapses} ${body.kind} synapses`;
    $("axes").textContent = electrical ? "electrical synapses: no direction, drawn both ways" :
      "rows: presynaptic · columns: postsynaptic";
    draw();
  }

  function sortAxis() {
    const by = $("sort").value;
    const name = (a, b) => String(a.label).localeCompare(String(b.label), undefined, {numeric: true});
    const compare = {
      name,
      total: (a, b) => (b.out + b.in) - (a.out + a.in) || name(a, b),
      type: (a, b) => String(a.type).localeCompare(String(b.type)) || name(a, b),
    }[by];
    data.axis.sort(compare);
    data.index = new Map(data.axis.map((entry, i) => [entry.key, i]));
  }

  function colour(t) {
    // Light yellow -> dark blue; t in [0, 1].
    const stops = [[255, 255, 217], [127, 205, 187], [44, 127, 184], [37, 52, 148], [8, 29, 88]];
    const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function draw() {
    sortAxis();
    const n = data.axis.length;
    const valueKey = $("value").value;
    const wrap = canvas.parentElement;
    const available = Math.max(200, wrap.clientWidth - 160);
    const size = Math.max(2, Math.min(40, Math.floor(available / Math.max(1, n))));
    const labels = size >= 8;
    const context = canvas.getContext("2d");
    context.font = LABEL_FONT;
    const longest = labels ? Math.max(0, ...data.axis.map((e) => context.measureText(e.label).width)) : 0;
    const left = Math.ceil(longest) + 10;
    const top = Math.ceil(longest) + 10;
    layout = {left, top, size};
    const ratio = window.devicePixelRatio || 1;
    const width = left + n * size + 2;
    const height = top + n * size + 2;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    context.scale(ratio, ratio);
    context.fillStyle = "#fff";
    context.fillRect(0, 0, width, height);
    context.strokeStyle = "#eceff2";
    context.strokeRect(left, top, n * size, n * size);
    const values = data.rows.map((row) => row[valueKey] || 0);
    const max = Math.max(1e-9, ...values);
    const square = Math.max(1, size - (size > 4 ? 1 : 0));
    for (const row of data.rows) {
      const i = data.index.get(keyOf(row, "pre"));
      const j = data.index.get(keyOf(row, "post"));
      context.fillStyle = colour(Math.sqrt((row[valueKey] || 0) / max));
      context.fillRect(left + j * size, top + i * size, square, square);
      if (data.kind === "electrical") context.fillRect(left + i * size, top + j * size, square, square);
    }
    if (labels) {
      context.fillStyle = "#333";
      context.font = LABEL_FONT;
      context.textBaseline = "middle";
      data.axis.forEach((entry, i) => {
        context.textAlign = "right";
        context.fillText(entry.label, left - 4, top + i * size + size / 2);
        context.save();
        context.translate(left + i * size + size / 2, top - 4);
        context.rotate(-Math.PI / 2);
        context.textAlign = "left";
        context.fillText(entry.label, 0, 0);
        context.restore();
      });
    }
    drawLegend(max, valueKey);
  }

  function drawLegend(max, valueKey) {
    const legend = $("legend");
    const context = legend.getContext("2d");
    for (let x = 0; x < legend.width; x++) {
      context.fillStyle = colour(x / (legend.width - 1));
      context.fillRect(x, 0, 1, legend.height);
    }
    $("legend-max").textContent = valueKey === "synapses" ? `${max}` :
      `${(max / 1e6).toFixed(2)} µm²`;
  }

  function pairAt(event) {
    if (!data || !layout) return null;
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left - layout.left;
    const y = event.clientY - box.top - layout.top;
    if (x < 0 || y < 0) return null;
    const i = Math.floor(y / layout.size);
    const j = Math.floor(x / layout.size);
    if (i >= data.axis.length || j >= data.axis.length) return null;
    const pre = data.axis[i];
    const post = data.axis[j];
    return {pre, post, row: data.cells.get(pairKey(pre.key, post.key)) || null};
  }

  function describe(pair) {
    const row = pair.row;
    const values = row ? `${row.synapses} synapse${row.synapses === 1 ? "" : "s"}` +
      (row.contact_area_nm2 ? `, ${(row.contact_area_nm2 / 1e6).toFixed(3)} µm²` : "") +
      (row.mean_confidence !== null ? `, mean confidence ${Web.fixed(row.mean_confidence)}` : "") :
      "no synapses";
    const arrow = data.kind === "electrical" ? "↔" : "→";
    return `${pair.pre.label} ${arrow} ${pair.post.label}: ${values}`;
  }

  canvas.addEventListener("mousemove", (event) => {
    const pair = pairAt(event);
    if (!pair) { tooltip.style.display = "none"; return; }
    tooltip.textContent = describe(pair);
    tooltip.style.display = "block";
    tooltip.style.left = `${event.clientX + 14}px`;
    tooltip.style.top = `${event.clientY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
  canvas.addEventListener("click", (event) => {
    const pair = pairAt(event);
    if (pair && pair.row) showPair(pair).catch((error) => {
      $("pair-list").textContent = error.message;
    });
  });

  // --- the synapses of a pair ---------------------------------------------------------------

  function clearPair() {
    $("pair-title").textContent = "Pick a pair";
    $("pair-hint").textContent = "Click a square of the matrix to list the synapses of that " +
      "pair; each opens in the viewer.";
    $("pair-list").replaceChildren();
  }

  async function showPair(pair) {
    $("pair-title").textContent =
      `${pair.pre.label} ${data.kind === "electrical" ? "↔" : "→"} ${pair.post.label}`;
    $("pair-hint").textContent = describe(pair);
    if (data.groupBy === "cell") {
      await listSynapses(pair.pre.key, pair.post.key, $("pair-list"));
      return;
    }
    // A pair of types: the cell pairs that make it up, each opening its synapses.
    const params = query({group_by: "cell"});
    // Cells of those two types only (types with a comma or none cannot be named there).
    const types = [pair.pre.key, pair.post.key];
    if (types.every((type) => type && !type.includes(","))) {
      params.set("cell_types", [...new Set(types)].join(","));
    }
    const body = await Web.get(`/api/datasets/${config.dataset}/wiring/?${params}`);
    const rows = body.rows.filter((row) =>
      (row.pre_type === pair.pre.key && row.post_type === pair.post.key) ||
      (data.kind === "electrical" && row.pre_type === pair.post.key &&
       row.post_type === pair.pre.key));
    const {el} = Web;
    const target = el("div");
    const list = el("table", {}, el("tr", {}, el("th", {}, "pre"), el("th", {}, "post"),
                                   el("th", {class: "num"}, "synapses")));
    for (const row of rows) {
      const link = el("a", {href: "#", onclick: (event) => {
        event.preventDefault();
        listSynapses(row.pre_cell, row.post_cell, target,
                     `${cellLabel(row, "pre")} → ${cellLabel(row, "post")}`).catch((error) => {
          target.textContent = error.message;
        });
      }}, `${row.synapses}`);
      list.append(el("tr", {}, el("td", {}, cellLabel(row, "pre")),
                           el("td", {}, cellLabel(row, "post")),
                           el("td", {class: "num"}, link)));
    }
    $("pair-list").replaceChildren(list, target);
  }

  async function listSynapses(pre, post, target, title = null) {
    // Electrical synapses have no direction: either way round, whatever the table said.
    const params = new URLSearchParams({
      a: pre, b: post, direction: data.kind === "electrical" ? "both" : "a_to_b",
      kind: data.kind, page_size: 500});
    if ($("run").value) params.set("run", $("run").value);
    const body = await Web.get(`/api/synapses/between/?${params}`);
    const {el} = Web;
    const table = el("table", {class: "synapses"},
      el("tr", {}, el("th", {}, "synapse"), el("th", {class: "num"}, "confidence"),
         el("th", {}, "review"), el("th", {}, "")));
    for (const synapse of body.results) {
      const rejected = synapse.review_state === "not_synapse" || synapse.flag;
      table.append(el("tr", {class: rejected ? "muted" : null, "data-synapse": synapse.id},
        el("td", {}, el("a", {href: `/datasets/${config.dataset}/synapses/${synapse.id}/`},
                        `#${synapse.id}`)),
        el("td", {class: "num"}, Web.fixed(synapse.confidence, 3)),
        el("td", {}, synapse.review_state + (synapse.flag ? ` (${synapse.flag})` : "")),
        el("td", {}, el("a", {href: `/datasets/${config.dataset}/review/?synapse=${synapse.id}`},
                        "review"))));
    }
    const note = el("p", {class: "muted"}, `${body.results.length} synapse rows; rejected and ` +
                    "flagged ones are greyed and not counted.");
    target.replaceChildren(title ? el("h2", {}, title) : "", table, note);
  }

  // --- controls -----------------------------------------------------------------------------

  let timer = null;
  const reload = () => load().catch((error) => { $("summary").textContent = error.message; });
  $("min-count").addEventListener("input", () => {
    $("min-count-value").textContent = $("min-count").value;
    clearTimeout(timer);
    timer = setTimeout(reload, 200);
  });
  for (const id of ["group-by", "run"]) $(id).addEventListener("change", reload);
  for (const input of document.querySelectorAll("input[name=kind]")) {
    input.addEventListener("change", reload);
  }
  for (const id of ["sort", "value"]) $(id).addEventListener("change", () => data && draw());
  window.addEventListener("resize", () => data && draw());

  // For scripts and tests: the numbers the heatmap shows, and where a pair is drawn.
  window.wiringMatrix = {
    get data() { return data; },
    value(pre, post) {
      const row = data && data.cells.get(pairKey(pre, post));
      return row ? row.synapses : 0;
    },
    position(pre, post) {
      const box = canvas.getBoundingClientRect();
      const i = data.index.get(pre);
      const j = data.index.get(post);
      return {x: box.left + layout.left + (j + 0.5) * layout.size,
              y: box.top + layout.top + (i + 0.5) * layout.size};
    },
    loaded: null,
  };
  window.wiringMatrix.loaded = load().catch((error) => { $("summary").textContent = error.message; });
})();
