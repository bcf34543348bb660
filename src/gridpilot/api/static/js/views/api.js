// The API reference: every route of the OpenAPI document (GET /openapi.json, which needs a
// token like the data), with its summary and what it answers. Loaded once per sign-in; the
// document does not change while the server runs.

import { request } from "../api.js";
import { $, el } from "../dom.js";
import { Poller } from "../ui.js";

const METHODS = ["get", "post", "put", "delete"];

export function createApiView(app) {
  let loaded = false;

  const poller = new Poller("api", async (signal) => {
    if (loaded) return;
    const doc = await request("/openapi.json", { signal });
    const rows = [];
    for (const [path, operations] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        const op = operations[method];
        if (!op) continue;
        const statuses = Object.keys(op.responses || {}).sort().join(" ");
        rows.push(el("tr", { "data-route": `${method.toUpperCase()} ${path}` },
          el("td", { class: "nowrap", text: method.toUpperCase() }),
          el("td", { class: "mono", text: path }),
          // The route's docstring says what it does; its first line is the short form.
          el("td", { text: (op.description || op.summary || "").split("\n")[0] }),
          el("td", { class: "muted nowrap", text: statuses })));
      }
    }
    $("api-rows").replaceChildren(...rows);
    $("api-version").textContent = `${doc.info?.title || "API"} ${doc.info?.version || ""}`;
    loaded = true;
    app.markUpdated();
  }, 3_600_000);

  return {
    name: "api",
    poller,
    stop() { loaded = false; },
  };
}
