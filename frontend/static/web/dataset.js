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
    let rate = "", eta = "";
    if (job.progress_total && job.duration_s && job.state === "running") {
      const perSecond = job.progress_done / job.duration_s;
      rate = `${perSecond.toFixed(perSecond < 10 ? 2 : 0)}/s`;
      eta = perSecond > 0 ? Web.duration((job.progress_total - job.progress_done) / perSecond) : "–";
    } else if (job.progress_total && job.duration_s && job.state === "done") {
      rate = `${(job.progress_done / job.duration_s).toFixed(2)}/s`;
    }
    const progress = job.progress_total ? [
      el("progress", {value: job.progress_done, max: job.progress_total}),
      ` ${job.progress_done}/${job.progress_total}`] : [];
    return el("tr", {"data-job": job.id},
      el("td", {}, job.id), el("td", {}, job.kind),
      el("td", {class: `state-${job.state}`}, job.state),
      el("td", {}, progress), el("td", {}, rate), el("td", {}, eta),
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
