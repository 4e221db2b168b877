// Dataset overview: the dataset's jobs with their progress, rate and time left, polled while
// any is unfinished.
"use strict";

(() => {
  const table = document.getElementById("jobs");
  const dataset = table.dataset.dataset;
  const FINISHED = new Set(["done", "failed", "cancelled"]);
  const INTERVAL_MS = 1500;

  function row(job) {
    const {el} = Web;
    // Running: units per second so far and the time left at that rate. Finished: how long.
    let rate = "", time = "";
    if (job.progress_total && job.duration_s && job.state === "running") {
      const perSecond = job.progress_done / job.duration_s;
      rate = `${perSecond.toFixed(perSecond < 10 ? 2 : 0)}/s`;
      time = perSecond > 0 ?
        `${Web.duration((job.progress_total - job.progress_done) / perSecond)} left` : "–";
    } else if (FINISHED.has(job.state) && job.duration_s !== null) {
      time = `took ${Web.duration(job.duration_s)}`;
    }
    const progress = job.progress_total ? [
      el("progress", {value: job.progress_done, max: job.progress_total}),
      ` ${job.progress_done}/${job.progress_total}`] : [];
    return el("tr", {"data-job": job.id},
      el("td", {}, job.id), el("td", {}, job.kind),
      el("td", {class: `state-${job.state}`}, job.state),
      el("td", {class: "nowrap"}, progress), el("td", {}, rate), el("td", {class: "nowrap"}, time),
      el("td", {}, (job.error || job.message || "").slice(0, 80)));
  }

  async function poll() {
    let jobs;
    try {
      jobs = (await Web.get(`/api/jobs/?dataset=${dataset}&page_size=20`)).results;
    } catch (error) {
      setTimeout(poll, INTERVAL_MS * 4);
      return;
    }
    const body = table.tBodies[0];
    body.replaceChildren(...jobs.map(row));
    if (jobs.some((job) => !FINISHED.has(job.state))) setTimeout(poll, INTERVAL_MS);
  }

  // Once at least (the rates of finished jobs too), then while any job is unfinished.
  poll();
})();
