// The controller panel (GET /control, 404 when the site has no control section): the current
// 15-minute demand against the limit, zones against their comfort bands, targets and who set
// them, overrides, fail-safes, dry-run; and the operator's override form
// (POST /control/overrides, DELETE /control/overrides/{point}).

import { request } from "../api.js";
import { $, badge, el, formatNumber, formatPower, formatTime, formatValue, setText } from "../dom.js";
import { controllerMetrics, demandCards, indexLatest, targetReached, zoneCards } from "../model.js";
import { Poller } from "../ui.js";

export const REFRESH_MS = 2000;
const APPLY_WAIT_MS = 30_000;
const APPLY_POLL_MS = 1000;
const BLOCK_S = 900;

function unitOf(point) {
  const name = point.slice(point.indexOf(".") + 1);
  if (name.endsWith("_degc")) return "degC";
  if (name.endsWith("_pct")) return "%";
  if (name.endsWith("_w")) return "W";
  return "";
}

function demandCard(card) {
  const ratio = card.limitW > 0 ? card.demandW / card.limitW : 0;
  const level = ratio >= 1 ? "alarm" : ratio >= 0.9 ? "warning" : "ok";
  const elapsed = typeof card.blockElapsedS === "number"
    ? `${formatNumber(Math.min(card.blockElapsedS, BLOCK_S) / 60, 0)} of 15 min` : null;
  const rows = [
    ["allowed import now", card.allowedImportW, "control-allowed-import-w"],
    ["aim (just under the limit)", card.aimW, null],
    ["billed peak this month", card.billedPeakW, "control-billed-peak-w"],
    ["shortfall", card.shortfallW, null],
  ].filter(([, value]) => typeof value === "number");
  return el("article", { class: `card demand ${level}`, "data-controller": card.name },
    el("h3", { text: `15-minute demand (${card.name})` }),
    el("p", { class: "big" },
      el("span", { "data-testid": "control-demand-w", "data-value": card.demandW,
        text: formatPower(card.demandW) }),
      el("span", { class: "muted", text: " of limit " }),
      el("span", { "data-testid": "control-limit-w", "data-value": card.limitW,
        text: formatPower(card.limitW) })),
    el("meter", { min: 0, max: Math.max(card.limitW, card.demandW, 1), low: 0.9 * card.limitW,
      high: card.limitW, optimum: 0, value: Math.max(0, card.demandW), class: "wide",
      title: `${formatNumber(ratio * 100, 0)} % of the limit` }),
    el("p", { class: "muted", text: (elapsed ? `block average so far, ${elapsed}` : "block average so far") +
      (card.shedCount ? ` \u00b7 ${card.shedCount} loads shed` : "") }),
    rows.length ? el("dl", { class: "counters" }, ...rows.flatMap(([label, value, testid]) =>
      [el("dt", { text: label }), el("dd", { text: formatPower(value), "data-testid": testid })])) : null);
}

function zoneCard(zone) {
  const hasBand = typeof zone.lowerDegc === "number" && typeof zone.upperDegc === "number";
  const outside = typeof zone.deviationDegc === "number" && zone.deviationDegc > 0;
  let bandText;
  if (hasBand) {
    bandText = `band ${formatNumber(zone.lowerDegc, 1)} \u2013 ${formatNumber(zone.upperDegc, 1)} \u00b0C`;
  } else if (typeof zone.deviationDegc === "number") {
    bandText = outside ? `${formatNumber(zone.deviationDegc, 2)} K outside its comfort band`
      : "inside its comfort band";
  } else {
    bandText = "comfort band not reported";
  }
  return el("article", { class: `card zone ${outside ? "warning" : "ok"}`, "data-zone": zone.zone,
    "data-testid": `zone-${zone.zone}` },
    el("h3", { text: zone.zone }),
    el("p", { class: "big" }, el("span", { "data-testid": `zone-temperature-${zone.zone}`,
      "data-value": zone.temperatureDegc, text: formatValue(zone.temperatureDegc, "degC") })),
    el("p", { class: outside ? "bad" : "muted", text: bandText }),
    el("dl", { class: "counters" },
      el("dt", { text: "setpoint" }),
      el("dd", { text: formatValue(zone.setpointDegc, "degC") +
        (zone.setpointSource ? ` (${zone.setpointSource})` : "") }),
      typeof zone.plannedDegc === "number" ? el("dt", { text: "planned" }) : null,
      typeof zone.plannedDegc === "number" ? el("dd", { text: formatValue(zone.plannedDegc, "degC") }) : null,
      typeof zone.occupied === "number" ? el("dt", { text: "occupied" }) : null,
      typeof zone.occupied === "number" ? el("dd", { text: zone.occupied ? "yes" : "no" }) : null,
      zone.fallback ? el("dt", { text: "planner" }) : null,
      zone.fallback ? el("dd", { text: "fallback (no optimised plan)" }) : null));
}

export function createControlView(app) {
  let lastState = null;
  let present = null; // null = not asked yet, true/false = /control answered 200/404
  let pending = null; // {point, value, deadline}: an override waiting to show as applied

  const form = $("override-form");
  const pointSelect = $("override-point");
  const valueInput = $("override-value");
  const message = $("override-message");

  function say(text, kind, stateName) {
    message.textContent = text;
    message.className = "message " + (kind || "");
    message.dataset.state = stateName || kind || "";
    message.hidden = !text;
  }

  function setPresent(value) {
    present = value;
    $("tab-control").hidden = value === false;
    $("control-absent").hidden = value !== false;
    $("control-panel").hidden = value !== true;
  }

  function writableRange(point) {
    const dot = point.indexOf(".");
    const device = (app.devices || []).find((d) => d.id === point.slice(0, dot));
    const spec = device && device.points.find((p) => p.name === point.slice(dot + 1));
    return spec && spec.valid_range ? spec.valid_range : null;
  }

  /** The points an override may hold: every writable point of the site (the controller
   * refuses others), those it drives now first, the battery's setpoint at the top. */
  function fillPoints(state) {
    const driven = new Set(Object.keys(state.targets || {}));
    for (const o of state.overrides || []) driven.add(o.point);
    const writable = [];
    for (const device of app.devices || []) {
      for (const p of device.points) if (p.writable) writable.push(`${device.id}.${p.name}`);
    }
    const rank = (p) => (p.startsWith("battery.") ? 0 : driven.has(p) ? 1 : 2);
    const points = [...new Set([...driven, ...writable])];
    points.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const labels = points.map((p) => (driven.has(p) ? `${p} (controlled)` : p));
    const current = [...pointSelect.options].map((o) => o.textContent);
    if (current.join("\n") === labels.join("\n")) return;
    const selected = pointSelect.value;
    pointSelect.replaceChildren(...points.map((p, i) => el("option", { value: p, text: labels[i] })));
    if (points.includes(selected)) pointSelect.value = selected;
    describePoint();
  }

  function describePoint() {
    const point = pointSelect.value;
    if (!point) return;
    const unit = unitOf(point);
    setText("override-unit", unit ? `(${unit === "degC" ? "\u00b0C" : unit})` : "");
    const range = writableRange(point);
    if (range) {
      valueInput.min = String(range[0]);
      valueInput.max = String(range[1]);
      setText("override-range", `Valid ${formatNumber(range[0], 3)} \u2026 ${formatNumber(range[1], 3)} ${unit}` +
        (unit === "W" && point.includes("battery") ? "; battery: + discharges, \u2212 charges." : "."));
    } else {
      valueInput.removeAttribute("min");
      valueInput.removeAttribute("max");
      setText("override-range", "");
    }
  }

  function render(control) {
    const state = control.state;
    setText("control-id", control.id);
    $("control-status").replaceChildren(badge(control.status));
    if (!state) {
      $("control-dry-run").hidden = true;
      setText("control-cycle", "The controller has not reported its state yet.");
      fillPoints({});
      return;
    }
    $("control-dry-run").hidden = !state.dry_run;
    const cycle = state.cycle_s || {};
    const counters = state.counters || {};
    setText("control-cycle", `cycle ${formatNumber((cycle.last || 0) * 1000, 1)} ms (max ` +
      `${formatNumber((cycle.max || 0) * 1000, 1)} ms) \u00b7 ${formatNumber(counters.cycles || 0, 0)} cycles \u00b7 ` +
      `commands sent ${counters.commands_sent ?? 0}, applied ${counters.commands_applied ?? 0}, failed ${counters.commands_failed ?? 0}`);

    const byDevice = app.latest ? app.latest.byDevice : new Map();
    const metrics = controllerMetrics(byDevice, control.id);
    const demand = demandCards(state, metrics);
    $("control-demand").replaceChildren(...demand.map(demandCard));
    if (demand.length === 0) {
      $("control-demand").append(el("p", { class: "muted", text: "No peak shaving controller reports its demand." }));
    }
    const zones = zoneCards(state, metrics, byDevice);
    $("control-zones").replaceChildren(...zones.map(zoneCard));
    if (zones.length === 0) {
      $("control-zones").append(el("p", { class: "muted", text: "No HVAC zone reports here." }));
    }

    const targets = Object.entries(state.targets || {});
    $("control-targets").replaceChildren(...targets.map(([point, t]) => el("tr", { "data-point": point },
      el("td", { text: point }),
      el("td", { class: "num", "data-value": t.value, text: formatValue(t.value, unitOf(point)) }),
      el("td", { text: t.source }),
      el("td", { class: "muted", text: (t.limited_by || []).join(", ") }))));
    if (targets.length === 0) {
      $("control-targets").append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No targets yet." })));
    }

    const overrides = state.overrides || [];
    $("control-overrides").replaceChildren(...overrides.map((o) => {
      const release = el("button", { type: "button", class: "secondary small", text: "Release",
        "data-point": o.point });
      release.addEventListener("click", () => releaseOverride(o.point));
      return el("tr", { "data-point": o.point },
        el("td", { text: o.point }),
        el("td", { class: "num", text: formatValue(o.value, unitOf(o.point)) }),
        el("td", { text: formatTime(o.until) }),
        el("td", { text: o.by }),
        el("td", { text: o.reason || "" }),
        el("td", {}, release));
    }));
    if (overrides.length === 0) {
      $("control-overrides").append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "None: the controllers decide." })));
    }

    const failSafes = state.fail_safes_active || [];
    const failBox = $("control-failsafes");
    failBox.replaceChildren(failSafes.length
      ? el("span", {}, badge("alarm", "fail-safe"), ` active: ${failSafes.join(", ")}`)
      : el("span", { class: "muted", text: "No fail-safe is active." }));
    $("control-controllers").replaceChildren(...Object.entries(state.controllers || {}).map(([name, c]) =>
      el("tr", { "data-controller": name }, el("td", { text: name }),
        el("td", { text: c.enabled ? "yes" : "no" }),
        el("td", { class: c.error ? "bad" : "muted", text: c.error || "" }),
        el("td", {}, toggleButton(name, c.enabled)))));
    renderLimit(state);
    fillPoints(state);
  }

  function checkPending() {
    if (!pending) return;
    if (lastState && targetReached(lastState, pending.point, pending.value)) {
      const dry = lastState.dry_run ? " Dry-run is on: the controller decides but sends nothing to the device." : "";
      say(`Applied: ${pending.point} = ${formatValue(pending.value, unitOf(pending.point))}.${dry}`, "ok", "applied");
      pending = null;
    } else if (Date.now() > pending.deadline) {
      const target = lastState && lastState.targets && lastState.targets[pending.point];
      const why = target ? ` The controller's target is ${formatValue(target.value, unitOf(pending.point))}` +
        ` (set by ${target.source}${target.limited_by && target.limited_by.length ? `, limited by ${target.limited_by.join(", ")}` : ""}).` : "";
      say(`Accepted, but not applied within ${APPLY_WAIT_MS / 1000} s.${why}`, "bad", "not-applied");
      pending = null;
    }
  }

  async function refresh(signal) {
    let control;
    try {
      control = await request("/control", { signal });
    } catch (err) {
      if (err.status === 404) {
        setPresent(false);
        return;
      }
      throw err;
    }
    setPresent(true);
    // The controller's metrics (demand, limit) are its telemetry: the latest values.
    const latest = await request("/latest", { signal });
    app.latest = { body: latest, byDevice: indexLatest(latest) };
    lastState = control.state;
    render(control);
    checkPending();
    app.markUpdated();
  }

  // Faster while an override waits to show as applied.
  const poller = new Poller("controller", refresh, () => (pending ? APPLY_POLL_MS : REFRESH_MS));

  function refused(err) {
    if (err.status === 403) {
      return `Refused: your role (${app.me && app.me.role ? app.me.role : "viewer"}) may not do this.`;
    }
    if (err.status === 404) return `Refused: ${err.message}`;
    return `Failed: ${err.message}`;
  }

  async function submitOverride(event) {
    event.preventDefault();
    const point = pointSelect.value;
    const value = Number(valueInput.value);
    const duration = Number($("override-duration").value);
    if (!point || valueInput.value === "" || !Number.isFinite(value)) {
      say("Choose a point and enter a number.", "bad", "invalid");
      return;
    }
    const range = writableRange(point);
    if (range && (value < range[0] || value > range[1])) {
      say(`${formatNumber(value, 3)} is outside ${formatNumber(range[0], 3)} \u2026 ${formatNumber(range[1], 3)}.`, "bad", "invalid");
      return;
    }
    pending = null;
    say(`Sending ${point} = ${formatNumber(value, 3)}\u2026`, "", "sending");
    $("override-submit").disabled = true;
    try {
      const answer = await request("/control/overrides", { method: "POST",
        body: { point, value, duration_s: duration, reason: "dashboard" } });
      if (answer && answer.ok === false) {
        say(`Refused by the controller: ${answer.message || "no reason given"}`, "bad", "refused");
        return;
      }
      pending = { point, value, deadline: Date.now() + APPLY_WAIT_MS };
      const said = answer && typeof answer.message === "string" ? ` (${answer.message})` : "";
      say(`Accepted${said}; waiting for the controller to apply it\u2026`, "", "accepted");
      poller.kick();
    } catch (err) {
      if (err.status !== 401) say(refused(err), "bad", err.status === 403 ? "forbidden" : "failed");
    } finally {
      $("override-submit").disabled = false;
    }
  }

  async function releaseOverride(point) {
    if (!point) return;
    pending = null;
    say(`Releasing ${point}\u2026`, "", "sending");
    try {
      await request(`/control/overrides/${encodeURIComponent(point)}`, { method: "DELETE" });
      say(`Released ${point}: the controllers decide again.`, "ok", "released");
      poller.kick();
    } catch (err) {
      if (err.status !== 401) say(refused(err), "bad", err.status === 403 ? "forbidden" : "failed");
    }
  }

  // ---------------------------------------------------------- controllers and the limit

  function toggleButton(name, enabled) {
    const button = el("button", { type: "button", class: "secondary",
      "data-testid": `toggle-${name}`, text: enabled ? "Disable" : "Enable" });
    button.addEventListener("click", () => setEnabled(name, !enabled));
    return button;
  }

  async function setEnabled(name, enabled) {
    say(`${enabled ? "Enabling" : "Disabling"} ${name}\u2026`, "", "sending");
    try {
      const answer = await request(`/control/controllers/${encodeURIComponent(name)}`,
        { method: "PUT", body: { enabled, reason: "dashboard" } });
      say(answer.message || `${name} ${enabled ? "enabled" : "disabled"}.`, "ok", "done");
      poller.kick();
    } catch (err) {
      if (err.status !== 401) say(refused(err), "bad", err.status === 403 ? "forbidden" : "failed");
    }
  }

  const limitForm = $("limit-form");
  const limitMessage = $("limit-message");

  function sayLimit(text, kind, stateName) {
    limitMessage.textContent = text;
    limitMessage.className = "message " + (kind || "");
    limitMessage.dataset.state = stateName || kind || "";
    limitMessage.hidden = !text;
  }

  function renderLimit(state) {
    const peak = (state.controllers || {}).peak_shaving;
    const params = peak && peak.params;
    limitForm.hidden = !params;
    if (!params) return;
    const limit = params.limit_w;
    $("limit-current").textContent = typeof limit === "number" ? formatValue(limit, "W")
      : `${limit} (found from the forecast)`;
  }

  async function submitLimit(event) {
    event.preventDefault();
    const kw = Number($("limit-value").value);
    if ($("limit-value").value === "" || !Number.isFinite(kw) || kw <= 0) {
      sayLimit("Enter the limit in kW, e.g. 95.", "bad", "invalid");
      return;
    }
    sayLimit("Sending\u2026", "", "sending");
    $("limit-submit").disabled = true;
    try {
      const answer = await request("/control/controllers/peak_shaving/params", { method: "PUT",
        body: { params: { limit_w: Math.round(kw * 1000) }, reason: "dashboard" } });
      sayLimit(answer.message || "Set.", "ok", "set");
      poller.kick();
    } catch (err) {
      if (err.status !== 401) sayLimit(refused(err), "bad", err.status === 403 ? "forbidden" : "failed");
    } finally {
      $("limit-submit").disabled = false;
    }
  }

  limitForm.addEventListener("submit", submitLimit);
  form.addEventListener("submit", submitOverride);
  $("override-release").addEventListener("click", () => releaseOverride(pointSelect.value));
  pointSelect.addEventListener("change", describePoint);

  return {
    name: "control",
    poller,
    /** Ask once at sign-in whether the site has a controller (to show or hide its tab). */
    async probe() {
      try {
        await request("/control");
        setPresent(true);
      } catch (err) {
        if (err.status === 404) setPresent(false);
      }
    },
    applyRole(role) {
      // The server enforces roles; the form is shown to everyone but greyed for viewers.
      const viewer = role === "viewer";
      form.classList.toggle("restricted", viewer);
      limitForm.classList.toggle("restricted", viewer);
      $("override-role-note").hidden = !viewer;
    },
    stop() {
      pending = null;
      present = null;
      say("", "");
      sayLimit("", "");
    },
    get present() {
      return present;
    },
  };
}
