// Power flow (grid, PV, battery, building load) and the table of every latest value,
// refreshed every 2 s from GET /latest.

import { request } from "../api.js";
import { $, el, formatAge, formatPower, formatValue, setText } from "../dom.js";
import { deriveFlow, indexLatest, STALE_AFTER_S } from "../model.js";
import { Poller } from "../ui.js";

export const REFRESH_MS = 2000;

export function createFlowView(app) {
  const tables = new Map(); // device -> {details, tbody}: kept so open/closed state survives

  function showNumber(id, part, watts) {
    const node = $(id);
    node.textContent = formatPower(watts);
    // The raw number in W for tests and for anyone reading the DOM: the text is rounded.
    if (typeof watts === "number" && Number.isFinite(watts)) node.dataset.value = String(watts);
    else delete node.dataset.value;
    node.classList.toggle("stale", Boolean(part && part.stale));
  }

  function arrow(id, direction, watts) {
    // direction: "in" = power flows towards the hub, "out" = away from it, "" = none.
    const node = $(id);
    const moving = typeof watts === "number" && Math.abs(watts) >= 50;
    node.className = `arrow ${id}` + (moving ? ` ${direction}` : "");
  }

  function renderFlow(flow) {
    const { grid, pv, battery, load } = flow;
    showNumber("flow-grid-w", grid, grid ? Math.abs(grid.w) : null);
    setText("flow-grid-dir", !grid ? "no grid meter" : grid.w >= 0 ? "importing" : "exporting");
    $("flow-grid-w").dataset.signed = grid ? String(grid.w) : "";
    arrow("arrow-grid", grid && grid.w >= 0 ? "in" : "out", grid && grid.w);

    showNumber("flow-pv-w", pv, pv ? pv.w : null);
    setText("flow-pv-note", pv ? (pv.devices.length > 1 ? `${pv.devices.length} inverters` : "") : "no PV inverter");
    arrow("arrow-pv", "in", pv && pv.w);

    showNumber("flow-battery-w", battery, battery ? battery.w : null);
    setText("flow-battery-dir", !battery ? "no battery" : battery.w === null ? "power unknown"
      : battery.w > 0 ? "discharging" : battery.w < 0 ? "charging" : "idle");
    arrow("arrow-battery", battery && battery.w > 0 ? "in" : "out", battery && battery.w);
    const soc = $("flow-battery-soc");
    if (battery && battery.socPct !== null) {
      soc.textContent = formatValue(battery.socPct, "%");
      soc.dataset.value = String(battery.socPct);
      $("flow-battery-soc-meter").value = battery.socPct;
    } else {
      soc.textContent = "\u2014";
      delete soc.dataset.value;
    }

    showNumber("flow-load-w", load, load ? load.w : null);
    arrow("arrow-load", "out", load && load.w);

    const sources = [];
    if (grid) sources.push(`grid: ${grid.devices.join(", ")}`);
    if (pv) sources.push(`PV: ${pv.devices.join(", ")}`);
    if (battery) sources.push(`battery: ${battery.devices.join(", ")}`);
    const anyStale = [grid, pv, battery].some((part) => part && part.stale);
    setText("flow-sources", "From " + (sources.join("; ") || "no recognised device") +
      (anyStale ? `. Greyed values are older than ${STALE_AFTER_S} s.` : "."));
  }

  function renderTables(byDevice) {
    const container = $("latest-tables");
    for (const [device, points] of byDevice) {
      let entry = tables.get(device);
      if (!entry) {
        const tbody = el("tbody");
        const details = el("details", { open: true, "data-device": device },
          el("summary", { text: device }),
          el("table", { class: "data" },
            el("thead", {}, el("tr", {}, el("th", { text: "point" }),
              el("th", { class: "num", text: "value" }), el("th", { text: "updated" }))),
            tbody));
        entry = { details, tbody };
        tables.set(device, entry);
      }
      const rows = [...points.values()].map((v) => el("tr",
        { "data-point": v.point, class: v.age_s > STALE_AFTER_S ? "stale" : null },
        el("td", { text: v.point }),
        el("td", { class: "num", text: formatValue(v.value, v.unit), "data-value": v.value }),
        el("td", { class: "muted", text: formatAge(v.age_s) })));
      entry.tbody.replaceChildren(...rows);
    }
    for (const device of [...tables.keys()]) {
      if (!byDevice.has(device)) tables.delete(device);
    }
    container.replaceChildren(...[...tables.values()].map((entry) => entry.details));
    if (tables.size === 0) {
      container.append(el("p", { class: "muted", text: "No values stored yet." }));
    }
  }

  const poller = new Poller("power flow", async (signal) => {
    const latest = await request("/latest", { signal });
    const byDevice = indexLatest(latest);
    app.latest = { body: latest, byDevice };
    renderFlow(deriveFlow(byDevice, app.devices));
    renderTables(byDevice);
    app.markUpdated();
  }, REFRESH_MS);

  return { name: "flow", poller };
}
