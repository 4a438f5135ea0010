// The web page: a small chat that talks to the same HTTP API as any client.
//   GET  /health                 base model name, decoding defaults, whether an API key is needed
//   GET  /v1/adapters            the model selector (adapters that failed to load are disabled)
//   POST /v1/chat/completions    stream: true; the earlier turns of the chat go along as `messages`
//   POST /ui/render              the finished answer as server-escaped HTML with highlighted code
// While an answer streams, its pieces are shown as plain text (textContent); model text is never
// inserted as HTML, only /ui/render's escaped HTML is. Stop aborts the fetch (AbortController): the
// server sees the connection close and cancels the generation at its next decode step.
"use strict";
const $ = (id) => document.getElementById(id);
let baseModel = "base";
let current = null;       // the answer in progress: see ask()
const conversation = [];  // the finished exchanges of this chat, in order: {question, answer}
$("api-key").value = sessionStorage.getItem("codelora-key") || "";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || sessionStorage.getItem("codelora-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function errorMessage(data, status) {
  return (data && data.error && data.error.message) || `HTTP ${status}`;
}

async function call(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() }
                                                 : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(errorMessage(data, r.status));
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModels() {
  const health = await (await fetch("/health")).json();
  baseModel = health.base_model;
  $("key-label").hidden = !health.auth_required;
  $("model").options[0].textContent = `base (${health.base_model})`;
  for (const [id, key] of [["max-new-tokens", "max_new_tokens"], ["temperature", "temperature"]]) {
    if ($(id).value === "") $(id).value = health.defaults[key];  // the server's decoding defaults
  }
  if (health.auth_required && !$("api-key").value) return;
  try {
    const { adapters } = await call("/v1/adapters");
    for (const a of adapters) {
      if ([...$("model").options].some((o) => o.value === a.name)) continue;
      const o = new Option(a.error ? `${a.name} (unavailable)` : a.name, a.name);
      o.disabled = Boolean(a.error);
      $("model").add(o);
    }
  } catch (e) { showError(e.message); }
}

// ---- Server-sent events ------------------------------------------------------------------------
// The `data` of each event of a text/event-stream body, as the network delivers it: a read may end
// anywhere (inside a line, inside a multi-byte character), so bytes are decoded in stream mode and
// only complete lines are parsed. A multi-line `data` is joined with "\n"; comments are skipped.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  const line = (text) => {
    if (text.endsWith("\r")) text = text.slice(0, -1);
    if (text === "") {  // a blank line ends the event
      const event = data.length ? data.join("\n") : null;
      data = [];
      return event;
    }
    if (text.startsWith(":")) return null;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    return null;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const event = line(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (event !== null) yield event;
      }
      if (done) {
        const last = buffer ? line(buffer) : null;  // a body that ends without its blank line
        if (last !== null) yield last;
        const tail = line("");
        if (tail !== null) yield tail;
        return;
      }
    }
  } finally {
    reader.cancel().catch(() => {});  // stopped reading early (or done): close the connection
  }
}

// ---- The conversation ----------------------------------------------------------------------------
function addTurn(role, label, text) {
  const turn = document.createElement("article");
  turn.className = `turn ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = label;
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  turn.append(who, body);
  $("messages").append(turn);
  return turn;
}

function note(turn, text) {
  const n = document.createElement("span");
  n.className = "note";
  n.textContent = text;
  turn.querySelector(".who").append(n);
}

function nearBottom() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 60;
}

function scrollDown() { window.scrollTo(0, document.documentElement.scrollHeight); }

function setBusy(busy) {
  $("ask").disabled = busy;
  $("stop").disabled = !busy;
}

function seconds(run) { return ((performance.now() - run.started) / 1000).toFixed(1); }

function tokens(n) { return n === 1 ? "1 token" : `${n} tokens`; }

function earlierTurns() {
  const messages = [];
  for (const x of conversation) {
    messages.push({ role: "user", content: x.question }, { role: "assistant", content: x.answer });
  }
  return messages;
}

async function ask(question) {
  const model = $("model").value;  // "" is the base model
  const label = model || baseModel;
  const body = { model: model || "base", messages: [...earlierTurns(), { role: "user", content: question }],
                 stream: true, stream_options: { include_usage: true } };
  if ($("max-new-tokens").value !== "") body.max_tokens = Number($("max-new-tokens").value);
  if ($("temperature").value !== "") body.temperature = Number($("temperature").value);  // else the server's
  const stick = nearBottom();
  const userTurn = addTurn("user", "You", question);
  const turn = addTurn("assistant", label, "");
  turn.dataset.state = "streaming";
  turn.dataset.model = label;
  const text = turn.querySelector(".body");
  if (stick) scrollDown();
  const run = { controller: new AbortController(), question, label, turn, text: "", pieces: 0, usage: null,
                finish: null, started: performance.now(), over: false };
  current = run;
  setBusy(true);
  $("status").textContent = `${label}: generating ...`;
  let started = false;  // the server accepted the request and the stream began
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                    signal: run.controller.signal });
    if (!r.ok) throw new Error(errorMessage(await r.json().catch(() => ({})), r.status));
    started = true;
    for await (const data of sseData(r)) {
      if (run.over) return;
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "generation failed");
      if (chunk.usage) run.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          const follow = nearBottom();
          run.text += piece;
          run.pieces += 1;
          text.textContent = run.text;  // plain text while streaming
          if (follow) scrollDown();
        }
        if (choice.finish_reason) run.finish = choice.finish_reason;
      }
    }
    if (run.over) return;
    if (!run.finish) throw new Error("the answer ended early (connection closed)");
    $("stop").disabled = true;  // the stream is over; only the highlighting is left
    let html = null;
    try {
      html = (await call("/ui/render", { text: run.text })).html;
    } catch (e) {
      showError(`could not highlight the answer: ${e.message}`);  // the plain text stays
    }
    if (run.over) return;  // a new chat began meanwhile
    if (html !== null) text.innerHTML = html || "<p><em>(empty answer)</em></p>";  // server-escaped HTML
    turn.dataset.state = "done";
    conversation.push({ question, answer: run.text });
    const count = run.usage ? run.usage.completion_tokens : run.pieces;
    $("status").textContent = `${label}: ${tokens(count)} in ${seconds(run)} s` +
      (run.finish === "length" ? " (stopped at max new tokens)" : "");
    end(run);
  } catch (e) {
    if (run.over) return;  // stopped by the user or by "New chat": already handled
    if (!started && !run.text) {  // refused before any answer: as if it was never asked
      userTurn.remove();
      turn.remove();
      if (!$("question").value) $("question").value = question;
      $("status").textContent = "";
    } else {
      turn.dataset.state = "error";
      note(turn, "failed");
      $("status").textContent = `${label}: failed after ${seconds(run)} s`;
    }
    showError(e.message);
    end(run);
  }
}

function end(run) {
  run.over = true;
  if (current === run) {
    current = null;
    setBusy(false);
  }
}

function stopAnswer() {
  const run = current;
  if (!run || run.over || run.turn.dataset.state !== "streaming") return;
  run.controller.abort();
  run.turn.dataset.state = "stopped";
  note(run.turn, "stopped");
  if (run.text) conversation.push({ question: run.question, answer: run.text });  // the partial answer counts
  $("status").textContent = `${run.label}: stopped after ${tokens(run.pieces)} in ${seconds(run)} s`;
  end(run);
  $("question").focus();
}

function newChat() {
  if (current) {
    current.controller.abort();
    end(current);
  }
  conversation.length = 0;
  $("messages").replaceChildren();
  $("status").textContent = "";
  showError("");
  $("question").focus();
}

$("api-key").addEventListener("change", () => { sessionStorage.setItem("codelora-key", $("api-key").value); loadModels(); });
$("stop").addEventListener("click", stopAnswer);
$("new-chat").addEventListener("click", newChat);
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("ask-form").requestSubmit();
  }
});

$("ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (current) return;  // one answer at a time
  showError("");
  const question = $("question").value.trim();
  if (!question) { showError("Type a question first."); return; }
  $("question").value = "";
  ask(question);
});

loadModels();
