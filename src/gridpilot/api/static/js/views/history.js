// History charts (uPlot): a device's point over 1 h .. 1 y, aggregated server-side into at
// most ~2,000 buckets; zooming in fetches finer buckets for the new window.

import uPlot from "../../vendor/uplot/uPlot.esm.js";
import { isAbort, request } from "../api.js";
import { $, el, formatNumber, formatPower, formatValue, setText } from "../dom.js";
import { alignHistory, chooseEvery, RANGES } from "../model.js";
import { clearProblem, setProblem } from "../ui.js";

const HISTORY_TIMEOUT_MS = 30_000;
const MIN_SPAN_MS = 60_000;
const CHART_HEIGHT = 360;
const PROBLEM = "history";

export function createHistoryView(app) {
  const state = {
    device: null,
    point: null,
    range: "24h",
    window: null, // {startMs, endMs} when zoomed; null = the preset up to now
    loaded: null, // {startMs, endMs} of the data shown
  };
  let chart = null;
  let inflight = null;
  let resizeObserver = null;

  const deviceSelect = $("history-device");
  const pointSelect = $("history-point");

  function fillDevices() {
    const devices = app.devices || [];
    const current = state.device;
    deviceSelect.replaceChildren(...devices.map((d) =>
      el("option", { value: d.id, text: d.name ? `${d.id} \u2014 ${d.name}` : d.id })));
    const preferred = devices.find((d) => d.id === current) ||
      devices.find((d) => d.id === "grid_meter") || devices[0];
    if (preferred) deviceSelect.value = preferred.id;
    state.device = preferred ? preferred.id : null;
    fillPoints();
  }

  function fillPoints() {
    const device = (app.devices || []).find((d) => d.id === state.device);
    const points = device ? device.points : [];
    const current = state.point;
    pointSelect.replaceChildren(...points.map((p) =>
      el("option", { value: p.name, text: p.unit ? `${p.name} (${p.unit})` : p.name })));
    const preferred = points.find((p) => p.name === current) ||
      points.find((p) => p.name === "active_power_w") ||
      points.find((p) => p.name.endsWith("_w")) || points[0];
    if (preferred) pointSelect.value = preferred.name;
    state.point = preferred ? preferred.name : null;
  }

  function markPresets() {
    for (const button of document.querySelectorAll("[data-range]")) {
      button.classList.toggle("active", button.dataset.range === state.range && !state.window);
      button.setAttribute("aria-pressed", String(button.dataset.range === state.range));
    }
  }

  /** The query window: a preset relative to the server's "now", or an absolute zoom. */
  function query(agg) {
    const params = new URLSearchParams();
    let spanMs;
    if (state.window) {
      params.set("start", String(Math.floor(state.window.startMs)));
      params.set("end", String(Math.ceil(state.window.endMs)));
      spanMs = state.window.endMs - state.window.startMs;
    } else {
      spanMs = RANGES[state.range];
      // The server's durations: ms s m h d w (no "y"), so a year is 365d.
      params.set("start", `-${Math.round(spanMs / 1000)}s`);
    }
    const every = chooseEvery(spanMs);
    params.set("every", every.text);
    params.set("agg", agg);
    const path = `/devices/${encodeURIComponent(state.device)}/points/` +
      `${encodeURIComponent(state.point)}/history?${params}`;
    return { path, every };
  }

  async function load() {
    if (!state.device || !state.point) return;
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const container = $("history-chart");
    container.dataset.state = "loading";
    markPresets();
    const band = $("history-band").checked;
    const mean = query("mean");
    setText("history-info", `loading ${state.device}.${state.point}, buckets of ${mean.every.text}\u2026`);
    const opts = { signal: controller.signal, timeoutMs: HISTORY_TIMEOUT_MS };
    try {
      const requests = [request(mean.path, opts)];
      if (band) requests.push(request(query("max").path, opts), request(query("min").path, opts));
      const results = await Promise.allSettled(requests);
      if (controller.signal.aborted) return;
      if (results[0].status === "rejected") throw results[0].reason;
      const [meanBody, maxBody, minBody] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
      state.loaded = { startMs: Date.parse(meanBody.start), endMs: Date.parse(meanBody.end) };
      draw(meanBody, maxBody, minBody);
      const shown = meanBody.values.length;
      const range = state.window ? "zoomed" : state.range;
      setText("history-info",
        `${meanBody.device}.${meanBody.point}: ${range}, ${new Date(state.loaded.startMs).toLocaleString()} \u2013 ` +
        `${new Date(state.loaded.endMs).toLocaleString()}, ${formatNumber(shown, 0)} buckets of ${mean.every.text} ` +
        `(mean${band && maxBody && minBody ? ", band = min..max" : ""})` +
        (shown === 0 ? " \u2014 no data stored in this window" : ""));
      container.dataset.state = "loaded";
      container.dataset.every = mean.every.text;
      container.dataset.buckets = String(shown);
      container.dataset.range = range;
      clearProblem(PROBLEM);
    } catch (err) {
      if (isAbort(err) || controller.signal.aborted) return;
      container.dataset.state = "error";
      setText("history-info", "");
      if (err.status !== 401) setProblem(PROBLEM, err.message);
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  function draw(meanBody, maxBody, minBody) {
    const container = $("history-chart");
    const withBand = Boolean(maxBody && minBody);
    const columns = alignHistory(meanBody, maxBody, minBody);
    const data = withBand ? columns : columns.slice(0, 2);
    const unit = meanBody.unit || "";
    const show = (u, v) => (v === null || v === undefined ? "\u2014" : formatValue(v, unit));
    const series = [
      {},
      { label: meanBody.point, stroke: "#0969da", width: 1.5, value: show },
    ];
    if (withBand) {
      series.push({ label: "max", stroke: "rgba(9,105,218,0.35)", width: 1, value: show });
      series.push({ label: "min", stroke: "rgba(9,105,218,0.35)", width: 1, value: show });
    }
    const timezone = app.site && app.site.timezone;
    const opts = {
      width: Math.max(280, container.clientWidth || 600),
      height: CHART_HEIGHT,
      series,
      bands: withBand ? [{ series: [2, 3], fill: "rgba(9,105,218,0.12)" }] : [],
      scales: { x: { time: true, range: () => [state.loaded.startMs / 1000, state.loaded.endMs / 1000] } },
      axes: [{}, { label: unit === "W" ? "" : unit, size: 80,
        values: (u, ticks) => ticks.map((v) => (unit === "W" ? formatPower(v) : formatNumber(v, 2))) }],
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: { setSelect: [onSelect] },
      legend: { live: true },
    };
    if (timezone) {
      try {
        Intl.DateTimeFormat(undefined, { timeZone: timezone });
        opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), timezone);
      } catch {
        // an unknown zone name: show the browser's local time
      }
    }
    if (chart) chart.destroy();
    container.replaceChildren();
    chart = new uPlot(opts, data, container);
    chart.over.addEventListener("dblclick", reset);
    bindTouch(chart);
  }

  /** uPlot selects with a mouse only: on a tablet a one-finger sideways drag selects the
   * window to zoom into (an up-down drag still scrolls the page). */
  function bindTouch(u) {
    const over = u.over;
    let start = null; // {x, y} in the plot's pixels, while a drag may be a selection
    let selecting = false;
    const at = (touch) => {
      const box = over.getBoundingClientRect();
      return { x: touch.clientX - box.left, y: touch.clientY - box.top };
    };
    over.addEventListener("touchstart", (event) => {
      start = event.touches.length === 1 ? at(event.touches[0]) : null;
      selecting = false;
    }, { passive: true });
    over.addEventListener("touchmove", (event) => {
      if (!start || event.touches.length !== 1) return;
      const now = at(event.touches[0]);
      if (!selecting) {
        const dx = Math.abs(now.x - start.x);
        const dy = Math.abs(now.y - start.y);
        if (dx < 10 && dy < 10) return;
        if (dy > dx) {
          start = null; // a scroll
          return;
        }
        selecting = true;
      }
      event.preventDefault();
      const x = Math.max(0, Math.min(over.clientWidth, now.x));
      const left = Math.min(start.x, x);
      u.setSelect({ left, width: Math.abs(x - start.x), top: 0, height: over.clientHeight }, false);
    }, { passive: false });
    over.addEventListener("touchend", () => {
      if (selecting) onSelect(u);
      start = null;
      selecting = false;
    });
  }

  function onSelect(u) {
    if (u.select.width < 5) return;
    const startS = u.posToVal(u.select.left, "x");
    const endS = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    zoomTo(startS * 1000, endS * 1000);
  }

  function zoomTo(startMs, endMs) {
    const now = Date.now();
    let start = startMs;
    let end = Math.min(endMs, now);
    if (end - start < MIN_SPAN_MS) {
      const middle = (start + end) / 2;
      start = middle - MIN_SPAN_MS / 2;
      end = middle + MIN_SPAN_MS / 2;
    }
    state.window = { startMs: start, endMs: end };
    load();
  }

  function zoomBy(factor) {
    const current = state.loaded || { startMs: Date.now() - RANGES[state.range], endMs: Date.now() };
    const middle = (current.startMs + current.endMs) / 2;
    const half = ((current.endMs - current.startMs) * factor) / 2;
    if (factor > 1 && 2 * half >= RANGES["1y"]) {
      state.range = "1y";
      reset();
      return;
    }
    zoomTo(middle - half, middle + half);
  }

  function reset() {
    state.window = null;
    load();
  }

  // ------------------------------------------------------------------------ wiring
  deviceSelect.addEventListener("change", () => {
    state.device = deviceSelect.value;
    fillPoints();
    load();
  });
  pointSelect.addEventListener("change", () => {
    state.point = pointSelect.value;
    load();
  });
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      state.range = button.dataset.range;
      reset();
    });
  }
  $("zoom-in").addEventListener("click", () => zoomBy(0.5));
  $("zoom-out").addEventListener("click", () => zoomBy(2));
  $("zoom-reset").addEventListener("click", reset);
  $("history-band").addEventListener("change", load);
  $("history-form").addEventListener("submit", (event) => event.preventDefault());

  return {
    name: "history",
    async show() {
      if (!app.devices) {
        try {
          app.devices = (await request("/devices")).devices;
        } catch (err) {
          if (err.status !== 401) setProblem(PROBLEM, err.message);
          return;
        }
      }
      if (!state.device) fillDevices();
      if (!resizeObserver) {
        resizeObserver = new ResizeObserver(() => {
          const container = $("history-chart");
          if (chart && container.clientWidth > 0) {
            chart.setSize({ width: Math.max(280, container.clientWidth), height: CHART_HEIGHT });
          }
        });
        resizeObserver.observe($("history-chart"));
      }
      if (!chart) load();
    },
    hide() {
      if (inflight) inflight.abort();
    },
    stop() {
      if (inflight) inflight.abort();
      if (chart) chart.destroy();
      chart = null;
      state.device = null;
      state.point = null;
      state.window = null;
      $("history-chart").replaceChildren();
    },
  };
}
