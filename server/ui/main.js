// Wiring: the form → the public API (api.js) → the view (view.js) and the exports (export.js).
"use strict";

const explorer = (() => {
  const ALL_METHODS = ["grpo", "dr_grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd"];
  const DEFAULT_METHODS = ["hsd", "antisd", "amrsd"];
  // Fields of a rollout the page sends on to /v1/advantages; `tokens` (labels) stays here.
  const PAGE_ONLY = ["tokens"];
  // A group of the embedded model's task (server/default_model/TRAINING.md): two correct
  // rollouts, two that slip at the second step, one at the first.
  const DEMO = {
    problem: "What is 37+48-19?",
    reference_answer: "66",
    reference_solution: "37+48=85. 85-19=66. \\boxed{66}",
    rollouts: [
      { text: "37+48=85. 85-19=66. \\boxed{66}" },
      { text: "37+48=85. 85-19=76. \\boxed{76}" },
      { text: "37+48=75. 75-19=56. \\boxed{56}" },
      { text: "37+48=85. 85-19=66. \\boxed{66}" },
      { text: "37+48=85. 85-19=64. \\boxed{64}" },
    ],
  };

  const $ = (id) => document.getElementById(id);
  let state = null; // the last computed view: {group, labels, methods, results, requests, errors, colour}

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(messages) {
    const box = $("error");
    box.replaceChildren();
    if (!messages.length) {
      box.hidden = true;
      return;
    }
    for (const m of messages) {
      const line = document.createElement("div");
      line.textContent = m;
      box.append(line);
    }
    box.hidden = false;
  }

  function messageOf(exc) {
    return exc instanceof api.ApiError ? exc.message : `${exc.name || "Error"}: ${exc.message || exc}`;
  }

  function selectedMethods() {
    return [...document.querySelectorAll("#methods input:checked")].map((i) => i.value);
  }

  function drawMethodBoxes(methods) {
    const box = $("methods");
    const shown = [...box.querySelectorAll("input")].map((i) => i.value);
    if (shown.join() === methods.join()) return; // keep the user's choice and the elements
    const checked = new Set(box.querySelector("input") ? selectedMethods() : DEFAULT_METHODS);
    box.querySelectorAll("label").forEach((l) => l.remove());
    for (const m of methods) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = m;
      input.checked = checked.has(m);
      label.append(input, ` ${m}`);
      box.append(label);
    }
  }

  /** The methods the server offers (GET /v1/model); the nine of the contract until it answers. */
  async function loadModel() {
    try {
      const info = await api.model();
      drawMethodBoxes(info.methods);
      setStatus(`model ${info.model.split("/").pop()} · ${info.backend} · ${info.device} · weights v${info.weights_version}`);
      showError([]);
    } catch (exc) {
      const hint = exc.status === 401 || exc.status === 403 ? " (enter the API key above)" : "";
      showError([messageOf(exc) + hint]);
    }
  }

  function loadDemo() {
    $("problem").value = DEMO.problem;
    $("reference-answer").value = DEMO.reference_answer;
    $("reference-solution").value = DEMO.reference_solution;
    $("rollouts").value = JSON.stringify(DEMO.rollouts, null, 1);
  }

  function readRollouts() {
    let rollouts;
    try {
      rollouts = JSON.parse($("rollouts").value || "[]");
    } catch (exc) {
      throw new Error(`Rollouts: not valid JSON (${exc.message})`);
    }
    if (!Array.isArray(rollouts) || !rollouts.length) {
      throw new Error("Rollouts: give a JSON list with at least one rollout");
    }
    rollouts.forEach((r, i) => {
      if (typeof r !== "object" || r === null || Array.isArray(r)) {
        throw new Error(`Rollouts[${i}]: each rollout is an object such as {"text": "…"}`);
      }
      if (r.response_ids === undefined && typeof r.text !== "string") {
        throw new Error(`Rollouts[${i}]: give "text" or "response_ids"`);
      }
    });
    return rollouts;
  }

  /** {method: {name: value}} from the params field; an unknown name is the server's 422. */
  function readParams() {
    const text = $("params").value.trim();
    if (!text) return {};
    let params;
    try {
      params = JSON.parse(text);
    } catch (exc) {
      throw new Error(`Params: not valid JSON (${exc.message})`);
    }
    if (typeof params !== "object" || params === null || Array.isArray(params)) {
      throw new Error('Params: give an object per method, e.g. {"hsd": {"mix": 0.5}}');
    }
    return params;
  }

  /** The group as /v1/advantages takes it, plus the token texts: tokenize, label, verify. */
  async function buildGroup() {
    const problem = $("problem").value.trim();
    const answer = $("reference-answer").value.trim();
    const solution = $("reference-solution").value.trim();
    const given = readRollouts();
    setStatus("tokenizing…");
    const labels = [];
    const rollouts = [];
    for (const r of given) {
      const wire = Object.fromEntries(Object.entries(r).filter(([k]) => !PAGE_ONLY.includes(k)));
      if (wire.response_ids === undefined) wire.response_ids = await api.tokenize(r.text);
      if (Array.isArray(r.tokens) && Array.isArray(wire.response_ids) && r.tokens.length === wire.response_ids.length) {
        labels.push(r.tokens.map(String));
      } else if (typeof r.text === "string" && r.response_ids === undefined) {
        labels.push(await api.tokenLabels(r.text, wire.response_ids));
      } else {
        labels.push(Array.isArray(wire.response_ids) ? wire.response_ids.map((id) => `#${id}`) : []);
      }
      rollouts.push(wire);
    }
    const unverified = rollouts.filter((r) => r.reward === undefined);
    if (unverified.length) {
      if (!answer) throw new Error("Rollouts without a reward need a reference answer to verify them");
      if (unverified.some((r) => typeof r.text !== "string")) {
        throw new Error("A rollout without a reward needs its text, to verify its answer");
      }
      setStatus("verifying answers (POST /get_reward)…");
      const rewards = await api.rewards(unverified.map((r) => r.text), answer);
      unverified.forEach((r, k) => {
        r.reward = rewards[k];
      });
    }
    const group = { rollouts };
    if (problem) group.problem = problem;
    if (answer) group.reference_answer = answer;
    if (solution) group.reference_solution = solution;
    return { group, labels };
  }

  async function run() {
    showError([]);
    const methods = selectedMethods();
    if (!methods.length) {
      showError(["Pick at least one method"]);
      return;
    }
    $("run").disabled = true;
    try {
      const params = readParams();
      const { group, labels } = await buildGroup();
      const seed = Number($("seed").value) || 0;
      const step = Number($("step").value) || 0;
      setStatus(`POST /v1/advantages × ${methods.length}…`);
      const results = {};
      const requests = {};
      const errors = {};
      await Promise.all(
        methods.map(async (m) => {
          requests[m] = api.advantagesRequest(m, group, { seed, step, params: params[m] });
          try {
            results[m] = await api.advantages(requests[m]);
          } catch (exc) {
            errors[m] = messageOf(exc);
          }
        }),
      );
      state = { group, labels, methods, results, requests, errors, colour: colourMode() };
      view.render($("view"), state);
      showError(methods.filter((m) => errors[m]).map((m) => `${m}: ${errors[m]}`));
      const done = methods.filter((m) => results[m]).length;
      setStatus(`${done} of ${methods.length} methods scored · ${group.rollouts.length} rollouts`);
      $("export-png").disabled = $("export-json").disabled = done === 0;
    } catch (exc) {
      showError([messageOf(exc)]);
      setStatus("");
    } finally {
      $("run").disabled = false;
    }
  }

  async function sample() {
    showError([]);
    const problem = $("problem").value.trim();
    if (!problem) {
      showError(["Sampling needs a problem"]);
      return;
    }
    $("sample").disabled = true;
    setStatus("sampling (POST /v1/completions)…");
    try {
      const n = Math.max(1, Math.min(16, Number($("sample-n").value) || 1));
      const temperature = Number($("sample-temperature").value);
      const rollouts = await api.sample(problem, n, temperature, Number($("seed").value) || 0);
      $("rollouts").value = JSON.stringify(rollouts, null, 1);
      setStatus(`${rollouts.length} rollouts sampled`);
    } catch (exc) {
      showError([messageOf(exc)]);
      setStatus("");
    } finally {
      $("sample").disabled = false;
    }
  }

  function colourMode() {
    return document.querySelector("input[name=colour]:checked").value;
  }

  function placeTooltip(event) {
    const tip = $("tooltip");
    const chip = event.target.closest(".tok");
    if (!chip || !state) {
      tip.hidden = true;
      return;
    }
    tip.replaceChildren(view.tooltipFor(state, chip));
    tip.hidden = false;
    const r = chip.getBoundingClientRect();
    const left = Math.min(window.innerWidth - tip.offsetWidth - 8, r.left);
    tip.style.left = `${Math.max(8, left) + window.scrollX}px`;
    tip.style.top = `${r.bottom + 6 + window.scrollY}px`;
  }

  function init() {
    const key = $("api-key");
    key.value = api.apiKey();
    key.addEventListener("change", () => {
      api.setApiKey(key.value.trim());
      loadModel();
    });
    drawMethodBoxes(ALL_METHODS);
    $("demo").addEventListener("click", loadDemo);
    $("run").addEventListener("click", run);
    $("sample").addEventListener("click", sample);
    $("export-png").addEventListener("click", () => state && exporter.savePng(state));
    $("export-json").addEventListener("click", () => state && exporter.saveJson(state));
    document.querySelectorAll("input[name=colour]").forEach((input) =>
      input.addEventListener("change", () => {
        if (!state) return;
        state.colour = colourMode();
        view.render($("view"), state);
      }),
    );
    $("view").addEventListener("mouseover", placeTooltip);
    $("view").addEventListener("mouseleave", () => {
      $("tooltip").hidden = true;
    });
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
  return { state: () => state, loadDemo, run, sample, DEMO };
})();
