// A synapse's page: its viewer state restored (the pre and post cells in the palette's colours,
// as on the review page). `window.synapseShown` resolves once the viewer has drawn it.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("synapse-config").textContent);
  const frame = new ViewerFrame(document.getElementById("viewer"));
  window.synapseShown = Web.get(config.state)
    .then((state) => frame.setState(state))
    .then(() => frame.ready());
})();
