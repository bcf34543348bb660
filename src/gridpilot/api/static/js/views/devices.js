// Devices with their health (GET /devices): online state, counters, last seen, and the
// troubleshooting hint of the last error.

import { request } from "../api.js";
import { $, badge, el, formatAge, formatTime, secondsSince } from "../dom.js";
import { Poller } from "../ui.js";

export const REFRESH_MS = 5000;

function counterList(entries) {
  const shown = entries.filter(([, value]) => value !== undefined && value !== null);
  if (shown.length === 0) return null;
  return el("dl", { class: "counters" }, ...shown.flatMap(([label, value]) =>
    [el("dt", { text: label }), el("dd", { text: String(value) })]));
}

function deviceCard(device) {
  const health = device.health || {};
  const counters = health.counters || {};
  const lastSeen = health.ts ? secondsSince(health.ts) : NaN;
  const card = el("article", { class: "card device", "data-device": device.id,
    "data-testid": `device-${device.id}` },
    el("header", {},
      el("h3", { text: device.name || device.id }),
      el("span", { "data-testid": `device-status-${device.id}` }, badge(device.status))),
    el("p", { class: "muted", text: `${device.id} \u00b7 ${device.protocol} \u00b7 polled every ${device.poll_interval_s} s` }),
    el("p", {},
      el("span", { text: "last seen " }),
      el("strong", { text: health.ts ? formatAge(lastSeen) : "never" }),
      health.since ? el("span", { class: "muted", text: ` \u00b7 ${health.status || device.status} since ${formatTime(health.since)}` }) : null));
  if (device.status === "unknown" && device.health) {
    card.append(el("p", { class: "muted", text: "State is stale: the gateway that reports it is offline." }));
  }
  const errorCounts = Object.entries(counters.errors || {}).map(([kind, n]) => [`errors: ${kind}`, n]);
  const commandCounts = Object.entries(counters.commands || {}).map(([kind, n]) => [`commands ${kind}`, n]);
  const list = counterList([
    ["polls", counters.polls],
    ["polls failed", counters.polls_failed],
    ["failures in a row", health.consecutive_failures],
    ["values out of range", counters.values_out_of_range],
    ["values invalid", counters.values_invalid],
    ["ticks skipped", counters.ticks_skipped],
    ...errorCounts,
    ...commandCounts,
  ]);
  if (list) card.append(list);
  const error = health.last_error;
  if (error && typeof error === "object") {
    card.append(el("div", { class: "last-error", "data-testid": `device-error-${device.id}` },
      el("p", {}, el("strong", { text: "Last error: " }),
        el("span", { text: String(error.message || error.kind || "unknown") }),
        error.ts ? el("span", { class: "muted", text: ` (${formatTime(error.ts)})` }) : null),
      error.hint ? el("p", { class: "hint" }, el("strong", { text: "What to check: " }),
        el("span", { text: String(error.hint) })) : null));
  } else if (typeof error === "string" && error) {
    card.append(el("div", { class: "last-error" },
      el("p", {}, el("strong", { text: "Last error: " }), el("span", { text: error }))));
  }
  return card;
}

export function createDevicesView(app) {
  const poller = new Poller("devices", async (signal) => {
    const body = await request("/devices", { signal });
    app.devices = body.devices;
    const list = $("device-list");
    list.replaceChildren(...body.devices.map(deviceCard));
    if (body.devices.length === 0) {
      list.append(el("p", { class: "muted", text: "No devices are configured for this site." }));
    }
    app.markUpdated();
  }, REFRESH_MS);
  return { name: "devices", poller };
}
