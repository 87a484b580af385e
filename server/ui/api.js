// Every HTTP call the credit explorer makes: the public API only, the same requests a user's
// script would send (docs/api.md). Read this file as a worked example of the API.
"use strict";

const api = (() => {
  const KEY_STORAGE = "tokencredit.apiKey";
  // The server's student prompt (proto/prompts.py STUDENT); /v1/advantages builds the same
  // prompt from `problem` when a group has no prompt_ids, so sampled rollouts match what is scored.
  const STUDENT_INSTRUCTION =
    "Please reason step by step, and put your final answer within \\boxed{}.";

  /** A failed call: the route, the HTTP status and the server's {"error": {type, message, field}}. */
  class ApiError extends Error {
    constructor(route, status, error) {
      const where = error.field ? ` (field ${error.field})` : "";
      super(`${route} → ${status || "no answer"} ${error.type}: ${error.message}${where}`);
      this.route = route;
      this.status = status;
      this.error = error;
    }
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function setApiKey(key) {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  async function call(verb, path, body) {
    const route = `${verb} ${path}`;
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (apiKey()) headers.authorization = `Bearer ${apiKey()}`;
    let response;
    try {
      // location.origin, not a relative path: a page opened as http://user:key@host/ui has
      // credentials in its URL, and fetch refuses URLs that carry credentials.
      response = await fetch(location.origin + path, {
        method: verb,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (exc) {
      throw new ApiError(route, 0, { type: "network_error", message: String(exc.message || exc) });
    }
    const text = await response.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {
        type: "http_error",
        message: text.slice(0, 300) || response.statusText,
      };
      throw new ApiError(route, response.status, error);
    }
    return data;
  }

  /** GET /v1/model: name, backend, methods. */
  function model() {
    return call("GET", "/v1/model");
  }

  /** POST /v1/tokenize {"text"} → token ids (no special tokens). */
  async function tokenize(text) {
    return (await call("POST", "/v1/tokenize", { text })).ids;
  }

  /** POST /v1/tokenize {"messages", "add_generation_prompt"}: the chat-templated student prompt. */
  async function studentPromptIds(problem) {
    const content = `${problem}\n\n${STUDENT_INSTRUCTION}`;
    const body = { messages: [{ role: "user", content }], add_generation_prompt: true };
    return (await call("POST", "/v1/tokenize", body)).ids;
  }

  /**
   * The text of each token of `ids` (the tokenization of `text`). The API has no detokenize
   * route, so: the first m tokens cover text[:k] exactly when tokenize(text[:k]) equals ids[:m].
   * One /v1/tokenize call per character, a few at a time; long texts get "#id" labels.
   */
  async function tokenLabels(text, ids, maxChars = 2000) {
    const chars = Array.from(text); // code points, so a prefix never splits a character
    if (chars.length > maxChars) return ids.map((id) => `#${id}`);
    const prefixIds = new Array(chars.length);
    let next = 0;
    async function worker() {
      while (next < chars.length) {
        const k = next++;
        prefixIds[k] = await tokenize(chars.slice(0, k + 1).join(""));
      }
    }
    await Promise.all(Array.from({ length: 6 }, worker));
    const labels = ids.map((id) => `#${id}`);
    let covered = 0; // tokens labelled so far
    let start = 0; // first character not yet assigned
    for (let k = 0; k < chars.length; k++) {
      const prefix = prefixIds[k];
      const m = prefix.length;
      if (m > covered && m <= ids.length && prefix.every((id, j) => id === ids[j])) {
        labels[covered] = chars.slice(start, k + 1).join("");
        for (let j = covered + 1; j < m; j++) labels[j] = ""; // bytes of one character
        covered = m;
        start = k + 1;
      }
    }
    return labels;
  }

  /** POST /get_reward (OpenRLHF's protocol): 1.0 when the final answer matches the reference. */
  async function rewards(texts, referenceAnswer) {
    const body = { query: texts, labels: texts.map(() => referenceAnswer) };
    return (await call("POST", "/get_reward", body)).rewards;
  }

  /** The /v1/advantages request for one method and one group, with the per-token details;
   *  `params` (the method's overrides) and `step` (annealing) are sent only when set. */
  function advantagesRequest(method, group, { seed = 0, params = null, step = 0 } = {}) {
    const body = { method, seed, return_details: true, groups: [group] };
    if (params && Object.keys(params).length) body.params = params;
    if (step) body.step = step;
    return body;
  }

  /** POST /v1/advantages: per-token credit, advantages and details per rollout, stats. */
  function advantages(body) {
    return call("POST", "/v1/advantages", body);
  }

  /**
   * n rollouts of the served model for `problem`, as [{text}], through the vLLM-compatible
   * POST /v1/completions (token-id prompt, n samples, seed). The one place that knows which route
   * generates rollouts: a server without it answers 404, shown to the user as such.
   */
  async function sample(problem, n, temperature, seed) {
    const prompt = await studentPromptIds(problem);
    let out;
    try {
      // No "model": vLLM's completions default to the served model.
      out = await call("POST", "/v1/completions", {
        prompt: [prompt],
        n,
        temperature,
        seed,
        max_tokens: 128,
      });
    } catch (exc) {
      // Starlette's "Not Found" is a route this server lacks (not, say, an unknown model).
      if (exc.status !== 404 || exc.error.message !== "Not Found") throw exc;
      throw new ApiError(exc.route, 404, {
        type: "not_found",
        message: "this server has no sampling route (POST /v1/completions); paste rollouts or load the demo",
      });
    }
    return out.choices.map((choice) => ({ text: choice.text }));
  }

  return {
    ApiError,
    apiKey,
    setApiKey,
    model,
    tokenize,
    studentPromptIds,
    tokenLabels,
    rewards,
    advantagesRequest,
    advantages,
    sample,
  };
})();
