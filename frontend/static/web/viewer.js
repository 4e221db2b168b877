// The embedded Neuroglancer viewer, driven from the page through the same-origin iframe's
// `window.viewer`: states are restored in place, so the client loads once per page.
"use strict";

// Keys of a layer that change from one synapse to the next; the rest of a layer (type, name,
// source, colours by default, shader) stays, so the layer and its cached chunks can stay too.
const VOLATILE_LAYER_KEYS = ["segments", "segmentColors", "annotations"];
// Top-level keys a move sets; everything else of the state stays as it is.
const MOVE_KEYS = ["position", "crossSectionScale", "projectionScale", "layout", "showSlices"];

class ViewerFrame {
  constructor(iframe) {
    this.iframe = iframe;
    this.shown = null;  // the skeleton (layers without their volatile keys) last restored
    this.volatile = new Map();  // layer name -> JSON of its volatile keys, as last shown
    this.infos = new Map();  // precomputed source URL -> Promise of its info
    this.loaded = new Promise((resolve) => {
      const poll = () => {
        const win = iframe.contentWindow;
        if (win && win.viewer && win.document.readyState === "complete") resolve(win.viewer);
        else setTimeout(poll, 25);
      };
      poll();
    });
  }

  get viewer() { return this.iframe.contentWindow && this.iframe.contentWindow.viewer; }
  get window() { return this.iframe.contentWindow; }

  // Replace the whole viewer state (layers, position, selected segments, annotations).
  // Every layer is built anew: its chunks are fetched and drawn again.
  async setState(state) {
    const viewer = await this.loaded;
    // With the mouse over a panel, restoring the layout reads the hover values of layers that
    // are not initialised yet and fails; the next mouse move makes the mouse state active again.
    if (viewer.mouseState.active) viewer.mouseState.setActive(false);
    viewer.state.restoreState(state);
    this.shown = ViewerFrame.skeleton(state);
    this.volatile = ViewerFrame.volatile(state);
  }

  // Show `state`: when its layers are those on screen (same names, types, sources, settings),
  // only the position, zoom, layout, selected segments, their colours and the annotations
  // change, and the layers keep the chunks they hold; otherwise the whole state is restored.
  // Resolves to "moved" or "restored".
  async show(state) {
    const viewer = await this.loaded;
    if (this.shown !== null && this.shown === ViewerFrame.skeleton(state)) {
      try {
        if (this.move(viewer, state)) return "moved";
      } catch (error) {
        console.warn("viewer: moving failed, restoring the whole state", error);
      }
    }
    await this.setState(state);
    return "restored";
  }

  move(viewer, state) {
    const layers = (state.layers || []).map(
      (spec) => [spec, viewer.layerManager.getLayerByName(spec.name)]);
    if (layers.some(([, managed]) => !managed || !managed.layer)) return false;
    const volatile = ViewerFrame.volatile(state);
    for (const [spec, managed] of layers) {
      // Only layers whose segments, colours or annotations differ (a layer of every synapse
      // of a run stays as it is).
      if (this.volatile.get(spec.name) === volatile.get(spec.name)) continue;
      const layer = managed.layer;
      if (spec.type === "segmentation") {
        const group = layer.displayState.segmentationGroupState.value;
        group.selectedSegments.clear();
        group.visibleSegments.clear();
        group.restoreState({segments: spec.segments || []});
        const colours = layer.displayState.segmentationColorGroupState.value;
        colours.segmentStatedColors.clear();
        colours.restoreState({segmentColors: spec.segmentColors || {}});
      } else if (spec.type === "annotation" && layer.localAnnotations) {
        layer.localAnnotations.restoreState(spec.annotations || []);
      }
    }
    for (const key of MOVE_KEYS) {
      if (!(key in state)) continue;
      // Only what differs: restoring even the same layout builds its panels anew.
      const trackable = viewer.state.children.get(key);
      if (JSON.stringify(trackable.toJSON()) !== JSON.stringify(state[key])) {
        trackable.restoreState(state[key]);
      }
    }
    this.volatile = volatile;
    return true;
  }

  // Resolves once the viewer has drawn every visible chunk of the current state.
  async ready({timeoutMs = 60000} = {}) {
    const viewer = await this.loaded;
    const start = performance.now();
    // A frame first, so a state restored just now has made its layers and requests.
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    while (!viewer.isReady()) {
      if (performance.now() - start > timeoutMs) throw new Error("viewer not ready in time");
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
    // Then the frame that draws those chunks.
    await new Promise((resolve) => this.window.requestAnimationFrame(() => resolve()));
    return performance.now();
  }

  // Fetch, into the browser's HTTP cache, what the xy panel of `state` will ask for: the
  // chunks of the scale Neuroglancer draws at that zoom and of every coarser one (drawn while
  // the fine ones load), and the skeletons of the selected segments. Showing the state later
  // then waits for no server. `panel` is the xy panel's size in CSS pixels. Resolves to the
  // number of files fetched.
  async warm(state, panel) {
    // A source is a URL, or an object with one.
    const url = (layer) => (typeof layer.source === "string" ? layer.source :
      (layer.source && typeof layer.source.url === "string" ? layer.source.url : ""));
    const sources = (state.layers || []).filter(
      (layer) => layer.visible !== false && layer.type !== "annotation" &&
        url(layer).startsWith("precomputed://"));
    const [x, y, z] = state.position;
    const voxel = ["x", "y", "z"].map((axis) => state.dimensions[axis][0] * 1e9);  // nm
    // crossSectionScale: canonical voxels (the smallest edge) per screen pixel.
    const pixelNm = state.crossSectionScale * Math.min(...voxel);
    const centre = [x * voxel[0], y * voxel[1], z * voxel[2]];
    const half = [panel.width / 2 * pixelNm, panel.height / 2 * pixelNm];
    const urls = [];
    for (const layer of sources) {
      const base = url(layer).slice("precomputed://".length);
      const info = await this.info(base);
      // The coarsest scale still at least as fine as a screen pixel (level 0 at worst).
      let first = 0;
      info.scales.forEach((scale, i) => { if (scale.resolution[0] <= pixelNm * 1.01) first = i; });
      for (const scale of info.scales.slice(first)) urls.push(...chunkUrls(base, scale, centre, half));
      if (info.skeletons && Array.isArray(layer.segments)) {
        for (const id of layer.segments) urls.push(`${base}/${info.skeletons}/${id}`);
      }
    }
    // Neuroglancer asks with the same URLs, credentials and no extra headers: the same entries.
    await Promise.all(urls.map((url) => fetch(url).then((r) => r.arrayBuffer()).catch(() => null)));
    return urls.length;
  }

  info(base) {
    if (!this.infos.has(base)) {
      this.infos.set(base, fetch(`${base}/info`).then((r) => {
        if (!r.ok) throw new Error(`${base}/info: HTTP ${r.status}`);
        return r.json();
      }));
    }
    return this.infos.get(base);
  }

  segmentationLayers() {
    const viewer = this.viewer;
    if (!viewer) return [];
    return viewer.layerManager.managedLayers.filter(
      (managed) => managed.layer && managed.layer.type === "segmentation");
  }

  // The segment under the mouse, as a string, in the segmentation layer named `layerName`
  // (the first segmentation layer with one when not given), or null.
  hoveredSegment(layerName = null) {
    for (const managed of this.segmentationLayers()) {
      if (layerName !== null && managed.name !== layerName) continue;
      const selection = managed.layer.displayState.segmentSelectionState;
      if (selection && selection.hasSelectedSegment) {
        const id = String(selection.selectedSegment);
        if (id !== "0") return id;
      }
    }
    return null;
  }

  // Call `handler()` each time the viewer has worked out what lies under the mouse: after its
  // own picking, not on the browser's mouse event, which comes before it.
  async onHover(handler) {
    const viewer = await this.loaded;
    viewer.layerSelectedValues.changed.add(() => handler());
  }

  // Key handling inside the viewer too: `handler(event)` returns true for keys the page used,
  // which Neuroglancer then does not see.
  async onKeydown(handler) {
    await this.loaded;
    this.window.addEventListener("keydown", (event) => {
      if (handler(event)) {
        event.preventDefault();
        event.stopPropagation();
      }
    }, true);
  }

  async onMouse(type, handler) {
    await this.loaded;
    this.window.addEventListener(type, handler, true);
  }
}

// URLs of the chunks of a precomputed `scale` that an xy section through `centre` (x, y, z nm)
// shows within `half` (x, y nm) of it.
function chunkUrls(base, scale, centre, half) {
  const [cx, cy, cz] = scale.chunk_sizes[0];
  const [rx, ry, rz] = scale.resolution;
  const [sx, sy, sz] = scale.size;
  const lo = [(centre[0] - half[0]) / rx, (centre[1] - half[1]) / ry];
  const hi = [(centre[0] + half[0]) / rx, (centre[1] + half[1]) / ry];
  const zi = Math.min(sz - 1, Math.max(0, Math.floor(centre[2] / rz)));
  const z0 = Math.floor(zi / cz) * cz;
  const urls = [];
  for (let x0 = Math.max(0, Math.floor(lo[0] / cx) * cx); x0 < Math.min(sx, hi[0]); x0 += cx) {
    for (let y0 = Math.max(0, Math.floor(lo[1] / cy) * cy); y0 < Math.min(sy, hi[1]); y0 += cy) {
      urls.push(`${base}/${scale.key}/${x0}-${Math.min(sx, x0 + cx)}_` +
                `${y0}-${Math.min(sy, y0 + cy)}_${z0}-${Math.min(sz, z0 + cz)}`);
    }
  }
  return urls;
}

// Layer name -> what of it changes between synapses, as a string to compare.
ViewerFrame.volatile = (state) => new Map((state.layers || []).map((layer) => [
  layer.name, JSON.stringify(VOLATILE_LAYER_KEYS.map((key) => layer[key] ?? null))]));

// A state's layers without what changes between synapses, as a string to compare.
ViewerFrame.skeleton = (state) => JSON.stringify((state.layers || []).map((layer) => {
  const rest = {...layer};
  for (const key of VOLATILE_LAYER_KEYS) delete rest[key];
  return rest;
}));
