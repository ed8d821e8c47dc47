// The page's one door to the API: fetch with the bearer token, errors as readable messages.

const TOKEN_KEY = "bnlenet.apiToken";

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  updateTokenButton();
}

export function updateTokenButton() {
  const button = document.getElementById("token-button");
  if (button) button.textContent = getToken() ? "API token ✓" : "API token";
}

function detailText(detail) {
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return String(detail ?? "");
}

function describe(status, detail) {
  const text = detailText(detail);
  if (status === 0) return `Cannot reach the API: ${text}`;
  if (status === 401) return `This needs the API token (the server has API_TOKEN set): use the “API token” button. (401: ${text})`;
  if (status === 403) return `The API token was refused: it is not the server's token. (403: ${text})`;
  if (status === 503) return `The job store (Redis) is unavailable; try again shortly. (503: ${text})`;
  return `${text} (HTTP ${status})`;
}

// One token prompt at a time. Background polling never prompts (it passes interactive: false).
let pendingAsk = null;

export function askToken(reason) {
  if (pendingAsk) return pendingAsk;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const why = document.getElementById("token-reason");
  if (reason) why.textContent = reason;
  input.value = getToken();
  pendingAsk = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      pendingAsk = null;
      const action = dialog.returnValue;
      if (action === "save" && input.value.trim()) {
        setToken(input.value.trim());
        resolve(getToken());
      } else {
        if (action === "forget") setToken("");
        resolve(null);
      }
    }, { once: true });
    dialog.returnValue = ""; // Escape closes it without an action; never reuse the last one
    dialog.showModal();
    input.focus();
  });
  return pendingAsk;
}

/** The ApiError for a refused request: `body` is its parsed JSON (or null), which may carry a 422's
 * field errors (`errors`) or a refused upload's `problems`. */
function refusal(status, statusText, body) {
  const error = new ApiError(status, body && "detail" in body ? body.detail : statusText);
  error.errors = Array.isArray(body?.errors) ? body.errors : null;  // a 422's {loc, msg, type} per field
  error.problems = Array.isArray(body?.problems) ? body.problems : null;  // every problem an upload has
  return error;
}

/** After a 401/403 on the first attempt of an interactive call: ask for the token; true to retry. */
async function retryWithToken(status, interactive, attempt) {
  if ((status !== 401 && status !== 403) || !interactive || attempt !== 0) return false;
  const reason = status === 401
    ? "This action needs the API token (the server has API_TOKEN set). It is kept in this tab only."
    : "The server refused that token (403). Enter the right one.";
  return Boolean(await askToken(reason));
}

function authHeaders() {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/**
 * Call the API. `json` or `form` make the body; `interactive` lets a 401/403 ask for the token
 * once and retry (background polling passes false and just reports).
 */
export async function api(path, { method = "GET", json, form, interactive = true, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = authHeaders();
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, err.message);
    }
    if (response.ok) {
      const type = response.headers.get("content-type") || "";
      return type.includes("json") ? response.json() : response;
    }
    let parsed = null;
    try { parsed = await response.json(); } catch { /* not JSON: keep the status text */ }
    if (await retryWithToken(response.status, interactive, attempt)) continue;
    throw refusal(response.status, response.statusText, parsed);
  }
}

/**
 * POST a form with XMLHttpRequest, whose upload reports progress (fetch's does not):
 * `onProgress(loaded, total)` while the body goes up, `onSent()` once it is all sent (the server
 * is then reading and checking it). Answers and errors as api().
 */
export async function upload(path, form, { onProgress, onSent, interactive = true } = {}) {
  for (let attempt = 0; ; attempt++) {
    const xhr = new XMLHttpRequest();
    const done = new Promise((resolve, reject) => {
      xhr.addEventListener("load", () => resolve());
      xhr.addEventListener("error", () => reject(new ApiError(0,
        "the connection closed during the upload (the server refuses a file over its upload limit as it passes it)")));
      xhr.addEventListener("abort", () => reject(new ApiError(0, "the upload was aborted")));
    });
    xhr.upload.addEventListener("progress", (e) => { if (onProgress) onProgress(e.loaded, e.lengthComputable ? e.total : null); });
    xhr.upload.addEventListener("load", () => { if (onSent) onSent(); });
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.send(form);
    await done;
    let parsed = null;
    try { parsed = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status >= 200 && xhr.status < 300) return parsed;
    if (await retryWithToken(xhr.status, interactive, attempt)) continue;
    throw refusal(xhr.status, xhr.statusText, parsed);
  }
}

/** An image (or any file) the API serves, as an object URL: fetched with the token, unlike an <img src>. */
export async function objectUrl(path, options = {}) {
  const response = await api(path, { interactive: false, ...options });
  return URL.createObjectURL(await response.blob());
}

let openapi = null;
/** /openapi.json, fetched once: the form's fields and limits, and which endpoints exist. */
export function getOpenApi() {
  if (!openapi) {
    openapi = fetch("/openapi.json").then((r) => {
      if (!r.ok) throw new Error(`GET /openapi.json answered ${r.status}`);
      return r.json();
    });
    openapi.catch(() => { openapi = null; });
  }
  return openapi;
}
