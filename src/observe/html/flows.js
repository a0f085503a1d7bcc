// The flow page: the counts and lines nftpol parsed, drawn as tables, filterable by action.
// Text goes in as text nodes, never as markup.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");
  const state = { action: "all" };

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function table(id, heads, rows) {
    const tr = el("tr");
    for (const h of heads) tr.append(el("th", {}, h));
    return el("div", { class: "wrap" }, el("table", { id, class: "flows" }, el("thead", {}, tr), el("tbody", {}, ...rows)));
  }

  const port = (x) => (x.port ? x.port + "/" : "") + x.protocol;
  const shown = (x) => state.action === "all" || x.action === state.action;

  function render() {
    const actions = [...new Set(D.lines.map((l) => l.action).concat(D.groups.map((g) => g.action)))].sort();
    const bar = el("div", { class: "bar" }, el("span", { class: "label" }, "Action"));
    for (const a of ["all", ...actions])
      bar.append(
        el("button", { class: "filter" + (state.action === a ? " active" : ""), "data-kind": "action", "data-value": a, onclick: () => { state.action = a; render(); } }, a)
      );
    const groups = D.groups.filter(shown).map((g) =>
      el("tr", { class: g.action },
        el("td", { class: "num" }, String(g.count)),
        el("td", { class: "action" }, g.action),
        el("td", {}, g.direction),
        el("td", {}, g.src),
        el("td", {}, g.dst),
        el("td", {}, port(g)),
        el("td", {}, g.pod),
        el("td", {}, g.policies.join(", ")),
        el("td", { class: "time" }, g.last),
        el("td", { class: "time" }, g.first))
    );
    const lines = D.lines.filter(shown).map((l) =>
      el("tr", { class: l.action },
        el("td", { class: "time" }, l.time),
        el("td", { class: "action" }, l.action),
        el("td", {}, l.message))
    );
    app.replaceChildren(
      el("header", {}, el("h1", {}, "Flow log"), el("p", { class: "source" }, "From " + D.source + ": " + D.lines.length + " lines listed" + (D.skipped ? ", other lines skipped: " + D.skipped : "") + ".")),
      bar,
      el("h2", {}, "Connections per pod pair and policy (most recently seen first)"),
      groups.length ? table("groups", ["count", "action", "direction", "from", "to", "port", "decided by pod", "policies", "last seen", "first seen"], groups) : el("p", { class: "note" }, "No flow log lines."),
      el("h2", {}, "Lines, newest first"),
      table("lines", ["time", "action", "line"], lines)
    );
  }

  render();
  document.body.setAttribute("data-ready", "1");
})();
