// The chat page: talks to this server's OpenAI API, keeps conversations in localStorage.
// Model output only ever reaches the page as text nodes (see markdown.js); nothing here sets innerHTML.
"use strict";

const STORE = {
  conversations: "interference.conversations",
  current: "interference.current",
  settings: "interference.settings",
  apiKey: "interference.apiKey",
};
const DEFAULT_MAX_TOKENS = 1024;
const MAX_CONVERSATIONS = 200; // the oldest go first; localStorage holds a few MB per origin
const TITLE_WORDS = 6;

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), scrim: $("scrim"), toggleSidebar: $("toggle-sidebar"), list: $("conversations"),
  newChat: $("new-chat"), model: $("model"), toggleSettings: $("toggle-settings"), settings: $("settings"),
  system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"), apiKey: $("api-key"),
  transcript: $("transcript"), error: $("error"), errorText: $("error-text"), dismiss: $("dismiss-error"),
  composer: $("composer"), message: $("message"), send: $("send"), stop: $("stop"),
};

function load(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Full: drop the oldest conversations until it fits (or nothing is left to drop).
    if (key === STORE.conversations && Array.isArray(value) && value.length > 1) {
      value.sort((a, b) => b.updated - a.updated).pop();
      store(key, value);
    }
  }
}

const state = {
  conversations: load(STORE.conversations, []).filter((c) => c && Array.isArray(c.messages)),
  currentId: load(STORE.current, null),
  settings: load(STORE.settings, {}),
  controller: null,
};

// A reload during a stream leaves an empty answer behind: drop it.
for (const conv of state.conversations) {
  conv.messages = conv.messages.filter((m) => m.role === "user" || m.content);
}

function current() {
  return state.conversations.find((c) => c.id === state.currentId) || null;
}

function saveConversations() {
  state.conversations.sort((a, b) => b.updated - a.updated);
  state.conversations.length = Math.min(state.conversations.length, MAX_CONVERSATIONS);
  store(STORE.conversations, state.conversations);
  store(STORE.current, state.currentId);
}

function newId() {
  // crypto.randomUUID exists only on https and localhost pages; the server may be reached over plain http.
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

function titleFrom(text) {
  const words = text.trim().split(/\s+/).slice(0, TITLE_WORDS).join(" ");
  return words.length > 48 ? words.slice(0, 47) + "…" : words || "New chat";
}

// ---------------------------------------------------------------- sidebar

function renderList() {
  ui.list.replaceChildren();
  for (const conv of state.conversations) {
    const item = document.createElement("li");
    item.setAttribute("aria-current", String(conv.id === state.currentId));
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conv.title;
    open.title = conv.title;
    open.addEventListener("click", () => { openConversation(conv.id); closeSidebar(); });
    const rename = actionButton("\u270E", `Rename ${conv.title}`, () => startRename(item, conv));
    const remove = actionButton("\u2715", `Delete ${conv.title}`, () => {
      if (remove.dataset.armed) return deleteConversation(conv.id);
      // A second click within 3 s deletes: one stray click loses nothing.
      remove.dataset.armed = "1";
      remove.textContent = "Delete?";
      setTimeout(() => { delete remove.dataset.armed; remove.textContent = "\u2715"; }, 3000);
    });
    item.append(open, rename, remove);
    ui.list.appendChild(item);
  }
}

function actionButton(text, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "act";
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.title = label;
  button.addEventListener("click", onClick);
  return button;
}

function startRename(item, conv) {
  const input = document.createElement("input");
  input.value = conv.title;
  input.setAttribute("aria-label", "Conversation title");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title) {
      conv.title = title.slice(0, 100);
      conv.renamed = true;
      saveConversations();
    }
    renderList();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteConversation(id) {
  if (state.controller && id === state.currentId) state.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.currentId === id) state.currentId = state.conversations[0]?.id ?? null;
  saveConversations();
  renderList();
  renderTranscript();
}

function openConversation(id) {
  if (state.controller) state.controller.abort();
  state.currentId = id;
  store(STORE.current, id);
  renderList();
  renderTranscript();
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.currentId = null;
  store(STORE.current, null);
  renderList();
  renderTranscript();
  closeSidebar();
  ui.message.focus();
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  ui.toggleSidebar.setAttribute("aria-expanded", "false");
}

// ---------------------------------------------------------------- transcript

function messageElement(role) {
  const wrap = document.createElement("div");
  wrap.className = "msg";
  wrap.dataset.role = role;
  const body = document.createElement("div");
  body.className = "body";
  wrap.appendChild(body);
  if (role === "assistant") {
    const stats = document.createElement("div");
    stats.className = "stats";
    wrap.appendChild(stats);
  }
  return wrap;
}

function fillMessage(wrap, message) {
  const body = wrap.querySelector(".body");
  if (message.role === "user") body.textContent = message.content;
  else body.replaceChildren(window.renderMarkdown(message.content));
  const stats = wrap.querySelector(".stats");
  if (stats) stats.textContent = statsText(message);
}

function statsText(m) {
  const parts = [];
  if (m.ttft != null) parts.push(`TTFT ${m.ttft.toFixed(2)} s`);
  if (m.tps != null) parts.push(`${m.tps.toFixed(1)} tokens/s`);
  if (m.tokens != null) parts.push(`${m.tokens} tokens`);
  if (m.model) parts.push(m.model);
  if (m.stopped) parts.push("stopped");
  return parts.join(" · ");
}

function renderTranscript() {
  ui.transcript.replaceChildren();
  const conv = current();
  if (!conv || conv.messages.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Ask anything. Enter sends, Shift+Enter starts a new line.";
    ui.transcript.appendChild(empty);
    return;
  }
  for (const message of conv.messages) {
    const wrap = messageElement(message.role);
    fillMessage(wrap, message);
    ui.transcript.appendChild(wrap);
  }
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

// ---------------------------------------------------------------- errors

function showError(text) {
  ui.errorText.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = "";
}

async function describeFailure(response) {
  let detail = "";
  try {
    detail = (await response.json())?.error?.message || "";
  } catch {
    // not JSON: the status says enough
  }
  if (response.status === 429) {
    const wait = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(wait) ? `Server busy, retry in ${wait} s.` : "Server busy, retry in a moment.";
  }
  if (response.status === 401) {
    return `The server wants an API key: fill it in under Settings. (${detail || "unauthorized"})`;
  }
  return detail ? `${detail} (HTTP ${response.status})` : `The server answered HTTP ${response.status}.`;
}

// ---------------------------------------------------------------- models and settings

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = ui.apiKey.value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch {
    showError("Cannot reach the server to list its models. Is it running?");
    return;
  }
  if (!response.ok) {
    showError(await describeFailure(response));
    return;
  }
  const cards = (await response.json()).data.filter((card) => card.kind !== "embedding");
  const wanted = state.settings.model;
  const fallback = cards.find((card) => card.default) || cards[0];
  const chosen = cards.some((card) => card.id === wanted) ? wanted : fallback?.id;
  ui.model.replaceChildren();
  for (const card of cards) {
    const option = document.createElement("option");
    option.value = card.id;
    option.textContent = card.default ? `${card.id} (default)` : card.id;
    ui.model.appendChild(option);
  }
  if (chosen) ui.model.value = chosen;
  ui.model.dataset.loaded = "true";
}

function readSettings() {
  const s = state.settings;
  ui.system.value = s.system || "";
  ui.temperature.value = s.temperature ?? "";
  ui.maxTokens.value = s.maxTokens ?? "";
  ui.apiKey.value = load(STORE.apiKey, "");
}

function saveSettings() {
  const temperature = Number.parseFloat(ui.temperature.value);
  const maxTokens = Number.parseInt(ui.maxTokens.value, 10);
  state.settings = {
    model: ui.model.value || state.settings.model,
    system: ui.system.value,
    temperature: Number.isFinite(temperature) ? temperature : null,
    maxTokens: Number.isFinite(maxTokens) && maxTokens > 0 ? maxTokens : null,
  };
  store(STORE.settings, state.settings);
}

// ---------------------------------------------------------------- sending

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
}

function requestBody(conv) {
  const messages = [];
  if (state.settings.system?.trim()) messages.push({ role: "system", content: state.settings.system });
  for (const m of conv.messages) {
    if (m.content) messages.push({ role: m.role, content: m.content });
  }
  const body = {
    model: ui.model.value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: state.settings.maxTokens || DEFAULT_MAX_TOKENS,
  };
  if (state.settings.temperature != null) body.temperature = state.settings.temperature;
  return body;
}

// Reads an SSE body: yields each `data:` payload as parsed JSON, until [DONE].
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

async function send() {
  const text = ui.message.value;
  if (!text.trim() || state.controller) return;
  clearError();
  if (!ui.model.value) {
    showError("No model to talk to yet: the model list did not load. Is the API key under Settings right?");
    loadModels();
    return;
  }
  saveSettings();
  let conv = current();
  if (!conv) {
    conv = { id: newId(), title: titleFrom(text), renamed: false, messages: [], updated: Date.now() };
    state.conversations.unshift(conv);
    state.currentId = conv.id;
  }
  if (!conv.renamed && conv.messages.length === 0) conv.title = titleFrom(text);
  conv.messages.push({ role: "user", content: text });
  conv.updated = Date.now();
  ui.message.value = "";
  const body = requestBody(conv);
  const answer = { role: "assistant", content: "", model: body.model };
  conv.messages.push(answer);
  saveConversations();
  renderList();
  renderTranscript();
  const wrap = ui.transcript.lastElementChild;
  wrap.setAttribute("aria-busy", "true"); // screen readers read the answer once, when it is whole

  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  let firstAt = null;
  let chunks = 0;
  let usage = null;
  let pending = false;
  const paint = () => {
    pending = false;
    fillMessage(wrap, answer);
    ui.transcript.scrollTop = ui.transcript.scrollHeight;
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await describeFailure(response));
    for await (const event of events(response)) {
      if (event.error) throw new Error(`The answer broke off: ${event.error.message}`);
      if (event.usage) usage = event.usage;
      const piece = event.choices?.[0]?.delta?.content;
      if (!piece) continue;
      if (firstAt === null) {
        firstAt = performance.now();
        answer.ttft = (firstAt - started) / 1000;
      }
      chunks++;
      answer.content += piece;
      if (!pending) {
        pending = true;
        requestAnimationFrame(paint);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") answer.stopped = true;
    else if (err instanceof TypeError) showError("Cannot reach the server. Is it running?");
    else if (err instanceof SyntaxError) showError("The server's answer was not a valid event stream.");
    else showError(err.message);
  } finally {
    const tokens = usage ? usage.completion_tokens : chunks;
    answer.tokens = tokens;
    const decoding = firstAt === null ? 0 : (performance.now() - firstAt) / 1000;
    if (tokens > 1 && decoding > 0) answer.tps = (tokens - 1) / decoding;
    if (!answer.content && !answer.stopped) conv.messages.pop();
    conv.updated = Date.now();
    state.controller = null;
    wrap.removeAttribute("aria-busy");
    setBusy(false);
    saveConversations();
    if (state.currentId === conv.id && wrap.isConnected) {
      if (conv.messages.includes(answer)) paint();
      else wrap.remove();
    }
    ui.message.focus();
  }
}

// ---------------------------------------------------------------- wiring

ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
ui.message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", () => state.controller?.abort());
ui.newChat.addEventListener("click", newChat);
ui.dismiss.addEventListener("click", clearError);
ui.toggleSettings.addEventListener("click", () => {
  ui.settings.hidden = !ui.settings.hidden;
  ui.toggleSettings.setAttribute("aria-expanded", String(!ui.settings.hidden));
});
ui.toggleSidebar.addEventListener("click", () => {
  const open = document.body.classList.toggle("sidebar-open");
  ui.toggleSidebar.setAttribute("aria-expanded", String(open));
});
ui.scrim.addEventListener("click", closeSidebar);
for (const input of [ui.system, ui.temperature, ui.maxTokens, ui.model]) {
  input.addEventListener("change", saveSettings);
}
ui.apiKey.addEventListener("change", () => {
  store(STORE.apiKey, ui.apiKey.value.trim());
  clearError();
  loadModels();
});

readSettings();
renderList();
renderTranscript();
loadModels();
