// The REST client of the dashboard: every request carries the token, has a timeout and
// fails with an ApiError that says what went wrong (status, the server's "error" text).
//
// The token lives in sessionStorage: it is gone when the tab closes, and other tabs and
// sites cannot read it. It is sent only as "Authorization: Bearer ..." to this origin.

const TOKEN_KEY = "gridpilot.token";
const API = "api/v1";
export const DEFAULT_TIMEOUT_MS = 10_000;

export class ApiError extends Error {
  /** status: the HTTP status, or 0 when no answer came (timeout, network). */
  constructor(status, message, path) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.path = path;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

const listeners = { unauthorized: [] };

/** fn(error) runs on every 401: the token is unknown or was revoked. */
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

/**
 * Request `API/path` and return the parsed JSON body.
 * options: method, body (sent as JSON), timeoutMs, signal (to cancel from outside).
 */
export async function request(path, options = {}) {
  const { method = "GET", body, timeoutMs = DEFAULT_TIMEOUT_MS, signal } = options;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException("timeout", "TimeoutError")),
    timeoutMs);
  const cancel = () => controller.abort(signal.reason);
  if (signal) {
    if (signal.aborted) cancel();
    else signal.addEventListener("abort", cancel, { once: true });
  }
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const url = API + path;
  // The timeout covers the whole exchange: the answer's head and its body.
  let response;
  let text = "";
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
    text = await response.text();
  } catch (err) {
    if (controller.signal.aborted && !(signal && signal.aborted)) {
      throw new ApiError(0, `no answer within ${timeoutMs / 1000} s`, path);
    }
    if (signal && signal.aborted) throw err; // cancelled by the caller: not a problem to show
    throw new ApiError(0, "the server cannot be reached", path);
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", cancel);
  }
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const reason = parsed && typeof parsed.error === "string" ? parsed.error : `HTTP ${response.status}`;
    const error = new ApiError(response.status, reason, path);
    if (response.status === 401) for (const fn of listeners.unauthorized) fn(error);
    throw error;
  }
  return parsed;
}

export function isAbort(err) {
  return err && err.name === "AbortError";
}
