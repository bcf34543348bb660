// The dashboard: sign-in, then one view at a time (the URL's #fragment names it), each
// refreshed by its own poller while it is shown.

import { clearToken, getToken, onUnauthorized, request, setToken } from "./api.js";
import { $, badge, el, setText } from "./dom.js";
import { clearAllProblems, Poller, setProblem } from "./ui.js";
import { createApiView } from "./views/api.js";
import { createControlView } from "./views/control.js";
import { createDevicesView } from "./views/devices.js";
import { createEventsView } from "./views/events.js";
import { createFlowView } from "./views/flow.js";
import { createHistoryView } from "./views/history.js";

const UNAUTHORIZED = "Token unknown or revoked: sign in again.";
const SITE_REFRESH_MS = 15_000;

const app = {
  me: null, // {name, role} from GET /me; null while signed out or when /me is not served
  site: null,
  devices: null,
  latest: null,
  signedIn: false,
  markUpdated() {
    setText("updated", "updated " + new Date().toLocaleTimeString());
  },
};

const views = new Map();
for (const view of [createFlowView(app), createDevicesView(app), createHistoryView(app),
  createControlView(app), createEventsView(app), createApiView(app)]) {
  views.set(view.name, view);
}
let current = null;

const sitePoller = new Poller("site", async (signal) => {
  const site = await request("/site", { signal });
  app.site = site;
  const name = site.name || site.id;
  document.title = `GridPilot \u00b7 ${name}`;
  setText("site-name", name);
  $("gateway-status").replaceChildren("gateway ", badge(site.gateway.status));
}, SITE_REFRESH_MS);

// ------------------------------------------------------------------------------ views

function viewFromHash() {
  const name = location.hash.replace(/^#/, "");
  return views.has(name) ? name : "flow";
}

function show(name) {
  if (!app.signedIn) return;
  if (current && current !== name) {
    const old = views.get(current);
    if (old.poller && !old.background) old.poller.stop();
    if (old.hide) old.hide();
  }
  current = name;
  for (const [viewName] of views) {
    $(`view-${viewName}`).hidden = viewName !== name;
  }
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = views.get(name);
  if (view.poller) view.poller.start();
  if (view.show) view.show();
}

window.addEventListener("hashchange", () => show(viewFromHash()));

// ----------------------------------------------------------------------------- sign-in

function showSignIn(message) {
  stopAll();
  $("view-signin").hidden = false;
  $("tabs").hidden = true;
  for (const [name] of views) $(`view-${name}`).hidden = true;
  $("whoami").hidden = true;
  $("sign-out").hidden = true;
  const text = $("signin-message");
  text.textContent = message || "";
  text.hidden = !message;
  $("signin-token").value = "";
  $("signin-token").focus();
}

function stopAll() {
  app.signedIn = false;
  app.me = null;
  app.devices = null;
  app.latest = null;
  sitePoller.stop();
  for (const view of views.values()) {
    if (view.poller) view.poller.stop();
    if (view.stop) view.stop();
  }
  current = null;
  clearAllProblems();
}

async function signIn(token) {
  setToken(token);
  let me = null;
  try {
    me = await request("/me");
  } catch (err) {
    if (err.status === 401) {
      clearToken();
      showSignIn(UNAUTHORIZED);
      return;
    }
    if (err.status !== 404) {
      // The token may be fine; the server is not answering. Keep it, say why, let them retry.
      showSignIn(`Cannot sign in: ${err.message}`);
      return;
    }
    // 404: this server has no /me yet; go on, the other routes will answer 401 if needed.
  }
  app.me = me;
  app.signedIn = true;
  $("view-signin").hidden = true;
  $("tabs").hidden = false;
  const who = $("whoami");
  who.replaceChildren(me
    ? el("span", { title: "signed in as" }, el("strong", { text: me.name }), " ",
      el("span", { class: `role role-${me.role}`, "data-testid": "whoami-role", text: me.role }))
    : el("span", { class: "muted", text: "signed in (this server does not say who)" }));
  who.dataset.role = me ? me.role : "";
  who.hidden = false;
  $("sign-out").hidden = false;
  views.get("control").applyRole(me ? me.role : null);
  sitePoller.start();
  views.get("events").poller.start();
  try {
    app.devices = (await request("/devices")).devices;
  } catch (err) {
    if (err.status === 401) return;
    setProblem("devices", err.message);
  }
  await views.get("control").probe();
  if (app.signedIn) show(viewFromHash());
}

onUnauthorized(() => {
  clearToken();
  showSignIn(UNAUTHORIZED);
});

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("signin-token").value.trim();
  if (!token) return;
  $("signin-message").hidden = true;
  signIn(token);
});

$("sign-out").addEventListener("click", () => {
  clearToken();
  showSignIn("");
});

const saved = getToken();
if (saved) signIn(saved);
else showSignIn("");
