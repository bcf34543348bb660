// Events and alarms (GET /events?limit=100, newest first). Polled in the background too, so
// the tab shows how many alarms the list holds wherever the reader is.

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
    const alarms = events.filter((e) => e.level === "alarm").length;
    const count = $("alarm-count");
    count.textContent = String(alarms);
    count.hidden = alarms === 0;
    count.title = `${alarms} alarms among the last ${events.length} events`;
    app.markUpdated();
  }, () => (absent ? ABSENT_RETRY_MS : REFRESH_MS));

  return { name: "events", poller, background: true };
}
