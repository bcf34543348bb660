-- wrk script of benchmarks/api: every request carries the bearer token from
-- GRIDPILOT_TOKEN; at the end one line "WRK_JSON {...}" holds the figures bench_api.py
-- reads (latencies in microseconds, as wrk measures them).

local token = os.getenv("GRIDPILOT_TOKEN")
if token == nil or token == "" then
  error("set GRIDPILOT_TOKEN to a viewer token")
end
wrk.headers["Authorization"] = "Bearer " .. token

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
