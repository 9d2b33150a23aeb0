-- wrk script for scripts/bench-api: rotates over the operator API's read endpoints with a
-- bearer token (env VPP_TOKEN) and prints hdr-style percentiles at the end.
local paths = {
  "/api/v1/orders?status=open&limit=100",
  "/api/v1/positions?limit=100",
  "/api/v1/capacity",
  "/api/v1/engine",
  "/health",
  "/api/v1/orders?limit=50",
  "/api/v1/risk/kill-switch",
  "/api/v1/fills?limit=50",
}
local token = os.getenv("VPP_TOKEN") or ""
local i = 0

request = function()
  i = i + 1
  local p = paths[(i % #paths) + 1]
  return wrk.format("GET", p, { ["Authorization"] = "Bearer " .. token })
end

done = function(summary, latency, requests)
  local us = function(p) return latency:percentile(p) end
  io.write(string.format(
    "RESULT requests=%d duration_s=%.1f rps=%.0f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    us(50), us(90), us(99), us(99.9), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
