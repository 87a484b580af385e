// The heatmaps: one row per rollout, one column per method, one chip per token, coloured by the
// advantage Â_t or the raw signal u_t = log π_teacher(y_t) − log π_student(y_t) (docs/algorithms.md).
"use strict";

const view = (() => {
  /** White at 0, blue for positive, red for negative, saturating at |value| = scale
   *  (the colours of trainer/toy/show_credit.py's static figure). */
  function colour(value, scale) {
    const x = scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
    const rgb = x >= 0 ? [1 - 0.75 * x, 1 - 0.55 * x, 1] : [1, 1 + 0.6 * x, 1 + 0.7 * x];
    return `rgb(${rgb.map((c) => Math.round(255 * c)).join(",")})`;
  }

  /** A signed number with 5 significant digits, as the tooltip and the PNG show it. */
  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0";
    return (value > 0 ? "+" : "−") + Math.abs(value).toPrecision(5);
  }

  /** What a chip shows for a token: spaces and line breaks made visible. */
  function chipText(label) {
    if (label === "") return "·";
    return label.replace(/\n/g, "↵").replace(/\t/g, "→");
  }

  /** First index where token lists a and b differ; min(len) when one is a prefix of the other
   *  (trainer/toy/analysis.py first_divergence). */
  function firstDivergence(a, b) {
    const n = Math.min(a.length, b.length);
    for (let t = 0; t < n; t++) if (a[t] !== b[t]) return t;
    return n;
  }

  /** Per failed rollout i whose HSD teacher saw a better peer p: {peer, t} where i departs from p. */
  function divergences(group, results) {
    const hsd = results.hsd;
    const out = {};
    if (!hsd) return out;
    hsd.groups[0].rollouts.forEach((r, i) => {
      const p = r.details && r.details.peer_index;
      if (p === null || p === undefined) return;
      const mine = group.rollouts[i];
      const peer = group.rollouts[p];
      if (!(mine.reward < peer.reward)) return;
      const t = firstDivergence(mine.response_ids, peer.response_ids);
      if (t < mine.response_ids.length) out[i] = { peer: p, t };
    });
    return out;
  }

  /** The numbers of token t of rollout i under one method (from its /v1/advantages answer). */
  function tokenNumbers(result, i, t) {
    const r = result.groups[0].rollouts[i];
    const d = r.details || {};
    return {
      advantage: r.advantages[t],
      student: d.student_logprobs ? d.student_logprobs[t] : null,
      teacher: d.teacher_logprobs ? d.teacher_logprobs[t] : null,
      signal: d.signal ? d.signal[t] : null,
      masked: Boolean(d.masked),
    };
  }

  /** Largest |value| of the colour field over a method's tokens (the colour scale). */
  function scaleOf(result, field) {
    let m = 0;
    for (const r of result.groups[0].rollouts) {
      const values = field === "signal" ? (r.details || {}).signal || [] : r.advantages;
      for (const v of values) m = Math.max(m, Math.abs(v));
    }
    return m;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "style") {
        // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
        for (const rule of v.split(";")) {
          const at = rule.indexOf(":");
          if (at > 0) node.style.setProperty(rule.slice(0, at).trim(), rule.slice(at + 1).trim());
        }
      }
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function statsCard(method, result, scale, field) {
    const s = result.stats;
    const lines = [
      `${s.rollouts} rollouts · ${s.tokens} tokens`,
      `mean |u| ${s.mean_abs_signal === null ? "–" : s.mean_abs_signal.toFixed(4)}`,
      `masked rollouts ${s.masked_rollouts}`,
    ];
    if (s.gate !== null && s.gate !== undefined) lines.push(`AntiSD gate ${s.gate}`);
    if (s.teacher_entropy !== null && s.teacher_entropy !== undefined)
      lines.push(`teacher entropy ${s.teacher_entropy.toFixed(4)}`);
    const legend = el(
      "div",
      { class: "legend" },
      el("span", { class: "swatch", style: `background:${colour(-scale, scale)}` }),
      el("span", { text: fmt(-scale) }),
      el("span", { class: "swatch", style: "background:#fff" }),
      el("span", { text: "0" }),
      el("span", { class: "swatch", style: `background:${colour(scale, scale)}` }),
      el("span", { text: `${fmt(scale)} ${field === "signal" ? "u" : "Â"}` }),
    );
    return el(
      "div",
      { class: "stats", "data-method": method },
      el("h2", { text: method }),
      el("div", { class: "stat-lines", text: lines.join(" · ") }),
      legend,
    );
  }

  function contextNote(result, i) {
    const d = result.groups[0].rollouts[i].details;
    if (!d) return null;
    const bits = [];
    if (d.peer_index !== null && d.peer_index !== undefined) bits.push(`peer #${d.peer_index}`);
    if (d.masked) bits.push("masked: no teacher context (u = 0)");
    const box = el("div", { class: "context" }, el("span", { text: bits.join(" · ") }));
    if (d.reflection) {
      const r = d.reflection;
      const why = r.fallback ? ` (fallback: ${r.reason || "?"})` : "";
      box.append(el("div", { class: "reflection", text: `<${r.kind}> ${r.text || "∅"}${why}` }));
    }
    if (d.teacher_context) {
      const det = el("details", {}, el("summary", { text: "teacher context" }));
      det.append(el("pre", { text: d.teacher_context }));
      box.append(det);
    }
    return box;
  }

  /**
   * Draw `state` ({group, labels, methods, results, errors, colour}) into `root`.
   * Chips carry data-method, data-rollout and data-t for the tooltip (and the tests).
   */
  function render(root, state) {
    root.replaceChildren();
    const methods = state.methods.filter((m) => state.results[m]);
    if (!methods.length) return;
    const field = state.colour;
    const scales = Object.fromEntries(methods.map((m) => [m, scaleOf(state.results[m], field)]));
    const diverge = divergences(state.group, state.results);
    const grid = el("div", { class: "grid", style: `--methods:${methods.length}` });
    grid.append(el("div", { class: "corner" }));
    for (const m of methods) grid.append(statsCard(m, state.results[m], scales[m], field));

    state.group.rollouts.forEach((rollout, i) => {
      const ok = rollout.reward > 0;
      const head = el(
        "div",
        { class: `rollout-head ${ok ? "ok" : "failed"}` },
        el("strong", { text: `#${i}` }),
        el("span", { text: ` reward ${rollout.reward}` }),
        el("span", { text: ` · ${rollout.response_ids.length} tokens` }),
      );
      if (diverge[i]) {
        const { peer, t } = diverge[i];
        head.append(el("div", { class: "diverge-note", text: `▼ departs from peer #${peer} at token ${t}` }));
      }
      grid.append(head);
      for (const m of methods) {
        const result = state.results[m];
        const cell = el("div", { class: "cell", "data-method": m, "data-rollout": String(i) });
        const tokens = el("div", { class: "tokens" });
        rollout.response_ids.forEach((id, t) => {
          const n = tokenNumbers(result, i, t);
          const value = field === "signal" ? n.signal || 0 : n.advantage;
          const chip = el("span", {
            class: diverge[i] && diverge[i].t === t ? "tok diverge" : "tok",
            "data-method": m,
            "data-rollout": String(i),
            "data-t": String(t),
            style: `background:${colour(value, scales[m])}`,
            text: chipText(state.labels[i][t]),
          });
          tokens.append(chip);
        });
        cell.append(tokens);
        const note = contextNote(result, i);
        if (note) cell.append(note);
        grid.append(cell);
      }
    });
    root.append(grid);
  }

  /** The tooltip's content for the chip under the pointer. */
  function tooltipFor(state, chip) {
    const m = chip.dataset.method;
    const i = Number(chip.dataset.rollout);
    const t = Number(chip.dataset.t);
    const n = tokenNumbers(state.results[m], i, t);
    const id = state.group.rollouts[i].response_ids[t];
    const rows = [
      ["method", m, "method"],
      ["token", `${JSON.stringify(state.labels[i][t])} id ${id} · rollout #${i} · t ${t}`, "token"],
      ["student log p", fmt(n.student), "student"],
      ["teacher log p", fmt(n.teacher), "teacher"],
      ["u_t", fmt(n.signal), "signal"],
      ["advantage", fmt(n.advantage), "advantage"],
      ["mask", n.masked ? "0 (rollout masked: no teacher context)" : "1", "mask"],
    ];
    const table = el("table");
    for (const [name, value, key] of rows) {
      table.append(el("tr", {}, el("th", { text: name }), el("td", { "data-field": key, text: value })));
    }
    return table;
  }

  return { colour, fmt, chipText, firstDivergence, divergences, tokenNumbers, scaleOf, render, tooltipFor };
})();
