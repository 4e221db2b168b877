// A synapse's page: its viewer state restored with the pre and post cells coloured as on the
// review page. `window.synapseShown` resolves once the viewer has drawn it.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("synapse-config").textContent);
  const frame = new ViewerFrame(document.getElementById("viewer"));
  window.synapseShown = Web.get(config.state)
    .then((state) => frame.setState(
      ViewerFrame.colourPartners(state, config.pre_segment_id, config.post_segment_id)))
    .then(() => frame.ready());
})();
