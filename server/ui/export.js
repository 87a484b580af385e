// Export of the current view: the heatmaps drawn on a canvas (PNG, no libraries) and the
// requests and answers behind them (JSON).
"use strict";

const exporter = (() => {
  const FONT = "13px ui-monospace, Menlo, Consolas, monospace";
  const HEAD_FONT = "bold 14px system-ui, sans-serif";
  const SMALL_FONT = "12px system-ui, sans-serif";
  const COLUMN = 380; // width of one method's column, CSS pixels
  const LEFT = 130; // the rollout labels
  const PAD = 16;
  const CHIP_H = 20;
  const NOTE_H = 18; // the teacher-context line under a cell's chips

  /** Token chips of one cell laid out in `width`: [{x, y, w, text, t}], and the height used. */
  function layoutChips(ctx, labels, width) {
    ctx.font = FONT;
    const chips = [];
    let x = 0;
    let y = 0;
    labels.forEach((label, t) => {
      const text = view.chipText(label);
      const w = Math.ceil(ctx.measureText(text).width) + 6;
      if (x > 0 && x + w > width) {
        x = 0;
        y += CHIP_H + 4;
      }
      chips.push({ x, y, w, text, t });
      x += w + 2;
    });
    return { chips, height: y + CHIP_H };
  }

  /** One line on the teacher context of rollout i under a method: peer, mask, AMR-SD reflection. */
  function contextLine(result, i) {
    const d = result.groups[0].rollouts[i].details;
    if (!d) return "";
    const bits = [];
    if (d.peer_index !== null && d.peer_index !== undefined) bits.push(`peer #${d.peer_index}`);
    if (d.masked) bits.push("masked");
    if (d.reflection) bits.push(`<${d.reflection.kind}> ${d.reflection.text || "∅"}`);
    return bits.join(" · ");
  }

  /** `text` cut with "…" to fit `width` in the current font. */
  function fit(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    let n = text.length;
    while (n > 0 && ctx.measureText(`${text.slice(0, n)}…`).width > width) n--;
    return `${text.slice(0, n)}…`;
  }

  /** A canvas with the same content as the view: stats per method, then one band per rollout. */
  function renderCanvas(state, pixelRatio = 2) {
    const methods = state.methods.filter((m) => state.results[m]);
    const field = state.colour;
    const scales = Object.fromEntries(methods.map((m) => [m, view.scaleOf(state.results[m], field)]));
    const diverge = view.divergences(state.group, state.results);
    const probe = document.createElement("canvas").getContext("2d");
    const inner = COLUMN - 2 * PAD;
    const bands = state.group.rollouts.map((rollout, i) => {
      const cells = methods.map(() => layoutChips(probe, state.labels[i], inner));
      return { cells, height: Math.max(...cells.map((c) => c.height)) + NOTE_H + 2 * PAD };
    });
    const headerH = 96;
    const width = LEFT + methods.length * COLUMN + PAD;
    const height = headerH + bands.reduce((s, b) => s + b.height, 0) + PAD;

    const canvas = document.createElement("canvas");
    canvas.width = Math.ceil(width * pixelRatio);
    canvas.height = Math.ceil(height * pixelRatio);
    const ctx = canvas.getContext("2d");
    ctx.scale(pixelRatio, pixelRatio);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, width, height);
    ctx.textBaseline = "middle";

    ctx.fillStyle = "#111";
    ctx.font = HEAD_FONT;
    const title = `${state.group.problem || "(no problem)"} — colour: ${field === "signal" ? "u_t" : "advantage"}`;
    ctx.fillText(title, PAD, 20);
    methods.forEach((m, c) => {
      const x0 = LEFT + c * COLUMN + PAD;
      const s = state.results[m].stats;
      ctx.font = HEAD_FONT;
      ctx.fillStyle = "#111";
      ctx.fillText(m, x0, 46);
      ctx.font = SMALL_FONT;
      ctx.fillStyle = "#444";
      const parts = [`masked ${s.masked_rollouts}/${s.rollouts}`];
      if (s.gate !== null && s.gate !== undefined) parts.push(`gate ${s.gate}`);
      if (s.mean_abs_signal !== null) parts.push(`mean |u| ${s.mean_abs_signal.toFixed(4)}`);
      ctx.fillText(parts.join(" · "), x0, 64);
      const scale = scales[m];
      for (let k = 0; k < 40; k++) {
        ctx.fillStyle = view.colour(((k - 19.5) / 19.5) * scale, scale);
        ctx.fillRect(x0 + k * 3, 76, 3, 10);
      }
      ctx.fillStyle = "#444";
      ctx.fillText(`±${scale.toPrecision(3)}`, x0 + 126, 81);
    });

    let y = headerH;
    bands.forEach((band, i) => {
      const rollout = state.group.rollouts[i];
      ctx.strokeStyle = "#ddd";
      ctx.beginPath();
      ctx.moveTo(PAD, y);
      ctx.lineTo(width - PAD, y);
      ctx.stroke();
      ctx.font = HEAD_FONT;
      ctx.fillStyle = rollout.reward > 0 ? "#1a7f37" : "#b42318";
      ctx.fillText(`#${i}  r=${rollout.reward}`, PAD, y + PAD + 10);
      if (diverge[i]) {
        ctx.font = SMALL_FONT;
        ctx.fillStyle = "#b42318";
        ctx.fillText(`▼ t=${diverge[i].t} vs #${diverge[i].peer}`, PAD, y + PAD + 30);
      }
      methods.forEach((m, c) => {
        const x0 = LEFT + c * COLUMN + PAD;
        const y0 = y + PAD;
        ctx.font = FONT;
        for (const chip of band.cells[c].chips) {
          const n = view.tokenNumbers(state.results[m], i, chip.t);
          const value = field === "signal" ? n.signal || 0 : n.advantage;
          ctx.fillStyle = view.colour(value, scales[m]);
          ctx.fillRect(x0 + chip.x, y0 + chip.y, chip.w, CHIP_H);
          if (diverge[i] && diverge[i].t === chip.t) {
            ctx.strokeStyle = "#b42318";
            ctx.lineWidth = 2;
            ctx.strokeRect(x0 + chip.x, y0 + chip.y, chip.w, CHIP_H);
            ctx.lineWidth = 1;
          }
          ctx.fillStyle = "#111";
          ctx.fillText(chip.text, x0 + chip.x + 3, y0 + chip.y + CHIP_H / 2 + 1);
        }
        ctx.font = SMALL_FONT;
        ctx.fillStyle = "#6639ba";
        const note = contextLine(state.results[m], i);
        ctx.fillText(fit(ctx, note, inner), x0, y0 + band.cells[c].height + NOTE_H / 2 + 4);
      });
      y += band.height;
    });
    return canvas;
  }

  /** Everything behind the view: the /v1/advantages requests and answers, the token texts. */
  function snapshot(state) {
    return {
      created: new Date().toISOString(),
      server: location.origin,
      colour: state.colour,
      labels: state.labels,
      requests: state.requests,
      responses: state.results,
      errors: state.errors,
    };
  }

  function download(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function savePng(state) {
    renderCanvas(state).toBlob((blob) => download(blob, "credit-explorer.png"), "image/png");
  }

  function saveJson(state) {
    const text = JSON.stringify(snapshot(state), null, 1);
    download(new Blob([text], { type: "application/json" }), "credit-explorer.json");
  }

  return { renderCanvas, snapshot, savePng, saveJson };
})();
