// The reachability page. Everything it shows is in the embedded data, computed by nftpol:
// this script only groups, counts and draws it. Text goes in as text nodes, never as markup.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c);
    }
    return e;
  }

  const probeName = (p) => p.port + "/" + p.protocol;
  // An explanation is stored as indexes into the table of distinct lines.
  const words = (p, i, j) => p.explanations[i][j].map((k) => D.lines[k]).join("");
  const nsOf = (pod) => pod.slice(0, pod.indexOf("/"));
  const nameOf = (pod) => pod.slice(pod.indexOf("/") + 1);

  // Namespaces in pod order (the pods are sorted), each with the indexes of its pods.
  const namespaces = [];
  D.pods.forEach((pod, i) => {
    const ns = nsOf(pod);
    let last = namespaces[namespaces.length - 1];
    if (!last || last.name !== ns) {
      last = { name: ns, pods: [] };
      namespaces.push(last);
    }
    last.pods.push(i);
  });

  const state = {
    port: "all",
    protocol: "all",
    collapsed: new Set(D.pods.length > 12 ? namespaces.map((n) => n.name) : []),
    selected: null,
  };

  const selectedProbes = () =>
    D.probes.filter(
      (p) =>
        (state.port === "all" || String(p.port) === state.port) &&
        (state.protocol === "all" || p.protocol === state.protocol)
    );

  // Counts of allowed connections over the pairs (i, j), i != j, and the selected probes.
  function tally(rows, cols, probes) {
    let allowed = 0;
    let total = 0;
    for (const i of rows)
      for (const j of cols) {
        if (i === j) continue;
        for (const p of probes) {
          total++;
          if (p.allowed[i][j]) allowed++;
        }
      }
    return { allowed, total };
  }

  function cellState(t) {
    if (t.total === 0) return "self";
    if (t.allowed === t.total) return "allowed";
    if (t.allowed === 0) return "denied";
    return "mixed";
  }

  // --- the parts of the page -------------------------------------------------------------------

  function header() {
    return el(
      "header",
      {},
      el("h1", {}, "Who may reach whom"),
      el(
        "p",
        { class: "source" },
        "New connections predicted by nftpol from " + D.source +
          " (rows: from, columns: to). Click a cell for nftpol explain's answer."
      )
    );
  }

  function filterGroup(kind, label, values) {
    const g = el("span", { class: "group" }, el("span", { class: "label" }, label));
    for (const v of ["all", ...values]) {
      g.append(
        el(
          "button",
          {
            class: "filter" + (state[kind] === v ? " active" : ""),
            "data-kind": kind,
            "data-value": v,
            onclick: () => {
              state[kind] = v;
              render();
            },
          },
          v
        )
      );
    }
    return g;
  }

  function bar() {
    const ports = [...new Set(D.probes.map((p) => String(p.port)))];
    const protocols = [...new Set(D.probes.map((p) => p.protocol))];
    return el(
      "div",
      { class: "bar" },
      filterGroup("port", "Port", ports),
      filterGroup("protocol", "Protocol", protocols),
      el(
        "span",
        { class: "group" },
        el("button", { id: "expand-all", onclick: () => { state.collapsed.clear(); render(); } }, "expand all"),
        el("button", { id: "collapse-all", onclick: () => { state.collapsed = new Set(namespaces.map((n) => n.name)); render(); } }, "collapse all")
      ),
      el(
        "span",
        { class: "legend" },
        el("span", { class: "allowed" }, "\u2713 allowed"),
        el("span", { class: "denied" }, "\u2717 denied"),
        el("span", { class: "mixed" }, "k/n some allowed"),
        el("span", { class: "self" }, "- itself")
      )
    );
  }

  function toggle(ns) {
    return el(
      "button",
      {
        class: "ns-toggle" + (state.collapsed.has(ns) ? " collapsed" : ""),
        "data-ns": ns,
        title: state.collapsed.has(ns) ? "expand" : "collapse",
        onclick: () => {
          if (state.collapsed.has(ns)) state.collapsed.delete(ns);
          else state.collapsed.add(ns);
          render();
        },
      },
      ns
    );
  }

  // The rows or columns: a pod, or a collapsed namespace standing for its pods.
  function lines() {
    const out = [];
    for (const ns of namespaces) {
      if (state.collapsed.has(ns.name)) out.push({ ns: ns.name, pods: ns.pods, group: true });
      else for (const i of ns.pods) out.push({ ns: ns.name, pods: [i], group: false });
    }
    return out;
  }

  function matrix(probes) {
    const ls = lines();
    const head1 = el("tr", {}, el("th", { colspan: 2, rowspan: 2 }, "from \u2193  to \u2192"));
    for (const ns of namespaces) {
      const span = state.collapsed.has(ns.name) ? 1 : ns.pods.length;
      head1.append(el("th", { class: "ns", colspan: span }, toggle(ns.name)));
    }
    const head2 = el("tr");
    for (const c of ls) {
      head2.append(
        el(
          "th",
          { class: "col", title: c.group ? c.ns : D.pods[c.pods[0]] },
          c.group ? c.pods.length + " pods" : nameOf(D.pods[c.pods[0]])
        )
      );
    }
    const body = el("tbody");
    for (const ns of namespaces) {
      const rows = ls.filter((r) => r.ns === ns.name);
      rows.forEach((r, k) => {
        const tr = el("tr", { "data-row": r.group ? "ns:" + r.ns : D.pods[r.pods[0]] });
        if (k === 0) tr.append(el("th", { class: "ns", rowspan: rows.length }, toggle(ns.name)));
        tr.append(el("th", { class: "row" }, r.group ? r.pods.length + " pods" : nameOf(D.pods[r.pods[0]])));
        for (const c of ls) tr.append(cell(r, c, probes));
        body.append(tr);
      });
    }
    return el("div", { class: "wrap" }, el("table", { id: "matrix" }, el("thead", {}, head1, head2), body));
  }

  function cell(r, c, probes) {
    const t = tally(r.pods, c.pods, probes);
    const s = cellState(t);
    const group = r.group || c.group;
    let text = { self: "-", allowed: "\u2713", denied: "\u2717" }[s];
    if (s === "mixed") text = t.allowed + "/" + t.total;
    const from = r.group ? "ns:" + r.ns : D.pods[r.pods[0]];
    const to = c.group ? "ns:" + c.ns : D.pods[c.pods[0]];
    const td = el(
      "td",
      {
        class: "cell " + s + (group ? " group" : ""),
        "data-from": from,
        "data-to": to,
        "data-state": s,
        title: (r.group ? r.ns : D.pods[r.pods[0]]) + " \u2192 " + (c.group ? c.ns : D.pods[c.pods[0]]),
        onclick: () => {
          state.selected = { r, c, from, to };
          render();
        },
      },
      text
    );
    if (state.selected && state.selected.from === from && state.selected.to === to) td.classList.add("selected");
    return td;
  }

  function details(probes) {
    const box = el("section", { id: "details" });
    const sel = state.selected;
    if (!sel) {
      box.append(el("p", { class: "note", id: "explain" }, "Click a cell to see why a connection is allowed or denied."));
      return box;
    }
    const fromName = sel.r.group ? "namespace " + sel.r.ns : D.pods[sel.r.pods[0]];
    const toName = sel.c.group ? "namespace " + sel.c.ns : D.pods[sel.c.pods[0]];
    box.append(el("h3", {}, fromName + " \u2192 " + toName));
    const out = el("div", { id: "explain" });
    if (!sel.r.group && !sel.c.group) {
      const i = sel.r.pods[0];
      const j = sel.c.pods[0];
      if (i === j)
        out.append(el("p", { class: "note" }, "A pod connecting to itself never leaves the pod: no node-level engine sees it. nftpol's verdict, for the record:"));
      for (const p of probes) out.append(el("pre", { "data-probe": probeName(p) }, words(p, i, j)));
    } else {
      // A namespace stands for its pods: list each pair's verdict, the words are on the pod cells.
      for (const p of probes) {
        const allowed = [];
        const denied = [];
        for (const i of sel.r.pods)
          for (const j of sel.c.pods) {
            if (i === j) continue;
            (p.allowed[i][j] ? allowed : denied).push(D.pods[i] + " \u2192 " + D.pods[j]);
          }
        out.append(
          el(
            "pre",
            { "data-probe": probeName(p) },
            probeName(p) + ": " + allowed.length + " allowed, " + denied.length + " denied\n" +
              (allowed.length ? "  allowed:\n    " + allowed.join("\n    ") + "\n" : "") +
              (denied.length ? "  denied:\n    " + denied.join("\n    ") + "\n" : "") +
              "Expand the namespaces and click a pod's cell for why."
          )
        );
      }
    }
    box.append(out);
    return box;
  }

  function summary(probes) {
    const head = el("tr", {}, el("th", {}, "from \u2193  to \u2192"));
    for (const ns of namespaces) head.append(el("th", { class: "ns" }, ns.name));
    const body = el("tbody");
    for (const a of namespaces) {
      const tr = el("tr", {}, el("th", { class: "ns" }, a.name));
      for (const b of namespaces) {
        const parts = [];
        let any = 0;
        let every = true;
        let pairs = 0;
        for (const p of probes) {
          const t = tally(a.pods, b.pods, [p]);
          pairs = t.total;
          if (t.allowed > 0) {
            any++;
            parts.push(probeName(p) + (t.allowed === t.total ? "" : " (" + t.allowed + "/" + t.total + " pairs)"));
          }
          if (t.allowed !== t.total) every = false;
        }
        let cls = "none";
        let text = "none";
        if (pairs === 0 || probes.length === 0) {
          cls = "self";
          text = "-";
        } else if (any > 0) {
          cls = every ? "all" : "some";
          text = parts.join(", ");
        }
        tr.append(el("td", { class: cls, "data-from-ns": a.name, "data-to-ns": b.name }, text));
      }
      body.append(tr);
    }
    return el(
      "section",
      {},
      el("h2", {}, "Namespaces: which may reach which, on which ports"),
      el("p", { class: "note" }, "A port is listed when at least one pod of the row's namespace may open a new connection to one of the column's (pairs counted when not all may)."),
      el("div", { class: "wrap" }, el("table", { id: "summary" }, el("thead", {}, head), body))
    );
  }

  function invalid() {
    if (!D.invalid.length) return null;
    const ul = el("ul");
    for (const s of D.invalid) ul.append(el("li", {}, s));
    return el("section", { class: "warn" }, el("h2", {}, "Invalid policies, skipped (not enforced)"), ul);
  }

  function render() {
    const probes = selectedProbes();
    const scroll = [window.scrollX, window.scrollY];
    app.replaceChildren(header(), bar());
    if (probes.length === 0) {
      app.append(el("p", { class: "warn", id: "no-probe" }, "No probe for this port and protocol: choose another filter, or simulate with it (--port, --protocol)."));
    } else {
      app.append(
        el("p", { class: "note", id: "shown" }, "Shown: " + probes.map(probeName).join(", ") + (probes.length > 1 ? " (a cell counts the connections allowed over them)" : "")),
        matrix(probes),
        details(probes),
        summary(probes)
      );
    }
    const inv = invalid();
    if (inv) app.append(inv);
    window.scrollTo(scroll[0], scroll[1]);
  }

  render();
  document.body.setAttribute("data-ready", "1");
})();
