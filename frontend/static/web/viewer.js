// The embedded Neuroglancer viewer, driven from the page through the same-origin iframe's
// `window.viewer`: states are restored in place, so the client loads once per page.
"use strict";

class ViewerFrame {
  constructor(iframe) {
    this.iframe = iframe;
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
  async setState(state) {
    const viewer = await this.loaded;
    // With the mouse over a panel, restoring the layout reads the hover values of layers that
    // are not initialised yet and fails; the next mouse move makes the mouse state active again.
    if (viewer.mouseState.active) viewer.mouseState.setActive(false);
    viewer.state.restoreState(state);
  }

  // Resolves once the viewer has drawn every visible chunk of the current state.
  async ready({timeoutMs = 60000} = {}) {
    const viewer = await this.loaded;
    const start = performance.now();
    // A frame first, so a state restored just now has made its layers and requests.
    await new Promise((resolve) => setTimeout(resolve, 50));
    while (!viewer.isReady()) {
      if (performance.now() - start > timeoutMs) throw new Error("viewer not ready in time");
      await new Promise((resolve) => setTimeout(resolve, 30));
    }
    return performance.now();
  }

  segmentationLayers() {
    const viewer = this.viewer;
    if (!viewer) return [];
    return viewer.layerManager.managedLayers.filter(
      (managed) => managed.layer && managed.layer.type === "segmentation");
  }

  // The segment under the mouse in the first segmentation layer that has one, as a string.
  hoveredSegment() {
    for (const managed of this.segmentationLayers()) {
      const selection = managed.layer.displayState.segmentSelectionState;
      if (selection && selection.hasSelectedSegment) {
        const id = String(selection.selectedSegment);
        if (id !== "0") return id;
      }
    }
    return null;
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

// A synapse's pre and post cells in the pages' colours (red and blue, as their labels), in
// every segmentation layer of `state` that shows them. Returns `state`.
ViewerFrame.PRE_COLOUR = "#ff5a36";
ViewerFrame.POST_COLOUR = "#2f8bff";
ViewerFrame.colourPartners = (state, preSegment, postSegment) => {
  const colours = {};
  if (preSegment) colours[preSegment] = ViewerFrame.PRE_COLOUR;
  if (postSegment) colours[postSegment] = ViewerFrame.POST_COLOUR;
  for (const layer of state.layers || []) {
    if (layer.type === "segmentation" && Array.isArray(layer.segments) &&
        layer.segments.some((id) => id in colours)) {
      layer.segmentColors = {...(layer.segmentColors || {}), ...colours};
    }
  }
  return state;
};
