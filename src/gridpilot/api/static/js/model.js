// What the dashboard shows, computed from API bodies: pure functions of their arguments (no
// DOM, no fetch, no clock unless given), so a browser test can call them directly.

// ------------------------------------------------------------------------------ power flow

/**
 * Where the power-flow numbers come from. The API does not say which device is the grid
 * connection, so the roles are recognised by the points a device has, as the site files
 * name them (examples/building.yaml, the demo):
 *   grid     the device with `active_power_w` whose id names the grid connection; import +
 *   pv       every device with `ac_power_w` (inverters), summed; production +
 *   battery  every device with `soc_pct`; `active_power_w` summed, discharge + / charge −;
 *            the SoC averaged, weighted by `capacity_wh` where the device reports it
 *   load     grid + PV + battery: what the building consumes
 */
export const FLOW_POINTS = Object.freeze({
  gridPower: "active_power_w",
  gridDevice: /(^|_)(grid|mains|utility|poc|main_meter)(_|$)/i,
  pvPower: "ac_power_w",
  batteryPower: "active_power_w",
  batterySoc: "soc_pct",
  batteryCapacity: "capacity_wh",
});

/** Values older than this (seconds) are shown as stale. */
export const STALE_AFTER_S = 30;

/** latest: the body of GET /latest -> Map(device -> Map(point -> value object)). */
export function indexLatest(latest) {
  const byDevice = new Map();
  for (const value of (latest && latest.values) || []) {
    if (!byDevice.has(value.device)) byDevice.set(value.device, new Map());
    byDevice.get(value.device).set(value.point, value);
  }
  return byDevice;
}

/**
 * The site's power flow from the latest values (indexLatest's map). Each part is
 * {w, stale, devices} or null when the site has no such device; load is null unless the
 * grid is known and every battery and PV device has a value. ``devices`` (GET /devices'
 * list): where any device has a ``flow`` (the site file says its role and points), the
 * roles come from there; otherwise they are recognised by point names (FLOW_POINTS).
 */
export function deriveFlow(byDevice, devices = null) {
  const configured = (devices || []).filter((d) => d.flow);
  if (configured.length > 0) return flowFromRoles(byDevice, configured);
  const P = FLOW_POINTS;
  const stale = (v) => !v || v.age_s > STALE_AFTER_S;

  let grid = null;
  const gridIds = [...byDevice.keys()].filter(
    (id) => P.gridDevice.test(id) && byDevice.get(id).has(P.gridPower));
  gridIds.sort((a, b) => (a === "grid_meter" ? -1 : b === "grid_meter" ? 1 : a.localeCompare(b)));
  if (gridIds.length > 0) {
    const v = byDevice.get(gridIds[0]).get(P.gridPower);
    grid = { w: v.value, stale: stale(v), devices: [gridIds[0]] };
  }

  const batteryIds = [...byDevice.keys()].filter((id) => byDevice.get(id).has(P.batterySoc));
  let battery = null;
  if (batteryIds.length > 0) {
    let w = 0;
    let complete = true;
    let anyStale = false;
    let socWeighted = 0;
    let weights = 0;
    for (const id of batteryIds) {
      const points = byDevice.get(id);
      const power = points.get(P.batteryPower);
      if (power) w += power.value;
      else complete = false;
      const soc = points.get(P.batterySoc);
      const capacity = points.get(P.batteryCapacity);
      const weight = capacity && capacity.value > 0 ? capacity.value : 1;
      socWeighted += soc.value * weight;
      weights += weight;
      anyStale = anyStale || stale(power) || stale(soc);
    }
    battery = { w: complete ? w : null, socPct: socWeighted / weights, stale: anyStale,
      devices: batteryIds };
  }

  const pvIds = [...byDevice.keys()].filter(
    (id) => byDevice.get(id).has(P.pvPower) && !batteryIds.includes(id));
  let pv = null;
  if (pvIds.length > 0) {
    let w = 0;
    let anyStale = false;
    for (const id of pvIds) {
      const v = byDevice.get(id).get(P.pvPower);
      w += v.value;
      anyStale = anyStale || stale(v);
    }
    pv = { w, stale: anyStale, devices: pvIds };
  }

  let load = null;
  if (grid && (!battery || battery.w !== null)) {
    const w = grid.w + (pv ? pv.w : 0) + (battery ? battery.w : 0);
    load = { w, stale: grid.stale || Boolean(pv && pv.stale) || Boolean(battery && battery.stale),
      devices: [] };
  }
  return { grid, pv, battery, load };
}

/** deriveFlow for devices whose ``flow`` names their role, power point and sign. */
function flowFromRoles(byDevice, devices) {
  const stale = (v) => !v || v.age_s > STALE_AFTER_S;
  const part = (role) => {
    const members = devices.filter((d) => d.flow.role === role);
    if (members.length === 0) return null;
    let w = 0;
    let complete = true;
    let anyStale = false;
    let socWeighted = 0;
    let weights = 0;
    for (const device of members) {
      const points = byDevice.get(device.id) || new Map();
      const power = points.get(device.flow.power_point);
      if (power) w += device.flow.power_sign * power.value;
      else complete = false;
      anyStale = anyStale || stale(power);
      if (device.flow.soc_point) {
        const soc = points.get(device.flow.soc_point);
        const capacity = points.get(FLOW_POINTS.batteryCapacity);
        const weight = capacity && capacity.value > 0 ? capacity.value : 1;
        if (soc) {
          socWeighted += soc.value * weight;
          weights += weight;
        }
        anyStale = anyStale || stale(soc);
      }
    }
    const out = { w: complete ? w : null, stale: anyStale, devices: members.map((d) => d.id) };
    if (role === "battery") out.socPct = weights > 0 ? socWeighted / weights : null;
    return out;
  };
  const grid = part("grid");
  const pv = part("pv");
  const battery = part("battery");
  let load = null;
  if (grid && grid.w !== null && (!pv || pv.w !== null) && (!battery || battery.w !== null)) {
    load = { w: grid.w + (pv ? pv.w : 0) + (battery ? battery.w : 0),
      stale: grid.stale || Boolean(pv && pv.stale) || Boolean(battery && battery.stale),
      devices: [] };
  }
  return { grid: grid && grid.w !== null ? grid : null, pv, battery, load };
}

// --------------------------------------------------------------------------------- history

/** Bucket lengths the history view asks for; the storage's rollups (1 min, 15 min, 1 h)
 * answer the longer ones. */
export const EVERY_STEPS = Object.freeze([
  ["1s", 1e3], ["5s", 5e3], ["10s", 1e4], ["30s", 3e4], ["1m", 6e4], ["5m", 3e5],
  ["15m", 9e5], ["30m", 1.8e6], ["1h", 3.6e6], ["3h", 1.08e7], ["6h", 2.16e7],
  ["12h", 4.32e7], ["1d", 8.64e7], ["7d", 6.048e8],
]);

/** At most this many buckets per chart: more than a tablet's width has pixels. */
export const MAX_BUCKETS = 2000;

/** The shortest bucket that keeps [start, end) within maxBuckets: {text, ms}. */
export function chooseEvery(spanMs, maxBuckets = MAX_BUCKETS) {
  for (const [text, ms] of EVERY_STEPS) {
    if (Math.ceil(spanMs / ms) + 1 <= maxBuckets) return { text, ms };
  }
  const [text, ms] = EVERY_STEPS[EVERY_STEPS.length - 1];
  return { text, ms };
}

export const RANGES = Object.freeze({
  "1h": 3.6e6, "24h": 8.64e7, "7d": 6.048e8, "30d": 2.592e9, "1y": 3.1536e10,
});

/**
 * uPlot's columns from history bodies: [xs (epoch s), mean, max, min]. min/max bodies may
 * be null. A missing bucket (a gap longer than 1.5 buckets) gets a null so the line breaks
 * instead of bridging an outage.
 */
export function alignHistory(mean, max, min) {
  const every = mean.every_ms;
  const maxBy = new Map(((max && max.values) || []).map((r) => [r.ts, r.value]));
  const minBy = new Map(((min && min.values) || []).map((r) => [r.ts, r.value]));
  const xs = [];
  const ys = [];
  const hi = [];
  const lo = [];
  let previous = null;
  for (const row of mean.values) {
    const ms = Date.parse(row.ts);
    if (Number.isNaN(ms)) continue;
    if (every && previous !== null && ms - previous > 1.5 * every) {
      xs.push((previous + every) / 1000);
      ys.push(null);
      hi.push(null);
      lo.push(null);
    }
    xs.push(ms / 1000);
    ys.push(row.value);
    hi.push(maxBy.has(row.ts) ? maxBy.get(row.ts) : null);
    lo.push(minBy.has(row.ts) ? minBy.get(row.ts) : null);
    previous = ms;
  }
  return [xs, ys, hi, lo];
}

// --------------------------------------------------------------------------------- control

/** The controller's metrics (its telemetry points) as Map(point -> value). */
export function controllerMetrics(byDevice, controllerId) {
  const points = byDevice.get(controllerId) || new Map();
  return new Map([...points].map(([point, v]) => [point, v.value]));
}

/**
 * Peak shavers: every controller that publishes `<name>_demand_w` and `<name>_limit_w`.
 * demand_w is the mean import of the current 15-minute block so far.
 */
export function demandCards(state, metrics) {
  const cards = [];
  for (const name of Object.keys((state && state.controllers) || {})) {
    const m = (suffix) => metrics.get(`${name}_${suffix}`);
    if (m("limit_w") === undefined || m("demand_w") === undefined) continue;
    cards.push({
      name,
      demandW: m("demand_w"),
      limitW: m("limit_w"),
      allowedImportW: m("allowed_import_w"),
      aimW: m("aim_w"),
      billedPeakW: m("billed_peak_w"),
      blockElapsedS: m("block_elapsed_s"),
      shedCount: m("shed_count"),
      shortfallW: m("shortfall_w"),
    });
  }
  return cards;
}

/**
 * HVAC zones: every device with a `*setpoint_degc` target, or with both `temperature_degc`
 * and `setpoint_degc` values. A zone planner's metrics are found under
 * `<controller>_<zone>_<metric>` (one planner for a group of zones) or `<controller>_<metric>`
 * (a planner of that zone alone: the target's source, or `<zone>_planner`). Band edges are
 * shown when published as `comfort_lower_degc` / `comfort_upper_degc`; otherwise
 * `comfort_deviation_degc` says whether the zone is inside its band (0) or how far outside.
 */
export function zoneCards(state, metrics, byDevice) {
  const targets = (state && state.targets) || {};
  const controllers = Object.keys((state && state.controllers) || {});
  const zones = new Map(); // zone -> its setpoint target point
  for (const point of Object.keys(targets)) {
    if (point.endsWith("setpoint_degc")) {
      const zone = point.slice(0, point.indexOf("."));
      if (!zones.has(zone)) zones.set(zone, point);
    }
  }
  for (const [device, points] of byDevice) {
    if (!zones.has(device) && points.has("temperature_degc") && points.has("setpoint_degc")) {
      zones.set(device, `${device}.setpoint_degc`);
    }
  }
  const SUFFIXES = ["comfort_deviation_degc", "setpoint_degc", "planned_temperature_degc",
    "fallback_state"];
  const cards = [];
  for (const [zone, targetPoint] of [...zones].sort((a, b) => a[0].localeCompare(b[0]))) {
    const target = targets[targetPoint];
    const source = target ? target.source : undefined;
    const prefixes = [];
    for (const name of controllers) prefixes.push({ name, prefix: `${name}_${zone}_` });
    for (const name of controllers) {
      if (name === source || name === `${zone}_planner`) prefixes.push({ name, prefix: `${name}_` });
    }
    const found = prefixes.find(({ prefix }) => SUFFIXES.some((s) => metrics.has(prefix + s)));
    const m = (suffix) => (found ? metrics.get(found.prefix + suffix) : undefined);
    const points = byDevice.get(zone) || new Map();
    const value = (point) => (points.has(point) ? points.get(point).value : undefined);
    cards.push({
      name: found ? found.name : source,
      zone,
      temperatureDegc: value("temperature_degc"),
      setpointDegc: target ? target.value : value(targetPoint.slice(targetPoint.indexOf(".") + 1)),
      setpointSource: source,
      plannedDegc: m("planned_temperature_degc"),
      deviationDegc: m("comfort_deviation_degc"),
      lowerDegc: m("comfort_lower_degc"),
      upperDegc: m("comfort_upper_degc"),
      occupied: value("occupied_state"),
      fallback: m("fallback_state"),
    });
  }
  return cards;
}

/** Whether the controller's target for `point` is `value` (to the controller's rounding). */
export function targetReached(state, point, value) {
  const target = state && state.targets && state.targets[point];
  if (!target || typeof target.value !== "number") return false;
  return Math.abs(target.value - value) <= Math.max(1e-6, Math.abs(value) * 1e-6);
}
