// Events and alarms (GET /events?limit=100, newest first). Polled in the background too, so
// the tab shows how many alarms the list holds wherever the reader is. Above them, the
// utility's active and scheduled events (GET /ieee2030_5) when a 2030.5 client publishes.

import { request } from "../api.js";
import { $, badge, el, formatTime } from "../dom.js";
import { Poller } from "../ui.js";

export const LIMIT = 100;
const REFRESH_MS = 5000;
const ABSENT_RETRY_MS = 60_000;

export function createEventsView(app) {
  let absent = false;

  const poller = new Poller("events", async (signal) => {
    let body;
    try {
      body = await request(`/events?limit=${LIMIT}`, { signal });
    } catch (err) {
      if (err.status === 404) {
        // Not on this server (yet): say so in the view, ask again now and then.
        absent = true;
        $("events-absent").hidden = false;
        $("alarm-count").hidden = true;
        return;
      }
      throw err;
    }
    absent = false;
    $("events-absent").hidden = true;
    // Never more than LIMIT rows, whatever the server sends.
    const events = ((body && body.events) || []).slice(0, LIMIT);
    $("event-rows").replaceChildren(...events.map((e) => el("tr", { class: `level-${e.level}`,
      "data-level": e.level },
      el("td", { class: "nowrap", text: formatTime(e.ts) }),
      el("td", {}, badge(e.level)),
      el("td", { text: e.source }),
      el("td", { text: e.message }))));
    if (events.length === 0) {
      $("event-rows").append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No events." })));
    }
    await showUtilityEvents(signal);
    const alarms = events.filter((e) => e.level === "alarm").length;
    const count = $("alarm-count");
    count.textContent = String(alarms);
    count.hidden = alarms === 0;
    count.title = `${alarms} alarms among the last ${events.length} events`;
    app.markUpdated();
  }, () => (absent ? ABSENT_RETRY_MS : REFRESH_MS));

  return { name: "events", poller, background: true };
}

// The utility's events: shown only while a 2030.5 client publishes some. A server without
// the route (older) or without a client hides the panel; it is not a problem of the page.
async function showUtilityEvents(signal) {
  const panel = $("utility-events");
  let body;
  try {
    body = await request("/ieee2030_5", { signal });
  } catch (err) {
    if (err.status === 404) {
      panel.hidden = true;
      return;
    }
    throw err;
  }
  const status = body && body.published ? body.status || {} : {};
  const listed = [
    ...(status.active_events || []).map((e) => ["active", e]),
    ...(status.scheduled_events || []).map((e) => ["scheduled", e]),
  ].slice(0, 20);
  panel.hidden = listed.length === 0;
  $("utility-event-list").replaceChildren(...listed.map(([phase, e]) => el("li",
    { "data-status": phase, "data-mrid": String(e.mrid || "") },
    badge(phase === "active" ? "online" : "unknown", phase),
    el("span", { text: ` ${e.description || e.mrid || "event"}: ${modesText(e.modes)}, ` +
      `${formatTime(e.effective_start)} to ${formatTime(e.effective_end)}` }))));
}

function modesText(modes) {
  const parts = Object.entries(modes || {}).map(([name, entry]) => {
    const value = entry && typeof entry === "object" && "value" in entry ? entry.value : entry;
    const unit = entry && entry.unit ? ` ${entry.unit}` : "";
    if (typeof value === "number") return `${name} ${value}${unit}`;
    if (typeof value === "boolean") return `${name} ${value}`;
    return name;
  });
  return parts.length ? parts.join(", ") : "no modes";
}
