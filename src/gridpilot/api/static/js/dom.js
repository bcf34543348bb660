// Small DOM and formatting helpers. Text from the API is always set with textContent (the
// `text` attribute of el()), never parsed as HTML: device states and events come from MQTT,
// where anyone allowed to publish could put markup into an error message.

/** el("td", {class: "num", text: "3"}, child...): attributes are set with setAttribute. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function $(id) {
  return document.getElementById(id);
}

export function setText(id, text) {
  const node = typeof id === "string" ? $(id) : id;
  if (node) node.textContent = text;
}

export function badge(status, text) {
  const known = ["online", "offline", "unknown", "info", "warning", "alarm", "ok", "bad"];
  return el("span", { class: "badge " + (known.includes(status) ? status : "unknown"),
    text: text || status });
}

const numberFormats = new Map();

/** A number with at most `digits` decimals, grouped for the reader's locale. */
export function formatNumber(value, digits = 1) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "\u2014";
  let format = numberFormats.get(digits);
  if (!format) {
    format = new Intl.NumberFormat(undefined, { maximumFractionDigits: digits,
      minimumFractionDigits: 0 });
    numberFormats.set(digits, format);
  }
  return format.format(value);
}

/** Watts as "41.3 kW" / "950 W" / "1.25 MW". */
export function formatPower(watts) {
  if (typeof watts !== "number" || !Number.isFinite(watts)) return "\u2014";
  const size = Math.abs(watts);
  if (size >= 1e6) return formatNumber(watts / 1e6, 2) + " MW";
  if (size >= 1e3) return formatNumber(watts / 1e3, 1) + " kW";
  return formatNumber(watts, 0) + " W";
}

/** A value in its unit: powers scaled, other units shown as the point name gives them. */
export function formatValue(value, unit) {
  if (unit === "W") return formatPower(value);
  if (unit === "Wh") {
    if (Math.abs(value) >= 1e6) return formatNumber(value / 1e6, 2) + " MWh";
    if (Math.abs(value) >= 1e3) return formatNumber(value / 1e3, 1) + " kWh";
  }
  const digits = Math.abs(value) >= 100 ? 1 : 3;
  const units = { degC: "\u00b0C", "1": "" };
  const shown = unit in units ? units[unit] : unit || "";
  return formatNumber(value, digits) + (shown ? " " + shown : "");
}

export function formatAge(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "\u2014";
  if (seconds < -5) return "in the future";
  if (seconds < 90) return Math.max(0, Math.round(seconds)) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

/** RFC 3339 -> local date and time, or the text itself when it does not parse. */
export function formatTime(text) {
  if (!text) return "\u2014";
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? String(text) : date.toLocaleString();
}

/** Seconds since an RFC 3339 time, by this browser's clock. */
export function secondsSince(text) {
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? NaN : (Date.now() - ms) / 1000;
}
