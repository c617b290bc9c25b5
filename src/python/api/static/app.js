// Phoenix page: submit a prompt, then follow each creation until it is finished.
//
// Everything goes through the JSON API. Unfinished creations are polled about once a second
// with If-None-Match, so an unchanged creation costs the server a record read and a 304.
// User text is only ever set with textContent (never innerHTML): prompts are user input.
// Each creation has its controls: Cancel while queued or generating, Retry once failed or
// cancelled, Delete (after a confirmation) once finished; the list changes in place.
"use strict";

(function () {
  const POLL_MS = 1000;
  const LIST_LIMIT = 50;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const STATUS_LABEL = {
    pending: "Queued",
    processing: "Generating",
    completed: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
  };
  const CAN_CANCEL = new Set(["pending", "processing"]);
  const CAN_RETRY = new Set(["failed", "cancelled"]);

  // ?user=alice acts as another local user; without it the server's default ("local") applies.
  const user = new URLSearchParams(window.location.search).get("user");
  // The browser's own media requests (<img>, <video>) carry no header; the server serves media
  // only to its owner, so the same identity also travels as a cookie (local mode only).
  // (User ids are [A-Za-z0-9_.@-]: cookie-safe as they are; anything else the server refuses.)
  document.cookie =
    user && /^[A-Za-z0-9_.@-]{1,128}$/.test(user)
      ? "phoenix_user=" + user + "; path=/; SameSite=Strict"
      : "phoenix_user=; path=/; max-age=0; SameSite=Strict";

  const $ = (id) => document.getElementById(id);
  const form = $("generate-form");
  const promptInput = $("prompt");
  const submitButton = $("submit");
  const errorBox = $("error");
  const list = $("creations");
  const template = $("creation-template");

  const cards = new Map(); // id -> {el, etag, status}
  let pollTimer = null;

  // --- API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body;
    }
  }

  async function api(path, { method = "GET", body, etag } = {}) {
    const headers = { Accept: "application/json" };
    if (user) headers["X-Phoenix-User"] = user;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (etag) headers["If-None-Match"] = etag;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", // we do our own revalidation; a 304 must reach this code
      });
    } catch (err) {
      throw new ApiError(0, "network", "Cannot reach the server. Is it running?");
    }
    if (response.status === 304) return { status: 304, etag, data: null, response };
    if (response.status === 204) return { status: 204, etag: null, data: null, response };
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(
        response.status,
        e.code || "http_" + response.status,
        e.message || "The server answered " + response.status + ".",
        data,
      );
    }
    return { status: response.status, etag: response.headers.get("ETag"), data, response };
  }

  // --- Kinds: what the API makes, read from its OpenAPI document -------------------------
  // One POST /api/generate/<kind> operation per kind; its request schema (pydantic's, with a
  // title, and x-labels / x-unit for display) gives the form's fields. Nothing here names a kind.

  const kinds = new Map(); // kind -> {label, fields: [[name, schema], ...]}

  async function loadKinds() {
    const { data } = await api("/api/openapi.json");
    for (const [path, item] of Object.entries(data.paths)) {
      const match = /^\/api\/generate\/([a-z][a-z0-9]*)$/.exec(path);
      if (!match || !item.post) continue;
      const ref = item.post.requestBody.content["application/json"].schema.$ref;
      const schema = data.components.schemas[ref.split("/").pop()];
      const fields = Object.entries(schema.properties).filter(([name]) => name !== "prompt");
      kinds.set(match[1], { label: item.post["x-kind-label"] || match[1], fields });
    }
    buildKindControls();
  }

  function buildKindControls() {
    const choice = $("kinds");
    const holder = $("kind-options");
    for (const [kind, spec] of kinds) {
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "kind";
      radio.id = "kind-" + kind;
      radio.value = kind;
      radio.checked = choice.childElementCount === 0;
      radio.addEventListener("change", () => showOptionsFor(selectedKind()));
      const label = document.createElement("label");
      label.htmlFor = radio.id;
      label.textContent = spec.label;
      choice.append(radio, label);
      const options = document.createElement("div");
      options.className = "options";
      options.id = "options-" + kind;
      options.dataset.kind = kind;
      for (const [name, schema] of spec.fields) options.appendChild(fieldControl(kind, name, schema));
      holder.appendChild(options);
    }
    showOptionsFor(selectedKind());
  }

  // A <select> for a choice (enum), a number input for an integer range; id "<kind>-<field>".
  function fieldControl(kind, name, schema) {
    const label = document.createElement("label");
    label.append(schema.title || name);
    let control;
    if (schema.enum) {
      control = document.createElement("select");
      schema.enum.forEach((value, i) => {
        const option = document.createElement("option");
        option.value = String(value);
        option.textContent = (schema["x-labels"] || [])[i] || String(value);
        option.selected = value === schema.default;
        control.appendChild(option);
      });
    } else {
      control = document.createElement("input");
      control.type = schema.type === "integer" ? "number" : "text";
      if (schema.type === "integer") control.step = "1";
      if (schema.minimum !== undefined) control.min = String(schema.minimum);
      if (schema.maximum !== undefined) control.max = String(schema.maximum);
      if (schema.default !== undefined) control.value = String(schema.default);
    }
    control.id = kind + "-" + name.replace(/_/g, "-");
    control.name = name;
    control.dataset.type = schema.type;
    label.appendChild(control);
    return label;
  }

  function kindLabel(kind) {
    const spec = kinds.get(kind);
    return spec ? spec.label : kind;
  }

  // --- Form ------------------------------------------------------------------------------

  function selectedKind() {
    const checked = form.querySelector('input[name="kind"]:checked');
    return checked ? checked.value : null;
  }

  function showOptionsFor(kind) {
    for (const el of document.querySelectorAll(".options")) {
      el.hidden = el.dataset.kind !== kind;
    }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function requestBody(kind) {
    const body = { prompt: promptInput.value };
    for (const el of $("options-" + kind).querySelectorAll("select, input")) {
      body[el.name] = el.dataset.type === "integer" ? Number(el.value) : el.value;
    }
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    if (submitButton.disabled) return;
    showError("");
    const kind = selectedKind();
    if (!kind) {
      showError("The page is still loading; try again in a moment.");
      return;
    }
    submitButton.disabled = true;
    submitButton.textContent = "Sending…";
    try {
      const { data } = await api("/api/generate/" + kind, {
        method: "POST",
        body: requestBody(kind),
      });
      upsert(data, null, { prepend: true });
      promptInput.value = "";
      updateCount();
      schedulePoll(0);
    } catch (err) {
      showError(err.message);
      await showSavedCreation(err);
    } finally {
      submitButton.disabled = false;
      submitButton.textContent = "Generate";
    }
  }

  // A 503 from a generate or retry call: the creation was saved and starts by itself (the
  // sweeper dispatches it), so it is shown in the list like any other.
  async function showSavedCreation(err) {
    const id = err.body && err.body.error && err.body.error.creation_id;
    if (!id) return;
    try {
      const { data, etag } = await api("/api/creations/" + encodeURIComponent(id));
      upsert(data, etag, { prepend: true });
      schedulePoll(POLL_MS);
    } catch (ignored) {
      /* the message already shown says what happened */
    }
  }

  function updateCount() {
    $("prompt-count").textContent = String(promptInput.value.length);
  }

  // --- Creations list --------------------------------------------------------------------

  function paramsText(c) {
    const p = c.params || {};
    const spec = kinds.get(c.kind);
    const parts = [];
    for (const [name, schema] of spec ? spec.fields : []) {
      const value = p[name];
      if (value === undefined || value === null) continue;
      const unit = schema["x-unit"]; // [singular, plural]
      parts.push(unit ? value + " " + unit[value === 1 ? 0 : 1] : String(value));
    }
    return parts.join(" · ");
  }

  function renderMedia(container, c) {
    container.replaceChildren();
    for (const m of c.media || []) {
      if (m.mime_type.startsWith("video/")) {
        const video = document.createElement("video");
        video.controls = true;
        video.playsInline = true;
        video.preload = "metadata";
        video.src = m.url;
        video.dataset.testid = "result-video";
        container.appendChild(video);
      } else if (m.mime_type.startsWith("audio/")) {
        const audio = document.createElement("audio");
        audio.controls = true;
        audio.preload = "metadata";
        audio.src = m.url;
        container.appendChild(audio);
      } else {
        const link = document.createElement("a");
        link.href = m.url;
        link.target = "_blank";
        link.rel = "noopener";
        const img = document.createElement("img");
        img.src = m.url;
        img.alt = c.prompt;
        img.dataset.testid = "result-image";
        link.appendChild(img);
        container.appendChild(link);
      }
    }
    container.classList.toggle("grid", (c.media || []).length > 1);
  }

  function render(card, c) {
    const el = card.el;
    const statusChanged = card.status !== c.status;
    el.dataset.status = c.status;
    el.dataset.kind = c.kind;
    el.querySelector('[data-testid="kind"]').textContent = kindLabel(c.kind);
    const statusEl = el.querySelector('[data-testid="status"]');
    const stopping = !TERMINAL.has(c.status) && c.cancel_requested_at;
    statusEl.textContent = stopping
      ? "Cancelling…"
      : c.status === "processing"
        ? STATUS_LABEL.processing + " · " + c.progress + "%"
        : STATUS_LABEL[c.status] || c.status;
    statusEl.className = "status status-" + c.status;
    const when = el.querySelector("time");
    when.dateTime = c.created_at;
    when.textContent = new Date(c.created_at).toLocaleString();
    el.querySelector('[data-testid="prompt"]').textContent = c.prompt;
    el.querySelector('[data-testid="params"]').textContent = paramsText(c);
    const progress = el.querySelector("progress");
    progress.value = c.progress;
    progress.hidden = TERMINAL.has(c.status);
    if (c.status === "pending") progress.removeAttribute("value"); // indeterminate while queued
    const errorEl = el.querySelector('[data-testid="creation-error"]');
    if (c.status === "failed" && c.error) {
      errorEl.textContent = c.error.message + " (" + c.error.code + ")";
      errorEl.dataset.code = c.error.code;
      errorEl.hidden = false;
    } else {
      errorEl.hidden = true;
    }
    const noteEl = el.querySelector('[data-testid="creation-note"]');
    if (c.status === "cancelled") {
      noteEl.textContent = c.provider_started
        ? "Cancelled after the generation had started: the provider may still charge for it."
        : "Cancelled before any generation started: nothing was spent on it.";
      noteEl.hidden = false;
    } else {
      noteEl.hidden = true;
    }
    const buttons = actionButtons(el);
    buttons.cancel.hidden = !CAN_CANCEL.has(c.status);
    buttons.cancel.disabled = Boolean(stopping);
    buttons.cancel.textContent = stopping ? "Cancelling…" : "Cancel";
    buttons.retry.hidden = !CAN_RETRY.has(c.status);
    buttons.delete.hidden = !TERMINAL.has(c.status);
    // Media elements are created once, when the creation completes (re-creating a <video>
    // would restart playback).
    if (statusChanged && c.status === "completed") {
      renderMedia(el.querySelector('[data-testid="media"]'), c);
    }
    card.status = c.status;
  }

  function actionButtons(el) {
    return {
      cancel: el.querySelector('[data-action="cancel"]'),
      retry: el.querySelector('[data-action="retry"]'),
      delete: el.querySelector('[data-action="delete"]'),
    };
  }

  function announce(message) {
    $("list-status").textContent = message;
  }

  // --- Controls --------------------------------------------------------------------------

  function label(c) {
    const text = c.prompt.length > 40 ? c.prompt.slice(0, 40) + "…" : c.prompt;
    return c.kind + " “" + text + "”";
  }

  async function cancelCreation(id, card, button) {
    showError("");
    button.disabled = true;
    try {
      const { data, etag } = await api("/api/creations/" + encodeURIComponent(id) + "/cancel", {
        method: "POST",
      });
      upsert(data, etag);
      announce(data.status === "cancelled" ? "Cancelled." : "Cancelling: it stops within seconds.");
      schedulePoll(POLL_MS);
      // Focus stays useful: on Retry/Delete once the button itself went away.
      if (button.hidden) focusCard(card);
    } catch (err) {
      showError(err.message);
      if (err.status === 404) removeCard(id);
      else if (err.status === 409) refresh(id);
    } finally {
      if (!button.hidden) button.disabled = Boolean(card.data && card.data.cancel_requested_at);
    }
  }

  async function deleteCreation(id, card, button) {
    const c = card.data;
    if (!window.confirm("Delete the " + label(c) + " and its files? This cannot be undone.")) {
      return;
    }
    showError("");
    button.disabled = true;
    try {
      await api("/api/creations/" + encodeURIComponent(id), { method: "DELETE" });
      const next = card.el.nextElementSibling || card.el.previousElementSibling;
      removeCard(id);
      announce("Deleted.");
      if (next) focusCard(cards.get(next.dataset.id));
      else $("results-title").focus();
    } catch (err) {
      button.disabled = false;
      showError(err.message);
      if (err.status === 404) removeCard(id);
      else if (err.status === 409) refresh(id);
    }
  }

  async function retryCreation(id, card, button) {
    showError("");
    button.disabled = true;
    try {
      const { data } = await api("/api/creations/" + encodeURIComponent(id) + "/retry", {
        method: "POST",
      });
      upsert(data, null, { prepend: true });
      announce("Retrying as a new creation.");
      focusCard(cards.get(data.id));
      schedulePoll(0);
    } catch (err) {
      showError(err.message);
      await showSavedCreation(err);
      if (err.status === 404) removeCard(id);
    } finally {
      button.disabled = false;
    }
  }

  async function refresh(id) {
    try {
      const { data, etag } = await api("/api/creations/" + encodeURIComponent(id));
      upsert(data, etag);
    } catch (err) {
      if (err.status === 404) removeCard(id);
    }
  }

  function removeCard(id) {
    const card = cards.get(id);
    if (!card) return;
    card.el.remove();
    cards.delete(id);
    $("empty").hidden = cards.size > 0;
  }

  function focusCard(card) {
    if (!card) return;
    const visible = [...card.el.querySelectorAll("button.action")].find((b) => !b.hidden);
    (visible || card.el).focus();
  }

  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const el = button.closest(".creation");
    const card = el && cards.get(el.dataset.id);
    if (!card) return;
    const action = button.dataset.action;
    if (action === "cancel") cancelCreation(el.dataset.id, card, button);
    else if (action === "delete") deleteCreation(el.dataset.id, card, button);
    else if (action === "retry") retryCreation(el.dataset.id, card, button);
  });

  function upsert(c, etag, { prepend = false } = {}) {
    let card = cards.get(c.id);
    if (!card) {
      const el = template.content.firstElementChild.cloneNode(true);
      el.dataset.id = c.id;
      el.tabIndex = -1; // focus target after a delete or retry (not in the Tab order)
      el.setAttribute("aria-label", label(c));
      card = { el, etag: null, status: null };
      cards.set(c.id, card);
      if (prepend) list.prepend(el);
      else list.appendChild(el);
    }
    if (etag) card.etag = etag;
    card.data = c;
    render(card, c);
    $("empty").hidden = cards.size > 0;
  }

  // --- Polling ---------------------------------------------------------------------------

  function schedulePoll(delay) {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = setTimeout(pollOnce, delay);
  }

  async function pollOnce() {
    pollTimer = null;
    const active = [...cards.entries()].filter(([, card]) => !TERMINAL.has(card.status));
    if (active.length === 0) return;
    await Promise.all(
      active.map(async ([id, card]) => {
        try {
          const r = await api("/api/creations/" + encodeURIComponent(id), { etag: card.etag });
          if (r.status === 304) return;
          upsert(r.data, r.etag);
        } catch (err) {
          if (err.status === 404) removeCard(id); // deleted elsewhere (another tab)
          // Other errors (network blips, 503): keep polling; the next tick retries.
        }
      }),
    );
    $("list-status").textContent = "";
    if (pollTimer === null) schedulePoll(POLL_MS);
  }

  async function loadList() {
    $("list-status").textContent = "Loading…";
    try {
      const { data } = await api("/api/creations?limit=" + LIST_LIMIT);
      for (const c of data.creations) upsert(c, null);
      $("list-status").textContent = "";
      $("empty").hidden = cards.size > 0;
      schedulePoll(POLL_MS);
    } catch (err) {
      $("list-status").textContent = "";
      showError(err.message);
    }
  }

  // --- Start -----------------------------------------------------------------------------

  form.addEventListener("submit", submit);
  promptInput.addEventListener("input", updateCount);
  promptInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  $("who").textContent = "Signed in as " + (user || "local");
  updateCount();
  // The list's cards show each kind's label and options: kinds first.
  loadKinds()
    .catch((err) => showError(err.message))
    .finally(loadList);
})();
