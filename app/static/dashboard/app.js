// The dashboard: a hash router over its views, each a client of the public API.

import { askToken, getToken, updateTokenButton } from "./api.js";
import * as jobs from "./views/jobs.js";
import * as job from "./views/job.js";
import * as models from "./views/models.js";
import * as model from "./views/model.js";
import * as predict from "./views/predict.js";
import * as datasets from "./views/datasets.js";
import * as sweeps from "./views/sweeps.js";

const ROUTES = [
  [/^#\/jobs\/([A-Za-z0-9_-]+)$/, job, "jobs"],
  [/^#\/jobs$/, jobs, "jobs"],
  [/^#\/models\/([A-Za-z0-9_-]+)$/, model, "models"],
  [/^#\/models$/, models, "models"],
  [/^#\/predict(?:\?.*)?$/, predict, "predict"],
  [/^#\/datasets(?:\/([A-Za-z0-9_-]+))?$/, datasets, "datasets"],
  [/^#\/sweeps(?:\/([A-Za-z0-9_-]+))?$/, sweeps, "sweeps"],
];

let cleanup = null;

function route() {
  const hash = location.hash || "#/jobs";
  if (!hash.startsWith("#/")) return; // in-page anchors such as the skip link
  const match = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!match) {
    location.replace("#/jobs");
    return;
  }
  const [pattern, view, nav] = match;
  const args = hash.match(pattern).slice(1);
  if (cleanup) cleanup();
  cleanup = null;
  for (const link of document.querySelectorAll("nav a[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  const result = view.render(main, ...args);
  cleanup = typeof result === "function" ? result : null;
  const heading = main.querySelector("h1");
  document.title = heading ? `${heading.textContent} · bnlenet` : "bnlenet";
}

window.addEventListener("hashchange", route);
document.getElementById("token-button").addEventListener("click", async () => {
  await askToken(getToken()
    ? "A token is set for this tab. Save a new one, or forget it."
    : "Enter the server's API_TOKEN. It is kept in this tab only (sessionStorage).");
});
updateTokenButton();
route();
