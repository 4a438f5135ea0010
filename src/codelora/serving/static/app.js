// The web page talks to the same HTTP API as any client: /v1/adapters, /v1/generate, then
// /ui/render for the highlighted HTML. Answers are inserted only as server-escaped HTML.
const $ = (id) => document.getElementById(id);
let authRequired = false;
$("api-key").value = sessionStorage.getItem("codelora-key") || "";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || sessionStorage.getItem("codelora-key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function call(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() }
                                                 : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || `HTTP ${r.status}`);
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModels() {
  const health = await (await fetch("/health")).json();
  authRequired = health.auth_required;
  $("key-label").hidden = !authRequired;
  $("model").options[0].textContent = `base (${health.base_model})`;
  for (const [id, key] of [["max-new-tokens", "max_new_tokens"], ["temperature", "temperature"]]) {
    if ($(id).value === "") $(id).value = health.defaults[key];  // the server's decoding defaults
  }
  if (authRequired && !$("api-key").value) return;
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

$("api-key").addEventListener("change", () => { sessionStorage.setItem("codelora-key", $("api-key").value); loadModels(); });

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const question = $("question").value.trim();
  if (!question) { showError("Type a question first."); return; }
  const body = { prompt: question };
  if ($("max-new-tokens").value !== "") body.max_new_tokens = Number($("max-new-tokens").value);
  if ($("temperature").value !== "") body.temperature = Number($("temperature").value);  // else the server's
  if ($("model").value) body.adapter = $("model").value;
  $("ask").disabled = true;
  $("status").textContent = "generating ...";
  try {
    const g = await call("/v1/generate", body);
    const { html } = await call("/ui/render", { text: g.text });
    $("answer").innerHTML = html || "<p><em>(empty answer)</em></p>";
    $("answer").dataset.model = g.model;
    $("status").textContent = `${g.model}: ${g.usage.completion_tokens} tokens in ${g.seconds} s` +
      (g.finish_reason === "length" ? " (stopped at max new tokens)" : "");
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  } finally {
    $("ask").disabled = false;
  }
});

loadModels();
