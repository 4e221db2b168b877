// Small helpers shared by the pages: JSON requests with the session's CSRF token, formatting.
"use strict";

const Web = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  async function request(method, url, body) {
    const options = {method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrf();
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const detail = data && (data.detail || data.error || JSON.stringify(data));
      const error = new Error(`${response.status}: ${detail || response.statusText}`);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const fixed = (value, digits = 2) =>
    value === null || value === undefined ? "–" : Number(value).toFixed(digits);

  function duration(seconds) {
    if (!isFinite(seconds)) return "–";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  }

  // <select data-autosubmit> submits its form on change (no inline handlers under the CSP).
  document.addEventListener("change", (event) => {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
  });

  // "/" anywhere but in a text field puts the cursor in the header's search box. (The review
  // queue's keys ignore what is typed into fields, the search box included.)
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName) ||
                   target.isContentEditable)) return;
    const box = document.getElementById("search-box");
    if (!box) return;
    event.preventDefault();
    box.focus();
    box.select();
  });

  return {get: (url) => request("GET", url), post: (url, body) => request("POST", url, body || {}),
          el, fixed, duration};
})();
